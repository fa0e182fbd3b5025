//! Remembers CreateFulfillment results per caller `request_id`, so a retry gets the
//! first result instead of a second POST (DR has none of its own: docs/digital-river.md §5.3).
//!
//! Bounded by entry count and by age (TTL). A key is in one of three states:
//! in flight (a POST or reconciliation is running; retries wait for it), done (the
//! fulfillment is kept until the TTL passes), or unknown (a POST's outcome could
//! not be established; the next attempt reconciles with DR before posting).
//!
//! [`IdempotencyStore`] is the interface the fulfiller uses; two backends implement
//! it: [`MemoryIdempotencyStore`] (one process, the default) and, when several
//! replicas share a NATS JetStream, `events::jetstream::KvIdempotencyStore`, so a
//! retry that lands on another replica still finds the first result.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::digital_river::models::Fulfillment;

/// Why a key could not be claimed; the caller learns nothing about the key and must
/// not post (the request fails with UNAVAILABLE and may be retried).
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// The shared store (JetStream key-value bucket) cannot be reached or failed.
    #[error("idempotency store unavailable: {0}")]
    Unavailable(String),
}

/// Where CreateFulfillment results are remembered per `request_id`.
///
/// The owner of a key (the caller that got [`Claim::Owner`]) must end with exactly
/// one of [`complete`](Self::complete), [`release`](Self::release) or
/// [`mark_unknown`](Self::mark_unknown). Those three never fail towards the caller:
/// a backend that cannot record the outcome leaves the key in a state the next
/// claimer resolves by reconciling with DR first, which is always safe.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + std::fmt::Debug + 'static {
    /// Claims `key` for a request whose body hashes to `fingerprint`.
    async fn claim(&self, key: &str, fingerprint: u64) -> Result<Claim, IdempotencyError>;
    /// Stores the result of the owner's POST (or reconciliation).
    async fn complete(&self, key: &str, fingerprint: u64, fulfillment: Fulfillment);
    /// The owner's POST definitely did not take effect: forget the key.
    async fn release(&self, key: &str);
    /// The owner could not tell whether its POST took effect.
    async fn mark_unknown(&self, key: &str, fingerprint: u64);
}

/// What a caller must do with its key.
#[derive(Debug)]
pub enum Claim {
    /// The key is new (or its last outcome was unknown, or its previous owner
    /// vanished): the caller owns it and must report with
    /// [`IdempotencyStore::complete`], [`IdempotencyStore::release`] or
    /// [`IdempotencyStore::mark_unknown`]. `reconcile_first` is set when an earlier
    /// POST with this key may have reached DR.
    Owner {
        /// Check DR for an earlier POST with this key before posting.
        reconcile_first: bool,
    },
    /// A result is stored: return it.
    Done(Box<Fulfillment>),
    /// Another call with this key is running: wait for the receiver to change, then claim again.
    Wait(watch::Receiver<u64>),
    /// The key was used with a different request body.
    Mismatch,
}

#[derive(Debug)]
enum Slot {
    InFlight {
        fingerprint: u64,
    },
    Done {
        fingerprint: u64,
        fulfillment: Box<Fulfillment>,
    },
    Unknown {
        fingerprint: u64,
    },
}

#[derive(Debug)]
struct Entry {
    slot: Slot,
    inserted: Instant,
    seq: u64,
}

#[derive(Debug)]
struct Inner {
    entries: HashMap<String, Entry>,
    order: VecDeque<(u64, String)>,
    next_seq: u64,
}

/// The bounded, TTL'd in-process store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct MemoryIdempotencyStore {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    ttl: Duration,
    max_entries: usize,
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn claim(&self, key: &str, fingerprint: u64) -> Result<Claim, IdempotencyError> {
        Ok(MemoryIdempotencyStore::claim(self, key, fingerprint))
    }

    async fn complete(&self, key: &str, fingerprint: u64, fulfillment: Fulfillment) {
        MemoryIdempotencyStore::complete(self, key, fingerprint, fulfillment);
    }

    async fn release(&self, key: &str) {
        MemoryIdempotencyStore::release(self, key);
    }

    async fn mark_unknown(&self, key: &str, fingerprint: u64) {
        MemoryIdempotencyStore::mark_unknown(self, key, fingerprint);
    }
}

impl MemoryIdempotencyStore {
    /// A store keeping at most `max_entries` keys, each for at most `ttl`.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
                next_seq: 0,
            }),
            changed: watch::channel(0).0,
            ttl,
            max_entries: max_entries.max(1),
        }
    }

    /// Claims `key` for a request whose body hashes to `fingerprint`.
    pub fn claim(&self, key: &str, fingerprint: u64) -> Claim {
        let now = Instant::now();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        if let Some(entry) = inner.entries.get_mut(key) {
            let (fp, claim) = match &entry.slot {
                Slot::Done {
                    fingerprint,
                    fulfillment,
                } => (*fingerprint, Claim::Done(fulfillment.clone())),
                Slot::InFlight { fingerprint, .. } => {
                    (*fingerprint, Claim::Wait(self.changed.subscribe()))
                }
                Slot::Unknown { fingerprint } => (
                    *fingerprint,
                    Claim::Owner {
                        reconcile_first: true,
                    },
                ),
            };
            if fp != fingerprint {
                return Claim::Mismatch;
            }
            if let Claim::Owner { .. } = claim {
                entry.slot = Slot::InFlight { fingerprint };
            }
            return claim;
        }
        self.insert(&mut inner, key, Slot::InFlight { fingerprint }, now);
        Claim::Owner {
            reconcile_first: false,
        }
    }

    /// Stores the result of the owner's POST (or reconciliation).
    pub fn complete(&self, key: &str, fingerprint: u64, fulfillment: Fulfillment) {
        self.set(
            key,
            Some(Slot::Done {
                fingerprint,
                fulfillment: Box::new(fulfillment),
            }),
        );
    }

    /// The owner's POST definitely did not take effect: forget the key.
    pub fn release(&self, key: &str) {
        self.set(key, None);
    }

    /// The owner could not tell whether its POST took effect.
    pub fn mark_unknown(&self, key: &str, fingerprint: u64) {
        self.set(key, Some(Slot::Unknown { fingerprint }));
    }

    /// Number of keys held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn set(&self, key: &str, slot: Option<Slot>) {
        {
            let mut inner = self.lock();
            match slot {
                Some(slot) => {
                    if let Some(entry) = inner.entries.get_mut(key) {
                        entry.slot = slot;
                    } else {
                        self.insert(&mut inner, key, slot, Instant::now());
                    }
                }
                None => {
                    inner.entries.remove(key);
                }
            }
        }
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn insert(&self, inner: &mut Inner, key: &str, slot: Slot, now: Instant) {
        while inner.entries.len() >= self.max_entries {
            if !Self::evict_oldest_settled(inner) {
                break;
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.order.push_back((seq, key.to_owned()));
        inner.entries.insert(
            key.to_owned(),
            Entry {
                slot,
                inserted: now,
                seq,
            },
        );
    }

    /// Drops the oldest key that is not in flight; false when none could go.
    fn evict_oldest_settled(inner: &mut Inner) -> bool {
        let position = inner.order.iter().position(|(seq, key)| {
            inner
                .entries
                .get(key)
                .is_some_and(|e| e.seq == *seq && !matches!(e.slot, Slot::InFlight { .. }))
        });
        match position.and_then(|p| inner.order.remove(p)) {
            Some((_, key)) => {
                inner.entries.remove(&key);
                true
            }
            None => false,
        }
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some((seq, key)) = inner.order.front() {
            let stale = match inner.entries.get(key) {
                None => true,
                Some(e) if e.seq != *seq => true,
                Some(e) => {
                    now.duration_since(e.inserted) >= self.ttl
                        && !matches!(e.slot, Slot::InFlight { .. })
                }
            };
            if !stale {
                break;
            }
            if let Some((seq, key)) = inner.order.pop_front() {
                if inner.entries.get(&key).is_some_and(|e| e.seq == seq) {
                    inner.entries.remove(&key);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // why: a panic while holding the lock leaves plain data, still consistent
        // enough to serve; recover rather than poison every later call.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ful(id: &str) -> Fulfillment {
        Fulfillment {
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_completed_key_returns_the_stored_result() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(60), 10);
        assert!(matches!(
            store.claim("k", 1),
            Claim::Owner {
                reconcile_first: false
            }
        ));
        store.complete("k", 1, ful("ful_1"));
        match store.claim("k", 1) {
            Claim::Done(f) => assert_eq!(f.id, "ful_1"),
            other => panic!("expected Done, got {other:?}"),
        }
    }

    #[test]
    fn a_running_key_makes_others_wait_and_a_different_body_is_refused() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(60), 10);
        assert!(matches!(store.claim("k", 1), Claim::Owner { .. }));
        assert!(matches!(store.claim("k", 1), Claim::Wait(_)));
        assert!(matches!(store.claim("k", 2), Claim::Mismatch));
    }

    #[test]
    fn an_unknown_outcome_makes_the_next_owner_reconcile_first() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(60), 10);
        let _ = store.claim("k", 1);
        store.mark_unknown("k", 1);
        assert!(matches!(
            store.claim("k", 1),
            Claim::Owner {
                reconcile_first: true
            }
        ));
    }

    #[test]
    fn released_keys_can_be_claimed_again() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(60), 10);
        let _ = store.claim("k", 1);
        store.release("k");
        assert!(matches!(
            store.claim("k", 1),
            Claim::Owner {
                reconcile_first: false
            }
        ));
    }

    #[test]
    fn the_store_is_bounded_and_keeps_in_flight_keys() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(60), 3);
        let _ = store.claim("running", 1);
        for i in 0..10 {
            let key = format!("k{i}");
            let _ = store.claim(&key, 1);
            store.complete(&key, 1, ful(&key));
        }
        assert_eq!(store.len(), 3);
        assert!(matches!(store.claim("running", 1), Claim::Wait(_)));
        assert!(matches!(store.claim("k9", 1), Claim::Done(_)));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let store = MemoryIdempotencyStore::new(Duration::from_millis(0), 10);
        let _ = store.claim("k", 1);
        store.complete("k", 1, ful("ful_1"));
        assert!(matches!(store.claim("k", 1), Claim::Owner { .. }));
    }
}

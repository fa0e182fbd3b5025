//! Remembers CreateFulfillment results per caller `request_id`, so a retry gets the
//! first result instead of a second POST (DR has none of its own: docs/digital-river.md §5.3).
//!
//! Bounded by entry count, for every kind of entry, and by age (TTL). A key is in one
//! of three states:
//! in flight (a reconciliation or POST is running; retries wait for it), done (the
//! fulfillment is kept until the TTL passes), or unknown (nothing is running and no
//! result is known: an attempt's outcome could not be established, or the key may
//! not be posted yet).
//!
//! Besides the state, a key carries the time until which an earlier POST with it may
//! still be committed by DR ("may land until", docs/digital-river.md §5.5). Owners
//! record it before they post ([`IdempotencyStore::record_attempt`]) and when an
//! outcome stays unknown ([`IdempotencyStore::mark_unknown`]); a later owner gets it
//! back in [`Claim::Owner`] and must not post before it has passed. A key with such
//! a time still ahead is never evicted or expired.
//!
//! When the count bound is reached, the oldest settled key (done, or unknown with no
//! attempt that may still land) makes room. Keys that must be kept (in flight, or
//! with an attempt that may still land) are never dropped; when only such keys are
//! held, a new key is refused ([`IdempotencyError::Full`]: nothing is sent to DR, the
//! caller retries later). A forgotten key (refused by DR, released) leaves nothing
//! behind.
//!
//! [`IdempotencyStore`] is the interface the fulfiller uses; two backends implement
//! it: [`MemoryIdempotencyStore`] (one process, the default) and, when several
//! replicas share a NATS JetStream, `bus::KvIdempotencyStore`, so a retry that lands
//! on another replica (or on a restarted one) still finds the first result.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::digital_river::models::Fulfillment;

/// Why a key could not be claimed or an attempt not recorded; the caller must not
/// post (the request fails with UNAVAILABLE and may be retried).
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// The shared store (JetStream key-value bucket) cannot be reached or failed.
    #[error("idempotency store unavailable: {0}")]
    Unavailable(String),
    /// Every slot holds a key that must be kept (in flight, or with an attempt that
    /// may still land); a new key has to wait until one settles.
    #[error("the idempotency store is full ({0} keys in flight or pending)")]
    Full(usize),
}

/// Where CreateFulfillment results are remembered per `request_id`.
///
/// The owner of a key (the caller that got [`Claim::Owner`]) must end with exactly
/// one of [`complete`](Self::complete), [`release`](Self::release) or
/// [`mark_unknown`](Self::mark_unknown), and must call
/// [`record_attempt`](Self::record_attempt) successfully before it posts. The three
/// endings never fail towards the caller: a backend that cannot record the outcome
/// leaves the key in a state the next claimer resolves by reconciling with DR first
/// while honouring the recorded attempt, which is always safe.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + std::fmt::Debug + 'static {
    /// Claims `key` for a request whose body hashes to `fingerprint`.
    async fn claim(&self, key: &str, fingerprint: u64) -> Result<Claim, IdempotencyError>;
    /// The owner is about to post: if it vanishes from here on, its POST may be
    /// committed by DR until `may_land_until`. Must succeed before the POST is sent.
    async fn record_attempt(
        &self,
        key: &str,
        fingerprint: u64,
        may_land_until: Instant,
    ) -> Result<(), IdempotencyError>;
    /// Stores the result of the owner's POST (or reconciliation).
    async fn complete(&self, key: &str, fingerprint: u64, fulfillment: Fulfillment);
    /// No POST with this key can take effect any more (the owner's was refused and
    /// no earlier one can still land): forget the key.
    async fn release(&self, key: &str);
    /// No result is known. `own_attempt`: the owner posted, the outcome is unknown, and
    /// DR may commit it until then; it replaces the time [`record_attempt`] recorded
    /// (an owner posts only once every earlier attempt can no longer land, so its own
    /// is the only one left). `None`: the recorded time stands.
    ///
    /// [`record_attempt`]: Self::record_attempt
    async fn mark_unknown(&self, key: &str, fingerprint: u64, own_attempt: Option<Instant>);
}

/// What a caller must do with its key.
#[derive(Debug)]
pub enum Claim {
    /// The key is new (or its last outcome was unknown, or its previous owner
    /// vanished): the caller owns it and must report with
    /// [`IdempotencyStore::complete`], [`IdempotencyStore::release`] or
    /// [`IdempotencyStore::mark_unknown`]. It looks the request up in DR before
    /// posting, and posts only if DR does not show it and the lookup started at or
    /// after `hold_until`.
    Owner {
        /// An earlier POST with this key (this process's, a predecessor's or another
        /// replica's) may still be committed by DR until then.
        hold_until: Option<Instant>,
    },
    /// A result is stored: return it.
    Done(Box<Fulfillment>),
    /// Another call with this key is running: wait for the receiver to change, then claim again.
    Wait(watch::Receiver<u64>),
    /// The key was used with a different request body.
    Mismatch,
}

/// The later of two optional instants.
pub fn later(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Debug)]
enum Slot {
    InFlight {
        fingerprint: u64,
        may_land_until: Option<Instant>,
    },
    Done {
        fingerprint: u64,
        fulfillment: Box<Fulfillment>,
    },
    Unknown {
        fingerprint: u64,
        may_land_until: Option<Instant>,
    },
}

impl Slot {
    /// In flight, or unknown with an attempt that may still land: must be kept.
    fn pinned(&self, now: Instant) -> bool {
        match self {
            Slot::InFlight { .. } => true,
            Slot::Unknown { may_land_until, .. } => may_land_until.is_some_and(|t| t > now),
            Slot::Done { .. } => false,
        }
    }

    fn fingerprint(&self) -> u64 {
        match self {
            Slot::InFlight { fingerprint, .. }
            | Slot::Done { fingerprint, .. }
            | Slot::Unknown { fingerprint, .. } => *fingerprint,
        }
    }

    fn may_land_until(&self) -> Option<Instant> {
        match self {
            Slot::InFlight { may_land_until, .. } | Slot::Unknown { may_land_until, .. } => {
                *may_land_until
            }
            Slot::Done { .. } => None,
        }
    }
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
///
/// It starts empty, so it cannot know what a previous process posted just before it
/// stopped. With a start-up hold, every key it does not hold counts as possibly
/// posted by that predecessor until the hold ends ([`Self::with_startup_hold`]).
#[derive(Debug)]
pub struct MemoryIdempotencyStore {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    ttl: Duration,
    max_entries: usize,
    /// Until then, a key this process does not hold may have been posted by its
    /// predecessor.
    startup_hold_until: Option<Instant>,
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn claim(&self, key: &str, fingerprint: u64) -> Result<Claim, IdempotencyError> {
        MemoryIdempotencyStore::claim(self, key, fingerprint)
    }

    async fn record_attempt(
        &self,
        key: &str,
        fingerprint: u64,
        may_land_until: Instant,
    ) -> Result<(), IdempotencyError> {
        MemoryIdempotencyStore::record_attempt(self, key, fingerprint, may_land_until);
        Ok(())
    }

    async fn complete(&self, key: &str, fingerprint: u64, fulfillment: Fulfillment) {
        MemoryIdempotencyStore::complete(self, key, fingerprint, fulfillment);
    }

    async fn release(&self, key: &str) {
        MemoryIdempotencyStore::release(self, key);
    }

    async fn mark_unknown(&self, key: &str, fingerprint: u64, own_attempt: Option<Instant>) {
        MemoryIdempotencyStore::mark_unknown(self, key, fingerprint, own_attempt);
    }
}

impl MemoryIdempotencyStore {
    /// A store keeping at most `max_entries` keys, each for at most `ttl` (keys whose
    /// attempt may still land are kept longer).
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
            startup_hold_until: None,
        }
    }

    /// Treats every key this store does not hold as possibly posted by a previous
    /// process until `hold` from now has passed (zero: no hold).
    pub fn with_startup_hold(mut self, hold: Duration) -> Self {
        self.startup_hold_until = (!hold.is_zero()).then(|| Instant::now() + hold);
        self
    }

    /// Claims `key` for a request whose body hashes to `fingerprint`; refuses a new
    /// key when every slot holds one that must be kept.
    pub fn claim(&self, key: &str, fingerprint: u64) -> Result<Claim, IdempotencyError> {
        let now = Instant::now();
        let startup = self.startup_hold_until.filter(|t| *t > now);
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        if let Some(entry) = inner.entries.get_mut(key) {
            if entry.slot.fingerprint() != fingerprint {
                return Ok(Claim::Mismatch);
            }
            return Ok(match &entry.slot {
                Slot::Done { fulfillment, .. } => Claim::Done(fulfillment.clone()),
                Slot::InFlight { .. } => Claim::Wait(self.changed.subscribe()),
                Slot::Unknown { may_land_until, .. } => {
                    let hold = later(may_land_until.filter(|t| *t > now), startup);
                    entry.slot = Slot::InFlight {
                        fingerprint,
                        may_land_until: *may_land_until,
                    };
                    Claim::Owner { hold_until: hold }
                }
            });
        }
        if !self.make_room(&mut inner, now) {
            return Err(IdempotencyError::Full(inner.entries.len()));
        }
        self.insert(
            &mut inner,
            key,
            Slot::InFlight {
                fingerprint,
                may_land_until: None,
            },
            now,
        );
        Ok(Claim::Owner {
            hold_until: startup,
        })
    }

    /// The owner is about to post; its POST may land until `may_land_until`.
    pub fn record_attempt(&self, key: &str, fingerprint: u64, may_land_until: Instant) {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.get_mut(key) {
            let kept = later(entry.slot.may_land_until(), Some(may_land_until));
            entry.slot = Slot::InFlight {
                fingerprint,
                may_land_until: kept,
            };
        } else {
            // The entry vanished (cannot happen while in flight); keep the attempt,
            // over the bound if need be: a POST that may land is never forgotten.
            self.make_room(&mut inner, Instant::now());
            self.insert(
                &mut inner,
                key,
                Slot::InFlight {
                    fingerprint,
                    may_land_until: Some(may_land_until),
                },
                Instant::now(),
            );
        }
    }

    /// Stores the result of the owner's POST (or reconciliation).
    pub fn complete(&self, key: &str, fingerprint: u64, fulfillment: Fulfillment) {
        self.set(key, |_| {
            Some(Slot::Done {
                fingerprint,
                fulfillment: Box::new(fulfillment),
            })
        });
    }

    /// No POST with this key can take effect any more: forget the key.
    pub fn release(&self, key: &str) {
        self.set(key, |_| None);
    }

    /// No result is known; `own_attempt` replaces the recorded landing time (see
    /// [`IdempotencyStore::mark_unknown`]).
    pub fn mark_unknown(&self, key: &str, fingerprint: u64, own_attempt: Option<Instant>) {
        self.set(key, |previous| {
            Some(Slot::Unknown {
                fingerprint,
                may_land_until: own_attempt.or(previous.and_then(Slot::may_land_until)),
            })
        });
    }

    /// Number of keys held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn set(&self, key: &str, next: impl FnOnce(Option<&Slot>) -> Option<Slot>) {
        {
            let mut inner = self.lock();
            let slot = next(inner.entries.get(key).map(|e| &e.slot));
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
                    Self::compact_order(&mut inner);
                }
            }
        }
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Drops settled keys, oldest first, until a new one fits under the bound;
    /// false when only keys that must be kept are left.
    fn make_room(&self, inner: &mut Inner, now: Instant) -> bool {
        while inner.entries.len() >= self.max_entries {
            if !Self::evict_oldest_settled(inner, now) {
                return false;
            }
        }
        true
    }

    /// Forgets the order records of keys no longer held, once they outnumber the
    /// held keys: removals leave them behind, and they must not pile up.
    fn compact_order(inner: &mut Inner) {
        if inner.order.len() > 2 * inner.entries.len() + 64 {
            let entries = &inner.entries;
            inner
                .order
                .retain(|(seq, key)| entries.get(key).is_some_and(|e| e.seq == *seq));
        }
    }

    /// Number of order records (live and stale), for the tests of the bounds.
    #[cfg(test)]
    fn order_records(&self) -> usize {
        self.lock().order.len()
    }

    fn insert(&self, inner: &mut Inner, key: &str, slot: Slot, now: Instant) {
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

    /// Drops the oldest key that is neither in flight nor holding an attempt that
    /// may still land; false when none could go.
    ///
    /// Keys that must be kept move from the front to the back as the search passes
    /// them, so the next search does not walk past them again (each record is
    /// looked at once per round through the store).
    fn evict_oldest_settled(inner: &mut Inner, now: Instant) -> bool {
        for _ in 0..inner.order.len() {
            let Some((seq, key)) = inner.order.pop_front() else {
                return false;
            };
            match inner.entries.get_mut(&key) {
                Some(entry) if entry.seq == seq => {
                    if entry.slot.pinned(now) {
                        entry.seq = inner.next_seq;
                        inner.next_seq += 1;
                        inner.order.push_back((entry.seq, key));
                    } else {
                        inner.entries.remove(&key);
                        return true;
                    }
                }
                // A record of a key removed or re-inserted since: drop it.
                _ => {}
            }
        }
        false
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some((seq, key)) = inner.order.front() {
            let stale = match inner.entries.get(key) {
                None => true,
                Some(e) if e.seq != *seq => true,
                Some(e) => now.duration_since(e.inserted) >= self.ttl && !e.slot.pinned(now),
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

    fn store() -> MemoryIdempotencyStore {
        MemoryIdempotencyStore::new(Duration::from_secs(60), 10)
    }

    impl MemoryIdempotencyStore {
        fn claim_ok(&self, key: &str, fingerprint: u64) -> Claim {
            self.claim(key, fingerprint).expect("room in the store")
        }
    }

    fn owner_hold(claim: Claim) -> Option<Instant> {
        match claim {
            Claim::Owner { hold_until } => hold_until,
            other => panic!("expected Owner, got {other:?}"),
        }
    }

    #[test]
    fn a_completed_key_returns_the_stored_result() {
        let store = store();
        assert_eq!(owner_hold(store.claim_ok("k", 1)), None);
        store.complete("k", 1, ful("ful_1"));
        match store.claim_ok("k", 1) {
            Claim::Done(f) => assert_eq!(f.id, "ful_1"),
            other => panic!("expected Done, got {other:?}"),
        }
    }

    #[test]
    fn a_running_key_makes_others_wait_and_a_different_body_is_refused() {
        let store = store();
        assert!(matches!(store.claim_ok("k", 1), Claim::Owner { .. }));
        assert!(matches!(store.claim_ok("k", 1), Claim::Wait(_)));
        assert!(matches!(store.claim_ok("k", 2), Claim::Mismatch));
    }

    #[test]
    fn an_unknown_outcome_hands_the_next_owner_the_time_its_post_may_still_land() {
        let store = store();
        let _ = store.claim_ok("k", 1);
        let lands_by = Instant::now() + Duration::from_secs(30);
        store.record_attempt("k", 1, lands_by);
        store.mark_unknown("k", 1, None);
        assert_eq!(owner_hold(store.claim_ok("k", 1)), Some(lands_by));
        // The next owner only looked DR up (no attempt of its own): the earlier
        // attempt's time is kept, not forgotten.
        store.mark_unknown("k", 1, None);
        assert_eq!(owner_hold(store.claim_ok("k", 1)), Some(lands_by));
    }

    #[test]
    fn the_owners_own_unknown_attempt_replaces_the_time_recorded_before_it_posted() {
        let store = store();
        let _ = store.claim_ok("k", 1);
        let provisional = Instant::now() + Duration::from_secs(50);
        store.record_attempt("k", 1, provisional);
        let observed = provisional - Duration::from_secs(20);
        store.mark_unknown("k", 1, Some(observed));
        assert_eq!(owner_hold(store.claim_ok("k", 1)), Some(observed));
    }

    #[test]
    fn an_attempt_that_can_no_longer_land_holds_nothing() {
        let store = store();
        let _ = store.claim_ok("k", 1);
        store.mark_unknown("k", 1, Some(Instant::now()));
        assert_eq!(owner_hold(store.claim_ok("k", 1)), None);
    }

    #[test]
    fn released_keys_can_be_claimed_again() {
        let store = store();
        let _ = store.claim_ok("k", 1);
        store.release("k");
        assert_eq!(owner_hold(store.claim_ok("k", 1)), None);
    }

    #[test]
    fn after_a_start_every_key_not_held_may_have_been_posted_by_the_predecessor() {
        let store = store().with_startup_hold(Duration::from_secs(60));
        let hold = owner_hold(store.claim_ok("new", 1)).expect("held after a start");
        assert!(hold > Instant::now() + Duration::from_secs(59));
        // A key whose attempt lands later than the start-up hold keeps its own time.
        let _ = store.claim_ok("late", 1);
        let lands_by = Instant::now() + Duration::from_secs(120);
        store.mark_unknown("late", 1, Some(lands_by));
        assert_eq!(owner_hold(store.claim_ok("late", 1)), Some(lands_by));
        let no_hold = self::store().with_startup_hold(Duration::ZERO);
        assert_eq!(owner_hold(no_hold.claim_ok("new", 1)), None);
    }

    #[test]
    fn the_store_is_bounded_and_keeps_in_flight_keys() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(60), 3);
        let _ = store.claim_ok("running", 1);
        for i in 0..10 {
            let key = format!("k{i}");
            let _ = store.claim_ok(&key, 1);
            store.complete(&key, 1, ful(&key));
        }
        assert_eq!(store.len(), 3);
        assert!(matches!(store.claim_ok("running", 1), Claim::Wait(_)));
        assert!(matches!(store.claim_ok("k9", 1), Claim::Done(_)));
    }

    #[test]
    fn a_key_whose_attempt_may_still_land_is_neither_evicted_nor_expired() {
        let store = MemoryIdempotencyStore::new(Duration::ZERO, 2);
        let _ = store.claim_ok("pending", 1);
        let lands_by = Instant::now() + Duration::from_secs(30);
        store.mark_unknown("pending", 1, Some(lands_by));
        for i in 0..5 {
            let key = format!("k{i}");
            let _ = store.claim_ok(&key, 1);
            store.complete(&key, 1, ful(&key));
        }
        assert_eq!(owner_hold(store.claim_ok("pending", 1)), Some(lands_by));
    }

    #[test]
    fn refused_keys_leave_nothing_behind() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(3600), 10);
        for i in 0..10_000 {
            let key = format!("refused-{i}");
            let _ = store.claim_ok(&key, 1);
            store.release(&key);
        }
        assert_eq!(store.len(), 0);
        assert!(
            store.order_records() <= 64,
            "{} records",
            store.order_records()
        );
    }

    #[test]
    fn keys_that_must_be_kept_are_bounded_too_and_a_new_key_waits_for_room() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(3600), 3);
        let _ = store.claim_ok("running", 1);
        let _ = store.claim_ok("pending", 1);
        store.mark_unknown("pending", 1, Some(Instant::now() + Duration::from_secs(60)));
        let _ = store.claim_ok("also-running", 1);
        assert!(matches!(
            store.claim("new", 1),
            Err(IdempotencyError::Full(3))
        ));
        assert_eq!(store.len(), 3);
        // Once one settles, the new key gets its slot (and the settled one goes).
        store.complete("running", 1, ful("ful_1"));
        assert!(matches!(store.claim("new", 1), Ok(Claim::Owner { .. })));
        assert_eq!(store.len(), 3);
        assert!(matches!(store.claim_ok("pending", 1), Claim::Owner { .. }));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let store = MemoryIdempotencyStore::new(Duration::from_millis(0), 10);
        let _ = store.claim_ok("k", 1);
        store.complete("k", 1, ful("ful_1"));
        assert!(matches!(store.claim_ok("k", 1), Claim::Owner { .. }));
    }
}

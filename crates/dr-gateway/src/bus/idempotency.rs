//! [`KvIdempotencyStore`]: CreateFulfillment idempotency records in a JetStream
//! key-value bucket every replica shares, so a retry that lands on another replica
//! gets the first result instead of a second `POST /fulfillments` (DR has no
//! idempotency key of its own: docs/digital-river.md §5.3).
//!
//! # Records
//! One JSON record per `request_id` (key = [`safe_key`] of it), kept for the
//! idempotency TTL after its last write (the bucket's max age):
//! - `in_flight` — a replica owns the key and is posting or reconciling;
//! - `done` — the fulfillment DR returned (or reconciliation found);
//! - `unknown` — a POST's outcome could not be established: reconcile first.
//!
//! # Protocol
//! - **claim**: read the key. Absent (or deleted) → KV `create`, which succeeds for
//!   exactly one replica → `Owner`. `done` → `Done` (or `Mismatch` for another body).
//!   `unknown`, or `in_flight` whose owner's lease ran out (the owner died) → a
//!   compare-and-set to `in_flight` on the revision just read → `Owner` with
//!   `reconcile_first`. `in_flight` within its lease → `Wait`: a small task polls the
//!   key with backoff and wakes the caller when it changes or the lease ends; the
//!   caller claims again within its own deadline.
//! - **complete / release / mark_unknown**: a compare-and-set on the revision the
//!   claim wrote. If it fails (the lease ran out and another replica took over, or the
//!   bus is down) the record stays `in_flight` and the next claimer, once the lease
//!   has passed, reconciles with DR before posting — safe either way.
//! - **lease** = the longest one owner can spend (reconcile + POST + reconcile),
//!   measured from the record's server timestamp; replica clocks are assumed to agree
//!   to well within it (NTP).
//!
//! The request fingerprint is SHA-256 over the canonical request body, the same on
//! every replica and every build.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{event_log::safe_key, provision::ensure_kv, timed, Bus, BusError};
use crate::{
    digital_river::models::Fulfillment,
    domain::idempotency::{Claim, IdempotencyError, IdempotencyStore},
};

/// Compare-and-set races tolerated per claim before giving up (UNAVAILABLE).
const MAX_CLAIM_ROUNDS: usize = 8;
/// Longest pause between two polls of a key someone else owns.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(400);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    InFlight,
    Done,
    Unknown,
}

/// The stored record. A flat struct, not an internally tagged enum: serde_json's
/// `arbitrary_precision` (on in this crate) cannot read numbers through tagged enums.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    state: State,
    /// The request fingerprint, as decimal text (JSON readers outside Rust lose
    /// integer precision above 2^53).
    fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fulfillment: Option<Fulfillment>,
}

impl Record {
    fn new(state: State, fingerprint: u64) -> Self {
        Self {
            state,
            fingerprint: fingerprint.to_string(),
            owner: None,
            fulfillment: None,
        }
    }

    fn to_bytes(&self) -> Bytes {
        // why: serialising a struct of strings and a plain model cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// See the module docs.
pub struct KvIdempotencyStore {
    kv: kv::Store,
    timeout: Duration,
    lease: Duration,
    /// This process, in records (diagnostics only).
    owner: String,
    /// Keys this process owns → revision of its `in_flight` record.
    owned: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for KvIdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvIdempotencyStore")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

enum Step {
    Done(Claim),
    Retry,
}

impl KvIdempotencyStore {
    /// Creates or checks the bucket (max age `ttl`); `lease` is how long an owner may
    /// hold a key before others assume it died.
    pub async fn open(bus: &Bus, ttl: Duration, lease: Duration) -> Result<Self, BusError> {
        let kv = ensure_kv(bus, &bus.config().idempotency_bucket, ttl).await?;
        Ok(Self {
            kv,
            timeout: bus.config().request_timeout,
            lease,
            owner: format!("pid{}-{:08x}", std::process::id(), rand::random::<u32>()),
            owned: Mutex::new(HashMap::new()),
        })
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // why: plain map, consistent between statements; recover instead of poisoning.
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_flight(&self, fingerprint: u64) -> Bytes {
        let mut r = Record::new(State::InFlight, fingerprint);
        r.owner = Some(self.owner.clone());
        r.to_bytes()
    }

    async fn claim_round(&self, key: &str, fingerprint: u64) -> Result<Step, BusError> {
        let entry = timed(
            self.timeout,
            "reading an idempotency record",
            self.kv.entry(key),
        )
        .await?;
        let entry = match entry {
            Some(e) if e.operation == Operation::Put => e,
            _ => {
                return match tokio::time::timeout(
                    self.timeout,
                    self.kv.create(key, self.in_flight(fingerprint)),
                )
                .await
                {
                    Err(_) => Err(BusError::Timeout("creating an idempotency record".into())),
                    Ok(Ok(revision)) => {
                        self.owned().insert(key.to_owned(), revision);
                        Ok(Step::Done(Claim::Owner {
                            reconcile_first: false,
                        }))
                    }
                    Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => Ok(Step::Retry),
                    Ok(Err(e)) => Err(BusError::js("creating an idempotency record", e)),
                };
            }
        };
        let record: Option<Record> = serde_json::from_slice(&entry.value).ok();
        if let Some(r) = &record {
            if r.fingerprint != fingerprint.to_string() {
                return Ok(Step::Done(Claim::Mismatch));
            }
        }
        match &record {
            Some(Record {
                state: State::Done,
                fulfillment: Some(f),
                ..
            }) => return Ok(Step::Done(Claim::Done(Box::new(f.clone())))),
            Some(Record {
                state: State::InFlight,
                ..
            }) => {
                let written_ms = entry.created.unix_timestamp_nanos() / 1_000_000;
                let age_ms = i128::from(Utc::now().timestamp_millis()) - written_ms;
                let remaining = self
                    .lease
                    .checked_sub(Duration::from_millis(u64::try_from(age_ms).unwrap_or(0)));
                match remaining {
                    Some(left) if !left.is_zero() => {
                        return Ok(Step::Done(Claim::Wait(self.wait_for_change(
                            key,
                            entry.revision,
                            left,
                        ))));
                    }
                    _ => {
                        tracing::warn!(key, owner = ?record.as_ref().and_then(|r| r.owner.as_deref()), "idempotency lease expired; taking over and reconciling first");
                    }
                }
            }
            // `unknown`, or a record this build cannot read: reconcile before posting.
            _ => {}
        }
        match tokio::time::timeout(
            self.timeout,
            self.kv
                .update(key, self.in_flight(fingerprint), entry.revision),
        )
        .await
        {
            Err(_) => Err(BusError::Timeout(
                "taking over an idempotency record".into(),
            )),
            Ok(Ok(revision)) => {
                self.owned().insert(key.to_owned(), revision);
                Ok(Step::Done(Claim::Owner {
                    reconcile_first: true,
                }))
            }
            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Step::Retry),
            Ok(Err(e)) => Err(BusError::js("taking over an idempotency record", e)),
        }
    }

    /// A receiver that changes once the record at `key` moves past `revision`, or once
    /// `lease_left` has passed (so the waiter can take over from a dead owner). The
    /// polling task ends when the receiver is dropped.
    fn wait_for_change(
        &self,
        key: &str,
        revision: u64,
        lease_left: Duration,
    ) -> watch::Receiver<u64> {
        let (tx, rx) = watch::channel(0u64);
        let kv = self.kv.clone();
        let key = key.to_owned();
        let timeout = self.timeout;
        let lease_end = tokio::time::Instant::now() + lease_left;
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(20);
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    // why: polling interval (backoff) of a key another replica owns.
                    () = tokio::time::sleep(pause) => {}
                }
                if tokio::time::Instant::now() >= lease_end {
                    tx.send_replace(1);
                    return;
                }
                match tokio::time::timeout(timeout, kv.entry(key.as_str())).await {
                    Ok(Ok(Some(e))) if e.revision == revision => {}
                    Ok(Ok(_)) => {
                        tx.send_replace(1);
                        return;
                    }
                    // Bus trouble: keep polling; the caller's deadline bounds the wait.
                    _ => {}
                }
                pause = (pause * 2).min(MAX_POLL_INTERVAL);
            }
        });
        rx
    }

    /// Writes `record` over this process's `in_flight` record, if it still owns it.
    async fn settle(&self, key: &str, record: Option<Record>, what: &str) {
        let Some(revision) = self.owned().remove(key) else {
            tracing::debug!(key, "settling a key this process does not own; ignored");
            return;
        };
        let result = match record {
            Some(r) => timed(
                self.timeout,
                what,
                self.kv.update(key, r.to_bytes(), revision),
            )
            .await
            .map(|_| ()),
            None => {
                timed(
                    self.timeout,
                    what,
                    self.kv.delete_expect_revision(key, Some(revision)),
                )
                .await
            }
        };
        if let Err(e) = result {
            tracing::warn!(key, error = %e, "{what} failed; the next claim of this key reconciles with DR first");
        }
    }
}

#[async_trait]
impl IdempotencyStore for KvIdempotencyStore {
    async fn claim(&self, key: &str, fingerprint: u64) -> Result<Claim, IdempotencyError> {
        let key = safe_key(key);
        for _ in 0..MAX_CLAIM_ROUNDS {
            match self.claim_round(&key, fingerprint).await {
                Ok(Step::Done(claim)) => return Ok(claim),
                Ok(Step::Retry) => continue,
                Err(e) => return Err(IdempotencyError::Unavailable(e.to_string())),
            }
        }
        Err(IdempotencyError::Unavailable(
            "too many concurrent claims of one request_id".into(),
        ))
    }

    async fn complete(&self, key: &str, fingerprint: u64, fulfillment: Fulfillment) {
        let mut record = Record::new(State::Done, fingerprint);
        record.fulfillment = Some(fulfillment);
        self.settle(&safe_key(key), Some(record), "storing a fulfillment result")
            .await;
    }

    async fn release(&self, key: &str) {
        self.settle(&safe_key(key), None, "releasing a request_id")
            .await;
    }

    async fn mark_unknown(&self, key: &str, fingerprint: u64) {
        self.settle(
            &safe_key(key),
            Some(Record::new(State::Unknown, fingerprint)),
            "marking an outcome unknown",
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_done_record_round_trips_with_large_fingerprints() {
        let mut r = Record::new(State::Done, u64::MAX);
        r.fulfillment = Some(Fulfillment {
            id: "ful_1".into(),
            ..Default::default()
        });
        let back: Record = serde_json::from_slice(&r.to_bytes()).unwrap();
        assert_eq!(back.state, State::Done);
        assert_eq!(back.fingerprint, u64::MAX.to_string());
        assert_eq!(back.fulfillment.unwrap().id, "ful_1");
    }
}

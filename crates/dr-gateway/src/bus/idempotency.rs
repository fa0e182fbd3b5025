//! [`KvIdempotencyStore`]: CreateFulfillment idempotency records in a JetStream
//! key-value bucket every replica shares, so a retry that lands on another replica
//! (or on a restarted one) gets the first result instead of a second
//! `POST /fulfillments` (DR has no idempotency key of its own: docs/digital-river.md §5.3).
//!
//! # Records
//! One JSON record per `request_id` (key = [`safe_key`] of it), kept for the
//! idempotency TTL after its last write (the bucket's max age):
//! - `in_flight` — a replica owns the key and is looking it up in DR or posting;
//! - `done` — the fulfillment DR returned (or the lookup found);
//! - `unknown` — no result is known: look the request up in DR first.
//!
//! Every record written by this build carries `may_land_until_ms`: the Unix time (ms,
//! the writer's clock) until which an earlier POST with the key may still be committed
//! by DR (0: none; docs/digital-river.md §5.5). The owner raises it **before** it posts
//! (`record_attempt`), so a replica that dies mid-POST leaves behind exactly how long
//! its POST may still land. A record without the field comes from an older build,
//! which wrote no such time: its attempt is assumed to land by the record's write
//! time + lease + commit bound.
//!
//! # Protocol
//! - **claim**: read the key. Absent (or deleted) → KV `create`, which succeeds for
//!   exactly one replica → `Owner`. `done` → `Done` (or `Mismatch` for another body).
//!   `unknown`, or `in_flight` whose owner's lease ran out (the owner died) → a
//!   compare-and-set to `in_flight` on the revision just read, keeping the landing
//!   time → `Owner` with that time as `hold_until`. `in_flight` within its lease →
//!   `Wait`: a small task polls the key with backoff and wakes the caller when it
//!   changes or the lease ends; the caller claims again within its own deadline.
//! - **record_attempt / complete / release / mark_unknown**: a compare-and-set on the
//!   revision this process last wrote. If it fails (the lease ran out and another
//!   replica took over, or the bus is down) the record keeps its last state and the
//!   next claimer, once the lease has passed, looks the request up in DR and honours
//!   the landing time — safe either way. A failed `record_attempt` stops the POST.
//! - **lease** = the longest one owner can spend after its last write (POST +
//!   lookup), measured from the record's server timestamp; replica clocks are assumed
//!   to agree to well within it and within the commit bound (NTP).
//!
//! The request fingerprint is SHA-256 over the canonical request body, the same on
//! every replica and every build.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

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
    /// Unix ms until which an earlier POST may land; 0 = none; absent = written by
    /// an older build (see the module docs).
    #[serde(default)]
    may_land_until_ms: Option<i64>,
}

impl Record {
    fn new(state: State, fingerprint: u64, may_land_until_ms: i64) -> Self {
        Self {
            state,
            fingerprint: fingerprint.to_string(),
            owner: None,
            fulfillment: None,
            may_land_until_ms: Some(may_land_until_ms),
        }
    }

    fn to_bytes(&self) -> Bytes {
        // why: serialising a struct of strings and a plain model cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// A key this process owns: the revision of its last write and the landing time
/// the record carries.
#[derive(Debug, Clone, Copy)]
struct Owned {
    revision: u64,
    may_land_until_ms: i64,
}

/// See the module docs.
pub struct KvIdempotencyStore {
    kv: kv::Store,
    timeout: Duration,
    lease: Duration,
    commit_bound: Duration,
    /// This process, in records (diagnostics only).
    owner: String,
    /// Keys this process owns.
    owned: Mutex<HashMap<String, Owned>>,
}

impl std::fmt::Debug for KvIdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvIdempotencyStore")
            .field("lease", &self.lease)
            .field("commit_bound", &self.commit_bound)
            .finish_non_exhaustive()
    }
}

enum Step {
    Done(Claim),
    Retry,
}

/// Now on this replica's wall clock, in Unix ms.
fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A local instant as Unix ms on this replica's wall clock.
fn to_unix_ms(at: Instant) -> i64 {
    let now = Instant::now();
    let delta = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if at >= now {
        now_ms().saturating_add(delta(at - now))
    } else {
        now_ms().saturating_sub(delta(now - at))
    }
}

/// Unix ms as a local instant, if it is still ahead.
fn ahead(unix_ms: i64) -> Option<Instant> {
    let left = unix_ms.checked_sub(now_ms()).filter(|left| *left > 0)?;
    Some(Instant::now() + Duration::from_millis(u64::try_from(left).ok()?))
}

impl KvIdempotencyStore {
    /// Creates or checks the bucket (max age `ttl`); `lease` is how long an owner may
    /// hold a key after its last write before others assume it died; `commit_bound`
    /// is how long DR may take to commit a POST (for records of older builds).
    pub async fn open(
        bus: &Bus,
        ttl: Duration,
        lease: Duration,
        commit_bound: Duration,
    ) -> Result<Self, BusError> {
        let kv = ensure_kv(bus, &bus.config().idempotency_bucket, ttl).await?;
        Ok(Self {
            kv,
            timeout: bus.config().request_timeout,
            lease,
            commit_bound,
            owner: format!("pid{}-{:08x}", std::process::id(), rand::random::<u32>()),
            owned: Mutex::new(HashMap::new()),
        })
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, HashMap<String, Owned>> {
        // why: plain map, consistent between statements; recover instead of poisoning.
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_flight(&self, fingerprint: u64, may_land_until_ms: i64) -> Bytes {
        let mut r = Record::new(State::InFlight, fingerprint, may_land_until_ms);
        r.owner = Some(self.owner.clone());
        r.to_bytes()
    }

    /// Until when an attempt recorded in `record` (written at `written_ms`) may land.
    fn landing_of(&self, record: Option<&Record>, written_ms: i64) -> i64 {
        match record.and_then(|r| r.may_land_until_ms) {
            Some(ms) => ms,
            // why: an older build's record, or one this build cannot read: its
            // owner may have posted at any time within its lease.
            None => {
                let span = self.lease + self.commit_bound;
                written_ms.saturating_add(i64::try_from(span.as_millis()).unwrap_or(i64::MAX))
            }
        }
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
                    self.kv.create(key, self.in_flight(fingerprint, 0)),
                )
                .await
                {
                    Err(_) => Err(BusError::Timeout("creating an idempotency record".into())),
                    Ok(Ok(revision)) => {
                        self.owned().insert(
                            key.to_owned(),
                            Owned {
                                revision,
                                may_land_until_ms: 0,
                            },
                        );
                        Ok(Step::Done(Claim::Owner { hold_until: None }))
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
        let written_ms =
            i64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
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
                let age_ms = now_ms().saturating_sub(written_ms);
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
                        tracing::warn!(key, owner = ?record.as_ref().and_then(|r| r.owner.as_deref()), "idempotency lease expired; taking over, honouring its attempt");
                    }
                }
            }
            // `unknown`, or a record this build cannot read: look DR up before posting.
            _ => {}
        }
        let landing = self.landing_of(record.as_ref(), written_ms);
        match tokio::time::timeout(
            self.timeout,
            self.kv
                .update(key, self.in_flight(fingerprint, landing), entry.revision),
        )
        .await
        {
            Err(_) => Err(BusError::Timeout(
                "taking over an idempotency record".into(),
            )),
            Ok(Ok(revision)) => {
                self.owned().insert(
                    key.to_owned(),
                    Owned {
                        revision,
                        may_land_until_ms: landing,
                    },
                );
                Ok(Step::Done(Claim::Owner {
                    hold_until: ahead(landing),
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

    /// Writes the record built from the key's landing time over this process's last
    /// write, if it still owns the key; `keep` leaves it owned (for the next write).
    async fn settle(
        &self,
        key: &str,
        record: impl FnOnce(i64) -> Option<Record>,
        keep: bool,
        what: &str,
    ) -> Result<(), IdempotencyError> {
        let owned = {
            let owned = self.owned();
            owned.get(key).copied()
        };
        let Some(owned) = owned else {
            tracing::debug!(key, "settling a key this process does not own; ignored");
            return Err(IdempotencyError::Unavailable(format!(
                "{what}: this process no longer owns the key"
            )));
        };
        let next = record(owned.may_land_until_ms);
        let landing = next
            .as_ref()
            .and_then(|r| r.may_land_until_ms)
            .unwrap_or(owned.may_land_until_ms);
        let result = match next {
            Some(r) => timed(
                self.timeout,
                what,
                self.kv.update(key, r.to_bytes(), owned.revision),
            )
            .await
            .map(Some),
            None => timed(
                self.timeout,
                what,
                self.kv.delete_expect_revision(key, Some(owned.revision)),
            )
            .await
            .map(|()| None),
        };
        let mut map = self.owned();
        match (&result, keep) {
            (Ok(Some(revision)), true) => {
                map.insert(
                    key.to_owned(),
                    Owned {
                        revision: *revision,
                        may_land_until_ms: landing,
                    },
                );
            }
            // A failed write that keeps the key: the record still holds our last
            // revision, or another write landed (a timeout); later writes find out.
            (Err(_), true) => {}
            _ => {
                map.remove(key);
            }
        }
        drop(map);
        if let Err(e) = &result {
            tracing::warn!(key, error = %e, "{what} failed; the next claim of this key looks it up in DR first");
        }
        result
            .map(|_| ())
            .map_err(|e| IdempotencyError::Unavailable(e.to_string()))
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

    async fn record_attempt(
        &self,
        key: &str,
        fingerprint: u64,
        may_land_until: Instant,
    ) -> Result<(), IdempotencyError> {
        let until = to_unix_ms(may_land_until);
        let owner = self.owner.clone();
        self.settle(
            &safe_key(key),
            |held| {
                let mut r = Record::new(State::InFlight, fingerprint, held.max(until));
                r.owner = Some(owner);
                Some(r)
            },
            true,
            "recording a POST attempt",
        )
        .await
    }

    async fn complete(&self, key: &str, fingerprint: u64, fulfillment: Fulfillment) {
        let _ = self
            .settle(
                &safe_key(key),
                |_| {
                    let mut record = Record::new(State::Done, fingerprint, 0);
                    record.fulfillment = Some(fulfillment);
                    Some(record)
                },
                false,
                "storing a fulfillment result",
            )
            .await;
    }

    async fn release(&self, key: &str) {
        let _ = self
            .settle(&safe_key(key), |_| None, false, "releasing a request_id")
            .await;
    }

    async fn mark_unknown(&self, key: &str, fingerprint: u64, own_attempt: Option<Instant>) {
        let own = own_attempt.map(to_unix_ms);
        let _ = self
            .settle(
                &safe_key(key),
                |held| {
                    Some(Record::new(
                        State::Unknown,
                        fingerprint,
                        own.unwrap_or(held),
                    ))
                },
                false,
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
        let mut r = Record::new(State::Done, u64::MAX, 0);
        r.fulfillment = Some(Fulfillment {
            id: "ful_1".into(),
            ..Default::default()
        });
        let back: Record = serde_json::from_slice(&r.to_bytes()).unwrap();
        assert_eq!(back.state, State::Done);
        assert_eq!(back.fingerprint, u64::MAX.to_string());
        assert_eq!(back.fulfillment.unwrap().id, "ful_1");
        assert_eq!(back.may_land_until_ms, Some(0));
    }

    #[test]
    fn a_record_of_an_older_build_has_no_landing_time() {
        let old = br#"{"state":"in_flight","fingerprint":"7","owner":"pid1"}"#;
        let r: Record = serde_json::from_slice(old).unwrap();
        assert_eq!(r.may_land_until_ms, None);
    }

    #[test]
    fn landing_times_survive_the_trip_through_wall_clock_milliseconds() {
        let at = Instant::now() + Duration::from_secs(30);
        let back = ahead(to_unix_ms(at)).expect("still ahead");
        let gap = if back > at { back - at } else { at - back };
        assert!(gap <= Duration::from_millis(5), "{gap:?}");
        assert_eq!(ahead(to_unix_ms(Instant::now())), None);
    }
}

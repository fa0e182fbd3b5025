//! [`JetStreamLog`]: the [`EventLog`] every replica shares through one JetStream
//! stream.
//!
//! # Mapping the trait contract
//! - **Sequence** = stream sequence. The stream is dedicated to DR events and a
//!   duplicate publish does not consume a sequence, so sequences increase by one per
//!   stored event. Deviation: a message someone else publishes on the stream's
//!   subjects that is not a DR event takes a sequence and is skipped by readers (a
//!   gap in the sequences they see, never a gap in events).
//! - **log id** = first 8 bytes of SHA-256(stream name, stream creation time): every
//!   replica computes the same value, and a stream deleted and recreated by hand gets
//!   a new one, so old cursors are recognised as foreign instead of misread.
//! - **Dedup**: the DR event id is the `Nats-Msg-Id` (JetStream drops repeats within
//!   its duplicate window — a webhook that hits two replicas at once) and is recorded
//!   in the `<stream>_IDS` bucket, checked before publishing (redeliveries after the
//!   window, up to the stream's max age).
//! - **Append** returns after JetStream acknowledged the publish (stored on disk, on a
//!   quorum in a cluster); only then does the webhook answer 2xx.
//! - **Retention**: age and bytes, oldest first (`discard: old`, `deny_delete`), so the
//!   held range is contiguous; reading a dropped position is [`LogError::Expired`].
//! - **Waking**: each replica tails the stream with an ordered pull consumer, decodes
//!   each event once into the [`EventCache`] and advances
//!   [`watch_appends`](EventLog::watch_appends); its own appends advance it at once.
//!   Reads are served from the cache and fall back to fetching by sequence.
//! - **received_at** is the receiving replica's clock, carried in a header so every
//!   replica reports the same value; time lookups assume replica clocks roughly agree.

use std::{
    future::IntoFuture as _,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_nats::{
    jetstream::{
        consumer::{pull, DeliverPolicy},
        kv,
        stream::{self, RawMessageErrorKind},
    },
    HeaderMap,
};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    cache::EventCache,
    provision::{ensure_kv, ensure_stream, event_stream_config},
    timed, Bus, BusError,
};
use crate::{
    clock::Clock,
    events::{
        envelope::Envelope,
        log::{Appended, Bounds, EventLog, LogError, LogStats, Sequence, StoredEvent},
        proto::EventEncoder,
    },
};

/// Header carrying when the receiving replica accepted the event (RFC 3339).
pub const RECEIVED_AT_HEADER: &str = "Dr-Gateway-Received-At";

/// Header carrying the span that stored the event (W3C `traceparent`), when traces
/// are exported.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Fetches by sequence in flight at once when a read misses the cache.
const FETCH_CONCURRENCY: usize = 16;

/// Events looked at to find the newest `createdTime` (see
/// [`EventLog::newest_created_time`]).
const NEWEST_SCAN: u64 = 64;

/// The JetStream event log. Dropping it stops its tail task.
pub struct JetStreamLog {
    inner: Arc<Inner>,
    tail_stop: CancellationToken,
}

struct Inner {
    bus: Bus,
    stream: stream::Stream,
    ids: kv::Store,
    log_id: u64,
    encoder: EventEncoder,
    clock: Arc<dyn Clock>,
    cache: Mutex<EventCache>,
    /// Highest sequence known to exist; everything up to it is readable.
    appended: watch::Sender<Sequence>,
}

impl std::fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLog")
            .field("stream", &self.inner.bus.config().stream)
            .field("log_id", &self.inner.log_id)
            .finish_non_exhaustive()
    }
}

impl Drop for JetStreamLog {
    fn drop(&mut self) {
        self.tail_stop.cancel();
    }
}

/// Why one message could not be read.
enum FetchError {
    /// No message at that sequence (dropped by retention, or not written).
    NotFound,
    /// The bus failed.
    Bus(BusError),
}

impl JetStreamLog {
    /// Creates or checks the stream and the ids bucket, then starts tailing.
    pub async fn open(
        bus: Bus,
        encoder: EventEncoder,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, BusError> {
        let config = bus.config().clone();
        let stream = ensure_stream(&bus, event_stream_config(&bus)).await?;
        let ids = ensure_kv(&bus, &config.ids_bucket(), config.max_age).await?;
        let info = stream.cached_info().clone();
        let log_id = derive_log_id(&info.config.name, info.created.unix_timestamp_nanos());
        let last = info.state.last_sequence;
        tracing::info!(
            stream = %info.config.name,
            log_id = format_args!("{log_id:016x}"),
            first = info.state.first_sequence,
            last,
            dedup_window = ?config.duplicate_window,
            max_age = ?config.max_age,
            "JetStream event log ready"
        );
        let (appended, _) = watch::channel(last);
        let inner = Arc::new(Inner {
            bus,
            stream,
            ids,
            log_id,
            encoder,
            clock,
            cache: Mutex::new(EventCache::new(
                config.cache_max_events,
                config.cache_max_bytes,
            )),
            appended,
        });
        let tail_stop = CancellationToken::new();
        tokio::spawn(tail(inner.clone(), last + 1, tail_stop.clone()));
        Ok(Self { inner, tail_stop })
    }

    /// The bus this log uses.
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }
}

/// Stable across replicas: SHA-256 of the stream's name and creation time.
fn derive_log_id(stream: &str, created_nanos: i128) -> u64 {
    let mut h = Sha256::new();
    h.update(stream.as_bytes());
    h.update([0u8]);
    h.update(created_nanos.to_be_bytes());
    let digest = h.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(id)
}

/// A string usable as a KV key and a `Nats-Msg-Id`: itself when it is plain
/// (letters, digits, `-`, `_`; DR ids are UUIDs), else `h_` + hex SHA-256.
pub fn safe_key(raw: &str) -> String {
    let plain = !raw.is_empty()
        && raw.len() <= 200
        && !raw.starts_with("h_")
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return raw.to_owned();
    }
    let digest = Sha256::digest(raw.as_bytes());
    let mut out = String::with_capacity(2 + 64);
    out.push_str("h_");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `order.charge.capture.complete` → the same tokens, with anything NATS would read as
/// a wildcard or separator replaced, so the event type is filterable by subject.
fn subject_for(stream: &str, event_type: &str) -> String {
    let mut subject = String::with_capacity(stream.len() + event_type.len() + 1);
    subject.push_str(stream);
    for token in event_type.split('.').take(16) {
        subject.push('.');
        if token.is_empty() {
            subject.push('_');
        }
        subject.extend(token.chars().map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        }));
    }
    subject
}

fn from_nanos(nanos: i128) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

fn unavailable(e: BusError) -> LogError {
    LogError::Unavailable(Box::new(e))
}

// === impl Inner ===

impl Inner {
    fn cache(&self) -> MutexGuard<'_, EventCache> {
        // why: nothing panics while holding it; a poisoned cache is still consistent.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn timeout(&self) -> Duration {
        self.bus.config().request_timeout
    }

    /// Moves the "known last sequence" forward (never back).
    fn advance(&self, seq: Sequence) {
        self.appended.send_if_modified(|last| {
            if seq > *last {
                *last = seq;
                true
            } else {
                false
            }
        });
    }

    /// Builds the stored form of a message read back from the stream.
    fn decode(
        &self,
        seq: Sequence,
        headers: Option<&HeaderMap>,
        payload: Bytes,
        server_time: DateTime<Utc>,
    ) -> Option<Arc<StoredEvent>> {
        let envelope = match Envelope::parse(payload) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(seq, error = %e, "stream message is not a DR event; skipped");
                return None;
            }
        };
        let received_at = headers
            .and_then(|h| h.get(RECEIVED_AT_HEADER))
            .and_then(|v| DateTime::parse_from_rfc3339(v.as_str()).ok())
            .map_or(server_time, |t| t.with_timezone(&Utc));
        let mut stored = StoredEvent::build(seq, self.log_id, received_at, envelope, &self.encoder);
        if let Some(traceparent) = headers.and_then(|h| h.get(TRACEPARENT_HEADER)) {
            stored.intake_span =
                crate::telemetry::otel::span_context_from_traceparent(traceparent.as_str());
        }
        Some(Arc::new(stored))
    }

    /// The event at `seq`: cached, or fetched (and cached). `Ok(None)` when the
    /// message there is not a DR event.
    async fn event_at(&self, seq: Sequence) -> Result<Option<Arc<StoredEvent>>, FetchError> {
        if let Some(e) = self.cache().get(seq) {
            return Ok(Some(e));
        }
        let fetched = tokio::time::timeout(self.timeout(), self.stream.get_raw_message(seq)).await;
        let msg = match fetched {
            Err(_) => {
                return Err(FetchError::Bus(BusError::Timeout(
                    "reading an event".into(),
                )))
            }
            Ok(Err(e)) if e.kind() == RawMessageErrorKind::NoMessageFound => {
                return Err(FetchError::NotFound)
            }
            Ok(Err(e)) => return Err(FetchError::Bus(BusError::js("reading an event", e))),
            Ok(Ok(msg)) => msg,
        };
        let event = self.decode(
            seq,
            Some(&msg.headers),
            msg.payload,
            from_nanos(msg.time.unix_timestamp_nanos()),
        );
        if let Some(e) = &event {
            self.cache().insert(e.clone());
        }
        Ok(event)
    }

    /// Fresh bounds from the server; also advances the known last sequence, so a
    /// replica whose tail lags still serves what other replicas appended.
    async fn fresh_bounds(&self) -> Result<Bounds, BusError> {
        let info = timed(
            self.timeout(),
            "reading stream state",
            self.stream.get_info(),
        )
        .await?;
        let last = info.state.last_sequence;
        let first = if info.state.messages == 0 {
            last + 1
        } else {
            info.state.first_sequence
        };
        self.advance(last);
        Ok(Bounds { first, last })
    }

    /// The sequence an earlier append of this DR id got, if any is remembered.
    async fn known_id(&self, key: &str, id: &str) -> Result<Option<Sequence>, BusError> {
        if let Some(seq) = self.cache().seq_of_id(id) {
            return Ok(Some(seq));
        }
        let value = timed(self.timeout(), "looking up an event id", self.ids.get(key)).await?;
        Ok(value.and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok()))
    }
}

// === impl EventLog ===

#[async_trait]
impl EventLog for JetStreamLog {
    fn log_id(&self) -> u64 {
        self.inner.log_id
    }

    #[tracing::instrument(name = "jetstream.append", skip_all, fields(event_id = %envelope.id))]
    async fn append(&self, envelope: Envelope) -> Result<Appended, LogError> {
        let inner = &self.inner;
        let key = safe_key(&envelope.id);
        if let Some(seq) = inner
            .known_id(&key, &envelope.id)
            .await
            .map_err(unavailable)?
        {
            return Ok(Appended {
                seq,
                duplicate: true,
            });
        }
        let received_at = inner.clock.now();
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, key.as_str());
        headers.insert(
            RECEIVED_AT_HEADER,
            received_at
                .to_rfc3339_opts(SecondsFormat::Millis, true)
                .as_str(),
        );
        // why: a replica that tails this event delivers it as a child of this span.
        if let Some(traceparent) = crate::telemetry::otel::current_traceparent() {
            headers.insert(TRACEPARENT_HEADER, traceparent.as_str());
        }
        let subject = subject_for(&inner.bus.config().stream, &envelope.event_type);
        let js = inner.bus.jetstream();
        let pending = timed(
            inner.timeout(),
            "publishing an event",
            js.publish_with_headers(subject, headers, envelope.raw.clone()),
        )
        .await
        .map_err(unavailable)?;
        let ack = timed(
            inner.timeout(),
            "awaiting the publish ack",
            pending.into_future(),
        )
        .await
        .map_err(unavailable)?;
        let seq = ack.sequence;
        inner.advance(seq);
        if ack.duplicate {
            return Ok(Appended {
                seq,
                duplicate: true,
            });
        }
        // why: beyond JetStream's duplicate window only this record catches a DR
        // redelivery. The event is already stored, so a failure here is logged, not
        // returned: answering 5xx would only make DR re-send what is stored.
        if let Err(e) = timed(
            inner.timeout(),
            "recording an event id",
            inner.ids.put(&key, Bytes::from(seq.to_string())),
        )
        .await
        {
            tracing::warn!(seq, error = %e, "event stored but its id was not recorded; a redelivery after the dedup window would be stored again");
        }
        let prepared = inner.encoder.prepare(&envelope);
        let stored = Arc::new(StoredEvent::from_prepared(
            seq,
            inner.log_id,
            received_at,
            envelope,
            prepared,
        ));
        inner.cache().insert(stored);
        Ok(Appended {
            seq,
            duplicate: false,
        })
    }

    async fn read_after(
        &self,
        after: Sequence,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        let inner = &self.inner;
        let known_last = *inner.appended.borrow();
        if after >= known_last || limit == 0 {
            return Ok(Vec::new());
        }
        let end = known_last.min(after.saturating_add(limit as u64));
        let cached = inner.cache().range(after + 1, end);
        if cached.len() as u64 == end - after {
            return Ok(cached);
        }
        drop(cached);
        // Fill the holes, fetching concurrently but consuming in order.
        let mut fetches = futures::stream::iter(after + 1..=end)
            .map(|seq| {
                let hit = inner.cache().get(seq);
                async move {
                    match hit {
                        Some(e) => (seq, Ok(Some(e))),
                        None => (seq, inner.event_at(seq).await),
                    }
                }
            })
            .buffered(FETCH_CONCURRENCY);
        let mut out = Vec::with_capacity((end - after) as usize);
        while let Some((seq, result)) = fetches.next().await {
            match result {
                Ok(Some(event)) => out.push(event),
                Ok(None) => {}
                Err(FetchError::NotFound) => {
                    if out.is_empty() {
                        let bounds = inner.fresh_bounds().await.map_err(unavailable)?;
                        if seq < bounds.first {
                            return Err(LogError::Expired {
                                after,
                                oldest: bounds.first,
                            });
                        }
                    }
                    break;
                }
                Err(FetchError::Bus(e)) => {
                    if out.is_empty() {
                        return Err(unavailable(e));
                    }
                    tracing::debug!(error = %e, "read cut short; returning what was read");
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn bounds(&self) -> Result<Bounds, LogError> {
        self.inner.fresh_bounds().await.map_err(unavailable)
    }

    async fn first_received_at_or_after(
        &self,
        time: DateTime<Utc>,
    ) -> Result<Option<Sequence>, LogError> {
        let inner = &self.inner;
        let bounds = inner.fresh_bounds().await.map_err(unavailable)?;
        if bounds.first > bounds.last {
            return Ok(None);
        }
        // Binary search for the first event received at or after `time`. A position
        // dropped meanwhile or not holding an event counts as "earlier".
        let (mut lo, mut hi) = (bounds.first, bounds.last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at_or_after = match inner.event_at(mid).await {
                Ok(Some(e)) => e.received_at >= time,
                Ok(None) | Err(FetchError::NotFound) => false,
                Err(FetchError::Bus(e)) => return Err(unavailable(e)),
            };
            if at_or_after {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok((lo <= bounds.last).then_some(lo))
    }

    async fn get_by_id(&self, id: &str) -> Result<Option<Arc<StoredEvent>>, LogError> {
        let inner = &self.inner;
        let Some(seq) = inner
            .known_id(&safe_key(id), id)
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        match inner.event_at(seq).await {
            Ok(Some(e)) if e.meta.id == id => Ok(Some(e)),
            Ok(_) | Err(FetchError::NotFound) => Ok(None),
            Err(FetchError::Bus(e)) => Err(unavailable(e)),
        }
    }

    /// The newest `createdTime` among the last few held events: a lower bound of the
    /// true newest (the log is in arrival order), which is the safe side for
    /// backfill — it starts listing a little earlier and dedup drops the repeats.
    async fn newest_created_time(&self) -> Result<Option<DateTime<Utc>>, LogError> {
        let bounds = self.bounds().await?;
        if bounds.first > bounds.last {
            return Ok(None);
        }
        let from = bounds
            .first
            .max(bounds.last.saturating_sub(NEWEST_SCAN - 1));
        let events = match self.read_after(from - 1, NEWEST_SCAN as usize).await {
            Ok(events) => events,
            Err(LogError::Expired { oldest, .. }) => {
                self.read_after(oldest - 1, NEWEST_SCAN as usize).await?
            }
            Err(e) => return Err(e),
        };
        Ok(events.iter().map(|e| e.meta.created_time).max())
    }

    async fn check_ready(&self) -> Result<(), LogError> {
        if !self.inner.bus.is_connected() {
            return Err(LogError::Unavailable("not connected to NATS".into()));
        }
        self.inner
            .fresh_bounds()
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    fn watch_appends(&self) -> watch::Receiver<Sequence> {
        self.inner.appended.subscribe()
    }

    /// The stream's own count, bytes and oldest message time (one request).
    async fn stats(&self) -> Result<LogStats, LogError> {
        let inner = &self.inner;
        let info = timed(
            inner.timeout(),
            "reading stream state",
            inner.stream.get_info(),
        )
        .await
        .map_err(unavailable)?;
        let state = &info.state;
        Ok(LogStats {
            events: state.messages,
            bytes: Some(state.bytes),
            oldest_received_at: (state.messages > 0)
                .then(|| from_nanos(state.first_timestamp.unix_timestamp_nanos())),
        })
    }
}

// === tail task ===

/// Follows the stream from `next` with an ordered pull consumer, caching each event
/// and waking local readers; re-creates the consumer after any failure (e.g. NATS
/// restarted) from the first sequence not yet seen, so nothing is skipped.
async fn tail(inner: Arc<Inner>, mut next: Sequence, stop: CancellationToken) {
    let mut failures: u32 = 0;
    let mut connects = inner.bus.connects();
    loop {
        connects.borrow_and_update();
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = tail_once(&inner, &mut next, &mut failures) => r,
            // why: after a NATS restart the old consumer is gone; the client would
            // notice only after two missed heartbeats. Start over from `next` now.
            Ok(()) = connects.changed() => {
                tracing::debug!(next, "NATS reconnected; restarting the event stream tail");
                continue;
            }
        };
        if let Err(e) = result {
            failures = failures.saturating_add(1);
            let level_warn = failures == 1 || failures.is_multiple_of(30);
            if level_warn {
                tracing::warn!(error = %e, next, failures, "event stream tail interrupted; resuming");
            } else {
                tracing::debug!(error = %e, next, failures, "event stream tail still interrupted");
            }
        }
        let pause =
            Duration::from_millis(50 * 2u64.pow(failures.min(5))).min(Duration::from_secs(2));
        tokio::select! {
            () = stop.cancelled() => return,
            // why: retry pacing while NATS is away, not synchronisation.
            () = tokio::time::sleep(pause) => {}
        }
    }
}

async fn tail_once(inner: &Inner, next: &mut Sequence, failures: &mut u32) -> Result<(), BusError> {
    let config = pull::OrderedConfig {
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: *next,
        },
        ..Default::default()
    };
    let consumer = timed(
        inner.timeout() * 2,
        "creating the tail consumer",
        inner.stream.create_consumer(config),
    )
    .await?;
    let mut messages = timed(
        inner.timeout() * 2,
        "starting the tail",
        consumer.messages(),
    )
    .await?;
    if *failures > 0 {
        tracing::info!(next = *next, "event stream tail resumed");
    }
    *failures = 0;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| BusError::js("tailing the stream", e))?;
        let (seq, published) = {
            let info = message.info().map_err(|e| {
                BusError::js(
                    "reading message metadata",
                    std::io::Error::other(e.to_string()),
                )
            })?;
            (info.stream_sequence, info.published.unix_timestamp_nanos())
        };
        if !inner.cache().contains(seq) {
            let event = inner.decode(
                seq,
                message.headers.as_ref(),
                message.payload.clone(),
                from_nanos(published),
            );
            if let Some(e) = event {
                inner.cache().insert(e);
            }
        }
        *next = seq + 1;
        inner.advance(seq);
    }
    Err(BusError::Timeout("tail ended".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_their_own_keys_and_others_are_hashed() {
        let uuid = "5d6b7b8e-2b55-4b7e-9b07-5b4a8a3a4c11";
        assert_eq!(safe_key(uuid), uuid);
        let odd = safe_key("evt 1\r\nX-Injected: yes");
        assert!(odd.starts_with("h_") && odd.len() == 66, "{odd}");
        assert_ne!(safe_key("h_abc"), "h_abc");
        assert!(safe_key("").starts_with("h_"));
    }

    #[test]
    fn event_types_become_subject_tokens() {
        assert_eq!(
            subject_for("S", "order.charge.capture.complete"),
            "S.order.charge.capture.complete"
        );
        assert_eq!(subject_for("S", "a.*.>..b c"), "S.a._._._.b_c");
    }

    #[test]
    fn the_log_id_depends_on_name_and_creation_time() {
        let a = derive_log_id("S", 1);
        assert_eq!(a, derive_log_id("S", 1));
        assert_ne!(a, derive_log_id("S", 2));
        assert_ne!(a, derive_log_id("T", 1));
    }
}

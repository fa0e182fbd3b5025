//! The event log: the [`EventLog`] trait every backend implements, the stored event
//! type, and the opaque cursor format.
//!
//! # Contract
//! - **Sequences.** Each appended event gets a sequence number, strictly increasing
//!   by one per append, starting at 1 (`0` means "before the first event"). Order
//!   in the log is *arrival* order at the gateway, not DR's `createdTime`: DR does not
//!   promise ordered delivery (docs/digital-river.md §4.2), and backfilled events are
//!   appended when backfill finds them. For JetStream the sequence is the stream
//!   sequence.
//! - **Dedup.** [`EventLog::append`] is idempotent on the DR event id within the
//!   backend's dedup window: a second append of a known id stores nothing and returns
//!   the first one's sequence with `duplicate: true`.
//! - **Retention.** A backend may drop its oldest events (bounds, age). It never
//!   drops from the middle, so the held events are always the contiguous range
//!   `first..=last` of [`Bounds`].
//! - **Reading.** [`EventLog::read_after`] returns the events right after a sequence,
//!   contiguous and in order, or [`LogError::Expired`] when some of them were
//!   dropped. Readers never block writers.
//! - **Waking.** [`EventLog::watch_appends`] yields the last assigned sequence, so a
//!   reader sleeps until it moves (a `tokio::sync::watch`; any number of receivers,
//!   no per-receiver buffering).
//! - **Cursors.** Callers only see cursors ([`Cursor`]), never raw sequences; a
//!   cursor names the log instance ([`EventLog::log_id`]) so one from another
//!   instance (e.g. an in-memory log before a restart) is recognised, not misread.

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use opentelemetry::trace::SpanContext;

use prost::Message as _;

use super::{
    envelope::{Envelope, EventMeta},
    proto::EventEncoder,
};
use crate::pb::v1 as pb;

/// Position of an event in a log; see the module docs.
pub type Sequence = u64;

/// What an [`EventLog`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The requested position is older than anything the log still holds.
    #[error("events after sequence {after} are no longer held; oldest is {oldest}")]
    Expired {
        /// The position asked for.
        after: Sequence,
        /// The oldest sequence still held.
        oldest: Sequence,
    },
    /// The backend cannot be reached or failed; the caller may retry.
    #[error("event log unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Result of [`EventLog::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Sequence of the event (the earlier one's for a duplicate).
    pub seq: Sequence,
    /// True when the id was already known and nothing was stored.
    pub duplicate: bool,
}

/// The range of sequences a log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Oldest held sequence; `last + 1` when the log is empty.
    pub first: Sequence,
    /// Last assigned sequence; 0 before the first append.
    pub last: Sequence,
}

impl Bounds {
    /// True when resuming after `after` would miss dropped events.
    pub fn is_expired(&self, after: Sequence) -> bool {
        after.saturating_add(1) < self.first
    }
}

/// An event as the log stores and hands it out: what it is routed by ([`EventMeta`])
/// and one encoding of it, the `SubscribeResponse` every subscriber is sent, shared
/// by every reader via `Arc`.
///
/// why: this is the only form of the event the log keeps. DR's bytes, the parsed
/// JSON and the protobuf message are each as large as the event or larger; holding
/// them all made an event cost ~20 times its JSON (`cargo bench --bench
/// event_memory`). Readers that need more than the routing facts decode the
/// encoding ([`decode_event`](Self::decode_event)), which few do (outcome waits).
#[derive(Debug)]
pub struct StoredEvent {
    /// Position in the log.
    pub seq: Sequence,
    /// When the gateway stored it (monotonic within a log).
    pub received_at: DateTime<Utc>,
    /// What the event is routed and ordered by.
    pub meta: EventMeta,
    /// `SubscribeResponse { event }`, cursor set, encoded once for every subscriber.
    pub encoded_response: Bytes,
    /// The log the event is in (for its cursor).
    log_id: u64,
    /// Bytes the event holds in memory ([`super::footprint`]), computed once.
    footprint: usize,
    /// The span that stored it (webhook intake or backfill), when traces are
    /// exported: the parent of its deliveries to subscribers.
    pub intake_span: Option<SpanContext>,
}

impl StoredEvent {
    /// Builds the stored form of an event; backends call this so every backend
    /// converts and encodes the same way.
    pub fn build(
        seq: Sequence,
        log_id: u64,
        received_at: DateTime<Utc>,
        envelope: Envelope,
        encoder: &EventEncoder,
    ) -> Self {
        let prepared = encoder.prepare(&envelope);
        Self::from_prepared(seq, log_id, received_at, envelope, prepared)
    }

    /// Finishes a [`PreparedEvent`]: sets the cursor and frames the response. Cheap,
    /// so a backend can do it while holding its append lock.
    pub fn from_prepared(
        seq: Sequence,
        log_id: u64,
        received_at: DateTime<Utc>,
        envelope: Envelope,
        prepared: PreparedEvent,
    ) -> Self {
        let footprint = prepared.footprint;
        let encoded_response = prepared.into_response(Cursor { log_id, seq });
        Self {
            seq,
            received_at,
            meta: EventMeta::from(envelope),
            encoded_response,
            log_id,
            footprint,
            intake_span: crate::telemetry::otel::current_span_context(),
        }
    }

    /// The event's cursor.
    pub fn cursor(&self) -> String {
        Cursor {
            log_id: self.log_id,
            seq: self.seq,
        }
        .encode()
    }

    /// The encoded `Event` inside [`encoded_response`](Self::encoded_response)
    /// (without the `SubscribeResponse` field header), shared, for messages that
    /// embed the event in another field (consumer group deliveries).
    pub fn encoded_event(&self) -> Bytes {
        let mut rest = self.encoded_response.get(1..).unwrap_or_default();
        let before = rest.len();
        // why: the response is built by `encode_response_with_cursor` (field 1,
        // length-delimited), so the varint is there; fall back to empty otherwise.
        match prost::encoding::decode_varint(&mut rest) {
            Ok(len) if usize::try_from(len).is_ok_and(|len| len == rest.len()) => {
                let header = 1 + before - rest.len();
                self.encoded_response.slice(header..)
            }
            _ => Bytes::new(),
        }
    }

    /// The protobuf event, cursor set, decoded from the stored encoding (a copy;
    /// costs a decode, so only for the few readers that look inside an event).
    pub fn decode_event(&self) -> Result<pb::Event, prost::DecodeError> {
        pb::Event::decode(self.encoded_event())
    }

    /// Memory this event holds, for byte bounds: its encoding, its routing facts and
    /// its index entries, as [`super::footprint`] counts them (computed once, when
    /// prepared).
    pub fn approx_size(&self) -> usize {
        self.footprint
    }
}

/// An event converted to protobuf and encoded as its `SubscribeResponse`, with
/// room for the cursor it gets when a log places it (the expensive part of
/// [`StoredEvent::build`], done before a sequence is assigned).
#[derive(Debug)]
pub struct PreparedEvent {
    /// The encoded response; [`Cursor::TEXT_LEN`] bytes at `cursor_at` are the
    /// cursor's, still to be written.
    pub(super) response: Vec<u8>,
    /// Where the cursor's text goes in `response`.
    pub(super) cursor_at: usize,
    /// What the stored event will hold in memory ([`super::footprint`]); computed
    /// here, outside any log's lock.
    pub footprint: usize,
}

impl PreparedEvent {
    /// The response with `cursor` written into its room: no copy of the event.
    fn into_response(mut self, cursor: Cursor) -> Bytes {
        let mut text = [0u8; Cursor::TEXT_LEN];
        cursor.encode_into(&mut text);
        let room = self.cursor_at..self.cursor_at + Cursor::TEXT_LEN;
        // why: `EventEncoder::prepare` left exactly this room, so it is there.
        if let Some(slot) = self.response.get_mut(room) {
            slot.copy_from_slice(&text);
        }
        Bytes::from(self.response)
    }
}

/// Size and age of what a log holds (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Events held.
    pub events: u64,
    /// Bytes held, when the backend knows.
    pub bytes: Option<u64>,
    /// When the oldest held event was received.
    pub oldest_received_at: Option<DateTime<Utc>>,
}

/// An append-only, bounded, deduplicating log of DR events; see the module docs for
/// the contract every implementation keeps.
#[async_trait]
pub trait EventLog: Send + Sync + fmt::Debug + 'static {
    /// Identifies this log instance in cursors. Must differ between instances that
    /// do not share sequences (a fresh in-memory log picks a random one; a JetStream
    /// backend derives it from the stream's identity, e.g. name + creation time).
    fn log_id(&self) -> u64;

    /// Appends an event unless its DR id was seen within the dedup window. Returns
    /// once the event is durably stored (for this backend's meaning of durable) and
    /// visible to [`read_after`](Self::read_after); only then may the webhook ack.
    async fn append(&self, envelope: Envelope) -> Result<Appended, LogError>;

    /// Up to `limit` events with sequence > `after`, in order, without gaps. Empty
    /// when nothing newer exists. [`LogError::Expired`] when `after + 1` was dropped.
    async fn read_after(
        &self,
        after: Sequence,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, LogError>;

    /// [`read_after`](Self::read_after) for a backend that can answer without
    /// waiting (an in-memory one): appends the events to `out` and returns `Some`.
    /// `None` (the default) means "call `read_after`".
    ///
    /// why: a subscription reads once per delivery when it keeps up; answering in
    /// place saves the boxed future and the batch's allocation of each read
    /// (benches/README.md "Optimisation 10").
    fn read_after_now(
        &self,
        after: Sequence,
        limit: usize,
        out: &mut Vec<Arc<StoredEvent>>,
    ) -> Option<Result<(), LogError>> {
        let _ = (after, limit, out);
        None
    }

    /// The held range.
    async fn bounds(&self) -> Result<Bounds, LogError>;

    /// The first held event the gateway received at or after `time`; `None` when all
    /// held events were received earlier.
    async fn first_received_at_or_after(
        &self,
        time: DateTime<Utc>,
    ) -> Result<Option<Sequence>, LogError>;

    /// The held event with this DR id, if any.
    async fn get_by_id(&self, id: &str) -> Result<Option<Arc<StoredEvent>>, LogError>;

    /// The newest DR `createdTime` among held events (where backfill resumes).
    async fn newest_created_time(&self) -> Result<Option<DateTime<Utc>>, LogError>;

    /// Ok when the backend can take appends (readiness probe).
    async fn check_ready(&self) -> Result<(), LogError>;

    /// The last assigned sequence, updated after each append is visible. Receivers
    /// cost nothing while idle; a reader loops "read everything after my position,
    /// then `changed().await`".
    fn watch_appends(&self) -> watch::Receiver<Sequence>;

    /// Size and age of what the log holds, for metrics. The default counts the held
    /// range and reads the oldest event; a backend that knows more overrides it.
    async fn stats(&self) -> Result<LogStats, LogError> {
        let bounds = self.bounds().await?;
        if bounds.first > bounds.last {
            return Ok(LogStats::default());
        }
        let oldest = match self.read_after(bounds.first - 1, 1).await {
            Ok(events) => events.first().map(|e| e.received_at),
            // Dropped meanwhile: the count is still right, the age unknown.
            Err(LogError::Expired { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(LogStats {
            events: bounds.last - bounds.first + 1,
            bytes: None,
            oldest_received_at: oldest,
        })
    }

    /// The cursor of a position in this log.
    fn cursor_for(&self, seq: Sequence) -> String {
        Cursor {
            log_id: self.log_id(),
            seq,
        }
        .encode()
    }

    /// The position a cursor names, if it belongs to this log.
    fn sequence_of(&self, cursor: &str) -> Result<Sequence, CursorError> {
        let c = Cursor::decode(cursor)?;
        if c.log_id != self.log_id() {
            return Err(CursorError::OtherLog);
        }
        Ok(c.seq)
    }
}

// === impl Cursor ===

/// Why a cursor string is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Not something this gateway produced.
    #[error("malformed cursor")]
    Malformed,
    /// Produced by another log instance (e.g. before an in-memory log restarted).
    #[error("cursor belongs to another event log instance")]
    OtherLog,
}

/// A position in a specific log instance. Wire format (opaque to callers):
/// URL-safe base64 without padding of `[version=1][log_id: u64 BE][seq: u64 BE]`,
/// 23 characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// [`EventLog::log_id`] of the log that issued it.
    pub log_id: u64,
    /// The sequence it names.
    pub seq: Sequence,
}

const CURSOR_VERSION: u8 = 1;
const CURSOR_LEN: usize = 17;
/// A cursor is 23 characters; room for surrounding whitespace, nothing more.
const MAX_CURSOR_TEXT: usize = 64;

impl Cursor {
    /// Characters in the string form (unpadded base64 of 17 bytes).
    pub const TEXT_LEN: usize = (CURSOR_LEN * 4).div_ceil(3);

    /// The opaque string form.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.bytes())
    }

    /// Writes the string form into `out`: a stored event's response has room for
    /// it before the event's cursor is known.
    pub fn encode_into(&self, out: &mut [u8; Self::TEXT_LEN]) {
        // why: `TEXT_LEN` is exactly what 17 bytes encode to, so this cannot run
        // out of room.
        let _ = URL_SAFE_NO_PAD.encode_slice(self.bytes(), out);
    }

    fn bytes(&self) -> [u8; CURSOR_LEN] {
        let mut bytes = [0u8; CURSOR_LEN];
        bytes[0] = CURSOR_VERSION;
        bytes[1..9].copy_from_slice(&self.log_id.to_be_bytes());
        bytes[9..17].copy_from_slice(&self.seq.to_be_bytes());
        bytes
    }

    /// Parses the string form; anything longer than a cursor can be is refused
    /// before decoding.
    pub fn decode(text: &str) -> Result<Self, CursorError> {
        if text.len() > MAX_CURSOR_TEXT {
            return Err(CursorError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| CursorError::Malformed)?;
        if bytes.len() != CURSOR_LEN || bytes[0] != CURSOR_VERSION {
            return Err(CursorError::Malformed);
        }
        let mut log_id = [0u8; 8];
        let mut seq = [0u8; 8];
        log_id.copy_from_slice(&bytes[1..9]);
        seq.copy_from_slice(&bytes[9..17]);
        Ok(Self {
            log_id: u64::from_be_bytes(log_id),
            seq: u64::from_be_bytes(seq),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips() {
        let c = Cursor {
            log_id: 0xdead_beef_0123_4567,
            seq: 42,
        };
        let s = c.encode();
        assert_eq!(s.len(), 23);
        assert_eq!(Cursor::TEXT_LEN, 23);
        assert_eq!(Cursor::decode(&s), Ok(c));
        let mut room = [0u8; Cursor::TEXT_LEN];
        c.encode_into(&mut room);
        assert_eq!(&room[..], s.as_bytes());
    }

    #[test]
    fn garbage_cursors_are_malformed() {
        for s in ["", "abc", "!!!!", &"A".repeat(23), &"A".repeat(40)] {
            assert_eq!(Cursor::decode(s), Err(CursorError::Malformed), "{s:?}");
        }
    }

    #[test]
    fn bounds_say_when_a_position_was_dropped() {
        let b = Bounds { first: 5, last: 9 };
        assert!(b.is_expired(3));
        assert!(!b.is_expired(4));
        assert!(!b.is_expired(9));
        let empty = Bounds { first: 1, last: 0 };
        assert!(!empty.is_expired(0));
    }

    #[test]
    fn a_stored_response_carries_its_cursor_and_the_whole_event() {
        let body = r#"{"id":"e1","type":"order.accepted","createdTime":"2022-01-01T00:00:00Z",
            "data":{"object":{"id":"o1","n":1.5},"previousAttributes":{"state":"x"}}}"#;
        let env = Envelope::parse(Bytes::from_static(body.as_bytes())).unwrap();
        let encoder = super::super::EventEncoder::default();
        let mut expected = encoder.to_proto(&env);
        let stored = StoredEvent::build(7, 99, Utc::now(), env, &encoder);
        let response = pb::SubscribeResponse::decode(stored.encoded_response.clone()).unwrap();
        expected.cursor = Cursor { log_id: 99, seq: 7 }.encode();
        assert_eq!(
            response.kind,
            Some(pb::subscribe_response::Kind::Event(expected.clone()))
        );
        assert_eq!(stored.decode_event().unwrap(), expected);
        // The log holds one allocation per response, sized exactly.
        assert_eq!(
            stored.approx_size(),
            super::super::footprint::stored_event(&stored)
        );
    }
}

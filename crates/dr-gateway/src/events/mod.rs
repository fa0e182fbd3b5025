//! DR events inside the gateway: the envelope parser, the [`EventLog`] trait and its
//! backends (in-memory here; shared on NATS JetStream in [`crate::bus`]), subscriber filters, backfill from `GET /events`, and the
//! capture/cancel outcome correlation ChargeService waits on; ordering keys and DR's
//! creation order ([`ordering`]), Subscribe's reorder window ([`reorder`]) and
//! consumer groups ([`groups`]).
//!
//! Fan-out is pull-based: a subscriber is a position in the log plus a
//! `watch` receiver of the last sequence. Appending never waits for subscribers; a
//! slow subscriber simply reads later (from the log, by sequence) and fails with
//! [`LogError::Expired`] if the log has dropped its position meanwhile.

pub mod backfill;
pub mod dedup;
pub mod envelope;
pub mod filter;
pub mod footprint;
pub mod gauges;
pub mod groups;
pub mod json_text;
pub mod log;
pub mod memory;
pub mod ordering;
pub mod outcomes;
pub mod proto;
pub mod reorder;
pub mod struct_encoding;
pub mod subscription;

pub use backfill::{Backfill, BackfillConfig, BackfillReport};
pub use envelope::{Envelope, EnvelopeError, EventMeta};
pub use filter::{EventFilter, FilterError};
pub use log::{
    Appended, Bounds, Cursor, CursorError, EventLog, LogError, LogStats, Sequence, StoredEvent,
};
pub use memory::{MemoryLog, MemoryLogConfig};
pub use proto::{EventEncoder, PayloadDecoder};
pub use subscription::{Start, SubscribeError, Subscription, SubscriptionItem, Tail};

//! THE default of every setting: `serve`'s flags show and use these, the components'
//! `Default` impls are built from them, and tests get them through
//! [`Settings::for_upstream`](crate::config::Settings::for_upstream), so a test runs
//! with production defaults unless it says otherwise.
//!
//! Flags need their default as text; [`shown_duration!`](crate::shown_duration) and
//! [`shown_bytes!`](crate::shown_bytes) render a typed default once, in the same
//! syntax the flag's parser reads back.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

const MIB: usize = 1024 * 1024;
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

// === listeners ===

/// `--grpc-addr`.
pub const GRPC_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 50051));
/// `--http-addr`: webhooks, `/healthz`, `/readyz`.
pub const HTTP_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
/// `--sandbox-addr`: where `serve --sandbox` runs its emulator.
pub const SANDBOX_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8090));
/// `--shutdown-grace`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

// === gRPC transport ===

/// `--grpc-max-receive-message-size`: gRPC's usual 4 MiB, as grpc-go and grpc-java use.
pub const GRPC_MAX_RECEIVE_MESSAGE_SIZE: usize = 4 * MIB;
/// `--grpc-max-send-message-size`: what clients accept by default (4 MiB), so an
/// oversized answer fails here with a clear status rather than in the client.
pub const GRPC_MAX_SEND_MESSAGE_SIZE: usize = 4 * MIB;
/// `--grpc-keepalive-interval`.
pub const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// `--grpc-keepalive-timeout`.
pub const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// `--grpc-max-connection-age-grace`: covers the longest call the gateway holds
/// on its own (CaptureItems / CancelItems `wait` without a deadline: 60 s) and an
/// upstream timeout on top.
pub const GRPC_MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(90);

// === Digital River ===

/// `--dr-base-url`.
pub const DR_BASE_URL: &str = "https://api.digitalriver.com";
/// `--upstream-timeout`: the longest one DR call may take.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// `--upstream-attempts`: attempts per idempotent DR read.
pub const UPSTREAM_ATTEMPTS: u32 = 3;
/// Backoff before the first retry of a DR read (doubles, full jitter).
pub const RETRY_BASE_DELAY: Duration = Duration::from_millis(100);
/// Longest backoff between two attempts of a DR read.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(2);
/// `--upstream-max-retry-wait`: the longest DR's `Retry-After` is waited out before
/// a read is tried again. A longer one (DR documents up to 120 s for 429,
/// docs/digital-river.md §5.2) is not waited for: the call fails at once with
/// `RetryInfo` carrying DR's delay, so the caller decides. With a deadline, the time
/// left caps the wait as well.
pub const UPSTREAM_MAX_RETRY_WAIT: Duration = Duration::from_secs(5);
/// Largest DR response body the client reads; larger ones are refused as
/// unreadable (the biggest DR answer the gateway asks for, a page of 100 events,
/// is a few MiB).
pub const DR_MAX_RESPONSE_BYTES: usize = 16 * MIB;

// === idempotency ===

/// `--idempotency-ttl`.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(DAY);
/// `--idempotency-max-entries`.
pub const IDEMPOTENCY_MAX_ENTRIES: usize = 100_000;
/// `--reconcile-timeout`.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(15);
/// `--fulfillment-commit-bound`: how long after a `POST /fulfillments` was sent DR
/// may still commit it. Until then a retry of a request whose outcome is unknown
/// never posts again; it looks the request up in DR and otherwise answers
/// UNAVAILABLE `FULFILLMENT_OUTCOME_PENDING`.
///
/// why: DR documents no such bound (an assumption, docs/digital-river.md §5.5). DR
/// answers 504 `gateway_timeout` and 408 `request_timeout` (§5.1), so something in
/// front of its services cuts requests off, and the request may still be processed
/// behind it. 60 s is the longest request time common HTTP front ends allow by
/// default (load balancers' idle timeouts, proxy read timeouts) and six times the
/// gateway's own upstream timeout.
pub const FULFILLMENT_COMMIT_BOUND: Duration = Duration::from_secs(60);
/// The `RetryInfo` delay of `FULFILLMENT_OUTCOME_PENDING` (shorter when the bound
/// ends sooner).
///
/// why: a late commit usually shows up within seconds; each retry costs one
/// `GET /fulfillments` listing, so every 2 s finds it soon without a burst on DR's
/// rate limit (docs/digital-river.md §5.2).
pub const OUTCOME_PENDING_RETRY_DELAY: Duration = Duration::from_secs(2);

// === deadlines ===

/// Time kept back from a caller's deadline, besides the `grpc-timeout` rounding,
/// for the request's and the answer's way over the network and for writing the
/// answer (at most a tenth of the timeout).
///
/// why: the gateway answers when its own view of the deadline is near, but that
/// view starts when the request arrives, after the client started its clock; the
/// answer then still has to travel back. 200 ms covers a cross-region round trip
/// and a busy event loop; in-cluster callers lose nothing they would notice.
pub const DEADLINE_NETWORK_ALLOWANCE: Duration = Duration::from_millis(200);

// === webhooks ===

/// `--webhook-tolerance`: largest gap between a signature's timestamp and now.
pub const WEBHOOK_TOLERANCE: Duration = Duration::from_secs(300);
/// `--webhook-max-body`.
pub const WEBHOOK_MAX_BODY: usize = MIB;
/// Longest a webhook waits for the event log before answering 503.
///
/// why: DR gives a delivery about 3 s (docs/digital-river.md §4.2); answering
/// within 2 s leaves it time to read the answer instead of timing out.
pub const WEBHOOK_APPEND_TIMEOUT: Duration = Duration::from_millis(2000);
/// `--webhook-header-timeout`: longest from a request's first byte to the end of
/// its headers on the webhook listener.
///
/// why: DR's delivery gives up after about 3 s (docs/digital-river.md §4.2); a
/// client still sending headers after 10 s is not DR.
pub const WEBHOOK_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `--webhook-body-timeout`: longest a request body may take to arrive.
pub const WEBHOOK_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// `--webhook-idle-timeout`: longest a webhook connection may stay silent, before
/// its first request or between requests.
///
/// why: longer than the 60 s for which ingress-nginx and cloud load balancers keep
/// idle upstream connections, so they close theirs first and never send a request
/// on a connection the gateway is closing.
pub const WEBHOOK_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// `--webhook-max-connections`: most webhook-listener connections open at once
/// (probes included); past it the listener stops accepting until one closes.
pub const WEBHOOK_MAX_CONNECTIONS: usize = 256;

// === event log (in memory) ===

/// `--event-log-max-events`.
pub const EVENT_LOG_MAX_EVENTS: usize = 100_000;
/// `--event-log-max-bytes`.
pub const EVENT_LOG_MAX_BYTES: usize = 256 * MIB;
/// DR event ids remembered to drop redeliveries.
pub const EVENT_DEDUP_MAX_IDS: usize = 200_000;
/// How long a DR event id is remembered.
///
/// why: DR redelivers for up to 3 days (docs/digital-river.md §4.2); a day more.
pub const EVENT_DEDUP_WINDOW: Duration = Duration::from_secs(4 * DAY);

// === backfill ===

/// `--backfill-interval`.
pub const BACKFILL_INTERVAL: Duration = Duration::from_secs(300);
/// `--backfill-lookback`.
pub const BACKFILL_LOOKBACK: Duration = Duration::from_secs(DAY);
/// How far each backfill reaches back before the newest stored event, for events
/// DR published late.
pub const BACKFILL_OVERLAP: Duration = Duration::from_secs(300);
/// Most events one backfill run stores.
pub const BACKFILL_MAX_EVENTS_PER_RUN: usize = 10_000;

// === NATS JetStream ===

/// `--bus-stream`.
pub const BUS_STREAM: &str = "DR_GATEWAY_EVENTS";
/// `--bus-idempotency-bucket`.
pub const BUS_IDEMPOTENCY_BUCKET: &str = "DR_GATEWAY_IDEMPOTENCY";
/// `--bus-max-age`.
///
/// why: DR keeps events for 30 days (docs/digital-river.md §0.5); the stream keeps
/// them as long, so a subscriber can resume as far back as backfill could.
pub const BUS_MAX_AGE: Duration = Duration::from_secs(30 * DAY);
/// `--bus-dedup-window`: JetStream's duplicate window for `Nats-Msg-Id`.
pub const BUS_DEDUP_WINDOW: Duration = Duration::from_secs(120);
/// `--bus-replicas`.
pub const BUS_REPLICAS: u8 = 1;
/// `--bus-timeout`: the longest one JetStream request may take (under the
/// webhook's [`WEBHOOK_APPEND_TIMEOUT`]).
pub const BUS_TIMEOUT: Duration = Duration::from_millis(1500);
/// `--bus-startup-timeout`: how long start-up waits for NATS before serving what
/// does not need it (and connecting on in the background).
pub const BUS_STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Time between two heartbeats of a replica in the `<stream>_REPLICAS` bucket,
/// which the replicas count to split DR's rate limit.
pub const PACING_HEARTBEAT: Duration = Duration::from_secs(2);
/// A replica not heard from for this long no longer counts (its share returns to
/// the others): three missed heartbeats and a margin.
pub const PACING_TTL: Duration = Duration::from_secs(7);
/// `--bus-cache-max-events`: decoded events each replica caches for fan-out.
pub const BUS_CACHE_MAX_EVENTS: usize = 10_000;
/// Bytes of decoded events each replica caches for fan-out.
pub const BUS_CACHE_MAX_BYTES: usize = 64 * MIB;

/// Bytes of the encode buffer each Subscribe and Consume stream starts with; it grows
/// while the stream has frames to send.
///
/// why: tonic's default, 8 KiB per stream held for the stream's life, was most of an
/// idle subscriber's memory (`cargo bench --bench fan_out`), and a group member's
/// stream is the same kind of long-lived, mostly idle stream; a ~1 KB DR event fits
/// in the first growth. Not zero: tonic sizes compression buffers in steps of it.
pub const EVENT_STREAM_ENCODE_BUFFER: usize = 1024;
/// Bytes of ready frames a Subscribe or Consume stream batches into one write (tonic's
/// default).
pub const EVENT_STREAM_YIELD_THRESHOLD: usize = 32 * 1024;

// === securing the gRPC listener ===

/// `--reload-interval`: how often TLS, token and policy files are checked for changes.
///
/// why: Kubernetes takes up to about a minute to show a changed Secret to the pod;
/// checking every 10 s adds little to that, and reading a few small files costs nothing.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// Longest a client may take to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most TLS handshakes in progress at once; further connections wait in the backlog.
pub const TLS_MAX_HANDSHAKES: usize = 256;

// === consumer groups ===

/// Time a member has to acknowledge a delivery, when the group does not say.
pub const CONSUMER_GROUP_ACK_DEADLINE: Duration = Duration::from_secs(30);
/// Shortest ack deadline a group may ask for.
pub const CONSUMER_GROUP_MIN_ACK_DEADLINE: Duration = Duration::from_secs(1);
/// Longest ack deadline a group may ask for.
pub const CONSUMER_GROUP_MAX_ACK_DEADLINE: Duration = Duration::from_secs(600);
/// How long a group holds each event before delivering it, when it does not say.
///
/// why: DR sends an order's webhooks concurrently (docs/digital-river.md §4.2), so
/// events created milliseconds apart arrive in either order; two seconds absorbs
/// that and the network's jitter at the cost of two seconds of latency.
pub const CONSUMER_GROUP_REORDER_WINDOW: Duration = Duration::from_secs(2);
/// Deliveries a member may hold unacknowledged, when it does not say.
pub const CONSUMER_MAX_UNACKED: u32 = 16;
/// Most deliveries a member may ask to hold unacknowledged.
pub const CONSUMER_MAX_UNACKED_LIMIT: u32 = 1000;
/// `--consumer-groups-max`.
pub const CONSUMER_GROUPS_MAX: usize = 1000;
/// `--consumer-group-max-pending`: events a group's scheduler reads ahead of its
/// position (its memory bound).
pub const CONSUMER_GROUP_MAX_PENDING: usize = 10_000;
/// Members of one group on one replica.
pub const CONSUMER_GROUP_MAX_MEMBERS: usize = 1000;
/// How long a group's scheduler stays loaded after its last member left.
pub const CONSUMER_GROUP_LINGER: Duration = Duration::from_secs(30);
/// How often a replica republishes its members' counters (JetStream mode).
pub const CONSUMER_GROUP_MEMBER_REFRESH: Duration = Duration::from_secs(5);
/// How long a published member stays listed without a refresh (JetStream mode):
/// a replica that died stops being listed after this.
pub const CONSUMER_GROUP_MEMBER_TTL: Duration = Duration::from_secs(20);
/// How often a moving group position is saved.
pub const CONSUMER_GROUP_POSITION_FLUSH: Duration = Duration::from_millis(200);
/// Longest a member's request waits for the group's scheduler.
pub const CONSUMER_GROUP_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the first message of a Consume stream may take to arrive.
pub const CONSUME_START_TIMEOUT: Duration = Duration::from_secs(10);
/// `--bus-groups-bucket`: KV bucket of consumer group definitions and positions.
pub const BUS_GROUPS_BUCKET: &str = "DR_GATEWAY_GROUPS";

// === telemetry ===

/// `--metrics`: serve Prometheus metrics at `/metrics`.
pub const METRICS: bool = true;
/// How often histogram samples are folded into their buckets (bounds the memory
/// samples take between scrapes).
pub const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Longest a scrape waits for the event log's size and age (NATS in JetStream mode).
///
/// why: under Prometheus' default 10 s scrape timeout; a slow bus yields the last
/// known values instead of a failed scrape.
pub const METRICS_COLLECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest logged value that comes from outside (ids, messages, headers), in bytes.
pub const LOG_VALUE_MAX_BYTES: usize = 256;
/// Longest log line in bytes; longer ones are cut. A last resort: values from
/// outside are capped at [`LOG_VALUE_MAX_BYTES`] first.
pub const LOG_LINE_MAX_BYTES: usize = 16 * 1024;
/// Longest `x-request-id` taken from a caller; a longer (or malformed) one is
/// replaced by a generated id.
pub const REQUEST_ID_MAX_BYTES: usize = 128;

/// A duration as flag text (`24h`), rendered once per call site.
#[macro_export]
#[doc(hidden)]
macro_rules! shown_duration {
    ($value:expr) => {{
        static TEXT: ::std::sync::OnceLock<String> = ::std::sync::OnceLock::new();
        TEXT.get_or_init(|| $crate::config::format_duration($value))
            .as_str()
    }};
}

/// A byte size as flag text (`1MiB`), rendered once per call site.
#[macro_export]
#[doc(hidden)]
macro_rules! shown_bytes {
    ($value:expr) => {{
        static TEXT: ::std::sync::OnceLock<String> = ::std::sync::OnceLock::new();
        TEXT.get_or_init(|| $crate::config::format_byte_size($value))
            .as_str()
    }};
}

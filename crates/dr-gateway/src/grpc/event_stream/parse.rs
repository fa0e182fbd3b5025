//! Validating EventStream requests: Subscribe's filter, start and heartbeat, and
//! ListEvents' DR query. Every refusal names the request field (INVALID_ARGUMENT).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tonic::Status;

use crate::digital_river::EventQuery;
use crate::domain::ids::check_id;
use crate::domain::ServiceError;
use crate::events::{filter::TypePattern, EventFilter, Start};
use crate::grpc::request;
use crate::pb::v1 as pb;

/// Heartbeat interval when the request sets none.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Shortest heartbeat interval; shorter requests are raised to it.
pub const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
/// Longest heartbeat interval; longer requests are lowered to it.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);

/// Most exact type names DR takes in `types` ("less than 20", docs/digital-river.md §3.1).
const MAX_LIST_TYPES: usize = 19;

/// The DR query of a ListEvents request, and the filter text page tokens bind to.
#[allow(clippy::result_large_err)]
pub(super) fn list_query(r: &pb::ListEventsRequest) -> Result<(EventQuery, String), Status> {
    if r.types.len() > MAX_LIST_TYPES {
        return Err(ServiceError::invalid("types", "at most 19 type names").into());
    }
    for (i, t) in r.types.iter().enumerate() {
        TypePattern::parse(t)
            .map_err(|reason| ServiceError::invalid(format!("types[{i}]"), reason))?;
    }
    // why: DR takes one `type` (which may hold `*`) or several exact `types`.
    if r.types.len() > 1 && r.types.iter().any(|t| t.contains('*')) {
        return Err(
            ServiceError::invalid("types", "a pattern with '*' must be the only type").into(),
        );
    }
    let time =
        |field: &str, ts: &Option<prost_types::Timestamp>| -> Result<Option<String>, Status> {
            let Some(ts) = ts else { return Ok(None) };
            let t = u32::try_from(ts.nanos)
                .ok()
                .and_then(|n| DateTime::<Utc>::from_timestamp(ts.seconds, n))
                .ok_or_else(|| ServiceError::invalid(field, "not a valid timestamp"))?;
            Ok(Some(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)))
        };
    let query = EventQuery {
        types: r.types.clone(),
        created_gte: time("create_time_start", &r.create_time_start)?,
        created_lt: time("create_time_end", &r.create_time_end)?,
        limit: request::page_size(r.page_size)?,
        ..Default::default()
    };
    let filters = format!(
        "types={:?};gte={:?};lt={:?}",
        query.types, query.created_gte, query.created_lt
    );
    Ok((query, filters))
}

/// Each of a filter's `order_ids` is a DR order id ([`check_id`]), named
/// `<prefix>order_ids[i]`; too many of them is the filter's own error.
#[allow(clippy::result_large_err)]
pub(super) fn check_filter_order_ids(prefix: &str, order_ids: &[String]) -> Result<(), Status> {
    if order_ids.len() <= crate::events::filter::MAX_FILTER_ENTRIES {
        for (i, id) in order_ids.iter().enumerate() {
            check_id(&format!("{prefix}order_ids[{i}]"), id)?;
        }
    }
    Ok(())
}

/// Longest reorder window a Subscribe (or a consumer group) may ask for.
pub const MAX_REORDER_WINDOW: Duration = Duration::from_secs(300);

/// What a Subscribe request asks for: which events, from where, heartbeats how often,
/// and the reorder window (zero: none).
pub(super) struct ParsedSubscribe {
    pub(super) filter: EventFilter,
    pub(super) start: Start,
    pub(super) heartbeat: Duration,
    pub(super) reorder_window: Duration,
}

#[allow(clippy::result_large_err)]
pub(super) fn parse_subscribe(req: &pb::SubscribeRequest) -> Result<ParsedSubscribe, Status> {
    let f = req.filter.clone().unwrap_or_default();
    check_filter_order_ids("filter.", &f.order_ids)?;
    let filter = EventFilter::new(&f.types, &f.order_ids, f.live_mode)
        .map_err(|e| bad_request(&e.field, &e.reason))?;
    let start = match &req.start {
        None => Start::Now,
        Some(pb::subscribe_request::Start::Position(p)) => match pb::StartPosition::try_from(*p) {
            Ok(pb::StartPosition::Unspecified | pb::StartPosition::Now) => Start::Now,
            Ok(pb::StartPosition::Oldest) => Start::Oldest,
            Err(_) => return Err(bad_request("position", "unknown start position")),
        },
        Some(pb::subscribe_request::Start::StartTime(ts)) => {
            let nanos = u32::try_from(ts.nanos)
                .map_err(|_| bad_request("start_time", "nanos must be 0..1e9"))?;
            let time = DateTime::<Utc>::from_timestamp(ts.seconds, nanos)
                .ok_or_else(|| bad_request("start_time", "not a valid timestamp"))?;
            Start::AtTime(time)
        }
        Some(pb::subscribe_request::Start::AfterCursor(c)) => {
            if c.trim().is_empty() {
                return Err(bad_request("after_cursor", "must not be empty"));
            }
            Start::AfterCursor(c.clone())
        }
    };
    let heartbeat = heartbeat_interval("heartbeat_interval", req.heartbeat_interval.as_ref())?;
    let reorder_window = match &req.reorder_window {
        None => Duration::ZERO,
        Some(d) => reorder_window("reorder_window", d)?,
    };
    Ok(ParsedSubscribe {
        filter,
        start,
        heartbeat,
        reorder_window,
    })
}

/// A heartbeat interval: default when unset, clamped to [`MIN_HEARTBEAT`]..[`MAX_HEARTBEAT`].
#[allow(clippy::result_large_err)]
pub(super) fn heartbeat_interval(
    field: &str,
    value: Option<&prost_types::Duration>,
) -> Result<Duration, Status> {
    match value {
        None => Ok(DEFAULT_HEARTBEAT),
        Some(d) => {
            let d = Duration::try_from(*d)
                .map_err(|_| bad_request(field, "must be a positive duration"))?;
            Ok(d.clamp(MIN_HEARTBEAT, MAX_HEARTBEAT))
        }
    }
}

/// A reorder window: 0..=[`MAX_REORDER_WINDOW`].
#[allow(clippy::result_large_err)]
pub(super) fn reorder_window(
    field: &str,
    value: &prost_types::Duration,
) -> Result<Duration, Status> {
    let d = Duration::try_from(*value).map_err(|_| bad_request(field, "must not be negative"))?;
    if d > MAX_REORDER_WINDOW {
        return Err(bad_request(field, "must be at most 5m"));
    }
    Ok(d)
}

pub(super) fn bad_request(field: &str, description: &str) -> Status {
    ServiceError::invalid(field, description).into()
}

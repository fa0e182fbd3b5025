//! The consumer-group RPCs other than Consume (create, get, list, delete) and the
//! conversions between the API's messages and [`crate::events::groups`].

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tonic::Status;

use super::parse::{bad_request, check_filter_order_ids, reorder_window};
use crate::{
    defaults,
    events::{
        groups::{
            settings::validate_group_id, FilterSpec, GroupView, MemberInfo, NewGroup, StartSpec,
        },
        proto::timestamp,
        EventFilter, EventLog,
    },
    grpc::request,
    pb::v1 as pb,
};

/// Most groups per ListConsumerGroups page when the request says 0.
const DEFAULT_PAGE_SIZE: usize = 50;

/// A group to create from the API's settings; `prefix` names the settings in
/// errors (`settings.` or `start.create.`).
#[allow(clippy::result_large_err)]
pub(super) fn new_group(
    prefix: &str,
    settings: Option<&pb::ConsumerGroupSettings>,
) -> Result<NewGroup, Status> {
    let Some(s) = settings else {
        return Ok(NewGroup::default());
    };
    let f = s.filter.clone().unwrap_or_default();
    check_filter_order_ids(&format!("{prefix}filter."), &f.order_ids)?;
    EventFilter::new(&f.types, &f.order_ids, f.live_mode)
        .map_err(|e| bad_request(&format!("{prefix}{}", e.field), &e.reason))?;
    let ack_deadline = match &s.ack_deadline {
        None => None,
        Some(d) => {
            let field = format!("{prefix}ack_deadline");
            let d = Duration::try_from(*d).map_err(|_| bad_request(&field, "must be positive"))?;
            if !(defaults::CONSUMER_GROUP_MIN_ACK_DEADLINE
                ..=defaults::CONSUMER_GROUP_MAX_ACK_DEADLINE)
                .contains(&d)
            {
                return Err(bad_request(&field, "must be between 1s and 10m"));
            }
            Some(d)
        }
    };
    let reorder = match &s.reorder_window {
        None => None,
        Some(d) => Some(reorder_window(&format!("{prefix}reorder_window"), d)?),
    };
    let start = match &s.start {
        None => StartSpec::Now,
        Some(pb::consumer_group_settings::Start::Position(p)) => {
            match pb::StartPosition::try_from(*p) {
                Ok(pb::StartPosition::Unspecified | pb::StartPosition::Now) => StartSpec::Now,
                Ok(pb::StartPosition::Oldest) => StartSpec::Oldest,
                Err(_) => {
                    return Err(bad_request(
                        &format!("{prefix}position"),
                        "unknown start position",
                    ))
                }
            }
        }
        Some(pb::consumer_group_settings::Start::StartTime(ts)) => {
            let field = format!("{prefix}start_time");
            let time = u32::try_from(ts.nanos)
                .ok()
                .and_then(|n| DateTime::<Utc>::from_timestamp(ts.seconds, n))
                .ok_or_else(|| bad_request(&field, "not a valid timestamp"))?;
            StartSpec::AtTime(time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        }
    };
    Ok(NewGroup {
        filter: FilterSpec {
            types: f.types,
            order_ids: f.order_ids,
            live_mode: f.live_mode,
        },
        ack_deadline,
        reorder_window: reorder,
        start,
    })
}

fn duration(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// The API's view of a group.
pub(super) fn group(view: &GroupView, log: &dyn EventLog) -> pb::ConsumerGroup {
    let s = &view.def.settings;
    let start = match &s.start {
        StartSpec::Now => Some(pb::consumer_group_settings::Start::Position(
            pb::StartPosition::Now as i32,
        )),
        StartSpec::Oldest => Some(pb::consumer_group_settings::Start::Position(
            pb::StartPosition::Oldest as i32,
        )),
        StartSpec::AtTime(text) => DateTime::parse_from_rfc3339(text).ok().map(|t| {
            pb::consumer_group_settings::Start::StartTime(timestamp(t.with_timezone(&Utc)))
        }),
    };
    pb::ConsumerGroup {
        group_id: view.def.id.clone(),
        settings: Some(pb::ConsumerGroupSettings {
            filter: Some(pb::EventFilter {
                types: s.filter.types.clone(),
                order_ids: s.filter.order_ids.clone(),
                live_mode: s.filter.live_mode,
            }),
            ack_deadline: Some(duration(s.ack_deadline_ms)),
            reorder_window: Some(duration(s.reorder_window_ms)),
            start,
        }),
        create_time: Some(timestamp(view.def.created)),
        position_cursor: if view.position.floor == 0 {
            String::new()
        } else {
            log.cursor_for(view.position.floor)
        },
        events_behind: view.events_behind,
        unacknowledged_count: view.unacked(),
        events_skipped: view.position.skipped,
        members: view.members.iter().map(member).collect(),
    }
}

fn member(m: &MemberInfo) -> pb::ConsumerGroupMember {
    pb::ConsumerGroupMember {
        member_id: m.member_id.clone(),
        member_name: m.name.clone(),
        connect_time: Some(timestamp(m.connected)),
        max_unacknowledged: m.max_unacked,
        unacknowledged_count: m.unacked,
        acknowledged_count: m.acked,
        replica: m.replica.clone(),
    }
}

/// A group id field, in its documented form (1 to 64 letters, digits, `_` or `-`),
/// checked before anything is looked up: every group RPC refuses another naming the
/// field.
#[allow(clippy::result_large_err)]
pub(super) fn group_id<'a>(field: &str, id: &'a str) -> Result<&'a str, Status> {
    request::required(field, id)?;
    validate_group_id(id).map_err(|reason| bad_request(field, reason))?;
    Ok(id)
}

/// One page of `groups` after `page_token` (a group id), and the next token.
#[allow(clippy::result_large_err)]
pub(super) fn page(
    groups: Vec<GroupView>,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<GroupView>, Option<String>), Status> {
    let size = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        1..=100 => page_size as usize,
        101.. => 100,
        _ => return Err(bad_request("page_size", "must not be negative")),
    };
    let after = request::decode_page_token(page_token, "consumer_groups")?;
    let mut rest: Vec<GroupView> = groups
        .into_iter()
        .filter(|g| after.as_deref().is_none_or(|a| g.def.id.as_str() > a))
        .collect();
    let more = rest.len() > size;
    rest.truncate(size);
    let next = match rest.last() {
        Some(last) if more => Some(request::encode_page_token(&last.def.id, "consumer_groups")),
        _ => None,
    };
    Ok((rest, next))
}

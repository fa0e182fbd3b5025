//! `EventStream` (gRPC): Subscribe streams events from the gateway's log;
//! GetEvent / ListEvents read DR's `GET /events`.
//!
//! # Encoded once
//! Every stored event carries its `SubscribeResponse` already encoded
//! ([`StoredEvent::encoded_response`]). Subscribe is served through
//! [`EventStreamServer`], which routes that one method through a prost codec whose
//! item type, [`SubscribeItem`], writes those shared bytes as they are; so a
//! thousand subscribers cost a thousand `memcpy`s of the frame, not a thousand
//! protobuf encodings of a `Struct`-heavy message (`cargo bench --bench fan_out`
//! measures both). The other methods go to the generated server unchanged.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes};
use chrono::{DateTime, Utc};
use prost::{
    encoding::{DecodeContext, WireType},
    DecodeError, Message,
};
use std::future::Future;

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{
    codegen::{http, Body, BoxFuture, Service, StdError},
    server::NamedService,
    Code, Request, Response, Status,
};
use tonic_types::{ErrorDetails, StatusExt};

use super::request::{self, required};
use crate::{
    clock::Clock,
    digital_river::{models, Client, EventQuery},
    domain::ServiceError,
    events::{
        filter::TypePattern, proto::timestamp, subscription, Envelope, EventEncoder, EventFilter,
        EventLog, Start, SubscribeError, SubscriptionItem,
    },
    grpc::convert,
    pb::v1::{
        self as pb,
        event_stream_server::{self, EventStream},
    },
};

/// Heartbeat interval when the request sets none.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Shortest heartbeat interval; shorter requests are raised to it.
pub const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
/// Longest heartbeat interval; longer requests are lowered to it.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);

/// The typed `Event.payload` for a DR event: the charge, fulfillment or order in
/// `data.object`, through the core's DR → protobuf conversions. Injected into the
/// event log's [`EventEncoder`] by the app.
pub fn decode_payload(env: &Envelope) -> Option<pb::event::Payload> {
    let t = env.event_type.as_str();
    let object = || serde_json::Value::Object(env.object.clone());
    // why: which object each type carries, dr-api.md §3.2.
    if t == "order.charge.reauth.failed" {
        let order: models::Order = serde_json::from_value(object()).ok()?;
        return Some(pb::event::Payload::Order(convert::order(&order)));
    }
    if t.starts_with("order.charge.") {
        let charge: models::Charge = serde_json::from_value(object()).ok()?;
        return Some(pb::event::Payload::Charge(convert::charge(&charge, "")));
    }
    if t.starts_with("fulfillment.") {
        let ful: models::Fulfillment = serde_json::from_value(object()).ok()?;
        return Some(pb::event::Payload::Fulfillment(convert::fulfillment(&ful)));
    }
    let not_an_order = ["order.chargeback", "order.invoice.", "order.credit_memo."]
        .iter()
        .any(|p| t.starts_with(p));
    if t.starts_with("order.") && !not_an_order {
        let order: models::Order = serde_json::from_value(object()).ok()?;
        return Some(pb::event::Payload::Order(convert::order(&order)));
    }
    None
}

// === impl SubscribeItem ===

/// One Subscribe stream message: either the shared pre-encoded bytes of a stored
/// event, or a message built for this subscriber (heartbeats).
#[derive(Debug, Clone, PartialEq)]
pub enum SubscribeItem {
    /// An encoded `SubscribeResponse`, shared by all subscribers.
    Shared(Bytes),
    /// A message encoded per subscriber.
    Owned(Box<pb::SubscribeResponse>),
}

impl Default for SubscribeItem {
    fn default() -> Self {
        Self::Owned(Box::default())
    }
}

impl SubscribeItem {
    /// The decoded message (decodes shared bytes).
    pub fn into_response(self) -> Result<pb::SubscribeResponse, DecodeError> {
        match self {
            Self::Shared(bytes) => pb::SubscribeResponse::decode(bytes),
            Self::Owned(msg) => Ok(*msg),
        }
    }
}

// why: a hand-written `Message` so the stock prost codec frames shared bytes
// without re-encoding; decoding falls back to the generated message.
impl Message for SubscribeItem {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Shared(bytes) => buf.put_slice(bytes),
            Self::Owned(msg) => msg.encode_raw(buf),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if let Self::Shared(bytes) = self {
            *self = Self::Owned(Box::new(pb::SubscribeResponse::decode(bytes.clone())?));
        }
        match self {
            Self::Owned(msg) => msg.merge_field(tag, wire_type, buf, ctx),
            Self::Shared(_) => Ok(()),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Shared(bytes) => bytes.len(),
            Self::Owned(msg) => msg.encoded_len(),
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

// === impl SubscribeStream ===

/// The Subscribe response stream: the subscription's bounded queue, mapped to
/// stream messages and statuses. Ends with UNAVAILABLE when the gateway shuts down,
/// so graceful shutdown does not wait for streams that never end on their own.
pub struct SubscribeStream {
    rx: mpsc::Receiver<SubscriptionItem>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    done: bool,
}

impl std::fmt::Debug for SubscribeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeStream")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl futures::Stream for SubscribeStream {
    type Item = Result<SubscribeItem, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.shutdown.as_mut().poll(cx).is_ready() {
            self.done = true;
            // why: dropping the receiver stops the subscription task.
            self.rx.close();
            return Poll::Ready(Some(Err(unavailable(
                "SHUTTING_DOWN",
                "gateway shutting down; resume from the last cursor",
            ))));
        }
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(subscription_item_to_message))
    }
}

fn subscription_item_to_message(item: SubscriptionItem) -> Result<SubscribeItem, Status> {
    match item {
        SubscriptionItem::Event(event) => Ok(SubscribeItem::Shared(event.encoded_response.clone())),
        SubscriptionItem::Heartbeat { cursor, time } => {
            Ok(SubscribeItem::Owned(Box::new(pb::SubscribeResponse {
                kind: Some(pb::subscribe_response::Kind::Heartbeat(pb::Heartbeat {
                    cursor,
                    time: Some(timestamp(time)),
                })),
            })))
        }
        SubscriptionItem::Expired { oldest_cursor } => Err(cursor_expired(&oldest_cursor, false)),
        SubscriptionItem::Failed(e) => {
            tracing::error!(error = %e, "subscription ended: event log failed");
            Err(unavailable(
                "EVENT_LOG_UNAVAILABLE",
                "event log unavailable; resume from the last cursor",
            ))
        }
    }
}

/// The generated trait wants decoded messages; only used when the service is
/// mounted without [`EventStreamServer`].
#[derive(Debug)]
pub struct DecodedSubscribeStream(SubscribeStream);

impl futures::Stream for DecodedSubscribeStream {
    type Item = Result<pb::SubscribeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx).map(|item| {
            item.map(|r| {
                r.and_then(|m| {
                    m.into_response()
                        .map_err(|_| Status::internal("could not decode a stored event"))
                })
            })
        })
    }
}

// === impl EventStreamApi ===

/// The EventStream service.
#[derive(Debug, Clone)]
pub struct EventStreamApi {
    log: Arc<dyn EventLog>,
    client: Client,
    encoder: EventEncoder,
    clock: Arc<dyn Clock>,
    /// Cancelled when the gateway shuts down; ends every Subscribe stream.
    shutdown: CancellationToken,
}

impl EventStreamApi {
    /// A service over `log`, reading DR's events through `client`; `encoder` must be
    /// the one the log uses.
    pub fn new(
        log: Arc<dyn EventLog>,
        client: Client,
        encoder: EventEncoder,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            log,
            client,
            encoder,
            clock,
            shutdown: CancellationToken::new(),
        }
    }

    /// Ends every Subscribe stream (UNAVAILABLE) once `token` is cancelled.
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// A DR event as the API's `Event`, with `cursor` set when the log holds it.
    async fn to_api_event(&self, event: models::Event) -> Result<pb::Event, Status> {
        let id = event.id.clone();
        let value = serde_json::to_value(&event).unwrap_or_default();
        let env = Envelope::from_value(value).map_err(|e| {
            tracing::error!(event_id = %id, error = %e, "DR sent an event without the envelope fields");
            Status::internal("Digital River sent a malformed event")
        })?;
        let mut proto = self.encoder.to_proto(&env);
        // why: a log outage must not fail a read that DR answered; the cursor is a bonus.
        if let Ok(Some(stored)) = self.log.get_by_id(&id).await {
            proto.cursor = stored.cursor().to_owned();
        }
        Ok(proto)
    }

    /// Validates a Subscribe request and starts the subscription.
    #[tracing::instrument(name = "EventStream.Subscribe", skip_all)]
    pub async fn subscribe_shared(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<SubscribeStream>, Status> {
        let req = request.into_inner();
        let (filter, start, heartbeat) = parse_subscribe(&req)?;
        let rx = subscription::subscribe(
            self.log.clone(),
            filter,
            &start,
            heartbeat,
            self.clock.clone(),
        )
        .await
        .map_err(subscribe_error_status)?;
        Ok(Response::new(SubscribeStream {
            rx,
            shutdown: Box::pin(self.shutdown.clone().cancelled_owned()),
            done: false,
        }))
    }
}

#[tonic::async_trait]
impl EventStream for EventStreamApi {
    type SubscribeStream = DecodedSubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let resp = self.subscribe_shared(request).await?;
        Ok(resp.map(DecodedSubscribeStream))
    }

    #[tracing::instrument(name = "EventStream.GetEvent", skip_all, fields(event_id = %request.get_ref().event_id))]
    async fn get_event(
        &self,
        request: Request<pb::GetEventRequest>,
    ) -> Result<Response<pb::GetEventResponse>, Status> {
        let opts = request::call_options(&request);
        let id = request.into_inner().event_id;
        required("event_id", &id)?;
        let event = self
            .client
            .get_event(&id, &opts)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::GetEventResponse {
            event: Some(self.to_api_event(event).await?),
        }))
    }

    #[tracing::instrument(name = "EventStream.ListEvents", skip_all)]
    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let opts = request::call_options(&request);
        let r = request.into_inner();
        let (mut query, filters) = list_query(&r)?;
        query.starting_after = request::decode_page_token(&r.page_token, &filters)?;
        let page = self
            .client
            .list_events(&query, &opts)
            .await
            .map_err(ServiceError::from)?;
        let next_page_token = match page.data.last() {
            Some(last) if page.has_more => request::encode_page_token(&last.id, &filters),
            _ => String::new(),
        };
        let mut events = Vec::with_capacity(page.data.len());
        for event in page.data {
            events.push(self.to_api_event(event).await?);
        }
        Ok(Response::new(pb::ListEventsResponse {
            events,
            next_page_token,
        }))
    }
}

// === request parsing and statuses ===

/// Most exact type names DR takes in `types` ("less than 20", dr-api.md §3.1).
const MAX_LIST_TYPES: usize = 19;

/// The DR query of a ListEvents request, and the filter text page tokens bind to.
#[allow(clippy::result_large_err)]
fn list_query(r: &pb::ListEventsRequest) -> Result<(EventQuery, String), Status> {
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

type ParsedSubscribe = (EventFilter, Start, Duration);

#[allow(clippy::result_large_err)]
fn parse_subscribe(req: &pb::SubscribeRequest) -> Result<ParsedSubscribe, Status> {
    let f = req.filter.clone().unwrap_or_default();
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
    let heartbeat = match &req.heartbeat_interval {
        None => DEFAULT_HEARTBEAT,
        Some(d) => {
            let d = Duration::try_from(*d)
                .map_err(|_| bad_request("heartbeat_interval", "must be a positive duration"))?;
            d.clamp(MIN_HEARTBEAT, MAX_HEARTBEAT)
        }
    };
    Ok((filter, start, heartbeat))
}

fn bad_request(field: &str, description: &str) -> Status {
    ServiceError::invalid(field, description).into()
}

fn cursor_expired(oldest_cursor: &str, other_log: bool) -> Status {
    let mut metadata = HashMap::from([("oldest_cursor".to_owned(), oldest_cursor.to_owned())]);
    let message = if other_log {
        metadata.insert("cause".into(), "other_log_instance".into());
        "cursor is from another event log instance (the gateway restarted); resume from oldest_cursor"
    } else {
        "events after this position are no longer held; resume from oldest_cursor"
    };
    Status::with_error_details(
        Code::OutOfRange,
        message,
        ErrorDetails::with_error_info("CURSOR_EXPIRED", super::status::ERROR_DOMAIN, metadata),
    )
}

fn subscribe_error_status(e: SubscribeError) -> Status {
    match e {
        SubscribeError::MalformedCursor => bad_request("after_cursor", "malformed cursor"),
        SubscribeError::CursorAhead => {
            bad_request("after_cursor", "cursor is ahead of the event log")
        }
        SubscribeError::Expired {
            oldest_cursor,
            other_log,
        } => cursor_expired(&oldest_cursor, other_log),
        SubscribeError::Log(e) => {
            tracing::error!(error = %e, "subscribe: event log unavailable");
            unavailable("EVENT_LOG_UNAVAILABLE", "event log unavailable")
        }
    }
}

/// UNAVAILABLE with an `ErrorInfo`, so callers in any language can tell a draining
/// gateway (reconnect elsewhere) from a bus outage (retry later) by `reason`.
fn unavailable(reason: &str, message: &str) -> Status {
    super::status::status_with_info(
        tonic::Code::Unavailable,
        message,
        reason,
        std::collections::HashMap::new(),
        |_| {},
    )
}

// === impl EventStreamServer ===

/// The EventStream service as mounted on the gRPC router: Subscribe with shared
/// pre-encoded events, everything else through the generated server.
#[derive(Debug, Clone)]
pub struct EventStreamServer {
    api: Arc<EventStreamApi>,
    generated: event_stream_server::EventStreamServer<EventStreamApi>,
}

impl EventStreamServer {
    /// Wraps the service.
    pub fn new(api: EventStreamApi) -> Self {
        let api = Arc::new(api);
        Self {
            generated: event_stream_server::EventStreamServer::from_arc(api.clone()),
            api,
        }
    }
}

const SUBSCRIBE_PATH: &str = "/digitalriver.gateway.v1.EventStream/Subscribe";

struct SharedSubscribe(Arc<EventStreamApi>);

impl tonic::server::ServerStreamingService<pb::SubscribeRequest> for SharedSubscribe {
    type Response = SubscribeItem;
    type ResponseStream = SubscribeStream;
    type Future = BoxFuture<Response<SubscribeStream>, Status>;

    fn call(&mut self, request: Request<pb::SubscribeRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.subscribe_shared(request).await })
    }
}

impl<B> Service<http::Request<B>> for EventStreamServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != SUBSCRIBE_PATH {
            return self.generated.call(req);
        }
        let api = self.api.clone();
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<SubscribeItem, pb::SubscribeRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.server_streaming(SharedSubscribe(api), req).await)
        })
    }
}

impl NamedService for EventStreamServer {
    const NAME: &'static str = event_stream_server::SERVICE_NAME;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::SystemClock,
        events::{MemoryLog, MemoryLogConfig, StoredEvent},
    };

    #[test]
    fn a_shared_item_encodes_byte_for_byte_like_the_message() {
        let env = Envelope::parse(Bytes::from_static(
            br#"{"id":"e","type":"order.charge.capture.complete","createdTime":"2024-01-01T00:00:00Z",
                "data":{"object":{"id":"c1","orderId":"o1","currency":"USD","amount":10.5,
                "captures":[{"id":"cap","amount":10.5,"state":"complete","fulfillmentId":"ful_1"}]}}}"#,
        ))
        .unwrap();
        let encoder = EventEncoder::with_payload_decoder(Arc::new(decode_payload));
        let stored = StoredEvent::build(3, 7, Utc::now(), env, &encoder);
        let shared = SubscribeItem::Shared(stored.encoded_response.clone());
        let owned = SubscribeItem::Owned(Box::new(pb::SubscribeResponse {
            kind: Some(pb::subscribe_response::Kind::Event(stored.proto.clone())),
        }));
        assert_eq!(shared.encoded_len(), owned.encoded_len());
        assert_eq!(
            shared.clone().into_response().unwrap(),
            owned.clone().into_response().unwrap()
        );
        // Decoding through the item type itself works too.
        let back = SubscribeItem::decode(shared.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            back.into_response().unwrap(),
            owned.into_response().unwrap()
        );
        let Some(pb::event::Payload::Charge(charge)) = stored.proto.payload.clone() else {
            panic!("typed payload missing")
        };
        assert_eq!(charge.captures[0].fulfillment_id, "ful_1");
    }

    #[tokio::test]
    async fn bad_requests_are_invalid_argument_with_the_field() {
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(
            MemoryLogConfig::default(),
            EventEncoder::default(),
            Arc::new(SystemClock),
        ));
        let client = Client::new(crate::digital_river::ClientConfig {
            base_url: "http://127.0.0.1:9".into(),
            api_key: secrecy::SecretString::from("sk".to_string()),
            api_version: None,
            max_timeout: Duration::from_secs(1),
            retry: Default::default(),
            rate_limit: None,
        })
        .unwrap();
        let api = EventStreamApi::new(log, client, EventEncoder::default(), Arc::new(SystemClock));
        let cases = [
            (
                pb::SubscribeRequest {
                    filter: Some(pb::EventFilter {
                        types: vec!["bad type".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "filter.types[0]",
            ),
            (
                pb::SubscribeRequest {
                    start: Some(pb::subscribe_request::Start::AfterCursor("nope".into())),
                    ..Default::default()
                },
                "after_cursor",
            ),
            (
                pb::SubscribeRequest {
                    start: Some(pb::subscribe_request::Start::Position(42)),
                    ..Default::default()
                },
                "position",
            ),
        ];
        for (req, field) in cases {
            let status = api.subscribe_shared(Request::new(req)).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            let details = status.get_error_details();
            let violations = &details.bad_request().unwrap().field_violations;
            assert_eq!(violations[0].field, field);
        }
    }

    #[test]
    fn an_expired_cursor_carries_error_info_and_the_oldest_cursor() {
        let status = cursor_expired("abc", false);
        assert_eq!(status.code(), Code::OutOfRange);
        let details = status.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "CURSOR_EXPIRED");
        assert_eq!(info.domain, super::super::status::ERROR_DOMAIN);
        assert_eq!(info.metadata["oldest_cursor"], "abc");
    }
}

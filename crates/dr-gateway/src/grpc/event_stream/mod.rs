//! `EventStream` (gRPC): Subscribe streams events from the gateway's log;
//! Consume and the consumer-group RPCs share them among a group's members;
//! GetEvent / ListEvents read DR's `GET /events`.
//!
//! # Layout
//! - this file: the service ([`EventStreamApi`]);
//! - [`parse`]: request validation (filters, start, heartbeat, ListEvents' query);
//! - [`stream`]: the Subscribe response stream and why it may end ([`StreamEnd`]);
//! - [`consume`]: a consumer group member's Consume stream ([`ConsumeStream`]);
//! - [`groups`]: the other consumer-group RPCs and their conversions;
//! - [`codec`]: the wire path that shares one encoding of each event between all
//!   subscribers and members ([`EventStreamServer`], [`SubscribeItem`],
//!   [`ConsumeItem`]);
//! - [`payload`]: the typed `Event.payload` of a DR event.

mod codec;
mod consume;
mod groups;
mod parse;
mod payload;
mod stream;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub use codec::{ConsumeItem, EventStreamServer, SubscribeItem};
pub use consume::{ConsumeStream, DecodedConsumeStream};
pub use parse::{DEFAULT_HEARTBEAT, MAX_HEARTBEAT, MAX_REORDER_WINDOW, MIN_HEARTBEAT};
pub use payload::decode_payload;
pub use stream::{DecodedSubscribeStream, StreamEnd, SubscribeStream};

use super::request;
use super::server::ConnectionAge;
use crate::domain::ids::check_id;
use crate::{
    clock::Clock,
    digital_river::{models, Client},
    domain::ServiceError,
    events::{
        groups::{ConsumerGroups, GroupsConfig, MemoryGroupStore},
        subscription, Envelope, EventEncoder, EventLog,
    },
    pb::v1::{self as pb, event_stream_server::EventStream},
};

/// The EventStream service.
#[derive(Debug, Clone)]
pub struct EventStreamApi {
    log: Arc<dyn EventLog>,
    client: Client,
    encoder: EventEncoder,
    clock: Arc<dyn Clock>,
    /// Consumer groups over the same log.
    groups: ConsumerGroups,
    /// Cancelled when the gateway shuts down; ends every Subscribe and Consume stream.
    shutdown: CancellationToken,
}

impl EventStreamApi {
    /// A service over `log`, reading DR's events through `client`; `encoder` must be
    /// the one the log uses. Consumer groups live in memory unless
    /// [`with_groups`](Self::with_groups) says otherwise.
    pub fn new(
        log: Arc<dyn EventLog>,
        client: Client,
        encoder: EventEncoder,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let config = GroupsConfig::default();
        let groups = ConsumerGroups::new(
            log.clone(),
            Arc::new(MemoryGroupStore::new(config.replica.clone())),
            clock.clone(),
            config,
        );
        Self {
            log,
            client,
            encoder,
            clock,
            groups,
            shutdown: CancellationToken::new(),
        }
    }

    /// Serves these consumer groups (which must read the same log).
    pub fn with_groups(mut self, groups: ConsumerGroups) -> Self {
        self.groups = groups;
        self
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
            tracing::error!(event_id = %crate::telemetry::capped(&id), error = %e, "DR sent an event without the envelope fields");
            Status::internal("Digital River sent a malformed event")
        })?;
        let mut proto = self.encoder.to_proto(&env);
        // why: a log outage must not fail a read that DR answered; the cursor is a bonus.
        if let Ok(Some(stored)) = self.log.get_by_id(&id).await {
            proto.cursor = stored.cursor();
        }
        Ok(proto)
    }

    /// Validates a Subscribe request and starts the subscription.
    #[tracing::instrument(name = "EventStream.Subscribe", skip_all)]
    pub async fn subscribe_shared(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<SubscribeStream>, Status> {
        let aged = request
            .extensions()
            .get::<ConnectionAge>()
            .cloned()
            .unwrap_or_else(ConnectionAge::never)
            .aged();
        let req = request.into_inner();
        let parsed = parse::parse_subscribe(&req)?;
        let items = if parsed.reorder_window.is_zero() {
            subscription::subscribe(
                self.log.clone(),
                parsed.filter,
                &parsed.start,
                parsed.heartbeat,
                self.clock.clone(),
            )
            .await
        } else {
            subscription::subscribe_reordered(
                self.log.clone(),
                parsed.filter,
                &parsed.start,
                parsed.heartbeat,
                parsed.reorder_window,
                self.clock.clone(),
            )
            .await
        }
        .map_err(Status::from)?;
        Ok(Response::new(SubscribeStream::new(
            items,
            self.shutdown.clone().cancelled_owned(),
            aged,
        )))
    }
}

#[tonic::async_trait]
impl EventStream for EventStreamApi {
    type SubscribeStream = DecodedSubscribeStream;
    type ConsumeStream = DecodedConsumeStream;

    async fn consume(
        &self,
        request: Request<tonic::Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let resp = self.consume_shared(request).await?;
        Ok(resp.map(DecodedConsumeStream))
    }

    #[tracing::instrument(name = "EventStream.CreateConsumerGroup", skip_all, fields(group = %request.get_ref().group_id))]
    async fn create_consumer_group(
        &self,
        request: Request<pb::CreateConsumerGroupRequest>,
    ) -> Result<Response<pb::CreateConsumerGroupResponse>, Status> {
        let r = request.into_inner();
        let id = groups::group_id("group_id", &r.group_id)?;
        let new = groups::new_group("settings.", r.settings.as_ref())?;
        let view = self.groups.create(id, new).await.map_err(Status::from)?;
        Ok(Response::new(pb::CreateConsumerGroupResponse {
            group: Some(groups::group(&view, self.log.as_ref())),
        }))
    }

    #[tracing::instrument(name = "EventStream.GetConsumerGroup", skip_all, fields(group = %request.get_ref().group_id))]
    async fn get_consumer_group(
        &self,
        request: Request<pb::GetConsumerGroupRequest>,
    ) -> Result<Response<pb::GetConsumerGroupResponse>, Status> {
        let r = request.into_inner();
        let id = groups::group_id("group_id", &r.group_id)?;
        let view = self.groups.get(id).await.map_err(Status::from)?;
        Ok(Response::new(pb::GetConsumerGroupResponse {
            group: Some(groups::group(&view, self.log.as_ref())),
        }))
    }

    #[tracing::instrument(name = "EventStream.ListConsumerGroups", skip_all)]
    async fn list_consumer_groups(
        &self,
        request: Request<pb::ListConsumerGroupsRequest>,
    ) -> Result<Response<pb::ListConsumerGroupsResponse>, Status> {
        let r = request.into_inner();
        // why: check the paging fields before touching the store.
        groups::page(Vec::new(), r.page_size, &r.page_token)?;
        let all = self.groups.list().await.map_err(Status::from)?;
        let (page, next) = groups::page(all, r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListConsumerGroupsResponse {
            groups: page
                .iter()
                .map(|v| groups::group(v, self.log.as_ref()))
                .collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "EventStream.DeleteConsumerGroup", skip_all, fields(group = %request.get_ref().group_id))]
    async fn delete_consumer_group(
        &self,
        request: Request<pb::DeleteConsumerGroupRequest>,
    ) -> Result<Response<pb::DeleteConsumerGroupResponse>, Status> {
        let r = request.into_inner();
        let id = groups::group_id("group_id", &r.group_id)?;
        self.groups.delete(id).await.map_err(Status::from)?;
        Ok(Response::new(pb::DeleteConsumerGroupResponse {}))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let resp = self.subscribe_shared(request).await?;
        Ok(resp.map(DecodedSubscribeStream))
    }

    #[tracing::instrument(name = "EventStream.GetEvent", skip_all, fields(event_id = %crate::telemetry::capped(&request.get_ref().event_id)))]
    async fn get_event(
        &self,
        request: Request<pb::GetEventRequest>,
    ) -> Result<Response<pb::GetEventResponse>, Status> {
        let opts = request::call_options(&request);
        let id = request.into_inner().event_id;
        check_id("event_id", &id)?;
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
        let (mut query, filters) = parse::list_query(&r)?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;
    use crate::{
        clock::SystemClock,
        events::{MemoryLog, MemoryLogConfig},
    };

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
}

//! Plumbing for the consumer group tests: a member is a real `Consume` stream over
//! gRPC (its own HTTP/2 connection, so a test can cut it like a crashed process),
//! DR events with chosen creation times, and reading with deadlines.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dr_gateway::pb::v1 as pb;
use dr_gateway::pb::v1::event_stream_client::EventStreamClient;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::event_support::WAIT;

/// A DR event about `order_id` that DR created at `created`.
pub fn order_event(id: &str, event_type: &str, order_id: &str, created: DateTime<Utc>) -> Value {
    json!({
        "id": id,
        "type": event_type,
        "data": {"object": {"id": format!("obj-{id}"), "orderId": order_id}},
        "liveMode": false,
        "createdTime": created.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "digitalriverVersion": "2021-12-13"
    })
}

/// Posts signed webhooks over one pooled HTTP client (many events, quickly).
#[derive(Clone)]
pub struct Poster {
    client: reqwest::Client,
    url: String,
}

impl Poster {
    /// A poster to the gateway's webhook endpoint.
    pub fn new(http_addr: std::net::SocketAddr) -> Self {
        Self {
            client: reqwest::Client::new(),
            url: format!("http://{http_addr}/webhooks/digitalriver"),
        }
    }

    /// POSTs `event` signed with the test secret; asserts 200.
    pub async fn post(&self, event: &Value) {
        let body = serde_json::to_vec(event).unwrap();
        let sig = crate::event_support::signature(crate::helpers::WEBHOOK_SECRET, &body);
        let resp = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("DigitalRiver-Signature", sig)
            .timeout(WAIT)
            .body(body)
            .send()
            .await
            .expect("webhook POST sent");
        assert_eq!(resp.status().as_u16(), 200, "webhook accepted");
    }
}

/// Settings of a group: every event, from now, with this ack deadline and window.
pub fn group_settings(
    ack_deadline: Duration,
    reorder_window: Duration,
) -> pb::ConsumerGroupSettings {
    pb::ConsumerGroupSettings {
        ack_deadline: Some(prost_types::Duration::try_from(ack_deadline).unwrap()),
        reorder_window: Some(prost_types::Duration::try_from(reorder_window).unwrap()),
        ..Default::default()
    }
}

/// Creates a group.
pub async fn create_group(
    client: &mut EventStreamClient<Channel>,
    group_id: &str,
    settings: pb::ConsumerGroupSettings,
) -> pb::ConsumerGroup {
    client
        .create_consumer_group(pb::CreateConsumerGroupRequest {
            group_id: group_id.into(),
            settings: Some(settings),
        })
        .await
        .expect("group created")
        .into_inner()
        .group
        .expect("group in response")
}

/// Reads a group.
pub async fn get_group(
    client: &mut EventStreamClient<Channel>,
    group_id: &str,
) -> pb::ConsumerGroup {
    client
        .get_consumer_group(pb::GetConsumerGroupRequest {
            group_id: group_id.into(),
        })
        .await
        .expect("group read")
        .into_inner()
        .group
        .expect("group in response")
}

/// One member: a Consume stream and what it has received but not yet taken.
pub struct Member {
    pub started: pb::ConsumeStarted,
    requests: Option<mpsc::Sender<pb::ConsumeRequest>>,
    responses: Streaming<pb::ConsumeResponse>,
    deliveries: VecDeque<pb::Delivery>,
    receipts: VecDeque<pb::ConsumeReceipt>,
    /// Set when the stream ended (None: ended OK).
    pub ended: Option<Result<(), tonic::Status>>,
}

impl Member {
    /// Joins `start.group_id` over `channel`.
    pub async fn join(channel: Channel, start: pb::ConsumeStart) -> Self {
        Self::try_join(channel, start).await.expect("member joined")
    }

    /// Joins, or the status the gateway refused with.
    pub async fn try_join(
        channel: Channel,
        start: pb::ConsumeStart,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::ConsumeRequest {
            start: Some(start),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut client = EventStreamClient::new(channel);
        let mut responses = tokio::time::timeout(WAIT, client.consume(ReceiverStream::new(rx)))
            .await
            .expect("Consume answered in time")?
            .into_inner();
        let first = tokio::time::timeout(WAIT, responses.message())
            .await
            .expect("started in time")?
            .expect("stream open");
        let Some(pb::consume_response::Kind::Started(started)) = first.kind else {
            panic!("first message is not `started`: {first:?}");
        };
        Ok(Self {
            started,
            requests: Some(tx),
            responses,
            deliveries: VecDeque::new(),
            receipts: VecDeque::new(),
            ended: None,
        })
    }

    /// Reads one message into the buffers; false when the stream ended.
    async fn pump(&mut self) -> bool {
        if self.ended.is_some() {
            return false;
        }
        let message = tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("a Consume message within the deadline");
        match message {
            Ok(Some(msg)) => {
                match msg.kind {
                    Some(pb::consume_response::Kind::Delivery(d)) => self.deliveries.push_back(d),
                    Some(pb::consume_response::Kind::Receipt(r)) => self.receipts.push_back(r),
                    Some(pb::consume_response::Kind::Heartbeat(_)) => {}
                    other => panic!("unexpected message {other:?}"),
                }
                true
            }
            Ok(None) => {
                self.ended = Some(Ok(()));
                false
            }
            Err(status) => {
                self.ended = Some(Err(status));
                false
            }
        }
    }

    /// The next delivery, or `None` once the stream ended (see `ended`).
    pub async fn next_delivery_or_end(&mut self) -> Option<pb::Delivery> {
        loop {
            if let Some(d) = self.deliveries.pop_front() {
                return Some(d);
            }
            if !self.pump().await {
                return None;
            }
        }
    }

    /// Sends a request and returns its receipt, or `None` if the stream broke first.
    pub async fn try_send(&mut self, request: pb::ConsumeRequest) -> Option<pb::ConsumeReceipt> {
        self.requests.as_ref()?.send(request).await.ok()?;
        loop {
            if let Some(r) = self.receipts.pop_front() {
                return Some(r);
            }
            if !self.pump().await {
                return None;
            }
        }
    }

    /// The next delivery; panics after [`WAIT`] or if the stream ends.
    pub async fn next_delivery(&mut self) -> pb::Delivery {
        loop {
            if let Some(d) = self.deliveries.pop_front() {
                return d;
            }
            assert!(self.pump().await, "stream ended: {:?}", self.ended);
        }
    }

    /// Sends a request and returns its receipt (deliveries read meanwhile are kept).
    pub async fn send(&mut self, request: pb::ConsumeRequest) -> pb::ConsumeReceipt {
        self.requests
            .as_ref()
            .expect("requests open")
            .send(request)
            .await
            .expect("request sent");
        loop {
            if let Some(r) = self.receipts.pop_front() {
                return r;
            }
            assert!(self.pump().await, "stream ended: {:?}", self.ended);
        }
    }

    /// Acknowledges one delivery.
    pub async fn ack(&mut self, delivery_id: &str) -> pb::ConsumeReceipt {
        self.send(pb::ConsumeRequest {
            ack_delivery_ids: vec![delivery_id.to_owned()],
            ..Default::default()
        })
        .await
    }

    /// Closes the sending side (leaves the group) and reads until the stream ends.
    pub async fn leave(mut self) -> Result<(), tonic::Status> {
        self.requests.take();
        while self.pump().await {}
        self.ended.take().unwrap_or(Ok(()))
    }

    /// Reads until the stream ends; returns how it ended.
    pub async fn until_end(&mut self) -> Result<(), tonic::Status> {
        while self.pump().await {}
        self.ended.clone().unwrap_or(Ok(()))
    }
}

/// A fresh HTTP/2 connection to the gateway (dropping every clone of it is a
/// member's connection going away, as when its process dies).
pub async fn connect(addr: std::net::SocketAddr) -> Channel {
    try_connect(addr).await.expect("connect to gateway")
}

/// A fresh HTTP/2 connection, or `None` when nothing answers at `addr`.
pub async fn try_connect(addr: std::net::SocketAddr) -> Option<Channel> {
    let endpoint = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(WAIT);
    endpoint.connect().await.ok()
}

/// A ConsumeStart for `group_id` holding at most `max_unacked`.
pub fn start(group_id: &str, name: &str, max_unacked: u32) -> pb::ConsumeStart {
    pb::ConsumeStart {
        group_id: group_id.into(),
        member_name: name.into(),
        max_unacknowledged: max_unacked,
        // why: an idle member still hears from the gateway well within [`WAIT`].
        heartbeat_interval: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

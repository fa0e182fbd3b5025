//! `EventStream.Consume`: a member's bidirectional stream. The first request joins
//! the group; a task then reads the member's acknowledgements and answers each
//! request with a receipt, while [`ConsumeStream`] sends the group's deliveries,
//! the receipts and heartbeats, and ends the way the member's session ends.
//!
//! Like Subscribe, a member's stream never ends on its own, so it ends with
//! UNAVAILABLE when the gateway shuts down (`SHUTTING_DOWN`) or its connection
//! reaches its maximum age (`CONNECTION_AGED`, [`crate::grpc::server`]); either
//! way the member leaves the group at once, so what it held unacknowledged is
//! delivered again (to any member) without waiting for the ack deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;
use tokio_util::sync::{DropGuard, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status, Streaming};

use super::codec::ConsumeItem;
use super::groups;
use super::parse::{bad_request, heartbeat_interval};
use super::stream::StreamEnd;
use super::EventStreamApi;
use crate::clock::Clock;
use crate::defaults;
use crate::domain::ServiceError;
use crate::events::groups::{
    EndReason, MemberHandle, MemberOptions, MemberSession, Receipt, RejectReason,
    MAX_IDS_PER_REQUEST,
};
use crate::events::proto::timestamp;
use crate::grpc::server::ConnectionAge;
use crate::pb::v1 as pb;

/// Longest `member_name`.
const MAX_MEMBER_NAME: usize = 128;
/// Receipts waiting to be sent on one stream; a member that does not read its
/// responses stops being read from once they pile up.
const RECEIPT_QUEUE: usize = 8;

/// What the first request asks for.
struct Join {
    group_id: String,
    options: MemberOptions,
    create: Option<crate::events::groups::NewGroup>,
    heartbeat: Duration,
}

#[allow(clippy::result_large_err)]
fn parse_start(req: pb::ConsumeRequest) -> Result<Join, Status> {
    let Some(start) = req.start else {
        return Err(bad_request(
            "start",
            "the first message of a Consume stream must carry start",
        ));
    };
    if !(req.ack_delivery_ids.is_empty()
        && req.nack_delivery_ids.is_empty()
        && req.extend_delivery_ids.is_empty())
    {
        return Err(bad_request(
            "ack_delivery_ids",
            "the first message carries only start",
        ));
    }
    let group_id = groups::group_id("start.group_id", &start.group_id)?.to_owned();
    let name = start.member_name.trim().to_owned();
    if name.chars().count() > MAX_MEMBER_NAME {
        return Err(bad_request(
            "start.member_name",
            "must be at most 128 characters",
        ));
    }
    let max_unacked = match start.max_unacknowledged {
        0 => defaults::CONSUMER_MAX_UNACKED,
        n if n > defaults::CONSUMER_MAX_UNACKED_LIMIT => {
            return Err(bad_request(
                "start.max_unacknowledged",
                "must be at most 1000",
            ))
        }
        n => n,
    };
    let create = match &start.create {
        None => None,
        Some(settings) => Some(groups::new_group("start.create.", Some(settings))?),
    };
    let heartbeat = heartbeat_interval(
        "start.heartbeat_interval",
        start.heartbeat_interval.as_ref(),
    )?;
    Ok(Join {
        group_id,
        options: MemberOptions { name, max_unacked },
        create,
        heartbeat,
    })
}

/// Checks a later request: no `start`, at most [`MAX_IDS_PER_REQUEST`] ids.
#[allow(clippy::result_large_err)]
fn check_request(req: &pb::ConsumeRequest) -> Result<(), Status> {
    if req.start.is_some() {
        return Err(bad_request("start", "only the first message carries start"));
    }
    let ids =
        req.ack_delivery_ids.len() + req.nack_delivery_ids.len() + req.extend_delivery_ids.len();
    if ids > MAX_IDS_PER_REQUEST {
        return Err(bad_request(
            "ack_delivery_ids",
            "at most 1000 delivery ids per message across the three lists",
        ));
    }
    Ok(())
}

impl EventStreamApi {
    /// Starts a Consume stream: reads the first request, joins the group.
    #[tracing::instrument(name = "EventStream.Consume", skip_all)]
    pub async fn consume_shared(
        &self,
        request: Request<Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<ConsumeStream>, Status> {
        let aged = request
            .extensions()
            .get::<ConnectionAge>()
            .cloned()
            .unwrap_or_else(ConnectionAge::never)
            .aged();
        // why: group ids are shared by every caller; the log says who joined.
        let caller = crate::auth::Caller::identity_of(&request);
        let mut inbound = request.into_inner();
        let first =
            match tokio::time::timeout(defaults::CONSUME_START_TIMEOUT, inbound.message()).await {
                Err(_) => {
                    return Err(ServiceError::DeadlineExceeded(
                        "the first message (start) did not arrive within 10s".into(),
                    )
                    .into())
                }
                Ok(Err(status)) => return Err(status),
                Ok(Ok(None)) => {
                    return Err(bad_request(
                        "start",
                        "the stream closed before its first message",
                    ))
                }
                Ok(Ok(Some(first))) => first,
            };
        let join = parse_start(first)?;
        let (session, view, created) = self
            .groups
            .join(&join.group_id, join.options, join.create)
            .await
            .map_err(Status::from)?;
        let MemberSession {
            member_id,
            deliveries,
            end,
            handle,
            leave_guard,
        } = session;
        tracing::info!(
            group = %join.group_id,
            member = %member_id,
            caller = caller.as_deref().unwrap_or(crate::auth::identity::ANONYMOUS),
            created,
            "member joined"
        );
        let started = pb::ConsumeResponse {
            kind: Some(pb::consume_response::Kind::Started(pb::ConsumeStarted {
                member_id,
                group: Some(groups::group(&view, self.log.as_ref())),
                created,
            })),
        };
        let (receipts_tx, receipts) = mpsc::channel(RECEIPT_QUEUE);
        tokio::spawn(read_requests(inbound, handle, receipts_tx));
        let group_id = join.group_id;
        Ok(Response::new(ConsumeStream {
            started: Some(started),
            deliveries,
            receipts,
            end,
            shutdown: Box::pin(self.shutdown.clone().cancelled_owned()),
            aged: Box::pin(aged),
            heartbeat: Box::pin(tokio::time::sleep(join.heartbeat)),
            heartbeat_every: join.heartbeat,
            clock: self.clock.clone(),
            group_id,
            leave: Some(leave_guard),
            done: false,
        }))
    }
}

/// Reads a member's requests until it closes its side (or breaks the stream),
/// settling each with the group and queueing the receipt; then leaves the group.
async fn read_requests(
    mut inbound: Streaming<pb::ConsumeRequest>,
    handle: MemberHandle,
    receipts: mpsc::Sender<Result<Receipt, Status>>,
) {
    loop {
        let message = tokio::select! {
            m = inbound.message() => m,
            () = receipts.closed() => break,
        };
        let req = match message {
            Ok(Some(req)) => req,
            // Closed its side (leave), or the connection broke.
            Ok(None) | Err(_) => break,
        };
        if let Err(status) = check_request(&req) {
            let _ = receipts.send(Err(status)).await;
            break;
        }
        let receipt = handle
            .settle(
                req.ack_delivery_ids,
                req.nack_delivery_ids,
                req.extend_delivery_ids,
            )
            .await;
        if receipts.send(Ok(receipt)).await.is_err() {
            break;
        }
    }
    handle.leave();
}

/// The Consume response stream; see the module docs.
pub struct ConsumeStream {
    started: Option<pb::ConsumeResponse>,
    deliveries: mpsc::Receiver<crate::events::groups::Delivered>,
    receipts: mpsc::Receiver<Result<Receipt, Status>>,
    end: oneshot::Receiver<EndReason>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Fires when the stream's connection reaches its maximum age.
    aged: Pin<Box<WaitForCancellationFutureOwned>>,
    heartbeat: Pin<Box<Sleep>>,
    heartbeat_every: Duration,
    clock: Arc<dyn Clock>,
    group_id: String,
    /// Leaves the group when dropped: with the stream (the member went away), or
    /// when the gateway ends the stream.
    leave: Option<DropGuard>,
    done: bool,
}

impl std::fmt::Debug for ConsumeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumeStream")
            .field("group_id", &self.group_id)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ConsumeStream {
    fn sent_something(&mut self) {
        let next = tokio::time::Instant::now() + self.heartbeat_every;
        self.heartbeat.as_mut().reset(next);
    }

    /// Ends the stream from the gateway's side with `end`: the member leaves the
    /// group now (its unacknowledged deliveries go to the others) rather than when
    /// the transport gets round to dropping the stream.
    fn end_early(&mut self, end: StreamEnd) -> Option<Result<ConsumeItem, Status>> {
        self.done = true;
        self.leave.take();
        // why: also stops the task reading the member's requests.
        self.receipts.close();
        Some(Err(end.into()))
    }

    /// How the stream ends once the group closed this member's deliveries.
    fn ending(&mut self) -> Option<Result<ConsumeItem, Status>> {
        self.done = true;
        match self.end.try_recv() {
            Ok(EndReason::Left) => None,
            Ok(EndReason::GroupDeleted) => Some(Err(StreamEnd::GroupDeleted {
                group_id: self.group_id.clone(),
            }
            .into())),
            Ok(EndReason::StoreUnavailable) | Err(_) => {
                Some(Err(StreamEnd::GroupStoreUnavailable.into()))
            }
        }
    }
}

fn receipt_message(receipt: Receipt) -> pb::ConsumeResponse {
    let rejected = receipt
        .rejected
        .into_iter()
        .map(|(delivery_id, reason)| pb::RejectedDelivery {
            delivery_id,
            reason: match reason {
                RejectReason::NotHeld => pb::RejectReason::NotHeld,
                RejectReason::Unknown => pb::RejectReason::Unknown,
                RejectReason::Unavailable => pb::RejectReason::Unavailable,
            } as i32,
        })
        .collect();
    pb::ConsumeResponse {
        kind: Some(pb::consume_response::Kind::Receipt(pb::ConsumeReceipt {
            acknowledged_delivery_ids: receipt.acknowledged,
            nacked_delivery_ids: receipt.nacked,
            extended_delivery_ids: receipt.extended,
            rejected,
        })),
    }
}

impl futures::Stream for ConsumeStream {
    type Item = Result<ConsumeItem, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(started) = self.started.take() {
            self.sent_something();
            return Poll::Ready(Some(Ok(ConsumeItem::Owned(Box::new(started)))));
        }
        if self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(self.end_early(StreamEnd::ShuttingDown));
        }
        if self.aged.as_mut().poll(cx).is_ready() {
            return Poll::Ready(self.end_early(StreamEnd::ConnectionAged));
        }
        match self.receipts.poll_recv(cx) {
            Poll::Ready(Some(Ok(receipt))) => {
                self.sent_something();
                return Poll::Ready(Some(Ok(ConsumeItem::Owned(Box::new(receipt_message(
                    receipt,
                ))))));
            }
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                return Poll::Ready(Some(Err(status)));
            }
            Poll::Ready(None) | Poll::Pending => {}
        }
        match self.deliveries.poll_recv(cx) {
            Poll::Ready(Some(delivered)) => {
                self.sent_something();
                return Poll::Ready(Some(Ok(ConsumeItem::delivery(&delivered))));
            }
            Poll::Ready(None) => return Poll::Ready(self.ending()),
            Poll::Pending => {}
        }
        if self.heartbeat.as_mut().poll(cx).is_ready() {
            self.sent_something();
            let heartbeat = pb::ConsumeResponse {
                kind: Some(pb::consume_response::Kind::Heartbeat(pb::Heartbeat {
                    cursor: String::new(),
                    time: Some(timestamp(self.clock.now())),
                })),
            };
            // why: poll once more so the reset timer is registered with the waker.
            let _ = self.heartbeat.as_mut().poll(cx);
            return Poll::Ready(Some(Ok(ConsumeItem::Owned(Box::new(heartbeat)))));
        }
        Poll::Pending
    }
}

/// The generated trait wants decoded messages; only used when the service is
/// mounted without [`super::EventStreamServer`].
#[derive(Debug)]
pub struct DecodedConsumeStream(pub(super) ConsumeStream);

impl futures::Stream for DecodedConsumeStream {
    type Item = Result<pb::ConsumeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx).map(|item| {
            item.map(|r| {
                r.and_then(|m| {
                    m.into_response()
                        .map_err(|_| Status::internal("could not decode a delivery"))
                })
            })
        })
    }
}

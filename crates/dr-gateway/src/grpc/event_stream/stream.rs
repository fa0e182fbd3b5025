//! The Subscribe response stream: a subscription's items turned into stream
//! messages, and the reasons a stream ends early ([`StreamEnd`], converted to a
//! status by the one error table in `grpc::status`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::Status;

use super::codec::SubscribeItem;
use crate::events::{proto::timestamp, subscription::Subscription, SubscriptionItem};
use crate::pb::v1 as pb;

/// Why a Subscribe or Consume stream ended before the caller cancelled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The gateway is shutting down; resume on another replica from the last cursor
    /// (a group member: reconnect; what it held is delivered again).
    ShuttingDown,
    /// The subscriber fell so far behind that the log dropped its position.
    CursorExpired {
        /// Where the subscriber can resume (losing what lies between).
        oldest_cursor: String,
    },
    /// The event log failed while the stream was reading it.
    EventLogFailed,
    /// The stream's connection reached its maximum age (`--grpc-max-connection-age`);
    /// resume from the last cursor on a new connection (a group member: reconnect;
    /// what it held is delivered again).
    ConnectionAged,
    /// The consumer group of a Consume stream was deleted.
    GroupDeleted {
        /// The group.
        group_id: String,
    },
    /// A consumer group's state store failed for too long; reconnect (elsewhere).
    GroupStoreUnavailable,
}

/// The Subscribe response stream: the subscription (read as this stream is
/// polled), mapped to stream messages and statuses. Ends with UNAVAILABLE when the gateway shuts down,
/// so graceful shutdown does not wait for streams that never end on their own.
pub struct SubscribeStream {
    /// None once the stream ended early (dropping it ends the subscription).
    pub(super) items: Option<Subscription>,
    pub(super) shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Fires when the stream's connection reaches its maximum age.
    pub(super) aged: Pin<Box<WaitForCancellationFutureOwned>>,
    pub(super) done: bool,
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
            self.items = None;
            return Poll::Ready(Some(Err(StreamEnd::ShuttingDown.into())));
        }
        if self.aged.as_mut().poll(cx).is_ready() {
            self.done = true;
            self.items = None;
            return Poll::Ready(Some(Err(StreamEnd::ConnectionAged.into())));
        }
        let Some(items) = self.items.as_mut() else {
            return Poll::Ready(None);
        };
        Pin::new(items)
            .poll_next(cx)
            .map(|item| item.map(subscription_item_to_message))
    }
}

fn subscription_item_to_message(item: SubscriptionItem) -> Result<SubscribeItem, Status> {
    match item {
        SubscriptionItem::Event(event) => Ok(SubscribeItem::Shared(event.encoded_response.clone())),
        SubscriptionItem::Reordered {
            event,
            resume_cursor,
        } => Ok(SubscribeItem::SharedWithResume(
            event.encoded_response.clone(),
            resume_cursor,
        )),
        SubscriptionItem::Heartbeat { cursor, time } => {
            Ok(SubscribeItem::Owned(Box::new(pb::SubscribeResponse {
                kind: Some(pb::subscribe_response::Kind::Heartbeat(pb::Heartbeat {
                    cursor,
                    time: Some(timestamp(time)),
                })),
                resume_cursor: String::new(),
            })))
        }
        SubscriptionItem::Expired { oldest_cursor } => {
            Err(StreamEnd::CursorExpired { oldest_cursor }.into())
        }
        SubscriptionItem::Failed(e) => {
            tracing::error!(error = %e, "subscription ended: event log failed");
            Err(StreamEnd::EventLogFailed.into())
        }
    }
}

/// The generated trait wants decoded messages; only used when the service is
/// mounted without [`EventStreamServer`].
#[derive(Debug)]
pub struct DecodedSubscribeStream(pub(super) SubscribeStream);

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

//! The Subscribe response stream: a subscription's items turned into stream
//! messages, and the reasons a stream ends early ([`StreamEnd`], converted to a
//! status by the one error table in `grpc::status`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};
use std::task::{Context, Poll, Waker};

use futures::task::{ArcWake, AtomicWaker};
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
/// polled), mapped to stream messages and statuses. Ends with UNAVAILABLE when the
/// gateway shuts down, so graceful shutdown does not wait for streams that never end
/// on their own, and when its connection reaches its maximum age.
pub struct SubscribeStream {
    /// None once the stream ended (dropping it ends the subscription).
    items: Option<Subscription>,
    ends: EarlyEnds,
}

impl SubscribeStream {
    /// `items`, ended early by `shutdown` (the gateway's) or `aged` (the stream's
    /// connection reached its maximum age).
    pub(super) fn new(
        items: Subscription,
        shutdown: WaitForCancellationFutureOwned,
        aged: WaitForCancellationFutureOwned,
    ) -> Self {
        Self {
            items: Some(items),
            ends: EarlyEnds::new(shutdown, aged),
        }
    }
}

impl std::fmt::Debug for SubscribeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeStream")
            .field("ended", &self.items.is_none())
            .finish_non_exhaustive()
    }
}

/// The reasons a Subscribe stream ends early, watched together: both cancellations
/// are polled with this watcher's own waker, which notes that one fired and wakes the
/// stream's task, so a poll of the stream loads one flag instead of polling both.
///
/// why: polling the two cancellation futures on every poll of every stream was
/// ~0.5 k instructions per delivery (`cargo bench -p dr-gateway --bench fan_out --
/// --callgrind`, benches/README.md "Optimisation 10").
struct EarlyEnds {
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    aged: Pin<Box<WaitForCancellationFutureOwned>>,
    signal: Arc<EndSignal>,
    /// Wakes `signal`; the cancellations hold it.
    waker: Waker,
    /// True until the cancellations have been polled with `waker`.
    unarmed: bool,
}

/// What the cancellations wake: notes that one fired and wakes the stream's task.
#[derive(Default)]
struct EndSignal {
    fired: AtomicBool,
    stream_task: AtomicWaker,
}

impl ArcWake for EndSignal {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.fired.store(true, Ordering::Release);
        arc_self.stream_task.wake();
    }
}

impl EarlyEnds {
    fn new(shutdown: WaitForCancellationFutureOwned, aged: WaitForCancellationFutureOwned) -> Self {
        let signal = Arc::new(EndSignal::default());
        Self {
            shutdown: Box::pin(shutdown),
            aged: Box::pin(aged),
            waker: futures::task::waker(signal.clone()),
            signal,
            unarmed: true,
        }
    }

    /// Ready with the reason once the stream must end.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<StreamEnd> {
        // why: register before reading the flag, so a cancellation after the read
        // wakes the task that will poll again.
        self.signal.stream_task.register(cx.waker());
        if !self.unarmed && !self.signal.fired.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        self.unarmed = false;
        let mut own = Context::from_waker(&self.waker);
        if self.shutdown.as_mut().poll(&mut own).is_ready() {
            return Poll::Ready(StreamEnd::ShuttingDown);
        }
        if self.aged.as_mut().poll(&mut own).is_ready() {
            return Poll::Ready(StreamEnd::ConnectionAged);
        }
        Poll::Pending
    }
}

impl futures::Stream for SubscribeStream {
    type Item = Result<SubscribeItem, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(items) = this.items.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(end) = this.ends.poll(cx) {
            this.items = None;
            return Poll::Ready(Some(Err(end.into())));
        }
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

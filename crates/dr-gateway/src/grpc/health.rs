//! The standard gRPC health service (`grpc.health.v1.Health`) as the gateway serves
//! it: tonic-health's answers, fed by [`crate::health::HealthGate`], with `Watch`
//! streams that end when the gateway drains.
//!
//! why: a `Watch` stream never ends by itself, and an open stream keeps its HTTP/2
//! connection open after GOAWAY; one watcher would hold a graceful shutdown for
//! the whole grace period. At the drain a stream first delivers the NOT_SERVING the
//! gate set just before (it is already queued), then ends with UNAVAILABLE
//! `SHUTTING_DOWN`, as `Subscribe` streams do.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService, WatchStream};

use super::event_stream::StreamEnd;

/// The health service; `drain` ends its `Watch` streams.
pub fn service(reporter: HealthReporter, drain: CancellationToken) -> HealthServer<HealthApi> {
    HealthServer::new(HealthApi {
        inner: HealthService::from_health_reporter(reporter),
        drain,
    })
}

/// tonic-health's service with draining `Watch` streams.
#[derive(Debug)]
pub struct HealthApi {
    inner: HealthService,
    drain: CancellationToken,
}

#[tonic::async_trait]
impl Health for HealthApi {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = DrainingWatch;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let drain = Box::pin(self.drain.clone().cancelled_owned());
        Ok(self.inner.watch(request).await?.map(|inner| DrainingWatch {
            inner,
            drain,
            done: false,
        }))
    }
}

/// A `Watch` stream that ends (UNAVAILABLE `SHUTTING_DOWN`) once the gateway
/// drains, after every status already queued.
pub struct DrainingWatch {
    inner: WatchStream,
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
    done: bool,
}

impl std::fmt::Debug for DrainingWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // why: tonic-health's WatchStream implements no Debug.
        f.debug_struct("DrainingWatch")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Stream for DrainingWatch {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        // why: the status first, so the NOT_SERVING set before the drain reaches
        // the watcher before its stream ends.
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(None) => {
                self.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
            Poll::Pending => {}
        }
        if self.drain.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(StreamEnd::ShuttingDown.into())));
        }
        Poll::Pending
    }
}

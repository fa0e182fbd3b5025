//! A tower layer that refuses a request message larger than the limit with
//! RESOURCE_EXHAUSTED, as soon as its gRPC frame header announces the size (before
//! a byte of the message is buffered).
//!
//! why: tonic refuses an oversized message with OUT_OF_RANGE, but the gRPC
//! convention (the C-core, Go and Java implementations, and their docs) is
//! RESOURCE_EXHAUSTED, and clients branch on it. The layer reads the 5-byte frame
//! headers (compression flag, big-endian length) as the body streams by and ends the
//! body with the status; tonic passes a `Status` from the body through unchanged.
//! Its limit must not be above tonic's own (the same `--grpc-max-receive-message-size`
//! feeds both), or tonic's OUT_OF_RANGE would come first.
//!
//! # Compressed requests
//! The frame header gives the size as sent, so for a compressed message the limit
//! applies first to its compressed size. The decompressed size is bounded as well:
//! tonic inflates into a buffer capped at the same limit (`max_decoding_message_size`)
//! and stops with RESOURCE_EXHAUSTED the moment it would grow past it, so a small
//! message that inflates to gigabytes (a decompression bomb) costs at most the limit
//! in memory. This layer gives that refusal the same `MESSAGE_TOO_LARGE` details
//! when it is the whole answer (unary and server-streaming calls, refused before
//! the handler runs); in a client stream (`Consume`) the stream ends with tonic's
//! RESOURCE_EXHAUSTED.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::Status;
use tower::{Layer, Service};

use super::status::{decompressed_message_too_large, message_too_large};

/// How tonic's message starts when inflating a request passed the limit.
const TONIC_DECOMPRESSION_LIMIT: &str = "Error decompressing: size limit";

/// Wraps every request body in a [`LimitedMessages`] check.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimitLayer {
    limit: usize,
}

impl MessageLimitLayer {
    /// Refuses request messages above `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// The service [`MessageLimitLayer`] makes.
#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    limit: usize,
}

impl<S, B, R> Service<http::Request<B>> for MessageLimit<S>
where
    S: Service<http::Request<Body>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let limit = self.limit;
        let call = self
            .inner
            .call(request.map(|body| Body::new(LimitedMessages::new(Body::new(body), limit))));
        Box::pin(async move {
            let mut response = call.await?;
            refused_while_inflating(&mut response, limit);
            Ok(response)
        })
    }
}

/// Gives tonic's refusal of a request that inflated past `limit` (a trailers-only
/// answer) the gateway's `MESSAGE_TOO_LARGE` status.
fn refused_while_inflating<R>(response: &mut http::Response<R>, limit: usize) {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return;
    };
    if status.code() != tonic::Code::ResourceExhausted
        || !status.message().starts_with(TONIC_DECOMPRESSION_LIMIT)
    {
        return;
    }
    let headers = response.headers_mut();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    if decompressed_message_too_large(limit)
        .add_header(headers)
        .is_err()
    {
        // why: the status's own headers are always valid; keep tonic's on a surprise.
        tracing::debug!("could not replace tonic's decompression refusal");
    }
}

/// A request body whose gRPC messages may not exceed a limit.
#[derive(Debug)]
pub struct LimitedMessages {
    inner: Body,
    limit: usize,
    /// Bytes of the current frame header read so far (0..5).
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
    failed: bool,
}

impl LimitedMessages {
    fn new(inner: Body, limit: usize) -> Self {
        Self {
            inner,
            limit,
            header: [0; 5],
            header_len: 0,
            remaining: 0,
            failed: false,
        }
    }

    /// Follows the frame headers through `data`; the status when a message is too large.
    fn check(&mut self, data: &Bytes) -> Result<(), Status> {
        let mut rest = data.clone();
        while rest.has_remaining() {
            if self.remaining > 0 {
                let skip = self.remaining.min(rest.remaining());
                rest.advance(skip);
                self.remaining -= skip;
                continue;
            }
            self.header[self.header_len] = rest.get_u8();
            self.header_len += 1;
            if self.header_len == self.header.len() {
                self.header_len = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if len > self.limit {
                    return Err(message_too_large(len, self.limit));
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

impl HttpBody for LimitedMessages {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            if let Err(status) = self.check(data) {
                self.failed = true;
                return Poll::Ready(Some(Err(status)));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0];
        f.extend_from_slice(&len.to_be_bytes());
        f
    }

    #[test]
    fn a_message_within_the_limit_passes_even_split_anywhere() {
        let mut stream = frame(3);
        stream.extend_from_slice(b"abc");
        stream.extend(frame(4));
        stream.extend_from_slice(b"defg");
        for split in 0..stream.len() {
            let mut body = LimitedMessages::new(Body::empty(), 4);
            let (a, b) = stream.split_at(split);
            body.check(&Bytes::copy_from_slice(a)).unwrap();
            body.check(&Bytes::copy_from_slice(b)).unwrap();
        }
    }

    #[test]
    fn a_larger_message_is_resource_exhausted_at_its_header() {
        let mut body = LimitedMessages::new(Body::empty(), 4);
        let status = body.check(&Bytes::from(frame(5))).unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
    }
}

//! What the RPC layers share: which method a request path names, and the response
//! body wrapper that sees an RPC end.
//!
//! **Methods.** Every service the gateway serves is described in a descriptor set
//! (the API, health, reflection v1 and v1alpha); [`Method::of`] looks the path up in
//! the table built from them, so service and method labels come from a fixed set.
//! Any other path is [`UNKNOWN`]: a caller cannot mint label values.
//!
//! **The end of an RPC.** Its status is in the trailers, or in the headers of a
//! trailers-only answer (every error before the first message), and a stream ends
//! long after the handler returned. [`ObservedBody`] watches the response body, counts
//! the messages it carries (gRPC's length-prefixed framing, across chunk boundaries)
//! and tells its [`RpcObserver`] exactly once how the RPC ended — `CANCELLED` when
//! the body is dropped unfinished (the client went away).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Buf as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use prost::Message as _;
use tonic::Code;

/// A gRPC method as the label values name it.
#[derive(Debug)]
pub struct Method {
    /// Fully qualified service, e.g. `digitalriver.gateway.v1.ChargeService`.
    pub service: &'static str,
    /// Method name, e.g. `CaptureItems`.
    pub name: &'static str,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream` (the values
    /// go-grpc-prometheus uses).
    pub kind: &'static str,
    /// `service/name`, the span name.
    pub full_name: &'static str,
    /// Its metric series, registered on first use ([`super::metrics`]).
    pub(super) metrics: OnceLock<super::metrics::MethodMetrics>,
}

impl PartialEq for Method {
    fn eq(&self, other: &Self) -> bool {
        self.full_name == other.full_name
    }
}

impl Eq for Method {}

/// Anything the gateway does not serve.
pub static UNKNOWN: Method = Method::new("unknown", "unknown", "unary", "unknown");

impl Method {
    const fn new(
        service: &'static str,
        name: &'static str,
        kind: &'static str,
        full_name: &'static str,
    ) -> Self {
        Self {
            service,
            name,
            kind,
            full_name,
            metrics: OnceLock::new(),
        }
    }

    /// The method `path` (`/package.Service/Method`) names, or [`UNKNOWN`].
    pub fn of(path: &str) -> &'static Method {
        table().get(path).copied().unwrap_or(&UNKNOWN)
    }

    /// Whether the client sends a stream of messages.
    pub fn client_streams(&self) -> bool {
        matches!(self.kind, "client_stream" | "bidi_stream")
    }

    /// Whether the server sends a stream of messages.
    pub fn server_streams(&self) -> bool {
        matches!(self.kind, "server_stream" | "bidi_stream")
    }
}

/// Path → method, for every method of every service the gateway serves.
fn table() -> &'static HashMap<&'static str, &'static Method> {
    static TABLE: OnceLock<HashMap<&'static str, &'static Method>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let sets: [&[u8]; 4] = [
            crate::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut table = HashMap::new();
        for encoded in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    let service_name = match file.package() {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for method in &service.method {
                        let kind = match (method.client_streaming(), method.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        let full_name = format!("{service_name}/{}", method.name());
                        let path = leak(format!("/{full_name}"));
                        // why: built once per process from a fixed set of descriptors;
                        // `'static` strings make label values free to copy.
                        let entry: &'static Method = Box::leak(Box::new(Method::new(
                            leak(service_name.clone()),
                            leak(method.name().to_owned()),
                            kind,
                            leak(full_name),
                        )));
                        table.insert(path, entry);
                    }
                }
            }
        }
        table
    })
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// The name of a status code as gRPC's own implementations print it (`OK`,
/// `NotFound`, …): the `grpc_code` label values dashboards already use.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Whether `code` is the server's failure rather than the caller's — the codes
/// OpenTelemetry's gRPC conventions mark a server span as failed for.
pub fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// How an RPC ended.
#[derive(Debug, Clone, Copy)]
pub struct RpcEnd<'a> {
    /// Its status code.
    pub code: Code,
    /// The raw `grpc-message` header, when there was one (percent-encoded).
    pub message: Option<&'a HeaderValue>,
    /// Messages the response carried (counted only when the observer asks).
    pub messages_sent: u64,
}

impl RpcEnd<'_> {
    /// The status message, decoded.
    pub fn message(&self) -> Option<String> {
        let raw = self.message?;
        let mut headers = HeaderMap::with_capacity(2);
        headers.insert("grpc-status", HeaderValue::from_static("2"));
        headers.insert("grpc-message", raw.clone());
        tonic::Status::from_header_map(&headers).map(|s| s.message().to_owned())
    }
}

/// Told when the response carries a message and, once, when the RPC ends.
pub trait RpcObserver: Send + 'static {
    /// Whether to count the response's messages (costs a little per data frame).
    fn counts_messages(&self) -> bool {
        false
    }

    /// A message was sent.
    fn on_message(&mut self) {}

    /// The RPC ended.
    fn on_end(&mut self, end: RpcEnd<'_>);
}

impl<O: RpcObserver> RpcObserver for Option<O> {
    fn counts_messages(&self) -> bool {
        self.as_ref().is_some_and(O::counts_messages)
    }

    fn on_message(&mut self) {
        if let Some(observer) = self {
            observer.on_message();
        }
    }

    fn on_end(&mut self, end: RpcEnd<'_>) {
        if let Some(observer) = self {
            observer.on_end(end);
        }
    }
}

/// A response body that tells `O` how the RPC ended; see the module docs.
#[derive(Debug)]
pub struct ObservedBody<B, O: RpcObserver> {
    inner: B,
    observer: O,
    /// `grpc-status` / `grpc-message` of a trailers-only answer.
    header_status: Option<(Code, Option<HeaderValue>)>,
    counter: Option<MessageCounter>,
    finished: bool,
}

impl<B, O: RpcObserver> ObservedBody<B, O> {
    /// Watches the body of `response` for `observer`.
    pub fn wrap(response: http::Response<B>, observer: O) -> http::Response<Self> {
        let header_status = status_in(response.headers());
        let counter = observer.counts_messages().then(MessageCounter::default);
        response.map(|inner| Self {
            inner,
            observer,
            header_status,
            counter,
            finished: false,
        })
    }

    fn finish(&mut self, code: Code, message: Option<&HeaderValue>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let messages_sent = self.counter.as_ref().map_or(0, |c| c.messages);
        self.observer.on_end(RpcEnd {
            code,
            message,
            messages_sent,
        });
    }

    /// The body ended without trailers: the headers' status, or UNKNOWN (gRPC says
    /// a response without a status is an error).
    fn finish_from_headers(&mut self, default: Code) {
        match self.header_status.take() {
            Some((code, message)) => self.finish(code, message.as_ref()),
            None => self.finish(default, None),
        }
    }
}

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// `grpc-status` (and, unless it is OK, `grpc-message`) in `headers`, if present.
fn status_in(headers: &HeaderMap) -> Option<(Code, Option<HeaderValue>)> {
    // why: each RPC's end is read by three layers; names made once, not parsed per
    // lookup, and no message lookup for the common OK.
    let code = Code::from_bytes(headers.get(&GRPC_STATUS)?.as_bytes());
    let message = if code == Code::Ok {
        None
    } else {
        headers.get(&GRPC_MESSAGE).cloned()
    };
    Some((code, message))
}

impl<B, O> Body for ObservedBody<B, O>
where
    B: Body<Data = bytes::Bytes> + Unpin,
    O: RpcObserver + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(counter) = &mut this.counter {
                        for _ in 0..counter.count(data.chunk()) {
                            this.observer.on_message();
                        }
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    match status_in(trailers) {
                        Some((code, message)) => this.finish(code, message.as_ref()),
                        None => this.finish_from_headers(Code::Unknown),
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Code::Internal, None),
            Poll::Ready(None) => this.finish_from_headers(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, O: RpcObserver> Drop for ObservedBody<B, O> {
    fn drop(&mut self) {
        // why: a trailers-only answer may be dropped without being polled; anything
        // else dropped unfinished was cut off (client cancelled, connection lost).
        self.finish_from_headers(Code::Cancelled);
    }
}

/// A request body whose messages are counted (client-streaming methods).
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    counter: Option<(MessageCounter, metrics::Counter)>,
}

impl<B> CountedBody<B> {
    /// `inner`, adding each message it carries to `counter` (when given).
    pub fn new(inner: B, counter: Option<metrics::Counter>) -> Self {
        Self {
            inner,
            counter: counter.map(|c| (MessageCounter::default(), c)),
        }
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some((counter, metric))) =
            (&polled, &mut this.counter)
        {
            if let Some(data) = frame.data_ref() {
                metric.increment(counter.count(data.chunk()));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts gRPC messages in a byte stream: each is a 5-byte prefix (compressed flag,
/// big-endian length) and that many bytes, and chunks may split them anywhere.
#[derive(Debug, Default, Clone)]
pub struct MessageCounter {
    /// Messages whose prefix started so far.
    messages: u64,
    /// Prefix bytes seen of the message being read (0 = between messages).
    prefix_seen: u8,
    /// The length bytes of the prefix.
    length: [u8; 4],
    /// Bytes of the current message still to skip.
    remaining: u64,
}

impl MessageCounter {
    /// Feeds `data`; returns how many messages started in it.
    pub fn count(&mut self, mut data: &[u8]) -> u64 {
        let before = self.messages;
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                data = &data[skip..];
                self.remaining -= skip as u64;
                continue;
            }
            if self.prefix_seen == 0 {
                self.messages += 1;
            } else {
                self.length[usize::from(self.prefix_seen - 1)] = data[0];
            }
            data = &data[1..];
            self.prefix_seen += 1;
            if self.prefix_seen == 5 {
                self.prefix_seen = 0;
                self.remaining = u64::from(u32::from_be_bytes(self.length));
            }
        }
        self.messages - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(messages: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.push(0);
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    #[test]
    fn the_api_health_and_reflection_methods_are_known_with_their_kinds() {
        let capture = Method::of("/digitalriver.gateway.v1.ChargeService/CaptureItems");
        assert_eq!(
            (capture.service, capture.name, capture.kind),
            (
                "digitalriver.gateway.v1.ChargeService",
                "CaptureItems",
                "unary"
            )
        );
        let subscribe = Method::of("/digitalriver.gateway.v1.EventStream/Subscribe");
        assert_eq!(subscribe.kind, "server_stream");
        assert!(subscribe.server_streams() && !subscribe.client_streams());
        assert_eq!(
            Method::of("/grpc.health.v1.Health/Watch").kind,
            "server_stream"
        );
        assert_eq!(
            Method::of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo").kind,
            "bidi_stream"
        );
        assert_eq!(
            Method::of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").kind,
            "bidi_stream"
        );
    }

    #[test]
    fn any_other_path_is_one_unknown_label() {
        for path in [
            "/",
            "/digitalriver.gateway.v1.ChargeService/Nope",
            &format!("/x.Y/{}", "z".repeat(10_000)),
        ] {
            assert_eq!(Method::of(path), &UNKNOWN, "{path}");
        }
    }

    #[test]
    fn messages_are_counted_however_the_chunks_split_them() {
        let bytes = framed(&[b"hello", b"", &[7u8; 300], b"x"]);
        for split in 1..bytes.len() {
            let mut counter = MessageCounter::default();
            let first = counter.count(&bytes[..split]);
            let second = counter.count(&bytes[split..]);
            assert_eq!(first + second, 4, "split at {split}");
        }
        let mut byte_by_byte = MessageCounter::default();
        let total: u64 = bytes.iter().map(|b| byte_by_byte.count(&[*b])).sum();
        assert_eq!(total, 4);
    }

    /// (code, message, messages sent) of each RPC end seen.
    type Ends = std::sync::Arc<std::sync::Mutex<Vec<(Code, Option<String>, u64)>>>;

    #[derive(Default)]
    struct Seen(Ends);

    impl RpcObserver for Seen {
        fn counts_messages(&self) -> bool {
            true
        }
        fn on_end(&mut self, end: RpcEnd<'_>) {
            self.0
                .lock()
                .unwrap()
                .push((end.code, end.message(), end.messages_sent));
        }
    }

    async fn drain<B: Body<Data = bytes::Bytes> + Unpin>(mut body: B) {
        use http_body_util::BodyExt as _;
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
    }

    #[tokio::test]
    async fn the_status_comes_from_the_trailers_or_a_trailers_only_answer() {
        let seen = Seen::default();
        let log = seen.0.clone();
        // a stream: two messages, then OK in the trailers
        let body = http_body_util::StreamBody::new(futures::stream::iter(vec![
            Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(framed(&[b"a"])))),
            Ok(Frame::data(bytes::Bytes::from(framed(&[b"b"])))),
            Ok(Frame::trailers({
                let mut t = HeaderMap::new();
                t.insert("grpc-status", HeaderValue::from_static("0"));
                t
            })),
        ]));
        drain(ObservedBody::wrap(http::Response::new(body), seen).into_body()).await;
        // trailers-only: NOT_FOUND with a percent-encoded message, dropped unpolled
        let seen = Seen(log.clone());
        let response = http::Response::builder()
            .header("grpc-status", "5")
            .header("grpc-message", "charge%20ch_1%20not%20found")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        drop(ObservedBody::wrap(response, seen));
        // a stream cut off before its end
        let seen = Seen(log.clone());
        drop(ObservedBody::wrap(
            http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()),
            seen,
        ));
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                (Code::Ok, None, 2),
                (Code::NotFound, Some("charge ch_1 not found".to_owned()), 0),
                (Code::Cancelled, None, 0),
            ]
        );
    }
}

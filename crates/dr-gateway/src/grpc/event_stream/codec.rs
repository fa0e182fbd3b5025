//! Subscribe's wire path: every stored event carries its `SubscribeResponse`
//! already encoded ([`StoredEvent::encoded_response`](crate::events::StoredEvent)).
//! [`EventStreamServer`] routes Subscribe through a prost codec whose item type,
//! [`SubscribeItem`], writes those shared bytes as they are; so a thousand
//! subscribers cost a thousand `memcpy`s of the frame, not a thousand protobuf
//! encodings of a `Struct`-heavy message (`cargo bench --bench fan_out` measures
//! both). The other methods go to the generated server unchanged.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use prost::{
    encoding::{DecodeContext, WireType},
    DecodeError, Message,
};
use tonic::{
    codegen::{http, Body, BoxFuture, Service, StdError},
    server::NamedService,
    Request, Response, Status,
};

use super::stream::SubscribeStream;
use super::EventStreamApi;
use crate::grpc::server::MessageSettings;
use crate::pb::v1::{self as pb, event_stream_server};

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

// === impl EventStreamServer ===

/// The EventStream service as mounted on the gRPC router: Subscribe with shared
/// pre-encoded events, everything else through the generated server.
#[derive(Debug, Clone)]
pub struct EventStreamServer {
    api: Arc<EventStreamApi>,
    generated: event_stream_server::EventStreamServer<EventStreamApi>,
    messages: MessageSettings,
}

impl EventStreamServer {
    /// Wraps the service, with gRPC's default message settings.
    pub fn new(api: EventStreamApi) -> Self {
        Self::with_messages(api, MessageSettings::default())
    }

    /// Wraps the service; every method (Subscribe too) applies `messages`:
    /// compression accepted and sent, message size limits.
    pub fn with_messages(api: EventStreamApi, messages: MessageSettings) -> Self {
        let api = Arc::new(api);
        let generated = event_stream_server::EventStreamServer::from_arc(api.clone());
        Self {
            generated: crate::grpc::server::with_messages!(generated, messages),
            api,
            messages,
        }
    }
}

const SUBSCRIBE_PATH: &str = "/digitalriver.gateway.v1.EventStream/Subscribe";

/// Subscribe as a streaming service whose items are [`SubscribeItem`]s.
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
        let messages = self.messages;
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<SubscribeItem, pb::SubscribeRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_compression_config(messages.accept, messages.send)
                .apply_max_message_size_config(
                    Some(messages.max_receive_message_size),
                    Some(messages.max_send_message_size),
                );
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
    use crate::events::{Envelope, EventEncoder, StoredEvent};
    use crate::grpc::event_stream::decode_payload;
    use chrono::Utc;

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
}

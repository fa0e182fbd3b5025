//! Subscribe's wire path: every stored event carries its `SubscribeResponse`
//! already encoded ([`StoredEvent::encoded_response`](crate::events::StoredEvent)).
//! [`EventStreamServer`] routes Subscribe through a prost codec whose item type,
//! [`SubscribeItem`], writes those shared bytes as they are; so a thousand
//! subscribers cost a thousand `memcpy`s of the frame, not a thousand protobuf
//! encodings of a `Struct`-heavy message (`cargo bench --bench fan_out` measures
//! both). Consume's deliveries ([`ConsumeItem`]) embed the same shared event
//! bytes behind a small per-delivery header. The other methods go to the
//! generated server unchanged.

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

use super::consume::ConsumeStream;
use super::stream::SubscribeStream;
use super::EventStreamApi;
use crate::defaults;
use crate::grpc::server::MessageSettings;
use crate::pb::v1::{self as pb, event_stream_server};

/// One Subscribe stream message: either the shared pre-encoded bytes of a stored
/// event, or a message built for this subscriber (heartbeats).
#[derive(Debug, Clone, PartialEq)]
pub enum SubscribeItem {
    /// An encoded `SubscribeResponse`, shared by all subscribers.
    Shared(Bytes),
    /// The shared bytes plus this stream's `resume_cursor` (a stream with a reorder
    /// window): protobuf lets the field follow the pre-encoded rest.
    SharedWithResume(Bytes, String),
    /// A message encoded per subscriber.
    Owned(Box<pb::SubscribeResponse>),
}

/// `SubscribeResponse.resume_cursor`'s field number.
const RESUME_CURSOR_FIELD: u32 = 3;

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
            Self::SharedWithResume(bytes, resume_cursor) => {
                let mut msg = pb::SubscribeResponse::decode(bytes)?;
                msg.resume_cursor = resume_cursor;
                Ok(msg)
            }
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
            Self::SharedWithResume(bytes, resume_cursor) => {
                buf.put_slice(bytes);
                prost::encoding::string::encode(RESUME_CURSOR_FIELD, resume_cursor, buf);
            }
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
        if !matches!(self, Self::Owned(_)) {
            *self = Self::Owned(Box::new(std::mem::take(self).into_response()?));
        }
        match self {
            Self::Owned(msg) => msg.merge_field(tag, wire_type, buf, ctx),
            Self::Shared(_) | Self::SharedWithResume(..) => Ok(()),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Shared(bytes) => bytes.len(),
            Self::SharedWithResume(bytes, resume_cursor) => {
                bytes.len()
                    + prost::encoding::string::encoded_len(RESUME_CURSOR_FIELD, resume_cursor)
            }
            Self::Owned(msg) => msg.encoded_len(),
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

// === impl ConsumeItem ===

/// One Consume stream message: a delivery written around the event's shared bytes,
/// or a message built for this member (started, receipts, heartbeats).
#[derive(Debug, Clone, PartialEq)]
pub enum ConsumeItem {
    /// `ConsumeResponse { delivery }`: `head` is everything up to the event
    /// field's bytes, which are the stored event's shared encoding.
    Delivery {
        /// Response and delivery headers, the delivery's own fields, the event
        /// field's header.
        head: Bytes,
        /// The encoded `Event`, shared with every other stream.
        event: Bytes,
    },
    /// A message encoded per member.
    Owned(Box<pb::ConsumeResponse>),
}

impl Default for ConsumeItem {
    fn default() -> Self {
        Self::Owned(Box::default())
    }
}

impl ConsumeItem {
    /// The message for one delivery; the event is not re-encoded.
    pub fn delivery(d: &crate::events::groups::Delivered) -> Self {
        use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
        let fields = pb::Delivery {
            delivery_id: d.delivery_id.clone(),
            attempt: d.attempt,
            event: None,
            ordering_key: d.ordering_key.to_string(),
            ack_deadline: Some(crate::events::proto::timestamp(d.deadline)),
            late: d.late,
        };
        let event = d.event.encoded_event();
        let event_len = event.len() as u64;
        // Delivery field 3 (event), length-delimited.
        let event_field = 1 + encoded_len_varint(event_len) + event.len();
        let delivery_len = (fields.encoded_len() + event_field) as u64;
        let mut head = Vec::with_capacity(fields.encoded_len() + 24);
        // ConsumeResponse field 2 (delivery), length-delimited.
        encode_key(2, WireType::LengthDelimited, &mut head);
        encode_varint(delivery_len, &mut head);
        fields.encode_raw(&mut head);
        encode_key(3, WireType::LengthDelimited, &mut head);
        encode_varint(event_len, &mut head);
        Self::Delivery {
            head: Bytes::from(head),
            event,
        }
    }

    /// The decoded message (decodes shared bytes).
    pub fn into_response(self) -> Result<pb::ConsumeResponse, DecodeError> {
        match self {
            Self::Delivery { head, event } => {
                let mut bytes = Vec::with_capacity(head.len() + event.len());
                bytes.extend_from_slice(&head);
                bytes.extend_from_slice(&event);
                pb::ConsumeResponse::decode(bytes.as_slice())
            }
            Self::Owned(msg) => Ok(*msg),
        }
    }
}

// why: as for `SubscribeItem`, frames shared bytes without re-encoding them.
impl Message for ConsumeItem {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Delivery { head, event } => {
                buf.put_slice(head);
                buf.put_slice(event);
            }
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
        if !matches!(self, Self::Owned(_)) {
            *self = Self::Owned(Box::new(std::mem::take(self).into_response()?));
        }
        match self {
            Self::Owned(msg) => msg.merge_field(tag, wire_type, buf, ctx),
            Self::Delivery { .. } => Ok(()),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Delivery { head, event } => head.len() + event.len(),
            Self::Owned(msg) => msg.encoded_len(),
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

// === impl EventStreamServer ===

/// The EventStream service as mounted on the gRPC router: Subscribe and Consume
/// with shared pre-encoded events, everything else through the generated server.
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

    /// Wraps the service; every method (Subscribe and Consume too) applies `messages`:
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

/// tonic's per-method server with `messages` applied (what the generated server
/// does for the other methods).
fn grpc_with<C: tonic::codec::Codec>(
    messages: MessageSettings,
    codec: C,
) -> tonic::server::Grpc<C> {
    tonic::server::Grpc::new(codec)
        .apply_compression_config(messages.accept, messages.send)
        .apply_max_message_size_config(
            Some(messages.max_receive_message_size),
            Some(messages.max_send_message_size),
        )
}

const SUBSCRIBE_PATH: &str = "/digitalriver.gateway.v1.EventStream/Subscribe";
const CONSUME_PATH: &str = "/digitalriver.gateway.v1.EventStream/Consume";

/// Subscribe's and Consume's codec: tonic's prost codec with a small encode buffer
/// per stream, encoding `E` (the stream's item) and decoding `D` (its requests).
///
/// why: tonic gives every response stream an encode buffer of 8 KiB up front and
/// keeps it while the stream lives, most of what an idle subscriber or an idle group
/// member costs (`cargo bench --bench fan_out`). These streams start with
/// [`defaults::EVENT_STREAM_ENCODE_BUFFER`] and grow only while they have frames to send.
#[derive(Debug)]
struct SmallBufferCodec<E, D>(std::marker::PhantomData<fn(E) -> D>);

impl<E, D> Default for SmallBufferCodec<E, D> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<E, D> tonic::codec::Codec for SmallBufferCodec<E, D>
where
    E: Message + Send + 'static,
    D: Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = tonic_prost::ProstEncoder<E>;
    type Decoder = tonic_prost::ProstDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(small_buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// Subscribe's codec: shared event bytes out, `SubscribeRequest` in.
type SubscribeCodec = SmallBufferCodec<SubscribeItem, pb::SubscribeRequest>;
/// Consume's codec: deliveries around shared event bytes out, `ConsumeRequest`s in.
type ConsumeCodec = SmallBufferCodec<ConsumeItem, pb::ConsumeRequest>;

fn small_buffer_settings() -> tonic::codec::BufferSettings {
    tonic::codec::BufferSettings::new(
        defaults::EVENT_STREAM_ENCODE_BUFFER,
        defaults::EVENT_STREAM_YIELD_THRESHOLD,
    )
}

/// Consume as a bidirectional streaming service whose items are [`ConsumeItem`]s.
struct SharedConsume(Arc<EventStreamApi>);

impl tonic::server::StreamingService<pb::ConsumeRequest> for SharedConsume {
    type Response = ConsumeItem;
    type ResponseStream = ConsumeStream;
    type Future = BoxFuture<Response<ConsumeStream>, Status>;

    fn call(&mut self, request: Request<tonic::Streaming<pb::ConsumeRequest>>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.consume_shared(request).await })
    }
}

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
        let api = self.api.clone();
        let messages = self.messages;
        match req.uri().path() {
            SUBSCRIBE_PATH => Box::pin(async move {
                Ok(grpc_with(messages, SubscribeCodec::default())
                    .server_streaming(SharedSubscribe(api), req)
                    .await)
            }),
            CONSUME_PATH => Box::pin(async move {
                Ok(grpc_with(messages, ConsumeCodec::default())
                    .streaming(SharedConsume(api), req)
                    .await)
            }),
            _ => self.generated.call(req),
        }
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
        let mut event = encoder.to_proto(&env);
        let stored = StoredEvent::build(3, 7, Utc::now(), env, &encoder);
        event.cursor = stored.cursor();
        let shared = SubscribeItem::Shared(stored.encoded_response.clone());
        let owned = SubscribeItem::Owned(Box::new(pb::SubscribeResponse {
            kind: Some(pb::subscribe_response::Kind::Event(event.clone())),
            ..Default::default()
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
        let Some(pb::event::Payload::Charge(charge)) = event.payload.clone() else {
            panic!("typed payload missing")
        };
        assert_eq!(charge.captures[0].fulfillment_id, "ful_1");

        // With a resume cursor appended: same event, cursor set, lengths agree.
        let resumable =
            SubscribeItem::SharedWithResume(stored.encoded_response.clone(), "abc".into());
        let bytes = resumable.encode_to_vec();
        assert_eq!(bytes.len(), resumable.encoded_len());
        let decoded = pb::SubscribeResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.resume_cursor, "abc");
        assert_eq!(
            decoded.kind,
            Some(pb::subscribe_response::Kind::Event(event))
        );
    }

    #[test]
    fn a_delivery_around_shared_bytes_decodes_like_the_message() {
        let env = Envelope::parse(Bytes::from_static(
            br#"{"id":"e","type":"order.accepted","createdTime":"2024-01-01T00:00:00Z",
                "data":{"object":{"id":"o1"}}}"#,
        ))
        .unwrap();
        let mut event = EventEncoder::default().to_proto(&env);
        let stored = Arc::new(StoredEvent::build(
            9,
            7,
            Utc::now(),
            env,
            &EventEncoder::default(),
        ));
        event.cursor = stored.cursor();
        let delivered = crate::events::groups::Delivered {
            delivery_id: "d1".into(),
            attempt: 3,
            event: stored.clone(),
            ordering_key: Arc::from("o1"),
            deadline: Utc::now(),
            late: true,
        };
        let item = ConsumeItem::delivery(&delivered);
        let bytes = item.encode_to_vec();
        assert_eq!(bytes.len(), item.encoded_len());
        let decoded = pb::ConsumeResponse::decode(bytes.as_slice()).unwrap();
        let Some(pb::consume_response::Kind::Delivery(d)) = decoded.kind else {
            panic!("not a delivery: {decoded:?}")
        };
        assert_eq!(d.delivery_id, "d1");
        assert_eq!(d.attempt, 3);
        assert_eq!(d.ordering_key, "o1");
        assert!(d.late);
        assert_eq!(d.event, Some(event));
    }
}

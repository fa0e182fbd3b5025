"""Compressed calls from Python's gRPC stack: requests sent with gzip or deflate are
accepted, and the compressed answers the gateway sends back (grpcio offers gzip and
deflate in `grpc-accept-encoding`) are read.

grpcio (gRPC C-core) implements no zstd, so zstd is proven with a tonic client in
crates/dr-gateway/tests/api/transport.rs. C-core sends a message uncompressed when
compressing would not make it smaller, so the request here carries a long,
compressible id (within the 255 bytes the gateway accepts for a filter text) that
the gateway must inflate exactly to pass it on to DR.
"""

import uuid

import grpc
import pytest
from digitalriver.gateway.v1 import fulfillment_service_pb2, fulfillment_service_pb2_grpc

COMPRESSIONS = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}


@pytest.mark.parametrize("compression", COMPRESSIONS.values(), ids=COMPRESSIONS.keys())
def test_a_compressed_request_is_accepted_and_its_compressed_answer_read(channel, sandbox, compression):
    upstream_id = f"py-{uuid.uuid4().hex[:8]}-" + "x" * 240
    order = sandbox.create_order([{"quantity": 1, "amount": "12.50"}], upstreamId=upstream_id)
    stub = fulfillment_service_pb2_grpc.FulfillmentServiceStub(channel)

    reply = stub.GetOrder(
        fulfillment_service_pb2.GetOrderRequest(upstream_id=upstream_id), timeout=10, compression=compression
    )

    assert reply.order.id == order["id"]
    assert reply.order.upstream_id == upstream_id
    lookups = [r for r in sandbox.requests("GET", "/orders") if upstream_id[:12] in (r.get("query") or "")]
    assert len(lookups) == 1, "the whole id reached DR once"


def test_a_channel_that_compresses_everything_works_for_every_call(gateway, sandbox):
    order = sandbox.create_order([{"quantity": 1, "amount": "12.50"}])
    with grpc.insecure_channel(gateway.grpc_target, compression=grpc.Compression.Gzip) as channel:
        stub = fulfillment_service_pb2_grpc.FulfillmentServiceStub(channel)
        for _ in range(3):
            reply = stub.GetOrder(fulfillment_service_pb2.GetOrderRequest(order_id=order["id"]), timeout=10)
            assert reply.order.id == order["id"]

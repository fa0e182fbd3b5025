"""CreateFulfillment is idempotent per request_id, seen from a Python client and
from the sandbox's record of what reached "Digital River"."""

from digitalriver.gateway.v1 import fulfillment_service_pb2, fulfillment_service_pb2_grpc


def test_the_same_request_id_twice_returns_one_fulfillment_from_one_post(channel, sandbox):
    # Arrange
    order = sandbox.create_order([{"quantity": 2, "amount": "20.00"}])
    request = fulfillment_service_pb2.CreateFulfillmentRequest(
        order_id=order["id"],
        items=[fulfillment_service_pb2.CreateFulfillmentItem(item_id=order["items"][0]["id"], quantity=1)],
        request_id=f"shipment-{order['id']}",
    )
    stub = fulfillment_service_pb2_grpc.FulfillmentServiceStub(channel)

    # Act
    first = stub.CreateFulfillment(request, timeout=10)
    retry = stub.CreateFulfillment(request, timeout=10)

    # Assert
    assert first.fulfillment.id.startswith("ful_")
    assert retry.fulfillment.id == first.fulfillment.id
    posts = [
        p for p in sandbox.requests("POST", "/fulfillments")
        if p["body"].get("orderId") == order["id"]
    ]
    assert len(posts) == 1, posts
    assert posts[0]["body"]["metadata"]["requestId"] == request.request_id

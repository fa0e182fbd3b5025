"""Deadlines as a C-core client measures them: CaptureItems with `wait` on a capture
that stays pending answers OK with the fulfillment (`settled` false) before the
client's own deadline, even though grpcio sends its remaining time rounded up.

grpcio (C-core) sends `grpc-timeout` rounded up to three significant figures: 10 ms
steps below 10 s, 100 ms steps below 100 s. A deadline just above a step is the
worst case: 12.02 s left goes out as 12.1 s. Each deadline below has that extra
0.02 s, so a gateway that trusted the header would answer after the client gave up
(the client would then see DEADLINE_EXCEEDED and no fulfillment id, though DR
started the capture).
"""

import time

import grpc
import pytest

from digitalriver.gateway.v1 import charge_service_pb2, charge_service_pb2_grpc
from support import Gateway

# Past a rounding step: C-core sends 2.02 s, 12.1 s and 30.1 s.
JUST_PAST_A_STEP_S = 0.02


@pytest.fixture(scope="module")
def stepped_gateway(tmp_path_factory):
    """A gateway whose sandbox settles captures only on POST /sandbox/settle, so
    they stay pending for as long as a test needs."""
    gw = Gateway(
        str(tmp_path_factory.mktemp("stepped") / "dr-gateway.log"),
        "--sandbox-settle", "stepped",
    )
    gw.start()
    try:
        yield gw
    finally:
        gw.assert_stops_gracefully()


@pytest.mark.parametrize("deadline_s", [2, 12, 30])
def test_a_capture_left_pending_answers_ok_with_the_fulfillment_before_the_clients_deadline(
    stepped_gateway, deadline_s
):
    # Arrange
    sandbox = stepped_gateway.sandbox
    order = sandbox.create_order([{"productName": "Widget", "quantity": 2, "amount": "26.89"}])
    timeout = deadline_s + JUST_PAST_A_STEP_S
    request = charge_service_pb2.CaptureItemsRequest(
        order_id=order["id"],
        items=[charge_service_pb2.ChargeItem(item_id=order["items"][0]["id"], quantity=1)],
        request_id=f"pending-{order['id']}",
        wait=True,
    )
    with grpc.insecure_channel(stepped_gateway.grpc_target) as channel:
        stub = charge_service_pb2_grpc.ChargeServiceStub(channel)

        # Act: the client's clock runs from the call to the answer.
        started = time.monotonic()
        reply = stub.CaptureItems(request, timeout=timeout)
        took = time.monotonic() - started

    # Assert: OK with the fulfillment and the pending capture, inside the deadline,
    # after holding for (nearly) all of it.
    assert took < timeout, f"answered after {took:.3f} s of {timeout} s"
    assert took > timeout - 1.0, f"gave up waiting after only {took:.3f} s of {timeout} s"
    assert reply.fulfillment.id.startswith("ful_")
    assert reply.fulfillment.order_id == order["id"]
    assert not reply.settled
    assert [o.operation.state for o in reply.outcomes] == ["pending"]
    # DR (the sandbox) holds one fulfillment for the order and the capture is pending.
    held = sandbox.call("GET", f"/fulfillments?orderId={order['id']}")["data"]
    assert [f["id"] for f in held] == [reply.fulfillment.id]
    pending = [p for p in sandbox.call("GET", "/sandbox/pending")["data"] if p["orderId"] == order["id"]]
    assert [p["kind"] for p in pending] == ["capture"]

"""EventStream.Subscribe from Python: typed event payloads, and resuming after a
cursor with no gap and no duplicate. Every stream has a deadline and is cancelled."""

import time
import uuid

import grpc
from google.protobuf import duration_pb2
from google.protobuf.json_format import MessageToDict

from digitalriver.gateway.v1 import (
    charge_service_pb2,
    charge_service_pb2_grpc,
    event_stream_pb2,
    event_stream_pb2_grpc,
    resources_pb2,
)

CAPTURE_COMPLETE = "order.charge.capture.complete"
STREAM_DEADLINE_S = 20


def events_until_idle(channel, request: event_stream_pb2.SubscribeRequest) -> list[event_stream_pb2.Event]:
    """Every event the stream sends before its first heartbeat. A heartbeat comes only
    after the stream has been silent for `heartbeat_interval`, so it marks the point
    where the backlog is delivered. The call is cancelled before returning."""
    request.heartbeat_interval.CopyFrom(duration_pb2.Duration(seconds=1))
    stream = event_stream_pb2_grpc.EventStreamStub(channel).Subscribe(request, timeout=STREAM_DEADLINE_S)
    events = []
    try:
        for message in stream:
            if message.WhichOneof("kind") == "heartbeat":
                return events
            events.append(message.event)
    except grpc.RpcError as e:
        raise AssertionError(f"stream failed after {len(events)} events: {e.code()} {e.details()}") from e
    finally:
        stream.cancel()
    raise AssertionError(f"stream ended without a heartbeat after {len(events)} events")


def capture_one_unit(channel, order: dict, request_id: str) -> None:
    reply = charge_service_pb2_grpc.ChargeServiceStub(channel).CaptureItems(
        charge_service_pb2.CaptureItemsRequest(
            order_id=order["id"],
            items=[charge_service_pb2.ChargeItem(item_id=order["items"][0]["id"], quantity=1)],
            request_id=request_id,
            wait=True,
        ),
        timeout=20,
    )
    assert reply.settled, reply


def captures_of(order_id: str) -> event_stream_pb2.EventFilter:
    return event_stream_pb2.EventFilter(types=[CAPTURE_COMPLETE], order_ids=[order_id])


def an_order_captured_twice(channel, sandbox) -> dict:
    """An order of 2 units whose captures completed one after the other."""
    order = sandbox.create_order([{"productName": "Widget", "quantity": 2, "amount": "26.89"}])
    capture_one_unit(channel, order, request_id=f"first-{order['id']}")
    capture_one_unit(channel, order, request_id=f"second-{order['id']}")
    return order


def test_subscribe_from_oldest_delivers_the_capture_events_with_a_typed_charge(channel, sandbox):
    order = an_order_captured_twice(channel, sandbox)

    events = events_until_idle(
        channel,
        event_stream_pb2.SubscribeRequest(
            filter=captures_of(order["id"]), position=event_stream_pb2.START_POSITION_OLDEST
        ),
    )

    assert [e.type for e in events] == [CAPTURE_COMPLETE, CAPTURE_COMPLETE]
    first = events[0]
    assert first.WhichOneof("payload") == "charge"
    assert first.charge.order_id == order["id"]
    assert first.cursor and first.id
    assert resources_pb2.Money(currency_code="USD", units=13, nanos=450000000) in [
        c.amount for c in first.charge.captures if c.state == "complete"
    ]
    assert first.data_object["id"] == first.charge.id


def test_resuming_after_a_cursor_yields_the_later_events_exactly_once(channel, sandbox):
    # Arrange: the order's two capture events, as a first subscription saw them.
    order = an_order_captured_twice(channel, sandbox)
    seen = events_until_idle(
        channel,
        event_stream_pb2.SubscribeRequest(
            filter=captures_of(order["id"]), position=event_stream_pb2.START_POSITION_OLDEST
        ),
    )
    assert len(seen) == 2

    # Act: reconnect after the first event's cursor.
    resumed = events_until_idle(
        channel,
        event_stream_pb2.SubscribeRequest(filter=captures_of(order["id"]), after_cursor=seen[0].cursor),
    )

    # Assert: the second event, once; not the cursor's own event again.
    assert [e.id for e in resumed] == [seen[1].id]
    assert resumed[0].cursor == seen[1].cursor


def test_a_live_subscriber_receives_an_event_appended_after_it_subscribed(channel, sandbox):
    # Arrange: a subscription from now, confirmed open by its first heartbeat.
    order = sandbox.create_order([{"quantity": 1, "amount": "5.00"}])
    request = event_stream_pb2.SubscribeRequest(
        filter=captures_of(order["id"]),
        position=event_stream_pb2.START_POSITION_NOW,
        heartbeat_interval=duration_pb2.Duration(seconds=1),
    )
    stream = event_stream_pb2_grpc.EventStreamStub(channel).Subscribe(request, timeout=STREAM_DEADLINE_S)
    try:
        assert next(stream).WhichOneof("kind") == "heartbeat"

        # Act
        capture_one_unit(channel, order, request_id=f"live-{order['id']}")

        # Assert
        for message in stream:
            if message.WhichOneof("kind") == "event":
                assert message.event.type == CAPTURE_COMPLETE
                assert message.event.charge.order_id == order["id"]
                break
        else:
            raise AssertionError("the stream ended before the event arrived")
    finally:
        stream.cancel()


def test_an_amount_no_double_can_hold_arrives_as_text_and_the_event_still_converts_to_json(channel, sandbox):
    # Arrange: DR sends an amount beyond any double (JSON allows it; json.dumps cannot write it).
    order_id = f"py-inf-{uuid.uuid4().hex[:10]}"
    sandbox.post_raw_json(
        "/sandbox/events",
        (
            '{"type": "order.charge.capture.complete", "object": {"id": "ch-%s", "orderId": "%s", '
            '"currency": "USD", "amount": 1e400, "captures": [{"id": "cap-%s", "amount": 12.5, '
            '"state": "complete"}]}}' % (order_id, order_id, order_id)
        ).encode(),
    )

    # Act: the event as the gateway streams it (the webhook may take a moment).
    request = event_stream_pb2.SubscribeRequest(
        filter=event_stream_pb2.EventFilter(order_ids=[order_id]),
        position=event_stream_pb2.START_POSITION_OLDEST,
    )
    deadline = time.monotonic() + STREAM_DEADLINE_S
    while not (events := events_until_idle(channel, request)):
        assert time.monotonic() < deadline, "the event never reached the gateway"

    # Assert: every client can print it as JSON (an infinity made MessageToDict raise) ...
    [event] = events
    as_json = MessageToDict(event)
    # ... the amount arrives as its text, the typed payload leaves it unset ...
    assert as_json["dataObject"]["amount"] == "1e+400"
    assert not event.charge.HasField("amount")
    # ... and the rest of the event is whole.
    assert event.charge.captures[0].amount.units == 12
    assert as_json["dataObject"]["captures"][0]["amount"] == 12.5

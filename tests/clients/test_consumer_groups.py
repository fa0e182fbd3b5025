"""Consumer groups from Python, with the README's member code as written: two
members share an order's events (each once, in creation order), and members that
leave are no longer listed. (The README's Node member runs in
tests/clients/node/test/consumer_groups.test.mjs.)"""

import os
import re
import threading
import time
import uuid

from digitalriver.gateway.v1 import (
    charge_service_pb2,
    charge_service_pb2_grpc,
    event_stream_pb2,
    event_stream_pb2_grpc,
)

from support import ROOT

README = os.path.join(ROOT, "README.md")
DEADLINE_S = 30


def readme_block(lang: str) -> str:
    """The code block between `<!-- consumer-member:<lang>:start -->` and `:end -->`."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = re.search(
        rf"<!-- consumer-member:{lang}:start -->\s*```\w+\n(.*?)```\s*<!-- consumer-member:{lang}:end -->",
        text,
        re.S,
    )
    assert section, f"README has no {lang} consumer-member block"
    return section.group(1)


def readme_python_member():
    namespace = {}
    exec(compile(readme_block("python"), "README.md (python group member)", "exec"), namespace)
    return namespace["GroupMember"]


def capture_all(channel, order: dict) -> None:
    """Ships the order's only item: DR captures, then fulfils and completes the order."""
    reply = charge_service_pb2_grpc.ChargeServiceStub(channel).CaptureItems(
        charge_service_pb2.CaptureItemsRequest(
            order_id=order["id"],
            items=[charge_service_pb2.ChargeItem(item_id=order["items"][0]["id"], quantity=1)],
            request_id=f"group-{order['id']}",
            wait=True,
        ),
        timeout=20,
    )
    assert reply.settled, reply


def created_us(event) -> int:
    return event.create_time.seconds * 1_000_000 + event.create_time.nanos // 1000


def test_two_readme_members_share_an_orders_events_each_once_in_creation_order(gateway, channel, sandbox):
    # Arrange: two members (the README's code), a fresh group they create themselves.
    GroupMember = readme_python_member()
    group = f"py-{uuid.uuid4().hex[:10]}"
    order = sandbox.create_order([{"productName": "Widget", "quantity": 1, "amount": "9.99"}])
    seen, lock, complete = [], threading.Lock(), threading.Event()

    def handler(name):
        def handle(event):
            order_id = event.order.id if event.WhichOneof("payload") == "order" else event.charge.order_id
            if order_id != order["id"]:
                return
            with lock:
                seen.append((name, event.id, event.type, created_us(event)))
            if event.type == "order.complete":
                complete.set()

        return handle

    members = [GroupMember(gateway.grpc_target, group, f"py-{i}", handler(f"py-{i}")) for i in range(2)]
    threads = [threading.Thread(target=m.run, daemon=True) for m in members]
    for t in threads:
        t.start()

    # Act: DR's lifecycle of the order (webhooks sent concurrently by the sandbox).
    capture_all(channel, order)

    # Assert: the order's events, each once across both members, in creation order.
    assert complete.wait(DEADLINE_S), f"order.complete never reached a member: {seen}"
    for m in members:
        m.stop()
    for t in threads:
        t.join(DEADLINE_S)
        assert not t.is_alive(), "a member did not leave when stopped"
    ids = [event_id for _, event_id, _, _ in seen]
    assert len(ids) == len(set(ids)), f"an event was processed twice: {seen}"
    types = [t for _, _, t, _ in seen]
    assert types.index("order.accepted") < types.index("order.fulfilled") < types.index("order.complete"), types
    times = [t for *_, t in seen]
    assert times == sorted(times), f"out of creation order: {types}"
    # Both left: the group has no members.
    stub = event_stream_pb2_grpc.EventStreamStub(channel)
    deadline = time.monotonic() + DEADLINE_S
    while stub.GetConsumerGroup(event_stream_pb2.GetConsumerGroupRequest(group_id=group), timeout=5).group.members:
        assert time.monotonic() < deadline, "members still listed after leaving"
        time.sleep(0.05)

"""Graceful shutdown seen from outside: SIGTERM ends open streams with UNAVAILABLE,
the process drains and exits 0 well inside its grace period."""

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from digitalriver.gateway.v1 import event_stream_pb2, event_stream_pb2_grpc

from support import DRAIN_DEADLINE_S, GRACE_EXCEEDED_LOG


def test_sigterm_ends_an_open_subscribe_stream_and_exits_zero(own_gateway):
    # Arrange: a live stream, confirmed open by its first heartbeat.
    with grpc.insecure_channel(own_gateway.grpc_target) as channel:
        stream = event_stream_pb2_grpc.EventStreamStub(channel).Subscribe(
            event_stream_pb2.SubscribeRequest(
                position=event_stream_pb2.START_POSITION_NOW, heartbeat_interval=duration_pb2.Duration(seconds=1)
            ),
            timeout=20,
        )
        try:
            assert next(stream).WhichOneof("kind") == "heartbeat"

            # Act
            own_gateway.process.terminate()

            # Assert: the stream ends with UNAVAILABLE, the cue to resume elsewhere
            # from the last cursor (heartbeats may still arrive until then) ...
            with pytest.raises(grpc.RpcError) as ended:
                for message in stream:
                    assert message.WhichOneof("kind") == "heartbeat"
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value.details()
            # ... with a reason a Python caller can branch on (drain, not outage)
            status = rpc_status.from_call(ended.value)
            assert status is not None, "UNAVAILABLE carries google.rpc.Status details"
            infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
            assert len(infos) == 1
            info = error_details_pb2.ErrorInfo()
            infos[0].Unpack(info)
            assert (info.reason, info.domain) == ("SHUTTING_DOWN", "digitalriver.com")
        finally:
            stream.cancel()

    # ... and the process exits 0 without waiting out its grace period.
    code = own_gateway.process.wait(timeout=DRAIN_DEADLINE_S)
    assert code == 0, own_gateway.log_tail()
    assert GRACE_EXCEEDED_LOG not in own_gateway.log()

"""The standard gRPC health protocol, read with the grpcio-health-checking client."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICES = [
    "",
    "digitalriver.gateway.v1.FulfillmentService",
    "digitalriver.gateway.v1.ChargeService",
    "digitalriver.gateway.v1.EventStream",
]


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s or "overall")
def test_health_check_reports_serving(channel, service):
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)

    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_of_an_unknown_service_is_not_found(channel):
    with pytest.raises(grpc.RpcError) as failure:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)

    assert failure.value.code() == grpc.StatusCode.NOT_FOUND

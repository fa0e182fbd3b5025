"""Server reflection as grpcurl 1.8, grpcui, Postman and Python's own reflection
client use it: the v1alpha protocol, with no stubs on the client side — for the API
and for the google.rpc error details it sends."""

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

PACKAGE = "digitalriver.gateway.v1"
# FileDescriptorProto field numbers: service = 6; ServiceDescriptorProto.method = 2.
SERVICE_FIELD, METHOD_FIELD = 6, 2


def reflect(channel, request: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
    """One request on the bidirectional ServerReflectionInfo stream, then the stream ends."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([request]), timeout=10)
    try:
        return next(responses)
    finally:
        responses.cancel()


def test_v1alpha_reflection_lists_every_gateway_service_and_health(channel):
    reply = reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))

    names = {s.name for s in reply.list_services_response.service}
    assert {
        f"{PACKAGE}.FulfillmentService",
        f"{PACKAGE}.ChargeService",
        f"{PACKAGE}.EventStream",
        "grpc.health.v1.Health",
    } <= names, names


def test_file_containing_symbol_carries_the_rpc_doc_comments(channel):
    reply = reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"{PACKAGE}.ChargeService")
    )

    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in reply.file_descriptor_response.file_descriptor_proto]
    charge_file = next(f for f in files if any(s.name == "ChargeService" for s in f.service))
    service_index = [s.name for s in charge_file.service].index("ChargeService")
    method_index = [m.name for m in charge_file.service[service_index].method].index("GetCharge")
    comments = {
        tuple(loc.path): loc.leading_comments for loc in charge_file.source_code_info.location
    }
    doc = comments.get((SERVICE_FIELD, service_index, METHOD_FIELD, method_index), "")
    assert "Reads one charge with its captures, cancels and refunds" in doc, doc


def test_a_client_with_only_reflection_can_call_get_order(channel, sandbox):
    # Arrange: an order, and message classes built from reflected descriptors alone.
    order = sandbox.create_order([{"productName": "Widget", "quantity": 1, "amount": "9.99"}])
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName(f"{PACKAGE}.FulfillmentService").FindMethodByName("GetOrder")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    get_order = channel.unary_unary(
        f"/{PACKAGE}.FulfillmentService/GetOrder",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )

    # Act
    reply = get_order(request_class(upstream_id=order["upstreamId"]), timeout=10)

    # Assert
    assert reply.order.id == order["id"]
    assert [item.product_name for item in reply.order.items] == ["Widget"]


def test_describe_google_rpc_error_info_resolves_through_v1alpha_reflection(channel):
    # What `grpcurl describe google.rpc.ErrorInfo` asks: the file holding the symbol,
    # then each file it imports, by name.
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))

    error_info = pool.FindMessageTypeByName("google.rpc.ErrorInfo")
    status = pool.FindMessageTypeByName("google.rpc.Status")

    assert error_info.file.name == "google/rpc/error_details.proto"
    assert {"reason", "domain", "metadata"} <= set(error_info.fields_by_name)
    assert status.file.name == "google/rpc/status.proto"
    assert status.fields_by_name["details"].message_type.full_name == "google.protobuf.Any"
    for detail in ("BadRequest", "PreconditionFailure", "ResourceInfo", "RetryInfo", "QuotaFailure"):
        assert pool.FindMessageTypeByName(f"google.rpc.{detail}").file.name == "google/rpc/error_details.proto"
    retry_delay = pool.FindMessageTypeByName("google.rpc.RetryInfo").fields_by_name["retry_delay"]
    assert retry_delay.message_type.file.name == "google/protobuf/duration.proto"


def test_a_client_with_only_reflection_decodes_an_errors_details_by_type_name(channel):
    # Arrange: message classes for the call, the status and its details, all built from
    # reflected descriptors (as grpcurl, grpcui and Postman decode details).
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName(f"{PACKAGE}.ChargeService").FindMethodByName("GetCharge")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    get_charge = channel.unary_unary(
        f"/{PACKAGE}.ChargeService/GetCharge",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )

    # Act
    with pytest.raises(grpc.RpcError) as failure:
        get_charge(request_class(charge_id="chg_does_not_exist"), timeout=10)

    # Assert: grpc-status-details-bin decodes, and each Any by the name in its type URL.
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    raw = dict(failure.value.trailing_metadata())["grpc-status-details-bin"]
    status = message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status")).FromString(raw)
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    details = {}
    for any_detail in status.details:
        name = any_detail.type_url.rsplit("/", 1)[-1]
        detail_class = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
        details[name] = detail_class.FromString(any_detail.value)
    assert set(details) == {"google.rpc.ErrorInfo", "google.rpc.ResourceInfo"}, set(details)
    assert details["google.rpc.ErrorInfo"].domain == "digitalriver.com"
    assert details["google.rpc.ErrorInfo"].metadata["http_status"] == "404"
    assert details["google.rpc.ResourceInfo"].resource_name == "chg_does_not_exist"

"""DR's errors, as a Python caller sees them: a gRPC status code plus
`google.rpc.Status` details (grpcio-status + googleapis-common-protos) to branch on."""

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from digitalriver.gateway.v1 import (
    charge_service_pb2,
    charge_service_pb2_grpc,
    fulfillment_service_pb2,
    fulfillment_service_pb2_grpc,
)

DOMAIN = "digitalriver.com"


def rich_status(failure: grpc.RpcError) -> status_pb2.Status:
    """`grpc-status-details-bin`, decoded; from_call also checks that its code and
    message equal the call's own status line."""
    status = rpc_status.from_call(failure)
    assert status is not None, f"no google.rpc.Status details on {failure.code()}: {failure.details()}"
    return status


def detail(status: status_pb2.Status, kind):
    """The one detail of type `kind` (ErrorInfo, BadRequest, …) in the status."""
    found = []
    for any_detail in status.details:
        if any_detail.Is(kind.DESCRIPTOR):
            message = kind()
            any_detail.Unpack(message)
            found.append(message)
    names = [d.type_url for d in status.details]
    assert len(found) == 1, f"expected one {kind.DESCRIPTOR.full_name} among {names}"
    return found[0]


def fulfill(channel, order_id: str, items, request_id: str = ""):
    return fulfillment_service_pb2_grpc.FulfillmentServiceStub(channel).CreateFulfillment(
        fulfillment_service_pb2.CreateFulfillmentRequest(order_id=order_id, items=items, request_id=request_id),
        timeout=10,
    )


def all_units(order: dict):
    item = order["items"][0]
    return [fulfillment_service_pb2.CreateFulfillmentItem(item_id=item["id"], quantity=item["quantity"])]


def test_fulfilling_a_fulfilled_order_is_failed_precondition_order_fulfilled(channel, sandbox):
    # Arrange: an order whose only item is already fulfilled.
    order = sandbox.create_order([{"quantity": 1, "amount": "10.00"}])
    fulfill(channel, order["id"], all_units(order), request_id=f"first-{order['id']}")

    # Act
    with pytest.raises(grpc.RpcError) as failure:
        fulfill(channel, order["id"], all_units(order), request_id=f"second-{order['id']}")

    # Assert
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rich_status(failure.value)
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    info = detail(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("ORDER_FULFILLED", DOMAIN)
    assert info.metadata["dr_code"] == "order_fulfilled"
    assert info.metadata["http_status"] == "409"
    [violation] = detail(status, error_details_pb2.PreconditionFailure).violations
    assert (violation.type, violation.subject) == ("order_fulfilled", "orderId")


def test_a_request_without_items_is_invalid_argument_naming_the_field_and_never_reaches_dr(channel, sandbox):
    order = sandbox.create_order([{"quantity": 1, "amount": "10.00"}])

    with pytest.raises(grpc.RpcError) as failure:
        fulfill(channel, order["id"], items=[])

    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rich_status(failure.value)
    assert detail(status, error_details_pb2.ErrorInfo).domain == DOMAIN
    fields = [v.field for v in detail(status, error_details_pb2.BadRequest).field_violations]
    assert fields == ["items"]
    posts = sandbox.requests("POST", "/fulfillments")
    assert not [p for p in posts if p["body"].get("orderId") == order["id"]]


def test_get_charge_of_an_unknown_id_is_not_found_naming_the_resource(channel):
    with pytest.raises(grpc.RpcError) as failure:
        charge_service_pb2_grpc.ChargeServiceStub(channel).GetCharge(
            charge_service_pb2.GetChargeRequest(charge_id="chg_does_not_exist"), timeout=10
        )

    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    status = rich_status(failure.value)
    info = detail(status, error_details_pb2.ErrorInfo)
    assert (info.domain, info.metadata["http_status"]) == (DOMAIN, "404")
    resource = detail(status, error_details_pb2.ResourceInfo)
    assert (resource.resource_type, resource.resource_name) == ("charge", "chg_does_not_exist")


def test_a_rate_limited_post_is_resource_exhausted_with_retry_info(channel, sandbox):
    # Arrange: DR answers the next POST /fulfillments with 429 and Retry-After: 7.
    order = sandbox.create_order([{"quantity": 1, "amount": "10.00"}])
    sandbox.call(
        "POST", "/sandbox/faults",
        {"method": "POST", "path": "/fulfillments", "count": 1, "kind": "status", "status": 429, "retryAfter": 7},
    )
    try:
        # Act
        with pytest.raises(grpc.RpcError) as failure:
            fulfill(channel, order["id"], all_units(order), request_id=f"limited-{order['id']}")
    finally:
        sandbox.call("DELETE", "/sandbox/faults")

    # Assert
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rich_status(failure.value)
    assert detail(status, error_details_pb2.ErrorInfo).metadata["http_status"] == "429"
    assert detail(status, error_details_pb2.RetryInfo).retry_delay.seconds == 7
    assert detail(status, error_details_pb2.QuotaFailure).violations

"""A secured gateway, as a Python caller sees it: TLS, mutual TLS with a SPIFFE id,
bearer tokens through grpcio's call credentials, the authorization policy's
UNAUTHENTICATED / PERMISSION_DENIED with their details, and the caller on DR's
fulfillment. Certificates are made with openssl (the test command installs it)."""

import hashlib
import secrets
import subprocess
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from digitalriver.gateway.v1 import charge_service_pb2, charge_service_pb2_grpc
from support import Gateway

FULFILLER = "spiffe://cluster.local/ns/shipping/sa/fulfiller"
READER = "spiffe://cluster.local/ns/reports/sa/reader"
# why: the server certificate names localhost; the gateway listens on 127.0.0.1.
TLS_OPTIONS = [("grpc.ssl_target_name_override", "localhost")]


def openssl(*args, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(dir: Path, ca: str, name: str, san: str, usage: str) -> None:
    """`<name>.key` / `<name>.crt`, signed by `<ca>.key`, with one SAN and one EKU."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=dir)
    (dir / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=dir)


def make_ca(dir: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=dir)


class Pki:
    def __init__(self, dir: Path):
        self.dir = dir
        make_ca(dir, "ca")
        make_ca(dir, "other-ca")
        issue(dir, "ca", "server", "DNS:localhost,IP:127.0.0.1", "serverAuth")
        issue(dir, "ca", "fulfiller", f"URI:{FULFILLER}", "clientAuth")
        issue(dir, "ca", "reader", f"URI:{READER}", "clientAuth")
        issue(dir, "other-ca", "stranger", f"URI:{FULFILLER}", "clientAuth")
        self.token = secrets.token_hex(32)
        digest = hashlib.sha256(self.token.encode()).hexdigest()
        (dir / "tokens.txt").write_text(f"# the reports job\nreports sha256:{digest}\n")
        (dir / "policy.toml").write_text(
            f'[[rules]]\nname = "shipping"\nidentities = ["{FULFILLER}"]\nallow = ["read", "capture"]\n\n'
            f'[[rules]]\nname = "reports"\nidentities = ["{READER}", "token:reports"]\nallow = ["read"]\n'
        )

    def read(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()

    def credentials(self, client: str | None = None, ca: str = "ca"):
        if client is None:
            return grpc.ssl_channel_credentials(self.read(f"{ca}.crt"))
        return grpc.ssl_channel_credentials(
            self.read(f"{ca}.crt"), self.read(f"{client}.key"), self.read(f"{client}.crt")
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secured(pki, tmp_path_factory):
    d = pki.dir
    gw = Gateway(
        str(tmp_path_factory.mktemp("secured") / "dr-gateway.log"),
        "--tls-cert-file", str(d / "server.crt"), "--tls-key-file", str(d / "server.key"),
        "--tls-client-ca-file", str(d / "ca.crt"), "--tls-client-auth", "optional",
        "--auth-tokens-file", str(d / "tokens.txt"), "--auth-policy-file", str(d / "policy.toml"),
        "--auth-required",
        plaintext_health=True,
    )
    gw.start()
    try:
        yield gw
    finally:
        gw.assert_stops_gracefully()


def charges(gateway, credentials) -> charge_service_pb2_grpc.ChargeServiceStub:
    channel = grpc.secure_channel(gateway.grpc_target, credentials, options=TLS_OPTIONS)
    return charge_service_pb2_grpc.ChargeServiceStub(channel)


def list_charges(order_id: str):
    return charge_service_pb2.ListOrderChargesRequest(order_id=order_id)


def capture(order: dict, request_id: str):
    item = order["items"][0]
    return charge_service_pb2.CaptureItemsRequest(
        order_id=order["id"],
        items=[charge_service_pb2.ChargeItem(item_id=item["id"], quantity=1)],
        request_id=request_id,
    )


def error_info(failure: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(failure)
    assert status is not None, f"no details on {failure.code()}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo")


def test_plaintext_is_not_served_where_the_gateway_speaks_tls(secured):
    with grpc.insecure_channel(secured.grpc_target) as channel:
        stub = charge_service_pb2_grpc.ChargeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.ListOrderCharges(list_charges("1"), timeout=5)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_another_ca_is_refused_in_the_handshake(secured, pki):
    with pytest.raises(grpc.RpcError) as failure:
        charges(secured, pki.credentials("stranger")).ListOrderCharges(list_charges("1"), timeout=5)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_fulfillers_certificate_may_capture_and_dr_records_its_spiffe_id(secured, pki):
    order = secured.sandbox.create_order([{"quantity": 2, "amount": "10.00"}])

    reply = charges(secured, pki.credentials("fulfiller")).CaptureItems(
        capture(order, f"py-ship-{order['id']}"), timeout=10
    )

    held = secured.sandbox.call("GET", f"/fulfillments?orderId={order['id']}")["data"]
    assert [f["id"] for f in held] == [reply.fulfillment.id], "one fulfillment at DR"
    assert held[0]["metadata"]["caller"] == FULFILLER


def test_a_reader_may_read_but_capturing_is_permission_denied_with_the_method(secured, pki):
    order = secured.sandbox.create_order([{"quantity": 1, "amount": "10.00"}])
    reader = charges(secured, pki.credentials("reader"))

    assert reader.ListOrderCharges(list_charges(order["id"]), timeout=10).order_id == order["id"]
    with pytest.raises(grpc.RpcError) as failure:
        reader.CaptureItems(capture(order, f"py-read-{order['id']}"), timeout=10)

    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(failure.value)
    assert info.reason == "METHOD_NOT_ALLOWED"
    assert info.metadata["method"] == "/digitalriver.gateway.v1.ChargeService/CaptureItems"
    assert "shipping" not in failure.value.details(), "nothing about other rules"
    assert secured.sandbox.call("GET", f"/fulfillments?orderId={order['id']}")["data"] == []


def test_a_bearer_token_names_its_caller_and_a_wrong_or_missing_one_is_unauthenticated(secured, pki):
    order = secured.sandbox.create_order([{"quantity": 1, "amount": "10.00"}])

    def with_token(token: str):
        return grpc.composite_channel_credentials(pki.credentials(), grpc.access_token_call_credentials(token))

    reply = charges(secured, with_token(pki.token)).ListOrderCharges(list_charges(order["id"]), timeout=10)
    assert reply.order_id == order["id"]
    for credentials, reason in [
        (with_token(secrets.token_hex(32)), "INVALID_TOKEN"),
        (pki.credentials(), "CREDENTIALS_REQUIRED"),
    ]:
        with pytest.raises(grpc.RpcError) as failure:
            charges(secured, credentials).ListOrderCharges(list_charges(order["id"]), timeout=10)
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(failure.value).reason == reason
        assert pki.token not in failure.value.details()
    assert pki.token not in secured.log()

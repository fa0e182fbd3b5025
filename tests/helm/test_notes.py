"""NOTES.txt: the port-forward and grpcurl commands it prints must match
the rendered Service and the proto API, and the webhook URL the ingress."""

import re

from conftest import ALL_FEATURES, NAMESPACE, REPO, render, render_notes

PROTO = REPO / "proto" / "digitalriver" / "gateway" / "v1"


def test_port_forward_targets_the_grpc_service_and_port(tmp_path):
    notes = render_notes("service.grpc.port=9000", tmp_path=tmp_path)
    service = render("service.grpc.port=9000").one("Service", "dr-gateway")
    match = re.search(r"kubectl --namespace (\S+) port-forward service/(\S+) (\d+):(\d+)", notes)
    assert match, notes
    namespace, name, local, remote = match.groups()
    assert (namespace, name) == (NAMESPACE, service["metadata"]["name"])
    assert int(remote) == service["spec"]["ports"][0]["port"] == 9000
    grpcurl = re.findall(r"grpcurl -plaintext (?:-d '[^']*' \\\n\s+)?(\S+)", notes)
    assert len(grpcurl) == 3 and set(grpcurl) == {f"localhost:{local}"}, notes


def test_grpcurl_examples_name_real_services_methods_and_fields(tmp_path):
    notes = render_notes(tmp_path=tmp_path)
    protos = "\n".join(p.read_text() for p in PROTO.glob("*.proto"))
    package = re.search(r"^package ([\w.]+);", protos, re.M).group(1)
    names = re.findall(r"\b(digitalriver\.gateway\.v1\.\w+(?:/\w+)?)", notes)
    assert len(names) >= 2, notes
    for full_name in names:
        service, _, method = full_name.removeprefix(package + ".").partition("/")
        assert re.search(rf"^service {service} \{{", protos, re.M), service
        if method:
            assert re.search(rf"rpc {method}\(", protos), method
    assert "GetOrder" in notes
    get_order_request = re.search(r"message GetOrderRequest \{(.*?)\n\}", protos, re.S).group(1)
    fields = re.findall(r'-d \'\{"(\w+)"', notes)
    assert fields, notes
    for field in fields:
        assert re.search(rf"string {field} = \d+;", get_order_request), field


def test_notes_give_the_dashboard_webhook_url_for_the_ingress_host(tmp_path):
    notes = render_notes(values_files=[ALL_FEATURES], tmp_path=tmp_path)
    assert "https://dr-webhooks.example.com/webhooks/digitalriver" in notes
    assert "WARNING: no Digital River API key" not in notes  # existingSecret is set


def test_notes_warn_when_no_api_key_is_configured(tmp_path):
    assert "WARNING: no Digital River API key" in render_notes(tmp_path=tmp_path)

"""Securing the gRPC API in the chart: TLS from a Secret or cert-manager, mutual
TLS, bearer tokens, the authorization policy, probes that keep working with TLS
on, and a NetworkPolicy derived from the policy."""

import base64
import tomllib
from pathlib import PurePosixPath

import pytest
import yaml

from conftest import CHART, lint, render, render_error

SECURED = CHART / "ci" / "secured-values.yaml"


@pytest.fixture(scope="module")
def secured():
    return render(values_files=[SECURED])


def _env(container) -> dict:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_chart_lints_strictly_with_the_api_secured():
    proc = lint(SECURED)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_without_tls_values_nothing_about_tls_or_auth_is_rendered(default_render):
    env = _env(default_render.gateway)
    assert not [name for name in env if "TLS" in name or "AUTH" in name or "HEALTH" in name]
    assert not default_render.of_kind("Certificate")
    assert {p["name"] for p in default_render.gateway["ports"]} == {"grpc", "http"}


def test_with_tls_readiness_asks_the_plaintext_health_only_port(secured):
    # Kubelet's gRPC probe speaks no TLS: it would fail against the API port.
    ports = {p["name"]: p["containerPort"] for p in secured.gateway["ports"]}
    assert secured.gateway["readinessProbe"]["grpc"] == {"port": ports["grpc-health"]}
    assert ports["grpc-health"] != ports["grpc"]
    assert _env(secured.gateway)["DR_GATEWAY_GRPC_HEALTH_ADDR"] == f"0.0.0.0:{ports['grpc-health']}"


@pytest.mark.parametrize("probe", ["livenessProbe", "startupProbe"])
def test_with_tls_liveness_and_startup_still_ask_livez_on_the_plaintext_http_port(secured, probe):
    # TLS covers the gRPC API only; /livez never depends on it (nor on NATS or DR).
    assert secured.gateway[probe]["httpGet"] == {"path": "/livez", "port": "http"}
    assert "grpc" not in secured.gateway[probe]


def test_with_tls_the_helm_test_checks_health_through_the_services_health_port(secured):
    service = secured.one("Service", "dr-gateway")
    health = {p["name"]: p for p in service["spec"]["ports"]}["grpc-health"]
    assert health["targetPort"] == "grpc-health"
    command = secured.one("Pod")["spec"]["containers"][0]["command"]
    assert command[:3] == ["dr-gateway", "health-check", "--addr"]
    assert command[3] == f"dr-gateway:{health['port']}"


def _mounted_file(rendered, path: str):
    """The volume source and item key behind a file path in the gateway container."""
    path = PurePosixPath(path)
    mounts = {m["mountPath"]: m for m in rendered.gateway["volumeMounts"]}
    mount = mounts[str(path.parent)]
    assert "subPath" not in mount, "a subPath mount never sees updates, so reloads would not happen"
    volume = {v["name"]: v for v in rendered.pod_spec["volumes"]}[mount["name"]]
    source = volume.get("secret") or volume.get("configMap")
    (item,) = [i for i in source["items"] if i["path"] == path.name]
    return source, item["key"]


def test_every_security_file_the_gateway_reads_is_mounted_from_its_secret_or_configmap(secured):
    env = _env(secured.gateway)
    tls_secret = "dr-gateway-grpc-tls"
    expected = {
        "DR_GATEWAY_TLS_CERT_FILE": (tls_secret, "tls.crt"),
        "DR_GATEWAY_TLS_KEY_FILE": (tls_secret, "tls.key"),
        # No caSecretName: cert-manager's issuing CA (ca.crt of the same Secret).
        "DR_GATEWAY_TLS_CLIENT_CA_FILE": (tls_secret, "ca.crt"),
        "DR_GATEWAY_AUTH_POLICY_FILE": ("dr-gateway-auth-policy", "policy.toml"),
        "DR_GATEWAY_AUTH_TOKENS_FILE": ("dr-gateway-auth-tokens", "tokens.txt"),
    }
    for name, (source_name, key) in expected.items():
        source, item_key = _mounted_file(secured, env[name])
        assert (source.get("secretName") or source.get("name"), item_key) == (source_name, key), name
    assert env["DR_GATEWAY_TLS_CLIENT_AUTH"] == "optional"
    assert env["DR_GATEWAY_AUTH_REQUIRED"] == "true"


def test_the_policy_configmap_holds_the_rules_as_toml(secured):
    values = yaml.safe_load(SECURED.read_text())["auth"]["policy"]
    policy = tomllib.loads(secured.one("ConfigMap", "dr-gateway-auth-policy")["data"]["policy.toml"])
    assert policy["open"] == ["health", "reflection"]
    assert policy["rules"] == values["rules"]


def test_the_token_secret_holds_digests_one_per_line(secured):
    values = yaml.safe_load(SECURED.read_text())["auth"]["tokens"]["entries"]
    data = secured.one("Secret", "dr-gateway-auth-tokens")["data"]["tokens.txt"]
    assert base64.b64decode(data).decode().splitlines() == values


def test_cert_manager_issues_the_certificate_the_gateway_mounts_for_the_services_names(secured):
    cert = secured.one("Certificate")["spec"]
    assert cert["secretName"] == "dr-gateway-grpc-tls"
    assert {
        "dr-gateway",
        "dr-gateway.payments.svc",
        "dr-gateway.payments.svc.cluster.local",
        "dr-gateway.payments.example.internal",
    } <= set(cert["dnsNames"])
    assert cert["issuerRef"]["name"] == "cluster-ca"
    assert "server auth" in cert["usages"]
    assert not [name for name in cert["dnsNames"] if "headless" in name]


def test_with_the_headless_service_the_certificate_also_names_it():
    # Clients balancing over every pod dial the headless name and verify it.
    rendered = render("service.grpc.headless.enabled=true", values_files=[SECURED])
    headless = rendered.one("Service", "dr-gateway-headless")["metadata"]["name"]
    assert {
        headless,
        f"{headless}.payments.svc",
        f"{headless}.payments.svc.cluster.local",
    } <= set(rendered.one("Certificate")["spec"]["dnsNames"])


def test_an_existing_tls_secret_and_a_separate_client_ca_are_used_as_named():
    rendered = render(
        "tls.enabled=true",
        "tls.secretName=my-grpc-cert",
        "tls.clientAuth.mode=required",
        "tls.clientAuth.caSecretName=client-roots",
        "tls.clientAuth.caKey=bundle.pem",
    )
    assert not rendered.of_kind("Certificate")
    env = _env(rendered.gateway)
    source, key = _mounted_file(rendered, env["DR_GATEWAY_TLS_CERT_FILE"])
    assert (source["secretName"], key) == ("my-grpc-cert", "tls.crt")
    source, key = _mounted_file(rendered, env["DR_GATEWAY_TLS_CLIENT_CA_FILE"])
    assert (source["secretName"], key) == ("client-roots", "bundle.pem")
    assert env["DR_GATEWAY_TLS_CLIENT_AUTH"] == "required"


def _grpc_peers(rendered) -> list:
    policy = rendered.one("NetworkPolicy")["spec"]
    (rule,) = [r for r in policy["ingress"] if {"port": "grpc", "protocol": "TCP"} in r["ports"]]
    return rule["from"]


def _namespaces(peers) -> set:
    return {
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for p in peers
        if "kubernetes.io/metadata.name" in p.get("namespaceSelector", {}).get("matchLabels", {})
    }


def test_the_network_policy_admits_the_namespaces_the_policy_names_and_the_labels_for_tokens(secured):
    peers = _grpc_peers(secured)
    assert _namespaces(peers) == {"shipping", "finance"}
    # token:support-console names no namespace: the label-based peers stay.
    assert {"podSelector": {"matchLabels": {"dr-gateway/client": "true"}}} in peers


def test_when_every_identity_names_a_namespace_only_those_namespaces_are_admitted(values_file):
    rendered = render(
        values_files=[
            values_file(
                {
                    "networkPolicy": {"enabled": True},
                    "tls": {"enabled": True, "secretName": "cert", "clientAuth": {"mode": "required"}},
                    "auth": {
                        "policy": {
                            "rules": [
                                {
                                    "name": "shipping",
                                    "identities": ["spiffe://cluster.local/ns/shipping/sa/fulfiller"],
                                    "allow": ["capture"],
                                }
                            ]
                        }
                    },
                }
            )
        ]
    )
    peers = _grpc_peers(rendered)
    assert _namespaces(peers) == {"shipping"}
    non_test = [p for p in peers if p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") != "test"]
    assert len(non_test) == 1, f"only the policy's namespace (and the helm test pod): {peers}"
    assert {"port": "grpc-health", "protocol": "TCP"} in rendered.one("NetworkPolicy")["spec"]["ingress"][0]["ports"]


REJECTED = {
    "TLS without a certificate": ({"tls": {"enabled": True}}, r"tls\.secretName"),
    "cert-manager without an issuer": (
        {"tls": {"enabled": True, "certManager": {"enabled": True}}},
        r"issuerRef\.name",
    ),
    "client certificates without TLS": ({"tls": {"clientAuth": {"mode": "required"}}}, r"needs tls\.enabled"),
    "credentials required but none possible": ({"auth": {"required": True}}, r"a way to authenticate"),
    "a token instead of its digest": (
        {"auth": {"tokens": {"entries": ["support tok_plaintext_secret"]}}},
        r"entries.*pattern|does not match",
    ),
    "unknown client auth mode": ({"tls": {"clientAuth": {"mode": "sometimes"}}}, r"clientAuth\.mode"),
    "a rule without identities": (
        {"auth": {"policy": {"rules": [{"name": "a", "allow": ["read"]}]}}},
        r"identities.*required|required.*identities|missing properties",
    ),
}


@pytest.mark.parametrize("case", REJECTED.keys())
def test_insecure_or_incomplete_security_values_are_refused(case, values_file):
    import re

    values, message = REJECTED[case]
    error = render_error(values_file(values))
    assert re.search(message, error), error

"""Secure defaults: non-root, read-only, no privilege escalation, no
capabilities, RuntimeDefault seccomp, no service-account token."""

import pytest


def _containers(pod_spec):
    return pod_spec["containers"] + pod_spec.get("initContainers", [])


def test_every_pod_and_container_runs_locked_down(any_render):
    specs = any_render.pod_specs()
    assert len(specs) == 2, "expected the gateway pod and the helm test pod"
    for spec in specs:
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True
        assert pod_sc["runAsUser"] == 65532 and pod_sc["runAsGroup"] == 65532
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in _containers(spec):
            sc = container["securityContext"]
            name = container["name"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["runAsUser"] != 0, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc.get("privileged", False) is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert not sc["capabilities"].get("add"), name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name


def test_no_service_account_token_is_mounted(any_render):
    assert any_render.one("ServiceAccount")["automountServiceAccountToken"] is False
    for spec in any_render.pod_specs():
        assert spec["automountServiceAccountToken"] is False


def test_service_links_are_off_so_they_cannot_shadow_gateway_env(any_render):
    # A Service named dr-gateway would otherwise inject DR_GATEWAY_PORT etc.
    for spec in any_render.pod_specs():
        assert spec["enableServiceLinks"] is False


def test_gateway_has_resource_requests_and_a_memory_limit(any_render):
    resources = any_render.gateway["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def test_gateway_pods_spread_across_zones_and_nodes(default_render):
    pod_labels = default_render.deployment["spec"]["template"]["metadata"]["labels"]
    constraints = default_render.pod_spec["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    for c in constraints:
        selector = c["labelSelector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), "spread selector must match the gateway pods"
        assert c["matchLabelKeys"] == ["pod-template-hash"]


@pytest.mark.parametrize("kind", ["Deployment", "Service", "ConfigMap", "ServiceAccount"])
def test_objects_carry_the_recommended_labels(default_render, kind):
    for doc in default_render.of_kind(kind):
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "dr-gateway"
        assert labels["app.kubernetes.io/instance"] == "dr-gateway"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "dr-gateway-0.1.0"

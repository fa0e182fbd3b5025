"""What is reachable from where: internal gRPC Service, webhook Service,
an Ingress for the webhook path only, NetworkPolicy, ServiceMonitor."""

from conftest import render

WEBHOOK_PATH = "/webhooks/digitalriver"


def _selects_gateway(service, rendered) -> bool:
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    return service["spec"]["selector"].items() <= pod_labels.items()


def test_grpc_service_is_internal_clusterip_with_grpc_app_protocol(any_render):
    service = any_render.one("Service", "dr-gateway")
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert port["appProtocol"] == "grpc"
    assert port["targetPort"] == "grpc" and port["port"] == 50051
    assert _selects_gateway(service, any_render)


def test_webhook_has_its_own_service_on_the_http_port(any_render):
    service = any_render.one("Service", "dr-gateway-webhook")
    assert service["spec"]["type"] == "ClusterIP"
    # metrics.port (all features) adds /metrics alone on a port of its own.
    metrics = ["metrics"] if "DR_GATEWAY_METRICS_ADDR" in any_render.config else []
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http", *metrics]
    assert _selects_gateway(service, any_render)


def test_no_headless_service_by_default(default_render):
    assert sorted(s["metadata"]["name"] for s in default_render.of_kind("Service")) == [
        "dr-gateway",
        "dr-gateway-webhook",
    ]


def test_the_headless_service_resolves_to_every_gateway_pod_for_client_side_balancing(all_features_render):
    headless = all_features_render.one("Service", "dr-gateway-headless")
    assert headless["spec"]["clusterIP"] == "None"
    (port,) = headless["spec"]["ports"]
    assert (port["port"], port["targetPort"], port["appProtocol"]) == (50051, "grpc", "grpc")
    assert _selects_gateway(headless, all_features_render)
    # Only ready pods (the default): a draining pod leaves the DNS answer.
    assert not headless["spec"].get("publishNotReadyAddresses", False)


def test_no_ingress_by_default(default_render):
    assert default_render.of_kind("Ingress") == []


def test_ingress_exposes_only_the_webhook_path_with_tls(all_features_render):
    ingress = all_features_render.one("Ingress")
    spec = ingress["spec"]
    (rule,) = spec["rules"]
    assert rule["host"] == "dr-webhooks.example.com"
    (path,) = rule["http"]["paths"]
    assert path["path"] == WEBHOOK_PATH and path["pathType"] == "Exact"
    assert "defaultBackend" not in spec
    backend = path["backend"]["service"]
    assert backend["name"] == "dr-gateway-webhook"
    webhook_ports = {p["name"] for p in all_features_render.one("Service", backend["name"])["spec"]["ports"]}
    assert backend["port"]["name"] in webhook_ports
    assert spec["tls"] == [{"hosts": ["dr-webhooks.example.com"], "secretName": "dr-webhooks-tls"}]
    assert spec["ingressClassName"] == "nginx"


def test_ingress_tls_secret_defaults_to_fullname_tls():
    ingress = render("ingress.enabled=true", "ingress.host=hooks.example.org").one("Ingress")
    assert ingress["spec"]["tls"] == [{"hosts": ["hooks.example.org"], "secretName": "dr-gateway-tls"}]


def test_network_policy_limits_each_port_to_its_callers(all_features_render):
    policy = all_features_render.one("NetworkPolicy")["spec"]
    pod_labels = all_features_render.deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    rules = {tuple(p["port"] for p in r["ports"]): r["from"] for r in policy["ingress"][:2]}
    grpc_from, webhook_from = rules[("grpc",)], rules[("http",)]
    assert {"podSelector": {"matchLabels": {"dr-gateway/client": "true"}}} in grpc_from
    assert {"namespaceSelector": {"matchLabels": {"dr-gateway/client": "true"}}} in grpc_from
    test_pod_labels = all_features_render.one("Pod")["metadata"]["labels"]
    assert any(
        "podSelector" in peer and peer["podSelector"]["matchLabels"].items() <= test_pod_labels.items()
        for peer in grpc_from
    ), "helm test pod must reach gRPC"
    assert webhook_from == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    for rule in policy["ingress"]:
        assert rule.get("from"), "a rule without peers would allow every source"
        assert rule.get("ports"), "a rule without ports would open every port"


def test_optional_objects_are_off_by_default(default_render):
    for kind in ["Ingress", "NetworkPolicy", "ServiceMonitor", "HorizontalPodAutoscaler"]:
        assert default_render.of_kind(kind) == [], kind


def test_service_monitor_scrapes_the_webhook_service(all_features_render):
    monitor = all_features_render.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    webhook = all_features_render.one("Service", "dr-gateway-webhook")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= webhook["metadata"]["labels"].items()
    grpc = all_features_render.one("Service", "dr-gateway")
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= grpc["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["payments"]}

"""Metrics, the ServiceMonitor, the Grafana dashboard and the alerts.

The rendered PrometheusRule passes `promtool check rules`, and `promtool test rules`
feeds each alert the series that must fire it (and ones that must not). promtool
comes with Debian's `prometheus` package, which scripts/check-helm.sh installs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import NAMESPACE, render, render_error

WEBHOOK_JOB = "dr-gateway-webhook"
SEL = f'namespace="{NAMESPACE}",job="{WEBHOOK_JOB}"'


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: apt-get install prometheus (scripts/check-helm.sh installs it)")
    return path


# === where /metrics is served and scraped ===


def test_metrics_are_on_and_scraped_on_the_webhook_port_by_default():
    rendered = render("serviceMonitor.enabled=true")
    assert rendered.config["DR_GATEWAY_METRICS"] == "true"
    assert "DR_GATEWAY_METRICS_ADDR" not in rendered.config
    assert [p["name"] for p in rendered.gateway["ports"]] == ["grpc", "http"]
    monitor = rendered.one("ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_a_metrics_port_gets_its_own_listener_service_port_and_scrape(all_features_render):
    assert all_features_render.config["DR_GATEWAY_METRICS_ADDR"] == "0.0.0.0:9464"
    ports = {p["name"]: p["containerPort"] for p in all_features_render.gateway["ports"]}
    assert ports["metrics"] == 9464
    webhook = all_features_render.one("Service", "dr-gateway-webhook")
    assert {"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP", "appProtocol": "http"} in webhook[
        "spec"
    ]["ports"]
    assert all_features_render.one("ServiceMonitor")["spec"]["endpoints"][0]["port"] == "metrics"
    # The Ingress still routes the webhook path of the http port alone.
    ingress = all_features_render.one("Ingress")
    backends = [p["backend"]["service"]["port"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends == [{"name": "http"}]


def test_the_network_policy_lets_the_named_peers_scrape_the_metrics_port(all_features_render):
    rules = all_features_render.one("NetworkPolicy")["spec"]["ingress"]
    scrape = [r for r in rules if r["ports"] == [{"port": "metrics", "protocol": "TCP"}]]
    assert scrape == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "ports": [{"port": "metrics", "protocol": "TCP"}],
        }
    ]


def test_metrics_can_be_turned_off():
    rendered = render("metrics.enabled=false", "metrics.port=9464")
    assert rendered.config["DR_GATEWAY_METRICS"] == "false"
    assert "DR_GATEWAY_METRICS_ADDR" not in rendered.config
    assert "metrics" not in [p["name"] for p in rendered.gateway["ports"]]


def test_the_hpa_takes_extra_metrics_such_as_rpcs_per_pod(values_file):
    rpc_rate = {
        "type": "Pods",
        "pods": {
            "metric": {"name": "grpc_server_started_per_second"},
            "target": {"type": "AverageValue", "averageValue": "200"},
        },
    }
    values = {
        "autoscaling": {"enabled": True, "maxReplicas": 4, "extraMetrics": [rpc_rate]},
        "bus": {"url": "nats://nats:4222"},
    }
    rendered = render(values_files=[values_file(values)])
    metrics = rendered.one("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metrics[-1] == rpc_rate
    assert metrics[0]["resource"]["name"] == "cpu"


@pytest.mark.parametrize(
    "values,message",
    [
        ({"metrics": {"port": 8080}}, r"metrics\.port"),
        ({"metrics": {"port": 50051}}, r"metrics\.port"),
        ({"prometheusRule": {"drErrorRatio": 5}}, r"drErrorRatio"),
        ({"prometheusRule": {"noWebhookSeconds": "6h"}}, r"noWebhookSeconds"),
        ({"grafanaDashboard": {"folder": "x"}}, r"folder.*not allowed"),
    ],
    ids=["metrics on the webhook port", "metrics on the gRPC port", "ratio above 1", "duration as text", "unknown key"],
)
def test_bad_observability_values_are_rejected(values_file, values, message):
    error = render_error(values_file(values))
    assert re.search(message, error), error


# === the Grafana dashboard ===


def dashboard(rendered) -> tuple[dict, dict]:
    config_map = rendered.one("ConfigMap", "dr-gateway-dashboard")
    return config_map, json.loads(config_map["data"]["dr-gateway.json"])


def test_the_dashboard_is_a_configmap_the_grafana_sidecar_picks_up(all_features_render):
    config_map, board = dashboard(all_features_render)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Payments"}
    assert board["uid"] == "dr-gateway" and board["title"] == "dr-gateway"
    assert [c["metadata"]["name"] for c in render().of_kind("ConfigMap")] == ["dr-gateway"], "off by default"
    relabelled = render("grafanaDashboard.enabled=true", "grafanaDashboard.label=dashboards", "grafanaDashboard.labelValue=yes")
    assert relabelled.one("ConfigMap", "dr-gateway-dashboard")["metadata"]["labels"]["dashboards"] == "yes"


def test_the_dashboard_shows_rpcs_dr_calls_webhooks_and_subscribers_for_the_chosen_release(all_features_render):
    _, board = dashboard(all_features_render)
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "namespace", "job"}
    panels = [p for p in board["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"] for p in panels)
    for wanted in [
        "RPC rate",
        "RPC errors",
        "RPC latency",
        "DR requests",
        "DR latency",
        "Webhooks",
        "Webhook ack latency",
        "Subscribers",
        "Subscriber lag",
        "Fulfillment outcomes",
        "NATS",
    ]:
        assert wanted in titles, wanted
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert 'namespace="$namespace",job=~"$job"' in expr, (panel["title"], expr)
    # Panels do not overlap on Grafana's 24-column grid.
    cells = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps at {(x, y)}"
                cells.add((x, y))


# === the alerts ===


def rule_groups(rendered) -> dict:
    rule = rendered.one("PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def test_the_prometheus_rule_is_off_by_default_and_labelled_for_prometheus(all_features_render):
    assert render().of_kind("PrometheusRule") == []
    rule = all_features_render.one("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    names = [r["alert"] for r in rule["spec"]["groups"][0]["rules"]]
    assert names == [
        "DrGatewayWebhookRejectionsRising",
        "DrGatewayNoWebhooks",
        "DrGatewayDigitalRiverErrors",
        "DrGatewayDigitalRiverRateLimited",
        "DrGatewayPacingRefusals",
        "DrGatewaySubscriberLagging",
        "DrGatewayNatsDown",
        "DrGatewayRpcServerErrors",
        "DrGatewayFulfillmentOutcomesPending",
    ]


def test_promtool_checks_the_rendered_rules(all_features_render, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups(all_features_render), sort_keys=False))
    proc = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 9 rules found" in proc.stdout


def test_thresholds_and_the_selector_come_from_values():
    rendered = render(
        "prometheusRule.enabled=true",
        'prometheusRule.selector=service="gw"',
        "prometheusRule.subscriberLagEvents=50",
        "prometheusRule.noWebhookSeconds=3600",
    )
    rules = {r["alert"]: r for r in rule_groups(rendered)["groups"][0]["rules"]}
    assert rules["DrGatewaySubscriberLagging"]["expr"].strip() == 'max(dr_gateway_subscriber_lag_events{service="gw"}) > 50'
    assert "> 3600" in rules["DrGatewayNoWebhooks"]["expr"]
    assert all('service="gw"' in r["expr"] for r in rules.values())


def _annotations(rule: dict, **values) -> dict:
    """The annotations Prometheus renders for `rule` with these template values."""
    out = {}
    for key, text in rule["annotations"].items():
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        out[key] = text
    return out


def test_each_alert_fires_on_the_series_that_should_fire_it_and_only_on_those(all_features_render, tmp_path):
    groups = rule_groups(all_features_render)
    rules = {r["alert"]: r for r in groups["groups"][0]["rules"]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups, sort_keys=False))

    def series(name: str, values: str, **labels: str) -> dict:
        extra = "".join(f',{k}="{v}"' for k, v in labels.items())
        return {"series": f"{name}{{{SEL}{extra}}}", "values": values}

    def fires(alert: str, eval_time: str, labels: dict | None = None, **template: str) -> dict:
        return {
            "eval_time": eval_time,
            "alertname": alert,
            "exp_alerts": [
                {
                    "exp_labels": {"severity": rules[alert]["labels"]["severity"], **(labels or {})},
                    "exp_annotations": _annotations(rules[alert], **template),
                }
            ],
        }

    def silent(alert: str, eval_time: str) -> dict:
        return {"eval_time": eval_time, "alertname": alert, "exp_alerts": []}

    pct = "{{ $value | humanizePercentage }}"
    tests = [
        # Half of the webhooks refused for their signature, for 30 minutes.
        {
            "interval": "1m",
            "input_series": [
                series("dr_gateway_webhooks_received_total", "0+10x40", pod="a"),
                series("dr_gateway_webhooks_rejected_total", "0+5x40", pod="a", reason="invalid_signature"),
            ],
            "alert_rule_test": [
                silent("DrGatewayWebhookRejectionsRising", "5m"),
                fires("DrGatewayWebhookRejectionsRising", "30m", **{pct: "50%"}),
            ],
        },
        # Bodies that are not events are not a secret problem.
        {
            "interval": "1m",
            "input_series": [
                series("dr_gateway_webhooks_received_total", "0+10x40", pod="a"),
                series("dr_gateway_webhooks_rejected_total", "0+5x40", pod="a", reason="not_an_event"),
            ],
            "alert_rule_test": [silent("DrGatewayWebhookRejectionsRising", "30m")],
        },
        # The last webhook 7 h ago; a pod up for 7 h that never got one; a recent one.
        {
            "interval": "1m",
            "input_series": [series("dr_gateway_webhook_last_acknowledged_timestamp_seconds", "0x500", pod="a")],
            "alert_rule_test": [
                silent("DrGatewayNoWebhooks", "5h"),
                fires("DrGatewayNoWebhooks", "7h"),
            ],
        },
        {
            "interval": "1m",
            "input_series": [series("dr_gateway_start_time_seconds", "0x500", pod="a")],
            "alert_rule_test": [
                silent("DrGatewayNoWebhooks", "5h"),
                fires("DrGatewayNoWebhooks", "7h", {"namespace": NAMESPACE, "job": WEBHOOK_JOB}),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                series("dr_gateway_start_time_seconds", "0x500", pod="a"),
                series("dr_gateway_webhook_last_acknowledged_timestamp_seconds", "24000x500", pod="a"),
            ],
            "alert_rule_test": [silent("DrGatewayNoWebhooks", "7h")],
        },
        # DR answers 503 to half the requests; DR rate-limits one in ten.
        {
            "interval": "1m",
            "input_series": [
                series("dr_gateway_dr_requests_total", "0+10x40", method="GET", route="/charges/{id}", status="200"),
                series("dr_gateway_dr_requests_total", "0+10x40", method="GET", route="/charges/{id}", status="503"),
            ],
            "alert_rule_test": [
                fires("DrGatewayDigitalRiverErrors", "30m", **{pct: "50%"}),
                silent("DrGatewayDigitalRiverRateLimited", "30m"),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                series("dr_gateway_dr_requests_total", "0+9x40", method="POST", route="/fulfillments", status="201"),
                series("dr_gateway_dr_requests_total", "0+1x40", method="POST", route="/fulfillments", status="429"),
                series("dr_gateway_dr_rate_limit_refusals_total", "0+1x40", pod="a"),
            ],
            "alert_rule_test": [
                fires("DrGatewayDigitalRiverRateLimited", "30m", **{pct: "10%"}),
                fires("DrGatewayPacingRefusals", "30m"),
                silent("DrGatewayDigitalRiverErrors", "30m"),
            ],
        },
        # A subscriber 5000 events behind; NATS lost by one pod.
        {
            "interval": "1m",
            "input_series": [
                series("dr_gateway_subscriber_lag_events", "5000x20", pod="a"),
                series("dr_gateway_nats_connected", "1 1 0x20", pod="a"),
                series("dr_gateway_nats_connected", "1x22", pod="b"),
            ],
            "alert_rule_test": [
                fires("DrGatewaySubscriberLagging", "10m", **{"{{ $value }}": "5000"}),
                fires(
                    "DrGatewayNatsDown",
                    "10m",
                    {"namespace": NAMESPACE, "job": WEBHOOK_JOB, "pod": "a"},
                    **{"{{ $labels.pod }}": "a"},
                ),
            ],
        },
        # One RPC in five fails INTERNAL (NOT_FOUND is the caller's); a POST whose
        # outcome stays unknown.
        {
            "interval": "1m",
            "input_series": [
                series("grpc_server_handled_total", "0+6x40", grpc_method="GetOrder", grpc_code="OK"),
                series("grpc_server_handled_total", "0+2x40", grpc_method="GetOrder", grpc_code="Internal"),
                series("grpc_server_handled_total", "0+2x40", grpc_method="GetCharge", grpc_code="NotFound"),
                series("dr_gateway_fulfillment_outcomes_total", "0 0 0 1x20", outcome="outcome_pending"),
            ],
            "alert_rule_test": [
                fires("DrGatewayRpcServerErrors", "30m", **{pct: "20%"}),
                fires("DrGatewayFulfillmentOutcomesPending", "10m"),
                silent("DrGatewayFulfillmentOutcomesPending", "30m"),
            ],
        },
    ]
    spec = tmp_path / "tests.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}))
    proc = subprocess.run([promtool(), "test", "rules", str(spec)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr

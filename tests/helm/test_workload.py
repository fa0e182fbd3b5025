"""The gateway Deployment: image, ports, config, probes, graceful shutdown,
secrets as files, rolling on change, the helm test pod."""

import base64
import re
import tomllib

import pytest
import yaml

from conftest import CHART, REPO, render

SECRETS_DIR = "/etc/dr-gateway/secrets"


def _env(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def _seconds(humantime: str) -> int:
    match = re.fullmatch(r"(\d+)s", humantime)
    assert match, f"expected whole seconds like '20s', got {humantime!r}"
    return int(match.group(1))


# === image and version ===


def test_app_version_matches_the_crate_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    assert chart["appVersion"] == cargo["workspace"]["package"]["version"]


def test_image_tag_defaults_to_app_version(default_render):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert default_render.gateway["image"] == f"ghcr.io/dr-gateway/dr-gateway:{chart['appVersion']}"


def test_image_digest_pins_the_image():
    digest = "sha256:" + "a" * 64
    assert render(f"image.digest={digest}").gateway["image"] == f"ghcr.io/dr-gateway/dr-gateway@{digest}"


def test_gateway_runs_the_serve_subcommand(default_render):
    assert default_render.gateway["args"] == ["serve"]
    assert "command" not in default_render.gateway, "the image's entrypoint is dr-gateway"


# === ports and config ===


def test_container_exposes_grpc_and_webhook_ports(default_render):
    ports = {p["name"]: p["containerPort"] for p in default_render.gateway["ports"]}
    assert ports == {"grpc": 50051, "http": 8080}


def test_config_comes_from_the_configmap_and_matches_the_ports(default_render):
    cm = default_render.one("ConfigMap")
    assert default_render.gateway["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
    config = cm["data"]
    assert config["DR_GATEWAY_GRPC_ADDR"] == "0.0.0.0:50051"
    assert config["DR_GATEWAY_HTTP_ADDR"] == "0.0.0.0:8080"
    assert config["DR_GATEWAY_DR_BASE_URL"] == "https://api.digitalriver.com"
    assert config["DR_GATEWAY_LOG_FORMAT"] == "json"
    assert config["DR_GATEWAY_UPSTREAM_TIMEOUT"] == "10s"
    assert config["DR_GATEWAY_UPSTREAM_RATE_LIMIT"] == "auto"
    assert config["DR_GATEWAY_UPSTREAM_RATE_LIMIT_REPLICAS"] == "1"
    assert config["RUST_LOG"] == "info"
    assert "DR_GATEWAY_WEBHOOKS_DISABLED" not in config
    # Unset means "in-memory bus" / "DR account default version" to the gateway.
    assert "DR_GATEWAY_BUS_URL" not in config
    assert "DR_GATEWAY_DR_API_VERSION" not in config


def test_an_in_memory_pod_holds_unknown_request_ids_until_the_old_pod_cannot_post_any_more(default_render):
    config = default_render.config
    assert config["DR_GATEWAY_FULFILLMENT_COMMIT_BOUND"] == "60s"
    # commit bound 60 + preStop 5 + shutdown grace 20 + 10 s slack
    assert config["DR_GATEWAY_FULFILLMENT_STARTUP_HOLD"] == "95s"
    shorter = render("config.fulfillmentCommitBoundSeconds=30", "config.shutdownGraceSeconds=10")
    assert shorter.config["DR_GATEWAY_FULFILLMENT_STARTUP_HOLD"] == "55s"


def test_with_the_shared_bus_there_is_no_startup_hold():
    rendered = render("replicaCount=3", "bus.url=nats://nats:4222")
    assert "DR_GATEWAY_FULFILLMENT_STARTUP_HOLD" not in rendered.config
    assert rendered.config["DR_GATEWAY_FULFILLMENT_COMMIT_BOUND"] == "60s"


def test_the_rate_limit_budget_is_the_keys_and_the_fallback_share_counts_every_pod():
    # The budget is the key's, for all pods together; the pods split it through
    # NATS, and until they can, assume the most pods that run.
    rendered = render("replicaCount=5", "bus.url=nats://nats:4222", "config.upstreamRateLimit=50")
    assert rendered.config["DR_GATEWAY_UPSTREAM_RATE_LIMIT"] == "50"
    assert rendered.config["DR_GATEWAY_UPSTREAM_RATE_LIMIT_REPLICAS"] == "5"


def test_with_autoscaling_the_fallback_share_assumes_the_most_replicas(all_features_render):
    assert all_features_render.config["DR_GATEWAY_UPSTREAM_RATE_LIMIT_REPLICAS"] == "10"


def test_the_fallback_replica_count_can_be_set():
    rendered = render("replicaCount=2", "bus.url=nats://n:4222", "config.upstreamRateLimitReplicas=4")
    assert rendered.config["DR_GATEWAY_UPSTREAM_RATE_LIMIT_REPLICAS"] == "4"


def test_grpc_transport_defaults_age_connections_so_scale_out_spreads_load(default_render):
    config = default_render.config
    assert config["DR_GATEWAY_GRPC_MAX_CONNECTION_AGE"] == "5m"
    # The grace covers CaptureItems' `wait` without a deadline (60 s).
    assert _seconds_or_minutes(config["DR_GATEWAY_GRPC_MAX_CONNECTION_AGE_GRACE"]) > 60
    assert config["DR_GATEWAY_GRPC_KEEPALIVE_INTERVAL"] == "30s"
    assert config["DR_GATEWAY_GRPC_KEEPALIVE_TIMEOUT"] == "20s"
    assert config["DR_GATEWAY_GRPC_MAX_RECEIVE_MESSAGE_SIZE"] == "4MiB"
    assert config["DR_GATEWAY_GRPC_MAX_SEND_MESSAGE_SIZE"] == "4MiB"
    assert config["DR_GATEWAY_GRPC_COMPRESS_RESPONSES"] == "true"


def test_grpc_transport_values_reach_the_configmap(all_features_render):
    config = all_features_render.config
    assert config["DR_GATEWAY_GRPC_MAX_CONNECTION_AGE"] == "10m"
    assert config["DR_GATEWAY_GRPC_MAX_CONNECTION_AGE_GRACE"] == "2m"
    assert config["DR_GATEWAY_GRPC_MAX_RECEIVE_MESSAGE_SIZE"] == "8MiB"
    assert config["DR_GATEWAY_GRPC_COMPRESS_RESPONSES"] == "false"


def test_connection_age_can_be_switched_off():
    assert render("grpc.maxConnectionAge=off").config["DR_GATEWAY_GRPC_MAX_CONNECTION_AGE"] == "off"


def _seconds_or_minutes(text: str) -> int:
    match = re.fullmatch(r"(\d+)(s|m)", text)
    assert match, text
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_webhooks_can_be_disabled_and_then_no_secret_file_is_read():
    rendered = render("config.webhooksDisabled=true")
    assert rendered.config["DR_GATEWAY_WEBHOOKS_DISABLED"] == "true"
    assert "DR_GATEWAY_WEBHOOK_SECRETS_FILE" not in _env(rendered.gateway)


def test_config_values_reach_the_configmap(all_features_render):
    config = all_features_render.config
    assert config["DR_GATEWAY_DR_API_VERSION"] == "2024-05-01"
    assert config["DR_GATEWAY_BUS_URL"] == "nats://nats.nats.svc:4222"
    assert config["DR_GATEWAY_SHUTDOWN_GRACE"] == "25s"


# === probes ===


GATEWAY_SOURCE = REPO / "crates" / "dr-gateway" / "src"


def _http_port(rendered) -> int:
    return {p["name"]: p["containerPort"] for p in rendered.gateway["ports"]}["http"]


@pytest.mark.parametrize("probe", ["livenessProbe", "startupProbe"])
def test_liveness_and_startup_ask_livez_never_a_dependency(any_render, probe):
    # A NATS or DR outage must restart nothing: /livez answers while the process
    # and its runtime do, whatever the dependencies say; gRPC health does not
    # serve liveness.
    spec = any_render.gateway[probe]
    assert spec["httpGet"] == {"path": "/livez", "port": "http"}
    assert not {"grpc", "exec", "tcpSocket"} & spec.keys()
    assert _http_port(any_render) == 8080
    assert spec["periodSeconds"] >= 1 and spec["failureThreshold"] >= 1


def test_livez_is_served_by_the_gateway_and_asks_no_dependency():
    # The path the chart probes is a route of the gateway's HTTP listener, and
    # its handler touches neither the event log nor Digital River.
    webhook = (GATEWAY_SOURCE / "webhook" / "mod.rs").read_text()
    assert '.route("/livez", get(livez))' in webhook
    handler = webhook.split("async fn livez()", 1)[1].split("\n}\n", 1)[0]
    assert "tokio::spawn" in handler
    for dependency in ["log", "client", "health", "bus"]:
        assert f"state.{dependency}" not in handler and "State(" not in handler


def test_readiness_is_grpc_health_of_the_whole_server(any_render):
    spec = any_render.gateway["readinessProbe"]
    assert spec["grpc"] == {"port": 50051}, "grpc.health.v1 service '' on 50051"
    assert not {"httpGet", "exec", "tcpSocket"} & spec.keys()
    assert spec["periodSeconds"] >= 1 and spec["failureThreshold"] >= 1


def test_a_nats_outage_takes_no_pod_out_of_its_service():
    # The readiness check is service "", which the gateway keeps SERVING while
    # NATS is down (health.rs: only EventStream needs the bus); the liveness
    # check is not gRPC health at all.
    health = (GATEWAY_SOURCE / "health.rs").read_text()
    serving = health.split("fn serving(&self, name: &str) -> bool {", 1)[1].split("\n    }\n", 1)[0]
    assert "if name == EVENT_STREAM" in serving and "self.bus" in serving
    rendered = render("replicaCount=3", "bus.url=nats://nats:4222")
    assert "service" not in rendered.gateway["readinessProbe"]["grpc"]
    assert "grpc" not in rendered.gateway["livenessProbe"]


def test_startup_probe_allows_a_slow_start_before_liveness_applies(default_render):
    startup = default_render.gateway["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


# === graceful shutdown ===


def _grace_budget(rendered):
    pod = rendered.pod_spec
    sleep = rendered.gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = _seconds(rendered.config["DR_GATEWAY_SHUTDOWN_GRACE"])
    return pod["terminationGracePeriodSeconds"], sleep, drain


def test_termination_grace_outlasts_prestop_sleep_plus_drain(any_render):
    grace, sleep, drain = _grace_budget(any_render)
    assert sleep > 0
    assert grace > sleep + drain


@pytest.mark.parametrize("drain,sleep", [(0, 1), (20, 5), (120, 15)])
def test_termination_grace_is_computed_from_sleep_and_drain(drain, sleep):
    rendered = render(f"config.shutdownGraceSeconds={drain}", f"preStopSleepSeconds={sleep}")
    grace, rendered_sleep, rendered_drain = _grace_budget(rendered)
    assert (rendered_sleep, rendered_drain) == (sleep, drain)
    assert grace > sleep + drain


def test_prestop_is_a_sleep_action_because_the_image_has_no_shell(any_render):
    pre_stop = any_render.gateway["lifecycle"]["preStop"]
    assert list(pre_stop) == ["sleep"]


# === secrets as files ===


def _secret_files(rendered) -> dict:
    """Maps each mounted secret file path to (secretName, key)."""
    volumes = {v["name"]: v for v in rendered.pod_spec["volumes"]}
    files = {}
    for mount in rendered.gateway["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        assert mount["readOnly"] is True
        for item in secret["items"]:
            files[f"{mount['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    return files


@pytest.mark.parametrize(
    "env_name,key",
    [("DR_GATEWAY_DR_API_KEY_FILE", "dr-api-key"), ("DR_GATEWAY_WEBHOOK_SECRETS_FILE", "webhook-secrets")],
)
def test_secrets_are_mounted_files_and_env_points_at_them(default_render, env_name, key):
    secret = default_render.one("Secret")
    path = _env(default_render.gateway)[env_name]["value"]
    assert path == f"{SECRETS_DIR}/{key}"
    assert _secret_files(default_render)[path] == (secret["metadata"]["name"], key)
    assert key in secret["data"]


def test_secret_values_never_appear_in_env(any_render):
    container = any_render.gateway
    for entry in container.get("env", []):
        assert "secretKeyRef" not in entry.get("valueFrom", {}), entry["name"]
    assert all("secretRef" not in src for src in container["envFrom"])


def test_chart_created_secret_holds_the_key_and_one_webhook_secret_per_line():
    rendered = render("secrets.drApiKey=sk_test_123", "secrets.webhookSecrets={whsec_old,whsec_new}")
    data = rendered.one("Secret")["data"]
    assert base64.b64decode(data["dr-api-key"]).decode() == "sk_test_123"
    assert base64.b64decode(data["webhook-secrets"]).decode().splitlines() == ["whsec_old", "whsec_new"]


def test_existing_secret_is_mounted_and_no_secret_is_rendered(all_features_render):
    assert all_features_render.of_kind("Secret") == []
    files = _secret_files(all_features_render)
    # Configured key names, mounted under the fixed file names the env points at.
    assert files[f"{SECRETS_DIR}/dr-api-key"] == ("dr-gateway-credentials", "api-key")
    assert files[f"{SECRETS_DIR}/webhook-secrets"] == ("dr-gateway-credentials", "signing-secrets")


def test_bus_credentials_are_a_mounted_file(all_features_render):
    path = _env(all_features_render.gateway)["DR_GATEWAY_BUS_CREDS_FILE"]["value"]
    assert _secret_files(all_features_render)[path] == ("dr-gateway-nats", "gateway.creds")


def test_no_bus_credentials_env_without_a_credentials_secret(default_render):
    assert "DR_GATEWAY_BUS_CREDS_FILE" not in _env(default_render.gateway)


def test_bus_tls_files_are_mounted_and_env_points_at_them(all_features_render):
    env = _env(all_features_render.gateway)
    files = _secret_files(all_features_render)
    expected = {
        "DR_GATEWAY_BUS_TLS_CA_FILE": ("dr-gateway-nats-tls", "ca.crt"),
        "DR_GATEWAY_BUS_TLS_CERT_FILE": ("dr-gateway-nats-tls", "tls.crt"),
        "DR_GATEWAY_BUS_TLS_KEY_FILE": ("dr-gateway-nats-tls", "tls.key"),
    }
    for name, secret_and_key in expected.items():
        assert files[env[name]["value"]] == secret_and_key, name


def test_bus_tls_ca_only_mounts_no_client_certificate():
    rendered = render(
        "replicaCount=2",
        "bus.url=tls://nats.nats.svc:4222",
        "bus.tls.secretName=nats-ca",
        "bus.tls.caKey=root.pem",
    )
    env = _env(rendered.gateway)
    assert _secret_files(rendered)[env["DR_GATEWAY_BUS_TLS_CA_FILE"]["value"]] == ("nats-ca", "root.pem")
    assert "DR_GATEWAY_BUS_TLS_CERT_FILE" not in env and "DR_GATEWAY_BUS_TLS_KEY_FILE" not in env


def test_no_bus_tls_env_by_default(default_render):
    assert not any(name.startswith("DR_GATEWAY_BUS_TLS") for name in _env(default_render.gateway))


# === rolling on change ===


def _checksums(rendered):
    annotations = rendered.deployment["spec"]["template"]["metadata"]["annotations"]
    return annotations["checksum/config"], annotations["checksum/secret"]


def test_pods_roll_when_config_changes(default_render):
    config, secret = _checksums(default_render)
    changed = _checksums(render("config.logLevel=debug"))
    assert changed[0] != config and changed[1] == secret


def test_pods_roll_when_the_secret_changes(default_render):
    config, secret = _checksums(default_render)
    changed = _checksums(render("secrets.drApiKey=sk_rotated"))
    assert changed[0] == config and changed[1] != secret


# === replicas, HPA, PDB ===


def test_default_is_one_replica_without_pdb_or_hpa(default_render):
    assert default_render.deployment["spec"]["replicas"] == 1
    assert default_render.of_kind("PodDisruptionBudget") == []
    assert default_render.of_kind("HorizontalPodAutoscaler") == []


def test_pdb_appears_by_default_with_several_replicas_and_a_bus():
    rendered = render("replicaCount=2", "bus.url=nats://nats.nats.svc:4222")
    pdb = rendered.one("PodDisruptionBudget")
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert rendered.deployment["spec"]["replicas"] == 2


def test_pdb_can_be_turned_off():
    rendered = render("replicaCount=2", "bus.url=nats://n:4222", "podDisruptionBudget.enabled=false")
    assert rendered.of_kind("PodDisruptionBudget") == []


def test_hpa_owns_replicas_when_enabled(all_features_render):
    hpa = all_features_render.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": all_features_render.deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert "replicas" not in all_features_render.deployment["spec"]
    assert all_features_render.one("PodDisruptionBudget")


# === helm test ===


def test_helm_test_pod_health_checks_the_grpc_service(any_render):
    pod = any_render.one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = any_render.one("Service", "dr-gateway")
    port = service["spec"]["ports"][0]["port"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["dr-gateway", "health-check", "--addr", f"dr-gateway:{port}"]
    assert container["image"] == any_render.gateway["image"]
    assert pod["spec"]["restartPolicy"] == "Never"


def test_helm_test_pod_is_not_behind_the_services(any_render):
    pod_labels = any_render.one("Pod")["metadata"]["labels"]
    for service in any_render.of_kind("Service"):
        assert not service["spec"]["selector"].items() <= pod_labels.items()

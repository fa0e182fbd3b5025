"""values.yaml, values.schema.json and the CI values: documented, linted,
and bad values are refused before anything reaches a cluster."""

import re

import pytest
import yaml

from conftest import ALL_FEATURES, CHART, lint, render_error

VALUES = CHART / "values.yaml"

# === lint ===


def test_chart_lints_strictly_with_default_values():
    proc = lint()
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_chart_lints_strictly_with_all_features():
    proc = lint(ALL_FEATURES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_all_features_values_turn_every_optional_object_on(all_features_render):
    assert all_features_render.kinds() == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Ingress",
            "NetworkPolicy",
            "Pod",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Service",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )


# === rejected values ===

BUS = {"bus": {"url": "nats://nats.nats.svc:4222"}}

REJECTED = {
    "replicas as a word": ({"replicaCount": "two"}, r"replicaCount.*(integer|type)"),
    "unknown top-level key": ({"replicas": 2}, r"replicas.*not allowed"),
    "typo inside secrets": ({"secrets": {"apiKey": "sk"}}, r"apiKey.*not allowed"),
    "typo inside ingress": ({"ingress": {"hosts": ["a.example.com"]}}, r"hosts.*not allowed"),
    "boolean as a string": ({"ingress": {"enabled": "yes"}}, r"ingress\.enabled.*(boolean|type)"),
    "two replicas without a bus": ({"replicaCount": 2}, r"bus\.url"),
    "autoscaling without a bus": ({"autoscaling": {"enabled": True}}, r"bus\.url"),
    "bus url that is not NATS": ({"bus": {"url": "http://nats:4222"}}, r"bus\.url.*pattern"),
    "unknown log format": ({"config": {"logFormat": "xml"}}, r"logFormat"),
    "unknown pdb mode": ({"podDisruptionBudget": {"enabled": "sometimes"}}, r"podDisruptionBudget\.enabled"),
    "connection age in words": ({"grpc": {"maxConnectionAge": "five minutes"}}, r"maxConnectionAge"),
    "message size as a word": ({"grpc": {"maxReceiveMessageSize": "big"}}, r"maxReceiveMessageSize"),
    "zero fallback replicas": ({"config": {"upstreamRateLimitReplicas": 0}}, r"upstreamRateLimitReplicas"),
    "grace shorter than the drain": (
        {"terminationGracePeriodSeconds": 20, "preStopSleepSeconds": 5},
        r"terminationGracePeriodSeconds \(20\) must be greater than .* = 25",
    ),
}


@pytest.mark.parametrize("values,message", REJECTED.values(), ids=REJECTED.keys())
def test_bad_values_are_rejected_by_helm_template(values_file, values, message):
    error = render_error(values_file(values))
    assert re.search(message, error), error


@pytest.mark.parametrize(
    "values", [{"replicaCount": "two"}, {"unknownKey": True}, {"replicaCount": 2}], ids=["type", "unknown", "bus"]
)
def test_bad_values_are_rejected_by_helm_lint(values_file, values):
    proc = lint(values_file(values))
    assert proc.returncode != 0, proc.stdout
    assert "[ERROR]" in proc.stdout


def test_several_replicas_with_a_bus_are_accepted(values_file):
    proc = lint(values_file({"replicaCount": 3, **BUS}))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_explains_why_replicas_need_the_bus():
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    reasons = " ".join(rule["description"] for rule in schema["allOf"])
    assert "replica" in reasons and "bus.url" in reasons and "NATS JetStream" in reasons


# === documentation ===


def _keys(lines: list[str]) -> list[tuple[str, bool, bool, bool]]:
    """(path, documented, covered, is_section) for each key of values.yaml.

    documented: the comment block directly above the key starts with `# --`;
    covered: an ancestor is documented (its comment covers the whole block);
    is_section: the key only groups children (no value on its line).
    """
    keys, stack, comment = [], [], []  # stack of (indent, key, documented or covered)
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+):(.*)$", line)
        if match and not stripped.startswith("-"):
            indent, key, value = len(match.group(1)), match.group(2), match.group(3).strip()
            while stack and stack[-1][0] >= indent:
                stack.pop()
            covered = any(flag for _, _, flag in stack)
            documented = bool(comment) and comment[0].startswith("# --")
            path = ".".join([k for _, k, _ in stack] + [key])
            keys.append((path, documented, covered, value == ""))
            stack.append((indent, key, documented or covered))
        comment = []
    return keys


def _undocumented_keys(lines: list[str]) -> list[str]:
    return [path for path, documented, covered, section in _keys(lines) if not (documented or covered or section)]


def _documented_values(lines: list[str]) -> list[str]:
    return [path for path, documented, covered, _ in _keys(lines) if documented and not covered]


def test_every_value_is_documented():
    lines = VALUES.read_text().splitlines()
    assert _undocumented_keys(lines) == []
    # The checker itself must notice a key without a comment.
    assert _undocumented_keys(["a:", "  # -- doc", "  # more", "  b: 1", "  # plain", "  c: 2"]) == ["a.c"]


def test_every_value_is_in_the_chart_readme_table():
    readme = (CHART / "README.md").read_text()
    leaves = _documented_values(VALUES.read_text().splitlines())
    assert len(leaves) > 40
    missing = [path for path in leaves if f"| `{path}` |" not in readme]
    assert missing == []


def test_values_yaml_parses_to_the_documented_structure():
    values = yaml.safe_load(VALUES.read_text())
    assert values["replicaCount"] == 1 and values["bus"]["url"] == ""
    assert values["secrets"]["keys"] == {"drApiKey": "dr-api-key", "webhookSecrets": "webhook-secrets"}

"""Helpers for the chart tests: render helm/dr-gateway with the project-local
helm binary and return the manifests as parsed YAML.

`scripts/check-helm.sh` installs helm (tools/node_modules) and runs these
tests; set HELM to use another helm 3 binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "dr-gateway"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
HELM = os.environ.get("HELM", str(REPO / "tools" / "node_modules" / ".bin" / "helm"))
# The chart declares kubeVersion >=1.30; helm 3.6's built-in default is 1.20.
KUBE_VERSION = os.environ.get("KUBE_VERSION", "1.31.0")
RELEASE = "dr-gateway"
NAMESPACE = "payments"


class Rendered(list):
    """The documents of one `helm template`, with lookups by kind."""

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        docs = [d for d in self.of_kind(kind) if name is None or d["metadata"]["name"] == name]
        assert len(docs) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in docs]}"
        return docs[0]

    def kinds(self) -> list[str]:
        return sorted(d["kind"] for d in self)

    @property
    def deployment(self) -> dict:
        return self.one("Deployment")

    @property
    def pod_spec(self) -> dict:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def gateway(self) -> dict:
        containers = self.pod_spec["containers"]
        assert [c["name"] for c in containers] == ["gateway"]
        return containers[0]

    @property
    def config(self) -> dict:
        """The gateway's settings (the ConfigMap loaded with envFrom)."""
        (config,) = [d for d in self.of_kind("ConfigMap") if "DR_GATEWAY_GRPC_ADDR" in d.get("data", {})]
        return config["data"]

    def pod_specs(self) -> list[dict]:
        """Every pod spec rendered: the gateway's and the helm test pod's."""
        specs = [d["spec"]["template"]["spec"] for d in self.of_kind("Deployment")]
        specs += [d["spec"] for d in self.of_kind("Pod")]
        return specs


def _helm(args: list[str]) -> subprocess.CompletedProcess:
    if not Path(HELM).exists() and os.sep in HELM:
        pytest.fail(f"helm not found at {HELM}: run scripts/check-helm.sh (it installs it)")
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60)


def _value_args(values_files, sets) -> list[str]:
    args: list[str] = []
    for f in values_files:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    return args


def template_cmd(values_files=(), sets=()) -> list[str]:
    return [
        "template", RELEASE, str(CHART),
        "--namespace", NAMESPACE,
        "--kube-version", KUBE_VERSION,
        *_value_args(values_files, sets),
    ]


def render(*sets: str, values_files=()) -> Rendered:
    """`helm template` with --set overrides; fails the test if helm fails."""
    proc = _helm(template_cmd(values_files, sets))
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return Rendered(d for d in yaml.safe_load_all(proc.stdout) if d)


def render_notes(*sets: str, values_files=(), tmp_path: Path) -> str:
    """NOTES.txt as `helm install` would print it.

    `helm template` does not render NOTES.txt, so a copy of the chart gets a
    template that runs NOTES.txt through `tpl`.
    """
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    shutil.copy(CHART / "templates" / "NOTES.txt", chart / "notes-source.txt")
    (chart / "templates" / "zz-notes-preview.yaml").write_text(
        'notes: |\n{{ tpl (.Files.Get "notes-source.txt") . | indent 2 }}\n'
    )
    proc = _helm(
        template_cmd(values_files, sets)[:2] + [str(chart)] + template_cmd(values_files, sets)[3:]
        + ["--show-only", "templates/zz-notes-preview.yaml"]
    )
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)["notes"]


def render_error(values_file: Path) -> str:
    """`helm template` that must fail; returns its error output."""
    proc = _helm(template_cmd([values_file]))
    assert proc.returncode != 0, f"helm template accepted {values_file.name}:\n{proc.stdout[:2000]}"
    return proc.stderr


def lint(values_file: Path | None = None) -> subprocess.CompletedProcess:
    args = ["lint", "--strict", str(CHART)]
    if values_file is not None:
        args += ["-f", str(values_file)]
    return _helm(args)


@pytest.fixture(scope="session")
def default_render() -> Rendered:
    return render()


@pytest.fixture(scope="session")
def all_features_render() -> Rendered:
    return render(values_files=[ALL_FEATURES])


@pytest.fixture(params=["default", "all-features"])
def any_render(request, default_render, all_features_render) -> Rendered:
    """Each test using this runs against both value sets."""
    return default_render if request.param == "default" else all_features_render


@pytest.fixture
def values_file(tmp_path):
    """Writes a values file from a dict (or raw YAML text) and returns its path."""

    def write(content) -> Path:
        path = tmp_path / "values.yaml"
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        return path

    return write

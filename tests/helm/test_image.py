"""The Dockerfile and the chart must agree: uid, entrypoint, ports."""

import re

from conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
DOCKERIGNORE = (REPO / ".dockerignore").read_text().splitlines()


def test_image_builds_with_the_pinned_rust_and_the_lockfile():
    assert re.search(r"^FROM rust:1\.95-bookworm AS build$", DOCKERFILE, re.M)
    assert "cargo build --release --locked" in DOCKERFILE


def test_image_runs_as_the_uid_the_chart_expects(default_render):
    final_stage = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert final_stage.startswith("gcr.io/distroless/cc-debian12:nonroot")
    user = re.search(r"^USER (\d+):(\d+)$", final_stage, re.M)
    assert user, "USER must be numeric for runAsNonRoot"
    pod = default_render.pod_spec["securityContext"]
    assert (int(user.group(1)), int(user.group(2))) == (pod["runAsUser"], pod["runAsGroup"])


def test_entrypoint_is_the_binary_on_path_and_serve_is_the_default(default_render):
    # The helm test pod runs `dr-gateway health-check` as its command: the
    # binary must be on distroless' PATH.
    assert "COPY --from=build /out/dr-gateway /usr/local/bin/dr-gateway" in DOCKERFILE
    assert 'ENTRYPOINT ["/usr/local/bin/dr-gateway"]' in DOCKERFILE
    assert 'CMD ["serve"]' in DOCKERFILE
    assert default_render.gateway["args"] == ["serve"]


def test_image_exposes_the_ports_the_chart_probes_and_routes(default_render):
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", DOCKERFILE, re.M).group(1).split()}
    assert exposed == {p["containerPort"] for p in default_render.gateway["ports"]}


def test_build_context_leaves_out_heavy_and_local_directories():
    for entry in [".git", "target", "**/node_modules", "tools/node_modules", ".venv-tools"]:
        assert entry in DOCKERIGNORE, entry
    for needed in ["crates", "proto", "Cargo.toml", "Cargo.lock"]:
        assert needed not in DOCKERIGNORE, needed

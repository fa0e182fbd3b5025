"""The Dockerfile and the chart must agree: uid, entrypoint, ports; and the image
is the production build: bases pinned by digest, no sandbox, symbols stripped."""

import re
import tomllib

from conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
DOCKERIGNORE = (REPO / ".dockerignore").read_text().splitlines()
FROM_LINES = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
DIGEST = r"@sha256:[0-9a-f]{64}$"


def test_image_builds_with_the_pinned_rust_and_the_lockfile():
    assert re.search(r"^FROM rust:1\.95-bookworm@sha256:[0-9a-f]{64} AS build$", DOCKERFILE, re.M)
    assert "cargo build --release --locked" in DOCKERFILE


def test_every_base_image_is_pinned_by_digest():
    assert len(FROM_LINES) == 2
    for image in FROM_LINES:
        assert re.search(DIGEST, image), f"{image} is not pinned by digest"
        # The tag stays for people; the digest is what is pulled.
        assert ":" in image.split("@")[0], image
    assert "imagetools inspect" in DOCKERFILE, "the Dockerfile says how to refresh the digests"


def test_the_image_is_the_production_build_without_the_sandbox():
    build = re.search(r"cargo build [^\n]*", DOCKERFILE).group(0)
    assert "--no-default-features" in build and "-p dr-gateway" in build
    # The default features are exactly the sandbox, which the build leaves out.
    manifest = tomllib.loads((REPO / "crates" / "dr-gateway" / "Cargo.toml").read_text())
    assert manifest["features"]["default"] == ["sandbox"]


def test_release_builds_strip_symbols():
    workspace = tomllib.loads((REPO / "Cargo.toml").read_text())
    assert workspace["profile"]["release"]["strip"] is True


def test_helm_test_runs_the_production_images_health_check(default_render):
    pod = default_render.one("Pod")
    (container,) = pod["spec"]["containers"]
    assert container["image"] == default_render.gateway["image"]
    assert container["command"][:2] == ["dr-gateway", "health-check"]
    template = (REPO / "helm" / "dr-gateway" / "templates" / "tests" / "test-grpc-health.yaml").read_text()
    assert "production image" in template and "no" in template and "sandbox" in template


def test_image_runs_as_the_uid_the_chart_expects(default_render):
    final_stage = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert final_stage.startswith("gcr.io/distroless/cc-debian12:nonroot@sha256:")
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

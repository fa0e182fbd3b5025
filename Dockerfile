# syntax=docker/dockerfile:1
#
# dr-gateway container image: the release binary on distroless (glibc,
# CA certificates, no shell, non-root).
#
#   docker build -t ghcr.io/dr-gateway/dr-gateway:0.1.0 .
#
# The production image: built with --no-default-features, so it has the gateway
# and its `health-check` subcommand but not the Digital River sandbox (no
# `dr-gateway sandbox`, and `serve --sandbox` refuses to start); `dr-gateway
# --version` says "production build: no sandbox". The release profile strips
# symbols. The sandbox is for development: `cargo run -- serve --sandbox`.
#
# The Helm chart (helm/dr-gateway) runs it as uid/gid 65532 with a read-only
# root filesystem, `args: ["serve"]`, and `dr-gateway health-check` in its
# helm test pod.
#
# Base images are pinned by digest (the tag is kept for people), so a rebuild
# uses exactly the bytes reviewed. To move to newer ones, resolve the tags and
# replace both digests in one reviewed commit:
#
#   docker buildx imagetools inspect rust:1.95-bookworm --format '{{json .Manifest.Digest}}'
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot --format '{{json .Manifest.Digest}}'
#
# (or `crane digest <image>`). The digests are of the multi-platform image
# index, so the same line builds on amd64 and arm64.

# === build ===
# The project's pinned Rust (Cargo.toml's rust-version is the minimum).
FROM rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS build
WORKDIR /src
# protoc comes from the protoc-bin-vendored build dependency; nothing to apt-get.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features -p dr-gateway --bin dr-gateway \
    && install -D -m 0755 target/release/dr-gateway /out/dr-gateway

# === runtime ===
# cc-debian12 = glibc + libgcc + CA certificates (/etc/ssl/certs), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
LABEL org.opencontainers.image.title="dr-gateway" \
      org.opencontainers.image.description="gRPC gateway for Digital River order fulfillment (production build: no sandbox)" \
      org.opencontainers.image.source="https://github.com/dr-gateway/dr-gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
# On PATH, so `command: ["dr-gateway", ...]` works without a shell.
COPY --from=build /out/dr-gateway /usr/local/bin/dr-gateway
# distroless "nonroot"; numeric so runAsNonRoot can verify it.
USER 65532:65532
# gRPC API, webhook + /livez /readyz /healthz (DR_GATEWAY_GRPC_ADDR / _HTTP_ADDR).
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/dr-gateway"]
CMD ["serve"]

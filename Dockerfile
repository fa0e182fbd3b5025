# syntax=docker/dockerfile:1
#
# dr-gateway container image: the release binary on distroless (glibc,
# CA certificates, no shell, non-root).
#
#   docker build -t ghcr.io/dr-gateway/dr-gateway:0.1.0 .
#
# The Helm chart (helm/dr-gateway) runs it as uid/gid 65532 with a read-only
# root filesystem, `args: ["serve"]`, and `dr-gateway health-check` in its
# helm test pod.

# === build ===
# The project's pinned Rust (Cargo.toml's rust-version is the minimum).
FROM rust:1.95-bookworm AS build
WORKDIR /src
# protoc comes from the protoc-bin-vendored build dependency; nothing to apt-get.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin dr-gateway \
    && install -D -m 0755 target/release/dr-gateway /out/dr-gateway

# === runtime ===
# cc-debian12 = glibc + libgcc + CA certificates (/etc/ssl/certs), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="dr-gateway" \
      org.opencontainers.image.description="gRPC gateway for Digital River order fulfillment" \
      org.opencontainers.image.source="https://github.com/dr-gateway/dr-gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
# On PATH, so `command: ["dr-gateway", ...]` works without a shell.
COPY --from=build /out/dr-gateway /usr/local/bin/dr-gateway
# distroless "nonroot"; numeric so runAsNonRoot can verify it.
USER 65532:65532
# gRPC API, webhook + /healthz /readyz (DR_GATEWAY_GRPC_ADDR / _HTTP_ADDR).
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/dr-gateway"]
CMD ["serve"]

# syntax=docker/dockerfile:1.7
# The operator image: one static (musl) lumigo-operator binary on distroless/static, non-root, with the
# annotated policy module the built-in admission webhook runs (/usr/local/share/lumigo/lumigo-policy.wasm).
# Multi-arch with buildx, from the repository root:
#   docker buildx build -f images/operator.Dockerfile --platform linux/amd64,linux/arm64 \
#     -t ghcr.io/lumigo-rs/lumigo-operator:0.1.0 --push .
# (or `images/build.sh operator`). The builder stage runs on each target platform (natively or through
# QEMU), so the musl C toolchain that `ring` needs is the platform's own: no cross toolchain.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-trixie AS build
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        musl-tools just binaryen \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV CARGO_TARGET_DIR=/src/target LUMIGO_CACHE=/cache
# The policy module, built exactly as `just policy::build` builds it for the tests (wasm: architecture-free).
RUN rustup target add wasm32-wasip1 \
    && just policy::build \
    && mkdir -p /out && cp "$(just policy::path)" /out/lumigo-policy.wasm
# A static binary: no interpreter (PT_INTERP) to load, so it runs on distroless/static or scratch.
RUN target="$(uname -m)-unknown-linux-musl" \
    && export "CC_$(echo "$target" | tr - _)=musl-gcc" \
    && rustup target add "$target" \
    && cargo build --locked --release -p lumigo-operator --bin lumigo-operator --target "$target" \
    && cp "target/$target/release/lumigo-operator" /out/lumigo-operator \
    && strip /out/lumigo-operator \
    && ! readelf -l /out/lumigo-operator | grep -q INTERP

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/lumigo-rs/lumigo-operator" \
      org.opencontainers.image.description="Lumigo operator: zero-code tracing for Kubernetes workloads" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/lumigo-operator /usr/local/bin/lumigo-operator
COPY --from=build /out/lumigo-policy.wasm /usr/local/share/lumigo/lumigo-policy.wasm
# distroless "nonroot" is uid/gid 65532, the chart's runAsUser.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/lumigo-operator"]
CMD ["run"]

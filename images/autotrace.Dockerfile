# syntax=docker/dockerfile:1.7
# The injector ("autotrace") image: exactly the /opt/lumigo tree of its architecture
# (injector/lumigo_injector.so, nodejs/, python/, java/) plus a static busybox whose only job is
# `cp -R /opt/lumigo/. $TARGET_DIRECTORY/`. Instrumented pods either mount its opt/lumigo read-only
# as an image volume (subPath; nothing runs) or run it as their init container, which copies the
# tree into an emptyDir. Non-root, no shell beyond that, fits Pod Security "restricted" with a
# read-only root filesystem.
# Multi-arch with buildx, from the repository root:
#   docker buildx build -f images/autotrace.Dockerfile --platform linux/amd64,linux/arm64 \
#     -t ghcr.io/lumigo-rs/autotrace:0.1.0 --push .
# The payload stage runs on the build platform: the .so is built for both architectures from one
# host (rust-lld, no C toolchain), and payload.sh fetches the tracers for TARGETARCH (javac compiles the
# Java agent's Lumigo extension, which is architecture-free).

ARG RUST_VERSION=1.95
FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-bookworm AS payload
ARG TARGETARCH
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        binutils binutils-aarch64-linux-gnu binutils-x86-64-linux-gnu python3 python3-pip nodejs npm curl \
        default-jdk-headless \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu
WORKDIR /src
COPY injector/ injector/
ENV LUMIGO_CACHE=/cache CARGO_TARGET_DIR=/cache/injector-target
RUN case "$TARGETARCH" in amd64) arch=x86_64 ;; arm64) arch=aarch64 ;; *) echo "unsupported $TARGETARCH" >&2; exit 1 ;; esac \
    && injector/scripts/build.sh \
    && injector/scripts/payload.sh /out/opt/lumigo "$arch" \
    && test -f /out/opt/lumigo/injector/lumigo_injector.so

# A statically linked busybox of the target architecture: the copy step.
FROM busybox:1.37-musl AS copier

FROM scratch
LABEL org.opencontainers.image.source="https://github.com/lumigo-rs/lumigo-operator" \
      org.opencontainers.image.description="Lumigo autotrace: the injector and the Node.js, Python and Java tracers" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=copier /bin/busybox /bin/busybox
COPY --from=payload --chown=0:0 /out/opt/lumigo /opt/lumigo
# The operator sets TARGET_DIRECTORY=/target (the lumigo-injector emptyDir) on the init container.
ENV TARGET_DIRECTORY=/target
USER 65532:65532
# Idempotent: a restarted init container (a failed first attempt, a recreated pod sandbox) finds the
# previous copy, which `cp` alone would refuse to overwrite.
ENTRYPOINT ["/bin/busybox", "sh", "-c", "/bin/busybox rm -rf \"$TARGET_DIRECTORY\"/* && /bin/busybox cp -R /opt/lumigo/. \"$TARGET_DIRECTORY\"/ && echo \"lumigo: payload copied to $TARGET_DIRECTORY\""]

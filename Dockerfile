# syntax=docker/dockerfile:1
# Sluice: a multi-stage build. The build stage needs only crates.io (cargo)
# and Debian's packages; the runtime image is Debian slim with CA
# certificates, running as an unprivileged user on a read-only root.
#
#   docker build -t sluice .
#   docker run --rm -p 8080:8080 -p 9090:9090 --read-only \
#     -v "$PWD/sluice.toml:/etc/sluice/sluice.toml:ro" sluice
#
# Without a mounted config the embedded default serves the mock model.

# The exact toolchain: crates/sluice/pgo.profdata names functions by symbols
# that carry a hash of the rustc version.
ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# Profile-guided: the counts of a served bench load (scripts/pgo.py). A
# function changed since the profile was taken is built as without one.
ENV RUSTFLAGS="-Cprofile-use=/src/crates/sluice/pgo.profdata -Cllvm-args=-no-pgo-warn-mismatch"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sluice --bin sluice \
    && install -D -m 0755 target/release/sluice /out/sluice \
    && objcopy --only-keep-debug /out/sluice /out/sluice.debug \
    && strip --strip-unneeded /out/sluice \
    && objcopy --add-gnu-debuglink=/out/sluice.debug /out/sluice

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 sluice \
    && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/sluice --shell /usr/sbin/nologin sluice \
    && install -d -o 65532 -g 65532 -m 0750 /var/lib/sluice /etc/sluice
COPY --from=build /out/sluice /usr/local/bin/sluice
COPY deploy/container/sluice.toml /etc/sluice/sluice.toml
# Audit files, disk buffers and keys_file live on a volume; the root stays
# read-only.
VOLUME ["/var/lib/sluice"]
WORKDIR /var/lib/sluice
USER 65532:65532
# API and admin (metrics, health, readiness).
EXPOSE 8080 9090
# stop: SIGTERM drains within [server] shutdown_grace_ms (10 s by default).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/sluice", "healthcheck", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["serve", "--config", "/etc/sluice/sluice.toml"]

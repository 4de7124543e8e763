#!/usr/bin/env bash
# A/B: two Sluice binaries, the same load, alternating, in one run — so a
# change is measured as a ratio on the same (noisy, shared) machine.
#
#   bench/ab.sh OLD_BIN NEW_BIN [DURATION_S=8] [ROUNDS=3]
#
# Each round runs, for each binary in turn (fresh process, pinned to core 0;
# wrk and the mock upstream on core 1): plain chat at 16 connections and at
# 1, then 64-token streams four ways (passthrough, filtered, translated from
# Anthropic, and the same Anthropic stream as Responses API events). Reported: CPU µs per request (or ns per streamed token) of the
# Sluice process, and new/old ratios (median over rounds). Build NEW_BIN
# with `cargo build --release`; OLD_BIN from another checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 DUR=${3:-8} ROUNDS=${4:-3}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked --bin mock-upstream -q

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

UP=$(free_port)
taskset -c 1 "$TARGET/release/mock-upstream" "127.0.0.1:$UP" > /dev/null &
PIDS+=($!)
wait_port "$UP"

# name bin -> appends "name case cpu_per_unit" lines to $WORK/results
measure() {
  local name=$1 bin=$2 gw admin pid
  gw=$(free_port); admin=$(free_port)
  cat > "$WORK/$name.toml" <<TOML
[server]
listen = "127.0.0.1:$gw"
admin_listen = "127.0.0.1:$admin"
[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:$UP/v1"
api_key = "sk-bench"
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "http://127.0.0.1:$UP/v1"
api_key = "sk-bench"
[[models]]
name = "bench"
targets = [{ provider = "up" }]
[[models]]
name = "stream-openai"
targets = [{ provider = "up", model = "tokens-64" }]
[[models]]
name = "stream-anthropic"
targets = [{ provider = "claude", model = "tokens-64" }]
TOML
  SLUICE_LOG=warn taskset -c 0 "$bin" serve --config "$WORK/$name.toml" > /dev/null 2>&1 &
  pid=$!
  PIDS+=($pid)
  wait_port "$gw"
  local url="http://127.0.0.1:$gw/v1/chat/completions"
  run_case() { # case script conns env... ; units per request
    local case=$1 script=$2 conns=$3 units=$4; shift 4
    env "$@" taskset -c 1 wrk -t1 -c"$conns" -d1s -s "$script" "$url" > /dev/null
    local before after n
    before=$(cpu_ticks "$pid")
    # Only answered requests count: a binary that answers 404 (an endpoint
    # it lacks) or errors would read as impossibly cheap.
    n=$(env "$@" taskset -c 1 wrk -t1 -c"$conns" -d"${DUR}s" -s "$script" "$url" | tail -n 1 |
        python3 -c 'import json,sys; r = json.load(sys.stdin); bad = r["non2xx"] + r["socket_errors"]; print(0 if bad else r["requests"])')
    after=$(cpu_ticks "$pid")
    if [ "$n" -eq 0 ]; then
      echo "$name $case: failed requests (non-2xx or socket errors); not measured" >&2
      echo "$name $case nan nan" >> "$WORK/results"
      return
    fi
    python3 -c "import os; hz = os.sysconf('SC_CLK_TCK'); print('$name $case', ($after - $before) / hz * 1e9 / max(1, $n * $units), ($after - $before) / hz / $DUR)" >> "$WORK/results"
  }
  run_case chat-c16 bench/chat.lua 16 1
  run_case chat-c1 bench/chat.lua 1 1
  run_case stream-passthrough bench/stream.lua 16 64 MODEL=stream-openai USAGE=1
  run_case stream-filtered bench/stream.lua 16 64 MODEL=stream-openai USAGE=0
  run_case stream-anthropic bench/stream.lua 16 64 MODEL=stream-anthropic USAGE=0
  run_case responses-anthropic bench/stream.lua 16 64 MODEL=stream-anthropic ENDPOINT=responses
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for r in $(seq "$ROUNDS"); do
  measure old "$OLD"
  measure new "$NEW"
  echo "round $r done"
done

python3 - "$WORK/results" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
cases = sorted({r[1] for r in rows}, key=lambda c: [r[1] for r in rows].index(c))
print(f"{'case':20} {'old ns/unit':>12} {'new ns/unit':>12} {'new/old':>8} {'core share old/new':>20}")
print("(CPU of the Sluice process; unit = request, or streamed token; share = its core's busy fraction)")
for c in cases:
    old = [(float(v), float(s)) for n, k, v, s in rows if k == c and n == "old"]
    new = [(float(v), float(s)) for n, k, v, s in rows if k == c and n == "new"]
    ratios = [b[0] / a[0] for a, b in zip(old, new) if a[0] == a[0] and b[0] == b[0]]
    if not ratios:
        print(f"{c:20} not measured: failed requests on one side")
        continue
    med = lambda xs: statistics.median(xs)
    print(f"{c:20} {med([x for x, _ in old]):12.0f} {med([x for x, _ in new]):12.0f} {med(ratios):8.2f}"
          f" {med([s for _, s in old]):9.2f}/{med([s for _, s in new]):.2f}  rounds {[round(x, 2) for x in ratios]}")
PY

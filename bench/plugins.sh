#!/usr/bin/env bash
# WASM plugins: gateway CPU per request on the chat path with no filter,
# with an empty proxy-wasm filter (every callback continues), with a filter
# that adds a response header (both WAT, tests/plugins), and with the
# proxy-wasm Rust SDK filter adding one; and of a predict call to a trivial
# inference plugin (tests/plugins/affine.wat, unbatched). Four gateways in
# one run, measured in turn, three rounds; medians. Sluice on core 0, wrk and
# the mock on core 1.
#
#   bench/plugins.sh [DURATION_S=5] [CONNECTIONS=16]
#
# Prints, per case: requests/s, gateway CPU µs per request, each process's
# CPU share (the gateway should be the saturated one), and the added µs
# against the plain path of the same round.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DUR=${1:-5}
CONNS=${2:-16}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SLUICE=${SLUICE_BIN:-$TARGET/release/sluice}
PLUGINS=$ROOT/tests/plugins

if ! command -v wrk >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
[ -n "${SLUICE_BIN:-}" ] || cargo build --release --locked --bin sluice
cargo build --release --locked --bin mock-upstream
if [ "$(nproc)" -lt 2 ]; then echo "needs 2 cores" >&2; exit 1; fi

. "$ROOT/bench/lib.sh"

UP=$(free_port)
taskset -c 1 "$TARGET/release/mock-upstream" "127.0.0.1:$UP" > "$WORK/mock.log" &
MOCK_PID=$!; PIDS+=($MOCK_PID)
wait_port "$UP"
python3 - "$WORK" <<'PY'
import struct, sys
open(f"{sys.argv[1]}/affine.bin", "wb").write(struct.pack("<ff", 2.0, 1.0))
PY

# One gateway per case; the filter runs on /v1/chat/completions only.
declare -A PORT PID
start() { # name, extra TOML
  local port admin; port=$(free_port); admin=$(free_port)
  cat > "$WORK/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:$UP/v1"
api_key = "sk-bench"
[[models]]
name = "bench"
targets = [{ provider = "up" }]
[[predictors]]
name = "affine"
engine = "wasm"
path = "$PLUGINS/affine.wat"
model_path = "$WORK/affine.bin"
input_shape = [4]
max_batch_size = 1
priority = "normal"
$2
TOML
  taskset -c 0 "$SLUICE" serve --config "$WORK/$1.toml" > "$WORK/$1.out" 2> "$WORK/$1.log" &
  PID[$1]=$!; PIDS+=($!); PORT[$1]=$port
  wait_port "$port"
}
filter() { printf '[[plugins]]\nname = "f"\npath = "%s"\nroutes = ["/v1/chat/completions"]\ninstances = 1\n%s\n' "$1" "${2:-}"; }
start plain ""
start empty "$(filter "$PLUGINS/empty_filter.wat")"
start header "$(filter "$PLUGINS/header_filter.wat")"
start sdk "$(filter "$PLUGINS/sdk_filter.wasm" 'config = "add_response_header=x-sdk:on"')"

cat > "$WORK/predict.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"affine","data":[0.5,1.5,-2.0,3.0]}'
wrk.headers["Content-Type"] = "application/json"
LUA

run() { # case, round, port, path, lua
  local gw=${PID[$1]} t0 g0 m0 g1 m1 t1
  g0=$(cpu_ticks "$gw"); m0=$(cpu_ticks "$MOCK_PID"); t0=$(date +%s.%N)
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$5" "http://127.0.0.1:$3$4" > "$WORK/$1-$2.wrk" 2>&1 &
  local w=$! wt=0
  # wrk's own ticks, read just before it exits.
  while kill -0 "$w" 2>/dev/null; do wt=$(cpu_ticks "$w" 2>/dev/null || echo "$wt"); sleep 0.2; done
  wait "$w"
  g1=$(cpu_ticks "$gw"); m1=$(cpu_ticks "$MOCK_PID"); t1=$(date +%s.%N)
  echo "$((g1 - g0)) $((m1 - m0)) $t0 $t1 $wt" > "$WORK/$1-$2.cpu"
}
# Warm-up, then three rounds of every case in turn.
for c in plain empty header sdk; do
  taskset -c 1 wrk -t1 -c4 -d1s -s bench/chat.lua "http://127.0.0.1:${PORT[$c]}/v1/chat/completions" > /dev/null
done
taskset -c 1 wrk -t1 -c4 -d1s -s "$WORK/predict.lua" "http://127.0.0.1:${PORT[plain]}/v1/predict" > /dev/null
PID[predict]=${PID[plain]}
for round in 1 2 3; do
  for c in plain empty header sdk; do
    run "$c" "$round" "${PORT[$c]}" /v1/chat/completions bench/chat.lua
  done
  run predict "$round" "${PORT[plain]}" /v1/predict "$WORK/predict.lua"
done

python3 - "$WORK" "$DUR" <<'PY'
import os, re, statistics, sys
work, dur = sys.argv[1], float(sys.argv[2])
hz = os.sysconf("SC_CLK_TCK")
cases = ["plain", "empty", "header", "sdk", "predict"]
label = {"plain": "chat, no filter", "empty": "chat + empty filter (WAT)",
         "header": "chat + header filter (WAT)", "sdk": "chat + header filter (Rust SDK)",
         "predict": "predict, wasm affine"}
rows = {}
for c in cases:
    per_round = []
    for r in (1, 2, 3):
        text = open(f"{work}/{c}-{r}.wrk").read()
        reqs = int(re.search(r"(\d+) requests in", text).group(1))
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        g, m, t0, t1, w = open(f"{work}/{c}-{r}.cpu").read().split()
        wall = float(t1) - float(t0)
        per_round.append({
            "rps": reqs / wall, "cpu_us": int(g) / hz * 1e6 / max(reqs, 1),
            "gw_share": int(g) / hz / wall, "mock_share": int(m) / hz / wall,
            "wrk_share": int(w) / hz / wall,
            "bad": int(bad.group(1)) if bad else 0,
        })
    rows[c] = per_round
med = lambda c, k: statistics.median(r[k] for r in rows[c])
print(f"{'case':34} {'req/s':>8} {'CPU µs/req':>11} {'added µs':>9} {'gw CPU':>7} {'mock CPU':>8} {'wrk CPU':>7} {'errors':>6}")
for c in cases:
    # Added µs against the plain path of the same round, then the median.
    added = statistics.median(a["cpu_us"] - p["cpu_us"] for a, p in zip(rows[c], rows["plain"]))
    added = f"{added:9.1f}" if c not in ("plain", "predict") else f"{'-':>9}"
    print(f"{label[c]:34} {med(c, 'rps'):8.0f} {med(c, 'cpu_us'):11.1f} {added} "
          f"{med(c, 'gw_share'):6.0%} {med(c, 'mock_share'):8.0%} {med(c, 'wrk_share'):7.0%} {sum(r['bad'] for r in rows[c]):6d}")
print("(wrk and the mock share core 1 (their shares should sum below 100 %); the gateway is alone on core 0. 'added' is the"
      " filter's CPU per request over the plain path in the same round, median of 3.)")
PY

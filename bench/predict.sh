#!/usr/bin/env bash
# Local model serving, the write-up's own claim measured: Sluice `/v1/predict`
# against the Python stack it replaces (FastAPI + uvicorn + onnxruntime, one
# worker, one inference thread), the same model, one core each (server on
# core 0, wrk on core 1), the same load, one run. Then chat p99 while predict
# load saturates Sluice's inference thread.
#
#   bench/predict.sh [DURATION_S=10] [CONNECTIONS=64]
#
# Models: the test MLP (4 -> 8 -> 3: HTTP and JSON dominate) and a wide MLP
# (64 -> 4 x 1024 -> 8: inference dominates), both built by
# tests/models/make_models.py. Sluice runs each with batching (max_batch_size
# 32) and without (max_batch_size 1). Reported per case: requests/s, p50/p99,
# the server process's CPU share of its core, core 1's (wrk's) busy share, and
# the server's peak RSS (VmHWM).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10} CONNS=${2:-64}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
# SLUICE_BIN=path measures another build (e.g. a base commit's) instead.
[ -n "${SLUICE_BIN:-}" ] || cargo build --release --locked --bin sluice -q
SLUICE_BIN=${SLUICE_BIN:-$TARGET/release/sluice}
VENV=bench/.venv-predict
if [ ! -x "$VENV/bin/uvicorn" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check fastapi uvicorn onnxruntime numpy onnx
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 300); do curl -fs "http://127.0.0.1:$1$2" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer on :$1$2" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_mb() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
# Anonymous memory (heap, stacks: what the process itself holds, without
# the mapped pages of its binary and libraries).
anon_mb() { awk '/RssAnon/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
core_ticks() { awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat; }
HZ=$(getconf CLK_TCK)

"$VENV/bin/python" - "$WORK" <<'PY'
import sys
sys.path.insert(0, "tests/models")
import make_models
make_models.write(sys.argv[1])
make_models.write_wide(sys.argv[1], 1024, 4)
PY
MLP=$WORK/mlp.onnx WIDE=$WORK/wide_1024x4.onnx

start_python() { # model_path values -> sets PORT PID
  PORT=$(free_port)
  (cd bench/predict && MODEL=$1 MODEL_NAME=m OMP_NUM_THREADS=1 taskset -c 0 \
    "../../$VENV/bin/uvicorn" server:app --workers 1 --port "$PORT" --log-level warning) &
  PID=$!
  PIDS+=($PID)
  wait_http "$PORT" /healthz
}

start_sluice() { # model_path max_batch_size -> sets PORT PID
  PORT=$(free_port)
  cat > "$WORK/sluice-$PORT.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$(free_port)"
[[predictors]]
name = "m"
path = "$1"
max_batch_size = $2
threads = 1
[[providers]]
name = "mock"
kind = "mock"
[[models]]
name = "bench"
targets = [{ provider = "mock" }]
TOML
  SLUICE_LOG=warn taskset -c 0 "$SLUICE_BIN" serve --config "$WORK/sluice-$PORT.toml" >/dev/null 2>&1 &
  PID=$!
  PIDS+=($PID)
  wait_http "$PORT" /v2/health/ready
}

# run_wrk port script conns dur values [path] -> the JSON summary line
run_wrk() {
  BENCH_MODEL=m BENCH_VALUES=$5 taskset -c 1 wrk -t1 -c"$3" -d"$4s" -s "$2" "http://127.0.0.1:$1${6:-/v1/predict}" | tail -n 1
}

# measure label values -> a result line for the server at $PORT/$PID
measure() {
  local label=$1 values=$2 t0 t1 c0 c1 out
  run_wrk "$PORT" bench/predict/predict.lua "$CONNS" 2 "$values" >/dev/null
  t0=$(cpu_ticks "$PID"); c0=$(core_ticks 1)
  out=$(run_wrk "$PORT" bench/predict/predict.lua "$CONNS" "$DUR" "$values")
  t1=$(cpu_ticks "$PID"); c1=$(core_ticks 1)
  python3 - "$label" "$out" "$t0" "$t1" "$c0" "$c1" "$HZ" "$DUR" "$(hwm_mb "$PID")" "$(anon_mb "$PID")" <<'PY' | tee -a "$WORK/results"
import json, sys
label, out, t0, t1, c0, c1, hz, dur, hwm, anon = sys.argv[1:]
r = json.loads(out)
bad = r["non2xx"] + r["socket_errors"]
busy0, all0 = map(int, c0.split()); busy1, all1 = map(int, c1.split())
rps = r["requests"] / (r["duration_us"] / 1e6)
print(json.dumps({"case": label, "rps": round(rps), "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
                  "server_cpu": round((int(t1) - int(t0)) / int(hz) / float(dur), 2),
                  "wrk_core": round((busy1 - busy0) / max(1, all1 - all0), 2),
                  "rss_mb": float(hwm), "anon_mb": float(anon), "failed": bad}))
PY
}

for model in ${MODELS-mlp wide}; do
  if [ $model = mlp ]; then path=$MLP values=4; else path=$WIDE values=64; fi
  start_python "$path"; measure "python-$model" $values; kill "$PID"; wait "$PID" 2>/dev/null || true
  start_sluice "$path" 32; measure "sluice-$model" $values; kill "$PID"; wait "$PID" 2>/dev/null || true
  start_sluice "$path" 1; measure "sluice-$model-batch1" $values; kill "$PID"; wait "$PID" 2>/dev/null || true
done

# Chat p99 alone, then while predict load (the wide model, 16 connections)
# keeps the inference thread busy; chat at 4 connections to the in-process
# mock. The async workers stay on core 0; the inference thread is moved to
# core 1 (beside wrk, which it yields to: nice 10), as a deployment gives
# inference its own cores.
start_sluice "$WIDE" 32
tid=$(grep -l '^predict-m-0$' /proc/"$PID"/task/*/comm | head -1 | xargs dirname)
taskset -pc 1 "${tid##*/}" >/dev/null
chat_p99() { run_wrk "$PORT" bench/chat.lua "${CHAT_CONNS:-4}" "$DUR" 0 /v1/chat/completions | python3 -c 'import json,sys; r=json.load(sys.stdin); assert not r["non2xx"]; print(r["p99_us"] / 1000, round(r["requests"] / r["duration_us"] * 1e6))'; }
run_wrk "$PORT" bench/chat.lua 4 2 0 /v1/chat/completions >/dev/null
alone=$(chat_p99)
run_wrk "$PORT" bench/predict/predict.lua 16 $((DUR + 3)) 64 >/dev/null &
LOADPID=$!
sleep 1
i0=$(awk '{print $14 + $15}' "$tid/stat")
loaded=$(chat_p99)
i1=$(awk '{print $14 + $15}' "$tid/stat")
wait $LOADPID || true
python3 - "$alone" "$loaded" "$i0" "$i1" "$HZ" "$DUR" <<'PY' | tee -a "$WORK/results"
import json, sys
alone, loaded, i0, i1, hz, dur = sys.argv[1:]
a, b = alone.split(), loaded.split()
print(json.dumps({"case": "chat-p99-under-predict-load", "chat_p99_alone_ms": float(a[0]), "chat_rps_alone": int(a[1]),
                  "chat_p99_loaded_ms": float(b[0]), "chat_rps_loaded": int(b[1]),
                  "p99_ratio": round(float(b[0]) / float(a[0]), 2),
                  "inference_thread_cpu": round((int(i1) - int(i0)) / int(hz) / float(dur), 2)}))
PY

[ -z "${MODELS-x}" ] && { cat "$WORK/results"; exit 0; }
python3 - "$WORK/results" <<'PY'
import json, sys
rows = {r["case"]: r for r in map(json.loads, open(sys.argv[1]))}
print("\n| case | req/s | p50 ms | p99 ms | server CPU | wrk core | peak RSS MB | anon MB at end |")
print("|---|---|---|---|---|---|---|---|")
for r in rows.values():
    if "rps" in r:
        print(f'| {r["case"]} | {r["rps"]} | {r["p50_ms"]:.2f} | {r["p99_ms"]:.2f} | {r["server_cpu"]:.0%} | {r["wrk_core"]:.0%} | {r["rss_mb"]} | {r["anon_mb"]} |')
for m in ["mlp", "wide"]:
    py, s, s1 = rows[f"python-{m}"], rows[f"sluice-{m}"], rows[f"sluice-{m}-batch1"]
    print(f"{m}: sluice/python throughput {s['rps'] / py['rps']:.2f}x, peak RSS {s['rss_mb'] / py['rss_mb']:.2f}x, "
          f"anon {s['anon_mb'] / py['anon_mb']:.2f}x, p99 {s['p99_ms'] / py['p99_ms']:.2f}x; batching {s['rps'] / s1['rps']:.2f}x of max_batch_size = 1")
c = rows["chat-p99-under-predict-load"]
print(f"chat p99 {c['chat_p99_alone_ms']} ms alone, {c['chat_p99_loaded_ms']} ms under predict load "
      f"({c['p99_ratio']}x; inference thread at {c['inference_thread_cpu']:.0%} of a core)")
PY

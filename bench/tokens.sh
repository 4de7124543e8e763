#!/usr/bin/env bash
# Token streams: gateway CPU per token for the three ways a client can take a
# streamed chat — SSE JSON (/v1/chat/completions), gRPC (ChatStream) and
# FlatBuffers (/api/v2/chat/completions) — from OpenAI- and Anthropic-format
# upstreams, with one token per upstream frame (the mock pauses 1 ms between
# events, so each is its own read) and in bursts (all 64 events written at
# once: several tokens per read). One run; Sluice on core 0, the mock and
# h2load (HTTP/2 for all three, so only the format differs) on core 1.
#
#   bench/tokens.sh [DURATION_S=5] [STREAMS=64]
#
# Prints, per case: tokens/s, gateway CPU µs per token, tokens/s per core of
# gateway CPU, each process's CPU share, and the ratio to SSE JSON's CPU per
# token in the same setting.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DUR=${1:-5}
STREAMS=${2:-64}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SLUICE=${SLUICE_BIN:-$TARGET/release/sluice}

if ! command -v h2load >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null
fi
[ -n "${SLUICE_BIN:-}" ] || cargo build --release --locked --bin sluice
cargo build --release --locked --bin mock-upstream
if [ "$(nproc)" -lt 2 ]; then echo "needs 2 cores" >&2; exit 1; fi

. "$ROOT/bench/lib.sh"

UP=$(free_port); GW=$(free_port); ADMIN=$(free_port)
taskset -c 1 "$TARGET/release/mock-upstream" "127.0.0.1:$UP" > "$WORK/mock.log" &
MOCK_PID=$!; PIDS+=($MOCK_PID)
wait_port "$UP"
cat > "$WORK/sluice.toml" <<TOML
[server]
listen = "127.0.0.1:$GW"
admin_listen = "127.0.0.1:$ADMIN"
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
name = "openai"
targets = [{ provider = "up", model = "tokens-64" }]
[[models]]
name = "anthropic"
targets = [{ provider = "claude", model = "tokens-64" }]
TOML
SLUICE_LOG=warn taskset -c 0 "$SLUICE" serve --config "$WORK/sluice.toml" > "$WORK/sluice.out" 2> "$WORK/sluice.err" &
GW_PID=$!; PIDS+=($GW_PID)
wait_port "$GW"

# Request bodies: the same chat as JSON, and as a gRPC-framed ChatRequest
# (protobuf written by hand: model = 1, messages = 2 {role = 1, content = 2}).
python3 - "$WORK" <<'PY'
import json, struct, sys
work = sys.argv[1]
def field(n, b): return bytes([n << 3 | 2]) + bytes([len(b)]) + b
for model in ["openai", "anthropic"]:
    chat = {"model": model, "messages": [{"role": "user", "content": "Say it"}]}
    open(f"{work}/{model}.sse.json", "w").write(json.dumps({**chat, "stream": True}))
    open(f"{work}/{model}.flat.json", "w").write(json.dumps(chat))
    msg = field(1, model.encode()) + field(2, field(1, b"user") + field(2, b"Say it"))
    open(f"{work}/{model}.grpc.bin", "wb").write(b"\0" + struct.pack(">I", len(msg)) + msg)
PY

URL=http://127.0.0.1:$GW
# case -> path, headers, body suffix
declare -A PATHS=([sse]=/v1/chat/completions [grpc]=/sluice.v1.Gateway/ChatStream [flat]=/api/v2/chat/completions)
declare -A TYPES=([sse]=application/json [grpc]=application/grpc [flat]=application/json)
declare -A ACCEPT=([sse]=text/event-stream [grpc]='*/*' [flat]=application/x-flatbuffers)
declare -A BODY=([sse]=sse.json [grpc]=grpc.bin [flat]=flat.json)

# Tokens in one answer, counted by a client of each format (checks they work).
count_tokens() { # format model
  python3 - "$1" "$URL${PATHS[$1]}" "$WORK/$2.${BODY[$1]}" "${TYPES[$1]}" "${ACCEPT[$1]}" <<'PY'
import json, struct, sys, urllib.request
fmt, url, body, ctype, accept = sys.argv[1:]
if fmt == "grpc":
    import subprocess
    out = subprocess.run(["h2load", "-n1", "-c1", "-d", body, "-H", f"content-type: {ctype}", "-H", "te: trailers", url],
                         capture_output=True, text=True).stdout
    # A status-only (error) answer has no data; 64 TokenChunk frames are ~13 bytes each.
    data = next(int(w.split()[0].replace("B", "")) for w in out.split("\n") if w.startswith("traffic:")
                for w in [w.split(",")[-1]])
    print(64 if "1 succeeded" in out and data >= 64 * 10 else 0)
    sys.exit()
req = urllib.request.Request(url, data=open(body, "rb").read(), headers={"content-type": ctype, "accept": accept})
data = urllib.request.urlopen(req, timeout=30).read()
if fmt == "sse":
    n = sum(1 for l in data.split(b"\n") if l.startswith(b"data: {") and json.loads(l[6:])["choices"]
            and json.loads(l[6:])["choices"][0]["delta"].get("content"))
else:
    n, at = 0, 0
    while at < len(data):
        (size,) = struct.unpack_from("<I", data, at); at += 4 + size; n += 1
    n -= 1  # the last chunk carries the finish reason, no text
print(n)
PY
}

printf '%-10s %-6s %-6s %10s %12s %16s %8s %8s %8s %9s\n' upstream pace format "tokens/s" "µs CPU/tok" "tok/s per core" "gw CPU" "mock" "h2load" "vs SSE"
for model in openai anthropic; do
  for pace in 1000 0; do
    curl -s -X POST "http://127.0.0.1:$UP/_control" -d "{\"pace_us\": $pace}" > /dev/null
    label=$([ "$pace" = 0 ] && echo burst || echo 1/read)
    sse_us=""
    for fmt in sse grpc flat; do
      tokens=$(count_tokens "$fmt" "$model")
      [ "$tokens" -ge 60 ] || { echo "$fmt/$model answered $tokens tokens, not ~64" >&2; exit 1; }
      g0=$(cpu_ticks "$GW_PID"); m0=$(cpu_ticks "$MOCK_PID"); t0=$(date +%s.%N)
      taskset -c 1 h2load -t1 -c"$STREAMS" -m1 -D"$DUR" -d "$WORK/$model.${BODY[$fmt]}" \
        -H "content-type: ${TYPES[$fmt]}" -H "accept: ${ACCEPT[$fmt]}" -H "te: trailers" \
        "$URL${PATHS[$fmt]}" > "$WORK/h2load.out" 2>&1 &
      H=$!; sleep 0.2; h0=$(cpu_ticks "$H" 2>/dev/null || echo 0)
      h1=$h0; while kill -0 "$H" 2>/dev/null; do h1=$(cpu_ticks "$H" 2>/dev/null || echo "$h1"); sleep 0.2; done
      wait "$H" || true
      g1=$(cpu_ticks "$GW_PID"); m1=$(cpu_ticks "$MOCK_PID"); t1=$(date +%s.%N)
      done_n=$(awk '/^requests:/ {for (i = 1; i <= NF; i++) if ($(i+1) == "succeeded,") print $i}' "$WORK/h2load.out")
      [ -n "$done_n" ] && [ "$done_n" -gt 0 ] || { cat "$WORK/h2load.out" >&2; exit 1; }
      python3 - "$done_n" "$tokens" "$((g1 - g0))" "$((m1 - m0))" "$((h1 - h0))" "$t0" "$t1" "$model" "$label" "$fmt" "${sse_us:-0}" <<'PY' > "$WORK/row"
import os, sys
n, tok, g, m, h = (int(x) for x in sys.argv[1:6])
t0, t1 = float(sys.argv[6]), float(sys.argv[7])
model, label, fmt, sse_us = sys.argv[8], sys.argv[9], sys.argv[10], float(sys.argv[11])
hz = os.sysconf("SC_CLK_TCK"); wall = t1 - t0
tokens = n * tok
us = g / hz * 1e6 / tokens
ratio = f"{us / sse_us:.2f}x" if sse_us else "1.00x"
print(f"{model:<10} {label:<6} {fmt:<6} {tokens / wall:>10,.0f} {us:>12.2f} {1e6 / us:>16,.0f} "
      f"{g / hz / wall:>7.0%} {m / hz / wall:>7.0%} {h / hz / wall:>7.0%} {ratio:>9}")
PY
      cat "$WORK/row"
      if [ "$fmt" = sse ]; then
        sse_us=$(python3 -c "import sys; print(float(sys.argv[1].split()[4]))" "$(cat "$WORK/row")")
      fi
    done
  done
done

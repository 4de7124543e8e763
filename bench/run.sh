#!/usr/bin/env bash
# Load benchmark: chat completions straight to a fast mock upstream, through
# nginx (plain proxy_pass, the practical limit of a proxy here) and through
# Sluice, in one run. Sluice and nginx get core 0; wrk and the mock get core 1.
#
#   bench/run.sh [DURATION_S=10] [CONNECTIONS=16]
#
# Prints added latency p50/p99 (vs direct), throughput ratios and Sluice's
# peak RSS, and writes bench/results/latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DUR=${1:-10}
CONNS=${2:-16}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq wrk nginx >/dev/null
fi
cargo build --release --locked --bin sluice --bin mock-upstream
if [ "$(nproc)" -lt 2 ]; then echo "needs 2 cores" >&2; exit 1; fi

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

UP=$(free_port); GW=$(free_port); ADMIN=$(free_port); NG=$(free_port)

taskset -c 1 "$TARGET/release/mock-upstream" "127.0.0.1:$UP" > "$WORK/mock.log" &
PIDS+=($!)
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
name = "bench"
targets = [{ provider = "up" }]
[[models]]
name = "stream-openai"
targets = [{ provider = "up", model = "tokens-64" }]
[[models]]
name = "stream-anthropic"
targets = [{ provider = "claude", model = "tokens-64" }]
TOML
SLUICE_LOG=warn taskset -c 0 "$TARGET/release/sluice" serve --config "$WORK/sluice.toml" > "$WORK/sluice.out" 2> "$WORK/sluice.err" &
SLUICE_PID=$!
PIDS+=($SLUICE_PID)
wait_port "$GW"

cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
worker_cpu_affinity 01;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-body;
  proxy_temp_path $WORK/nginx-proxy;
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$NG;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
taskset -c 0 nginx -c "$WORK/nginx.conf" &
PIDS+=($!)
wait_port "$NG"

NGINX_WORKER=$(pgrep -P "$(cat "$WORK/nginx.pid")" | head -n 1)
cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }

run() { # name url pid-whose-CPU-to-count connections
  local before after out="$WORK/$1-c$4"
  taskset -c 1 wrk -t1 -c"$4" -d2s -s bench/chat.lua "$2/v1/chat/completions" > /dev/null  # warm-up
  before=$(cpu_ticks "$3")
  taskset -c 1 wrk -t1 -c"$4" -d"${DUR}s" -s bench/chat.lua "$2/v1/chat/completions" | tail -n 1 > "$out.json"
  after=$(cpu_ticks "$3")
  echo "$((after - before))" > "$out.cpu"
  echo "$1 c=$4: $(cat "$out.json")"
}
# At $CONNS connections, two more rounds of the three (added latency at
# concurrency is mostly queueing on a busy core, so one run is a coin flip;
# the summary adds the median of the three rounds).
for round in "" .2 .3; do
  run "direct$round" "http://127.0.0.1:$UP" "" "$CONNS"
  run "nginx$round" "http://127.0.0.1:$NG" "$NGINX_WORKER" "$CONNS"
  run "sluice$round" "http://127.0.0.1:$GW" "$SLUICE_PID" "$CONNS"
done
run direct "http://127.0.0.1:$UP" "" 1
run nginx "http://127.0.0.1:$NG" "$NGINX_WORKER" 1
run sluice "http://127.0.0.1:$GW" "$SLUICE_PID" 1

# Streaming: CPU per streamed token through Sluice, plain OpenAI passthrough
# (usage asked: bytes forwarded as they come), OpenAI with usage filtered
# (usage not asked), and OpenAI client -> Anthropic upstream (translated).
stream_run() { # name model usage
  local before after out="$WORK/stream-$1"
  MODEL=$2 USAGE=$3 taskset -c 1 wrk -t1 -c"$CONNS" -d2s -s bench/stream.lua "http://127.0.0.1:$GW/v1/chat/completions" > /dev/null
  before=$(cpu_ticks "$SLUICE_PID")
  MODEL=$2 USAGE=$3 taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" -s bench/stream.lua "http://127.0.0.1:$GW/v1/chat/completions" | tail -n 1 > "$out.json"
  after=$(cpu_ticks "$SLUICE_PID")
  echo "$((after - before))" > "$out.cpu"
  echo "stream $1: $(cat "$out.json")"
}
stream_run passthrough stream-openai 1
stream_run filtered stream-openai 0
stream_run anthropic stream-anthropic 0

RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$SLUICE_PID/status")

# Tracing cost: the same load through fresh Sluice processes, back to back:
# tracing off, then exporting spans over OTLP/HTTP to a sink at sampling 1.0
# (every request), three times over (off/1.0 pairs, adjacent in time; the
# median pair ratio is reported, the machine being noisy), then 0.1.
# Ratios are against the "off" runs of this section.
# Last in the loop, "security": no tracing, but a virtual key with rpm/tpm
# limits and a stream cap, and an audit trail to a file with the `user`
# field SM4-GCM encrypted and the rest PII-redacted.
kill "$SLUICE_PID"; wait "$SLUICE_PID" 2>/dev/null || true
KEY_SHA=$("$TARGET/release/sluice" hash-key sk-bench-client)
export SLUICE_AUDIT_KEY=000102030405060708090a0b0c0d0e0f
for run in off 1.0 off.2 1.0.2 off.3 1.0.3 0.1 security; do
  ratio=${run%.[23]}
  GW2=$(free_port); ADMIN2=$(free_port)
  sed -e "s/127.0.0.1:$GW\"/127.0.0.1:$GW2\"/" -e "s/127.0.0.1:$ADMIN\"/127.0.0.1:$ADMIN2\"/" "$WORK/sluice.toml" > "$WORK/traced.toml"
  if [ "$ratio" = security ]; then
    printf '[[keys]]\nname = "bench"\nsha256 = "%s"\nrpm = 100000000\ntpm = 100000000000\nmax_streams = 1000\n[audit]\npath = "%s/audit.jsonl"\nfields = ["metadata.team"]\nencrypt_fields = ["user"]\n' "$KEY_SHA" "$WORK" >> "$WORK/traced.toml"
  elif [ "$ratio" != off ]; then
    printf '[telemetry]\notlp_endpoint = "http://127.0.0.1:%s"\notlp_protocol = "http/protobuf"\nsampling_ratio = %s\n' "$UP" "$ratio" >> "$WORK/traced.toml"
  fi
  SLUICE_LOG=warn taskset -c 0 "$TARGET/release/sluice" serve --config "$WORK/traced.toml" > /dev/null 2> "$WORK/traced.err" &
  TRACED_PID=$!
  PIDS+=($TRACED_PID)
  wait_port "$GW2"
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s -s bench/chat.lua "http://127.0.0.1:$GW2/v1/chat/completions" > /dev/null
  before=$(cpu_ticks "$TRACED_PID")
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" -s bench/chat.lua "http://127.0.0.1:$GW2/v1/chat/completions" | tail -n 1 > "$WORK/traced-$run.json"
  after=$(cpu_ticks "$TRACED_PID")
  echo "$((after - before))" > "$WORK/traced-$run.cpu"
  # Spans exported, dropped and failed: the export must have kept up.
  curl -s "http://127.0.0.1:$ADMIN2/metrics" | awk '/^sluice_trace_spans_total/ {gsub(/.*outcome="|"}/, "", $1); printf "\"%s\": %s, ", $1, $2}' | sed 's/^/{/; s/, $/}/; s/^{$/{}/' > "$WORK/traced-$run.spans"
  echo "traced run=$run: $(cat "$WORK/traced-$run.json") spans $(cat "$WORK/traced-$run.spans")"
  kill "$TRACED_PID"; wait "$TRACED_PID" 2>/dev/null || true
done

python3 - "$WORK" "$RSS_KB" "$DUR" "$CONNS" <<'PY'
import json, sys, platform, datetime, os
work, rss_kb, dur, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
hz = os.sysconf("SC_CLK_TCK")
names = ("direct", "nginx", "sluice")
out = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "machine": f"{os.cpu_count()} cores, {platform.machine()}",
    "duration_s": dur,
    "sluice_peak_rss_mib": round(rss_kb / 1024, 1),
}
for c in (conns, 1):
    r = {}
    for n in names:
        v = json.load(open(f"{work}/{n}-c{c}.json"))
        v["rps"] = round(v["requests"] / (v["duration_us"] / 1e6))
        ticks = int(open(f"{work}/{n}-c{c}.cpu").read())
        v["cpu_us_per_request"] = round(ticks / hz * 1e6 / v["requests"], 1) if ticks else None
        r[n] = v
    s = {
        "runs": r,
        "sluice_vs_nginx_throughput": round(r["sluice"]["rps"] / r["nginx"]["rps"], 2),
        "sluice_vs_direct_throughput": round(r["sluice"]["rps"] / r["direct"]["rps"], 2),
        "sluice_vs_nginx_cpu_per_request": round(r["sluice"]["cpu_us_per_request"] / r["nginx"]["cpu_us_per_request"], 2),
        "sluice_added_p50_us": r["sluice"]["p50_us"] - r["direct"]["p50_us"],
        "sluice_added_p99_us": r["sluice"]["p99_us"] - r["direct"]["p99_us"],
        "nginx_added_p50_us": r["nginx"]["p50_us"] - r["direct"]["p50_us"],
        "nginx_added_p99_us": r["nginx"]["p99_us"] - r["direct"]["p99_us"],
    }
    out[f"c{c}"] = s
    print(f"\n{c} connection(s):")
    print(f"{'':8} {'req/s':>9} {'p50 µs':>8} {'p99 µs':>8} {'errors':>7} {'proxy CPU µs/req':>17}")
    for n, v in r.items():
        cpu = v["cpu_us_per_request"]
        cpu = f"{cpu:17.1f}" if cpu else f"{'-':>17}"
        print(f"{n:8} {v['rps']:9d} {v['p50_us']:8d} {v['p99_us']:8d} {v['socket_errors'] + v['non2xx']:7d} {cpu}")
    if c == conns:
        rounds = []
        for suffix in ("", ".2", ".3"):
            d, g, x = (json.load(open(f"{work}/{n}{suffix}-c{c}.json")) for n in names)
            rounds.append({
                "sluice_added_p50_us": x["p50_us"] - d["p50_us"],
                "nginx_added_p50_us": g["p50_us"] - d["p50_us"],
                "sluice_vs_nginx_throughput": round(x["requests"] / g["requests"], 2),
            })
        def med(k):
            return sorted(r[k] for r in rounds)[1]
        s["rounds"] = rounds
        s["median_sluice_added_p50_us"] = med("sluice_added_p50_us")
        s["median_nginx_added_p50_us"] = med("nginx_added_p50_us")
        s["median_sluice_vs_nginx_throughput"] = med("sluice_vs_nginx_throughput")
        print(f"three rounds: sluice added p50 {[r['sluice_added_p50_us'] for r in rounds]} µs (median {s['median_sluice_added_p50_us']}),"
              f" nginx {[r['nginx_added_p50_us'] for r in rounds]} µs (median {s['median_nginx_added_p50_us']});"
              f" sluice/nginx throughput {[r['sluice_vs_nginx_throughput'] for r in rounds]}")
    print(f"sluice: {s['sluice_vs_nginx_throughput']:.2f}x nginx throughput, {s['sluice_vs_direct_throughput']:.2f}x direct;"
          f" CPU per request {s['sluice_vs_nginx_cpu_per_request']:.2f}x nginx's")
    print(f"added latency vs direct: sluice p50 {s['sluice_added_p50_us']} µs, p99 {s['sluice_added_p99_us']} µs;"
          f" nginx p50 {s['nginx_added_p50_us']} µs, p99 {s['nginx_added_p99_us']} µs")
TOKENS = 64
st = {}
for n in ("passthrough", "filtered", "anthropic"):
    v = json.load(open(f"{work}/stream-{n}.json"))
    ticks = int(open(f"{work}/stream-{n}.cpu").read())
    v["cpu_ns_per_token"] = round(ticks / hz * 1e9 / (v["requests"] * TOKENS), 1)
    v["rps"] = round(v["requests"] / (v["duration_us"] / 1e6))
    st[n] = v
out["stream"] = {
    "tokens_per_response": TOKENS,
    "runs": st,
    "filtered_vs_passthrough_cpu_per_token": round(st["filtered"]["cpu_ns_per_token"] / st["passthrough"]["cpu_ns_per_token"], 2),
    "anthropic_vs_passthrough_cpu_per_token": round(st["anthropic"]["cpu_ns_per_token"] / st["passthrough"]["cpu_ns_per_token"], 2),
}
print(f"\nstreaming ({TOKENS} tokens per response, {conns} connections):")
for n, v in st.items():
    print(f"  {n:12} {v['rps']:6d} streams/s  {v['cpu_ns_per_token']:8.1f} ns CPU/token  errors {v['socket_errors'] + v['non2xx']}")
print(f"  CPU per token vs passthrough: filtered {out['stream']['filtered_vs_passthrough_cpu_per_token']}x, "
      f"anthropic translation {out['stream']['anthropic_vs_passthrough_cpu_per_token']}x")
def traced(run):
    t = json.load(open(f"{work}/traced-{run}.json"))
    t["rps"] = round(t["requests"] / (t["duration_us"] / 1e6))
    t["cpu_us_per_request"] = round(int(open(f"{work}/traced-{run}.cpu").read()) / hz * 1e6 / t["requests"], 1)
    t["spans"] = json.loads(open(f"{work}/traced-{run}.spans").read() or "{}")
    return t
def median(xs):
    return sorted(xs)[len(xs) // 2]
offs = [traced(r) for r in ("off", "off.2", "off.3")]
ons = [traced(r) for r in ("1.0", "1.0.2", "1.0.3")]
plain = sorted(offs, key=lambda t: t["rps"])[1]  # the median "off" run
out["tracing"] = {"off_runs": offs, "1.0_runs": ons}
print(f"\ntracing off (same section, median of 3): {plain['rps']} req/s, {plain['cpu_us_per_request']} µs CPU/req")
pairs = [(a, b) for a, b in zip(offs, ons)]
tp = [round(b["rps"] / a["rps"], 3) for a, b in pairs]
cpu = [round(b["cpu_us_per_request"] - a["cpu_us_per_request"], 1) for a, b in pairs]
out["tracing"]["1.0"] = {
    "pair_throughput_ratios": tp,
    "throughput_vs_untraced": round(median(tp), 2),
    "added_cpu_us_per_request": median(cpu),
}
print(f"tracing on, sampling 1.0, three off/on pairs: throughput {tp} of tracing off (median {median(tp):.2f}x);"
      f" added CPU per request {cpu} µs (median {median(cpu)}); spans {[t['spans'] for t in ons]}")
t = traced("0.1")
t["throughput_vs_untraced"] = round(t["rps"] / plain["rps"], 2)
t["cpu_per_request_vs_untraced"] = round(t["cpu_us_per_request"] / plain["cpu_us_per_request"], 2)
out["tracing"]["0.1"] = t
print(f"tracing on, sampling 0.1: {t['rps']} req/s, {t['cpu_us_per_request']} µs CPU/req;"
      f" {t['throughput_vs_untraced']}x the throughput, {t['cpu_per_request_vs_untraced']}x the CPU of tracing off")
sec = json.load(open(f"{work}/traced-security.json"))
sec["rps"] = round(sec["requests"] / (sec["duration_us"] / 1e6))
sec["cpu_us_per_request"] = round(int(open(f"{work}/traced-security.cpu").read()) / hz * 1e6 / sec["requests"], 1)
sec["throughput_vs_plain"] = round(sec["rps"] / plain["rps"], 2)
sec["added_cpu_us_per_request"] = round(sec["cpu_us_per_request"] - plain["cpu_us_per_request"], 1)
sec["audit_lines"] = sum(1 for _ in open(f"{work}/audit.jsonl"))
out["security"] = sec
print(f"\nsecurity on (key + rpm/tpm + stream cap + SM4 audit to a file): {sec['rps']} req/s,"
      f" {sec['cpu_us_per_request']} µs CPU/req; {sec['throughput_vs_plain']}x the throughput of the plain run,"
      f" {sec['added_cpu_us_per_request']:+} µs CPU/req; {sec['audit_lines']} audit events written"
      f" (non-2xx {sec['non2xx']})")
print(f"\nsluice peak RSS: {out['sluice_peak_rss_mib']} MiB")
json.dump(out, open("bench/results/latest.json", "w"), indent=2)
PY

#!/usr/bin/env bash
# Agent hub load: N idle WebSocket agents on one Sluice process, then push
# latency. Usage: bench/agents.sh [AGENTS=100000] [PUSHES=5000] [RATE=1000]
#
# Sluice is pinned to core 0, the load tool (bench/agents) to core 1; the
# agents connect from several 127.0.0.x source addresses (one address has
# only ~28k ephemeral ports). Each process needs one descriptor per agent:
# the script raises `ulimit -n` as far as it is allowed and caps AGENTS to
# fit. Writes bench/results/agents.json.
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${1:-100000}
PUSHES=${2:-5000}
RATE=${3:-1000}
TARGET=${CARGO_TARGET_DIR:-target}

ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
LIMIT=$(ulimit -n)
MAX=$((LIMIT - 500))
if [ "$AGENTS" -gt "$MAX" ]; then
  echo "note: open-files limit is $LIMIT here; running $MAX agents instead of $AGENTS" >&2
  AGENTS=$MAX
fi
SOURCES=$(( AGENTS / 20000 + 2 ))

cargo build --release --locked --bin sluice --bin agents-load

WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ADMIN=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/sluice.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$ADMIN"
[agents]
heartbeat_ms = 5000
queue_depth = 64
[[providers]]
name = "mock"
kind = "mock"
[[models]]
name = "mock-1"
targets = [{ provider = "mock" }]
TOML
SLUICE_LOG=warn taskset -c 0 "$TARGET/release/sluice" serve --config "$WORK/sluice.toml" > /dev/null 2> "$WORK/sluice.err" &
PID=$!
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done

taskset -c 1 "$TARGET/release/agents-load" --url "http://127.0.0.1:$PORT" --agents "$AGENTS" \
  --sources "$SOURCES" --pushes "$PUSHES" --rate "$RATE" --idle-secs 10 --heartbeat-ms 5000 --pid "$PID" \
  > "$WORK/out.json"
EVICTIONS=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^sluice_agent_evictions_total/ {print $2}')
python3 - "$WORK/out.json" "$LIMIT" "${EVICTIONS:-0}" <<'PY'
import json, sys, datetime, os
d = json.load(open(sys.argv[1]))
d["open_files_limit"] = int(sys.argv[2])
d["evictions"] = float(sys.argv[3])
d["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
d["machine"] = f"{os.cpu_count()} cores"
d["extrapolated_rss_mib_at_100k"] = round(d["gateway_rss_before_mib"] + d["gateway_rss_per_agent_bytes"] * 100_000 / 2**20)
json.dump(d, open("bench/results/agents.json", "w"), indent=2)
n = d["agents_connected"]
print(f"{n} agents connected in {d['connect_seconds']} s ({d['agents_lost']} lost, {d['evictions']:.0f} evicted)")
print(f"gateway RSS {d['gateway_rss_before_mib']:.1f} -> {d['gateway_rss_after_mib']:.1f} MiB:"
      f" {d['gateway_rss_per_agent_bytes'] / 1024:.2f} KiB per agent"
      f" (100k agents ~ {d['extrapolated_rss_mib_at_100k']} MiB)")
print(f"idle, pinged every 5 s: {d['idle_gateway_core_share'] * 100:.1f}% of a core,"
      f" {d['heartbeat_cpu_us_each']} µs CPU per heartbeat")
print(f"push latency at {d['push_rate_per_s']}/s to {n} agents: p50 {d['push_latency_us_p50']} µs,"
      f" p99 {d['push_latency_us_p99']} µs, max {d['push_latency_us_max']} µs"
      f" ({d['pushes_received']}/{d['pushes']} received, {d['push_gateway_cpu_us_each']} µs gateway CPU each)")
PY

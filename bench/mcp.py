#!/usr/bin/env python3
"""Added latency of one MCP `tools/call` through Sluice's `/mcp`, against the
same call made directly to the upstream MCP server, one run:

    SLUICE_BIN=target/release/sluice python3 bench/mcp.py [--calls 500]

The upstream is the tests' weather server (the official Python SDK's
MCPServer over Streamable HTTP); the client is one keep-alive HTTP
connection speaking the handshake revision (2025-11-25 session), as Sluice
itself speaks to the upstream, so the only difference between the two
columns is the hop through the gateway. Calls go one after another; each
process's CPU share is printed (the upstream, in Python, is the slowest
part: the added latency is what to read, not throughput). Writes
bench/results/mcp.json.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
HZ = os.sysconf("SC_CLK_TCK")
PY = ROOT / ".venv" / "bin" / "python"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


class Session:
    """A 2025-11-25 session over one keep-alive connection."""

    def __init__(self, url):
        self.url = url
        self.http = httpx.Client(timeout=30)
        self.h = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        r = self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}})
        self.h["mcp-session-id"] = r.headers["mcp-session-id"]
        self.h["mcp-protocol-version"] = "2025-11-25"
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def post(self, msg):
        return self.http.post(self.url, json=msg, headers=self.h)

    def call(self, i, name):
        r = self.post({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                       "params": {"name": name, "arguments": {"city": "Paris"}}})
        text = r.text
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            text = [line[5:] for line in text.splitlines() if line.startswith("data:")][-1]
        out = json.loads(text)
        assert out["result"]["content"][0]["text"] == "sunny in Paris", out


def measure(session, name, calls, warmup, pids):
    for i in range(warmup):
        session.call(i, name)
    ticks = {k: cpu_ticks(p) for k, p in pids.items()}
    took = []
    t0 = time.perf_counter()
    for i in range(calls):
        s = time.perf_counter()
        session.call(warmup + i, name)
        took.append((time.perf_counter() - s) * 1000)
    wall = time.perf_counter() - t0
    share = {k: (cpu_ticks(p) - ticks[k]) / HZ / wall for k, p in pids.items()}
    took.sort()
    q = lambda p: took[min(len(took) - 1, int(p * len(took)))]
    return {"p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "mean_ms": statistics.mean(took),
            "cpu_share": share,
            "cpu_us_per_call": {k: v * wall / calls * 1e6 for k, v in share.items()}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    args = ap.parse_args()
    sluice = os.environ.get("SLUICE_BIN", str(ROOT / "target" / "release" / "sluice"))
    tmp = Path(tempfile.mkdtemp())
    port = free_port()
    up = subprocess.Popen([str(PY), str(ROOT / "tests/mcp/weather_server.py"), str(port), str(tmp)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert up.stdout.readline().startswith("listening")
    upstream = f"http://127.0.0.1:{port}/mcp"
    cfg = tmp / "sluice.toml"
    cfg.write_text(f'[logging]\nlevel = "warn"\n\n[[mcp_servers]]\nname = "weather"\nurl = "{upstream}"\n')
    gw = subprocess.Popen([sluice, "serve", "--config", str(cfg), "--listen", "127.0.0.1:0",
                           "--admin-listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    words = gw.stdout.readline().split()
    api, admin = words[words.index("api") + 1], words[words.index("admin") + 1]
    try:
        for _ in range(200):
            s = httpx.get(f"{admin}/v1/mcp/servers").json()["data"][0]
            if s["state"] == "ready":
                break
            time.sleep(0.05)
        pids = {"sluice": gw.pid, "upstream": up.pid, "client": os.getpid()}
        direct = measure(Session(upstream), "forecast", args.calls, args.warmup, pids)
        via = measure(Session(f"{api}/mcp"), "weather__forecast", args.calls, args.warmup, pids)
    finally:
        gw.terminate()
        up.kill()
        gw.wait()
    added = {k: via[k] - direct[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}
    print(f"{'':14} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  cpu share (sluice / upstream / client)")
    for name, r in (("direct", direct), ("via sluice", via)):
        sh = r["cpu_share"]
        print(f"{name:14} {r['p50_ms']:8.2f} {r['p90_ms']:8.2f} {r['p99_ms']:8.2f}  "
              f"{sh['sluice']:.0%} / {sh['upstream']:.0%} / {sh['client']:.0%}")
    print(f"{'added':14} {added['p50_ms']:8.2f} {added['p90_ms']:8.2f} {added['p99_ms']:8.2f}  "
          f"sluice CPU per call: {via['cpu_us_per_call']['sluice']:.0f} µs")
    out = {"calls": args.calls, "direct": direct, "via_sluice": via, "added": added,
           "sluice_cpu_us_per_call": via["cpu_us_per_call"]["sluice"]}
    (ROOT / "bench" / "results" / "mcp.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())

"""In-process `gw.chat` from Python against the same request over loopback
HTTP with the official `openai` SDK, to the same mock upstream, in one run.

Phases (each sequential, one call at a time, after a warm-up):
- inproc: `sluice.Gateway(config).chat(request)` in this process;
- http: the `openai` SDK to `sluice serve` (a separate process, the same
  build profile as the installed package) on loopback;
- http-raw: the same HTTP request sent with a bare `http.client`
  connection (keep-alive), to separate the SDK's cost from the hop's.

Reported per call: latency p50 / p99 (ms) and CPU (µs): this process's
(client + in-process gateway threads, from getrusage) and the gateway
process's (from /proc), and the mock upstream's, which is the same work in
every phase. Ratios are against the in-process phase.

usage: .venv/bin/python bench/embed.py [--n 3000] [--profile debug|release]
(the package must be installed from the same profile: scripts/test.sh
installs the dev one; `pip install ./bindings/python` builds release)
"""

import argparse
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
import sluice

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
REQUEST = {"model": "gpt-test", "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}


def config(upstream):
    return f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream}/v1"
api_key = "sk-bench"

[[models]]
name = "gpt-test"
targets = [{{ provider = "up", model = "upstream-model" }}]
"""


def proc_cpu(pid):
    """User + system seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def start(args):
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return p, p.stdout.readline().strip()


def measure(name, call, n, pids):
    for _ in range(min(200, n // 10)):
        call()
    lat = []
    cpu0 = self_cpu()
    others0 = {k: proc_cpu(p) for k, p in pids.items()}
    t0 = time.perf_counter()
    for _ in range(n):
        s = time.perf_counter()
        call()
        lat.append(time.perf_counter() - s)
    wall = time.perf_counter() - t0
    lat.sort()
    row = {
        "phase": name,
        "p50_ms": lat[n // 2] * 1e3,
        "p99_ms": lat[int(n * 0.99)] * 1e3,
        "mean_ms": statistics.fmean(lat) * 1e3,
        "this_us": (self_cpu() - cpu0) / n * 1e6,
    }
    for k, p in pids.items():
        row[f"{k}_us"] = (proc_cpu(p) - others0[k]) / n * 1e6
    row["total_us"] = row["this_us"] + row.get("gateway_us", 0.0)
    row["this_share"] = (self_cpu() - cpu0) / wall
    row["gateway_share"] = row.get("gateway_us", 0.0) * n / 1e6 / wall
    row["upstream_share"] = row["upstream_us"] * n / 1e6 / wall
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--profile", default=os.environ.get("SLUICE_PROFILE", "debug"))
    a = ap.parse_args()
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / a.profile
    up, line = start([str(target / "mock-upstream"), "127.0.0.1:0"])
    upstream = "http://" + line.removeprefix("listening on ")
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "sluice.toml"
        cfg.write_text(config(upstream))
        gw_proc, ready = start([str(target / "sluice"), "serve", "--config", str(cfg)])
        words = ready.split()
        http_url = words[words.index("api") + 1]
        try:
            gw = sluice.Gateway(config(upstream))
            body = json.dumps(REQUEST)
            client = openai.OpenAI(base_url=f"{http_url}/v1", api_key="unused", max_retries=0)
            host, port = http_url.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port))

            def raw():
                conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                assert r.status == 200, data
                return json.loads(data)

            assert gw.chat(REQUEST)["choices"][0]["message"]["content"]
            assert client.chat.completions.create(**REQUEST).choices[0].message.content
            rows = [
                measure("inproc gw.chat", lambda: gw.chat(REQUEST), a.n, {"upstream": up.pid}),
                measure("http openai SDK", lambda: client.chat.completions.create(**REQUEST), a.n,
                        {"upstream": up.pid, "gateway": gw_proc.pid}),
                measure("http http.client", raw, a.n, {"upstream": up.pid, "gateway": gw_proc.pid}),
            ]
        finally:
            gw_proc.terminate()
            gw_proc.wait()
            up.kill()
            up.wait()
    base = rows[0]
    print(f"profile {a.profile}, n={a.n} sequential calls per phase, python {sys.version.split()[0]}")
    print(f"{'phase':18} {'p50 ms':>7} {'p99 ms':>7} {'this µs':>8} {'gw µs':>7} {'total µs':>9} "
          f"{'upstr µs':>8} {'p50 x':>6} {'cpu x':>6}  cpu share this/gw/upstream")
    for r in rows:
        print(f"{r['phase']:18} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f} {r['this_us']:8.1f} "
              f"{r.get('gateway_us', 0):7.1f} {r['total_us']:9.1f} {r['upstream_us']:8.1f} "
              f"{r['p50_ms'] / base['p50_ms']:6.2f} {r['total_us'] / base['total_us']:6.2f}  "
              f"{r['this_share']:.2f}/{r['gateway_share']:.2f}/{r['upstream_share']:.2f}")
    print("this µs: this process per call (the client; in-process, the gateway's threads too); "
          "gw µs: the separate gateway process; total = this + gw.")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""CPU per event at a steady pace, one in flight: the floor under the hub's push cost.

    python3 bench/paced.py [--rates 250,1000] [--seconds 5] [--rounds 3]

`bench/proxy.py` saturates the proxy, so system calls and wakeups are shared
by many requests. An agent hub is not driven that way: an instruction
arrives alone, every millisecond at 1,000/s, and the gateway sleeps between
two. Each one then pays the whole wakeup (the process scheduled in from an
idle core, caches cold) and wakes another process per write. This bench
measures that floor with nginx, on the same machine and in the same run:

- nginx `proxy_pass` (1 worker, core 0; upstream nginx on core 1) and Sluice
  bare proxying the ~1 KB chat request, one request at a time over one
  keep-alive connection from this script (core 1), paced at each rate.
  Both are the same exchange as a push: one event in (the request), one
  write out (upstream), one event in (the answer), one write out.
- Sluice's hub: `POST /v1/agents/{id}/instructions` with `wait_ack_ms`,
  posted by `bench/agents` (core 1) at the same rate to 100 agents that ack
  (heartbeats every 60 s, and the idle share subtracted:
  `push_gateway_cpu_us_net`).

Reported per rate: CPU µs per request or push (user + system of the proxy
or gateway process, from /proc), medians of the rounds, and each against
nginx's. Nothing here is saturated, by design; each row prints the pace its
generator kept (and says so when it fell behind) and the share of its core
the measured process used. Writes bench/results/paced.json.
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

import proxy as P

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", P.ROOT / "target")) / "release"
AGENTS = 100


def request_bytes(path):
    body = json.dumps({"model": "bench", "messages": [{"role": "user",
                                                       "content": "hello " * 150}]}).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def exchange(s, req):
    """Sends one request and reads its whole (Content-Length) answer."""
    s.sendall(req)
    buf = b""
    while True:
        got = s.recv(65536)
        if not got:
            raise SystemExit("the proxy closed the connection")
        buf += got
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            continue
        head = buf[:end].decode("latin-1").lower()
        if not head.startswith("http/1.1 200"):
            raise SystemExit(f"unexpected answer: {head[:200]}")
        length = int(head.split("content-length:")[1].split("\r\n")[0])
        while len(buf) < end + 4 + length:
            buf += s.recv(65536)
        return


def paced_chat(t, rate, seconds):
    """CPU µs per request of process `t.pid` at `rate`/s, one in flight."""
    host, port = t.url.split("//")[1].rsplit(":", 1)
    req = request_bytes(P.path_for(t, "bench"))
    with socket.create_connection((host, int(port))) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(200):
            exchange(s, req)
        before, start, n = P.user_sys_ticks(t.pid), time.monotonic(), 0
        while True:
            now = time.monotonic()
            if now >= start + seconds:
                break
            due = start + n / rate
            if due > now:
                time.sleep(due - now)
            exchange(s, req)
            n += 1
        after, wall = P.user_sys_ticks(t.pid), time.monotonic() - start
    user, system = ((after[i] - before[i]) / P.HZ * 1e6 / n for i in (0, 1))
    return {"cpu_us": user + system, "user_us": user, "sys_us": system, "rate": n / wall,
            "share": (user + system) * n / 1e6 / wall}


def start_hub(procs, work, name):
    port, admin = P.free_port(), P.free_port()
    conf = work / f"{name}.toml"
    conf.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin}"\n'
                    "[agents]\nheartbeat_ms = 60000\n")
    env = {**os.environ, "SLUICE_LOG": "warn"}
    p = procs.start(name, [str(P.SLUICE), "serve", "--config", str(conf)], "0", env)
    P.wait_port(port, p)
    return f"http://127.0.0.1:{port}", p.pid


def paced_push(url, pid, rate, seconds, net):
    cmd = ["taskset", "-c", "1", str(TARGET / "agents-load"), "--url", url,
           "--agents", str(AGENTS), "--pid", str(pid), "--idle-secs", "2", "--sources", "1",
           "--source-net", str(net), "--heartbeat-ms", "60000", "--rate", str(rate),
           "--pushes", str(int(rate * seconds)), "--wait-ack-ms", "5000",
           "--id-prefix", f"p{net}-"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    if r["push_http_errors"] or r["pushes_received"] != r["pushes"]:
        raise SystemExit(f"pushes lost: {r}")
    # The pace kept: the tool posts on a fixed tick, `push_seconds` is how
    # long the posts took. (Its system figure counts heartbeats too: every
    # 60 s for 100 agents, next to nothing.)
    kept = r["pushes"] / max(r["push_seconds"], 1e-9)
    return {"cpu_us": r["push_gateway_cpu_us_net"], "sys_us": r["push_gateway_sys_us_each"],
            "all_us": r["push_gateway_cpu_us_each"], "rate": kept,
            "share": r["push_gateway_cpu_us_each"] * kept / 1e6}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="250,1000")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    # This script paces the chat requests: it keeps to the load generators'
    # core, away from the proxy's.
    os.sched_setaffinity(0, {1})
    P.ensure_tools()
    for tool in (P.SLUICE, TARGET / "agents-load"):
        if not tool.exists():
            sys.exit(f"{tool} is missing: cargo build --release --bin sluice --bin agents-load")
    work = Path(tempfile.mkdtemp())
    procs = P.Procs(work)
    runs = {}
    nets = iter(range(20, 250))
    try:
        up, _ = P.start_upstream(procs, work)
        ng, _ = P.start_nginx(procs, work, up)
        sl, _ = P.start_sluice(procs, work, up, "sluice")
        hub_url, hub_pid = start_hub(procs, work, "hub")
        for rnd in range(args.rounds):
            for rate in (int(r) for r in args.rates.split(",")):
                for name, run in (("nginx chat", lambda: paced_chat(ng, rate, args.seconds)),
                                  ("sluice chat", lambda: paced_chat(sl, rate, args.seconds)),
                                  ("sluice push", lambda: paced_push(hub_url, hub_pid, rate,
                                                                     args.seconds, next(nets)))):
                    row = run()
                    runs.setdefault(f"{name} {rate}/s", []).append(row)
                    # Paced, nothing is saturated: what has to hold is the
                    # pace, kept by the generator whatever the process costs.
                    note = "" if row["rate"] >= 0.95 * rate else "  PACE NOT KEPT: generator behind"
                    print(f"round {rnd + 1} {name} at {rate}/s: {row['cpu_us']:.1f} µs CPU each "
                          f"({row['sys_us']:.1f} system), {row['rate']:.0f}/s kept, "
                          f"{row['share']:.0%} of its core{note}", flush=True)
    finally:
        procs.stop_all()
    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
    print("\nCPU µs per request or push (of it system; the push's system part counts its few"
          " heartbeats too), medians:\n")
    print("| rate | nginx chat | Sluice chat | × nginx | Sluice push (net) | × nginx |")
    print("|---|---|---|---|---|---|")
    for rate in (int(r) for r in args.rates.split(",")):
        n, c, p = (med[f"{k} {rate}/s"] for k in ("nginx chat", "sluice chat", "sluice push"))
        print(f"| {rate}/s | {n['cpu_us']:.1f} ({n['sys_us']:.1f}) | {c['cpu_us']:.1f} ({c['sys_us']:.1f})"
              f" | {c['cpu_us'] / n['cpu_us']:.2f} | {p['cpu_us']:.1f} ({p['sys_us']:.1f})"
              f" | {p['cpu_us'] / n['cpu_us']:.2f} |")
    out = P.ROOT / "bench" / "results" / "paced.json"
    out.write_text(json.dumps({"medians": med, "runs": runs, "seconds": args.seconds,
                               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What a gateway keeps after a burst of large requests.

    python3 bench/burst_memory.py BIN [BIN ...] [--clients 32] [--mib 3] [--rounds 2]

Each BIN (a `sluice` build) serves the built-in mock model; CLIENTS
concurrent chat requests of ~MIB MiB each arrive at once, ROUNDS times.
Printed per round: resident size (VmRSS) right after the burst, after 2 s
idle, and after five small requests and 1 s more (an allocator that purges
only on a later call of the thread that freed does it then); and the peak
(VmHWM). Nothing runs under memory pressure here, so the memory-pressure
watcher's trim (docs/cgroup.md) is not involved: this is what the allocator
hands back by itself. Compare a default build (mimalloc) with one built
`--no-default-features` (the C library's allocator).
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy import free_port, wait_port  # noqa: E402

CONF = """[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
max_body_bytes = {limit}
[[providers]]
name = "m"
kind = "mock"
[[models]]
name = "m"
targets = [{{ provider = "m" }}]
"""


def status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def post(port, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"status {r.status}")


def measure(binary, args, work):
    port, admin = free_port(), free_port()
    conf = Path(work) / "burst.toml"
    big = json.dumps({"model": "m", "messages": [
        {"role": "user", "content": "x" * int(args.mib * 1024 * 1024)}]})
    conf.write_text(CONF.format(port=port, admin=admin, limit=len(big) + 4096))
    p = subprocess.Popen([binary, "serve", "--config", str(conf)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={**os.environ, "SLUICE_LOG": "warn"})
    try:
        wait_port(port, p)
        small = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        post(port, small)
        print(f"{binary}: idle {status(p.pid, 'VmRSS'):.1f} MiB")
        for rnd in range(args.rounds):
            ts = [threading.Thread(target=post, args=(port, big)) for _ in range(args.clients)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            after = status(p.pid, "VmRSS")
            time.sleep(2)
            idle = status(p.pid, "VmRSS")
            for _ in range(5):
                post(port, small)
            time.sleep(1)
            print(f"  round {rnd + 1}: after the burst {after:.1f} MiB, 2 s idle {idle:.1f}, "
                  f"5 small requests + 1 s {status(p.pid, 'VmRSS'):.1f}")
        print(f"  peak {status(p.pid, 'VmHWM'):.1f} MiB")
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bins", nargs="+")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--mib", type=float, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for b in args.bins:
            measure(b, args, work)


if __name__ == "__main__":
    main()

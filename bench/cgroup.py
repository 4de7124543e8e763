#!/usr/bin/env python3
"""Sluice's memory under load inside a cgroup with limits, one table.

Each row starts the gateway (pinned to core 0) in a fresh cgroup child with a
memory limit and a CPU quota (cgroupfs: v2 when the machine has it, else v1;
without either it runs unconfined and says so), loads it with wrk (core 1)
and samples the gateway's RSS and the cgroup's working set every 50 ms.
The upstream is the built-in mock (no network), answering after 16 tokens
x `--token-ms`, so `c` connections hold `c` requests in flight.

    python3 bench/cgroup.py [--bin target/release/sluice] [--seconds 10]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def cgroup_dirs(name):
    """Make a child for memory and cpu; (memory dir, cpu dir, version)."""
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        d = Path("/sys/fs/cgroup") / name
        d.mkdir()
        return d, d, 2
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(","):
            own[c] = Path("/sys/fs/cgroup") / ctrls / path.lstrip("/")
    mem, cpu = own["memory"] / name, own["cpu"] / name
    mem.mkdir()
    cpu.mkdir()
    return mem, cpu, 1


def limit(mem, cpu, version, memory_bytes, cores):
    if version == 2:
        (mem / "memory.max").write_text(str(memory_bytes) if memory_bytes else "max")
        (cpu / "cpu.max").write_text(f"{int(cores * 100000)} 100000" if cores else "max 100000")
    else:
        if memory_bytes:
            (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
        (cpu / "cpu.cfs_period_us").write_text("100000")
        (cpu / "cpu.cfs_quota_us").write_text(str(int(cores * 100000)) if cores else "-1")


def metric(admin, name):
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def cpu_seconds(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run(args, memory_bytes, cores, conns, shed_percent=90, max_connections=None):
    name = f"sluice-bench-{os.getpid()}-{conns}-{memory_bytes}"
    try:
        mem, cpu, version = cgroup_dirs(name)
        limit(mem, cpu, version, memory_bytes, cores)
    except (OSError, KeyError) as e:
        print(f"# no cgroup child here ({e}): unconfined", file=sys.stderr)
        mem = cpu = None
        version = 0
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(f"""
[server]
memory_check_ms = 100
memory_shed_percent = {shed_percent}
{f"max_connections = {max_connections}" if max_connections else ""}
[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 16
token_delay_ms = {args.token_ms}
[[models]]
name = "bench"
targets = [{{ provider = "mock" }}]
""")
    cfg.close()

    def enter():
        os.sched_setaffinity(0, {0})
        for d in {mem, cpu} - {None}:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    gw = subprocess.Popen([args.bin, "serve", "--config", cfg.name, "--listen", "127.0.0.1:0",
                           "--admin-listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                          stderr=open(cfg.name + ".log", "w"), text=True, preexec_fn=enter,
                          env={**os.environ, "SLUICE_LOG": "warn"})
    words = gw.stdout.readline().split()
    api, admin = words[words.index("api") + 1], words[words.index("admin") + 1].removeprefix("http://")
    idle_rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{gw.pid}/status").read_text()).group(1)) * 1024
    peak = {"ws": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak["ws"] = max(peak["ws"], metric(admin, "sluice_cgroup_memory_working_set_bytes") or 0)
            except OSError:
                pass
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    c0, w0 = cpu_seconds(gw.pid), time.monotonic()
    wrk = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{args.seconds}s",
                          "-s", str(ROOT / "bench" / "chat.lua"), f"{api}/v1/chat/completions"],
                         capture_output=True, text=True)
    c1, w1 = cpu_seconds(gw.pid), time.monotonic()
    stop.set()
    t.join()
    alive = gw.poll() is None
    if alive:
        status = Path(f"/proc/{gw.pid}/status").read_text()
        hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) * 1024
        shed = metric(admin, "sluice_cgroup_shed_requests_total") or 0
        workers = metric(admin, "sluice_cgroup_workers")
        gw.terminate()
    else:
        hwm, shed, workers = 0, 0, 0
        print(f"# killed: {Path(cfg.name + '.log').read_text()[-600:]}", file=sys.stderr)
    gw.wait()
    os.unlink(cfg.name + ".log")
    os.unlink(cfg.name)
    for d in {mem, cpu} - {None}:
        for _ in range(50):
            try:
                d.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    summary = wrk.stdout.strip().splitlines()[-1] if wrk.stdout.strip() else "{}"
    import json
    s = json.loads(summary)
    rps = s.get("requests", 0) / (s.get("duration_us", 1) / 1e6)
    return {
        "cgroup": f"v{version}" if version else "none",
        "shed_at": f"{shed_percent}%" if shed_percent else "off",
        "gateway": "alive" if alive else f"killed ({-gw.returncode})",
        "memory_limit": f"{memory_bytes // MIB} MiB" if memory_bytes else "none",
        "max_connections": max_connections or "fitted",
        "cpu": f"{cores}" if cores else "none",
        "workers": int(workers or 0),
        "c": conns,
        "rps": round(rps),
        "non2xx": s.get("non2xx"),
        "shed": int(shed),
        "p99_ms": round(s.get("p99_us", 0) / 1000, 1),
        "idle_rss_mib": round(idle_rss / MIB, 1),
        "peak_rss_mib": round(hwm / MIB, 1),
        "peak_working_set_mib": round(peak["ws"] / MIB, 1),
        "gateway_cpu_share": round((c1 - c0) / (w1 - w0), 2),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default=str(ROOT / "target" / "release" / "sluice"))
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--token-ms", type=int, default=5)
    p.add_argument("--tight-mib", type=int, default=64,
                   help="the limit of the last three rows, below what 2000 requests in flight need")
    p.add_argument("--rows", type=lambda v: {int(x) for x in v.split(",")}, default=None,
                   help="only these rows (0-based, comma-separated)")
    args = p.parse_args()
    table = [
        (0, 0, 64), (256 * MIB, 1, 64), (256 * MIB, 1, 2000), (64 * MIB, 1, 64),
        (args.tight_mib * MIB, 1, 2000),
        # The connection cap set high by hand, so 2000 requests get in: shedding
        # on, then off (the OOM killer).
        (args.tight_mib * MIB, 1, 2000, 90, 65536), (args.tight_mib * MIB, 1, 2000, 0, 65536)]
    rows = [run(args, *row) for i, row in enumerate(table) if args.rows is None or i in args.rows]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What an io_uring data plane could save, measured before building one.

    python3 bench/uring.py [--rounds 3] [--duration 4] [--conns 16,64]

bench/proxy.py's setup (static nginx upstream on core 1 with wrk, the proxy
under test alone on core 0, the ~1 KB chat request), for four proxies:
nginx `proxy_pass`; `uring-probe` (bench/uring: a minimal HTTP/1.1 relay on
monoio, one thread) on its **epoll** driver, on its **io_uring** driver,
and on io_uring set up with COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN —
the same code, only the driver differs; and Sluice bare. Reported per
request: the proxy's user and system CPU µs (from /proc), its system calls
(`perf stat -e raw_syscalls:sys_enter`, when perf is there), req/s and
p99, and each process's CPU share: a row whose proxy is under 90 % of its
core is flagged (the generator's core set the pace; per-request CPU of an
unsaturated proxy includes more idle wake-ups). Three rounds, medians,
written to bench/results/uring.json. The
probe's epoll → io_uring difference is what the driver alone could take off
a request; compare it with Sluice's user time to see where its cost is.
"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy as P  # noqa: E402

PROBE = P.ROOT / "target" / "release" / "uring-probe"


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def syscalls(pid, secs):
    """System calls the process makes in `secs` (None without perf)."""
    if not shutil.which("perf"):
        return None
    out = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", str(pid),
                          "--", "sleep", str(secs)], capture_output=True, text=True).stderr
    for line in out.splitlines():
        if "raw_syscalls:sys_enter" in line and line.split(",")[0].strip().isdigit():
            return int(line.split(",")[0])
    return None


def one(t, up_pid, conns, dur):
    env = {"MODEL": "bench", "STREAM": "0"}
    P.wrk(t.url + t.path, conns, 1, env)  # warm-up
    (u0, s0), up0, b0 = cpu(t.pid), P.ticks(up_pid), P.core_busy()
    r0 = P.resource.getrusage(P.resource.RUSAGE_CHILDREN)
    s = P.wrk(t.url + t.path, conns, dur, env)
    r1 = P.resource.getrusage(P.resource.RUSAGE_CHILDREN)
    (u1, s1), up1, b1 = cpu(t.pid), P.ticks(up_pid), P.core_busy()
    n = max(s["requests"], 1)
    secs = s["duration_us"] / 1e6
    row = {"rps": s["requests"] / secs, "p99_ms": s["p99_us"] / 1e3,
           "errors": s["socket_errors"] + s["non2xx"],
           "user_us": (u1 - u0) / P.HZ * 1e6 / n, "sys_us": (s1 - s0) / P.HZ * 1e6 / n,
           # Who set the pace: the proxy's share of its core, the upstream's
           # and wrk's (both on core 1), and core 1's busy share.
           "proxy_share": (u1 - u0 + s1 - s0) / P.HZ / secs,
           "upstream_share": (up1 - up0) / P.HZ / secs,
           "wrk_share": (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / secs,
           "core1_busy": (b1[1][0] - b0[1][0]) / max(b1[1][1] - b0[1][1], 1)}
    row["cpu_us"] = row["user_us"] + row["sys_us"]
    # System calls per request, over a second wrk run of its own (perf's
    # counting costs a little; it is kept out of the CPU figures above).
    proc = subprocess.Popen(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", "-d3s",
                             "-s", str(P.LUA), t.url + t.path], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={**P.os.environ, **env}, text=True)
    time.sleep(0.5)
    calls = syscalls(t.pid, 2)
    out = proc.communicate()[0]
    done = json.loads(out.strip().splitlines()[-1])
    rate = done["requests"] / (done["duration_us"] / 1e6)
    row["syscalls"] = calls / (rate * 2) if calls is not None and rate else None
    return row


def start_probe(procs, up, driver):
    port = P.free_port()
    p = procs.start(f"probe-{driver}", [str(PROBE), driver, f"127.0.0.1:{port}",
                                        f"127.0.0.1:{up}"], "0")
    P.wait_port(port, p)
    return P.Target(f"probe-{driver}", f"http://127.0.0.1:{port}", p.pid)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--conns", default="16,64")
    args = ap.parse_args()
    P.ensure_tools()
    if not PROBE.exists() or not P.SLUICE.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "uring-probe", "-p", "sluice",
                        "--bin", "uring-probe", "--bin", "sluice"], cwd=P.ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="sluice-uring-"))
    procs = P.Procs(work)
    results = {}
    try:
        up, up_pid = P.start_upstream(procs, work)
        ng, _ = P.start_nginx(procs, work, up)
        ng.path = P.path_for(ng, "bench")
        targets = [ng] + [start_probe(procs, up, d) for d in ("epoll", "uring", "uring-defer")]
        bare, _ = P.start_sluice(procs, work, up, "sluice-bare")
        targets.append(bare)
        for r in range(args.rounds):
            print(f"round {r + 1}", flush=True)
            for c in (int(x) for x in args.conns.split(",")):
                for t in targets:
                    row = one(t, up_pid, c, args.duration)
                    results.setdefault(f"{t.name} c={c}", []).append(row)
                    print(f"  {t.name} c={c}: {row['rps']:.0f}/s p99 {row['p99_ms']:.2f} ms, "
                          f"user {row['user_us']:.2f} sys {row['sys_us']:.2f} µs/req, "
                          f"syscalls/req {row['syscalls'] or 0:.2f}, proxy {row['proxy_share']:.0%} "
                          f"upstream {row['upstream_share']:.0%} wrk {row['wrk_share']:.0%}"
                          f"{P.check(t.name, row)}", flush=True)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: {f: statistics.median(x[f] for x in v if x[f] is not None)
               if any(x[f] is not None for x in v) else None for f in v[0]}
           for k, v in results.items()}
    print(f"\n{args.rounds} rounds of {args.duration} s, medians; proxy on core 0, "
          "upstream nginx and wrk on core 1\n")
    print("| proxy | req/s | p99 ms | user µs/req | sys µs/req | CPU µs/req | syscalls/req "
          "| proxy / upstream / wrk CPU share | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, m in med.items():
        calls = f"{m['syscalls']:.2f}" if m["syscalls"] is not None else "–"
        print(f"| {k} | {m['rps']:,.0f} | {m['p99_ms']:.2f} | {m['user_us']:.2f} | "
              f"{m['sys_us']:.2f} | {m['cpu_us']:.2f} | {calls} | {m['proxy_share']:.0%} / "
              f"{m['upstream_share']:.0%} / {m['wrk_share']:.0%} |{P.check(k, m)} |")
    out = P.ROOT / "bench" / "results" / "uring.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "rounds": args.rounds, "duration_s": args.duration,
                               "median": med}, indent=1) + "\n")


if __name__ == "__main__":
    main()

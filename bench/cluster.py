#!/usr/bin/env python3
"""The agent hub across replicas: N Sluice replicas + Redis + N load processes
(`bench/agents`, each under the 20,000 open-files limit), one table.

    [SLUICE_BIN=…] python3 bench/cluster.py [--agents 19000] [--rate 1000] [--seconds 5]
                             [--only single,single-redis,three-idle,three-fds,three,five,kill]

Every replica gets the same configuration (`[redis]` when the row has it;
`[agents] heartbeat_ms = 5000`). Replica i is pinned to core i % 2 and load
process k to core (k + 1) % 2, so on this 2-core machine each core carries a
mix; Redis (Debian's redis-server) is unpinned. Load process k connects
`--agents` agents (ids `r{k}-…`) to replica k — one replica after another, or
all at once (row `five`) — then, once all are connected, every process posts
instructions at rate/N per second with `wait_ack_ms` (the figure is the
instruction -> ack round trip seen by the poster): process 0 to its own
replica (in-replica), the others through replica k+1 (cross-replica, the
instruction travels by Redis pub/sub). Per-push latencies are merged over the
processes before percentiles are taken.

Row `kill`: two replicas; 19,000 agents on A, which is SIGKILLed 2 s into the
pushes (posted through B with wait_ack_ms = 10000); the agents reconnect to B
(spread over welcome's reconnect_jitter_ms). Reported: the time until all are
back, and instructions lost (not acked within their wait).

Each row also prints each process's CPU share over the row (sluice replicas,
load processes, redis), so a row where the load tool, not the gateway, is
the bottleneck shows it.
"""

import argparse
import itertools
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import foreign

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
SLUICE = Path(os.environ.get("SLUICE_BIN", TARGET / "sluice"))
HZ = foreign.HZ
HEARTBEAT_MS = 5000
# Each load process connects from its own 127.X.0.0/24, X fresh per process
# and row (starting at random): a source port that an earlier run left in
# TIME_WAIT towards the same address never comes up again, which would
# otherwise stall connects by SYN retransmits (1 s, 3 s, …) — erratic
# connect times that are the load generator's, not the gateway's.
SOURCE_NETS = itertools.cycle(random.sample(range(1, 255), 254))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def runq_ns(pid):
    """Nanoseconds the process's threads spent runnable but waiting for a
    CPU (second field of /proc/PID/task/TID/schedstat, summed)."""
    total = 0
    try:
        for t in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((t / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    except OSError:
        pass
    return total


def steal_ticks():
    """The machine's steal time so far (the hypervisor ran someone else
    while a vCPU wanted to run), from /proc/stat, in clock ticks."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(f[8]), sum(int(x) for x in f[1:9])


def time_wait():
    """TCP sockets in TIME_WAIT on this machine (/proc/net/sockstat)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            f = line.split()
            return int(f[f.index("tw") + 1])
    return 0


def settle_time_wait(limit=1000, timeout=70):
    """Waits for earlier runs' TIME_WAIT sockets to expire: the kernel
    frees them in bursts (10–30 ms of softirq on whatever process runs),
    which would otherwise land in this row's latencies."""
    deadline = time.monotonic() + timeout
    n = time_wait()
    if n > limit:
        print(f"waiting for {n} TIME_WAIT sockets of earlier runs to expire", file=sys.stderr)
    while n > limit and time.monotonic() < deadline:
        time.sleep(1)
        n = time_wait()


def wait_port(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def raise_fd_limit():
    """preexec: the open-files soft limit up to the hard one (one
    descriptor per agent; 20,000 on our machines)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pct(xs, p):
    if not xs:
        return 0
    xs = sorted(xs)
    return xs[round((len(xs) - 1) * p)]


class Cluster:
    def __init__(self, work, replicas, redis, ttl_ms=None):
        self.work, self.procs, self.urls, self.pids = work, [], [], []
        self.redis = None
        cfg = f"[agents]\nheartbeat_ms = {HEARTBEAT_MS}\nqueue_depth = 64\n"
        if ttl_ms:
            cfg += f"presence_ttl_ms = {ttl_ms}\n"
        if redis:
            port = free_port()
            self.redis = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--maxclients", "1000"],
                stdout=open(work / "redis.log", "w"), stderr=subprocess.STDOUT)
            wait_port(port)
            cfg = f'[redis]\nurl = "redis://127.0.0.1:{port}"\n' + cfg
        (work / "hub.toml").write_text(cfg)
        for i in range(replicas):
            port, admin = free_port(), free_port()
            p = subprocess.Popen(
                ["taskset", "-c", str(i % 2), str(SLUICE), "serve",
                 "--config", str(work / "hub.toml"),
                 "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
                stdout=subprocess.DEVNULL, stderr=open(work / f"replica{i}.log", "w"),
                env={**os.environ, "SLUICE_LOG": "warn"}, preexec_fn=raise_fd_limit)
            self.procs.append(p)
            self.urls.append(f"http://127.0.0.1:{port}")
            self.pids.append(p.pid)
            wait_port(port)

    def stop(self):
        for p in self.procs + ([self.redis] if self.redis else []):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()


def load(c, k, agents, extra, work):
    """Starts load process k against replica k; returns (proc, stderr path)."""
    err = work / f"load{k}.err"
    cmd = ["taskset", "-c", str((k + 1) % 2), str(TARGET / "agents-load"),
           "--url", c.urls[k], "--agents", str(agents), "--id-prefix", f"r{k}-",
           "--pid", str(c.pids[k]), "--idle-secs", "2", "--sources", "4",
           "--source-net", str(next(SOURCE_NETS)),
           "--heartbeat-ms", str(HEARTBEAT_MS)] + extra
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(err, "w"),
                         text=True, preexec_fn=raise_fd_limit)
    return p, err


def wait_connected(err, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "connected " in err.read_text():
            return
        if proc.poll() is not None:
            raise SystemExit(f"load process failed: {err.read_text()[-2000:]}")
        time.sleep(0.05)
    raise SystemExit("agents did not connect in time")


def row(name, replicas, redis, agents, rate, seconds, at_once=False, bystander_fds=0):
    settle_time_wait()
    work = Path(tempfile.mkdtemp(prefix="sluice-cluster-"))
    bystander = foreign.Bystander(bystander_fds) if bystander_fds else None
    c = Cluster(work, replicas, redis)
    try:
        start = work / "start"
        per_rate = max(1, rate // replicas)
        pushes = per_rate * seconds
        loads = []
        for k in range(replicas):
            target = k if k == 0 or replicas == 1 else (k + 1) % replicas
            extra = ["--rate", str(per_rate), "--pushes", str(pushes), "--wait-ack-ms", "10000",
                     "--push-url", c.urls[target], "--push-pid", str(c.pids[target]),
                     "--start-file", str(start), "--linger-secs", "3",
                     "--samples-out", str(work / f"samples{k}.json")]
            loads.append(load(c, k, agents, extra, work))
            if not at_once:
                wait_connected(loads[-1][1], loads[-1][0])
        for p, err in loads:
            wait_connected(err, p)
        time.sleep(2.5)  # every process past its idle window
        procs = c.pids + [p.pid for p, _ in loads] + ([c.redis.pid] if c.redis else [])
        ours = set(procs) | {os.getpid()} | set(bystander.pids() if bystander else [])
        before, bursts = foreign.snapshot(), foreign.Bursts(1).start()
        t0, cpu0 = time.monotonic(), {pid: foreign.cpu_ticks(pid) for pid in procs}
        rq0, st0 = {pid: runq_ns(pid) for pid in procs}, steal_ticks()
        start.touch()
        # Each prints its JSON, then lingers: CPU is read before they exit.
        outs = [json.loads(p.stdout.readline()) for p, _ in loads]
        wall = time.monotonic() - t0
        bursts.stop()
        busy_outside = foreign.outside(before, foreign.snapshot(), ours)
        share = {pid: (foreign.cpu_ticks(pid) - cpu0[pid]) / HZ / wall for pid in procs}
        # Run-queue wait per second of the row: a process that had work
        # but no CPU — time that lands in the push latencies.
        runq = {pid: (runq_ns(pid) - rq0[pid]) / 1e6 / wall for pid in procs}
        st1 = steal_ticks()
        steal = (st1[0] - st0[0]) / max(1, st1[1] - st0[1])
        for p, _ in loads:
            p.wait()
        samples = [json.loads((work / f"samples{k}.json").read_text()) for k in range(replicas)]
        local = samples[0]["round_trip_us"]
        cross = [x for s in samples[1:] for x in s["round_trip_us"]]
        # The same pushes without those in flight while the machine's init
        # (PID 1) ran: see bench/foreign.py.
        windows = bursts.windows()
        timed = [[((s["base_unix_us"] + t) / 1e6, r / 1e6) for t, r in s["sent_at_and_round_trip_us"]]
                 for s in samples]
        kept = [foreign.clear(x, windows) for x in timed]
        local_clear = [r * 1e6 for _, r in kept[0]]
        cross_clear = [r * 1e6 for k in kept[1:] for _, r in k]
        net = [o["push_gateway_cpu_us_net"] for o in outs]
        return {
            "row": name,
            "connect_seconds": [o["connect_seconds"] for o in outs],
            "agents": sum(o["agents_connected"] for o in outs),
            "lost": sum(o["agents_lost"] for o in outs),
            "errors": sum(o["push_http_errors"] for o in outs),
            "local_p99_ms": pct(local, 0.99) / 1000,
            "cross_ms": [pct(cross, 0.5) / 1000, pct(cross, 0.99) / 1000, max(cross, default=0) / 1000]
            if cross else None,
            "pid1_cpu_ms": round(bursts.ticks * 1000 / HZ),
            "pid1_bursts": len(windows),
            "outside_cpu_ms": [[n, pid, round(ms)] for n, pid, ms in busy_outside],
            "clear_share": round(sum(map(len, kept)) / max(1, sum(map(len, timed))), 3),
            "local_p99_clear_ms": pct(local_clear, 0.99) / 1000,
            "cross_clear_ms": [pct(cross_clear, 0.5) / 1000, pct(cross_clear, 0.99) / 1000,
                               max(cross_clear, default=0) / 1000] if cross else None,
            "bystander_fds": bystander_fds,
            "rate": per_rate * replicas,
            "net_cpu_us_agents_replica": net,
            # The agents' replica's CPU per push, heartbeats included, and
            # the kernel's part of that.
            "cpu_us_agents_replica": [o["push_gateway_cpu_us_each"] for o in outs],
            "sys_cpu_us_agents_replica": [o["push_gateway_sys_us_each"] for o in outs],
            "cpu_share": {
                "sluice": [round(share[p], 2) for p in c.pids],
                "load": [round(share[p.pid], 2) for p, _ in loads],
                "redis": round(share[c.redis.pid], 2) if c.redis else None,
            },
            "runq_ms_per_s": {
                "sluice": [round(runq[p], 1) for p in c.pids],
                "load": [round(runq[p.pid], 1) for p, _ in loads],
                "redis": round(runq[c.redis.pid], 1) if c.redis else None,
            },
            "steal": round(steal, 3),
        }
    finally:
        c.stop()
        if bystander:
            bystander.stop()


def kill_row(agents, rate):
    settle_time_wait()
    work = Path(tempfile.mkdtemp(prefix="sluice-cluster-"))
    c = Cluster(work, 2, True, ttl_ms=3000)
    try:
        extra = ["--rate", str(rate), "--pushes", str(rate * 8), "--wait-ack-ms", "10000",
                 "--push-url", c.urls[1], "--push-pid", str(c.pids[1]),
                 "--failover-url", c.urls[1], "--kill-pid", str(c.pids[0]),
                 "--kill-after-ms", "2000"]
        p, err = load(c, 0, agents, extra, work)
        out = json.loads(p.communicate()[0].strip().splitlines()[-1])
        return {
            "row": "kill", "agents": out["agents_connected"],
            "dropped": out["agents_dropped"], "reconnected": out["agents_reconnected"],
            "reconnect_seconds": out["reconnect_seconds"],
            "refused_paced": out["connects_refused_paced"],
            "pushes": out["pushes"], "lost": out["push_http_errors"], "failures": out["push_failures"],
            "ack_round_trip_us": [out["ack_round_trip_us_p50"], out["ack_round_trip_us_p99"],
                                  out["ack_round_trip_us_max"]],
        }
    finally:
        c.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=19000, help="agents per replica")
    ap.add_argument("--rate", type=int, default=1000, help="instructions/s over the cluster")
    ap.add_argument("--seconds", type=int, default=5, help="seconds of pushes per row")
    ap.add_argument("--only", default="single,single-redis,three-idle,three-fds,three,five,kill")
    ap.add_argument("--heartbeat-ms", type=int, default=5000, help="[agents] heartbeat_ms")
    a = ap.parse_args()
    global HEARTBEAT_MS
    HEARTBEAT_MS = a.heartbeat_ms
    for b in ("sluice", "agents-load"):
        if not (TARGET / b).exists():
            raise SystemExit(f"build first: cargo build --release -p sluice --bin sluice -p agents-load ({TARGET / b})")
    rows = {
        "single": lambda: row("one replica, no [redis]", 1, False, a.agents, a.rate, a.seconds),
        "single-redis": lambda: row("one replica, [redis]", 1, True, a.agents, a.rate, a.seconds),
        "three-idle": lambda: row("three replicas + Redis, 100 agents", 3, True, 34, a.rate, a.seconds),
        "three-fds": lambda: row(f"three replicas + Redis, 100 agents, a bystander holding "
                                 f"{6 * a.agents} descriptors", 3, True, 34, a.rate, a.seconds,
                                 bystander_fds=6 * a.agents),
        "three": lambda: row(f"three replicas + Redis, {3 * a.agents} agents (one replica after another)",
                             3, True, a.agents, a.rate, a.seconds),
        "five": lambda: row(f"five replicas + Redis, {5 * a.agents} agents (at once)",
                            5, True, a.agents, a.rate, a.seconds, at_once=True),
        "kill": lambda: kill_row(a.agents, a.rate // 2),
    }
    results = []
    for name in a.only.split(","):
        r = rows[name]()
        results.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    print("\n| setup | connect s (per replica) | in-replica round trip p99 ms | cross-replica round trip p50 / p99 / max ms | errors | CPU µs per push, agents' replica: all (of it kernel) / net of heartbeats | CPU share sluice / load / redis | run-queue wait ms/s sluice / load / redis | steal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r["row"] == "kill":
            continue
        cross = " / ".join(f"{x:.1f}" for x in r["cross_ms"]) if r["cross_ms"] else "–"
        cs, rq = r["cpu_share"], r["runq_ms_per_s"]
        print(f"| {r['row']} ({r['agents']} agents, {r['rate']}/s) | {', '.join(map(str, r['connect_seconds']))}"
              f" | {r['local_p99_ms']:.1f} | {cross} | {r['errors']} lost agents {r['lost']}"
              f" | {r['cpu_us_agents_replica']} ({r['sys_cpu_us_agents_replica']})"
              f" / {r['net_cpu_us_agents_replica']}"
              f" | {cs['sluice']} / {cs['load']} / {cs['redis']}"
              f" | {rq['sluice']} / {rq['load']} / {rq['redis']} | {r['steal']:.0%} |")
    print("\nThe same pushes without those in flight while the machine's init (PID 1) ran"
          " (bench/foreign.py):\n")
    print("| setup | PID 1 CPU ms (bursts) | busiest outside the test (ms) | pushes kept"
          " | in-replica p99 ms | cross-replica p50 / p99 / max ms |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if r["row"] == "kill" or "clear_share" not in r:
            continue
        cross = " / ".join(f"{x:.1f}" for x in r["cross_clear_ms"]) if r["cross_clear_ms"] else "–"
        busy = ", ".join(f"{n} {ms}" for n, _, ms in r["outside_cpu_ms"]) or "–"
        print(f"| {r['row']} | {r['pid1_cpu_ms']} ({r['pid1_bursts']}) | {busy} | {r['clear_share']:.1%}"
              f" | {r['local_p99_clear_ms']:.1f} | {cross} |")
    for r in results:
        if r["row"] == "kill":
            print(f"\nreplica killed with {r['agents']} agents: {r['dropped']} dropped, {r['reconnected']} back"
                  f" on the survivor in {r['reconnect_seconds']} s ({r['refused_paced']} connects paced);"
                  f" {r['lost']} of {r['pushes']} instructions (wait_ack_ms 10000) lost;"
                  f" round trip p50/p99/max {r['ack_round_trip_us']} µs")
    # Rows run now replace the same rows of earlier runs; the others stay
    # (an `--only` run must not drop the table's other rows).
    out = ROOT / "bench" / "results" / "cluster.json"
    kept = json.loads(out.read_text()) if out.exists() else []
    ran = {r["row"] for r in results}
    out.write_text(json.dumps([r for r in kept if r["row"] not in ran] + results, indent=2))


if __name__ == "__main__":
    main()

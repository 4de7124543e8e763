"""CPU that processes outside a bench take while it runs, and which of the
bench's samples it lands on.

On our 2-core VMs the machine's init (PID 1, the sandbox's process API)
wakes every ~3 s and reads every process's open file descriptors: ~1 µs
each, ~100 ms of one core with the 114,000 descriptors of 57,000 agents
(their sockets in the replicas and in the load tools), whatever they are —
a bystander holding as many `/dev/null` descriptors costs the same. A row
whose replicas and load tools are pinned to the two cores stalls for that
long (`bench/cluster.py` row `three-fds`). `Bursts` samples one outside
process's CPU time (all its threads) every few milliseconds and keeps the
windows in which it ran; `clear` drops the samples in flight during one.
"""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from proxy import HZ, stat_ticks


def cpu_ticks(pid):
    """User + system ticks of `pid` so far; 0 once it is gone."""
    try:
        return sum(stat_ticks(Path(f"/proc/{pid}/stat").read_text()))
    except (OSError, IndexError):
        return 0


class Bursts:
    """The windows (Unix seconds) in which process `pid` used the CPU."""

    def __init__(self, pid=1, every=0.003):
        self.pid, self.every, self.on = pid, every, False
        self.ticks, self.hits = 0, []
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def start(self):
        self.on = True
        self.thread.start()
        return self

    def stop(self):
        self.on = False
        self.thread.join()
        return self

    def sample(self):
        prev = cpu_ticks(self.pid)
        while self.on:
            time.sleep(self.every)
            now = cpu_ticks(self.pid)
            if now != prev:
                self.hits.append((time.time(), now - prev))
                self.ticks += now - prev
                prev = now

    def windows(self, merge=0.02):
        """Each tick seen at t ran in the tick before it (and the sampling
        gap): [t - n/HZ - every, t]; windows closer than `merge` join."""
        out = []
        for t, n in self.hits:
            lo = t - n / HZ - self.every
            if out and lo - out[-1][1] < merge:
                out[-1][1] = t
            else:
                out.append([lo, t])
        return out


def clear(samples, windows):
    """The (sent, round trip) samples, in seconds, in flight during none
    of the windows."""
    keep = []
    for sent, rtt in samples:
        if not any(sent < hi and sent + rtt > lo for lo, hi in windows):
            keep.append((sent, rtt))
    return keep


def snapshot():
    """CPU ticks so far of every process on the machine: pid -> (name, ticks)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                raw = Path(f"/proc/{d}/stat").read_text()
                name = raw[raw.index("(") + 1:raw.rindex(")")]
                out[int(d)] = (name, sum(stat_ticks(raw)))
            except (OSError, ValueError, IndexError):
                pass
    return out


def outside(before, after, ours, top=3):
    """The busiest processes not in `ours` between two snapshots:
    [(name, pid, CPU ms)]."""
    used = [(after[p][0], p, (after[p][1] - before.get(p, (None, 0))[1]) * 1000 / HZ)
            for p in after if p not in ours]
    return sorted((u for u in used if u[2] > 0), key=lambda u: -u[2])[:top]


class Bystander:
    """Processes that only hold `fds` open descriptors (of /dev/null), up
    to `per` each: what a row's agents hold, without their traffic."""

    CODE = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))\n"
            "keep = [open('/dev/null') for _ in range(int(sys.argv[1]))]\n"
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n")

    def __init__(self, fds, per=19000):
        self.procs = []
        while fds > 0:
            n = min(fds, per)
            self.procs.append(subprocess.Popen([sys.executable, "-c", self.CODE, str(n)],
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               text=True))
            fds -= n
        for p in self.procs:
            if p.stdout.readline().strip() != "ready":
                raise SystemExit("bystander could not open its descriptors (open-files limit?)")

    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        for p in self.procs:
            p.stdin.close()
            p.wait()

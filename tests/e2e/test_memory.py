"""What the gateway keeps after a burst of large requests.

The binary's allocator (`crates/sluice-alloc`: mimalloc, blocks of 1 MiB
and more mapped on their own, each worker handing its heap's free pages
back when it parks after a burst, and a sweep a second later that wakes
every worker to do so) gives a burst's memory back within a second or two
of going idle. mimalloc alone kept 50-90 MiB of it for as long as the
gateway stayed idle; without the sweep a worker no timer woke kept up to
16 MiB (`bench/burst_memory.py`).
"""

import threading
from pathlib import Path

import httpx

from conftest import MOCK_MODEL, Gateway, wait_for

MIB = 1 << 20
CLIENTS = 24


def resident_mib(pid, key="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def test_a_burst_of_large_requests_is_handed_back_once_idle(tmp_path):
    # Two workers: a burst lands on both, and each must hand back its own.
    g = Gateway(MOCK_MODEL + "\n[server]\nworkers = 2\nmax_body_bytes = 8388608\n", tmp_path=tmp_path)
    try:
        small = {"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(3):
            assert httpx.post(f"{g.base_url}/chat/completions", json=small).status_code == 200
        idle = resident_mib(g.proc.pid)
        big = {"model": "mock-1", "messages": [{"role": "user", "content": "x" * (3 * MIB)}]}
        statuses = []

        def post():
            r = httpx.post(f"{g.base_url}/chat/completions", json=big, timeout=120)
            statuses.append(r.status_code)

        for round_ in range(2):
            ts = [threading.Thread(target=post) for _ in range(CLIENTS)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            assert statuses == [200] * (CLIENTS * (round_ + 1)), statuses
            # The burst did take memory: ~3 MiB a request, several copies.
            peak = resident_mib(g.proc.pid, "VmHWM")
            assert peak >= idle + 30, f"idle {idle:.1f} MiB, peak {peak:.1f}"
            # Handed back with nothing more arriving, by both workers.
            try:
                wait_for(lambda: resident_mib(g.proc.pid) <= idle + 4, timeout=6)
            except AssertionError:
                now = resident_mib(g.proc.pid)
                raise AssertionError(f"round {round_ + 1}: {now:.1f} MiB resident 6 s after "
                                     f"the burst, idle was {idle:.1f}") from None
    finally:
        g.stop()

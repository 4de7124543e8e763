"""cgroup awareness: limits read at start (from recorded cgroup v2 files, and
from a real cgroup child where this machine lets the test make one), the
worker threads and gauges sized from them, and new requests shed with 503
under memory pressure until it passes."""

import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import MOCK_MODEL, Gateway, wait_for

MIB = 1 << 20


def chat(g):
    return httpx.post(f"{g.base_url}/chat/completions",
                      json={"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]})


def v2_files(d, current):
    files = {
        "cgroup.controllers": "cpu memory pids\n",
        "cpu.max": "50000 100000\n",
        "memory.max": f"{256 * MIB}\n",
        "memory.high": f"{192 * MIB}\n",
        "memory.current": f"{current}\n",
        "memory.stat": f"anon {current}\ninactive_file 0\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
        "memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    }
    # Each file replaced whole, as the kernel's are read: a reader never
    # sees one truncated half-way (an empty memory.current reads as no use).
    for name, text in files.items():
        tmp = d / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, d / name)


class Growing:
    """memory.current climbing 2 MiB every 20 ms from `start_mib`, as a
    gateway filling up does, until stopped."""

    def __init__(self, root, start_mib):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, args=(root, start_mib), daemon=True)
        self.thread.start()

    def run(self, root, mib):
        while not self.stop.is_set():
            v2_files(root, mib * MIB)
            mib += 2
            time.sleep(0.02)

    def end(self):
        self.stop.set()
        self.thread.join()


def settled(read, gap=0.2, timeout=5.0):
    """`read()` once it returns the same value twice `gap` seconds apart."""
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(gap)
        now = read()
        if now == last:
            return now
        last = now
    raise AssertionError(f"never settled (last {last})")


def test_recorded_v2_limits_size_the_gateway_and_pressure_sheds(tmp_path):
    root = tmp_path / "cgroup"
    root.mkdir()
    v2_files(root, 40 * MIB)
    cfg = MOCK_MODEL + "\n[server]\nmemory_check_ms = 50\n"
    g = Gateway(cfg, tmp_path=tmp_path, env={"SLUICE_CGROUP_ROOT": str(root)})
    try:
        assert g.metric("sluice_cgroup_version") == 2
        assert g.metric("sluice_cgroup_cpu_limit_cores") == 0.5
        assert g.metric("sluice_cgroup_workers") == 1, "half a core: one worker"
        assert g.metric("tokio_workers") == 1
        assert g.metric("sluice_cgroup_memory_max_bytes") == 256 * MIB
        assert g.metric("sluice_cgroup_memory_high_bytes") == 192 * MIB
        wait_for(lambda: g.metric("sluice_cgroup_memory_working_set_bytes") == 40 * MIB, what="usage read")
        start = [json.loads(line) for line in g.logs().splitlines() if '"cgroup limits"' in line]
        assert start and start[0]["memory_budget"] == "192 MiB" and start[0]["workers"] == 1, g.logs()
        assert chat(g).status_code == 200

        # Past 90% of memory.high: new requests are refused — on a connection
        # already open by the API's middleware, a new connection with a fixed
        # 503 at accept (no task, no buffers) — health passes on the admin
        # listener, readiness fails so load balancers send traffic elsewhere.
        # Two kept connections: one through the router (httpx asks for
        # compression), one that asks for none and so may skip the router
        # (`crate::direct`): both must be refused.
        kept = httpx.Client()
        plain = httpx.Client(headers={"accept-encoding": "identity"})
        for c in (kept, plain):
            assert c.post(f"{g.base_url}/chat/completions",
                          json={"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        pushing = httpx.Client(headers={"accept-encoding": "identity"})
        r = pushing.post(f"{g.base_url}/agents/a1/instructions", json={"payload": 1})
        assert r.status_code == 404, r.text
        growing = Growing(root, 175)
        wait_for(lambda: g.metric("sluice_cgroup_shedding") == 1, what="shedding")
        for c in (kept, plain):
            r = c.post(f"{g.base_url}/chat/completions",
                       json={"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert r.headers["connection"] == "close", "its buffers go too"
            assert r.json()["error"]["code"] == "memory_pressure"
        # An instruction to an agent, which may skip the router too.
        r = pushing.post(f"{g.base_url}/agents/a1/instructions", json={"payload": 1})
        assert r.status_code == 503 and r.json()["error"]["code"] == "memory_pressure", r.text
        pushing.close()
        assert g.metric("sluice_cgroup_shed_requests_total") >= 3
        kept.close()
        plain.close()
        r = chat(g)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "memory_pressure"
        assert g.metric('sluice_connections_closed_total{listener="api",reason="memory_pressure"}') >= 1
        assert httpx.get(f"{g.admin_url}/healthz").status_code == 200
        assert httpx.get(f"{g.admin_url}/readyz").status_code == 503

        # 5 points below the threshold it accepts again.
        growing.end()
        v2_files(root, 160 * MIB)
        wait_for(lambda: g.metric("sluice_cgroup_shedding") == 0, what="shedding over")
        assert chat(g).status_code == 200
        assert httpx.get(f"{g.admin_url}/readyz").status_code == 200

        # Past the threshold but flat (memory the allocator keeps after a
        # burst, reused by the next requests): shedding stops within about a
        # second instead of refusing everything for ever.
        growing = Growing(root, 178)
        wait_for(lambda: g.metric("sluice_cgroup_shedding") == 1, what="shedding")
        growing.end()
        # The watcher reads every 50 ms: the gauge has the last written
        # value once two reads a few checks apart agree.
        flat = settled(lambda: g.metric("sluice_cgroup_memory_working_set_bytes"))
        assert flat > 0.9 * 192 * MIB
        wait_for(lambda: g.metric("sluice_cgroup_shedding") == 0, timeout=5, what="shedding over while flat")
        assert chat(g).status_code == 200
        assert g.metric("sluice_cgroup_memory_working_set_bytes") == flat
    finally:
        g.stop()


def test_shedding_can_be_turned_off(tmp_path):
    root = tmp_path / "cgroup"
    root.mkdir()
    v2_files(root, 250 * MIB)
    cfg = MOCK_MODEL + "\n[server]\nmemory_shed_percent = 0\nmemory_check_ms = 50\n"
    g = Gateway(cfg, tmp_path=tmp_path, env={"SLUICE_CGROUP_ROOT": str(root)})
    try:
        wait_for(lambda: g.metric("sluice_cgroup_memory_working_set_bytes") == 250 * MIB, what="usage read")
        assert g.metric("sluice_cgroup_shedding") == 0
        assert chat(g).status_code == 200
    finally:
        g.stop()


def own_v1_dir(controller):
    """This process's cgroup v1 directory for a controller, if mounted."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            d = Path("/sys/fs/cgroup") / ctrls / path.lstrip("/")
            return d if d.is_dir() else None
    return None


def test_a_real_cgroup_child_with_limits(tmp_path):
    """Sluice started inside a cgroup child this test makes, with a memory
    limit and a CPU quota: the gauges show the kernel's limits."""
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("cgroup v2 here: a child needs delegated controllers; covered by recorded files")
    mem, cpu = own_v1_dir("memory"), own_v1_dir("cpu")
    if not mem or not cpu:
        pytest.skip("no cgroup v1 memory and cpu controllers mounted")
    name = f"sluice-test-{os.getpid()}"
    try:
        (mem / name).mkdir()
        (cpu / name).mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a cgroup child here: {e}")
    try:
        (mem / name / "memory.limit_in_bytes").write_text(str(300 * MIB))
        (cpu / name / "cpu.cfs_period_us").write_text("100000")
        (cpu / name / "cpu.cfs_quota_us").write_text("50000")

        def enter():
            for d in (mem / name, cpu / name):
                (d / "cgroup.procs").write_text(str(os.getpid()))

        g = Gateway(MOCK_MODEL, tmp_path=tmp_path, preexec_fn=enter)
        try:
            assert g.metric("sluice_cgroup_version") == 1
            assert g.metric("sluice_cgroup_memory_max_bytes") == 300 * MIB
            assert g.metric("sluice_cgroup_cpu_limit_cores") == 0.5
            assert g.metric("sluice_cgroup_workers") == 1
            ws = wait_for(lambda: g.metric("sluice_cgroup_memory_working_set_bytes") or None,
                          what="usage read from the kernel")
            assert 1 * MIB < ws < 300 * MIB
            assert chat(g).status_code == 200
        finally:
            g.stop()
    finally:
        for d in (mem / name, cpu / name):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def test_server_workers_overrides_the_cgroup_quota(tmp_path):
    """`[server] workers` wins over the quota: half a core would give one."""
    root = tmp_path / "cgroup"
    root.mkdir()
    v2_files(root, 40 * MIB)
    g = Gateway(MOCK_MODEL + "\n[server]\nworkers = 3\n", tmp_path=tmp_path,
                env={"SLUICE_CGROUP_ROOT": str(root)})
    try:
        assert g.metric("sluice_cgroup_cpu_limit_cores") == 0.5
        assert g.metric("tokio_workers") == 3
        assert g.metric("sluice_cgroup_workers") == 3
        assert chat(g).status_code == 200
    finally:
        g.stop()

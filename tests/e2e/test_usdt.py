"""USDT probes: the binary carries SystemTap SDT notes for every probe, and
bpftrace (Debian's) attached to a running gateway by pid sees requests with
their route, model, status and latency."""

import re
import shutil
import subprocess
import threading
import time

import httpx
import pytest

from conftest import MOCK_MODEL, SLUICE, Gateway

PROBES = {"request_start", "request_end", "upstream_attempt", "breaker",
          "agent_connect", "agent_disconnect"}


def sdt_notes(binary):
    out = subprocess.run(["readelf", "-n", str(binary)], capture_output=True, text=True, check=True).stdout
    notes = re.findall(r"stapsdt.*?Provider: (\S+)\s+Name: (\S+)", out, re.S)
    return {name for provider, name in notes if provider == "sluice"}


def test_the_binary_carries_every_probe():
    # The profile under test (SLUICE_PROFILE=release for the release binary):
    # the notes do not depend on the optimisation level.
    assert sdt_notes(SLUICE) == PROBES


def bpftrace_runs():
    if not shutil.which("bpftrace"):
        return "bpftrace is not installed"
    r = subprocess.run(["bpftrace", "-e", "BEGIN { exit(); }"], capture_output=True, text=True, timeout=60)
    return None if r.returncode == 0 else f"bpftrace cannot load programs here: {r.stderr.strip()[:200]}"


def test_bpftrace_sees_requests_by_model_and_status(tmp_path):
    why = bpftrace_runs()
    if why:
        pytest.skip(why)
    g = Gateway(MOCK_MODEL, tmp_path=tmp_path)
    script = (
        'usdt:*:sluice:request_end { printf("END|%s|%s|%d|%d\\n", str(arg0, arg1), str(arg2, arg3), arg4, arg5); }\n'
        'usdt:*:sluice:upstream_attempt { printf("TRY|%s|%s|%d|%d\\n", str(arg0, arg1), str(arg2, arg3), arg4, arg5); }\n'
    )
    lines = []
    bt = subprocess.Popen(["bpftrace", "-p", str(g.proc.pid), "-e", script],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    attached = threading.Event()

    def read():
        for line in bt.stdout:
            lines.append(line.strip())
            if line.startswith("Attaching"):
                attached.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()

    def post(model):
        return httpx.post(f"{g.base_url}/chat/completions",
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}]})

    try:
        assert attached.wait(60), lines
        # The probes are live some time after the banner: warm up until one
        # fires, then count from there.
        deadline = time.monotonic() + 60
        while not any(line.startswith("END|") for line in lines):
            assert time.monotonic() < deadline, lines
            assert post("mock-1").status_code == 200
            time.sleep(0.2)
        time.sleep(0.3)
        start = len(lines)
        for _ in range(3):
            assert post("mock-1").status_code == 200
        assert post("no-such-model").status_code == 404
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(line.startswith("END|") for line in lines[start:]) < 4:
            time.sleep(0.1)
    finally:
        bt.terminate()
        bt.wait(timeout=30)
        g.stop()
    lines = lines[start:]
    ends = [line.split("|") for line in lines if line.startswith("END|")]
    ok = [e for e in ends if e[2] == "mock-1"]
    assert len(ok) == 3, lines
    for e in ok:
        assert e[1] == "/v1/chat/completions" and e[3] == "200" and int(e[4]) > 0
    missing = [e for e in ends if e[3] == "404"]
    assert len(missing) == 1 and missing[0][2] == "", "\n".join(lines)  # no model was routed
    tries = [line.split("|") for line in lines if line.startswith("TRY|")]
    assert len(tries) == 3 and all(t[1] == "mock-1" and t[3] == "1" and t[4] == "0" for t in tries), lines


def test_the_shipped_latency_script_prints_per_model_histograms(tmp_path):
    why = bpftrace_runs()
    if why:
        pytest.skip(why)
    from conftest import ROOT

    g = Gateway(MOCK_MODEL, tmp_path=tmp_path)
    bt = subprocess.Popen(["bpftrace", "-p", str(g.proc.pid), str(ROOT / "deploy" / "bpftrace" / "latency.bt")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = bt.stdout.readline()
        while banner and not banner.startswith("Attaching"):
            banner = bt.stdout.readline()
        assert banner.startswith("Attaching"), banner
        time.sleep(3)  # the probes are live some time after the banner
        for _ in range(4):
            assert httpx.post(f"{g.base_url}/chat/completions",
                              json={"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}
                              ).status_code == 200
        time.sleep(0.5)
        bt.send_signal(subprocess.signal.SIGINT)  # bpftrace prints its maps at exit
        out, _ = bt.communicate(timeout=30)
    finally:
        if bt.poll() is None:
            bt.kill()
        g.stop()
    assert "@latency_us[mock-1]:" in out, out
    hist = out.split("@latency_us[mock-1]:")[1].split("\n\n")[0]
    counted = sum(int(m) for m in re.findall(r"\)\s+(\d+) \|", hist))
    answers = int(re.search(r"@answers\[mock-1, 200\]: (\d+)", out).group(1))
    # All four unless the probes went live late on a slow machine.
    assert 1 <= counted == answers <= 4, out

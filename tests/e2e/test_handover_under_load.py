"""Issue 12's check, end to end: under a steady load (16 clients on keep-alive
connections, no retries), 10 reloads that add and remove models and change
weights, one broken file, and one `--upgrade` handover — zero failed
requests; each added model answers right after its reload; the broken file is
reported and ignored; a tripped breaker is still open after unrelated
reloads. SLUICE_HANDOVER_SECONDS sets how long the load runs (default 8)."""

import os
import threading
import time

import httpx

from conftest import ClosedPort, Gateway

DEAD = ClosedPort()
SECONDS = float(os.environ.get("SLUICE_HANDOVER_SECONDS", "8"))


def config(sock, extra="", weight=1):
    return f"""
[server]
upgrade_socket = "{sock}"
shutdown_grace_ms = 5000

[routing]
max_attempts = 1
breaker = {{ consecutive_failures = 2, cooldown_ms = 600000, half_open_probes = 1, success_threshold = 1 }}

[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 4

[[providers]]
name = "mock-b"
kind = "mock"
tokens_per_response = 4

[[providers]]
name = "gone"
kind = "openai"
base_url = "http://{DEAD.url}/v1"

[[models]]
name = "mock-1"
targets = [{{ provider = "mock", weight = {weight} }}, {{ provider = "mock-b", weight = 1 }}]

[[models]]
name = "dead"
targets = [{{ provider = "gone" }}]
{extra}
"""


def chat(client, url, model, stream=False):
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "x"}]}
    if not stream:
        return client.post(f"{url}/v1/chat/completions", json=body).status_code
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        lines = list(r.iter_lines())
        if r.status_code == 200 and lines[-1] != "data: [DONE]" and "data: [DONE]" not in lines:
            return "stream without [DONE]"
        return r.status_code


def test_reloads_and_an_upgrade_under_load_fail_no_request(tmp_path):
    sock = tmp_path / "up.sock"
    path = tmp_path / "sluice.toml"
    old = Gateway(config(sock), tmp_path=tmp_path)
    url, admin = old.url, old.admin_url  # the same addresses after the handover
    stop = threading.Event()
    codes, lock = {}, threading.Lock()

    def hammer(n):
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                try:
                    code = chat(c, url, "mock-1", stream=n % 4 == 0)
                except httpx.HTTPError as e:
                    code = f"{type(e).__name__}: {e}"
                with lock:
                    codes[code] = codes.get(code, 0) + 1

    # Trip the dead target's breaker before the load.
    assert [chat(httpx, url, "dead") for _ in range(3)][-1] == 503
    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    new = None
    reloads, served_at_once, broken_refused, breaker_kept = [], 0, False, 0
    try:
        pause = SECONDS / 14
        for i in range(10):
            extra = f'[[models]]\nname = "extra-{i}"\ntargets = [{{ provider = "mock" }}]\n' if i % 2 else ""
            path.write_text(config(sock, extra, weight=1 + i % 3))
            reloads.append(httpx.post(f"{admin}/config/reload").status_code)
            if i % 2:
                served_at_once += chat(httpx, url, f"extra-{i}") == 200
            if i < 6:  # the breaker lives in the process: checked before the handover
                r = httpx.post(f"{url}/v1/chat/completions",
                               json={"model": "dead", "messages": [{"role": "user", "content": "x"}]})
                breaker_kept += r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_target"
            if i == 4:
                good = path.read_text()
                path.write_text(good + "\n[[models]\n")
                r = httpx.post(f"{admin}/config/reload")
                broken_refused = r.status_code == 400 and f"{path}:" in r.json()["error"]["message"]
                path.write_text(good)
            if i == 5:
                new = Gateway(config(sock, extra, weight=1 + i % 3), tmp_path=tmp_path,
                              extra_args=["--upgrade"])
                assert new.url == url
                old.proc.wait(timeout=15)
                assert old.proc.returncode == 0
            time.sleep(pause)
        time.sleep(pause)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
        for g in (old, new):
            if g and g.proc.poll() is None:
                g.stop()
    total = sum(codes.values())
    print(f"\nhandover under load: {total} requests in ~{SECONDS:.0f} s by 16 clients, outcomes {codes}; "
          f"reloads {reloads}; added models served at once {served_at_once}/5; broken file refused "
          f"{broken_refused}; breaker still open after {breaker_kept}/6 reloads")
    assert set(codes) == {200}, codes
    assert total > 200, codes
    assert reloads == [200] * 10, reloads
    assert served_at_once == 5
    assert broken_refused
    assert breaker_kept == 6

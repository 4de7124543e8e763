"""Hot reload (SIGHUP, POST /config/reload): new models are served at once,
a broken file is refused and the running configuration stays, state that
did not change (a tripped breaker) is kept, and a steady load sees no
failure across reloads."""

import hashlib
import socket
import signal
import threading
import time

import httpx
import pytest

from conftest import ClosedPort, Gateway, free_port, wait_for

DEAD = ClosedPort()


def config(extra_models="", weight=1):
    return f"""
[routing]
max_attempts = 1
breaker = {{ consecutive_failures = 2, cooldown_ms = 600000, half_open_probes = 1, success_threshold = 1 }}

[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 3

[[providers]]
name = "gone"
kind = "openai"
base_url = "http://{DEAD.url}/v1"

[[models]]
name = "mock-1"
targets = [{{ provider = "mock", weight = {weight} }}]

[[models]]
name = "dead"
targets = [{{ provider = "gone" }}]
{extra_models}
"""


def chat(g, model, client=httpx):
    return client.post(f"{g.base_url}/chat/completions",
                       json={"model": model, "messages": [{"role": "user", "content": "x"}]})


def reload(g):
    return httpx.post(f"{g.admin_url}/config/reload")


def test_reload_serves_new_models_keeps_state_and_refuses_broken_files(tmp_path):
    g = Gateway(config(), tmp_path=tmp_path)
    path = tmp_path / "sluice.toml"
    try:
        assert chat(g, "mock-2").status_code == 404
        # Trip the dead target's breaker.
        codes = [chat(g, "dead").status_code for _ in range(3)]
        assert codes[-1] == 503, codes

        path.write_text(config('[[models]]\nname = "mock-2"\ntargets = [{ provider = "mock" }]\n'))
        r = reload(g)
        assert r.status_code == 200, r.text
        assert r.json()["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert r.json()["models"] == 3
        assert chat(g, "mock-2").status_code == 200
        assert "mock-2" in [m["id"] for m in httpx.get(f"{g.base_url}/models").json()["data"]]
        # The unchanged target kept its open breaker across the reload.
        r = chat(g, "dead")
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_target"
        assert g.metric(f'sluice_config_info{{sha256="{hashlib.sha256(path.read_bytes()).hexdigest()}"}}') == 1

        # A broken file: refused with where the problem is; nothing changes.
        good = path.read_text()
        path.write_text(good.replace('name = "mock-2"', 'name = "mock-2"\nweight = "heavy"'))
        r = reload(g)
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_config"
        assert f"{path}:" in r.json()["error"]["message"], r.text
        assert chat(g, "mock-2").status_code == 200
        assert g.metric('sluice_config_reloads_total{outcome="failed"}') == 1
        assert g.metric('sluice_config_reloads_total{outcome="ok"}') == 1

        # SIGHUP does the same.
        path.write_text(config('[[models]]\nname = "mock-3"\ntargets = [{ provider = "mock" }]\n'))
        g.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: chat(g, "mock-3").status_code == 200, what="mock-3 after SIGHUP")
        assert chat(g, "mock-2").status_code == 404, "the model the file dropped is gone"
        g.assert_alive()
    finally:
        g.stop()


def test_reload_needs_the_admin_token_and_keeps_keys_made_at_run_time(tmp_path):
    from conftest import key_hash

    g = Gateway(config() + f'[auth]\nadmin_sha256 = "{key_hash("adm")}"\n'
                + f'[[keys]]\nname = "file"\nsha256 = "{key_hash("sk-file")}"\n', tmp_path=tmp_path)
    adm = {"authorization": "Bearer adm"}
    try:
        assert reload(g).status_code == 401
        # A key made through the admin API (no keys_file: it lives in memory).
        made = httpx.post(f"{g.admin_url}/keys", json={"name": "runtime", "token": "sk-run"}, headers=adm)
        assert made.status_code == 201, made.text
        ok = httpx.post(f"{g.admin_url}/config/reload", headers=adm)
        assert ok.status_code == 200, ok.text
        r = httpx.post(f"{g.base_url}/chat/completions", headers={"authorization": "Bearer sk-run"},
                       json={"model": "mock-1", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200, "a run-time key survives a reload"
    finally:
        g.stop()


def test_reloads_under_load_fail_no_request(tmp_path):
    g = Gateway(config(), tmp_path=tmp_path)
    path = tmp_path / "sluice.toml"
    stop = threading.Event()
    codes = {}
    lock = threading.Lock()

    def hammer():
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                try:
                    code = chat(g, "mock-1", c).status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                with lock:
                    codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    outcomes = []
    try:
        for i in range(10):
            extra = f'[[models]]\nname = "extra-{i}"\ntargets = [{{ provider = "mock" }}]\n' if i % 2 else ""
            path.write_text(config(extra, weight=1 + i % 3))
            outcomes.append(reload(g).status_code)
            if i % 2:
                assert chat(g, f"extra-{i}").status_code == 200, "served right after its reload"
            time.sleep(0.2)
        path.write_text("[[models]\n")  # broken
        outcomes.append(reload(g).status_code)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
        g.stop()
    assert outcomes == [200] * 10 + [400], outcomes
    assert set(codes) == {200} and codes[200] > 100, codes


def test_reload_moves_listeners_and_refuses_an_address_in_use(tmp_path):
    a, b, admin_a, admin_b = (f"127.0.0.1:{free_port()}" for _ in range(4))

    def listening(api, admin, extra=""):
        return f'[server]\nlisten = "{api}"\nadmin_listen = "{admin}"\n' + config(extra)

    g = Gateway(listening(a, admin_a), tmp_path=tmp_path, listen=None, admin_listen=None)
    path = tmp_path / "sluice.toml"
    try:
        assert g.url == f"http://{a}"
        kept = httpx.Client(timeout=10)
        assert chat(g, "mock-1", kept).status_code == 200  # a keep-alive connection on the old address

        path.write_text(listening(b, admin_b, '[[models]]\nname = "moved"\ntargets = [{ provider = "mock" }]\n'))
        r = reload(g)
        assert r.status_code == 200, r.text
        moved = httpx.post(f"http://{b}/v1/chat/completions",
                           json={"model": "moved", "messages": [{"role": "user", "content": "x"}]})
        assert moved.status_code == 200
        assert httpx.get(f"http://{admin_b}/healthz").status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{a}/healthz")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{admin_a}/healthz")
        # What the old listener accepted runs on.
        assert chat(g, "moved", kept).status_code == 200
        kept.close()

        # An address that is in use: the reload is refused, nothing moves.
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        path.write_text(listening(taken, admin_b))
        r = httpx.post(f"http://{admin_b}/config/reload")
        busy.close()
        assert r.status_code == 400 and f"cannot listen on {taken}" in r.text, r.text
        assert httpx.post(f"http://{b}/v1/chat/completions",
                          json={"model": "moved", "messages": [{"role": "user", "content": "x"}]}
                          ).status_code == 200, "the refused file changed nothing"
        g.assert_alive()
    finally:
        g.stop()


def test_listeners_given_on_the_command_line_stay_across_reloads(tmp_path):
    g = Gateway(config(), tmp_path=tmp_path)  # --listen 127.0.0.1:0 on the command line
    path = tmp_path / "sluice.toml"
    try:
        path.write_text(f'[server]\nlisten = "127.0.0.1:{free_port()}"\n' + config())
        assert reload(g).status_code == 200
        assert chat(g, "mock-1").status_code == 200, "still on the command line's address"
    finally:
        g.stop()

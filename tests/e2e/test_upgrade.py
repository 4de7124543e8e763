"""Zero-downtime binary upgrade: `sluice serve --upgrade` takes the listeners
over from the running process through `[server] upgrade_socket`; the old one
stops accepting, finishes what it has in flight (streams included), closes
agent sockets with 1001 and exits. Under a steady load no request fails."""

import asyncio
import json
import socket
import subprocess
import threading
import time

import httpx
import pytest
import websockets

from conftest import SLUICE, Gateway, wait_for


def config(sock, listen_note=""):
    return f"""
[server]
upgrade_socket = "{sock}"
shutdown_grace_ms = 5000
{listen_note}

[agents]

[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 3

[[providers]]
name = "slow"
kind = "mock"
tokens_per_response = 12
token_delay_ms = 200

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]

[[models]]
name = "slow-1"
targets = [{{ provider = "slow" }}]
"""


def chat(client, url, model="mock-1"):
    return client.post(f"{url}/v1/chat/completions",
                       json={"model": model, "messages": [{"role": "user", "content": "x"}]})


class Load:
    """Clients on keep-alive connections (no retries: any failure counts)."""

    def __init__(self, url, threads=8):
        self.url, self.stop, self.lock = url, threading.Event(), threading.Lock()
        self.codes = {}
        self.threads = [threading.Thread(target=self.hammer) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def hammer(self):
        with httpx.Client(timeout=10) as c:
            while not self.stop.is_set():
                try:
                    code = chat(c, self.url).status_code
                except httpx.HTTPError as e:
                    code = f"{type(e).__name__}: {e}"
                with self.lock:
                    self.codes[code] = self.codes.get(code, 0) + 1

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=20)
        return self.codes


def test_upgrade_hands_over_without_failing_a_request(tmp_path):
    sock = tmp_path / "upgrade.sock"
    old = Gateway(config(sock), tmp_path=tmp_path)
    load = Load(old.url)
    streamed = {}

    def stream_across():
        # Started on the old process before the handover; must finish whole.
        text = ""
        with httpx.Client(timeout=20) as c:
            with c.stream("POST", f"{old.url}/v1/chat/completions",
                          json={"model": "slow-1", "stream": True,
                                "stream_options": {"include_usage": True},
                                "messages": [{"role": "user", "content": "x"}]}) as r:
                streamed["status"] = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            streamed["tokens"] = chunk["usage"]["completion_tokens"]
                        for choice in chunk["choices"]:
                            text += choice["delta"].get("content") or ""
                    if line == "data: [DONE]":
                        streamed["done"] = True
        streamed["text"] = text

    async def agent_closed_with():
        ws = await websockets.connect(old.url.replace("http://", "ws://") + "/v1/agents/connect")
        await ws.send(json.dumps({"type": "hello", "agent_id": "a-1"}))
        assert json.loads(await ws.recv())["type"] == "welcome"
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 30)
        except websockets.ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None

    agent = {}
    agent_thread = threading.Thread(target=lambda: agent.update(code=asyncio.run(agent_closed_with())))
    agent_thread.start()
    new = newer = None
    try:
        time.sleep(1.0)
        streamer = threading.Thread(target=stream_across)
        streamer.start()
        time.sleep(0.3)
        new = Gateway(config(sock), tmp_path=tmp_path, extra_args=["--upgrade"])
        # The same sockets: the same address.
        assert new.url == old.url and new.admin_url == old.admin_url, (new.ready_line, old.ready_line)
        old.proc.wait(timeout=15)
        assert old.proc.returncode == 0, old.logs()
        time.sleep(1.0)  # the load now runs on the new process only
        codes = load.finish()
        streamer.join(timeout=20)
        agent_thread.join(timeout=20)
        assert set(codes) == {200} and codes[200] > 100, codes
        assert streamed.get("status") == 200 and streamed.get("done"), streamed
        assert streamed.get("tokens") == 12 and streamed["text"], streamed
        assert agent.get("code") == 1001, agent
        assert "upgrade: the new process serves; draining" in old.logs()
        # The new process serves, and answers the next upgrade itself.
        assert chat(httpx, new.url).status_code == 200
        newer = Gateway(config(sock), tmp_path=tmp_path, extra_args=["--upgrade"])
        assert newer.url == old.url
        new.proc.wait(timeout=15)
        assert new.proc.returncode == 0
        assert chat(httpx, newer.url).status_code == 200
        newer.stop()
        assert not sock.exists(), "a process that stops on a signal removes its upgrade socket"
    finally:
        load.finish()
        for g in (old, new, newer):
            if g and g.proc.poll() is None:
                g.proc.kill()


def test_upgrade_refusals_leave_the_running_process_serving(tmp_path):
    sock = tmp_path / "upgrade.sock"
    # Nothing to take over from: a clear error, no serving.
    r = subprocess.run([str(SLUICE), "serve", "--config", str(write(tmp_path, "none.toml", config(sock))),
                        "--upgrade"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "no running sluice answers at" in r.stderr, r.stderr
    # --upgrade without an upgrade socket in the file.
    plain = config(sock).replace(f'upgrade_socket = "{sock}"', "")
    r = subprocess.run([str(SLUICE), "serve", "--config", str(write(tmp_path, "plain.toml", plain)),
                        "--upgrade"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "--upgrade needs [server] upgrade_socket" in r.stderr, r.stderr

    old = Gateway(config(sock), tmp_path=tmp_path)
    try:
        # A second start without --upgrade must not take the socket over.
        r = subprocess.run([str(SLUICE), "serve", "--config", str(write(tmp_path, "b.toml", config(sock))),
                            "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "another sluice serves upgrades" in r.stderr, r.stderr
        # A new process that fails after taking the sockets (its admin
        # address is taken) leaves the old one serving, and upgradable.
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([str(SLUICE), "serve", "--config", str(write(tmp_path, "c.toml", config(sock))),
                            "--upgrade", "--listen", "127.0.0.1:0", "--admin-listen", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=30)
        taken.close()
        assert r.returncode == 1 and "cannot listen on" in r.stderr, r.stderr
        wait_for(lambda: "upgrade attempt failed; still serving" in old.logs(), what="the old process noticed")
        assert old.proc.poll() is None
        assert chat(httpx, old.url).status_code == 200
        new = Gateway(config(sock), tmp_path=tmp_path, extra_args=["--upgrade"])
        old.proc.wait(timeout=15)
        assert chat(httpx, new.url).status_code == 200
        new.stop()
    finally:
        if old.proc.poll() is None:
            old.proc.kill()


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("bad, message", [
    ('upgrade_socket = ""', "upgrade_socket: a path is needed"),
    ('upgrade_socket = "/nonexistent-sluice-dir/u.sock"', "upgrade_socket: the folder of"),
    (f'upgrade_socket = "/tmp/{"x" * 120}.sock"', "a Unix socket path holds at most 107"),
])
def test_bad_upgrade_socket_is_reported_where_it_is(tmp_path, bad, message):
    p = write(tmp_path, "s.toml", f"[server]\n{bad}\n[agents]\n")
    r = subprocess.run([str(SLUICE), "check-config", str(p)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and message in r.stderr and f"{p}:2:" in r.stderr, r.stderr

"""What an attacker can still try at the edges: the admin API from a web
page, deleting the last key, odd auth headers, malformed paths and
queries, oversize heads and bodies, agents that misbehave before hello or
authenticate with x-api-key; configuration that serves nothing; and the
audit trail's ids and crash guarantee."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time

import httpx
import openai
import pytest
import websockets

from conftest import MOCK_MODEL, SLUICE, Gateway, key_hash, wait_for

HUB = MOCK_MODEL + """
[agents]
max_frame_bytes = 4096
"""


# --- the admin API --------------------------------------------------------

def test_admin_api_refuses_web_pages_without_a_token(tmp_path):
    g = Gateway(MOCK_MODEL, tmp_path=tmp_path)
    try:
        keys = f"{g.admin_url}/keys"
        body = {"name": "k1"}
        evil_origin = httpx.post(keys, json=body, headers={"origin": "https://evil.example"})
        assert evil_origin.status_code == 403, evil_origin.text
        assert evil_origin.json()["error"]["message"]
        rebinding = httpx.post(keys, json=body, headers={"host": "evil.example:9090"})
        assert rebinding.status_code == 403, rebinding.text
        form = httpx.post(keys, content=json.dumps(body), headers={"content-type": "text/plain"})
        assert form.status_code == 415, form.text
        assert form.json()["error"]["code"] == "unsupported_media_type"
        log = httpx.put(f"{g.admin_url}/log-level", content="debug",
                        headers={"origin": "https://evil.example"})
        assert log.status_code == 403
        # None of those made a key or changed anything.
        assert httpx.get(keys).json()["data"] == []
        assert httpx.get(f"{g.admin_url}/log-level").json()["level"] == "info"
        # The same from this machine works.
        local = httpx.post(keys, json=body, headers={"origin": f"{g.admin_url}"})
        assert local.status_code == 201, local.text
        assert httpx.put(f"{g.admin_url}/log-level", json={"level": "warn"}).json()["level"] == "warn"
    finally:
        g.stop()


def test_every_mutating_admin_route_wants_the_admin_token(tmp_path):
    cfg = MOCK_MODEL + f'[auth]\nadmin_sha256 = "{key_hash("admin-token")}"\n'
    cfg += f'[[keys]]\nname = "file"\nsha256 = "{key_hash("sk-file")}"\n'
    g = Gateway(cfg, tmp_path=tmp_path)
    try:
        url = f"{g.admin_url}/log-level"
        assert httpx.put(url, content="debug").status_code == 401
        assert httpx.put(url, content="debug", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url).json()["level"] == "info"
        ok = httpx.put(url, content="debug", headers={"authorization": "bearer admin-token"})
        assert ok.status_code == 200 and ok.json()["level"] == "debug"
        made = httpx.post(f"{g.admin_url}/keys", json={"name": "k"},
                          headers={"authorization": "Bearer admin-token"})
        assert made.status_code == 201
        assert httpx.delete(f"{g.admin_url}/keys/k").status_code == 401
        assert httpx.delete(f"{g.admin_url}/keys/k",
                            headers={"authorization": "Bearer admin-token"}).status_code == 204
    finally:
        g.stop()


def test_deleting_the_last_key_never_opens_the_api(tmp_path):
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps([{"name": "only", "sha256": key_hash("sk-only")}]))
    cfg = MOCK_MODEL + f'[auth]\nkeys_file = "{keys_file}"\n'
    g = Gateway(cfg, tmp_path=tmp_path, listen="0.0.0.0:0")
    try:
        port = g.url.rsplit(":", 1)[1]
        api = f"http://127.0.0.1:{port}/v1/models"
        assert httpx.get(api).status_code == 401
        r = httpx.delete(f"{g.admin_url}/keys/only")
        assert r.status_code == 409, r.text
        assert "last key" in r.json()["error"]["message"]
        assert httpx.get(api).status_code == 401, "still closed"
        assert httpx.get(api, headers={"authorization": "Bearer sk-only"}).status_code == 200
        # With another key in place, the first may go.
        assert httpx.post(f"{g.admin_url}/keys", json={"name": "next", "token": "sk-next"}).status_code == 201
        assert httpx.delete(f"{g.admin_url}/keys/only").status_code == 204
        assert httpx.get(api).status_code == 401
        assert httpx.get(api, headers={"authorization": "Bearer sk-next"}).status_code == 200
    finally:
        g.stop()


# --- requests at the edge -------------------------------------------------

def test_auth_scheme_is_case_insensitive(tmp_path):
    g = Gateway(MOCK_MODEL + f'[[keys]]\nname = "k"\nsha256 = "{key_hash("sk-case")}"\n',
                tmp_path=tmp_path)
    try:
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
            r = httpx.get(f"{g.base_url}/models", headers={"authorization": f"{scheme} sk-case"})
            assert r.status_code == 200, scheme
        assert httpx.get(f"{g.base_url}/models", headers={"authorization": "Basic sk-case"}).status_code == 401
        # The ready line's curl works as printed once SLUICE_API_KEY holds a key.
        cmd = g.ready_line.split("try: ", 1)[1]
        assert "$SLUICE_API_KEY" in cmd
        out = subprocess.run(["sh", "-c", cmd + " -w '\\n%{http_code}'"], capture_output=True, text=True,
                             env={**os.environ, "SLUICE_API_KEY": "sk-case"}, timeout=20)
        assert out.stdout.strip().endswith("200"), out.stdout + out.stderr
        assert json.loads(out.stdout.rsplit("\n", 1)[0])["choices"][0]["message"]["content"]
    finally:
        g.stop()


def raw(g, data, timeout=10):
    host, port = g.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
            if b"\r\n\r\n" in out:
                head, _, rest = out.partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(rest) >= length[0]:
                    return out


def test_refusals_are_json_with_a_truthful_status(tmp_path):
    g = Gateway(HUB + "[server]\nmax_body_bytes = 2048\nmax_header_bytes = 16384\n", tmp_path=tmp_path)
    try:
        # A path id that is not UTF-8.
        resp = raw(g, b"GET /v1/agents/%FF%FE HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        head, _, body = resp.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), head
        assert json.loads(body)["error"]["code"] == "invalid_request"
        resp = raw(g, b"GET /v1/models/%FF HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert json.loads(resp.partition(b"\r\n\r\n")[2])["error"]["type"] == "invalid_request_error"
        # A query that does not parse.
        r = httpx.get(f"{g.base_url}/agents?limit=lots")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        # An instruction body over max_body_bytes.
        r = httpx.post(f"{g.base_url}/agents/a1/instructions", json={"payload": "x" * 5000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        # A head over max_header_bytes.
        r = httpx.get(f"{g.base_url}/models", headers={"x-big": "y" * 20000})
        assert r.status_code == 431
        assert r.json()["error"]["code"] == "headers_too_large"
        g.assert_alive()
    finally:
        g.stop()


# --- the agent hub ----------------------------------------------------------

def test_agents_with_x_api_key_can_chat_and_big_first_frames_get_1009(tmp_path):
    g = Gateway(HUB + f'[[keys]]\nname = "agents"\nsha256 = "{key_hash("sk-agent")}"\n', tmp_path=tmp_path)
    url = g.url.replace("http://", "ws://") + "/v1/agents/connect"

    async def go():
        async with websockets.connect(url, additional_headers={"x-api-key": "sk-agent"}) as ws:
            await ws.send(json.dumps({"type": "hello", "agent_id": "a1"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"
            await ws.send(json.dumps({"type": "chat", "id": "c1", "request": {
                "model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}}))
            kinds = []
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                kinds.append(m["type"])
                if m["type"] in ("chat.done", "chat.error"):
                    break
            assert kinds[-1] == "chat.done", m
            assert "chat.chunk" in kinds
        async with websockets.connect(url, additional_headers={"x-api-key": "sk-agent"},
                                      max_size=None) as ws:
            await ws.send("x" * 10000)
            with pytest.raises(websockets.ConnectionClosed) as e:
                await asyncio.wait_for(ws.recv(), 10)
            assert e.value.rcvd is not None and e.value.rcvd.code == 1009

    try:
        asyncio.run(go())
    finally:
        g.stop()


# --- configuration --------------------------------------------------------

def test_check_config_refuses_what_would_serve_nothing(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    r = subprocess.run([str(SLUICE), "check-config", str(empty)], capture_output=True, text=True)
    assert r.returncode == 1 and f"{empty}:1:1: no [[models]]" in r.stderr, r.stderr
    r = subprocess.run([str(SLUICE), "serve", "--config", str(empty), "--listen", "127.0.0.1:0",
                        "--admin-listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=20)
    assert r.returncode != 0 and "no [[models]]" in r.stderr
    missing = tmp_path / "missing.toml"
    missing.write_text(MOCK_MODEL + '[auth]\nkeys_file = "/nonexistent-dir-sluice/keys.json"\n')
    r = subprocess.run([str(SLUICE), "check-config", str(missing)], capture_output=True, text=True)
    assert r.returncode == 1 and "keys_file" in r.stderr and "does not exist" in r.stderr, r.stderr


# --- the audit trail --------------------------------------------------------

def test_audit_events_have_their_own_ids_and_the_clients_apart(tmp_path):
    audit = tmp_path / "audit.jsonl"
    g = Gateway(MOCK_MODEL + f'[audit]\npath = "{audit}"\n', tmp_path=tmp_path)
    try:
        for _ in range(2):  # the same client id twice: a forged or reused one
            r = httpx.post(f"{g.base_url}/chat/completions", headers={"x-request-id": "dup-1"},
                           json={"model": "mock-1", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200
        httpx.post(f"{g.base_url}/chat/completions",
                   json={"model": "mock-1", "messages": [{"role": "user", "content": "x"}]})
        events = wait_for(lambda: audit.exists() and len(audit.read_text().splitlines()) >= 3
                          and [json.loads(x) for x in audit.read_text().splitlines()], what="3 events")
    finally:
        g.stop()
    ids = [e["id"] for e in events]
    assert len(set(ids)) == 3 and all(len(i) >= 16 for i in ids)
    assert [e.get("client_request_id") for e in events] == ["dup-1", "dup-1", None]
    assert events[2]["request_id"].startswith("req-")


def test_sync_durability_survives_kill_9(tmp_path):
    """durability = "sync": every response a client received in full has its
    event on disk, even when the gateway is killed mid-load."""
    audit = tmp_path / "audit.jsonl"
    g = Gateway(MOCK_MODEL + f'[audit]\npath = "{audit}"\ndurability = "sync"\n', tmp_path=tmp_path)
    done = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n):
        with httpx.Client(base_url=g.base_url, timeout=10) as c:
            i = 0
            while not stop.is_set():
                rid = f"c{n}-{i}"
                i += 1
                try:
                    r = c.post("/chat/completions", headers={"x-request-id": rid},
                               json={"model": "mock-1", "messages": [{"role": "user", "content": "x"}]})
                    r.read()
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    with lock:
                        done.append(rid)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(done) >= 200, timeout=60, what="200 answered requests")
    os.kill(g.proc.pid, signal.SIGKILL)
    g.proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=20)
    with lock:
        answered = set(done)
    recorded = {json.loads(line).get("client_request_id") for line in audit.read_text().splitlines() if line}
    buffer = tmp_path / "audit.jsonl.buffer"
    if buffer.exists():
        recorded |= {json.loads(line).get("client_request_id") for line in buffer.read_text().splitlines()}
    missing = answered - recorded
    assert not missing, f"{len(missing)} of {len(answered)} answered requests have no event: {sorted(missing)[:5]}"

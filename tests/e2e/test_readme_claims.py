"""Claims the README makes that had no test of their own: the metric
families it names, error codes, rate-limit headers, byte-for-byte
passthrough, audit event fields, graceful shutdown, log formats, the
lowest-latency strategy and HTTP/2 over TLS."""

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

from conftest import MOCK_MODEL, ClosedPort, Gateway, key_hash, wait_for
from test_cli_and_metrics import samples


def chat_body(model="mock-1", **kw):
    return {"model": model, "messages": [{"role": "user", "content": "x"}], **kw}


# --- metrics ------------------------------------------------------------------

def test_every_metric_family_the_readme_names_has_series(tmp_path, upstream):
    audit = tmp_path / "audit.jsonl"
    closed = ClosedPort()
    cfg = f"""
[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 3

[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream.url}/v1"

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]

[[models]]
name = "up"
targets = [{{ provider = "up", model = "fine" }}]

[[models]]
name = "broken"
targets = [{{ provider = "up", model = "status-503" }}]

[[models]]
name = "drip"
targets = [{{ provider = "up", model = "drip-50" }}]

[[providers]]
name = "gone"
kind = "openai"
base_url = "http://{closed.url}/v1"

[[models]]
name = "unreachable"
targets = [{{ provider = "gone" }}]

[[keys]]
name = "k"
sha256 = "{key_hash("sk-k")}"
rpm = 1000

[audit]
path = "{audit}"

[agents]
"""
    g = Gateway(cfg, tmp_path=tmp_path)
    h = {"authorization": "Bearer sk-k"}
    try:
        assert httpx.post(f"{g.base_url}/chat/completions", json=chat_body("up"), headers=h).status_code == 200
        with httpx.stream("POST", f"{g.base_url}/chat/completions", json=chat_body("up", stream=True),
                          headers=h) as r:
            r.read()
        assert httpx.post(f"{g.base_url}/chat/completions", json=chat_body("broken"),
                          headers=h).status_code == 503
        assert httpx.post(f"{g.base_url}/chat/completions", json=chat_body("unreachable"),
                          headers=h).status_code == 502
        with httpx.stream("POST", f"{g.base_url}/chat/completions", json=chat_body("drip", stream=True),
                          headers=h) as r:
            next(r.iter_bytes())  # then hang up: a cancel
        wait_for(lambda: g.metric('sluice_requests_cancelled_total{model="drip",provider="up"}', default=0) >= 1,
                 what="the cancel counted")
        wait_for(lambda: audit.exists() and len(audit.read_text().splitlines()) >= 3, what="audit events")
        text = g.metrics_text()
    finally:
        g.stop()
    got = samples(text)
    named = [
        "sluice_requests_total", "sluice_request_duration_seconds_bucket", "sluice_tokens_total",
        "sluice_upstream_errors_total", "sluice_upstream_attempts_total", "sluice_requests_cancelled_total",
        "sluice_time_to_first_byte_seconds_bucket", "sluice_target_breaker_state",
        "sluice_target_effective_weight", "sluice_target_outstanding_requests", "sluice_active_requests",
        "sluice_active_streams", "sluice_gateway_overhead_seconds_bucket", "sluice_audit_events_total",
        "sluice_rate_limited_total", "sluice_rate_limit_backend_errors_total", "sluice_agents_connected",
        "sluice_agent_queue_depth", "sluice_connections_open",
        "sluice_redaction_cache_hits_total", "sluice_redaction_cache_misses_total",
        "sluice_redaction_cache_bytes",
        "gen_ai_client_token_usage_bucket", "gen_ai_client_operation_duration_seconds_bucket",
        "gen_ai_server_request_duration_seconds_bucket", "gen_ai_server_time_to_first_token_seconds_bucket",
        "gen_ai_server_time_per_output_token_seconds_bucket",
        "process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds",
        "tokio_workers", "tokio_alive_tasks", "tokio_global_queue_depth", "tokio_worker_busy_seconds",
    ]
    missing = [n for n in named if n not in got]
    assert not missing, f"families with no series: {missing}"
    errors = {(s.labels["provider"], s.labels["code"]) for s in got["sluice_upstream_errors_total"]}
    assert ("gone", "upstream_unreachable") in errors, errors
    outcomes = {s.labels["outcome"]: s.value for s in got["sluice_audit_events_total"]}
    assert outcomes["written"] >= 3 and outcomes["lost"] == 0, outcomes


# --- errors and headers ---------------------------------------------------------

def test_documented_error_codes(tmp_path, upstream):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)  # nobody accepts: once its backlog is full, connects hang
    port = silent.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    cfg = MOCK_MODEL + f"""
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{upstream.url}/v1"
api_key = "k"

[[providers]]
name = "blackhole"
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
connect_timeout_ms = 300

[[models]]
name = "claude"
targets = [{{ provider = "claude" }}]

[[models]]
name = "blackhole"
targets = [{{ provider = "blackhole" }}]
"""
    g = Gateway(cfg, tmp_path=tmp_path)
    try:
        # The three content types a web page may send without asking first
        # (no CORS preflight): refused, so no page can spend the keys.
        for ct in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            r = httpx.post(f"{g.base_url}/chat/completions", content=json.dumps(chat_body()),
                           headers={"content-type": ct})
            assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", ct
        ok = httpx.post(f"{g.base_url}/chat/completions", content=json.dumps(chat_body()),
                        headers={"content-type": "application/json; charset=utf-8"})
        assert ok.status_code == 200
        r = httpx.post(f"{g.base_url}/embeddings", json={"model": "claude", "input": "x"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_operation"
        t0 = time.monotonic()
        r = httpx.post(f"{g.base_url}/chat/completions", json=chat_body("blackhole"), timeout=30)
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "upstream_timeout"
        assert time.monotonic() - t0 < 20
    finally:
        g.stop()
        for s in fillers:
            s.close()
        silent.close()


def test_rate_limit_headers_count_down(tmp_path):
    g = Gateway(MOCK_MODEL + f'[[keys]]\nname = "k"\nsha256 = "{key_hash("sk-k")}"\nrpm = 5\ntpm = 100000\n',
                tmp_path=tmp_path)
    try:
        h = {"authorization": "Bearer sk-k"}
        remaining = []
        for _ in range(3):
            r = httpx.post(f"{g.base_url}/chat/completions", json=chat_body(), headers=h)
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit-requests"] == "5"
            assert r.headers["x-ratelimit-limit-tokens"] == "100000"
            remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
            assert int(r.headers["x-ratelimit-remaining-tokens"]) < 100000
        assert remaining == [4, 3, 2], remaining
    finally:
        g.stop()


def test_openai_passthrough_returns_the_upstreams_bytes(proxy_gateway, upstream):
    """Same format both ways: the response is the upstream's own bytes
    (non-streamed and streamed with usage), not a re-encoding."""
    direct = httpx.post(f"{upstream.url}/v1/chat/completions", json=chat_body("upstream-model"))
    via = httpx.post(f"{proxy_gateway.base_url}/chat/completions", json=chat_body("gpt-test"))
    assert via.status_code == 200
    assert via.content == direct.content
    body = chat_body("upstream-model", stream=True, stream_options={"include_usage": True})
    direct = httpx.post(f"{upstream.url}/v1/chat/completions", json=body)
    via = httpx.post(f"{proxy_gateway.base_url}/chat/completions", json=dict(body, model="gpt-test"))
    assert via.status_code == 200 and via.content == direct.content


# --- audit ---------------------------------------------------------------------------

def test_audit_event_fields(tmp_path):
    audit = tmp_path / "audit.jsonl"
    cfg = f"""
[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 200
token_delay_ms = 20

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]

[[keys]]
name = "auditor"
sha256 = "{key_hash("sk-a")}"

[audit]
path = "{audit}"
"""
    g = Gateway(cfg, tmp_path=tmp_path)
    h = {"authorization": "Bearer sk-a"}
    try:
        with httpx.stream("POST", f"{g.base_url}/chat/completions", headers={**h, "x-request-id": "left"},
                          json=chat_body(stream=True)) as r:
            next(r.iter_bytes())  # then walk away
        r = httpx.post(f"{g.base_url}/chat/completions", headers={**h, "x-request-id": "whole"},
                       json=chat_body(max_tokens=2))
        assert r.status_code == 200
        events = wait_for(lambda: len(audit.read_text().splitlines()) >= 2 if audit.exists() else False,
                          what="2 events") and [json.loads(x) for x in audit.read_text().splitlines()]
    finally:
        g.stop()
    by = {e["request_id"]: e for e in events}
    left, whole = by["left"], by["whole"]
    assert left["cancelled"] is True and left["stream"] is True and left["status"] == 499
    assert whole["cancelled"] is False and whole["stream"] is False and whole["status"] == 200
    for e in (left, whole):
        assert e["key"] == "auditor" and e["attempts"] == 1 and e["route"] == "/v1/chat/completions"


# --- lifecycle ----------------------------------------------------------------------

def test_sigterm_lets_a_slow_stream_finish_and_refuses_new_connections(tmp_path):
    cfg = """
[server]
shutdown_grace_ms = 8000

[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 20
token_delay_ms = 100

[[models]]
name = "mock-1"
targets = [{ provider = "mock" }]
"""
    g = Gateway(cfg, tmp_path=tmp_path)
    host, port = g.url.removeprefix("http://").split(":")
    got = {}

    def stream():
        with httpx.stream("POST", f"{g.base_url}/chat/completions", json=chat_body(stream=True), timeout=20) as r:
            got["body"] = r.read().decode()

    t = threading.Thread(target=stream)
    t.start()
    wait_for(lambda: g.metric("sluice_active_streams") == 1, what="the stream open")
    g.proc.send_signal(signal.SIGTERM)
    # New connections are refused while the stream runs out.
    def refused():
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return False
        except OSError:
            return True
    wait_for(refused, what="the listener closed")
    t.join(timeout=20)
    assert got["body"].rstrip().endswith("data: [DONE]"), got
    assert g.proc.wait(timeout=15) == 0


def test_log_formats_and_sluice_log(tmp_path):
    # SLUICE_LOG sets the level at start; format = "pretty" is not JSON.
    g = Gateway(MOCK_MODEL + '[logging]\nformat = "pretty"\n', tmp_path=tmp_path, env={"SLUICE_LOG": "warn"})
    try:
        assert httpx.get(f"{g.admin_url}/log-level").json()["level"] == "warn"
        httpx.post(f"{g.base_url}/chat/completions", json=chat_body(), headers={"x-request-id": "at-warn"})
        assert httpx.put(f"{g.admin_url}/log-level", content="info").status_code == 200
        httpx.post(f"{g.base_url}/chat/completions", json=chat_body(), headers={"x-request-id": "at-info"})
        wait_for(lambda: "at-info" in g.logs(), what="the access line at info")
        logs = g.logs()
        assert "at-warn" not in logs, "an info line was written at level warn"
        line = next(x for x in logs.splitlines() if "at-info" in x)
        assert not line.lstrip().startswith("{"), "pretty, not JSON"
    finally:
        g.stop()
    # JSON; sampled out entirely (0.0), but slower than slow_ms: logged anyway.
    slow_mock = MOCK_MODEL.replace("tokens_per_response = 3", "tokens_per_response = 3\ntoken_delay_ms = 5")
    g = Gateway(slow_mock + '[logging]\nformat = "json"\nslow_ms = 1\nsample_ratio = 0.0\n', tmp_path=tmp_path)
    try:
        httpx.post(f"{g.base_url}/chat/completions", json=chat_body(), headers={"x-request-id": "slow-one"})
        line = wait_for(lambda: next((json.loads(x) for x in g.logs().splitlines()
                                      if x.startswith("{") and "slow-one" in x), None), what="access line")
        assert line["target"] == "sluice::access"
        assert line["status"] == 200 and line["model"] == "mock-1" and line["latency_ms"] >= 1
    finally:
        g.stop()


def test_lowest_latency_prefers_the_faster_target(tmp_path, upstream):
    cfg = f"""
[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream.url}/v1"

[[models]]
name = "pool"
strategy = "lowest_latency"
targets = [{{ provider = "up", model = "slow-150" }}, {{ provider = "up", model = "fast" }}]
"""
    g = Gateway(cfg, tmp_path=tmp_path)
    try:
        with httpx.Client() as c:
            models = [c.post(f"{g.base_url}/chat/completions", json=chat_body("pool")).json()["model"]
                      for _ in range(40)]
    finally:
        g.stop()
    # Both are tried early on; then nearly everything goes to the fast one.
    assert "slow-150" in models and models[-20:].count("fast") >= 17, models


def test_http2_over_tls(tmp_path):
    from test_tls import ca, make_cert

    cert, key = make_cert(tmp_path, "h2")
    g = Gateway(MOCK_MODEL + f'[server]\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n', tmp_path=tmp_path)
    try:
        with httpx.Client(http2=True, verify=ca(cert)) as c:
            r = c.post(f"{g.base_url}/chat/completions", json=chat_body())
            assert r.status_code == 200 and r.http_version == "HTTP/2"
            assert r.json()["choices"][0]["message"]["content"].startswith("Mock reply")
    finally:
        g.stop()


# --- audit keys, admin API, the hub's limits --------------------------------------

def test_audit_decrypt_with_rotated_keys(tmp_path):
    audit = tmp_path / "audit.jsonl"
    key_a, key_b = "000102030405060708090a0b0c0d0e0f", "f0e0d0c0b0a090807060504030201000"
    cfg = MOCK_MODEL + f'[audit]\npath = "{audit}"\nencrypt_fields = ["user"]\n'
    for key, user in [(key_a, "first@example.com"), (key_b, "second@example.com")]:
        g = Gateway(cfg, tmp_path=tmp_path, env={"SLUICE_AUDIT_KEY": key})
        try:
            httpx.post(f"{g.base_url}/chat/completions", json=chat_body(user=user))
        finally:
            g.stop()  # flushes the audit trail
    assert "example.com" not in audit.read_text()
    from conftest import SLUICE

    both = subprocess.run([str(SLUICE), "audit", "decrypt", "--key-env", "KA", "--key-env", "KB", str(audit)],
                          capture_output=True, text=True, env={**os.environ, "KA": key_a, "KB": key_b})
    assert both.returncode == 0, both.stderr
    users = [json.loads(x)["fields"]["user"] for x in both.stdout.splitlines()]
    assert users == ["first@example.com", "second@example.com"]
    one = subprocess.run([str(SLUICE), "audit", "decrypt", "--key-env", "KA", str(audit)],
                         capture_output=True, text=True, env={**os.environ, "KA": key_a})
    assert one.returncode != 0 and "no key with id" in one.stderr


def test_key_api_off_loopback_needs_the_admin_token_and_counters_are_kept(tmp_path):
    cfg = MOCK_MODEL + f'[[keys]]\nname = "file"\nsha256 = "{key_hash("sk-file")}"\nrpm = 2\n'
    g = Gateway(cfg, tmp_path=tmp_path, admin_listen="0.0.0.0:0")
    try:
        admin_port = g.admin_url.rsplit(":", 1)[1]
        r = httpx.get(f"http://127.0.0.1:{admin_port}/keys")
        assert r.status_code == 403 and "admin_sha256" in r.json()["error"]["message"]
    finally:
        g.stop()
    cfg += f'[auth]\nadmin_sha256 = "{key_hash("adm")}"\n'
    g = Gateway(cfg, tmp_path=tmp_path)
    adm = {"authorization": "Bearer adm"}
    try:
        h = {"authorization": "Bearer sk-file"}
        assert [httpx.post(f"{g.base_url}/chat/completions", json=chat_body(), headers=h).status_code
                for _ in range(2)] == [200, 200]
        # A key added (and one removed) does not refill the file key's bucket.
        assert httpx.post(f"{g.admin_url}/keys", json={"name": "new"}, headers=adm).status_code == 201
        assert httpx.delete(f"{g.admin_url}/keys/new", headers=adm).status_code == 204
        r = httpx.post(f"{g.base_url}/chat/completions", json=chat_body(), headers=h)
        assert r.status_code == 429, "the counters of a key that stays are kept"
    finally:
        g.stop()


def test_agent_waits_are_capped_by_max_wait_ms(tmp_path):
    import asyncio

    import websockets

    g = Gateway(MOCK_MODEL + "[agents]\nmax_wait_ms = 300\n", tmp_path=tmp_path)
    url = g.url.replace("http://", "ws://") + "/v1/agents/connect"

    async def go():
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "hello", "agent_id": "quiet"}))
            await asyncio.wait_for(ws.recv(), 10)
            t0 = time.monotonic()
            async with httpx.AsyncClient() as c:
                r = await c.post(f"{g.base_url}/agents/quiet/instructions",
                                 json={"payload": 1, "wait_ack_ms": 20000}, timeout=30)
            took = time.monotonic() - t0
            assert r.status_code == 504 and r.json()["status"] == "delivered", r.text
            assert 0.3 <= took < 10, took  # capped at 300 ms, not 20 s

    try:
        asyncio.run(go())
    finally:
        g.stop()


# --- Redis ---------------------------------------------------------------------------

def test_budget_in_redis_survives_a_restart(tmp_path, redis_server):
    cfg = MOCK_MODEL + f"""
[redis]
url = "{redis_server.url}"

[[keys]]
name = "b"
sha256 = "{key_hash("sk-b")}"
budget_tokens = 30
budget_period = "month"
"""
    h = {"authorization": "Bearer sk-b"}
    g = Gateway(cfg, tmp_path=tmp_path)
    try:
        codes = [httpx.post(f"{g.base_url}/chat/completions", json=chat_body(), headers=h).status_code
                 for _ in range(10)]
        assert 429 in codes, codes
    finally:
        g.stop()
    g = Gateway(cfg, tmp_path=tmp_path)
    try:
        r = httpx.post(f"{g.base_url}/chat/completions", json=chat_body(), headers=h)
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
        assert "this month" in r.json()["error"]["message"]
    finally:
        g.stop()


def test_limits_move_back_to_redis_after_an_outage(tmp_path, redis_server):
    cfg = MOCK_MODEL + f"""
[redis]
url = "{redis_server.url}"
timeout_ms = 300

[[keys]]
name = "k"
sha256 = "{key_hash("sk-k")}"
rpm = 100000
"""
    h = {"authorization": "Bearer sk-k"}
    g = Gateway(cfg, tmp_path=tmp_path)
    local = 'sluice_rate_limit_backend_errors_total{outcome="local"}'
    try:
        assert httpx.post(f"{g.base_url}/chat/completions", json=chat_body(), headers=h).status_code == 200
        assert g.metric(local) == 0
        redis_server.stop()
        for _ in range(3):
            assert httpx.post(f"{g.base_url}/chat/completions", json=chat_body(), headers=h).status_code == 200
        assert g.metric(local) >= 1
        redis_server.start()  # empty
        # Within a second or two the limiter asks Redis again: its buckets
        # reappear there and local counting stops.
        def back():
            httpx.post(f"{g.base_url}/chat/completions", json=chat_body(), headers=h)
            return redis_server.client.dbsize() > 0
        wait_for(back, timeout=10, what="buckets in Redis again")
        before = g.metric(local)
        for _ in range(5):
            assert httpx.post(f"{g.base_url}/chat/completions", json=chat_body(), headers=h).status_code == 200
        assert g.metric(local) == before, "counted in Redis, not locally"
    finally:
        g.stop()


def test_hub_presence_expires_when_a_replica_dies(tmp_path, redis_server):
    import asyncio

    import websockets

    cfg = MOCK_MODEL + f'[redis]\nurl = "{redis_server.url}"\n\n[agents]\npresence_ttl_ms = 1500\n'
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Gateway(cfg, tmp_path=tmp_path / "a")
    b = Gateway(cfg, tmp_path=tmp_path / "b")
    try:
        async def go():
            ws = await websockets.connect(a.url.replace("http://", "ws://") + "/v1/agents/connect")
            await ws.send(json.dumps({"type": "hello", "agent_id": "mortal"}))
            await asyncio.wait_for(ws.recv(), 10)
            wait_for(lambda: httpx.get(f"{b.base_url}/agents/mortal").status_code == 200,
                     what="presence seen from b")
            os.kill(a.proc.pid, signal.SIGKILL)  # no goodbye: only the TTL can tell
            a.proc.wait(timeout=10)
            wait_for(lambda: httpx.get(f"{b.base_url}/agents/mortal").status_code == 404, timeout=15,
                     what="presence gone after the TTL")
            ws.transport.abort()
        asyncio.run(go())
    finally:
        if a.proc.poll() is None:
            a.stop()
        b.stop()


def test_redis_audit_stream_is_trimmed_to_stream_maxlen(tmp_path, redis_server):
    cfg = MOCK_MODEL + f"""
[redis]
url = "{redis_server.url}"

[audit]
sink = "redis"
stream = "trimmed"
stream_maxlen = 10
"""
    g = Gateway(cfg, tmp_path=tmp_path)
    try:
        with httpx.Client() as c:
            for _ in range(300):
                assert c.post(f"{g.base_url}/chat/completions", json=chat_body()).status_code == 200
        wait_for(lambda: g.metric('sluice_audit_events_total{outcome="written"}') >= 300, what="300 written")
    finally:
        g.stop()
    n = redis_server.client.xlen("trimmed")
    # MAXLEN ~ trims whole stream nodes (100 entries each by default): at
    # least the 10 asked for stay, and far fewer than the 300 written.
    assert 10 <= n <= 150, n


def test_a_slow_event_reader_is_told_what_it_missed(tmp_path):
    """agents.events_buffer: a reader that falls further behind than that
    gets an events.lagged message, not an unbounded queue."""
    import asyncio

    import websockets

    g = Gateway(MOCK_MODEL + "[agents]\nevents_buffer = 4\n", tmp_path=tmp_path)
    host, port = g.url.removeprefix("http://").split(":")
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server must wait
    reader.connect((host, int(port)))
    reader.sendall(b"GET /v1/agents/events HTTP/1.1\r\nhost: x\r\n\r\n")
    first = reader.recv(4096)
    assert b"200" in first.split(b"\r\n")[0], first

    async def flood():
        async with websockets.connect(g.url.replace("http://", "ws://") + "/v1/agents/connect") as ws:
            await ws.send(json.dumps({"type": "hello", "agent_id": "chatty"}))
            await asyncio.wait_for(ws.recv(), 10)
            big = "x" * 60_000
            for i in range(150):  # ~9 MB of events for a reader that reads nothing
                await ws.send(json.dumps({"type": "event", "payload": {"i": i, "pad": big}}))

    try:
        asyncio.run(flood())
        reader.settimeout(10)
        seen = b""
        deadline = time.monotonic() + 30
        while b"events.lagged" not in seen and time.monotonic() < deadline:
            chunk = reader.recv(1 << 20)
            if not chunk:
                break
            seen = seen[-200:] + chunk  # keep memory flat; the marker is short
        assert b"events.lagged" in seen, "no lag was reported"
        g.assert_alive()
    finally:
        reader.close()
        g.stop()


def test_a_full_audit_queue_spills_to_disk_without_blocking(tmp_path):
    """While the sink hangs, the bounded queue (queue_capacity) fills and
    further events go straight to the disk buffer; requests never wait."""
    from conftest import SilentServer

    with SilentServer() as silent:
        buffer = tmp_path / "audit.buffer"
        cfg = MOCK_MODEL + f"""
[redis]
url = "redis://127.0.0.1:{silent.port}"
timeout_ms = 2000

[audit]
sink = "redis"
queue_capacity = 2
buffer_path = "{buffer}"
"""
        g = Gateway(cfg, tmp_path=tmp_path)
        try:
            t0 = time.monotonic()
            with httpx.Client() as c:
                for _ in range(60):
                    assert c.post(f"{g.base_url}/chat/completions", json=chat_body()).status_code == 200
            took = time.monotonic() - t0
            # The writer is stuck on its first Redis write for seconds (with
            # the few events it gathered before it, and 2 queued); the
            # requests are not, and the rest went to disk.
            assert took < 4, took
            assert g.metric('sluice_audit_events_total{outcome="buffered"}') >= 30
            assert len(buffer.read_text().splitlines()) >= 30
            assert g.metric('sluice_audit_events_total{outcome="lost"}') == 0
        finally:
            g.stop()

"""The MCP gateway (`/mcp`): the official MCP Python SDK as the client, the
reference server `@modelcontextprotocol/server-everything` (npm, a stdio
child) and an HTTP server written with the SDK's MCPServer upstream.
Both protocol eras: the handshake (`mode="legacy"`, 2025-11-25 sessions)
and the stateless 2026-07-28 (`mode="auto"` discovers it)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import DEAD, ROOT, SLUICE, Gateway, free_port, key_hash, replicas, wait_for
from otlp_receiver import HttpReceiver

EVERYTHING = ROOT / "tests/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
WEATHER = ROOT / "tests/mcp/weather_server.py"
AUDIT_KEY = "00112233445566778899aabbccddeeff"
FULL, NARROW, SLOW = "sk-mcp-full", "sk-mcp-narrow", "sk-mcp-rpm"
MODES = ["auto", "legacy"]


class Weather:
    """The SDK's MCPServer over Streamable HTTP, in its own process."""

    def __init__(self, markers):
        self.port = free_port()
        self.markers = markers
        self.proc = subprocess.Popen(
            [sys.executable, str(WEATHER), str(self.port), str(markers)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("listening on"), line
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def config(weather_url, audit, otlp, extra=""):
    return f"""
[[mcp_servers]]
name = "everything"
command = ["node", "{EVERYTHING}"]
env = {{ API_TOKEN = "${{EVERYTHING_TOKEN}}" }}

[[mcp_servers]]
name = "weather"
url = "{weather_url}"
headers = {{ authorization = "Bearer ${{WEATHER_TOKEN:-none}}" }}
timeout_ms = 30000

[[keys]]
name = "full"
sha256 = "{key_hash(FULL)}"

[[keys]]
name = "narrow"
sha256 = "{key_hash(NARROW)}"
mcp_tools = ["weather__*", "everything__echo"]

[[keys]]
name = "limited"
sha256 = "{key_hash(SLOW)}"
mcp_rpm = 2

[audit]
path = "{audit}"
encrypt_fields = ["arguments.city"]

[telemetry]
otlp_endpoint = "{otlp}"
otlp_protocol = "http/protobuf"
{extra}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mcp")
    markers = tmp / "markers"
    markers.mkdir()
    weather = Weather(markers)
    rx = HttpReceiver()
    audit = tmp / "audit.jsonl"
    g = Gateway(config(weather.url, audit, rx.url), tmp_path=tmp, env={"SLUICE_AUDIT_KEY": AUDIT_KEY})
    g.audit, g.rx, g.weather = audit, rx, weather
    wait_for(lambda: all(s["state"] == "ready" for s in servers(g)), timeout=30, what="both mcp servers ready")
    yield g
    g.assert_alive()
    g.stop()
    weather.stop()


def servers(g):
    r = httpx.get(f"{g.admin_url}/v1/mcp/servers")
    assert r.status_code == 200, r.text
    return r.json()["data"]


def server(g, name):
    return next(s for s in servers(g) if s["name"] == name)


def client(g, token=FULL, mode="auto", **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
    return Client(streamable_http_client(f"{g.url}/mcp", http_client=http), mode=mode, **kw)


def run(f):
    return anyio.run(f)


def audit_events(g):
    if not g.audit.exists():
        return []
    return [json.loads(line) for line in g.audit.read_text().splitlines() if line]


@pytest.mark.parametrize("mode", MODES)
def test_lists_and_calls_tools_of_both_servers(env, mode):
    async def go():
        async with client(env, mode=mode) as c:
            names = [t.name for t in (await c.list_tools()).tools]
            assert "everything__echo" in names and "weather__forecast" in names, names
            assert all("__" in n for n in names)
            echo = await c.call_tool("everything__echo", {"message": f"hi {mode}"})
            assert echo.content[0].text == f"Echo: hi {mode}" and not echo.is_error
            fc = await c.call_tool("weather__forecast", {"city": "Paris"})
            assert fc.content[0].text == "sunny in Paris"
            assert fc.structured_content == {"result": "sunny in Paris"}
            with pytest.raises(MCPError, match="Unknown tool: nope__x"):
                await c.call_tool("nope__x", {})
    run(go)


@pytest.mark.parametrize("mode", MODES)
def test_resources_and_prompts_are_federated(env, mode):
    async def go():
        async with client(env, mode=mode) as c:
            resources = (await c.list_resources()).resources
            uris = {str(r.uri): r.name for r in resources}
            assert uris["weather://cities"] == "weather__cities"
            assert any(u.startswith("demo://") for u in uris), uris
            assert (await c.read_resource("weather://cities")).contents[0].text == "paris,rome"
            doc = next(u for u in uris if u.startswith("demo://"))
            assert (await c.read_resource(doc)).contents[0].text
            templates = (await c.list_resource_templates()).resource_templates
            assert templates and all(t.name.startswith("everything__") for t in templates)
            prompts = [p.name for p in (await c.list_prompts()).prompts]
            assert "weather__ask" in prompts and "everything__simple-prompt" in prompts
            got = await c.get_prompt("weather__ask", {"city": "Rome"})
            assert got.messages[0].content.text == "What is the weather in Rome?"
            simple = await c.get_prompt("everything__simple-prompt", {})
            assert simple.messages
    run(go)


@pytest.mark.parametrize("mode", MODES)
def test_progress_notifications_pass_through(env, mode):
    seen = []

    async def progress(p, total, message):
        seen.append((p, total))

    async def go():
        async with client(env, mode=mode) as c:
            r = await c.call_tool("everything__trigger-long-running-operation",
                                  {"duration": 0.6, "steps": 3}, progress_callback=progress)
            assert "completed" in r.content[0].text
            assert seen == [(1, 3), (2, 3), (3, 3)], seen
            seen.clear()
            r = await c.call_tool("weather__forecast", {"city": "Oslo"}, progress_callback=progress)
            assert seen == [(1, 2)] and r.content[0].text == "sunny in Oslo"
    run(go)


@pytest.mark.parametrize("mode", MODES)
def test_cancellation_reaches_the_upstream(env, mode):
    tag = f"cancel-{mode}"
    before = env.metric(
        'sluice_mcp_tool_calls_total{server="weather",tool="slow",outcome="cancelled"}', default=0)

    async def go():
        async with client(env, mode=mode) as c:
            with anyio.move_on_after(0.8):
                await c.call_tool("weather__slow", {"seconds": 20, "tag": tag})
            # The session (or connection) is still good for more.
            assert (await c.call_tool("everything__echo", {"message": "after"})).content[0].text == "Echo: after"
    t0 = time.monotonic()
    run(go)
    assert time.monotonic() - t0 < 10
    wait_for(lambda: (env.weather.markers / f"cancelled-{tag}").exists(), timeout=10,
             what="the upstream tool cancelled")
    wait_for(lambda: env.metric(
        'sluice_mcp_tool_calls_total{server="weather",tool="slow",outcome="cancelled"}', default=0) == before + 1,
        what="the cancelled call counted")
    wait_for(lambda: server(env, "weather")["in_flight"] == 0, what="nothing left in flight")


def test_key_filtering_hides_tools_and_refuses_them_alike(env):
    async def go():
        async with client(env, token=NARROW) as c:
            names = sorted(t.name for t in (await c.list_tools()).tools)
            assert names == ["everything__echo", "weather__forecast", "weather__slow"], names
            assert (await c.call_tool("everything__echo", {"message": "ok"})).content[0].text == "Echo: ok"
            with pytest.raises(MCPError) as hidden:
                await c.call_tool("everything__get-sum", {"a": 1, "b": 2})
            with pytest.raises(MCPError) as unknown:
                await c.call_tool("everything__no-such-tool", {})
            assert hidden.value.error.code == unknown.value.error.code
            assert str(hidden.value).replace("get-sum", "X") == str(unknown.value).replace("no-such-tool", "X")
        async with client(env, token=FULL) as c:
            r = await c.call_tool("everything__get-sum", {"a": 1, "b": 2})
            assert "3" in r.content[0].text
    run(go)


def test_per_key_rate_limit(env):
    async def go():
        async with client(env, token=SLOW, mode="legacy") as c:
            for _ in range(2):
                await c.call_tool("everything__echo", {"message": "x"})
            with pytest.raises(MCPError, match="rate limit") as e:
                await c.call_tool("everything__echo", {"message": "x"})
            assert e.value.error.data["retry_after_ms"] > 0
            # Another tool has its own bucket.
            await c.call_tool("weather__forecast", {"city": "Lima"})
    run(go)
    assert env.metric('sluice_mcp_tool_calls_total{server="everything",tool="echo",outcome="rate_limited"}') >= 1


def test_unauthenticated_and_foreign_origins_are_refused(env):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    h = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    r = httpx.post(f"{env.url}/mcp", json=body, headers=h)
    assert r.status_code == 401 and r.json()["error"]["message"]
    auth = {**h, "authorization": f"Bearer {FULL}"}
    r = httpx.post(f"{env.url}/mcp", json=body, headers={**auth, "origin": "http://evil.example"})
    assert r.status_code == 403 and "origin" in r.json()["error"]["message"]
    # The servers' state is on the API listener too, behind the admin check.
    s = httpx.get(f"{env.url}/v1/mcp/servers")
    assert s.status_code == 200 and {x["name"] for x in s.json()["data"]} == {"everything", "weather"}
    r = httpx.post(f"{env.url}/mcp", json=body, headers={**auth, "origin": "http://localhost:5173"})
    assert r.status_code == 200 and r.json()["result"]["tools"]
    # A session that does not exist is 404; a body that is not JSON-RPC, 400.
    r = httpx.post(f"{env.url}/mcp", json=body, headers={**auth, "mcp-session-id": "nope"})
    assert r.status_code == 404
    r = httpx.post(f"{env.url}/mcp", content=b"{not json", headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32700
    # A 2026-07-28 request for a revision that does not exist says which do.
    meta = {"io.modelcontextprotocol/protocolVersion": "2099-01-01"}
    r = httpx.post(f"{env.url}/mcp", json={**body, "params": {"_meta": meta}}, headers=auth)
    assert r.json()["error"]["code"] == -32022 and "2026-07-28" in r.json()["error"]["data"]["supported"]


def test_audit_event_metrics_and_span_of_a_call(env):
    async def go():
        async with client(env) as c:
            await c.call_tool("weather__forecast", {"city": "Reykjavik"})
            await c.call_tool("everything__echo", {"message": "mail bob@example.org"})
    run(go)
    events = wait_for(lambda: [e for e in audit_events(env) if e.get("kind") == "mcp_tool_call"
                               and e["tool"] in ("forecast", "echo")
                               and ("Reykjavik" in json.dumps(e) or "city" in e["arguments"])], what="audit")
    raw = env.audit.read_text()
    assert "Reykjavik" not in raw and "bob@example.org" not in raw
    fc = next(e for e in events if e["tool"] == "forecast")
    assert fc["server"] == "weather" and fc["called"] == "weather__forecast" and fc["key"] == "full"
    assert fc["outcome"] == "ok" and fc["duration_ms"] > 0 and fc["route"] == "/mcp"
    assert fc["arguments"]["city"]["enc"] == "SM4-GCM"
    echo = wait_for(lambda: [e for e in audit_events(env) if e.get("tool") == "echo"
                             and "mail" in json.dumps(e["arguments"])], what="echo audit")[-1]
    assert echo["arguments"]["message"] == "mail [EMAIL]"
    out = subprocess.run([str(SLUICE), "audit", "decrypt", str(env.audit)], capture_output=True,
                         text=True, env={**os.environ, "SLUICE_AUDIT_KEY": AUDIT_KEY})
    assert out.returncode == 0, out.stderr
    assert "Reykjavik" in out.stdout

    assert env.metric('sluice_mcp_tool_calls_total{server="weather",tool="forecast",outcome="ok"}') >= 1
    assert env.metric('sluice_mcp_tool_call_duration_seconds_count{server="weather",tool="forecast"}') >= 1
    assert env.metric('sluice_mcp_server_up{server="everything"}') == 1

    spans = wait_for(lambda: [s for s in env.rx.by_name("execute_tool")
                              if s["attributes"].get("gen_ai.tool.name") == "weather__forecast"], what="span")
    a = spans[0]["attributes"]
    assert a["gen_ai.operation.name"] == "execute_tool" and a["sluice.mcp.server"] == "weather"


def test_an_upstream_killed_mid_call_fails_clearly_and_restarts(env):
    old = server(env, "everything")
    assert old["state"] == "ready" and old["pid"]

    async def go():
        async with client(env, mode="legacy") as c:
            async def kill_soon():
                await anyio.sleep(0.5)
                os.kill(old["pid"], signal.SIGKILL)
            async with anyio.create_task_group() as tg:
                tg.start_soon(kill_soon)
                t0 = time.monotonic()
                with pytest.raises(MCPError, match="everything") as e:
                    await c.call_tool("everything__trigger-long-running-operation", {"duration": 20, "steps": 20})
                assert time.monotonic() - t0 < 5
            assert "went away" in str(e.value) or "unavailable" in str(e.value)
            # The other server is unaffected, at once.
            assert (await c.call_tool("weather__forecast", {"city": "Nuuk"})).content[0].text == "sunny in Nuuk"
    run(go)
    new = wait_for(lambda: (s := server(env, "everything"))["state"] == "ready" and s["pid"] != old["pid"] and s,
                   timeout=30, what="the child restarted")
    assert new["restarts"] >= old["restarts"] + 1 and new["tools"] == old["tools"]

    async def again():
        async with client(env) as c:
            assert (await c.call_tool("everything__echo", {"message": "back"})).content[0].text == "Echo: back"
    run(again)


def test_a_down_upstream_withdraws_its_tools_only(tmp_path):
    cfg = f"""
[[mcp_servers]]
name = "everything"
command = ["node", "{EVERYTHING}"]

[[mcp_servers]]
name = "gone"
url = "http://{DEAD.url}/mcp"

[[mcp_servers]]
name = "broken"
command = ["/nonexistent/tool-server"]
"""
    g = Gateway(cfg, tmp_path=tmp_path)
    try:
        wait_for(lambda: server(g, "everything")["state"] == "ready", timeout=30, what="everything ready")
        gone = wait_for(lambda: (s := server(g, "gone"))["last_error"] and s, what="gone's error")
        assert gone["state"] in ("down", "starting") and gone["tools"] == 0
        assert "cannot reach" in gone["last_error"]
        broken = wait_for(lambda: (s := server(g, "broken"))["last_error"] and s, what="broken's error")
        assert "cannot start" in broken["last_error"]

        async def go():
            async with client(g, token=None) as c:
                names = [t.name for t in (await c.list_tools()).tools]
                assert names and all(n.startswith("everything__") for n in names)
                with pytest.raises(MCPError, match="unavailable"):
                    await c.call_tool("gone__anything", {})
        run(go)
        assert g.metric('sluice_mcp_server_up{server="gone"}') == 0
        assert g.metric('sluice_mcp_server_up{server="everything"}') == 1
        assert "mcp server unavailable" in g.logs()
    finally:
        g.stop()


def test_check_config_validates_the_section(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("""
[[mcp_servers]]
name = "two__parts"
command = ["node", "x.js"]

[[mcp_servers]]
name = "both"
command = ["node", "x.js"]
url = "http://127.0.0.1:1/mcp"

[[mcp_servers]]
name = "web"
url = "ftp://example.com"

[[keys]]
name = "k"
sha256 = "%s"
mcp_tools = ["has space"]
""" % key_hash("x"))
    out = subprocess.run([str(SLUICE), "check-config", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0
    err = out.stdout + out.stderr
    assert f"{bad}:3:" in err and "without '__'" in err
    assert "exactly one of command" in err and f"{bad}:13:7" in err and "not an http" in err
    assert "mcp_tools" in err
    ok = tmp_path / "ok.toml"
    ok.write_text(f'[[mcp_servers]]\nname = "w"\nurl = "http://127.0.0.1:9000/mcp"\n')
    out = subprocess.run([str(SLUICE), "check-config", str(ok)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_session_opened_on_one_replica_continues_on_another(tmp_path, redis_server):
    cfg = f"""
[redis]
url = "{redis_server.url}"

[[mcp_servers]]
name = "everything"
command = ["node", "{EVERYTHING}"]
"""
    a, b = replicas(cfg, tmp_path)
    try:
        for g in (a, b):
            wait_for(lambda: server(g, "everything")["state"] == "ready", timeout=30, what="ready")
        h = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "t", "version": "1"}}}
        r = httpx.post(f"{a.url}/mcp", json=init, headers=h)
        assert r.status_code == 200 and r.json()["result"]["protocolVersion"] == "2025-06-18"
        sid = r.headers["mcp-session-id"]
        assert a.metric("sluice_mcp_sessions") == 1
        s = {**h, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
        assert httpx.post(f"{b.url}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                          headers=s).status_code == 202
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "everything__echo", "arguments": {"message": "on b"}}}
        r = wait_for(lambda: (r := httpx.post(f"{b.url}/mcp", json=call, headers=s)).status_code == 200 and r,
                     what="b knows the session")
        assert r.json()["result"]["content"][0]["text"] == "Echo: on b"
        assert "resultType" not in r.json()["result"], "a 2025-06-18 session gets 2025-06-18 results"
        assert redis_server.client.exists(f"sluice:mcp:session:{sid}")
        assert httpx.delete(f"{b.url}/mcp", headers=s).status_code == 200
        wait_for(lambda: not redis_server.client.exists(f"sluice:mcp:session:{sid}"), what="deleted")
        assert httpx.post(f"{b.url}/mcp", json=call, headers=s).status_code == 404
        # A session nobody opened is unknown everywhere.
        bogus = {**s, "mcp-session-id": "0" * 32}
        assert httpx.post(f"{a.url}/mcp", json=call, headers=bogus).status_code == 404
    finally:
        a.stop()
        b.stop()


def test_timeouts_cancel_upstream_and_a_reload_keeps_unchanged_servers(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    weather = Weather(markers)
    base = f"""
[[mcp_servers]]
name = "everything"
command = ["node", "{EVERYTHING}"]
"""
    slow = f'\n[[mcp_servers]]\nname = "weather"\nurl = "{weather.url}"\ntimeout_ms = 500\n'
    g = Gateway(base, tmp_path=tmp_path)
    try:
        first = wait_for(lambda: (s := server(g, "everything"))["state"] == "ready" and s, timeout=30, what="ready")
        (tmp_path / "sluice.toml").write_text(base + slow)
        r = httpx.post(f"{g.admin_url}/config/reload")
        assert r.status_code == 200, r.text
        wait_for(lambda: len(servers(g)) == 2 and server(g, "weather")["state"] == "ready", what="weather added")
        kept = server(g, "everything")
        assert kept["pid"] == first["pid"] and kept["restarts"] == first["restarts"], "unchanged: not restarted"

        async def go():
            async with client(g, token=None) as c:
                assert "weather__forecast" in [t.name for t in (await c.list_tools()).tools]
                t0 = time.monotonic()
                with pytest.raises(MCPError, match="within 500 ms"):
                    await c.call_tool("weather__slow", {"seconds": 10, "tag": "timeout"})
                assert time.monotonic() - t0 < 3
        run(go)
        wait_for(lambda: (markers / "cancelled-timeout").exists(), what="the upstream call cancelled")
        assert g.metric('sluice_mcp_tool_calls_total{server="weather",tool="slow",outcome="timeout"}') == 1

        # Removed from the file: its tools go.
        (tmp_path / "sluice.toml").write_text(base)
        assert httpx.post(f"{g.admin_url}/config/reload").status_code == 200
        assert [s["name"] for s in servers(g)] == ["everything"]

        async def gone():
            async with client(g, token=None) as c:
                names = [t.name for t in (await c.list_tools()).tools]
                assert names and not any(n.startswith("weather__") for n in names)
        run(gone)
    finally:
        g.stop()
        weather.stop()

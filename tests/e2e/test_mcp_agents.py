"""Agents as tool providers: an agent connected to the hub over a real
WebSocket declares tools in its hello; MCP clients (the official SDK) list
and call them at `/mcp` as `agent.{id}__{tool}` — also when the call enters
one replica and the agent sits on another (Redis)."""

import asyncio
import json

import httpx
import httpx2
import pytest
import websockets
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import Gateway, key_hash, replicas

HUB = """
[agents]
heartbeat_ms = 500
"""
TOOLS = [
    {"name": "lookup", "description": "Looks a word up",
     "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}},
    {"name": "weather", "input_schema": {"type": "object"}},
]


def mcp(g, mode="auto", token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30))
    return Client(streamable_http_client(f"{g.url}/mcp", http_client=http), mode=mode)


async def agent(g, agent_id, tools=TOOLS, groups=(), token=None):
    """Connects, declares `tools`, and answers every tool call until closed."""
    url = g.url.replace("http://", "ws://") + "/v1/agents/connect"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ws = await websockets.connect(url, additional_headers=headers)
    await ws.send(json.dumps({"type": "hello", "agent_id": agent_id, "groups": list(groups), "tools": tools}))
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert welcome["type"] == "welcome", welcome
    calls = []

    async def serve():
        async for raw in ws:
            m = json.loads(raw)
            if m.get("type") != "instruction":
                continue
            p = m["payload"]
            calls.append(p)
            await ws.send(json.dumps({"type": "ack", "id": m["id"]}))
            if p["tool"] == "lookup":
                result = {"content": [{"type": "text", "text": f"{agent_id} found {p['arguments']['q']}"}]}
            else:
                result = {"temp_c": 21, "agent": agent_id}
            await ws.send(json.dumps({"type": "result", "id": m["id"], "payload": result}))

    task = asyncio.create_task(serve())
    return ws, task, calls


async def names(g, mode="auto", token=None):
    async with mcp(g, mode, token) as c:
        return sorted(t.name for t in (await c.list_tools()).tools)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_an_agents_tools_are_listed_called_and_withdrawn(tmp_path, mode):
    g = Gateway(HUB, tmp_path=tmp_path)
    try:
        async def go():
            assert await names(g, mode) == []
            ws, task, calls = await agent(g, "a1")
            assert await names(g, mode) == ["agent.a1__lookup", "agent.a1__weather"]
            async with mcp(g, mode) as c:
                tools = {t.name: t for t in (await c.list_tools()).tools}
                assert tools["agent.a1__lookup"].description == "Looks a word up"
                assert tools["agent.a1__lookup"].input_schema["required"] == ["q"]
                r = await c.call_tool("agent.a1__lookup", {"q": "otter"})
                assert r.content[0].text == "a1 found otter" and not r.is_error
                r = await c.call_tool("agent.a1__weather", {})
                assert r.structured_content == {"temp_c": 21, "agent": "a1"}
                with pytest.raises(MCPError, match="Unknown tool"):
                    await c.call_tool("agent.a1__nope", {})
            assert calls[0] == {"type": "tool_call", "tool": "lookup", "arguments": {"q": "otter"}}
            await ws.close()
            task.cancel()
            for _ in range(100):
                if await names(g, mode) == []:
                    break
                await asyncio.sleep(0.05)
            assert await names(g, mode) == []
            async with mcp(g, mode) as c:
                with pytest.raises(MCPError, match="Unknown tool"):
                    await c.call_tool("agent.a1__lookup", {"q": "x"})
        asyncio.run(go())
        assert g.metric('sluice_mcp_tool_calls_total{server="agent.a1",tool="lookup",outcome="ok"}') == 1
    finally:
        g.stop()


def test_keys_agent_groups_and_mcp_tools_apply_to_agents_tools(tmp_path):
    cfg = HUB + f"""
[[keys]]
name = "ops"
sha256 = "{key_hash("sk-ops")}"
agent_groups = ["ops"]

[[keys]]
name = "lookups"
sha256 = "{key_hash("sk-lookups")}"
mcp_tools = ["agent.*__lookup"]
"""
    g = Gateway(cfg, tmp_path=tmp_path)
    try:
        async def go():
            _, t1, _ = await agent(g, "in-ops", groups=["ops"], token="sk-ops")
            _, t2, _ = await agent(g, "elsewhere", groups=["lab"], token="sk-lookups")
            assert await names(g, token="sk-ops") == [
                "agent.in-ops__lookup", "agent.in-ops__weather", "group.ops__lookup", "group.ops__weather"]
            assert await names(g, token="sk-lookups") == ["agent.elsewhere__lookup", "agent.in-ops__lookup"]
            async with mcp(g, token="sk-ops") as c:
                with pytest.raises(MCPError, match="Unknown tool"):
                    await c.call_tool("agent.elsewhere__lookup", {"q": "x"})
                with pytest.raises(MCPError, match="Unknown tool"):
                    await c.call_tool("group.lab__lookup", {"q": "x"})
                # A group's tool goes to a member that has it.
                r = await c.call_tool("group.ops__lookup", {"q": "g"})
                assert r.content[0].text == "in-ops found g"
            t1.cancel()
            t2.cancel()
        asyncio.run(go())
    finally:
        g.stop()


def test_a_call_entering_one_replica_reaches_the_agent_on_another(tmp_path, redis_server):
    cfg = f'[redis]\nurl = "{redis_server.url}"\n' + HUB + "presence_ttl_ms = 3000\n"
    a, b = replicas(cfg, tmp_path)
    try:
        async def go():
            ws, task, calls = await agent(b, "roamer")
            for _ in range(100):  # presence is written in the background
                if "agent.roamer__lookup" in await names(a):
                    break
                await asyncio.sleep(0.05)
            assert await names(a) == ["agent.roamer__lookup", "agent.roamer__weather"]
            for mode in ["auto", "legacy"]:
                async with mcp(a, mode) as c:
                    r = await c.call_tool("agent.roamer__lookup", {"q": mode})
                    assert r.content[0].text == f"roamer found {mode}"
            assert [c["arguments"] for c in calls] == [{"q": "auto"}, {"q": "legacy"}]
            async with httpx.AsyncClient() as h:
                assert (await h.get(f"{a.base_url}/agents")).json()["total"] == 0
            await ws.close()
            task.cancel()
        asyncio.run(go())
        assert a.metric('sluice_mcp_tool_calls_total{server="agent.roamer",tool="lookup",outcome="ok"}') == 2
    finally:
        a.stop()
        b.stop()


def test_clients_are_told_when_an_agent_brings_or_takes_tools(tmp_path):
    g = Gateway(HUB, tmp_path=tmp_path)
    try:
        async def modern():
            # 2026-07-28: subscriptions/listen.
            async with mcp(g) as c:
                async with c.listen(tools_list_changed=True) as sub:
                    assert sub.honored.tools_list_changed is True
                    ws, task, _ = await agent(g, "newcomer")
                    event = await asyncio.wait_for(sub.__anext__(), 10)
                    assert type(event).__name__ == "ToolsListChanged"
                    assert "agent.newcomer__lookup" in [t.name for t in (await c.list_tools()).tools]
                    await ws.close()
                    task.cancel()

        async def legacy():
            # The handshake revisions: the session's GET stream.
            seen = asyncio.Event()

            async def on_message(m):
                if getattr(getattr(m, "root", m), "method", "") == "notifications/tools/list_changed":
                    seen.set()
            headers = {}
            http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30))
            async with Client(streamable_http_client(f"{g.url}/mcp", http_client=http), mode="legacy",
                              message_handler=on_message) as c:
                await c.list_tools()
                await asyncio.sleep(0.3)  # the GET stream is opened in the background
                ws, task, _ = await agent(g, "another")
                await asyncio.wait_for(seen.wait(), 10)
                await ws.close()
                task.cancel()
        asyncio.run(modern())
        asyncio.run(legacy())
    finally:
        g.stop()

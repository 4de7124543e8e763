"""The agent hub with real WebSocket clients (`websockets`): hello/welcome,
instructions with acks and results, broadcast, presence, events, heartbeat
eviction, replacement, overflow, malformed and oversize frames, chat over the
socket, keys, shutdown, and two replicas through a real Redis."""

import asyncio
import json
import subprocess
import sys
import time

import httpx
import pytest
import websockets

from conftest import ROOT, SLUICE, Gateway, key_hash

HUB = """
[agents]
heartbeat_ms = 200
missed_heartbeats = 2
hello_timeout_ms = 300
queue_depth = 4
max_frame_bytes = 4096

[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 4

[[models]]
name = "mock-1"
targets = [{ provider = "mock" }]
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    g = Gateway(HUB, tmp_path=tmp_path_factory.mktemp("hub"))
    yield g
    g.assert_alive()
    g.stop()


def ws_url(g):
    return g.url.replace("http://", "ws://") + "/v1/agents/connect"


async def connect(g, agent_id, groups=(), headers=None):
    ws = await websockets.connect(ws_url(g), additional_headers=headers or {}, max_size=None)
    await ws.send(json.dumps({"type": "hello", "agent_id": agent_id, "groups": list(groups),
                              "capabilities": ["test"]}))
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert welcome["type"] == "welcome" and welcome["agent_id"] == agent_id
    return ws


async def next_of(ws, kind, timeout=5):
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if m["type"] == kind:
            return m


async def close_code(ws, timeout=5):
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else ""


def run(coro):
    return asyncio.run(coro)


def test_payload_reaches_the_agent_as_written_and_the_record_answers_whole(hub):
    """The payload goes to the agent as the client wrote it (checked, not
    rebuilt): an integer past 64 bits stays exact, escapes and nesting
    survive. A waited-for answer and a poll carry the whole record."""
    async def go():
        ws = await connect(hub, "exact-1", ["gx"])
        async with httpx.AsyncClient(base_url=hub.base_url) as c:
            body = ('{ "payload" : {"big": %d, "s": "\\u00e9 \\"q\\" \\u2028",\n'
                    '  "deep": [[{"a": [1, 2.5e-3, null, true]}]]},\n "wait_ack_ms": 3000 }') % (2**70)
            want = json.loads(body)["payload"]
            assert want["big"] == 2**70
            t = asyncio.create_task(c.post("/agents/exact-1/instructions", content=body,
                                           headers={"content-type": "application/json"}))
            m = await next_of(ws, "instruction")
            assert m["payload"] == want and isinstance(m["payload"]["big"], int)
            await ws.send(json.dumps({"type": "ack", "id": m["id"]}))
            r = await t
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "application/json"
            rec = r.json()
            assert rec["id"] == m["id"] and rec["agent_id"] == "exact-1" and rec["status"] == "acked"
            assert rec["created_at"].endswith("Z") and rec["updated_at"] >= rec["created_at"]
            assert "result" not in rec
            await ws.send(json.dumps({"type": "result", "id": m["id"], "payload": {"k": [1, "é"]}}))
            for _ in range(100):
                got = await c.get(f"/agents/instructions/{m['id']}")
                if got.json()["status"] == "completed":
                    break
                await asyncio.sleep(0.02)
            assert got.headers["content-type"] == "application/json"
            assert got.json() == {**rec, "status": "completed", "result": {"k": [1, "é"]},
                                  "updated_at": got.json()["updated_at"]}
            # A payload that is not JSON is refused before anything is sent.
            bad = await c.post("/agents/exact-1/instructions", content='{"payload": {"a": }}',
                               headers={"content-type": "application/json"})
            assert bad.status_code == 400, bad.text
        await ws.close()
    run(go())


def test_instruction_ack_result_and_poll(hub):
    async def go():
        ws = await connect(hub, "worker-1", ["g1"])
        async with httpx.AsyncClient(base_url=hub.base_url) as c:
            # Queued, then polled.
            r = await c.post("/agents/worker-1/instructions", json={"payload": {"n": 1}})
            assert r.status_code == 202 and r.json()["status"] == "queued"
            iid = r.json()["id"]
            m = await next_of(ws, "instruction")
            assert m == {"type": "instruction", "id": iid, "payload": {"n": 1}}
            assert (await c.get(f"/agents/instructions/{iid}")).json()["status"] == "delivered"
            await ws.send(json.dumps({"type": "ack", "id": iid}))
            await ws.send(json.dumps({"type": "result", "id": iid, "payload": {"done": True}}))
            for _ in range(50):
                rec = (await c.get(f"/agents/instructions/{iid}")).json()
                if rec["status"] == "completed":
                    break
                await asyncio.sleep(0.02)
            assert rec["result"] == {"done": True}

            # Waiting for the ack.
            t = asyncio.create_task(c.post("/agents/worker-1/instructions",
                                           json={"payload": "x", "wait_ack_ms": 3000}))
            m = await next_of(ws, "instruction")
            await ws.send(json.dumps({"type": "ack", "id": m["id"]}))
            r = await t
            assert r.status_code == 200 and r.json()["status"] == "acked"

            # Waiting for a result that does not come in time: 504.
            t0 = time.monotonic()
            r = await c.post("/agents/worker-1/instructions", json={"payload": "x", "wait_result_ms": 300})
            assert r.status_code == 504 and r.json()["status"] == "delivered"
            took = time.monotonic() - t0
            assert 0.25 <= took < 10, took  # not before the wait; the status says it timed out

            # Unknown agent, bad body, unknown instruction.
            assert (await c.post("/agents/nobody/instructions", json={"payload": 1})).json()["error"]["code"] == "agent_not_found"
            assert (await c.post("/agents/worker-1/instructions", json={"nope": 1})).status_code == 400
            assert (await c.get("/agents/instructions/ins_0")).status_code == 404
        await ws.close()
    run(go())


def test_presence_and_broadcast(hub):
    async def go():
        a = await connect(hub, "b-1", ["blue"])
        b = await connect(hub, "b-2", ["blue", "red"])
        c_ = await connect(hub, "r-1", ["red"])
        async with httpx.AsyncClient(base_url=hub.base_url) as c:
            blue = (await c.get("/agents", params={"group": "blue"})).json()
            assert blue["total"] == 2 and [x["agent_id"] for x in blue["data"]] == ["b-1", "b-2"]
            one = (await c.get("/agents/b-2")).json()
            assert one["groups"] == ["blue", "red"] and one["capabilities"] == ["test"]
            assert one["last_seen_ms_ago"] < 5000 and one["queue_depth"] == 0
            assert (await c.get("/agents/zz")).status_code == 404

            async def acker(ws):
                m = await next_of(ws, "instruction")
                await ws.send(json.dumps({"type": "result", "id": m["id"], "payload": m["payload"]}))
            acks = [asyncio.create_task(acker(w)) for w in (a, b)]
            r = await c.post("/agent-groups/blue/instructions", json={"payload": "hi blue", "wait_result_ms": 3000})
            await asyncio.gather(*acks)
            ins = r.json()["instructions"]
            assert sorted(i["agent_id"] for i in ins) == ["b-1", "b-2"]
            assert all(i["status"] == "completed" and i["result"] == "hi blue" for i in ins)
        for w in (a, b, c_):
            await w.close()
    run(go())


def test_heartbeat_eviction_reports_undelivered(hub):
    async def go():
        async with httpx.AsyncClient(base_url=hub.base_url) as c:
            ws = await connect(hub, "sleepy")
            # Stop reading: pings go unanswered, as from a dead peer.
            ws.transport.pause_reading()
            t0 = time.monotonic()
            r = await c.post("/agents/sleepy/instructions", json={"payload": "x", "wait_ack_ms": 5000})
            waited = time.monotonic() - t0
            assert r.status_code == 503 and r.json()["status"] == "undelivered", r.text
            # 2 missed heartbeats of 200 ms, checked every 200 ms.
            assert 0.3 <= waited < 4.5, waited  # well before the 5 s wait for an ack
            assert (await c.get("/agents/sleepy")).status_code == 404
        ws.transport.abort()
    run(go())
    assert hub.metric("sluice_agent_evictions_total") >= 1


def test_reconnect_replaces_the_old_session(hub):
    async def go():
        old = await connect(hub, "dup")
        new = await connect(hub, "dup")
        code, reason = await close_code(old)
        assert code == 4000 and "replaced" in reason
        async with httpx.AsyncClient(base_url=hub.base_url) as c:
            r = await c.post("/agents/dup/instructions", json={"payload": 7})
            assert r.status_code == 202
            assert (await next_of(new, "instruction"))["payload"] == 7
            assert (await c.get("/agents", params={"group": ""})).status_code == 200
        await new.close()
    run(go())


def test_slow_agent_overflows_without_delaying_others(tmp_path):
    # Long heartbeats here: the stuck agent must stay connected while its queue fills.
    hub = Gateway(HUB.replace("heartbeat_ms = 200", "heartbeat_ms = 30000"), tmp_path=tmp_path)

    async def go():
        slow = await connect(hub, "slow")
        fast = await connect(hub, "fast")
        slow.transport.pause_reading()
        big = "x" * 200_000  # fills the socket buffers in a few dozen frames
        codes = []
        async with httpx.AsyncClient(base_url=hub.base_url) as c:
            for _ in range(400):
                r = await c.post("/agents/slow/instructions", json={"payload": big})
                codes.append(r.status_code)
                if r.status_code == 429:
                    assert r.json()["error"]["code"] == "agent_queue_full"
                    assert r.headers["retry-after"] == "1"
                    break
            assert codes[-1] == 429, f"no overflow after {len(codes)} instructions"
            # The fast agent is not held up by the stuck one.
            t0 = time.monotonic()
            t = asyncio.create_task(c.post("/agents/fast/instructions", json={"payload": 1, "wait_ack_ms": 2000}))
            m = await next_of(fast, "instruction")
            await fast.send(json.dumps({"type": "ack", "id": m["id"]}))
            assert (await t).status_code == 200
            # Acked long before its 2 s wait ran out (status 200, not 504).
            assert time.monotonic() - t0 < 1.9
        slow.transport.abort()
        await fast.close()
    try:
        run(go())
        assert hub.metric('sluice_agent_instructions_total{outcome="overflow"}') >= 1
        hub.assert_alive()
    finally:
        hub.stop()


@pytest.mark.parametrize("first,frames,code", [
    ("hello", ["not json"], 1007),
    ("hello", [b"\x00\x01"], 1003),
    ("hello", [json.dumps({"type": "teleport"})], 1008),
    ("hello", [json.dumps({"type": "ack"})], 1008),
    ("hello", [json.dumps({"type": "hello", "agent_id": "again"})], 1008),
    ("hello", [json.dumps({"type": "event", "payload": "y" * 5000})], 1009),
    ("none", [json.dumps({"type": "ack", "id": "x"})], 1008),
    ("none", [json.dumps({"type": "hello", "agent_id": "bad id!"})], 1008),
    ("none", ["{"], 1007),
    ("none", [], 4001),
])
def test_malformed_frames_close_with_a_clear_code(hub, first, frames, code):
    async def go():
        ws = await websockets.connect(ws_url(hub), max_size=None)
        if first == "hello":
            await ws.send(json.dumps({"type": "hello", "agent_id": "malformed"}))
            await next_of(ws, "welcome")
        for f in frames:
            await ws.send(f)
        got, _ = await close_code(ws)
        assert got == code
    run(go())
    hub.assert_alive()


def test_events_stream(hub):
    async def go():
        async with httpx.AsyncClient(base_url=hub.base_url, timeout=10) as c:
            async with c.stream("GET", "/agents/events") as s:
                lines = s.aiter_lines()
                assert (await anext(lines)).startswith(": connected")
                ws = await connect(hub, "eventful", ["e"])
                await ws.send(json.dumps({"type": "event", "payload": {"temp": 71}}))
                r = await c.post("/agents/eventful/instructions", json={"payload": "p"})
                iid = r.json()["id"]
                m = await next_of(ws, "instruction")
                await ws.send(json.dumps({"type": "result", "id": m["id"], "payload": 42}))
                await ws.close()
                seen = []
                async for line in lines:
                    if line.startswith("data: "):
                        e = json.loads(line[6:])
                        if e.get("agent_id") == "eventful":
                            seen.append(e)
                            if e["type"] == "agent.disconnected":
                                break
                types = [e["type"] for e in seen]
                assert types[0] == "agent.connected"
                assert {"type": "agent.event", "payload": {"temp": 71}}.items() <= next(e for e in seen if e["type"] == "agent.event").items()
                done = next(e for e in seen if e["type"] == "instruction.completed")
                assert done["id"] == iid and done["result"] == 42
                assert types[-1] == "agent.disconnected"
    run(go())


def test_chat_over_the_socket(hub):
    async def go():
        ws = await connect(hub, "chatter")
        await ws.send(json.dumps({"type": "chat", "id": "c1",
                                  "request": {"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}}))
        await ws.send(json.dumps({"type": "chat", "id": "c2",
                                  "request": {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}}))
        text, done, err = "", False, None
        while not (done and err):
            m = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if m["type"] == "chat.chunk" and m["id"] == "c1":
                for ch in m["chunk"].get("choices", []):
                    text += ch["delta"].get("content") or ""
            elif m["type"] == "chat.done":
                assert m["id"] == "c1"
                done = True
            elif m["type"] == "chat.error":
                err = m
        # The same text the HTTP API gives for the same request.
        same = httpx.post(f"{hub.base_url}/chat/completions",
                          json={"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]})
        assert text and text == same.json()["choices"][0]["message"]["content"]
        assert err["id"] == "c2" and err["status"] == 404 and err["error"]["code"] == "model_not_found"
        await ws.close()
    run(go())
    assert 'route="/v1/agents/connect#chat"' in hub.metrics_text()


@pytest.mark.parametrize("client", ["python", "rust"])
def test_reference_clients(hub, client):
    """examples/agent.py and crates/sluice/examples/agent.rs: each connects,
    acks and answers an instruction."""
    agent_id = f"ref-{client}"
    if client == "python":
        args = [sys.executable, str(ROOT / "examples" / "agent.py"), "--url", hub.url,
                "--agent-id", agent_id, "--group", "refs"]
    else:
        args = [str(SLUICE.parent / "examples" / "agent"), ws_url(hub), agent_id, "refs"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            if httpx.get(f"{hub.base_url}/agents/{agent_id}").status_code == 200:
                break
            time.sleep(0.05)
        r = httpx.post(f"{hub.base_url}/agents/{agent_id}/instructions",
                       json={"payload": {"echo": "hello"}, "wait_result_ms": 3000})
        assert r.status_code == 200, r.text
        assert r.json()["result"] == {"echo": "hello"}
        assert httpx.get(f"{hub.base_url}/agents/{agent_id}").json()["groups"] == ["refs"]
    finally:
        p.terminate()
        p.wait(timeout=5)


def test_keys_guard_the_hub(tmp_path):
    cfg = HUB + f'\n[[keys]]\nname = "ops"\nsha256 = "{key_hash("sk-ops")}"\n'
    g = Gateway(cfg, tmp_path=tmp_path)
    try:
        async def go():
            with pytest.raises(websockets.InvalidStatus) as e:
                await websockets.connect(ws_url(g))
            assert e.value.response.status_code == 401
            ws = await connect(g, "keyed", headers={"Authorization": "Bearer sk-ops"})
            async with httpx.AsyncClient(base_url=g.base_url) as c:
                assert (await c.get("/agents")).status_code == 401
                r = await c.get("/agents", headers={"Authorization": "Bearer sk-ops"})
                assert r.json()["total"] == 1
            # The agent's chats use its connection's key.
            await ws.send(json.dumps({"type": "chat", "id": "k", "request": {
                "model": "mock-1", "messages": [{"role": "user", "content": "x"}]}}))
            assert (await next_of(ws, "chat.done"))["id"] == "k"
            await ws.close()
        run(go())
    finally:
        g.stop()


def test_shutdown_tells_agents_to_reconnect(tmp_path):
    g = Gateway(HUB, tmp_path=tmp_path)

    async def go():
        ws = await connect(g, "leaving")
        g.proc.terminate()
        code, reason = await close_code(ws)
        assert code == 1001 and "reconnect" in reason
    run(go())
    g.proc.wait(timeout=10)
    assert g.proc.returncode == 0


def test_two_replicas_through_redis(tmp_path, redis_server):
    cfg = HUB.replace("[agents]", f'[redis]\nurl = "{redis_server.url}"\n\n[agents]\npresence_ttl_ms = 3000')
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Gateway(cfg, tmp_path=tmp_path / "a")
    b = Gateway(cfg, tmp_path=tmp_path / "b")
    try:
        async def go():
            ws = await connect(a, "roamer", ["fleet"])
            async with httpx.AsyncClient() as c:
                for _ in range(100):  # presence is written in the background
                    p = await c.get(f"{b.base_url}/agents/roamer")
                    if p.status_code == 200:
                        break
                    await asyncio.sleep(0.02)
                local = (await c.get(f"{a.base_url}/agents/roamer")).json()
                assert p.json()["replica"] == local["replica"]
                assert (await c.get(f"{b.base_url}/agents")).json()["total"] == 0

                async def answer():
                    m = await next_of(ws, "instruction")
                    await ws.send(json.dumps({"type": "ack", "id": m["id"]}))
                    await ws.send(json.dumps({"type": "result", "id": m["id"], "payload": {"via": "a"}}))
                    return m
                t = asyncio.create_task(answer())
                r = await c.post(f"{b.base_url}/agents/roamer/instructions",
                                 json={"payload": {"from": "b"}, "wait_result_ms": 3000})
                m = await t
                assert r.status_code == 200, r.text
                assert r.json()["status"] == "completed" and r.json()["result"] == {"via": "a"}
                assert m["payload"] == {"from": "b"}
                # The record on b follows too.
                assert (await c.get(f"{b.base_url}/agents/instructions/{m['id']}")).json()["status"] == "completed"

                # Payloads cross as they were sent: null, escapes, big numbers, deep nesting.
                for payload in (None, {"s": "é \"q\" \u2028 \\", "n": None, "f": 1.5e300, "i": -(2**63)},
                                [[[{"k": [1, "2", False]}]]]):
                    r = await c.post(f"{b.base_url}/agents/roamer/instructions", json={"payload": payload})
                    assert r.status_code == 202, r.text
                    m = await next_of(ws, "instruction")
                    assert m["id"] == r.json()["id"] and m["payload"] == payload
                    await ws.send(json.dumps({"type": "ack", "id": m["id"]}))

                # Group broadcast from b reaches the member on a.
                t = asyncio.create_task(answer())
                r = await c.post(f"{b.base_url}/agent-groups/fleet/instructions",
                                 json={"payload": 2, "wait_result_ms": 3000})
                await t
                ins = r.json()["instructions"]
                assert [(i["agent_id"], i["status"]) for i in ins] == [("roamer", "completed")]

                # Reconnecting to b replaces the session on a.
                ws2 = await connect(b, "roamer", ["fleet"])
                code, _ = await close_code(ws)
                assert code == 4000
                r = await c.post(f"{a.base_url}/agents/roamer/instructions", json={"payload": 3})
                assert r.status_code == 202
                assert (await next_of(ws2, "instruction"))["payload"] == 3
                await ws2.close()
                for _ in range(100):
                    if (await c.get(f"{a.base_url}/agents/roamer")).status_code == 404:
                        break
                    await asyncio.sleep(0.02)
                assert (await c.post(f"{a.base_url}/agents/roamer/instructions", json={"payload": 4})).status_code == 404
        run(go())
    finally:
        a.stop()
        b.stop()


def scoped_keys(*groups):
    """`[[keys]]`: `ops` (sk-ops, every agent), and per group `fleet-x` a key
    `sk-x` limited to it."""
    text = f'[[keys]]\nname = "ops"\nsha256 = "{key_hash("sk-ops")}"\n'
    for g in groups:
        text += (f'\n[[keys]]\nname = "fleet-{g}"\nsha256 = "{key_hash("sk-" + g)}"\n'
                 f'agent_groups = ["fleet-{g}"]\n')
    return text


def test_keys_limited_to_agent_groups(tmp_path):
    cfg = HUB + scoped_keys("a")
    g = Gateway(cfg, tmp_path=tmp_path)
    ops = {"Authorization": "Bearer sk-ops"}
    a = {"Authorization": "Bearer sk-a"}
    try:
        async def go():
            # A scoped key joins only its groups.
            mine = await connect(g, "a-1", ["fleet-a"], headers=a)
            ws = await websockets.connect(ws_url(g), additional_headers=a)
            await ws.send(json.dumps({"type": "hello", "agent_id": "sneaky", "groups": ["fleet-b"]}))
            code, reason = await close_code(ws)
            assert code == 1008 and "fleet-a" in reason
            other = await connect(g, "b-1", ["fleet-b"], headers=ops)
            async with httpx.AsyncClient(base_url=g.base_url) as c:
                # It sees and instructs its own agents only.
                listed = (await c.get("/agents", headers=a)).json()
                assert [x["agent_id"] for x in listed["data"]] == ["a-1"]
                assert (await c.get("/agents/b-1", headers=a)).status_code == 404
                r = await c.post("/agents/b-1/instructions", json={"payload": 1}, headers=a)
                assert r.status_code == 403 and r.json()["error"]["code"] == "agent_not_allowed"
                r = await c.post("/agent-groups/fleet-b/instructions", json={"payload": 1}, headers=a)
                assert r.status_code == 403
                r = await c.post("/agents/a-1/instructions", json={"payload": 2}, headers=a)
                assert r.status_code == 202
                assert (await next_of(mine, "instruction"))["payload"] == 2
                assert (await c.get(f"/agents/instructions/{r.json()['id']}", headers=a)).status_code == 200
                # Its event stream carries its groups' agents only.
                async def until(lines, payload, seen):
                    async for line in lines:
                        if line.startswith("data: "):
                            seen.append(json.loads(line[6:]))
                            if seen[-1].get("payload") == payload:
                                return

                async with c.stream("GET", "/agents/events", headers=a, timeout=10) as ev, \
                        c.stream("GET", "/agents/events", headers=ops, timeout=10) as all_ev:
                    lines, all_lines = ev.aiter_lines(), all_ev.aiter_lines()
                    assert (await anext(lines)).startswith(": connected")
                    assert (await anext(all_lines)).startswith(": connected")
                    await other.send(json.dumps({"type": "event", "payload": "from b"}))
                    # b's event is published (an unscoped key sees it) before
                    # a's is sent: the scoped stream would get it first.
                    everyone = []
                    await asyncio.wait_for(until(all_lines, "from b", everyone), 5)
                    await mine.send(json.dumps({"type": "event", "payload": "from a"}))
                    seen = []
                    await asyncio.wait_for(until(lines, "from a", seen), 5)
                    assert all(e["agent_id"] == "a-1" for e in seen), seen
                    assert [e["agent_id"] for e in everyone][-1] == "b-1"
                # An unscoped key sees everyone.
                assert (await c.get("/agents", headers=ops)).json()["total"] == 2
                r = await c.post("/agents/b-1/instructions", json={"payload": 3}, headers=ops)
                assert r.status_code == 202
                assert (await next_of(other, "instruction"))["payload"] == 3
                # Instruction records of other groups are not found either.
                assert (await c.get(f"/agents/instructions/{r.json()['id']}", headers=a)).status_code == 404
            await mine.close()
            await other.close()
        run(go())
    finally:
        g.stop()


def test_an_agent_that_stops_reading_is_evicted_even_mid_write(hub):
    """Its socket fills and a write blocks: that must not keep it alive."""
    async def go():
        ws = await connect(hub, "stuck")
        ws.transport.pause_reading()
        ids = []
        async with httpx.AsyncClient(base_url=hub.base_url) as c:
            for _ in range(60):
                r = await c.post("/agents/stuck/instructions", json={"payload": "x" * 200_000})
                if r.status_code == 202:
                    ids.append(r.json()["id"])
                if r.status_code == 404:
                    break
            t0 = time.monotonic()
            while (await c.get("/agents/stuck")).status_code == 200:
                assert time.monotonic() - t0 < 15, "the stuck agent was never evicted"
                await asyncio.sleep(0.05)
            statuses = [(await c.get(f"/agents/instructions/{i}")).json()["status"] for i in ids]
            assert "undelivered" in statuses, statuses
        ws.transport.abort()
    run(go())
    hub.assert_alive()


def test_instructions_past_the_router_answer_as_through_it(hub):
    """`POST /v1/agents/{id}/instructions` skips the router when the id is
    plain (`crate::direct`); an id the router must decode takes it. Both
    answer alike: queued and delivered, a form body refused (415), a bad
    body (400), an unknown agent (404)."""
    async def go():
        plain, slashed = await connect(hub, "w-3"), await connect(hub, "team/w-3")
        async with httpx.AsyncClient(base_url=hub.base_url, headers={"accept-encoding": "identity"}) as c:
            for ws, path in ((plain, "/agents/w-3/instructions"), (slashed, "/agents/team%2Fw-3/instructions")):
                r = await c.post(path, json={"payload": {"to": path}})
                assert r.status_code == 202, r.text
                assert sorted(r.json()) == ["agent_id", "id", "status"]
                assert r.json()["agent_id"] == ("w-3" if ws is plain else "team/w-3")
                m = await next_of(ws, "instruction")
                assert m["id"] == r.json()["id"] and m["payload"] == {"to": path}
                r = await c.post(path, content=b'{"payload": 1}', headers={"content-type": "text/plain"})
                assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
                r = await c.post(path, content=b'{"payload": ', headers={"content-type": "application/json"})
                assert r.status_code == 400 and "invalid instruction" in r.json()["error"]["message"]
            r = await c.post("/agents/w-4/instructions", json={"payload": 1})
            assert r.status_code == 404 and r.json()["error"]["code"] == "agent_not_found"
            # A fixed path of the hub is not an agent, whichever way it is asked.
            r = await c.post("/agents/instructions/instructions", json={"payload": 1})
            assert r.status_code == 405
        await plain.close()
        await slashed.close()
    run(go())


def test_events_of_instructions_sent_across_replicas_carry_the_agents_groups(tmp_path, redis_server):
    """Posted on b for an agent on a (one Redis call finds it and publishes):
    b's record follows the statuses that come back, and b's event stream
    shows them with the agent's groups, so a key limited to that group sees
    them and one limited to another group does not."""
    cfg = HUB.replace("[agents]", f'[redis]\nurl = "{redis_server.url}"\n\n[agents]')
    cfg += scoped_keys("a", "b")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Gateway(cfg, tmp_path=tmp_path / "a")
    b = Gateway(cfg, tmp_path=tmp_path / "b")
    ops, mine, other = ({"Authorization": f"Bearer {k}"} for k in ("sk-ops", "sk-a", "sk-b"))
    try:
        async def go():
            ws = await connect(a, "far-1", ["fleet-a"], headers=ops)
            async with httpx.AsyncClient(base_url=b.base_url) as c:
                for _ in range(100):  # presence is written in the background
                    if (await c.get("/agents/far-1", headers=ops)).status_code == 200:
                        break
                    await asyncio.sleep(0.02)

                async def answer():
                    m = await next_of(ws, "instruction")
                    await ws.send(json.dumps({"type": "ack", "id": m["id"]}))
                    await ws.send(json.dumps({"type": "result", "id": m["id"], "payload": {"n": 1}}))
                    return m

                async def events_of(lines, id_, want):
                    seen = []
                    async for line in lines:
                        if line.startswith("data: "):
                            e = json.loads(line[6:])
                            if e.get("id") == id_:
                                seen.append(e)
                                if e["type"] == want:
                                    return seen

                async with c.stream("GET", "/agents/events", headers=mine, timeout=10) as ev, \
                        c.stream("GET", "/agents/events", headers=other, timeout=10) as other_ev:
                    lines, other_lines = ev.aiter_lines(), other_ev.aiter_lines()
                    assert (await anext(lines)).startswith(": connected")
                    assert (await anext(other_lines)).startswith(": connected")
                    t = asyncio.create_task(answer())
                    r = await c.post("/agents/far-1/instructions", headers=mine,
                                     json={"payload": {"from": "b"}, "wait_result_ms": 5000})
                    m = await t
                    assert r.status_code == 200, r.text
                    assert r.json()["status"] == "completed" and r.json()["result"] == {"n": 1}
                    seen = await asyncio.wait_for(events_of(lines, m["id"], "instruction.completed"), 5)
                    assert [e["type"] for e in seen] == ["instruction.acked", "instruction.completed"], seen
                    assert all(e["groups"] == ["fleet-a"] and e["agent_id"] == "far-1" for e in seen), seen
                    assert seen[-1]["result"] == {"n": 1}
                    rec = await c.get(f"/agents/instructions/{m['id']}", headers=mine)
                    assert rec.status_code == 200 and rec.json()["status"] == "completed"
                    # Another group's key sees neither the events nor the record.
                    assert (await c.get(f"/agents/instructions/{m['id']}", headers=other)).status_code == 404
                    with pytest.raises(asyncio.TimeoutError):
                        await asyncio.wait_for(events_of(other_lines, m["id"], "instruction.completed"), 0.5)
                    # Nor may it send to the agent: refused by the Redis call
                    # that would have published it (checked below: the next
                    # instruction the agent gets is the one after).
                    for wait in ({}, {"wait_ack_ms": 2000}):
                        r = await c.post("/agents/far-1/instructions", headers=other,
                                         json={"payload": "not yours", **wait})
                        assert r.status_code == 403, r.text
                        assert r.json()["error"]["code"] == "agent_not_allowed"
                # An agent that does not ack at once: b's record still comes to
                # show `delivered` (held back briefly in case the ack follows).
                r = await c.post("/agents/far-1/instructions", headers=ops, json={"payload": 2})
                assert r.status_code == 202, r.text
                m = await next_of(ws, "instruction")
                assert m["payload"] == 2, m
                rec_url = f"/agents/instructions/{m['id']}"
                for _ in range(200):
                    status = (await c.get(rec_url, headers=ops)).json()["status"]
                    if status != "queued":
                        break
                    await asyncio.sleep(0.01)
                assert status == "delivered"
                await ws.send(json.dumps({"type": "ack", "id": m["id"]}))
                for _ in range(200):
                    status = (await c.get(rec_url, headers=ops)).json()["status"]
                    if status == "acked":
                        break
                    await asyncio.sleep(0.01)
                assert status == "acked"
                # Not connected anywhere: 404 (that no record stays behind is the unit
                # test forgotten_records_leave_no_place_behind).
                r = await c.post("/agents/nobody/instructions", headers=ops, json={"payload": 1})
                assert r.status_code == 404
            await ws.close()
        run(go())
    finally:
        a.stop()
        b.stop()

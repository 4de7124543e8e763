"""Reconnect storms and agents in transit: connects past
`[agents] max_connects_per_sec` are refused with 503 + Retry-After (and told
how to spread their retries), welcome and the shutdown close frame carry the
jitter to use, and an instruction for an agent that is not connected yet waits
for it within its wait_ack_ms instead of a 404 — on one replica and across two
through Redis."""

import asyncio
import json
import time

import httpx
import pytest
import websockets

from conftest import Gateway, replicas

HUB = """
[agents]
heartbeat_ms = 500
"""


def ws_url(g):
    return g.url.replace("http://", "ws://") + "/v1/agents/connect"


async def hello(g, agent_id):
    ws = await websockets.connect(ws_url(g))
    await ws.send(json.dumps({"type": "hello", "agent_id": agent_id}))
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


async def ack_one(ws):
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if m["type"] == "instruction":
            await ws.send(json.dumps({"type": "ack", "id": m["id"]}))
            return m


def test_connects_past_the_rate_are_refused_with_retry_advice(tmp_path):
    g = Gateway(HUB + "max_connects_per_sec = 5\n", tmp_path=tmp_path)
    try:
        async def go():
            socks = []
            for i in range(5):
                ws, welcome = await hello(g, f"s{i}")
                socks.append(ws)
            assert welcome["reconnect_jitter_ms"] >= 1000
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                await hello(g, "s5")
            r = refused.value.response
            assert r.status_code == 503
            assert int(r.headers["retry-after"]) >= 1
            assert int(r.headers["x-sluice-retry-after-ms"]) >= 0
            assert json.loads(r.body)["error"]["code"] == "agent_connects_paced"
            await asyncio.sleep(0.5)  # the bucket refills at 5 per second
            ws, _ = await hello(g, "s5")
            socks.append(ws)
            for s in socks:
                await s.close()
        asyncio.run(go())
        g.assert_alive()
    finally:
        g.stop()


def test_the_shutdown_close_frame_names_the_jitter(tmp_path):
    g = Gateway(HUB, tmp_path=tmp_path)

    async def go():
        ws, welcome = await hello(g, "leaver")
        assert welcome["reconnect_jitter_ms"] == 1000
        g.proc.terminate()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd.code == 1001
        assert "0-1000 ms" in closed.value.rcvd.reason
    try:
        asyncio.run(go())
    finally:
        g.proc.wait(timeout=15)


def test_an_instruction_waits_for_an_agent_in_transit(tmp_path):
    g = Gateway(HUB, tmp_path=tmp_path)
    try:
        async def go():
            async with httpx.AsyncClient(timeout=10) as c:
                # Not waiting: not connected is 404, as before.
                r = await c.post(f"{g.base_url}/agents/late/instructions", json={"payload": 1})
                assert r.status_code == 404
                # Waiting: the agent that shows up within the wait gets it.
                t0 = time.monotonic()
                post = asyncio.create_task(c.post(f"{g.base_url}/agents/late/instructions",
                                                  json={"payload": {"n": 2}, "wait_ack_ms": 3000}))
                await asyncio.sleep(0.5)
                ws, _ = await hello(g, "late")
                m = await ack_one(ws)
                r = await post
                assert r.status_code == 200, r.text
                assert r.json()["status"] == "acked" and m["payload"] == {"n": 2}
                assert 0.5 <= time.monotonic() - t0 < 3
                await ws.close()
                # One that never comes: 404 once the wait is over.
                t0 = time.monotonic()
                r = await c.post(f"{g.base_url}/agents/never/instructions",
                                 json={"payload": 3, "wait_ack_ms": 400})
                assert r.status_code == 404 and 0.35 <= time.monotonic() - t0 < 2
        asyncio.run(go())
    finally:
        g.stop()


def test_an_instruction_posted_to_one_replica_waits_for_an_agent_moving_to_another(tmp_path, redis_server):
    cfg = f'[redis]\nurl = "{redis_server.url}"\n' + HUB + "presence_ttl_ms = 3000\n"
    a, b = replicas(cfg, tmp_path)
    try:
        async def go():
            async with httpx.AsyncClient(timeout=10) as c:
                post = asyncio.create_task(c.post(f"{a.base_url}/agents/mover/instructions",
                                                  json={"payload": "hi", "wait_ack_ms": 5000}))
                await asyncio.sleep(0.4)
                ws, _ = await hello(b, "mover")
                m = await ack_one(ws)
                r = await post
                assert r.status_code == 200, r.text
                assert r.json()["status"] == "acked" and m["payload"] == "hi"
                await ws.close()
        asyncio.run(go())
    finally:
        a.stop()
        b.stop()

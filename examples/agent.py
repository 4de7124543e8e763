#!/usr/bin/env python3
"""A reference Sluice agent (see docs/agent-protocol.md), using `websockets`.

It says hello, acknowledges every instruction, runs it (here: echoes the
payload back as the result — put your work in `handle`), and reconnects with
back-off when the connection ends (a server shutting down closes with 1001:
reconnect, possibly to another replica).

    python examples/agent.py --url http://127.0.0.1:8080 --agent-id worker-1 --group workers
"""

import argparse
import asyncio
import json
import random

import websockets


async def handle(payload):
    """The agent's work. Replace with your own."""
    return payload


async def session(url, agent_id, groups, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with websockets.connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "hello", "agent_id": agent_id, "groups": groups,
                                  "capabilities": ["echo"]}))
        welcome = json.loads(await ws.recv())
        print(f"connected: {welcome}", flush=True)
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "instruction":
                await ws.send(json.dumps({"type": "ack", "id": msg["id"]}))
                result = await handle(msg["payload"])
                await ws.send(json.dumps({"type": "result", "id": msg["id"], "payload": result}))


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's API address")
    ap.add_argument("--agent-id", required=True)
    ap.add_argument("--group", action="append", default=[])
    ap.add_argument("--key", help="a virtual key, when the gateway has keys")
    args = ap.parse_args()
    url = args.url.replace("https://", "wss://").replace("http://", "ws://").rstrip("/") + "/v1/agents/connect"
    delay = 0.2
    while True:
        try:
            await session(url, args.agent_id, args.group, args.key)
            delay = 0.2
        except (OSError, websockets.WebSocketException) as e:
            print(f"disconnected: {e}", flush=True)
        await asyncio.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 10)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass

"""Connects N agents to a gateway at once (a reconnect storm), each retrying
a paced refusal (503) after the advised `x-sluice-retry-after-ms`; prints
`connected N refused R` when all are in, then holds them until stdin closes.

    python agent_burst.py ws://127.0.0.1:PORT/v1/agents/connect N PREFIX
"""

import asyncio
import json
import sys

import websockets


async def one(url, agent_id, stats, socks):
    while True:
        try:
            ws = await websockets.connect(url, open_timeout=60, ping_interval=None)
        except websockets.exceptions.InvalidStatus as e:
            if e.response.status_code != 503:
                raise
            stats["refused"] += 1
            await asyncio.sleep(int(e.response.headers["x-sluice-retry-after-ms"]) / 1000)
            continue
        await ws.send(json.dumps({"type": "hello", "agent_id": agent_id, "groups": ["burst"]}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert welcome["type"] == "welcome", welcome
        socks.append(ws)
        return


async def main():
    url, n, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    stats, socks = {"refused": 0}, []
    await asyncio.gather(*(one(url, f"{prefix}{i}", stats, socks) for i in range(n)))
    print(f"connected {len(socks)} refused {stats['refused']}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for ws in socks:
        await ws.close()


asyncio.run(main())

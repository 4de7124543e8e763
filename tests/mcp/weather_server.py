"""An MCP server over Streamable HTTP, written with the official Python SDK,
for the gateway's end-to-end tests: `python weather_server.py PORT MARKER_DIR`.
Prints "listening on 127.0.0.1:PORT" once it serves. A cancelled `slow`
call leaves a file in MARKER_DIR (the cancellation reached the server)."""

import sys
from pathlib import Path

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

PORT = int(sys.argv[1])
MARKERS = Path(sys.argv[2])

mcp = MCPServer("weather")


@mcp.tool()
async def forecast(city: str, ctx: Context) -> str:
    """The weather forecast for a city."""
    await ctx.report_progress(1, 2, "looking outside")
    return f"sunny in {city}"


@mcp.tool()
async def slow(seconds: float, tag: str, ctx: Context) -> str:
    """Sleeps, reporting progress every 100 ms; leaves a marker if cancelled."""
    steps = max(1, int(seconds * 10))
    try:
        for i in range(steps):
            await ctx.report_progress(i + 1, steps)
            await anyio.sleep(0.1)
    except anyio.get_cancelled_exc_class():
        (MARKERS / f"cancelled-{tag}").write_text("cancelled")
        raise
    return f"slept {seconds}"


@mcp.resource("weather://cities")
def cities() -> str:
    return "paris,rome"


@mcp.prompt()
def ask(city: str) -> str:
    return f"What is the weather in {city}?"


class Ready(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets)
        print(f"listening on 127.0.0.1:{PORT}", flush=True)


app = mcp.streamable_http_app()
Ready(uvicorn.Config(app, host="127.0.0.1", port=PORT, log_level="warning")).run()

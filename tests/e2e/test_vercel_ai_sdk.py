"""The Vercel AI SDK (Node): `openai(model)` speaks the Responses API by
default; generateText, streamText and a tool loop through Sluice, to the mock
and to an Anthropic-format upstream. scripts/test.sh installs tests/node."""

import json
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, Gateway

NODE_DIR = ROOT / "tests" / "node"


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    g = Gateway(f"""
[[providers]]
name = "mock"
kind = "mock"

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{upstream.url}/v1"
api_key = "sk-ant"

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]

[[models]]
name = "claude"
targets = [{{ provider = "claude", model = "claude-x" }}]
""", tmp_path=tmp_path_factory.mktemp("vercel"))
    yield g
    g.assert_alive()
    g.stop()


@pytest.mark.parametrize("model", ["mock-1", "claude"])
def test_generate_stream_and_tools(gw, model):
    assert shutil.which("node"), "node is installed by scripts/test.sh"
    assert (NODE_DIR / "node_modules" / "ai").is_dir(), "scripts/test.sh runs npm ci in tests/node"
    out = subprocess.run(["node", str(NODE_DIR / "vercel.mjs"), model], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "BASE": gw.base_url}, cwd=NODE_DIR)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["generated"].strip() and r["streamed"].strip()
    assert r["usage"]["inputTokens"] > 0 and r["usage"]["outputTokens"] > 0
    assert r["calls"] and r["steps"] >= 2, r
    assert r["final"].strip(), r

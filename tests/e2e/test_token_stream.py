"""POST /api/v2/chat/completions with `Accept: application/x-flatbuffers`:
size-prefixed FlatBuffers TokenChunks, read with the Python code flatc
generates from schema/token_chunk.fbs, through OpenAI- and Anthropic-format
upstreams and the built-in mock; the text equals the SSE path's."""

import importlib
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from conftest import Gateway

ROOT = Path(__file__).resolve().parents[2]
FLAT = {"accept": "application/x-flatbuffers"}


@pytest.fixture(scope="module")
def token_chunk(tmp_path_factory):
    out = tmp_path_factory.mktemp("flatc")
    subprocess.run(["flatc", "--python", "-o", str(out), str(ROOT / "schema/token_chunk.fbs")],
                   check=True)
    # flatc names the package `sluice` (as grpcio-tools does in test_grpc);
    # both modules imported now, since TokenChunk.Usage() imports lazily.
    for k in [k for k in sys.modules if k == "sluice" or k.startswith("sluice.")]:
        del sys.modules[k]
    sys.path.insert(0, str(out))
    try:
        importlib.import_module("sluice.Usage")
        return importlib.import_module("sluice.TokenChunk").TokenChunk
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    text = f"""
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{upstream.url}/v1"
api_key = "sk-ant"

[[providers]]
name = "oa"
kind = "openai"
base_url = "{upstream.url}/v1"
api_key = "sk-oa"
idle_timeout_ms = 400

[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 9

[[models]]
name = "claude"
targets = [{{ provider = "claude", model = "tokens-40" }}]

[[models]]
name = "gpt"
targets = [{{ provider = "oa", model = "tokens-40" }}]

[[models]]
name = "gpt-429"
targets = [{{ provider = "oa", model = "status-429" }}]

[[models]]
name = "gpt-reset"
targets = [{{ provider = "oa", model = "reset" }}]

[[models]]
name = "gpt-drip"
targets = [{{ provider = "oa", model = "drip-2000" }}]

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]
"""
    g = Gateway(text, tmp_path=tmp_path_factory.mktemp("tokens"))
    yield g
    g.assert_alive()
    g.stop()


def read_chunks(TokenChunk, body):
    """Every size-prefixed TokenChunk in `body`, as dicts."""
    out, at = [], 0
    while at < len(body):
        (n,) = struct.unpack_from("<I", body, at)
        buf = body[at + 4:at + 4 + n]
        assert len(buf) == n, "a chunk cut short"
        c = TokenChunk.GetRootAs(buf, 0)
        u = c.Usage()
        out.append({
            "id": c.Id(), "text": (c.Text() or b"").decode(), "logprob": c.Logprob(),
            "is_last": c.IsLast(), "finish_reason": (c.FinishReason() or b"").decode(),
            "usage": u and (u.PromptTokens(), u.CompletionTokens(), u.TotalTokens()),
        })
        at += 4 + n
    return out


def flat_chat(gw, model, **extra):
    return httpx.post(f"{gw.url}/api/v2/chat/completions", headers=FLAT, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "Say it"}], **extra})


def sse_text_and_usage(gw, model):
    client = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    text, usage = "", None
    for c in client.chat.completions.create(model=model, stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "Say it"}]):
        if c.choices and c.choices[0].delta.content:
            text += c.choices[0].delta.content
        usage = c.usage or usage
    return text, usage


@pytest.mark.parametrize("model", ["gpt", "claude", "mock-1"])
def test_flatbuffers_text_equals_the_sse_text(gw, token_chunk, model):
    r = flat_chat(gw, model)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-flatbuffers"
    chunks = read_chunks(token_chunk, r.content)
    text, usage = sse_text_and_usage(gw, model)
    assert len(text) > 10
    assert "".join(c["text"] for c in chunks) == text
    assert [c["id"] for c in chunks] == list(range(len(chunks)))
    assert [c["is_last"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    last = chunks[-1]
    assert last["finish_reason"] == "stop"
    assert last["usage"] == (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
    assert all(c["finish_reason"] == "" and c["usage"] is None for c in chunks[:-1])
    # One chunk per token the upstream streamed.
    assert len(chunks) - 1 >= usage.completion_tokens - 1


def test_a_non_streaming_body_is_still_answered_as_a_stream(gw, token_chunk):
    r = flat_chat(gw, "gpt", stream=False, max_tokens=5)
    chunks = read_chunks(token_chunk, r.content)
    assert chunks[-1]["is_last"] and len(chunks) > 2


def test_without_the_accept_header_it_is_the_openai_chat(gw):
    r = httpx.post(f"{gw.url}/api/v2/chat/completions", timeout=30,
                   json={"model": "gpt", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    assert r.json()["object"] == "chat.completion"


def test_errors_before_the_first_chunk_are_http_errors(gw):
    r = flat_chat(gw, "no-such-model")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert "no-such-model" in r.json()["error"]["message"]
    r = flat_chat(gw, "gpt-429")
    assert r.status_code == 429
    assert r.json()["error"]["message"]
    r = httpx.post(f"{gw.url}/api/v2/chat/completions", headers=FLAT, content=b"{not json")
    assert r.status_code == 400


def test_a_failure_after_the_first_chunk_is_a_last_error_chunk(gw, token_chunk):
    for model in ["gpt-reset", "gpt-drip"]:  # connection cut; upstream silent past idle timeout
        r = flat_chat(gw, model)
        assert r.status_code == 200
        chunks = read_chunks(token_chunk, r.content)
        assert len(chunks) >= 2, chunks
        last = chunks[-1]
        assert last["is_last"] and last["finish_reason"] == "error", last
        assert last["text"], "the error chunk carries the message"
        assert [c["id"] for c in chunks] == list(range(len(chunks)))
        assert not any(c["is_last"] for c in chunks[:-1])


def test_the_examples_read_both_binary_streams(gw):
    """examples/flatbuffers_stream.py and examples/grpc_client.py, run as a
    user would, print the same text as the SSE path."""
    text, _ = sse_text_and_usage(gw, "mock-1")
    host = gw.url.removeprefix("http://")
    for cmd in (["examples/flatbuffers_stream.py", "--url", gw.url],
                ["examples/grpc_client.py", "--target", host]):
        out = subprocess.run([sys.executable, *cmd, "--model", "mock-1", "Say it"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert text in out.stdout, out.stdout
        assert "stop" in out.stdout

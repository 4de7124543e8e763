"""`sluice serve` with no arguments: the embedded mock, driven by the openai SDK."""

import json
import math
import subprocess

import httpx
import openai
import pytest


@pytest.fixture
def client(default_gateway):
    return openai.OpenAI(base_url=default_gateway.base_url, api_key="unused", max_retries=0)


def test_ready_line_has_a_working_curl(default_gateway):
    line = default_gateway.ready_line
    assert "try: curl -s " in line
    assert default_gateway.url in line
    assert '"model":"mock-1"' in line
    # Run it as printed.
    cmd = line.split("try: ", 1)[1]
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["content"].startswith("Mock reply to: Hello!")


def test_chat_non_streaming(client):
    r = client.chat.completions.create(
        model="mock-1", messages=[{"role": "user", "content": "Hello there gateway"}]
    )
    assert r.object == "chat.completion"
    assert r.model == "mock-1"
    text = r.choices[0].message.content
    assert text.startswith("Mock reply to: Hello there gateway")
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 16
    assert r.usage.prompt_tokens == 3 + 3
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_is_deterministic(client):
    msgs = [{"role": "user", "content": "same question"}]
    a = client.chat.completions.create(model="mock-1", messages=msgs)
    b = client.chat.completions.create(model="mock-1", messages=msgs)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_chat_streaming_matches_non_streaming_with_usage(client):
    msgs = [{"role": "user", "content": "stream me please"}]
    whole = client.chat.completions.create(model="mock-1", messages=msgs)
    stream = client.chat.completions.create(
        model="mock-1", messages=msgs, stream=True, stream_options={"include_usage": True}
    )
    parts, finish, usage, chunks = [], None, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert "".join(parts) == whole.choices[0].message.content
    assert len(parts) == 16, "one token per chunk"
    assert chunks >= 18
    assert finish == "stop"
    assert usage.completion_tokens == 16
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_streaming_without_include_usage_has_no_usage_chunk(client):
    stream = client.chat.completions.create(
        model="mock-1", messages=[{"role": "user", "content": "x"}], stream=True, max_tokens=2
    )
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_streaming_raw_sse_ends_with_done(default_gateway):
    with httpx.stream(
        "POST",
        f"{default_gateway.base_url}/chat/completions",
        json={"model": "mock-1", "stream": True, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_embeddings_base64_and_float(client):
    # The SDK asks for base64 by default and decodes it.
    r = client.embeddings.create(model="mock-embed-1", input=["alpha", "beta"])
    assert len(r.data) == 2
    v = r.data[0].embedding
    assert len(v) == 16
    assert math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4)
    f = client.embeddings.create(model="mock-embed-1", input="alpha", encoding_format="float")
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(f.data[0].embedding, v))
    assert r.usage.prompt_tokens == 2
    d = client.embeddings.create(model="mock-embed-1", input="alpha", dimensions=4)
    assert len(d.data[0].embedding) == 4


def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["mock-1", "mock-embed-1"]
    m = client.models.retrieve("mock-1")
    assert m.id == "mock-1" and m.owned_by == "mock"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_health_and_ready(default_gateway):
    for base in (default_gateway.url, default_gateway.admin_url):
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{base}/readyz").json() == {"status": "ready"}


def test_openai_provider_added_when_key_set(tmp_path):
    from conftest import Gateway

    g = Gateway(tmp_path=tmp_path, env={"OPENAI_API_KEY": "sk-never-printed-123"})
    try:
        ids = [m["id"] for m in httpx.get(f"{g.base_url}/models").json()["data"]]
        assert "mock-1" in ids and "gpt-4o-mini" in ids
    finally:
        g.stop()
    assert "sk-never-printed-123" not in g.logs()

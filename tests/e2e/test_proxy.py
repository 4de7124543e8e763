"""The OpenAI-compatible passthrough against a mock upstream the tests own."""

import json
import time

import httpx
import openai
import pytest

from conftest import UPSTREAM_KEY


@pytest.fixture
def client(proxy_gateway):
    return openai.OpenAI(base_url=proxy_gateway.base_url, api_key="client-key", max_retries=0)


def test_non_streaming_passthrough_rewrites_model_only(client, upstream):
    extra = {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "some_future_field": {"nested": [1, 2.5, None, "ü"]},
    }
    r = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "hi"}],
        extra_body=extra,
        extra_headers={"x-request-id": "trace-abc"},
    )
    # Tools were offered, so the mock upstream answers with a call to one.
    assert r.choices[0].message.tool_calls[0].function.name == "f"
    assert r.usage.prompt_tokens == 20
    last = upstream.last()
    assert last["path"] == "/v1/chat/completions"
    sent = json.loads(last["body"])
    assert sent["model"] == "upstream-model"
    for k, v in extra.items():
        assert sent[k] == v, k
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    # Our key goes upstream, never the client's; the request id is propagated.
    assert last["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert last["headers"]["x-request-id"] == "trace-abc"


def test_unknown_fields_are_forwarded_byte_for_byte(proxy_gateway, upstream):
    raw = '{"messages":[{"role":"user","content":"hi"}],  "model":"gpt-test", "x":1.50, "y":[ ]}'
    r = httpx.post(f"{proxy_gateway.base_url}/chat/completions", content=raw)
    assert r.status_code == 200
    assert upstream.last()["body"] == raw.replace('"gpt-test"', '"upstream-model"')


def test_streaming_passthrough_with_usage(client):
    stream = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
    assert text == "Hello from the mock upstream"
    assert (usage.prompt_tokens, usage.completion_tokens) == (11, 5)


def test_embeddings_passthrough(client, upstream):
    r = client.embeddings.create(model="text-embed", input="hello", encoding_format="float")
    assert r.data[0].embedding == [0.1, 0.2, 0.3]
    assert upstream.last()["path"] == "/v1/embeddings"


def test_upstream_429_relayed_with_retry_after(client):
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="status-429", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 429
    assert e.value.response.headers["retry-after"] == "7"
    assert e.value.body["message"] == "mock upstream says 429"


def test_upstream_5xx_relayed_faithfully(client):
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="status-500", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 500
    assert e.value.body["code"] == "mock"


def test_upstream_401_is_an_upstream_auth_error_not_the_clients(client):
    # The client's key is fine; the gateway's key for the provider is not.
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="status-401", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502
    assert e.value.body["code"] == "upstream_auth_error"
    assert "rejected the gateway's credentials (401)" in e.value.body["message"]


def test_unreachable_upstream_is_502(client):
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="dead", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502
    assert e.value.body["code"] == "upstream_unreachable"


def test_slow_upstream_is_504_within_timeout(client):
    t = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="slow-3000", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 504
    assert e.value.body["code"] == "upstream_timeout"
    # Before the upstream would have answered (3 s): the status says so too.
    assert time.monotonic() - t < 2.9


def test_stream_broken_midway_ends_with_visible_error(client):
    stream = client.chat.completions.create(
        model="reset", messages=[{"role": "user", "content": "x"}], stream=True
    )
    got = []
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert got == [" r0", " r1"]
    assert "upstream stream broke" in str(e.value)


def test_silent_upstream_stream_hits_idle_timeout(client):
    stream = client.chat.completions.create(
        model="drip-2000", messages=[{"role": "user", "content": "x"}], stream=True
    )
    t = time.monotonic()
    with pytest.raises(openai.APIError) as e:
        for _ in stream:
            pass
    assert "sent nothing for 400 ms" in str(e.value)
    # The message names the idle limit; the bound only guards against a hang.
    assert time.monotonic() - t < 10


def test_client_disconnect_cancels_upstream(proxy_gateway, upstream, client):
    before = upstream.stats()["cancelled"]
    stream = client.chat.completions.create(
        model="drip-50", messages=[{"role": "user", "content": "x"}], stream=True
    )
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 3:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while upstream.stats()["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.stats()["cancelled"] == before + 1, "upstream never saw the cancel"
    assert 'sluice_requests_cancelled_total{model="drip-50",provider="up"}' in proxy_gateway.metrics_text()


def test_upstream_key_never_logged(proxy_gateway, client):
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="status-401", messages=[{"role": "user", "content": "x"}])
    assert UPSTREAM_KEY not in proxy_gateway.logs()

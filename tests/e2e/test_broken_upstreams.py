"""Upstreams that misbehave after saying 200: a stream cut before its end
marker, data that is not JSON, JSON for a stream, an HTML page, another
format's stream. The client must see an error — never a short "success" —
and the failure must count against the target. Also: upstream bodies that
quote the gateway's key, and 503s that say when to come back."""

import anthropic
import httpx
import openai
import pytest

from conftest import UPSTREAM_KEY, Gateway


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    text = f"""
[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream.url}/v1"
api_key = "{UPSTREAM_KEY}"

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{upstream.url}/v1"
api_key = "sk-ant-upstream-key-9999"

[[providers]]
name = "gem"
kind = "gemini"
base_url = "{upstream.url}/v1beta"
api_key = "gemini-upstream-key-31337"

[[models]]
name = "oa-nodone"
targets = [{{ provider = "up", model = "broken-nodone" }}]

[[models]]
name = "oa-badsse"
targets = [{{ provider = "up", model = "broken-badsse" }}]

[[models]]
name = "oa-json-for-stream"
targets = [{{ provider = "up", model = "broken-json" }}]

[[models]]
name = "oa-garbage"
targets = [{{ provider = "up", model = "broken-garbage" }}]

[[models]]
name = "garbage-then-good"
targets = [{{ provider = "up", model = "broken-garbage" }}]
fallbacks = ["good"]

[[models]]
name = "good"
targets = [{{ provider = "up", model = "fine" }}]

[[models]]
name = "an-nodone"
targets = [{{ provider = "claude", model = "broken-nodone" }}]

[[models]]
name = "an-wrongformat"
targets = [{{ provider = "claude", model = "broken-wrongformat" }}]

[[models]]
name = "gem-nodone"
targets = [{{ provider = "gem", model = "broken-nodone" }}]

[[models]]
name = "echo-key"
targets = [{{ provider = "up", model = "echo-key-400" }}]

[[models]]
name = "an-echo-key"
targets = [{{ provider = "claude", model = "echo-key-400" }}]

[[models]]
name = "limited"
targets = [{{ provider = "up", model = "status-429" }}]
"""
    g = Gateway(text, tmp_path=tmp_path_factory.mktemp("broken"))
    yield g
    g.assert_alive()
    g.stop()


def protocol_errors(g):
    return sum(
        float(line.split()[-1])
        for line in g.metrics_text().splitlines()
        if line.startswith("sluice_upstream_errors_total{") and 'code="upstream_protocol_error"' in line
    )


def stream_text(client, model, **kw):
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], stream=True, **kw
        ):
            if c.choices and c.choices[0].delta.content:
                got.append(c.choices[0].delta.content)
    return "".join(got), e.value


@pytest.mark.parametrize("model", ["oa-nodone", "an-nodone", "gem-nodone", "an-wrongformat", "oa-badsse"])
@pytest.mark.parametrize("include_usage", [True, False])
def test_a_broken_stream_ends_in_an_error_the_sdk_raises(gw, model, include_usage):
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    before = protocol_errors(gw)
    kw = {"stream_options": {"include_usage": True}} if include_usage else {}
    text, err = stream_text(client, model, **kw)
    assert "upstream" in str(err).lower(), err
    if model in ("oa-nodone", "an-nodone", "gem-nodone"):
        # What came before the break is delivered, and then the error.
        assert text == "Half an answer", text
    assert protocol_errors(gw) == before + 1


def test_raw_bytes_of_a_cut_stream_have_no_done(gw):
    with httpx.stream("POST", f"{gw.base_url}/chat/completions",
                      json={"model": "oa-nodone", "stream": True, "stream_options": {"include_usage": True},
                            "messages": [{"role": "user", "content": "x"}]}) as r:
        assert r.status_code == 200
        body = r.read().decode()
    assert "data: [DONE]" not in body
    assert '"code":"upstream_protocol_error"' in body.replace(" ", "")


def test_anthropic_sdk_sees_the_break_too(gw):
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.APIError):
        with client.messages.stream(model="oa-nodone", max_tokens=16,
                                    messages=[{"role": "user", "content": "x"}]) as s:
            for _ in s.text_stream:
                pass


@pytest.mark.parametrize("model,stream", [("oa-json-for-stream", True), ("oa-garbage", False),
                                          ("oa-garbage", True)])
def test_a_wrong_body_before_the_first_byte_is_a_502(gw, model, stream):
    r = httpx.post(f"{gw.base_url}/chat/completions",
                   json={"model": model, "stream": stream, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 502, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "upstream_protocol_error"


def test_a_wrong_body_is_retried_on_the_fallback(gw):
    r = httpx.post(f"{gw.base_url}/chat/completions",
                   json={"model": "garbage-then-good", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-sluice-attempts"] == "2"
    assert r.json()["model"] == "fine"


@pytest.mark.parametrize("model", ["echo-key", "an-echo-key"])
def test_the_upstream_key_never_reaches_the_client(gw, model):
    r = httpx.post(f"{gw.base_url}/chat/completions",
                   json={"model": model, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400, r.text
    for secret in (UPSTREAM_KEY, "sk-ant-upstream-key-9999", "upstream-secret", "9999"):
        assert secret not in r.text, r.text
    assert "[redacted]" in r.json()["error"]["message"]


def test_no_healthy_target_says_when_to_come_back(gw):
    r = httpx.post(f"{gw.base_url}/chat/completions",
                   json={"model": "limited", "messages": [{"role": "user", "content": "x"}]})
    # The upstream's own 429 (with its retry-after: 7) is relayed.
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    r = httpx.post(f"{gw.base_url}/chat/completions",
                   json={"model": "limited", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "no_healthy_target"
    assert 1 <= int(r.headers["retry-after"]) <= 7

"""Legacy completions (`/v1/completions`) with the official `openai` SDK:
passed through to an OpenAI-format upstream, translated through the chat shape
for Anthropic-format upstreams and the built-in mock; whole and streamed."""

import json

import httpx
import openai
import pytest

from conftest import Gateway


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    g = Gateway(f"""
[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 4

[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream.url}/v1"
api_key = "sk-up"

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{upstream.url}/v1"
api_key = "sk-ant"

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]

[[models]]
name = "davinci"
targets = [{{ provider = "up", model = "gpt-3.5-turbo-instruct" }}]

[[models]]
name = "claude"
targets = [{{ provider = "claude", model = "claude-x" }}]
""", tmp_path=tmp_path_factory.mktemp("completions"))
    yield g
    g.assert_alive()
    g.stop()


def client(g):
    return openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0)


def test_passthrough_to_an_openai_format_upstream(gw, upstream):
    r = client(gw).completions.create(model="davinci", prompt="Once upon", max_tokens=8)
    assert r.object == "text_completion"
    assert r.choices[0].text == "Completed: Once upon"
    assert r.usage.total_tokens == 7
    last = upstream.last()
    assert last["path"] == "/v1/completions"
    sent = json.loads(last["body"])
    assert sent["prompt"] == "Once upon" and sent["model"] == "gpt-3.5-turbo-instruct"

    text = "".join(c.choices[0].text for c in client(gw).completions.create(
        model="davinci", prompt="Once upon", stream=True) if c.choices)
    assert text == "Completed: Once upon"
    # Usage was asked of the upstream for accounting, and not shown to the client.
    assert json.loads(upstream.last()["body"])["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("model", ["claude", "mock-1"])
def test_translated_for_other_targets(gw, upstream, model):
    r = client(gw).completions.create(model=model, prompt="Say hi", max_tokens=16)
    assert r.object == "text_completion" and r.model == model
    assert r.choices[0].text.strip() and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0
    chunks = list(client(gw).completions.create(model=model, prompt="Say hi", stream=True,
                                                stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens > 0


def test_what_cannot_be_translated_is_refused_by_name(gw):
    r = httpx.post(f"{gw.base_url}/completions", json={"model": "claude", "prompt": "x", "echo": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "echo"
    r = httpx.post(f"{gw.base_url}/completions", json={"model": "claude"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"

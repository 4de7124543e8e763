"""The openai and anthropic SDKs in front of a Gemini upstream."""

import json

import anthropic
import openai
import pytest

from conftest import Gateway

KEY = "gm-upstream-key"
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    text = f"""
[[providers]]
name = "gem"
kind = "gemini"
base_url = "{upstream.url}/v1beta"
api_key = "{KEY}"

[[models]]
name = "gemini"
targets = [{{ provider = "gem", model = "gemini-2.0-flash" }}]

[[models]]
name = "gemini-429"
targets = [{{ provider = "gem", model = "status-429" }}]
"""
    g = Gateway(text, tmp_path=tmp_path_factory.mktemp("gemini"))
    yield g
    g.assert_alive()
    g.stop()


@pytest.fixture
def oa(gw):
    return openai.OpenAI(base_url=gw.base_url, api_key="client", max_retries=0)


def test_text_non_streaming(oa, upstream):
    r = oa.chat.completions.create(
        model="gemini", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=64,
    )
    assert r.choices[0].message.content == "Hello from the mock gemini"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (12, 6)
    last = upstream.last()
    assert last["path"] == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert last["headers"]["x-goog-api-key"] == KEY
    sent = json.loads(last["body"])
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]
    assert sent["generationConfig"] == {"maxOutputTokens": 64}


def test_text_streaming_with_usage(oa, upstream):
    stream = oa.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for c in stream:
        usage = c.usage or usage
        for ch in c.choices:
            text += ch.delta.content or ""
    assert text == "Hello from the mock gemini"
    assert usage.completion_tokens == 6
    assert upstream.last()["path"] == "/v1beta/models/gemini-2.0-flash:streamGenerateContent"


def test_function_calls(oa):
    r = oa.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "Weather?"}], tools=[TOOL])
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    stream = oa.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "Weather?"}], tools=[TOOL], stream=True
    )
    calls = [tc for c in stream for ch in c.choices for tc in (ch.delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}


def test_errors_in_openai_shape(oa):
    with pytest.raises(openai.RateLimitError) as e:
        oa.chat.completions.create(model="gemini-429", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["message"] == "mock gemini says 429"


def test_anthropic_client_to_gemini(gw):
    an = anthropic.Anthropic(base_url=gw.url, api_key="c", max_retries=0)
    with an.messages.stream(model="gemini", max_tokens=32, messages=[{"role": "user", "content": "Hi"}]) as s:
        assert "".join(s.text_stream) == "Hello from the mock gemini"
        assert s.get_final_message().usage.output_tokens == 6

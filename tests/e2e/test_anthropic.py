"""Format translation end to end: the openai SDK in front of an Anthropic
upstream, and the anthropic SDK (`/v1/messages`) in front of OpenAI-format
targets, an Anthropic target and the built-in mock."""

import json

import anthropic
import httpx
import openai
import pytest

from conftest import Gateway

UPSTREAM_KEY = "sk-ant-upstream-77"
WEATHER_TOOL_OA = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather by city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_TOOL_AN = {
    "name": "get_weather",
    "description": "Weather by city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    text = f"""
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{upstream.url}/v1"
api_key = "{UPSTREAM_KEY}"
default_max_tokens = 777

[[providers]]
name = "oa"
kind = "openai"
base_url = "{upstream.url}/v1"
api_key = "sk-oa"

[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 6

[[models]]
name = "claude"
targets = [{{ provider = "claude", model = "claude-3-5-haiku-latest" }}]

[[models]]
name = "claude-429"
targets = [{{ provider = "claude", model = "status-429" }}]

[[models]]
name = "gpt"
targets = [{{ provider = "oa", model = "gpt-upstream" }}]

[[models]]
name = "gpt-429"
targets = [{{ provider = "oa", model = "status-429" }}]

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]
"""
    g = Gateway(text, tmp_path=tmp_path_factory.mktemp("anthropic"))
    yield g
    g.assert_alive()
    g.stop()


@pytest.fixture
def oa(gw):
    return openai.OpenAI(base_url=gw.base_url, api_key="client", max_retries=0)


@pytest.fixture
def an(gw):
    return anthropic.Anthropic(base_url=gw.url, api_key="client", max_retries=0)


# --- openai SDK → Anthropic upstream ---------------------------------------


def test_openai_client_to_anthropic_text(oa, upstream):
    r = oa.chat.completions.create(
        model="claude",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    )
    assert r.choices[0].message.content == "Hello from the mock anthropic"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (13, 7)
    last = upstream.last()
    assert last["path"] == "/v1/messages"
    assert last["headers"]["x-api-key"] == UPSTREAM_KEY
    assert last["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in last["headers"]
    sent = json.loads(last["body"])
    assert sent["model"] == "claude-3-5-haiku-latest"
    assert sent["system"] == "Be brief."
    assert sent["max_tokens"] == 777
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


def test_openai_client_to_anthropic_stream_with_usage(oa):
    stream = oa.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for c in stream:
        if c.usage:
            usage = c.usage
        for ch in c.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    assert text == "Hello from the mock anthropic"
    assert finish == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens) == (13, 7)


def test_openai_client_to_anthropic_tool_calls(oa):
    r = oa.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL_OA]
    )
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert msg.content == "Let me check."
    assert msg.tool_calls[0].function.name == "get_weather"
    assert json.loads(msg.tool_calls[0].function.arguments) == {"city": "Paris"}
    # Streamed: the same call, arguments assembled from pieces.
    stream = oa.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL_OA],
        stream=True,
    )
    text, name, args, finish = "", None, "", None
    for c in stream:
        for ch in c.choices:
            text += ch.delta.content or ""
            for tc in ch.delta.tool_calls or []:
                name = tc.function.name or name
                args += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    assert (text, name, json.loads(args), finish) == ("Let me check.", "get_weather", {"city": "Paris"}, "tool_calls")


def test_openai_client_gets_anthropic_errors_in_openai_shape(oa):
    with pytest.raises(openai.RateLimitError) as e:
        oa.chat.completions.create(model="claude-429", messages=[{"role": "user", "content": "x"}])
    assert e.value.response.headers["retry-after"] == "7"
    assert e.value.body["message"] == "mock anthropic says 429"


def test_streamed_usage_is_counted_even_when_not_asked(gw, oa):
    from test_cli_and_metrics import value

    before = value(gw.metrics_text(), "sluice_tokens_total", default=0.0, model="gpt", kind="output")
    chunks = list(oa.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "x"}], stream=True))
    assert all(c.usage is None for c in chunks), "the client did not ask for usage"
    assert all(c.choices for c in chunks), "no usage-only chunk leaked"
    after = value(gw.metrics_text(), "sluice_tokens_total", model="gpt", kind="output")
    assert after == before + 5


# --- anthropic SDK → /v1/messages --------------------------------------------


def test_anthropic_client_to_openai_target(an, upstream):
    r = an.messages.create(
        model="gpt", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Hi"}]
    )
    assert r.type == "message" and r.role == "assistant"
    assert r.model == "gpt"
    assert r.content[0].text == "Hello from the mock upstream"
    assert r.stop_reason == "end_turn"
    assert (r.usage.input_tokens, r.usage.output_tokens) == (11, 5)
    sent = json.loads(upstream.last()["body"])
    assert sent["model"] == "gpt-upstream"
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_tokens"] == 100


def test_anthropic_client_streams_from_openai_target(an):
    with an.messages.stream(model="gpt", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello from the mock upstream"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5


def test_anthropic_client_tool_use_round_trip_via_openai_target(an, upstream):
    r = an.messages.create(
        model="gpt", max_tokens=100, tools=[WEATHER_TOOL_AN],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert r.stop_reason == "tool_use"
    use = [b for b in r.content if b.type == "tool_use"][0]
    assert (use.name, use.input) == ("get_weather", {"city": "Paris"})
    # Send the result back: it reaches the upstream as an OpenAI tool message.
    r2 = an.messages.create(
        model="gpt", max_tokens=100, tools=[WEATHER_TOOL_AN],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}]},
        ],
    )
    assert r2.content[0].text == "Hello from the mock upstream"
    sent = json.loads(upstream.last()["body"])
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": use.id, "content": "18C"}
    assert sent["messages"][-2]["tool_calls"][0]["function"]["name"] == "get_weather"
    # Streamed tool use.
    with an.messages.stream(
        model="gpt", max_tokens=100, tools=[WEATHER_TOOL_AN], messages=[{"role": "user", "content": "Weather?"}]
    ) as s:
        final = s.get_final_message()
    use = [b for b in final.content if b.type == "tool_use"][0]
    assert (use.name, use.input, final.stop_reason) == ("get_weather", {"city": "Paris"}, "tool_use")


def test_anthropic_client_to_anthropic_target_is_passthrough(an, upstream):
    raw = {"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}], "top_k": 3,
           "some_future_field": {"x": [1, 2]}}
    r = an.messages.create(**{k: v for k, v in raw.items() if k != "some_future_field"},
                           extra_body={"some_future_field": raw["some_future_field"]})
    assert r.content[0].text == "Hello from the mock anthropic"
    assert r.usage.input_tokens == 13
    sent = json.loads(upstream.last()["body"])
    assert sent["model"] == "claude-3-5-haiku-latest"
    assert sent["top_k"] == 3 and sent["some_future_field"] == {"x": [1, 2]}
    with an.messages.stream(model="claude", max_tokens=20, messages=[{"role": "user", "content": "Hi"}]) as s:
        assert "".join(s.text_stream) == "Hello from the mock anthropic"
        assert s.get_final_message().usage.output_tokens == 7


def test_anthropic_passthrough_keeps_the_bytes(gw, upstream):
    """Oddly formatted JSON reaches the Anthropic upstream byte for byte, only
    the model's string token rewritten."""
    odd = (b'{\n  "max_tokens" :20,"model"\t:  "claude" ,\r\n "messages":[{"role":"user",'
           b'"content":"caf\\u00e9 \\ud83d\\ude00"}],"x_vendor":{"nested":[1,2.50,true,null]} }')
    r = httpx.post(f"{gw.url}/v1/messages", content=odd,
                   headers={"content-type": "application/json", "x-api-key": "c", "anthropic-version": "2023-06-01"})
    assert r.status_code == 200, r.text
    sent = upstream.last()["body"].encode()
    assert sent == odd.replace(b'"claude"', b'"claude-3-5-haiku-latest"')


def test_anthropic_client_to_builtin_mock(an):
    with an.messages.stream(model="mock-1", max_tokens=50, messages=[{"role": "user", "content": "hello"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.startswith("Mock reply to: hello")
    assert final.usage.output_tokens == 6


def test_anthropic_errors_use_anthropic_shape(an, gw):
    with pytest.raises(anthropic.NotFoundError) as e:
        an.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body == {"type": "error", "error": {
        "type": "not_found_error",
        "message": "The model 'nope' does not exist or is not served by this gateway"}}
    r = httpx.post(f"{gw.url}/v1/messages", json={"model": "gpt", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]
    with pytest.raises(anthropic.RateLimitError) as e:
        an.messages.create(model="gpt-429", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"] == {"type": "rate_limit_error", "message": "mock upstream says 429"}
    assert e.value.response.headers["retry-after"] == "7"

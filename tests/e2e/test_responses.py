"""The OpenAI Responses API (`/v1/responses`) with the official `openai` SDK:
plain, streamed, function tools both ways, structured output, conversation
state (`previous_response_id`, `store`), stored responses (GET, DELETE) per key
— against the built-in mock, an OpenAI-format upstream and an Anthropic-format
upstream (both the mock upstream)."""

import json

import httpx
import openai
import pytest

from conftest import Gateway, key_hash


def config(upstream_url, keys=""):
    return f"""
[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 5

[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream_url}/v1"
api_key = "sk-up"

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{upstream_url}/v1"
api_key = "sk-ant"

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]

[[models]]
name = "gpt"
targets = [{{ provider = "up", model = "gpt-4o-mini" }}]

[[models]]
name = "claude"
targets = [{{ provider = "claude", model = "claude-x" }}]
{keys}"""


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    g = Gateway(config(upstream.url), tmp_path=tmp_path_factory.mktemp("responses"))
    yield g
    g.assert_alive()
    g.stop()


def client(g, key="unused"):
    return openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0)


TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}]


@pytest.mark.parametrize("model", ["mock-1", "gpt", "claude"])
def test_plain_and_streamed(gw, model):
    c = client(gw)
    r = c.responses.create(model=model, input="Say hello", instructions="Be brief.")
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == "completed"
    assert r.model == model
    assert r.output_text.strip(), r
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.instructions == "Be brief."

    kinds, text, final = [], "", None
    with c.responses.stream(model=model, input="Say hello") as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert "response.output_text.delta" in kinds
    assert text.strip() and final.output_text == text
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_function_tools_both_ways(gw, upstream, model):
    c = client(gw)
    r = c.responses.create(model=model, input="What is the weather in Paris?", tools=TOOLS)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather", r.output
    assert json.loads(calls[0].arguments)["city"] == "Paris"
    # The tool's result, by previous_response_id: the model answers in text.
    r2 = c.responses.create(model=model, previous_response_id=r.id, tools=TOOLS, input=[
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "22 C, sunny"}])
    assert r2.output_text.strip() and r2.previous_response_id == r.id
    sent = json.loads(upstream.last()["body"])
    flat = json.dumps(sent)
    assert "What is the weather in Paris?" in flat and "22 C, sunny" in flat, sent

    # Streamed: the call's arguments arrive as deltas.
    args, done = "", None
    with c.responses.stream(model=model, input="What is the weather in Paris?", tools=TOOLS) as s:
        for event in s:
            if event.type == "response.function_call_arguments.delta":
                args += event.delta
        done = s.get_final_response()
    call = [o for o in done.output if o.type == "function_call"][0]
    assert json.loads(args) == json.loads(call.arguments) and call.name == "get_weather"


def test_full_history_without_previous_response_id(gw):
    """What agent frameworks send: the whole conversation as input items."""
    c = client(gw)
    r = c.responses.create(model="gpt", tools=TOOLS, store=False, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "22 C"},
    ])
    assert r.output_text.strip()
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)  # store=False keeps nothing


def test_structured_output_reaches_the_upstream(gw, upstream):
    c = client(gw)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    c.responses.create(model="gpt", input="Where?",
                       text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}})
    sent = json.loads(upstream.last()["body"])
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "place", "schema": schema, "strict": True}}


def test_conversation_state_and_stored_responses(gw, upstream):
    c = client(gw)
    first = c.responses.create(model="gpt", input="My name is Ada.")
    second = c.responses.create(model="gpt", input="What is my name?", previous_response_id=first.id)
    messages = json.loads(upstream.last()["body"])["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"], messages
    assert messages[0]["content"] == "My name is Ada."
    assert messages[1]["content"] == first.output_text

    got = c.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == second.output_text
    c.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError) as e:
        c.responses.create(model="gpt", input="x", previous_response_id="resp_nope")
    assert e.value.body["code"] == "response_not_found"


def test_refusals_name_the_field(gw):
    r = httpx.post(f"{gw.base_url}/responses", json={"model": "gpt", "input": "x",
                                                      "tools": [{"type": "web_search"}]})
    assert r.status_code == 400 and "web_search" in r.json()["error"]["message"]
    r = httpx.post(f"{gw.base_url}/responses", json={"model": "nope", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_stored_responses_belong_to_their_key(upstream, tmp_path):
    keys = (f'[[keys]]\nname = "a"\nsha256 = "{key_hash("sk-a")}"\n'
            f'[[keys]]\nname = "b"\nsha256 = "{key_hash("sk-b")}"\n')
    g = Gateway(config(upstream.url, keys), tmp_path=tmp_path)
    try:
        r = client(g, "sk-a").responses.create(model="mock-1", input="hi")
        assert client(g, "sk-a").responses.retrieve(r.id).id == r.id
        with pytest.raises(openai.NotFoundError):
            client(g, "sk-b").responses.retrieve(r.id)
        with pytest.raises(openai.NotFoundError):
            client(g, "sk-b").responses.create(model="mock-1", input="x", previous_response_id=r.id)
        m = g.metrics_text()
        assert 'route="/v1/responses"' in m, "counted like any request"
    finally:
        g.stop()


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_the_openai_agents_sdk_runs_a_function_tool(gw, model):
    """The Agents SDK's default: Runner.run over the Responses API, with a
    function tool, to an OpenAI-format and an Anthropic-format upstream."""
    import asyncio

    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    calls = []

    @function_tool
    def get_weather(city: str) -> str:
        """Weather in a city."""
        calls.append(city)
        return f"22 C in {city}"

    async def run():
        set_tracing_disabled(True)
        client = openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
        agent = Agent(name="weather", instructions="Use the tool.", tools=[get_weather],
                      model=OpenAIResponsesModel(model=model, openai_client=client))
        return await Runner.run(agent, "What is the weather in Paris?")

    result = asyncio.run(run())
    assert calls == ["Paris"]
    kinds = [type(i).__name__ for i in result.new_items]
    assert "ToolCallItem" in kinds and "ToolCallOutputItem" in kinds, kinds
    assert kinds[-1] == "MessageOutputItem" and result.final_output.strip()

"""The embedded default's mock demos agent frameworks with no keys: it calls a
tool when `tool_choice` forces one or the prompt names it (then answers after
the tool's result), returns JSON valid for `response_format`, and honours `n`
— through chat completions, the Responses API and the Agents SDK."""

import asyncio
import json

import openai
import pydantic
import pytest

from conftest import Gateway

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def gw():
    g = Gateway()  # the embedded default: the mock, no keys
    yield g
    g.assert_alive()
    g.stop()


def client(g):
    return openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0)


def test_tool_calls_when_forced_or_named(gw):
    c = client(gw)
    r = c.chat.completions.create(model="mock-1", tools=TOOLS, tool_choice="required",
                                  messages=[{"role": "user", "content": "Hello"}])
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "mock"}
    assert r.choices[0].finish_reason == "tool_calls"

    plain = c.chat.completions.create(model="mock-1", tools=TOOLS, messages=[{"role": "user", "content": "Hello"}])
    assert plain.choices[0].message.tool_calls is None

    named = [ch for ch in c.chat.completions.create(
        model="mock-1", tools=TOOLS, stream=True,
        messages=[{"role": "user", "content": "Use get_weather for Paris"}]) if ch.choices]
    args = "".join(ch.choices[0].delta.tool_calls[0].function.arguments or ""
                   for ch in named if ch.choices[0].delta.tool_calls)
    assert json.loads(args) == {"city": "mock"}

    after = c.chat.completions.create(model="mock-1", tools=TOOLS, messages=[
        {"role": "user", "content": "Use get_weather for Paris"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_mock_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_mock_1", "content": "22 C"}])
    assert after.choices[0].message.content and not after.choices[0].message.tool_calls


class Forecast(pydantic.BaseModel):
    city: str
    days: int
    tags: list[str]


def test_structured_output_and_n(gw):
    c = client(gw)
    parsed = c.chat.completions.parse(model="mock-1", response_format=Forecast,
                                      messages=[{"role": "user", "content": "Forecast?"}])
    assert isinstance(parsed.choices[0].message.parsed, Forecast)
    r = c.responses.parse(model="mock-1", input="Forecast?", text_format=Forecast)
    assert isinstance(r.output_parsed, Forecast)
    two = c.chat.completions.create(model="mock-1", n=2, messages=[{"role": "user", "content": "Hi"}])
    assert [ch.index for ch in two.choices] == [0, 1]
    assert two.choices[0].message.content == two.choices[1].message.content


def test_the_agents_sdk_runs_on_the_embedded_default(gw):
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    seen = []

    @function_tool
    def get_weather(city: str) -> str:
        """Weather in a city."""
        seen.append(city)
        return "22 C"

    async def run():
        set_tracing_disabled(True)
        client = openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
        agent = Agent(name="w", tools=[get_weather],
                      model=OpenAIResponsesModel(model="mock-1", openai_client=client))
        return await Runner.run(agent, "Use get_weather for Paris")

    result = asyncio.run(run())
    assert seen == ["mock"]
    assert result.final_output.strip()

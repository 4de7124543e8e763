"""Structured output across formats: an OpenAI client's `response_format`
reaches an Anthropic target as a forced tool carrying the schema and comes
back as the JSON message content (plain and streamed, chat and Responses,
the SDK's `parse`); fields a translated target cannot honour are refused by
name instead of dropped."""

import json

import httpx
import openai
import pydantic
import pytest

from conftest import Gateway


class Place(pydantic.BaseModel):
    city: str


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    g = Gateway(f"""
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{upstream.url}/v1"
api_key = "sk-ant"

[[providers]]
name = "gem"
kind = "gemini"
base_url = "{upstream.url}/v1beta"
api_key = "k"

[[models]]
name = "claude"
targets = [{{ provider = "claude", model = "claude-x" }}]

[[models]]
name = "gemini"
targets = [{{ provider = "gem", model = "gemini-x" }}]
""", tmp_path=tmp_path_factory.mktemp("structured"))
    yield g
    g.assert_alive()
    g.stop()


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA, "strict": True}}


def client(g):
    return openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0)


def test_json_schema_reaches_anthropic_as_a_forced_tool(gw, upstream):
    c = client(gw)
    r = c.chat.completions.create(model="claude", response_format=FORMAT,
                                  messages=[{"role": "user", "content": "Which city?"}])
    assert json.loads(r.choices[0].message.content) == {"city": "Paris"}
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    sent = json.loads(upstream.last()["body"])
    assert sent["tools"][0]["input_schema"] == SCHEMA
    assert sent["tool_choice"]["type"] == "tool"

    parsed = c.chat.completions.parse(model="claude", response_format=Place,
                                      messages=[{"role": "user", "content": "Which city?"}])
    assert parsed.choices[0].message.parsed == Place(city="Paris")

    text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="claude", response_format=FORMAT, stream=True,
        messages=[{"role": "user", "content": "Which city?"}]) if ch.choices)
    assert json.loads(text) == {"city": "Paris"}

    r = c.responses.create(model="claude", input="Which city?", text={"format": {
        "type": "json_schema", "name": "place", "schema": SCHEMA, "strict": True}})
    assert json.loads(r.output_text) == {"city": "Paris"}


def test_json_schema_reaches_gemini_natively(gw, upstream):
    client(gw).chat.completions.create(model="gemini", response_format=FORMAT,
                                       messages=[{"role": "user", "content": "Which city?"}])
    sent = json.loads(upstream.last()["body"])
    assert sent["generationConfig"]["responseMimeType"] == "application/json"
    assert sent["generationConfig"]["responseJsonSchema"] == SCHEMA


@pytest.mark.parametrize("field, value", [("n", 2), ("logprobs", True), ("seed", 7)])
def test_what_a_translated_target_cannot_honour_is_refused(gw, field, value):
    for model in ("claude", "gemini"):
        r = httpx.post(f"{gw.base_url}/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "x"}], field: value})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == field and field in r.json()["error"]["message"]
    # Defaults ask for nothing and pass.
    r = httpx.post(f"{gw.base_url}/chat/completions", json={
        "model": "claude", "messages": [{"role": "user", "content": "x"}], "n": 1, "logprobs": False})
    assert r.status_code == 200

"""`/v1/responses` to a provider with its own Responses API (`responses_api`,
on by default for api.openai.com): the client's body goes as it is (model
rewritten) and the answer comes back as it is, streamed or not, usage counted
— including what the gateway could not translate (hosted tools, a
`previous_response_id` stored at the provider). Providers without it get the
translation through chat completions, as before."""

import json

import openai
import pytest

from conftest import Gateway


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    g = Gateway(f"""
[[providers]]
name = "openai"
kind = "openai"
base_url = "{upstream.url}/v1"
api_key = "sk-up"
responses_api = true

[[providers]]
name = "compat"
kind = "openai"
base_url = "{upstream.url}/v1"
api_key = "sk-up"

[[models]]
name = "native"
targets = [{{ provider = "openai", model = "gpt-4.1" }}]

[[models]]
name = "chat-only"
targets = [{{ provider = "compat", model = "llama" }}]

[[models]]
name = "flaky"
targets = [{{ provider = "openai", model = "status-503" }}]
fallbacks = ["native"]
""", tmp_path=tmp_path_factory.mktemp("responses-native"))
    yield g
    g.assert_alive()
    g.stop()


def client(g):
    return openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0)


def test_passes_through_whole(gw, upstream):
    before = gw.metric('sluice_tokens_total{model="native",provider="openai",kind="input"}', default=0.0)
    r = client(gw).responses.create(model="native", input="hello there",
                                    tools=[{"type": "web_search"}], store=False)
    assert r.output_text == "Upstream Responses API: hello there"
    assert r.usage.input_tokens == 7
    last = upstream.last()
    assert last["path"] == "/v1/responses"
    sent = json.loads(last["body"])
    assert sent["model"] == "gpt-4.1"
    # A hosted tool the translation would refuse goes to the provider as it is.
    assert sent["tools"] == [{"type": "web_search"}] and sent["store"] is False
    after = gw.metric('sluice_tokens_total{model="native",provider="openai",kind="input"}', default=0.0)
    assert after == before + 7


def test_passes_through_streamed(gw, upstream):
    with client(gw).responses.stream(model="native", input="stream me") as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == "Upstream Responses API: stream me"
    assert final.output_text == "Upstream Responses API: stream me" and final.usage.output_tokens == 5
    assert json.loads(upstream.last()["body"])["stream"] is True


def test_a_provider_stored_response_is_continued_there(gw, upstream):
    r = client(gw).responses.create(model="native", input="next", previous_response_id="resp_upstream")
    assert r.previous_response_id == "resp_upstream"
    assert json.loads(upstream.last()["body"])["previous_response_id"] == "resp_upstream"


def test_chat_only_providers_get_the_translation(gw, upstream):
    r = client(gw).responses.create(model="chat-only", input="hello")
    assert r.output_text
    assert upstream.last()["path"] == "/v1/chat/completions"
    # What cannot be translated is refused by name there.
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).responses.create(model="chat-only", input="x", tools=[{"type": "web_search"}])
    assert "web_search" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client(gw).responses.create(model="chat-only", input="x", previous_response_id="resp_nowhere")


def test_failover_reaches_the_native_fallback(gw):
    r = client(gw).responses.create(model="flaky", input="again")
    assert r.output_text == "Upstream Responses API: again"


def test_responses_api_only_for_openai_format(tmp_path):
    from conftest import SLUICE
    import subprocess
    f = tmp_path / "c.toml"
    f.write_text("""
[[providers]]
name = "claude"
kind = "anthropic"
api_key = "x"
responses_api = true

[[models]]
name = "m"
targets = [{ provider = "claude" }]
""")
    r = subprocess.run([str(SLUICE), "check-config", str(f)], capture_output=True, text=True)
    assert r.returncode != 0 and "c.toml:6:17" in r.stderr + r.stdout, r.stderr

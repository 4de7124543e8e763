"""`/v1/messages/count_tokens` with the official `anthropic` SDK: exact from an
Anthropic target (forwarded), estimated with the o200k_base encoding for other
targets, and labelled which in `x-sluice-token-count`."""

import anthropic
import httpx
import pytest

from conftest import Gateway, key_hash


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    g = Gateway(f"""
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{upstream.url}/v1"
api_key = "sk-ant"

[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "claude"
targets = [{{ provider = "claude", model = "claude-x" }}]

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]

[[keys]]
name = "k"
sha256 = "{key_hash("sk-k")}"
models = ["mock-1"]
""", tmp_path=tmp_path_factory.mktemp("count"))
    yield g
    g.assert_alive()
    g.stop()


def client(g, key="sk-k"):
    return anthropic.Anthropic(base_url=g.url, api_key=key, max_retries=0)


def test_exact_from_an_anthropic_target(gw, upstream, tmp_path):
    # The key above may use mock-1 only: a second gateway without keys.
    g = Gateway(gw_config_without_keys(upstream), tmp_path=tmp_path)
    try:
        r = client(g).messages.count_tokens(model="claude", messages=[{"role": "user", "content": "Hi"}])
        assert r.input_tokens == 1001, "the upstream's own count"
        assert upstream.last()["path"] == "/v1/messages/count_tokens"
        raw = httpx.post(f"{g.url}/v1/messages/count_tokens",
                         json={"model": "claude", "messages": [{"role": "user", "content": "Hi"}]})
        assert raw.headers["x-sluice-token-count"] == "exact"
    finally:
        g.stop()


def gw_config_without_keys(upstream):
    return f"""
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{upstream.url}/v1"
api_key = "sk-ant"

[[models]]
name = "claude"
targets = [{{ provider = "claude", model = "claude-x" }}]
"""


def test_estimated_for_other_targets(gw):
    short = client(gw).messages.count_tokens(model="mock-1", messages=[{"role": "user", "content": "hello world"}])
    long = client(gw).messages.count_tokens(
        model="mock-1", system="You are terse.",
        messages=[{"role": "user", "content": "hello world " * 50}])
    assert 5 < short.input_tokens < 20
    assert long.input_tokens > short.input_tokens + 90
    raw = httpx.post(f"{gw.url}/v1/messages/count_tokens", headers={"x-api-key": "sk-k"},
                     json={"model": "mock-1", "messages": [{"role": "user", "content": "hello world"}]})
    assert raw.headers["x-sluice-token-count"] == "estimated; encoding=o200k_base"
    assert raw.json()["input_tokens"] == short.input_tokens


def test_keys_and_models_are_checked(gw):
    with pytest.raises(anthropic.AuthenticationError):
        client(gw, "sk-wrong").messages.count_tokens(model="mock-1", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.NotFoundError):
        client(gw).messages.count_tokens(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.PermissionDeniedError):
        client(gw).messages.count_tokens(model="claude", messages=[{"role": "user", "content": "x"}])

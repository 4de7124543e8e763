"""Virtual keys: hashed in the configuration, checked on every API route."""

import subprocess

import anthropic
import httpx
import openai
import pytest

from conftest import MOCK_MODEL, SLUICE, Gateway, key_hash

MOCK = MOCK_MODEL + """
[[models]]
name = "mock-2"
targets = [{ provider = "mock" }]

[[models]]
name = "mock-3"
targets = [{ provider = "mock" }]
rpm = 2
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    keys = f"""
[[keys]]
name = "team-a"
sha256 = "{key_hash('sk-team-a')}"
models = ["mock-1"]
metadata = {{ team = "a" }}

[[keys]]
name = "all"
sha256 = "{key_hash('sk-all')}"

[[keys]]
name = "limited"
sha256 = "{key_hash('sk-limited')}"
rpm = 3

[[keys]]
name = "tokens"
sha256 = "{key_hash('sk-tokens')}"
tpm = 300

[[keys]]
name = "second"
sha256 = "{key_hash('sk-second')}"

[[keys]]
name = "expired"
sha256 = "{key_hash('sk-expired')}"
expires_at = "2020-01-01T00:00:00Z"
"""
    g = Gateway(MOCK + keys, tmp_path=tmp_path_factory.mktemp("auth"))
    yield g
    g.assert_alive()
    g.stop()


def chat(g, model="mock-1", **headers):
    return httpx.post(f"{g.base_url}/chat/completions", headers=headers,
                      json={"model": model, "messages": [{"role": "user", "content": "x"}]})


def test_hash_key_matches_sha256():
    # printf abc | sha256sum
    assert key_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    r = subprocess.run([str(SLUICE), "hash-key"], input="abc\n", capture_output=True, text=True)
    assert r.stdout.strip() == key_hash("abc")


def test_missing_unknown_and_expired_keys_are_401(gw):
    for headers, needle in [({}, "missing API key"), ({"authorization": "Bearer nope"}, "invalid API key"),
                            ({"authorization": "Bearer sk-expired"}, "expired")]:
        r = chat(gw, **headers)
        assert r.status_code == 401, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_api_key" and err["type"] == "authentication_error"
        assert needle in err["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.base_url, api_key="wrong", max_retries=0).models.list()


def test_valid_key_and_model_allowlist(gw):
    ok = openai.OpenAI(base_url=gw.base_url, api_key="sk-team-a", max_retries=0)
    r = ok.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content.startswith("Mock reply")
    with pytest.raises(openai.PermissionDeniedError) as e:
        ok.chat.completions.create(model="mock-2", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_allowed"
    assert [m.id for m in ok.models.list()] == ["mock-1"]
    every = openai.OpenAI(base_url=gw.base_url, api_key="sk-all", max_retries=0)
    assert [m.id for m in every.models.list()] == ["mock-1", "mock-2", "mock-3"]


def test_anthropic_clients_use_x_api_key(gw):
    good = anthropic.Anthropic(base_url=gw.url, api_key="sk-all", max_retries=0)
    r = good.messages.create(model="mock-2", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert r.content[0].text.startswith("Mock")
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=gw.url, api_key="bad", max_retries=0).messages.create(
            model="mock-1", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "authentication_error"


def test_key_name_in_access_log_never_the_token(gw):
    assert chat(gw, authorization="Bearer sk-all").status_code == 200
    logs = gw.logs()
    assert '"key":"all"' in logs
    assert "sk-all" not in logs and "sk-team-a" not in logs


def test_open_api_refuses_non_loopback_unless_allowed(tmp_path):
    cfg = tmp_path / "open.toml"
    cfg.write_text(MOCK)
    r = subprocess.run([str(SLUICE), "serve", "--config", str(cfg), "--listen", "0.0.0.0:0",
                        "--admin-listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1
    assert "refusing to listen on 0.0.0.0:0 with no [[keys]]" in r.stderr
    g = Gateway("[auth]\nallow_open_non_loopback = true\n" + MOCK, tmp_path=tmp_path, listen="0.0.0.0:0")
    try:
        port = g.url.rsplit(":", 1)[1]
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert "the API is open" in g.logs()
    finally:
        g.stop()


def test_requests_per_minute_per_key(gw):
    codes = []
    for _ in range(4):
        r = chat(gw, authorization="Bearer sk-limited")
        codes.append(r.status_code)
    assert codes == [200, 200, 200, 429], codes
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(r.headers["retry-after"]) >= 1
    ok = chat(gw, authorization="Bearer sk-all")
    assert ok.status_code == 200, "other keys are not affected"
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=gw.base_url, api_key="sk-limited", max_retries=0).chat.completions.create(
            model="mock-1", messages=[{"role": "user", "content": "x"}])


def test_tokens_per_minute_reserve_and_settle(gw):
    body = {"model": "mock-1", "max_tokens": 100, "messages": [{"role": "user", "content": "x"}]}
    # Each request reserves ~125 of 300 tokens but uses ~7; settling gives the
    # rest back, so ten in a row fit where three reservations alone would not.
    for i in range(10):
        r = httpx.post(f"{gw.base_url}/chat/completions", headers={"authorization": "Bearer sk-tokens"}, json=body)
        assert r.status_code == 200, (i, r.text)
        assert r.headers["x-ratelimit-limit-tokens"] == "300"
    big = dict(body, max_tokens=1000)
    r = httpx.post(f"{gw.base_url}/chat/completions", headers={"authorization": "Bearer sk-tokens"}, json=big)
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "rate_limit_exceeded"
    assert err["message"].startswith("rate limit reached for key 'tokens' (tokens per minute)"), err


def test_model_limit_counts_every_key_together(gw):
    codes = [chat(gw, "mock-3", authorization=f"Bearer {k}").status_code
             for k in ("sk-all", "sk-second", "sk-all")]
    assert codes == [200, 200, 429], codes
    r = chat(gw, "mock-3", authorization="Bearer sk-second")
    assert r.status_code == 429
    assert "model 'mock-3'" in r.json()["error"]["message"]
    assert chat(gw, "mock-2", authorization="Bearer sk-all").status_code == 200

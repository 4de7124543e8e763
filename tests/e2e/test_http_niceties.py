"""HTTP niceties real clients rely on: CORS for browser apps ([server]
cors_origins, preflight and simple requests, reloadable), request bodies sent
compressed (gzip, br, zstd — the decompressed size counts against
max_body_bytes, so a zip bomb gets 413), compressed responses when asked (not
event streams), trailing slashes, and /v1/models in Anthropic's shape for
Anthropic clients."""

import gzip
import json

import anthropic
import httpx
import openai

from conftest import MOCK_MODEL, Gateway

BODY = {"model": "mock-1", "messages": [{"role": "user", "content": "hi " * 300}]}


def gateway(tmp_path, server=""):
    return Gateway(f"[server]\nmax_body_bytes = 65536\n{server}\n{MOCK_MODEL}", tmp_path=tmp_path)


def test_cors_preflight_and_responses_for_allowed_origins_only(tmp_path):
    g = gateway(tmp_path, 'cors_origins = ["https://app.example.com"]')
    url = f"{g.base_url}/chat/completions"
    try:
        pre = httpx.options(url, headers={
            "origin": "https://app.example.com", "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type"})
        assert pre.status_code == 200, pre.text
        assert pre.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()

        r = httpx.post(url, json=BODY, headers={"origin": "https://app.example.com"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()

        other = httpx.post(url, json=BODY, headers={"origin": "https://evil.example"})
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers

        # Reloaded: the new list applies at once.
        (tmp_path / "sluice.toml").write_text(
            f'[server]\nmax_body_bytes = 65536\ncors_origins = ["*"]\n{MOCK_MODEL}')
        assert httpx.post(f"{g.admin_url}/config/reload").status_code == 200
        r = httpx.post(url, json=BODY, headers={"origin": "https://evil.example"})
        assert r.headers.get("access-control-allow-origin") in ("*", "https://evil.example")
    finally:
        g.stop()


def test_compressed_requests_and_responses(tmp_path):
    g = gateway(tmp_path)
    url = f"{g.base_url}/chat/completions"
    try:
        raw = json.dumps(BODY).encode()
        r = httpx.post(url, content=gzip.compress(raw),
                       headers={"content-type": "application/json", "content-encoding": "gzip"})
        assert r.status_code == 200, r.text

        # A zip bomb: small on the wire, over the limit once decompressed.
        bomb = gzip.compress(b'{"model":"mock-1","messages":[{"role":"user","content":"' + b"a" * 200_000 + b'"}]}')
        assert len(bomb) < 65536
        r = httpx.post(url, content=bomb,
                       headers={"content-type": "application/json", "content-encoding": "gzip"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        r = httpx.post(url, content=b"not gzip at all",
                       headers={"content-type": "application/json", "content-encoding": "gzip"})
        assert r.status_code == 400

        # Responses: compressed when asked and large enough; streams never.
        models = httpx.get(f"{g.base_url}/models", headers={"accept-encoding": "gzip"})
        assert models.status_code == 200
        big = httpx.post(url, json={**BODY, "max_tokens": 4}, headers={"accept-encoding": "gzip"})
        assert big.status_code == 200 and big.json()["object"] == "chat.completion"
        with httpx.stream("POST", url, json={**BODY, "stream": True},
                          headers={"accept-encoding": "gzip"}) as s:
            assert "content-encoding" not in s.headers
            assert "[DONE]" in "".join(s.iter_text())
    finally:
        g.stop()


def test_large_json_responses_are_compressed_when_asked(tmp_path):
    g = Gateway(f"""
[[providers]]
name = "mock"
kind = "mock"
embedding_dims = 1024

[[models]]
name = "embed"
targets = [{{ provider = "mock" }}]
""", tmp_path=tmp_path)
    try:
        with httpx.Client() as c:
            r = c.post(f"{g.base_url}/embeddings", json={"model": "embed", "input": "x"},
                       headers={"accept-encoding": "gzip"})
            assert r.status_code == 200
            assert r.headers.get("content-encoding") == "gzip"
            assert len(r.json()["data"][0]["embedding"]) == 1024
            assert "accept-encoding" in r.headers.get("vary", "").lower()
            plain = c.post(f"{g.base_url}/embeddings", json={"model": "embed", "input": "x"},
                           headers={"accept-encoding": "identity"})
            assert "content-encoding" not in plain.headers
            assert len(plain.content) > 1024
            # Every encoding the layered router offers, chosen by the
            # client's weights; none when it refuses them all.
            for asked, got in [("deflate", "deflate"), ("br", "br"), ("zstd", "zstd"),
                               ("gzip;q=0.1, br;q=0.9", "br"), ("gzip;q=0", None)]:
                r = c.post(f"{g.base_url}/embeddings", json={"model": "embed", "input": "x"},
                           headers={"accept-encoding": asked})
                assert r.status_code == 200, asked
                assert r.headers.get("content-encoding") == got, asked
                if got in ("br", "zstd"):  # not decoded by this httpx: still compressed
                    assert len(r.content) < len(plain.content) // 2, asked
                else:
                    assert len(r.json()["data"][0]["embedding"]) == 1024, asked
            # The header on two lines: both are read (the first alone
            # would refuse every encoding).
            r = c.post(f"{g.base_url}/embeddings", json={"model": "embed", "input": "x"},
                       headers=[("accept-encoding", "identity"), ("accept-encoding", "gzip")])
            assert r.headers.get("content-encoding") == "gzip"
        # The official SDK asks for gzip and reads the answer it gets.
        raw = openai.OpenAI(base_url=g.base_url, api_key="k").embeddings.with_raw_response.create(
            model="embed", input="x", encoding_format="float")
        assert raw.headers.get("content-encoding") == "gzip"
        assert len(raw.parse().data[0].embedding) == 1024
    finally:
        g.stop()


def test_trailing_slashes_and_anthropic_models(tmp_path):
    g = gateway(tmp_path)
    try:
        r = httpx.post(f"{g.base_url}/chat/completions/", json=BODY)
        assert r.status_code == 200
        assert httpx.get(f"{g.base_url}/models/").status_code == 200

        client = anthropic.Anthropic(base_url=g.url, api_key="unused", max_retries=0)
        models = client.models.list()
        assert [m.id for m in models.data] == ["mock-1"]
        m = models.data[0]
        assert m.type == "model" and m.display_name == "mock-1" and m.created_at
        assert client.models.retrieve("mock-1").id == "mock-1"
        # OpenAI clients still get OpenAI's shape.
        assert httpx.get(f"{g.base_url}/models").json()["object"] == "list"
    finally:
        g.stop()

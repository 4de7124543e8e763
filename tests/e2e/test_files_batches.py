"""`/v1/files` and `/v1/batches` with the official `openai` SDK: kept in memory
and run by the gateway when `[files]` names the mock (each batch line through
the same request path as a client's request: routing, keys, metrics), passed
through to an OpenAI-compatible provider otherwise."""

import json
import time

import httpx
import openai
import pytest

from conftest import SLUICE, Gateway, key_hash

MOCK = """
[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 6

[[models]]
name = "mock-1"
targets = [{ provider = "mock" }]

[[keys]]
name = "a"
sha256 = "%s"

[[keys]]
name = "b"
sha256 = "%s"
""" % (key_hash("sk-a-123456"), key_hash("sk-b-123456"))


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = Gateway(MOCK, tmp_path=tmp_path_factory.mktemp("files"))
    yield g
    g.assert_alive()
    g.stop()


def client(g, key="sk-a-123456"):
    return openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0)


def jsonl(*lines):
    return ("\n".join(json.dumps(l) for l in lines) + "\n").encode()


def chat_line(cid, model, text):
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}]}}


def wait_done(c, batch_id, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        b = c.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "cancelled", "expired"):
            return b
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} still {b.status}")


def test_files_round_trip(gw):
    c = client(gw)
    data = jsonl(chat_line("x", "mock-1", "hi"))
    f = c.files.create(file=("in.jsonl", data), purpose="batch")
    assert f.id.startswith("file-") and f.bytes == len(data) and f.purpose == "batch"
    assert f.filename == "in.jsonl" and f.status == "processed"
    assert c.files.retrieve(f.id).bytes == len(data)
    assert c.files.content(f.id).content == data
    ids = [x.id for x in c.files.list(purpose="batch")]
    assert f.id in ids
    # Another key does not see it.
    other = client(gw, "sk-b-123456")
    assert f.id not in [x.id for x in other.files.list()]
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(f.id)
    assert c.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(f.id)


def test_a_batch_runs_through_the_gateway(gw):
    c = client(gw)
    lines = [chat_line(f"req-{i}", "mock-1", f"question {i}") for i in range(3)]
    lines.append(chat_line("bad", "no-such-model", "x"))
    f = c.files.create(file=("batch.jsonl", jsonl(*lines)), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="24h", metadata={"job": "nightly"})
    assert b.id.startswith("batch_") and b.status in ("validating", "in_progress", "completed")
    b = wait_done(c, b.id)
    assert b.status == "completed", b
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (4, 3, 1)
    assert b.metadata == {"job": "nightly"}
    out = [json.loads(l) for l in c.files.content(b.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == ["req-0", "req-1", "req-2"]
    # Each answer is what the same request gets directly.
    direct = c.chat.completions.create(model="mock-1",
                                       messages=[{"role": "user", "content": "question 1"}])
    got = next(o for o in out if o["custom_id"] == "req-1")
    assert got["response"]["status_code"] == 200
    assert got["response"]["body"]["choices"][0]["message"]["content"] == direct.choices[0].message.content
    errs = [json.loads(l) for l in c.files.content(b.error_file_id).text.splitlines()]
    assert errs[0]["custom_id"] == "bad" and errs[0]["response"]["status_code"] == 404
    assert b.id in [x.id for x in c.batches.list()]
    # The lines were counted like any request, under the creator's key.
    text = gw.metrics_text()
    assert any(l.startswith("sluice_requests_total{") and 'route="/v1/chat/completions"' in l
               and 'model="mock-1"' in l for l in text.splitlines())


def test_bad_batches_are_refused_or_fail_with_reasons(gw):
    c = client(gw)
    with pytest.raises(openai.NotFoundError):
        c.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                         completion_window="24h")
    f = c.files.create(file=("b.jsonl", b'{"custom_id": "1", "url": "/v1/embeddings", "body": {}}\nnot json\n'),
                       purpose="batch")
    with pytest.raises(openai.BadRequestError):
        c.batches.create(input_file_id=f.id, endpoint="/v1/images/generations", completion_window="24h")
    b = wait_done(c, c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                      completion_window="24h").id)
    assert b.status == "failed"
    assert [e.line for e in b.errors.data] == [1, 2]
    with pytest.raises(openai.BadRequestError):
        c.files.create(file=("x.jsonl", b"{}"), purpose="nonsense")
    r = httpx.post(f"{gw.base_url}/files", json={"purpose": "batch"},
                   headers={"authorization": "Bearer sk-a-123456"})
    assert r.status_code == 415
    r = httpx.get(f"{gw.base_url}/files/..%2Fetc/content", headers={"authorization": "Bearer sk-a-123456"})
    assert r.status_code in (400, 404)


def test_files_need_a_key(gw):
    with pytest.raises(openai.AuthenticationError):
        client(gw, "wrong").files.list()


def test_passthrough_to_an_openai_compatible_provider(upstream, tmp_path):
    g = Gateway(f"""
[[providers]]
name = "mock"
kind = "mock"

[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream.url}/v1"
api_key = "sk-up"

[[models]]
name = "m"
targets = [{{ provider = "mock" }}]

[files]
provider = "up"
""", tmp_path=tmp_path)
    try:
        c = openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0)
        f = c.files.create(file=("in.jsonl", b'{"a": 1}\n'), purpose="batch")
        assert f.id == "file-upstream"
        last = upstream.last()
        assert last["path"] == "/v1/files" and last["method"] == "POST"
        assert last["headers"]["authorization"] == "Bearer sk-up"
        assert last["headers"]["content-type"].startswith("multipart/form-data; boundary=")
        assert '{"a": 1}' in last["body"]
        c.files.list(purpose="batch", limit=5)
        last = upstream.last()
        assert last["method"] == "GET" and "purpose=batch" in last["query"] and "limit=5" in last["query"]
        b = c.batches.create(input_file_id="file-upstream", endpoint="/v1/chat/completions",
                             completion_window="24h")
        assert b.id == "batch-upstream"
        assert json.loads(upstream.last()["body"])["input_file_id"] == "file-upstream"
        c.batches.cancel("batch_123")
        assert upstream.last()["path"] == "/v1/batches/batch_123/cancel"
    finally:
        g.stop()


def test_files_provider_must_speak_openai(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("""
[[providers]]
name = "claude"
kind = "anthropic"
api_key = "x"

[[models]]
name = "m"
targets = [{ provider = "claude" }]

[files]
provider = "claude"
""")
    import subprocess
    r = subprocess.run([str(SLUICE), "check-config", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "bad.toml:12:12" in r.stderr + r.stdout and "files" in r.stderr + r.stdout

"""Structured access logs: fields, dynamic sampling, run-time level, no prompts."""

import json
import time

import httpx

from conftest import Gateway

CONFIG = """
[logging]
format = "json"
sample_ratio = 0.1
slow_ms = 60000

[logging.routes."/v1/embeddings"]
sample_ratio = 1.0

[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 4

[[models]]
name = "mock-1"
targets = [{ provider = "mock" }]
"""


def access_lines(g):
    out = []
    for line in g.logs().splitlines():
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if v.get("target") == "sluice::access":
            out.append(v)
    return out


def wait_lines(g, n, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = access_lines(g)
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    return access_lines(g)


def test_sampling_keeps_every_error_and_a_tenth_of_successes(tmp_path):
    g = Gateway(CONFIG, tmp_path=tmp_path)
    try:
        secret_prompt = "my-unique-prompt-text-1234"
        with httpx.Client() as c:
            for _ in range(1000):
                r = c.post(f"{g.base_url}/chat/completions",
                           json={"model": "mock-1", "messages": [{"role": "user", "content": secret_prompt}]})
                assert r.status_code == 200
            for i in range(25):
                r = c.post(f"{g.base_url}/chat/completions",
                           json={"model": f"nope-{i}", "messages": [{"role": "user", "content": "x"}]})
                assert r.status_code == 404
            for _ in range(5):
                assert c.post(f"{g.base_url}/embeddings", json={"model": "mock-1", "input": "x"}).status_code == 200
        lines = wait_lines(g, 25 + 5 + 60)
        ok = [l for l in lines if l["route"] == "/v1/chat/completions" and l["status"] == 200]
        errors = [l for l in lines if l["status"] == 404]
        embeds = [l for l in lines if l["route"] == "/v1/embeddings"]
        assert 60 <= len(ok) <= 140, len(ok)
        assert len(errors) == 25
        assert len(embeds) == 5, "the per-route ratio of 1.0 applies"
        line = ok[0]
        assert line["model"] == "mock-1" and line["provider"] == "mock"
        assert line["request_id"].startswith("req-")
        assert line["input_tokens"] == 4 and line["output_tokens"] == 4
        assert line["latency_ms"] >= 0
        assert secret_prompt not in g.logs(), "prompts are never logged"
    finally:
        g.stop()


def test_log_level_changes_at_run_time(tmp_path):
    g = Gateway(CONFIG.replace("sample_ratio = 0.1", "sample_ratio = 1.0"), tmp_path=tmp_path)
    try:
        admin = g.admin_url
        assert httpx.get(f"{admin}/log-level").json() == {"level": "info"}
        body = {"model": "mock-1", "messages": [{"role": "user", "content": "x"}]}
        httpx.post(f"{g.base_url}/chat/completions", json=body)
        assert len(wait_lines(g, 1)) == 1
        r = httpx.put(f"{admin}/log-level", content="warn")
        assert r.status_code == 200 and r.json() == {"level": "warn"}
        for _ in range(5):
            httpx.post(f"{g.base_url}/chat/completions", json=body)
        r = httpx.put(f"{admin}/log-level", content="sluice=[[[")
        assert r.status_code == 400
        assert httpx.get(f"{admin}/log-level").json() == {"level": "warn"}
        httpx.put(f"{admin}/log-level", content="info")
        httpx.post(f"{g.base_url}/chat/completions", json=body)
        # The line of the request after "info" is back has come, so any of
        # the five at "warn" would be there too: none is.
        assert len(wait_lines(g, 2)) == 2, "info lines stop at level warn"
    finally:
        g.stop()

"""The Python package `sluice` (bindings/python, PyO3 abi3, installed into the
venv by scripts/test.sh): the gateway in-process, against the mock upstream.
Chat, stream, cancellation, errors as exceptions, keys, many threads at once,
asyncio without blocking the loop, metrics, and serve() with the official
`openai` SDK against it."""

import asyncio
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import sluice

from conftest import MOCK_MODEL, UPSTREAM_KEY, key_hash, proxy_config, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
import make_models  # noqa: E402


def msgs(text="Hello"):
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def gw(upstream, monkeypatch_module):
    monkeypatch_module.setenv("SLUICE_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    g = sluice.Gateway(proxy_config(upstream.url) + """
[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 8

[[models]]
name = "mock-1"
targets = [{ provider = "mock" }]

[[models]]
name = "slow-300"
targets = [{ provider = "up" }]

[[models]]
name = "slow-500"
targets = [{ provider = "up" }]
""")
    yield g
    g.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_chat_goes_through_the_gateway_to_the_upstream(gw, upstream):
    r = gw.chat({"model": "gpt-test", "messages": msgs("in-process hello")})
    assert r["object"] == "chat.completion"
    assert r["choices"][0]["message"]["content"]
    last = upstream.last()
    # Routed: the upstream saw its own model name and the provider's key.
    assert json.loads(last["body"])["model"] == "upstream-model"
    assert last["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_stream_yields_openai_chunks(gw):
    chunks = list(gw.stream({"model": "gpt-test", "messages": msgs()}))
    assert len(chunks) >= 2
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip()
    assert any(c["choices"] and c["choices"][0].get("finish_reason") for c in chunks)


def test_closing_a_stream_cancels_the_upstream_request(gw, upstream):
    before = upstream.stats()["cancelled"]
    t0 = time.monotonic()
    s = gw.stream({"model": "drip-50", "messages": msgs()})
    first = next(s)
    assert first["object"] == "chat.completion.chunk"
    s.close()
    # 200 chunks at 50 ms would take 10 s; the upstream sees the cancel now.
    wait_for(lambda: upstream.stats()["cancelled"] > before, timeout=5, what="upstream cancel")
    assert time.monotonic() - t0 < 5
    with pytest.raises(StopIteration):
        next(s)


def test_breaking_out_of_a_with_block_cancels(gw, upstream):
    before = upstream.stats()["cancelled"]
    with gw.stream({"model": "drip-50", "messages": msgs()}) as s:
        for _ in s:
            break
    wait_for(lambda: upstream.stats()["cancelled"] > before, timeout=5, what="upstream cancel")


def test_errors_are_exceptions_with_status_and_code(gw):
    with pytest.raises(sluice.SluiceError) as e:
        gw.chat({"model": "no-such-model", "messages": msgs()})
    assert e.value.status == 404 and e.value.code == "model_not_found"
    with pytest.raises(sluice.SluiceError) as e:
        gw.chat({"model": "status-429", "messages": msgs()})
    assert e.value.status == 429
    with pytest.raises(sluice.SluiceError) as e:
        gw.chat({"model": "gpt-test"})
    assert e.value.status == 400
    with pytest.raises(sluice.SluiceError) as e:
        list(gw.stream({"model": "no-such-model", "messages": msgs()}))
    assert e.value.status == 404
    with pytest.raises(sluice.SluiceError) as e:
        gw.chat({"model": "slow-3000", "messages": msgs()}, timeout=0.3)
    assert e.value.status == 504


def test_a_bad_configuration_names_line_and_column():
    with pytest.raises(sluice.ConfigError) as e:
        sluice.Gateway('[server]\nlisten = "127.0.0.1:0"\n\n[[models]]\nname = "x"\ntargets = [{ provider = "nope" }]\n')
    assert "<config>:6:" in str(e.value) and "nope" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_keys_apply_in_process(upstream):
    cfg = proxy_config(upstream.url) + f"""
[[keys]]
name = "team"
sha256 = "{key_hash("sk-team")}"
"""
    g = sluice.Gateway(cfg)
    with pytest.raises(sluice.SluiceError) as e:
        g.chat({"model": "gpt-test", "messages": msgs()})
    assert e.value.status == 401
    assert g.chat({"model": "gpt-test", "messages": msgs()}, api_key="sk-team")["choices"]
    g.set_api_key("sk-team")
    assert g.chat({"model": "gpt-test", "messages": msgs()})["choices"]
    assert sluice.Gateway(cfg, api_key="sk-team").chat({"model": "gpt-test", "messages": msgs()})["choices"]


def test_many_threads_at_once_share_one_gateway(gw):
    # Each call waits 300 ms upstream: 24 calls from 24 threads end together
    # only if no call holds the GIL (or a lock) while it waits.
    def one(i):
        return gw.chat({"model": "slow-300", "messages": msgs(f"thread {i}")})

    t0 = time.monotonic()
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(24)))
    elapsed = time.monotonic() - t0
    assert len(results) == 24 and all(r["choices"][0]["message"]["content"] for r in results)
    assert elapsed < 24 * 0.3 / 3, f"{elapsed:.2f} s: calls did not overlap"


def test_a_blocking_call_does_not_hold_the_gil(gw):
    done = threading.Event()
    ticks = 0

    def count():
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    t = threading.Thread(target=count)
    t.start()
    try:
        gw.chat({"model": "slow-500", "messages": msgs()})
    finally:
        done.set()
        t.join()
    assert ticks > 10_000, ticks


def test_async_calls_do_not_block_the_loop(gw):
    async def main():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        t0 = time.monotonic()
        results = await asyncio.gather(*(gw.achat({"model": "slow-300", "messages": msgs(str(i))})
                                         for i in range(50)))
        elapsed = time.monotonic() - t0
        chunks = [c async for c in gw.astream({"model": "gpt-test", "messages": msgs()})]
        stop.set()
        await t
        return results, elapsed, ticks, chunks

    results, elapsed, ticks, chunks = asyncio.run(main())
    assert len(results) == 50 and all(r["choices"][0]["message"]["content"] for r in results)
    assert elapsed < 3, f"50 concurrent 300 ms calls took {elapsed:.2f} s"
    assert ticks >= 10, ticks
    assert len(chunks) >= 2 and all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_async_errors_and_cancellation(gw, upstream):
    async def main():
        with pytest.raises(sluice.SluiceError) as e:
            await gw.achat({"model": "no-such-model", "messages": msgs()})
        assert e.value.status == 404
        task = asyncio.create_task(gw.achat({"model": "slow-3000", "messages": msgs()}))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # A cancelled async stream cancels upstream too.
        before = upstream.stats()["cancelled"]
        stream = gw.astream({"model": "drip-50", "messages": msgs()})
        async for _ in stream:
            break
        await stream.aclose()
        return before

    before = asyncio.run(main())
    wait_for(lambda: upstream.stats()["cancelled"] > before, timeout=5, what="upstream cancel")
    # The cancelled call is recorded as the client's cancel (499).
    cancelled = 'sluice_requests_total{route="/v1/chat/completions",model="slow-3000"'
    wait_for(lambda: any(l.startswith(cancelled) and 'status="499"' in l for l in gw.metrics().splitlines()),
             timeout=5, what="a 499 for the cancelled call")


def test_serve_with_the_openai_sdk_and_shared_metrics(gw):
    addr = gw.serve("127.0.0.1:0")
    try:
        assert gw.address == addr
        client = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model="mock-1", messages=msgs("over http"))
        assert r.choices[0].message.content
        streamed = client.chat.completions.create(model="mock-1", messages=msgs(), stream=True)
        assert sum(1 for _ in streamed) >= 2
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=msgs())
        gw.chat({"model": "mock-1", "messages": msgs("in process")})
        # One registry: HTTP and in-process requests are counted together.
        line = next(l for l in gw.metrics().splitlines()
                    if l.startswith('sluice_requests_total{route="/v1/chat/completions",model="mock-1"')
                    and 'status="200"' in l)
        assert float(line.split()[-1]) >= 3
        with pytest.raises(RuntimeError):
            gw.serve("127.0.0.1:0")
    finally:
        gw.stop()
    assert gw.address is None
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url=f"http://{addr}/v1", api_key="x", max_retries=0, timeout=2).models.list()
    assert gw.chat({"model": "mock-1", "messages": msgs()})["choices"]


def test_predict_and_other_routes(tmp_path):
    models = make_models.write(tmp_path)
    g = sluice.Gateway(f"""
[[predictors]]
name = "mlp"
path = "{models}/mlp.onnx"

[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "mock-embed-1"
targets = [{{ provider = "mock" }}]
""")
    x = [0.1, 0.2, 0.3, 0.4]
    r = g.predict({"model": "mlp", "data": x})
    assert r["shape"] == [3]
    assert max(abs(a - b) for a, b in zip(r["prediction"], make_models.mlp_reference(x)[0])) < 1e-5
    e = g.request("/v1/embeddings", {"model": "mock-embed-1", "input": "hello"})
    assert e["data"][0]["embedding"]
    with pytest.raises(sluice.SluiceError) as err:
        g.request("/v1/nothing-here", {})
    assert err.value.status == 404


# The built-in mock provider behind mock-1, as the other tests use it.
MOCK_ONLY = MOCK_MODEL


def test_reload_swaps_the_configuration_in_process():
    g = sluice.Gateway(MOCK_ONLY)
    with pytest.raises(sluice.SluiceError) as e:
        g.chat({"model": "mock-2", "messages": msgs()})
    assert e.value.status == 404
    g.reload(MOCK_ONLY + '\n[[models]]\nname = "mock-2"\ntargets = [{ provider = "mock" }]\n')
    assert g.chat({"model": "mock-2", "messages": msgs()})["choices"]
    with pytest.raises(sluice.ConfigError) as e:
        g.reload(MOCK_ONLY + '\n[[models]]\nname = "mock-3"\ntargets = [{ provider = "nope" }]\n')
    assert "<config>:" in str(e.value) and "nope" in str(e.value)
    # Refused: the running configuration stays.
    assert g.chat({"model": "mock-2", "messages": msgs()})["choices"]


def test_limits_and_the_audit_trail_apply_in_process(tmp_path):
    audit = tmp_path / "audit.jsonl"
    g = sluice.Gateway(MOCK_ONLY + f"""
[[keys]]
name = "embedded-app"
sha256 = "{key_hash("sk-app")}"
rpm = 2

[audit]
path = "{audit}"
""", api_key="sk-app")
    for i in range(2):
        assert g.chat({"model": "mock-1", "messages": msgs()}, headers={"x-request-id": f"emb-{i}"})["choices"]
    with pytest.raises(sluice.SluiceError) as e:
        g.chat({"model": "mock-1", "messages": msgs()})
    assert e.value.status == 429 and e.value.code == "rate_limit_exceeded"
    # Dropping the gateway flushes its audit trail.
    del g
    import gc
    gc.collect()
    events = [json.loads(l) for l in audit.read_text().splitlines() if l.strip()]
    ids = {e.get("request_id") for e in events}
    assert {"emb-0", "emb-1"} <= ids, events
    assert all(e["key"] == "embedded-app" for e in events if e.get("request_id", "").startswith("emb-")), events
    assert any(e["status"] == 429 for e in events), events


def test_the_wheel_is_abi3():
    from importlib.metadata import distribution
    wheel = distribution("sluice").read_text("WHEEL")
    assert "abi3" in wheel, wheel


def test_logs_only_when_sluice_log_asks():
    import subprocess
    code = ("import sluice; g = sluice.Gateway(); g.serve(); "
            "g.chat({'model': 'mock-1', 'messages': [{'role': 'user', 'content': 'x'}]}); g.stop()")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("SLUICE_LOG", "RUST_LOG")}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "sluice serving" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**env, "SLUICE_LOG": "info"})
    assert loud.returncode == 0, loud.stderr
    assert "sluice serving (embedded)" in loud.stderr, loud.stderr

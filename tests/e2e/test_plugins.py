"""WASM plugins, end to end, with the official OpenAI SDK and httpx against the
real binary: proxy-wasm filters (one built from the public proxy-wasm Rust
SDK, unchanged; others in WAT) that add headers, deny with a local 403,
rewrite the model, count requests in shared data and read properties; an
inference plugin behind the TensorView ABI on /v1/predict and the Open
Inference Protocol, batched; and plugins that loop forever, allocate without
bound, answer out of bounds or trap — each fails its own request (500 naming
the plugin, counted in sluice_plugin_errors_total) while others go on."""

import concurrent.futures
import json
import os
import re
import struct
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from conftest import SLUICE, UPSTREAM_KEY, Gateway, MockUpstream, key_hash, wait_for

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
TOKEN = "sk-team-a-plugin-token"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def config(upstream_url, extra=""):
    return f"""
[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream_url}/v1"
api_key = "${{SLUICE_TEST_UPSTREAM_KEY}}"

[[models]]
name = "gpt-big"
targets = [{{ provider = "up", model = "big-upstream" }}]

[[models]]
name = "gpt-small"
targets = [{{ provider = "up", model = "small-upstream" }}]

[[models]]
name = "text-embed"
targets = [{{ provider = "up" }}]

[[keys]]
name = "team-a"
sha256 = "{key_hash(TOKEN)}"

[[plugins]]
name = "sdk"
path = "{PLUGINS}/sdk_filter.wasm"
config = "add_response_header=x-sdk-filter:on; deny_header=x-block-me; count=requests; echo_properties=1; count_chunks=1"

[[plugins]]
name = "rewrite"
path = "{PLUGINS}/sdk_filter.wasm"
config = "rewrite_model=gpt-small"
routes = ["/v1/chat/completions"]

[[plugins]]
name = "headers"
path = "{PLUGINS}/header_filter.wat"
max_call_ms = 50
max_memory_mb = 8
instances = 2
routes = ["/v1/chat/*", "/v1/embeddings"]

[[predictors]]
name = "affine"
engine = "wasm"
path = "{PLUGINS}/affine.wat"
model_path = "affine.bin"
input_shape = [4]
max_batch_size = 16
max_queue_delay_us = 3000

[[predictors]]
name = "misbehave"
engine = "wasm"
path = "{PLUGINS}/misbehave.wat"
max_call_ms = 50
max_memory_mb = 4
{extra}
"""


@pytest.fixture(scope="module")
def up():
    u = MockUpstream()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gw(up, tmp_path_factory):
    d = tmp_path_factory.mktemp("plugins")
    (d / "affine.bin").write_bytes(struct.pack("<ff", 2.0, 1.0))
    g = Gateway(config(up.url), tmp_path=d, env={"SLUICE_TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    g.dir = d
    yield g
    g.assert_alive()
    g.stop()


@pytest.fixture
def client(gw):
    return openai.OpenAI(base_url=gw.base_url, api_key=TOKEN, max_retries=0)


def test_filters_run_for_a_client_that_asks_for_no_compression(gw, up):
    # The SDK asks for compression, which takes the router; a client that
    # asks for none may skip it (`crate::direct`): the filters run all the same.
    r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "gpt-big", **CHAT},
                   headers={"authorization": f"Bearer {TOKEN}", "accept-encoding": "identity"})
    assert r.status_code == 200, r.text
    assert r.headers["x-sdk-filter"] == "on" and r.headers["x-wasm-filter"] == "on"
    assert r.headers["x-seen-path"] == "/v1/chat/completions"
    assert json.loads(up.last()["body"])["model"] == "small-upstream"


def test_filters_run_for_instructions_posted_to_agents(gw):
    # Instructions to an agent may skip the router too (`crate::direct`);
    # a filter on every route still sees them, and may deny them.
    url = f"{gw.base_url}/agents/a1/instructions"
    for encoding in ("identity", "gzip"):
        h = {"authorization": f"Bearer {TOKEN}", "accept-encoding": encoding}
        r = httpx.post(url, json={"payload": 1}, headers=h)
        assert r.status_code == 404 and r.json()["error"]["code"] == "agent_not_found", r.text
        assert r.headers["x-sdk-filter"] == "on" and r.headers["x-seen-path"] == "/v1/agents/a1/instructions"
        r = httpx.post(url, json={"payload": 1}, headers={**h, "x-block-me": "1"})
        assert r.status_code == 403 and r.headers["x-denied-by"] == "sdk-filter", r.text


def test_filters_add_headers_read_properties_and_rewrite_the_model(gw, up, client):
    raw = client.chat.completions.with_raw_response.create(model="gpt-big", **CHAT)
    r = raw.parse()
    assert r.choices[0].message.content
    h = raw.headers
    assert h["x-sdk-filter"] == "on"
    assert h["x-wasm-filter"] == "on"
    assert h["x-seen-path"] == "/v1/chat/completions"
    assert h["x-seen-method"] == "POST"
    # The sdk filter runs first: it sees the model the client asked for…
    assert h["x-seen-model"] == "gpt-big"
    assert h["x-seen-key"] == "team-a"
    # …and the rewrite filter after it changed the body: the small model answered.
    assert json.loads(up.last()["body"])["model"] == "small-upstream"


def test_filters_apply_to_their_routes_only(gw, client):
    raw = client.embeddings.with_raw_response.create(model="text-embed", input="hello")
    assert raw.headers["x-wasm-filter"] == "on" and raw.headers["x-sdk-filter"] == "on"
    # /v1/models: every API route has the sdk filter, not the WAT one.
    r = httpx.get(f"{gw.base_url}/models", headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert r.headers["x-sdk-filter"] == "on" and "x-wasm-filter" not in r.headers


def test_a_filter_denies_with_a_local_403(gw, up, client):
    before = up.stats()
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="gpt-big", extra_headers={"x-block-me": "1"}, **CHAT)
    assert e.value.status_code == 403
    assert "denied by the sdk filter: header x-block-me" in str(e.value)
    assert e.value.response.headers["x-denied-by"] == "sdk-filter"
    # It never reached the upstream.
    assert up.stats() == before


def test_shared_data_counts_every_request_across_instances(gw, client):
    counts = []
    for _ in range(6):
        raw = client.chat.completions.with_raw_response.create(model="gpt-big", **CHAT)
        counts.append(int(raw.headers["x-request-count"]))
    assert counts == list(range(counts[0], counts[0] + 6)), counts


def chunk_counts(gw):
    return [int(n) for n in re.findall(r"response body chunks: (\d+)", gw.logs())]


def test_streamed_responses_go_through_the_filters_chunk_by_chunk(gw, up, client):
    client.chat.completions.create(model="gpt-big", **CHAT)
    whole = wait_for(lambda: chunk_counts(gw), what="the filter's log")[-1]
    seen = len(chunk_counts(gw))
    # Events 20 ms apart, so that each arrives on its own (events that
    # arrive together go on together, as one chunk).
    up.control(pace_us=20_000)
    try:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-big", stream=True, **CHAT
        ) as resp:
            assert resp.headers["x-sdk-filter"] == "on"
            assert resp.headers["x-wasm-filter"] == "on"
            chunks = [c for c in resp.parse()]
    finally:
        up.control(pace_us=0)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and text
    # The filter was offered the stream in several chunks (plus the end),
    # the whole answer at once.
    streamed = wait_for(lambda: chunk_counts(gw)[seen:], what="the stream's log")[-1]
    assert whole == 1 and streamed > 2, (whole, streamed)


@pytest.mark.parametrize("how,kind", [("loop", "timeout"), ("grow", "memory"), ("trap", "trap")])
def test_a_misbehaving_filter_fails_only_its_request(gw, client, how, kind):
    series = f'sluice_plugin_errors_total{{plugin="headers",kind="{kind}"}}'
    before = gw.metric(series)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        good = [pool.submit(client.chat.completions.create, model="gpt-big", **CHAT) for _ in range(6)]
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="gpt-big", extra_headers={"x-misbehave": how}, **CHAT)
        took = time.monotonic() - started
        for f in good:
            assert f.result().choices[0].message.content
    assert e.value.status_code == 500
    assert "plugin 'headers'" in str(e.value)
    assert took < 5, took
    assert gw.metric(series) == before + 1
    # The filter is still there, on a fresh instance.
    raw = client.chat.completions.with_raw_response.create(model="gpt-big", **CHAT)
    assert raw.headers["x-wasm-filter"] == "on"


def predict(gw, body, token=TOKEN):
    return httpx.post(f"{gw.base_url}/predict", json=body, headers={"authorization": f"Bearer {token}"},
                      timeout=30)


def oip(gw, model, data, shape, datatype="FP32"):
    base = gw.base_url.removesuffix("/v1")
    body = {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]}
    return httpx.post(f"{base}/v2/models/{model}/infer", json=body,
                      headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)


def test_inference_plugin_computes_its_function(gw):
    r = predict(gw, {"model": "affine", "data": [0, 1.5, -3, 10]})
    assert r.status_code == 200, r.text
    assert r.json()["prediction"] == [1.0, 4.0, -5.0, 21.0]
    assert r.json()["shape"] == [4]
    # Filters apply to /v1/predict too (every API route).
    assert r.headers["x-sdk-filter"] == "on"
    r = oip(gw, "affine", [1, 2, 3, 4, 5, 6, 7, 8], [2, 4])
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [2, 4] and out["data"] == [3, 5, 7, 9, 11, 13, 15, 17]
    # Wrong size: refused before the plugin.
    r = predict(gw, {"model": "affine", "data": [1, 2]})
    assert r.status_code == 400 and "4" in r.json()["error"]["message"]


def test_inference_plugin_batches_concurrent_requests(gw):
    before = gw.metric('sluice_predict_batch_size_count{model="affine"}', default=0)
    xs = [[i, i + 0.5, -i, 2 * i] for i in range(48)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        rs = list(pool.map(lambda x: predict(gw, {"model": "affine", "data": x}), xs))
    for x, r in zip(xs, rs):
        assert r.status_code == 200, r.text
        assert r.json()["prediction"] == [2 * v + 1 for v in x]
    runs = gw.metric('sluice_predict_batch_size_count{model="affine"}') - before
    assert runs < len(xs), f"{runs} runs for {len(xs)} requests: nothing was batched"


@pytest.mark.parametrize("first,kind,status", [
    (1.0, "timeout", 500), (2.0, "memory", 500), (3.0, "view", 500), (4.0, "trap", 500),
])
def test_a_misbehaving_inference_plugin_fails_only_its_call(gw, first, kind, status):
    series = f'sluice_plugin_errors_total{{plugin="misbehave",kind="{kind}"}}'
    before = gw.metric(series)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        good = [pool.submit(predict, gw, {"model": "affine", "data": [1, 1, 1, 1]}) for _ in range(8)]
        r = oip(gw, "misbehave", [first, 0.5], [2])
        for f in good:
            assert f.result().json()["prediction"] == [3.0, 3.0, 3.0, 3.0]
    assert r.status_code == status, r.text
    assert "misbehave" in r.json()["error"], r.text
    assert gw.metric(series) == before + 1
    # The same plugin answers the next call, from a fresh instance.
    r = oip(gw, "misbehave", [7.0, 0.5], [2])
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [7.0, 0.5]


def test_a_plugin_error_code_is_the_clients_fault(up, tmp_path):
    # affine refuses a tensor that is not f32 with its own code (2): a 400.
    (tmp_path / "affine.bin").write_bytes(struct.pack("<ff", 2.0, 1.0))
    g = Gateway(config(up.url, f"""
[[predictors]]
name = "affine-u8"
engine = "wasm"
path = "{PLUGINS}/affine.wat"
model_path = "affine.bin"
dtype = "u8"
"""), tmp_path=tmp_path, env={"SLUICE_TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    try:
        base = g.base_url.removesuffix("/v1")
        body = {"inputs": [{"name": "input", "shape": [3], "datatype": "UINT8", "data": [1, 2, 3]}]}
        r = httpx.post(f"{base}/v2/models/affine-u8/infer", json=body,
                       headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 400, r.text
        assert "affine-u8" in r.json()["error"] and "error 2" in r.json()["error"]
        assert g.metric('sluice_plugin_errors_total{plugin="affine-u8",kind="error"}') == 1
        g.assert_alive()
    finally:
        g.stop()


def check_config(path):
    env = {**os.environ, "SLUICE_TEST_UPSTREAM_KEY": UPSTREAM_KEY}
    return subprocess.run([str(SLUICE), "check-config", str(path)], capture_output=True, text=True,
                          env=env)


def test_check_config_locates_plugin_errors(gw, tmp_path):
    (tmp_path / "affine.bin").write_bytes(struct.pack("<ff", 2.0, 1.0))
    bad = config("http://127.0.0.1:9").replace(
        "deny_header=x-block-me;", "nonsense=1;")
    (tmp_path / "a.toml").write_text(bad)
    r = check_config(tmp_path / "a.toml")
    assert r.returncode != 0
    line = next(i for i, l in enumerate(bad.splitlines(), 1) if "sdk_filter.wasm" in l)
    assert f"a.toml:{line}:" in r.stderr and "proxy_on_configure" in r.stderr, r.stderr
    # A module that does not exist, a limit out of range, an unknown engine.
    (tmp_path / "b.toml").write_text(config("http://127.0.0.1:9").replace(
        "header_filter.wat", "missing.wat").replace("max_memory_mb = 8", "max_memory_mb = 0"
    ).replace('engine = "wasm"\npath = "' + str(PLUGINS) + '/misbehave.wat"',
              'engine = "tflite"\npath = "' + str(PLUGINS) + '/misbehave.wat"'))
    r = check_config(tmp_path / "b.toml")
    assert r.returncode != 0
    assert "missing.wat" in r.stderr and "max_memory_mb must be between 1 and 4096" in r.stderr
    assert 'engine must be "onnx" or "wasm"' in r.stderr
    # Keys only a WASM predictor takes, on an ONNX one.
    (tmp_path / "c.toml").write_text(config("http://127.0.0.1:9").replace(
        'name = "misbehave"\nengine = "wasm"', 'name = "misbehave"'))
    r = check_config(tmp_path / "c.toml")
    assert r.returncode != 0 and 'this key needs engine = "wasm"' in r.stderr, r.stderr


def test_reload_adds_and_removes_a_filter(up, tmp_path):
    (tmp_path / "affine.bin").write_bytes(struct.pack("<ff", 2.0, 1.0))
    g = Gateway(config(up.url), tmp_path=tmp_path, env={"SLUICE_TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    try:
        c = openai.OpenAI(base_url=g.base_url, api_key=TOKEN, max_retries=0)
        raw = c.chat.completions.with_raw_response.create(model="gpt-big", **CHAT)
        assert "x-extra" not in raw.headers
        extra = f"""
[[plugins]]
name = "extra"
path = "{PLUGINS}/sdk_filter.wasm"
config = "add_response_header=x-extra:1"
"""
        (tmp_path / "sluice.toml").write_text(config(up.url, extra))
        r = httpx.post(f"{g.admin_url}/config/reload")
        assert r.status_code == 200, r.text
        raw = c.chat.completions.with_raw_response.create(model="gpt-big", **CHAT)
        assert raw.headers["x-extra"] == "1" and raw.headers["x-sdk-filter"] == "on"
        # A broken plugin refuses the reload; the running filters stay.
        (tmp_path / "sluice.toml").write_text(config(up.url, extra.replace("x-extra:1", "x-extra")))
        r = httpx.post(f"{g.admin_url}/config/reload")
        assert r.status_code >= 400 and "extra" in r.text
        raw = c.chat.completions.with_raw_response.create(model="gpt-big", **CHAT)
        assert raw.headers["x-extra"] == "1"
        (tmp_path / "sluice.toml").write_text(config(up.url))
        assert httpx.post(f"{g.admin_url}/config/reload").status_code == 200
        raw = c.chat.completions.with_raw_response.create(model="gpt-big", **CHAT)
        assert "x-extra" not in raw.headers
        g.assert_alive()
    finally:
        g.stop()


def test_ticks_and_unimplemented_host_calls(up, tmp_path):
    (tmp_path / "affine.bin").write_bytes(struct.pack("<ff", 2.0, 1.0))
    g = Gateway(config(up.url, f"""
[[plugins]]
name = "ticker"
path = "{PLUGINS}/ticker.wat"
instances = 1
"""), tmp_path=tmp_path, env={"SLUICE_TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    try:
        c = openai.OpenAI(base_url=g.base_url, api_key=TOKEN, max_retries=0)
        raw = c.chat.completions.with_raw_response.create(model="gpt-big", **CHAT)
        # An HTTP callout and a metric: UNIMPLEMENTED, answered, not trapped.
        assert raw.headers["x-unimplemented"] == "yes"
        ticks = lambda: g.logs().count("tick")
        first = wait_for(ticks, what="a tick")
        time.sleep(0.5)
        assert ticks() >= first + 5, (first, ticks())
        assert g.metric('sluice_plugin_errors_total{plugin="ticker",kind="trap"}') == 0
        g.assert_alive()
    finally:
        g.stop()

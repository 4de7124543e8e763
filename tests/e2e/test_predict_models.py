"""Local models past the MLP: a real model from a package (Silero VAD v6, from
the faster-whisper wheel: no batch dimension, a recurrent state) equals ONNX
Runtime's answer within 1e-4; a model without a batch dimension runs each
request alone with the shapes it gives; reloads load, keep and refuse models;
keys' rate limits and traces apply to predictions as to chat."""

import concurrent.futures
import shutil
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from conftest import Gateway, key_hash
from otlp_receiver import HttpReceiver

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
import make_models  # noqa: E402
import registry_models  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models.write(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def silero():
    return registry_models.silero_vad()


def v2(g):
    return g.base_url.removesuffix("/v1") + "/v2"


def tensor(name, a, datatype="FP32"):
    return {"name": name, "shape": list(a.shape), "datatype": datatype, "data": a.ravel().tolist()}


def test_silero_vad_equals_onnx_runtime_chunk_after_chunk(silero, tmp_path):
    g = Gateway(f'[[predictors]]\nname = "vad"\npath = "{silero}"\n', tmp_path=tmp_path)
    try:
        meta = httpx.get(f"{v2(g)}/models/vad").json()
        assert meta["inputs"] == [
            {"name": "input", "datatype": "FP32", "shape": [-1, 576]},
            {"name": "h", "datatype": "FP32", "shape": [1, 1, 128]},
            {"name": "c", "datatype": "FP32", "shape": [1, 1, 128]},
        ]
        assert [o["name"] for o in meta["outputs"]] == ["speech_probs", "hn", "cn"]
        sess = ort.InferenceSession(str(silero), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(3)
        t = np.arange(576 * 4, dtype=np.float32) / 16000
        speech = (0.4 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)
        h = np.zeros((1, 1, 128), np.float32)
        c = np.zeros((1, 1, 128), np.float32)
        # Chunks of 1, 3 and 2 windows; the state each returns feeds the next.
        for rows, noise in [(1, 0.01), (3, 0.2), (2, 0.0)]:
            x = (speech[: rows * 576].reshape(rows, 576)
                 + rng.standard_normal((rows, 576)).astype(np.float32) * noise).astype(np.float32)
            r = httpx.post(f"{v2(g)}/models/vad/infer", json={
                "id": f"chunk-{rows}",
                "inputs": [tensor("input", x), tensor("h", h), tensor("c", c)]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["id"] == f"chunk-{rows}"
            got = {o["name"]: o for o in body["outputs"]}
            want = dict(zip(["speech_probs", "hn", "cn"],
                            sess.run(None, {"input": x, "h": h, "c": c})))
            for name, w in want.items():
                assert got[name]["shape"] == list(w.shape), name
                np.testing.assert_allclose(np.array(got[name]["data"], np.float32).reshape(w.shape),
                                           w, atol=1e-4, err_msg=name)
            h = np.array(got["hn"]["data"], np.float32).reshape(1, 1, 128)
            c = np.array(got["cn"]["data"], np.float32).reshape(1, 1, 128)
        bad = httpx.post(f"{v2(g)}/models/vad/infer", json={"inputs": [
            tensor("input", np.zeros((2, 575), np.float32)), tensor("h", h), tensor("c", c)]})
        assert bad.status_code == 400 and "[-1, 576]" in bad.json()["error"], bad.text
        r = httpx.post(f"{g.base_url}/predict", json={"model": "vad", "data": [0.0] * 576})
        assert r.status_code == 400 and "3 inputs" in r.json()["error"]["message"]
    finally:
        g.stop()


def test_a_model_without_a_batch_dimension_runs_each_request_alone(models, tmp_path):
    g = Gateway(f'[[predictors]]\nname = "state"\npath = "{models}/state.onnx"\nmax_batch_size = 8\n',
                tmp_path=tmp_path)
    try:
        meta = httpx.get(f"{v2(g)}/models/state").json()
        assert [i["shape"] for i in meta["inputs"]] == [[-1, 4], [1, 4]]

        def call(t):
            x = np.full((t, 4), t, np.float32)
            h = np.arange(4, dtype=np.float32).reshape(1, 4)
            r = httpx.post(f"{v2(g)}/models/state/infer",
                           json={"inputs": [tensor("x", x), tensor("h", h)]})
            assert r.status_code == 200, r.text
            out = {o["name"]: o for o in r.json()["outputs"]}
            assert out["y"]["shape"] == [t, 4]
            np.testing.assert_allclose(out["y"]["data"], (x + h).ravel())
            np.testing.assert_allclose(out["hn"]["data"], (h + x.sum(0)).ravel())
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(call, [1, 2, 3, 4, 5, 6, 7, 8] * 2))
        assert g.metric('sluice_predict_batch_size_sum{model="state"}') == \
            g.metric('sluice_predict_batch_size_count{model="state"}') == 16
        r = httpx.post(f"{v2(g)}/models/state/infer", json={"inputs": [
            tensor("x", np.zeros((2, 4), np.float32)), tensor("h", np.zeros((2, 4), np.float32))]})
        assert r.status_code == 400 and "input 'h'" in r.json()["error"], r.text
    finally:
        g.stop()


def reload(g):
    return httpx.post(f"{g.admin_url}/config/reload")


def test_reload_loads_swaps_and_refuses_models(models, tmp_path):
    shutil.copy(models / "mlp.onnx", tmp_path / "m.onnx")
    cfg = '[[predictors]]\nname = "m"\npath = "m.onnx"\n'
    g = Gateway(cfg, tmp_path=tmp_path)
    conf = tmp_path / "sluice.toml"
    try:
        assert httpx.get(f"{v2(g)}/models/m").json()["inputs"][0]["datatype"] == "FP32"
        assert httpx.get(f"{v2(g)}/models/adder").status_code == 404
        conf.write_text(cfg + f'\n[[predictors]]\nname = "adder"\npath = "{models}/add_i64.onnx"\n')
        assert reload(g).status_code == 200
        r = httpx.post(f"{g.base_url}/predict", json={"model": "adder", "data": [1, 2, 3]})
        assert r.status_code == 200 and r.json()["prediction"] == [2, 3, 4], r.text
        # A model that does not load refuses the whole reload, at its entry.
        (tmp_path / "broken.onnx").write_bytes(b"not a model")
        conf.write_text(cfg + '\n[[predictors]]\nname = "bad"\npath = "broken.onnx"\n')
        r = reload(g)
        assert r.status_code == 400 and f"{conf}:7:8" in r.text and "predictor 'bad'" in r.text, r.text
        assert httpx.post(f"{g.base_url}/predict", json={"model": "adder", "data": [1, 2, 3]}).status_code == 200
        # A changed file behind the same entry is loaded again; a removed entry is gone.
        shutil.copy(models / "add_i64.onnx", tmp_path / "m.onnx")
        conf.write_text(cfg)
        assert reload(g).status_code == 200
        assert httpx.get(f"{v2(g)}/models/m").json()["inputs"][0]["datatype"] == "INT64"
        assert httpx.get(f"{v2(g)}/models/adder").status_code == 404
        assert httpx.get(f"{g.admin_url}/readyz").status_code == 200
    finally:
        g.stop()


def test_key_rate_limits_apply_to_predictions(models, tmp_path):
    g = Gateway(f"""
[[predictors]]
name = "mlp"
path = "{models}/mlp.onnx"

[[keys]]
name = "ml"
sha256 = "{key_hash('sk-ml-123456')}"
rpm = 2
""", tmp_path=tmp_path)
    try:
        auth = {"authorization": "Bearer sk-ml-123456"}
        ok = httpx.post(f"{g.base_url}/predict", json={"model": "mlp", "data": [0] * 4}, headers=auth)
        assert ok.status_code == 200 and ok.headers["x-ratelimit-limit-requests"] == "2", ok.headers
        assert ok.headers.get("x-request-id")
        x = np.zeros((1, 4), np.float32)
        assert httpx.post(f"{v2(g)}/models/mlp/infer", json={"inputs": [tensor("x", x)]},
                          headers=auth).status_code == 200
        r = httpx.post(f"{g.base_url}/predict", json={"model": "mlp", "data": [0] * 4}, headers=auth)
        assert r.status_code == 429 and "rate limit" in r.json()["error"]["message"], r.text
        r = httpx.post(f"{v2(g)}/models/mlp/infer", json={"inputs": [tensor("x", x)]}, headers=auth)
        assert r.status_code == 429 and "rate limit" in r.json()["error"], r.text
        assert g.metric('sluice_rate_limited_total{outcome="requests"}') == 2
    finally:
        g.stop()


def test_predictions_are_traced(models, tmp_path):
    rx = HttpReceiver()
    g = Gateway(f"""
[telemetry]
otlp_endpoint = "{rx.url}"
otlp_protocol = "http/protobuf"

[[predictors]]
name = "mlp"
path = "{models}/mlp.onnx"
""", tmp_path=tmp_path)
    try:
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        r = httpx.post(f"{g.base_url}/predict", json={"model": "mlp", "data": [0.1, 0.2, 0.3, 0.4]},
                       headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
        assert r.status_code == 200
    finally:
        g.stop()  # flushes the spans
    try:
        span = next(s for s in rx.spans if s["trace_id"] == trace)
        assert span["name"] == "predict mlp"
        a = span["attributes"]
        assert a["gen_ai.operation.name"] == "predict" and a["gen_ai.request.model"] == "mlp"
        assert a["http.response.status_code"] == 200
    finally:
        rx.stop()

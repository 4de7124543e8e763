"""Local model serving: `[[predictors]]` ONNX models (built here with the `onnx`
package) served at `/v1/predict` and by the Open Inference Protocol, with
dynamic batching — answers equal numpy's within 1e-5, alone and batched; bad
input gets a 400 naming what was expected; keys apply; metrics move."""

import concurrent.futures
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import SLUICE, Gateway, key_hash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
import make_models  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models.write(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def gw(models, tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    (d / "models").symlink_to(models)
    g = Gateway(f"""
[[predictors]]
name = "mlp"
path = "models/mlp.onnx"
max_batch_size = 32
max_queue_delay_us = 2000

[[predictors]]
name = "adder"
path = "{models}/add_i64.onnx"

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]

[[providers]]
name = "mock"
kind = "mock"
""", tmp_path=d)
    yield g
    g.assert_alive()
    g.stop()


X = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0], [3.0, 0.0, -2.0, 0.25]]


def test_predict_matches_numpy(gw):
    for x in X:
        r = httpx.post(f"{gw.base_url}/predict", json={"model": "mlp", "data": x})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "mlp" and body["shape"] == [3] and body["input_len"] == 4
        np.testing.assert_allclose(body["prediction"], make_models.mlp_reference(x)[0], atol=1e-5)


def test_oip_metadata_and_health(gw):
    base = gw.base_url.removesuffix("/v1")
    assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200
    m = httpx.get(f"{base}/v2/models/mlp").json()
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert m["outputs"][0]["datatype"] == "FP32" and m["outputs"][0]["shape"] == [-1, 3]
    assert httpx.get(f"{base}/v2/models/mlp/ready").json()["ready"] is True
    r = httpx.get(f"{base}/v2/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]


def test_oip_infer_several_examples(gw):
    base = gw.base_url.removesuffix("/v1")
    r = httpx.post(f"{base}/v2/models/mlp/infer", json={
        "id": "req-7",
        "inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": X}]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-7" and out["model_name"] == "mlp"
    y = out["outputs"][0]
    assert y["shape"] == [3, 3] and y["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(y["data"]).reshape(3, 3), make_models.mlp_reference(X), atol=1e-5)
    r = httpx.post(f"{base}/v2/models/adder/infer", json={
        "inputs": [{"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]}]})
    assert r.status_code == 200, r.text
    o = r.json()["outputs"][0]
    assert o["datatype"] == "INT64" and o["data"] == [2, 3, 4, 5, 6, 7]


def test_concurrent_requests_are_batched_and_correct(gw):
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((64, 4)).astype(np.float32)
    before = gw.metric('sluice_predict_batch_size_count{model="mlp"}', default=0.0)
    with httpx.Client() as c, concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(
            lambda x: c.post(f"{gw.base_url}/predict", json={"model": "mlp", "data": x.tolist()}).json(),
            xs))
    got = np.array([a["prediction"] for a in answers])
    np.testing.assert_allclose(got, make_models.mlp_reference(xs), atol=1e-5)
    batches = gw.metric('sluice_predict_batch_size_count{model="mlp"}') - before
    assert batches < 64, "64 concurrent requests ran one by one: no batching"
    assert gw.metric('sluice_predict_pending{model="mlp"}') == 0
    assert gw.metric('sluice_predict_inference_seconds_count{model="mlp"}') >= 1
    assert gw.metric('sluice_predict_queue_seconds_count{model="mlp"}') >= 64


@pytest.mark.parametrize("body, status, words", [
    ({"model": "mlp", "data": [1, 2, 3]}, 400, ["expects 4 values", "received 3"]),
    ({"model": "mlp", "data": ["a", 2, 3, 4]}, 400, ["expected numbers"]),
    ({"model": "mlp"}, 400, ["data"]),
    ({"model": "ghost", "data": [1]}, 404, ["ghost"]),
    ({"data": [1, 2, 3, 4]}, 400, ["model"]),
])
def test_bad_predict_requests(gw, body, status, words):
    r = httpx.post(f"{gw.base_url}/predict", json=body)
    assert r.status_code == status, r.text
    msg = r.json()["error"]["message"]
    assert all(w in msg for w in words), msg


def test_bad_oip_requests(gw):
    base = gw.base_url.removesuffix("/v1")
    url = f"{base}/v2/models/mlp/infer"
    r = httpx.post(url, json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]})
    assert r.status_code == 400 and "FP32" in r.json()["error"]
    r = httpx.post(url, json={"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1] * 5}]})
    assert r.status_code == 400 and "shape" in r.json()["error"]
    r = httpx.post(url, json={"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1] * 4}]})
    assert r.status_code == 400 and "holds 8 values" in r.json()["error"]
    r = httpx.post(url, json={"inputs": [{"name": "x", "shape": [40, 4], "datatype": "FP32", "data": [0] * 160}]})
    assert r.status_code == 400 and "max_batch_size" in r.json()["error"]


def test_check_config_reports_bad_models_at_their_entry(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"this is not a model")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[predictors]]\nname = "m"\npath = "broken.onnx"\n\n'
                   '[[predictors]]\nname = "gone"\npath = "missing.onnx"\n')
    r = subprocess.run([str(SLUICE), "check-config", str(cfg)], capture_output=True, text=True)
    assert r.returncode != 0
    assert f"{cfg}:7:8" in r.stderr and "missing.onnx" in r.stderr, r.stderr
    (tmp_path / "missing.onnx").write_bytes((tmp_path / "broken.onnx").read_bytes())
    r = subprocess.run([str(SLUICE), "check-config", str(cfg)], capture_output=True, text=True)
    assert r.returncode != 0 and f"{cfg}:3:8" in r.stderr and "predictor 'm'" in r.stderr, r.stderr


def test_keys_apply_to_local_models(models, tmp_path):
    g = Gateway(f"""
[[predictors]]
name = "mlp"
path = "{models}/mlp.onnx"

[[predictors]]
name = "adder"
path = "{models}/add_i64.onnx"

[[keys]]
name = "ml"
sha256 = "{key_hash('sk-ml-123456')}"
models = ["mlp"]
""", tmp_path=tmp_path)
    try:
        url = f"{g.base_url}/predict"
        assert httpx.post(url, json={"model": "mlp", "data": [0] * 4}).status_code == 401
        auth = {"authorization": "Bearer sk-ml-123456"}
        assert httpx.post(url, json={"model": "mlp", "data": [0] * 4}, headers=auth).status_code == 200
        r = httpx.post(url, json={"model": "adder", "data": [1, 2, 3]}, headers=auth)
        assert r.status_code == 403
    finally:
        g.stop()


def test_check_config_names_bad_predictor_settings(models, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[predictors]]\nname = "m"\npath = "{models}/mlp.onnx"\n'
                   'max_batch_size = 0\npriority = "high"\nmax_queue_delay_us = 99999999\n')
    r = subprocess.run([str(SLUICE), "check-config", str(cfg)], capture_output=True, text=True)
    assert r.returncode != 0
    assert f"{cfg}:4:18" in r.stderr and "max_batch_size" in r.stderr, r.stderr
    assert f'{cfg}:5:12: priority must be "idle" or "normal", not "high"' in r.stderr, r.stderr
    assert f"{cfg}:6:22" in r.stderr and "max_queue_delay_us" in r.stderr, r.stderr


def test_nested_data_is_flattened_and_bad_types_are_400(gw):
    r = httpx.post(f"{gw.base_url}/predict", json={"model": "mlp", "data": [[0.1, 0.2], [0.3, 0.4]]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["prediction"], make_models.mlp_reference(X[0])[0], atol=1e-5)
    r = httpx.post(f"{gw.base_url}/predict", json={"model": 5, "data": [0] * 4})
    assert r.status_code == 400 and "model" in r.json()["error"]["message"], r.text
    base = gw.base_url.removesuffix("/v1")
    r = httpx.post(f"{base}/v2/models/adder/infer", json={
        "inputs": [{"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2.5, 3]}]})
    assert r.status_code == 400 and "is not an integer" in r.json()["error"], r.text
    r = httpx.post(f"{base}/v2/models/adder/infer", content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json(), r.text

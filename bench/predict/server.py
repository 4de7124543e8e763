"""The Python stack Sluice's local model serving replaces, for bench/predict.sh:
FastAPI + uvicorn + onnxruntime, one worker, one inference thread — the same
request and answer as Sluice's `POST /v1/predict`.

    MODEL=path.onnx uvicorn server:app --workers 1 --port PORT"""

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["MODEL"], opts, providers=["CPUExecutionProvider"])
inp = session.get_inputs()[0]
per_example = int(np.prod(inp.shape[1:]))
name = os.environ.get("MODEL_NAME", "m")
app = FastAPI()


class Predict(BaseModel):
    model: str
    data: list[float]


@app.get("/healthz")
def healthz():
    return {"status": "ok"}


@app.post("/v1/predict")
def predict(req: Predict):
    if req.model != name:
        raise HTTPException(404, f"no model '{req.model}'")
    if len(req.data) != per_example:
        raise HTTPException(400, f"expects {per_example} values; received {len(req.data)}")
    x = np.asarray(req.data, dtype=np.float32).reshape(1, *inp.shape[1:])
    y = session.run(None, {inp.name: x})[0]
    return {"model": name, "prediction": y[0].ravel().tolist(), "shape": list(y.shape[1:]),
            "input_len": len(req.data)}

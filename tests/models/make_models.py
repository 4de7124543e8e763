"""Builds the small ONNX models the tests serve, with the `onnx` package and
numpy (no download): `mlp.onnx` (f32 [N,4] -> Gemm 4x8 -> Relu -> Gemm 8x3
-> [N,3], fixed-seed weights) and `add_i64.onnx` (i64 [N,3] -> x + 1).

    python tests/models/make_models.py OUT_DIR

`mlp_reference(x)` computes the MLP's answer with numpy, for the tests."""

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(7)
W1 = RNG.standard_normal((4, 8)).astype(np.float32)
B1 = RNG.standard_normal(8).astype(np.float32)
W2 = RNG.standard_normal((8, 3)).astype(np.float32)
B2 = RNG.standard_normal(3).astype(np.float32)


def mlp_reference(x):
    x = np.asarray(x, dtype=np.float32).reshape(-1, 4)
    return np.maximum(x @ W1 + B1, 0) @ W2 + B2


def mlp():
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(B1, "b1"),
         numpy_helper.from_array(W2, "w2"), numpy_helper.from_array(B2, "b2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def add_i64():
    graph = helper.make_graph(
        [helper.make_node("Add", ["ids", "one"], ["out"])], "add_i64",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["N", 3])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "one")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def write(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, model in [("mlp", mlp()), ("add_i64", add_i64())]:
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, out / f"{name}.onnx")
    return out


if __name__ == "__main__":
    write(sys.argv[1])

"""Builds the small ONNX models the tests serve, with the `onnx` package and
numpy (no download): `mlp.onnx` (f32 [N,4] -> Gemm 4x8 -> Relu -> Gemm 8x3
-> [N,3], fixed-seed weights), `add_i64.onnx` (i64 [N,3] -> x + 1) and
`state.onnx`, a model with no batch dimension, shaped like a streaming one
(Silero VAD's): x f32 [T,4] with T open and a state h f32 [1,4] ->
y = x + h [T,4], hn = h + sum(x over T) [1,4].

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


def state():
    nodes = [
        helper.make_node("Add", ["x", "h"], ["y"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
        helper.make_node("Add", ["h", "s"], ["hn"]),
    ]
    graph = helper.make_graph(
        nodes, "state",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 4]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 4]),
         helper.make_tensor_value_info("hn", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def wide_mlp(width=1024, layers=4):
    """An MLP heavy enough that one example costs more than an HTTP
    request: `layers` Gemm+Relu of width x width (f32 [N,64] in, [N,8]
    out), so batching shows in throughput. Seeded; no reference needed."""
    rng = np.random.default_rng(11)
    scale = np.float32(1.0 / np.sqrt(width))
    dims = [64] + [width] * layers + [8]
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        w = (rng.standard_normal((a, b)).astype(np.float32) * scale)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}"]))
        prev = f"g{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes, "wide_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def write_wide(out_dir, width=1024, layers=4):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = wide_mlp(width, layers)
    model.ir_version = 8
    path = out / f"wide_{width}x{layers}.onnx"
    onnx.save(model, path)
    return path


def write(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, model in [("mlp", mlp()), ("add_i64", add_i64()), ("state", state())]:
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, out / f"{name}.onnx")
    return out


if __name__ == "__main__":
    write(sys.argv[1])

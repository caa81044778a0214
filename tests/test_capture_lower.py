"""Capture (fx, BN folding, fusion) and lowering to the IR: structure and numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from quantsim.quant.calibrate import collect_stats
from quantsim.graph.capture import capture, run_float
from quantsim.zoo.cifar_resnet import cifar_resnet20
from quantsim.quant.config import QuantConfig, parse_bits
from quantsim.errors import QuantsimError
from quantsim.quant.lower import lower, tensor_bits
from bn_helpers import randomise_bn  # noqa: E402


@pytest.fixture(scope="module")
def r20():
    torch.manual_seed(0)
    model = randomise_bn(cifar_resnet20())
    g = capture(model, (3, 32, 32))
    batches = [torch.randn(16, 3, 32, 32) for _ in range(2)]
    return model, g, collect_stats(g, batches, progress=False)


def test_capture_reproduces_model_and_folds_bn(r20):
    model, g, _ = r20
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(run_float(g, x), ref, rtol=1e-4, atol=1e-4)
    ops = [n.op for n in g.nodes]
    assert "bn" not in ops and "relu" not in ops  # folded and fused
    assert ops.count("conv") == 19 and ops.count("add") == 9 and ops.count("shortcut_a") == 2


@pytest.mark.parametrize("name", ["resnet18", "tf_efficientnet_lite0"])
def test_capture_reproduces_zoo_models(name):
    from quantsim.zoo.models import create_model

    model = randomise_bn(create_model(name), seed=1)
    g = capture(model, (3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(run_float(g, x), ref, rtol=1e-3, atol=1e-4)


class _Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ELU()  # GELU (ViT path), SiLU, Hardswish, Sigmoid (lookup tables) are supported

    def forward(self, x):
        return self.act(self.conv(x))


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return torch.cat([y, y], dim=0)  # along the batch axis: channel concatenation is supported


def test_unsupported_layer_is_named_with_its_place():
    with pytest.raises(QuantsimError, match=r"act \(ELU\)"):
        capture(_Unsupported(), (3, 8, 8))
    with pytest.raises(QuantsimError, match=r"\(cat\) in forward.*concatenation along axis 0"):
        capture(_Concat(), (3, 8, 8))


def test_signedness_and_clamps(r20):
    _, g, stats = r20
    ir = lower(g, stats, QuantConfig(w_bits=8, a_bits=8))
    assert ir["input"].out.signed  # normalised image
    assert not ir["conv1"].out.signed and ir["conv1"].attrs["clamp"] == [0, 255]  # relu fused
    assert ir["layer1.0.conv2"].out.signed  # before the residual add
    assert not ir["layer1.0.add"].out.signed  # relu after the add
    assert ir["linear"].out.bits == 16 and ir["linear"].out.signed
    # shortcut ops share the scale of the tensor they pass through
    sc = ir["layer2.0.shortcut"]
    assert sc.op == "pad_channels" and sc.out is ir[ir[sc.inputs[0]].inputs[0]].out


def test_multipliers_reproduce_real_scales(r20):
    _, g, stats = r20
    ir = lower(g, stats, QuantConfig(w_bits=6, a_bits=8, granularity="per-channel"))
    for node in ir.nodes:
        if node.op != "conv2d":
            continue
        m_real = float(node.in_q.scale) * node.weight_q.scale / float(node.out.scale)
        m_int = node.params["multiplier"] / 2.0 ** node.params["shift"]
        assert np.allclose(m_int, m_real, rtol=2**-20)
        assert np.abs(node.params["weight"]).max() <= 31  # 6-bit restricted range


def test_mixed_layer_bits_set_input_width(r20):
    _, g, stats = r20
    cfg = QuantConfig(w_bits=8, a_bits=8, layer_bits={"layer1.1.conv1": [4, 4]})
    bits = tensor_bits(g, cfg)
    # layer1.0.add feeds layer1.1.conv1 (4 bits) and layer1.1.add (8 bits): the wider wins
    assert bits["layer1.0.add"] == 8
    ir = lower(g, stats, cfg)
    assert ir["layer1.1.conv1"].weight_q.bits == 4
    assert ir["layer1.1.conv1"].in_q.bits == 8
    cfg2 = QuantConfig(w_bits=8, a_bits=8, layer_bits={"layer1.0.conv2": [8, 4]})
    assert tensor_bits(g, cfg2)["layer1.0.conv1"] == 4


@settings(max_examples=15, deadline=None)
@given(w_bits=st.integers(2, 16), a_bits=st.integers(2, 16), per_channel=st.booleans())
def test_weights_and_activations_in_range_for_any_width(r20, w_bits, a_bits, per_channel):
    _, g, stats = r20
    cfg = QuantConfig(w_bits=w_bits, a_bits=a_bits, granularity="per-channel" if per_channel else "per-tensor")
    ir = lower(g, stats, cfg)
    for node in ir.nodes:
        if node.weight_q is not None:
            lim = 2 ** (w_bits - 1) - 1
            assert np.abs(node.params["weight"]).max() <= lim
            assert node.weight_q.per_channel == per_channel
        lo, hi = node.attrs.get("clamp", [node.out.qmin, node.out.qmax])
        assert node.out.qmin <= lo <= hi <= node.out.qmax
        if "multiplier" in node.params:
            # |acc| * M must stay inside int64
            assert (np.log2(np.max(node.params["multiplier"]) + 1) <= 62)


@pytest.mark.parametrize("text, expect", [("8", (8, 8)), ("W4A8", (4, 8)), ("w6a6", (6, 6)), ("fp32", None)])
def test_parse_bits(text, expect):
    assert parse_bits(text) == expect


@pytest.mark.parametrize("text", ["1", "17", "W1A8", "W8A17", "eight"])
def test_parse_bits_rejects(text):
    with pytest.raises(QuantsimError, match="out of range|use fp32"):
        parse_bits(text)

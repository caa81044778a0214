"""The accumulator as built: biases that fit it (the weight-scale floor of near-dead channels),
on a synthetic layer and on the real EfficientNet-Lite0, for every rounding method."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import quantsim
from integer_ref import executor as iref
from integer_ref.ir import Graph, Node, QParams
from quantsim.emulate import executor as E
from quantsim.errors import QuantsimError
from quantsim.quant.config import QuantConfig
from quantsim.quant.lower import bias_limit
from quantsim.zoo.datasets import build_dataset
from quantsim.zoo.models import load_model
from test_emulate_vs_ref import build_program

DEAD = 2  # the output channel whose weights BN folding drove to ~0


def _dead_channel_net() -> nn.Module:
    """conv -> ReLU -> conv -> GAP -> linear, the first conv with one near-dead output channel
    (weights ~1e-7, bias 3.0): its per-channel scale from the weight clip alone is ~1e-9, which
    would put the bias at ~1e9·(1/s_x) into the accumulator."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():
        net[0].weight[DEAD].mul_(1e-7)
        net[0].bias[DEAD] = 3.0
    return net.eval()


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
@pytest.mark.parametrize("w_bits", [8, 4])
def test_dead_channel_bias_fits_the_accumulator(rounding, w_bits):
    net = _dead_channel_net()
    x = torch.randn(24, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    cfg = QuantConfig(w_bits=w_bits, a_bits=8, granularity="per-channel", rounding=rounding)
    prog = quantsim.quantize(net, cfg, x)
    conv = prog.graph.nodes[1]
    assert conv.op == "conv2d"
    bias = np.asarray(conv.params["bias"])
    assert np.abs(bias).max() <= bias_limit(32)
    # the floor binds on the dead channel only: the others keep the weight clip's scale
    s = np.asarray(conv.weight_q.scale)
    qmax = 2 ** (w_bits - 1) - 1
    clip_scale = net[0].weight.detach().double().abs().amax(dim=(1, 2, 3)).numpy() / qmax
    live = np.arange(8) != DEAD
    np.testing.assert_array_equal(s[live], clip_scale[live])
    assert s[DEAD] == pytest.approx(3.0 / (float(conv.in_q.scale) * bias_limit(32)), rel=1e-12)
    assert s[DEAD] > clip_scale[DEAD]
    # without the floor the same bias would not fit a 32-bit accumulator (the test could fail)
    assert 3.0 / (float(conv.in_q.scale) * clip_scale[DEAD]) > 2**31
    be = prog.check_bitexact(x[:4])
    assert be.total_mismatches == 0
    assert sum(be.acc_overflows.values()) == 0


@pytest.mark.parametrize("w_bits,a_bits", [(8, 8), (4, 8)])
def test_lite0_per_channel_has_no_accumulator_overflow(imagenet_calib_dir, w_bits, a_bits):
    """Lite0's per-channel weights put biases of 2^42 and more into the accumulator before the
    floor (1,018,024 overflows on the demo's photos at W8A8); now none, and still bit-exact."""
    lm = load_model("tf_efficientnet_lite0")
    ds = build_dataset(f"imagenet:{imagenet_calib_dir}", lm.preprocess, role="calib")
    x = torch.stack([ds[i][0] for i in range(16)])
    prog = quantsim.quantize(lm.model, QuantConfig(w_bits=w_bits, a_bits=a_bits, granularity="per-channel"), x)
    biases = [np.abs(np.asarray(n.params["bias"])).max() for n in prog.graph.nodes if "bias" in n.params]
    assert max(biases) <= bias_limit(32)
    be = prog.check_bitexact(x[:2])
    assert be.total_mismatches == 0
    assert sum(be.acc_overflows.values()) == 0


# --- saturate and wrap: the hardware's integers, in both executors ---------------------------------

def _oracle(x, w, b, m, n, zy, lo, hi, acc_bits, overflow):
    """Plain Python ints, element by element: exact sum, the accumulator's rule, dyadic requant."""
    lim = 2 ** (acc_bits - 1)
    out = np.zeros((x.shape[0], w.shape[0]), np.int64)
    for i in range(x.shape[0]):
        for o in range(w.shape[0]):
            v = sum(int(x[i, k]) * int(w[o, k]) for k in range(x.shape[1])) + int(b[o])
            if overflow == "saturate":
                v = min(max(v, -lim), lim - 1)
            elif overflow == "wrap":
                v = (v + lim) % (2 * lim) - lim
            y = (v * int(m[o]) + (1 << (int(n[o]) - 1))) >> int(n[o])
            out[i, o] = min(max(y + zy, lo), hi)
    return out


def _overflowing_linear(overflow: str, acc_bits: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    k, o = 24, 6
    x = rng.integers(0, 256, size=(9, k))          # unsigned 8-bit activations
    w = rng.integers(-127, 128, size=(o, k))
    b = rng.integers(-(2**14), 2**14, size=o)
    m = rng.integers(2**29, 2**30, size=o)
    n = rng.integers(40, 44, size=o)
    xq = QParams(8, False, np.float64(0.05))
    yq = QParams(8, True, np.float64(0.1))
    nodes = [Node("q", "quantize", ["x"], xq),
             Node("fc", "linear", ["q"], yq, params={"weight": w, "bias": b, "multiplier": m, "shift": n})]
    g = Graph(nodes, "x", (k,), ["fc"], {"acc_bits": acc_bits, "acc_overflow": overflow})
    return g, x, (x, w, b, m, n, 0, yq.qmin, yq.qmax, acc_bits, overflow)


@pytest.mark.parametrize("overflow", ["count", "saturate", "wrap"])
def test_overflow_modes_give_the_hardware_integers_in_both_executors(overflow):
    g, codes, oracle_args = _overflowing_linear(overflow)
    x = codes.astype(np.float64) * 0.05  # the quantize node gives back exactly these codes
    ref = iref.run(g, x, keep="all")
    emu = E.run(g, torch.as_tensor(x), keep="all")
    assert np.array_equal(ref.tensors["q"], codes)
    want = _oracle(*oracle_args)
    assert int((ref.tensors["fc"] != want).sum()) == 0
    assert int((emu.tensors["fc"].numpy() != want).sum()) == 0
    assert ref.acc_overflows == emu.acc_overflows and ref.acc_overflows["fc"] > 0
    if overflow != "count":  # the rule changed the integers where the sum left 16 bits
        exact = _oracle(*oracle_args[:-1], "count")
        assert int((want != exact).sum()) > 0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["saturate", "wrap"]), st.integers(10, 20))
def test_overflow_modes_whole_program_twins(seed, overflow, acc_bits):
    """conv, add, pools, linear with accumulators of 10..20 bits: integer_ref and emulate agree."""
    g, x = build_program(np.random.default_rng(seed), acc_bits=acc_bits)
    g.meta["acc_overflow"] = overflow
    ref = iref.run(g, x, keep="all")
    emu = E.run(g, torch.as_tensor(x), keep="all")
    for name, want in ref.tensors.items():
        assert int((emu.tensors[name].numpy() != want).sum()) == 0, name
    assert ref.acc_overflows == emu.acc_overflows


def test_overflow_mode_is_checked():
    with pytest.raises(QuantsimError, match="overflow"):
        QuantConfig(acc_overflow="clip")

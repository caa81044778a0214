"""The accumulator as built: biases that fit it (the weight-scale floor of near-dead channels),
on a synthetic layer and on the real EfficientNet-Lite0, for every rounding method; the
overflow modes in both executors; the measured peak |acc + bias| and the width it needed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import quantsim
from integer_ref import executor as iref
from integer_ref import kernels as K
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
    # lowering says where it had to: the dead channel of the first conv, nothing elsewhere
    assert {n.name: n.attrs["scale_floored"] for n in prog.graph.nodes if n.op in ("conv2d", "linear")} == {
        conv.name: 1, **{n.name: 0 for n in prog.graph.nodes[2:] if n.op in ("conv2d", "linear")}}
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
    # every accumulating node has a measured peak, and none needed more than the 32 bits built
    acc_nodes = {n.name for n in prog.graph.nodes if n.op in iref.ACC_OPS}
    assert set(be.acc_peaks) == set(be.acc_bits_needed) == acc_nodes
    assert 16 < be.acc_bits_needed_max <= 32
    assert all(0 < p < 2**31 for p in be.acc_peaks.values())


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


# --- the measured peak |acc + bias| and the narrowest accumulator that held it ----------------------

def _smallest_signed_bits(values) -> int:
    """Plain search: the smallest b >= 2 with -2^(b-1) <= v < 2^(b-1) for every value."""
    b = 2
    while any(not -(2 ** (b - 1)) <= int(v) < 2 ** (b - 1) for v in values):
        b += 1
    return b


def _conv_acc_oracle(codes, zx, w, bias, stride, pad, groups):
    """acc + bias of a conv, window by window in plain int64 (padding holds the zero point)."""
    n, c, h, wd = codes.shape
    o, cg, kh, kw = w.shape
    xs = np.pad(codes - zx, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    acc = np.zeros((n, o, ho, wo), np.int64)
    og = o // groups
    for oc in range(o):
        chans = slice((oc // og) * cg, (oc // og + 1) * cg)
        for i in range(ho):
            for j in range(wo):
                win = xs[:, chans, i * stride:i * stride + kh, j * stride:j * stride + kw]
                acc[:, oc, i, j] = (win * w[oc]).sum(axis=(1, 2, 3)) + bias[oc]
    return acc


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 8), st.integers(2, 8), st.sampled_from(["dyadic", "float32"]),
       st.sampled_from([1, 2]), st.booleans(), st.integers(1, 5))
def test_peak_is_the_largest_accumulator_value(seed, a_bits, w_bits, requant, stride, depthwise, chunk):
    """conv and linear of random widths (both requantize paths: the fused Numba loop and the engines'),
    images in chunks: acc_peaks is max |acc + bias| of a plain int64 recomputation and
    acc_bits_needed the smallest signed width holding every value; overflow counts agree with it."""
    rng = np.random.default_rng(seed)
    n, c, h, o = 5, 4, 6, 4
    groups = c if depthwise else 1
    amin, amax = (0, 2**a_bits - 1) if a_bits > 4 else (-(2 ** (a_bits - 1)) + 1, 2 ** (a_bits - 1) - 1)
    zx = int(rng.integers(amin, amax + 1)) if rng.random() < 0.5 else 0
    codes = rng.integers(amin, amax + 1, size=(n, c, h, h))
    wq = 2 ** (w_bits - 1) - 1
    cw = rng.integers(-wq, wq + 1, size=(o, c // groups, 3, 3))
    lw = rng.integers(-wq, wq + 1, size=(o, h))
    cb = rng.integers(-(2**12), 2**12, size=o) if rng.random() < 0.8 else np.zeros(o, np.int64)
    lb = rng.integers(-(2**12), 2**12, size=o)
    scale = 2.0**-4  # a power of two: the float image quantizes back to exactly these codes
    xq = QParams(a_bits, amin < 0, np.float64(scale), zx)
    yq = QParams(8, True, np.float64(0.1))

    def mac(weight, bias):
        p = {"weight": weight, "bias": bias, "multiplier": rng.integers(2**29, 2**30, size=o),
             "shift": rng.integers(36, 40, size=o)}
        if requant == "float32":
            p["requant_scale"] = rng.uniform(1e-4, 1e-2, size=o).astype(np.float32)
        return p
    nodes = [Node("q", "quantize", ["x"], xq),
             Node("c", "conv2d", ["q"], yq, attrs={"stride": [stride, stride], "groups": groups,
                                                    "padding": [1, 1, 1, 1], "requant": requant},
                  params=mac(cw, cb)),
             Node("fc", "linear", ["q"], yq, attrs={"requant": requant}, params=mac(lw, lb))]
    acc_bits = 14
    g = Graph(nodes, "x", (c, h, h), ["c", "fc"], {"acc_bits": acc_bits})
    ref = iref.run(g, (codes - zx).astype(np.float64) * scale, keep="all", chunk=chunk)
    assert np.array_equal(ref.tensors["q"], codes)
    want = {"c": _conv_acc_oracle(codes, zx, cw, cb, stride, 1, groups),
            "fc": np.einsum("nchw,ow->ncho", codes - zx, lw) + lb}
    for name, acc in want.items():
        assert ref.acc_peaks[name] == int(np.abs(acc).max()), name
        assert ref.acc_bits_needed[name] == _smallest_signed_bits([acc.min(), acc.max(), 0]), name
        assert (ref.acc_overflows[name] > 0) == (ref.acc_bits_needed[name] > acc_bits), name


@pytest.mark.parametrize("requant", ["dyadic", "gemmlowp"])
@pytest.mark.parametrize("values,peak,bits", [([-8, 3], 8, 4), ([8, -3], 8, 5), ([0, 0], 0, 2), ([-1], 1, 2),
                                              ([1], 1, 2), ([-(2**31)], 2**31, 32), ([2**31 - 1, -5], 2**31 - 1, 32),
                                              ([2**31], 2**31, 33)])
def test_bits_needed_at_the_edges_of_a_signed_range(requant, values, peak, bits):
    """-2^(b-1) fits b bits and 2^(b-1) does not: the width is not just the peak's bit length + 1."""
    acc = np.array(values, np.int64).reshape(1, -1)
    _, stats = K.requantize(acc, None, 2**30, 31, 0, -127, 127, 0, 32, requant)
    assert (stats.peak, stats.bits_needed, int(stats)) == (peak, bits, int(bits > 32) * len(values))
    assert bits == _smallest_signed_bits(values)


def test_dead_channel_peak_and_overflows_agree_on_a_16_bit_accumulator():
    """The dead-channel net lowered for 32 bits (its floored bias ~2^30) run on a 16-bit accumulator:
    a node overflows exactly when its measured peak needs more than 16 bits, and both happen."""
    net = _dead_channel_net()
    x = torch.randn(24, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    prog = quantsim.quantize(net, QuantConfig(w_bits=8, a_bits=8, granularity="per-channel"), x)
    prog.graph.meta["acc_bits"] = 16
    be = prog.check_bitexact(x[:4])
    assert be.total_mismatches == 0
    assert set(be.acc_overflows) == set(be.acc_peaks)
    for name, count in be.acc_overflows.items():
        assert (count > 0) == (be.acc_bits_needed[name] > 16) == (be.acc_peaks[name] >= 2**15), name
    conv = prog.graph.nodes[1].name
    assert be.acc_overflows[conv] > 0 and be.acc_bits_needed[conv] > 16
    assert any(c == 0 for c in be.acc_overflows.values())  # some layer fits: the equivalence can fail
    assert be.acc_bits_needed_max == max(be.acc_bits_needed.values()) > 16


def test_the_report_says_where_lowering_floored_a_scale(tmp_path, monkeypatch):
    """summary.json counts the widened channels and layers, layers.csv names them, summary.txt says so."""
    import json
    from types import SimpleNamespace

    import pandas as pd
    from torch.utils.data import TensorDataset

    from quantsim.cli import simulate
    from quantsim.run import inputs, single
    from quantsim.zoo.preprocess import Preprocess

    net = _dead_channel_net()
    x = torch.randn(12, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (12,), generator=torch.Generator().manual_seed(2))
    loaded = SimpleNamespace(model=net, preprocess=Preprocess((3, 12, 12), (0.0,) * 3, (1.0,) * 3, resize=None),
                             arch="dead", source="random init", class_names=None)
    monkeypatch.setattr(single, "load_inputs",
                        lambda opts: inputs.Inputs(loaded, TensorDataset(x[:8], y[:8]), TensorDataset(x[8:], y[8:]), None))
    out = tmp_path / "run"
    assert simulate.main(["dead", "--bits", "8", "--calib", "8", "--bitexact-images", "2", "--batch-size", "4",
                          "--accel", "scalesim-32x32-os", "--out", str(out), "--no-progress", "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert (s["scale_floored_channels"], s["scale_floored_layers"]) == (1, 1)
    layers = pd.read_csv(out / "layers.csv").set_index("layer")
    assert layers["scale_floored"].fillna(0).sum() == 1 and layers["scale_floored"].max() == 1
    assert "widened the weight scale of 1 output channels in 1 layers" in (out / "summary.txt").read_text()

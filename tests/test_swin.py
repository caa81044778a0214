"""torchvision Swin Transformer v1 / v2 and MaxViT: the ops they need in both executors against plain
Python oracles (pad, roll, the masked softmax, the L2 normalize, per-head matmul multipliers, the tanh
table), their capture (constant-folded relative position bias and cpb_mlp, the written-out
shifted-window attention and patch merging, einsum as a batched matmul) against the torch model,
hwmodel rows, and small models built from torchvision's own classes bit-exact at W8A8 and W4A8 on
real images."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from hwmodel.arch import load_accelerator
from hwmodel.simulate import simulate_graph
from hwmodel.vector_ops import layernorm_stages, op_counts, softmax_stages
from integer_ref import arith
from integer_ref import kernels as K
from integer_ref import lut as LUT
from integer_ref import kernels_vit as KV
from integer_ref import nonlinear as NL
from integer_ref.ir import Graph
from quantsim.emulate import kernels as EK
from quantsim.emulate import nonlinear as NT
from quantsim.errors import QuantsimError
from quantsim.graph.capture import capture, run_float
from quantsim.quant.calibrate import collect_stats
from quantsim.quant.config import QuantConfig
from quantsim.quant.lower import lower
from quantsim.run.stages import integer_taps
from small_models import assert_bitexact, imagenet_images

SETTINGS = settings(max_examples=30, deadline=None)


def _ints(rng, shape, lo, hi):
    return rng.integers(lo, hi + 1, shape, dtype=np.int64)


# --- pad and roll: integer copies ---------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31 - 1), st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=3),
       st.integers(-5, 5))
def test_pad_both_executors_equal_python_oracle(seed, pads, zero_point):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 4, len(pads) + 1))
    x = _ints(rng, shape, -100, 100)
    full = [[0, 0]] + [list(p) for p in pads]  # the batch axis is never padded
    out_shape = [s + b + a for s, (b, a) in zip(shape, full)]
    want = np.full(out_shape, zero_point, dtype=np.int64)
    for idx in itertools.product(*[range(s) for s in shape]):
        want[tuple(i + b for i, (b, _) in zip(idx, full))] = x[idx]
    assert np.array_equal(K.pad(x, full, zero_point), want)
    assert np.array_equal(EK.pad(torch.from_numpy(x), full, zero_point).numpy(), want)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(-9, 9), st.integers(-9, 9))
def test_roll_both_executors_equal_python_oracle(seed, s1, s2):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 6, 4))
    x = _ints(rng, shape, -100, 100)
    want = np.empty_like(x)
    for idx in itertools.product(*[range(s) for s in shape]):  # element i moves to (i + shift) mod size
        want[idx[0], (idx[1] + s1) % shape[1], (idx[2] + s2) % shape[2], idx[3]] = x[idx]
    assert np.array_equal(K.roll(x, [s1, s2], [1, 2]), want)
    assert np.array_equal(EK.roll(torch.from_numpy(x), [s1, s2], [1, 2]).numpy(), want)


# --- masked softmax -------------------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31 - 1), st.floats(1e-3, 0.5), st.integers(6, 16))
def test_masked_softmax_is_the_softmax_of_the_unmasked_entries(seed, scale, out_bits):
    """Oracle: per row, the integer softmax of only the unmasked entries (the row compressed), zeros
    elsewhere; masked entries may hold any value, larger than every kept one included."""
    rng = np.random.default_rng(seed)
    rows, length = int(rng.integers(1, 6)), int(rng.integers(1, 12))
    x = _ints(rng, (2, rows, length), -3000, 3000)
    mask = rng.random((rows, length)) < 0.5
    mask[np.arange(rows), rng.integers(0, length, rows)] = False  # every row keeps one entry
    x[:, mask] += 5000  # masked entries above the kept ones: they must not win the row max
    p = NL.softmax_params(scale, out_bits)
    want = np.zeros_like(x)
    for b in range(2):
        for r in range(rows):
            keep = ~mask[r]
            want[b, r, keep] = NL.softmax_int(x[b, r, keep], p)
    assert np.array_equal(NL.softmax_int(x, p, mask), want)
    got = NT.softmax_int(torch.from_numpy(x), p, torch.from_numpy(mask)).numpy()
    assert np.array_equal(got, want)


def test_masked_softmax_stages_add_three_selects_per_element():
    attrs = NL.softmax_params(0.05, 8).to_attrs()
    plain, masked = (op_counts(softmax_stages(4 * 49, 49, 16, attrs, m)) for m in (False, True))
    assert masked["ops_add"] - plain["ops_add"] == 3 * 4 * 49
    assert masked["n_vec_ops"] - plain["n_vec_ops"] == 3 * 4 * 49


# --- L2 normalize (LayerNorm's kernel without the mean) ----------------------------------------------

def _l2norm_oracle(row: list[int], p: NL.LayerNormParams) -> list[int]:
    """Plain Python integers: y = x·2^h, v = Σy² + eps, r = isqrt(v·4^k), inv = 2^Q // r,
    u = round(y·inv / 2^s) (ties up), acc = u·g + b, out = clamp(round(acc·M / 2^n))."""
    y = [v << p.mean_shift for v in row]
    v = sum(t * t for t in y) + p.eps
    r = max(math.isqrt(v << (2 * p.sqrt_shift)), 1)
    inv = (1 << p.recip_bits) // r

    def rshift_round(a, s):
        return (a + (1 << (s - 1))) >> s if s > 0 else a
    lo, hi = p.qrange
    out = []
    for t, g, b in zip(y, p.gamma.tolist(), p.beta.tolist()):
        acc = rshift_round(t * inv, p.norm_shift) * g + b
        out.append(min(max(rshift_round(acc * p.multiplier, p.rshift), lo), hi))
    return out


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(4, 12), st.integers(1, 48), st.floats(1e-3, 1.0))
def test_l2norm_equals_python_oracle_and_float(seed, in_bits, channels, scale):
    rng = np.random.default_rng(seed)
    hi = 2 ** (in_bits - 1) - 1
    x = _ints(rng, (3, channels), -hi, hi)
    x[0] = 0  # F.normalize of a zero row is zero
    out_bits = 8
    out_scale = 1.0 / 127
    p = NL.layernorm_params(scale, np.ones(channels), np.zeros(channels), 1e-24, out_scale, out_bits,
                            in_bits=in_bits, center=False)
    want = np.array([_l2norm_oracle(r, p) for r in x.tolist()], dtype=np.int64)
    assert np.array_equal(NL.layernorm_int(x, p), want)
    assert np.array_equal(NT.layernorm_int(torch.from_numpy(x), p).numpy(), want)
    ref = torch.nn.functional.normalize(torch.from_numpy(x).double() * scale, dim=-1).numpy()
    assert np.abs(want * out_scale - ref).max() <= 1.01 * out_scale  # within one output step


# --- matmul with one multiplier per head -----------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 4))
def test_per_head_matmul_requantization_equals_python_oracle(seed, heads):
    rng = np.random.default_rng(seed)
    a = _ints(rng, (2, heads, 3, 5), -127, 127)
    b = _ints(rng, (2, heads, 4, 5), -127, 127)
    mult = _ints(rng, (heads,), 2**29, 2**30)
    shift = _ints(rng, (heads,), 20, 30)
    y, _ = KV.matmul(a, b, mult, shift, lo=-127, hi=127, transpose_b=True, a_range=(-127, 127),
                     b_range=(-127, 127), channel_axis=1)
    for n, h, i, j in itertools.product(range(2), range(heads), range(3), range(4)):
        acc = sum(int(a[n, h, i, t]) * int(b[n, h, j, t]) for t in range(5))
        m, s = int(mult[h]), int(shift[h])
        assert y[n, h, i, j] == min(max((acc * m + (1 << (s - 1))) >> s, -127), 127)


# --- capture ------------------------------------------------------------------------------------------

def _small_swin(v2: bool) -> nn.Module:
    """torchvision's SwinTransformer class with two small stages (window 4): every Swin op, shifted
    blocks and a patch merging included; relative position biases far from their 0.02 init."""
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2
    torch.manual_seed(0)
    kw = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    m = SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=10, **kw).eval()
    with torch.no_grad():
        for mod in m.modules():
            if hasattr(mod, "relative_position_bias_table"):
                mod.relative_position_bias_table.normal_(0, 1)
            if hasattr(mod, "logit_scale"):
                mod.logit_scale.uniform_(1.0, 5.0)  # some heads above the clamp at ln 100
    return m


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("size", [32, 40])  # 40: the token grids are padded to whole windows
def test_swin_capture_computes_the_model(v2, size):
    m = _small_swin(v2)
    g = capture(m, (3, size, size))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = m(x)
        assert torch.allclose(run_float(g, x), ref, atol=1e-5 * float(ref.abs().max()))
    ops = [n.op for n in g.nodes]
    # the shifted block of each stage shifts and shifts back, but at 32 px stage 2's 4x4 grid is one
    # window, which torchvision does not shift; at 40 px it is padded to 8x8, which it does
    shifted = 1 if size == 32 else 2
    assert ops.count("roll") == 2 * shifted
    assert sum(1 for n in g.nodes if n.op == "softmax" and n.weight is not None) == shifted
    assert ops.count("add_const") == 4  # the folded relative position bias of each block
    assert ops.count("l2norm") == (8 if v2 else 0)
    assert (ops.count("pad") > 0) == (size == 40)


def test_shifted_window_mask_is_what_torchvision_masks():
    """With the relative position bias zero, the captured mask's entries are exactly those where
    torchvision's logits are 100 below the plain q·kᵀ: compare the softmax inputs row by row."""
    m = _small_swin(False)
    g = capture(m, (3, 32, 32))
    sm = next(n for n in g.nodes if n.op == "softmax" and n.weight is not None)
    from quantsim.graph.swin import shifted_window_mask
    mask = shifted_window_mask((8, 8), [4, 4], [2, 2])
    assert torch.equal(sm.weight[:, 0], mask)
    # region pattern of a 2x2 window grid shifted by 2: the first window is whole, the others split
    assert not mask[0].any() and mask[1:].any(dim=(1, 2)).all()


def test_unsupported_function_names_op_and_layer():
    class M(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)
    with pytest.raises(QuantsimError, match=r"cannot lower function cumsum.*\(cumsum\)"):
        capture(M().eval(), (3, 4, 4))


# --- real images ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calib_40(imagenet_calib_dir):
    return imagenet_images(imagenet_calib_dir, 40, 46)


@pytest.mark.parametrize("v2", [False, True])
def test_small_swin_bit_exact_real_images(calib_40, v2, tmp_path):
    m = _small_swin(v2)
    g = capture(m, (3, 40, 40))
    stats = collect_stats(g, [calib_40], progress=False)
    with torch.no_grad():
        ref = m(calib_40).double()
    for w_bits in (8, 4):
        graph = lower(g, stats, QuantConfig(w_bits=w_bits, a_bits=8))
        ops = {n.op for n in graph.nodes}
        assert {"pad", "roll", "slice", "add_const", "softmax"} <= ops and ("l2norm" in ops) == v2
        assert any("mask" in n.params for n in graph.nodes if n.op == "softmax")
        be = assert_bitexact(graph, calib_40, f"{'v2' if v2 else 'v1'} W{w_bits}A8")
        out = graph[graph.outputs[0]]
        y = torch.from_numpy(np.asarray(be.ref_tensors[out.name], np.float64) * float(out.out.scale))
        cos = float(torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0))
        if w_bits == 8:  # a wrong mask, bias or normalization shows here (random init: W4 weights are coarse)
            assert cos > 0.9, f"W8A8 logits far from FP32: cosine {cos:.3f}"
    graph.save(tmp_path / "ir")  # the mask and the per-head multipliers survive serialisation
    again = Graph.load(tmp_path / "ir")
    assert_bitexact(again, calib_40, "reloaded")
    rows = {r["layer"]: r for r in simulate_graph(graph, integer_taps(graph, calib_40[:1]),
                                                  load_accelerator("scalesim-32x32-ws")).rows}
    for n in graph.nodes:
        r = rows[n.name]
        if n.op in ("pad", "roll"):  # copies: no arithmetic, every element moved once
            assert r["n_mac"] == 0 and r["n_vec_ops"] == 0 and r["dram_wr_ofmap"] > 0
        if n.op == "softmax" and "mask" in n.params:
            assert r["dram_rd_filter"] == n.params["mask"].size  # the mask, read once at 1 bit
        if n.op == "l2norm":
            shape = be.ref_tensors[n.inputs[0]].shape
            st_ = layernorm_stages(int(np.prod(shape[1:])), shape[-1], graph[n.inputs[0]].out.bits, n.attrs)
            assert r["n_vec_ops"] == op_counts(st_)["n_vec_ops"] > 0
            assert not any("mean" in s.what for s in st_)


# --- MaxViT: einsum, swapaxes, tanh -------------------------------------------------------------------

@SETTINGS
@given(st.integers(2, 12), st.floats(1e-3, 0.5), st.floats(1e-3, 0.5))
def test_tanh_table_is_the_rounded_function(bits, s_in, s_out):
    in_min, in_max = arith.qrange(bits, True)
    lo, hi = arith.qrange(8, True)
    table = LUT.build_table("tanh", in_min, in_max, s_in, 0, s_out, 0, lo, hi)
    for q, t in zip(range(in_min, in_max + 1), table.tolist()):  # Python's math.tanh, half to even
        assert t == min(max(round(math.tanh(s_in * q) / s_out), lo), hi)


@pytest.mark.parametrize("eq, transpose_b", [("bgid,bgjd->bgij", True), ("B G H I J, B G H J D -> B G H I D", False)])
def test_einsum_batched_matmul_is_a_matmul(eq, transpose_b):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            a = x.reshape(x.shape[0], 3, 4, 4) if "H" not in eq else x.reshape(x.shape[0], 3, 1, 4, 4)
            return torch.einsum(eq, a, self.lin(a))
    torch.manual_seed(0)
    m = M().eval()
    g = capture(m, (3, 4, 4))
    mm = [n for n in g.nodes if n.op == "matmul"]
    assert len(mm) == 1 and mm[0].attrs["transpose_b"] is transpose_b
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.allclose(run_float(g, x), m(x), atol=1e-6)


def test_einsum_other_than_a_matmul_is_refused():
    class M(nn.Module):
        def forward(self, x):
            return torch.einsum("bchw,bchw->bhw", x, x)
    with pytest.raises(QuantsimError, match=r"cannot lower einsum.*'bchw,bchw->bhw'.*only a batched matmul"):
        capture(M().eval(), (3, 4, 4))


def _small_maxvit() -> nn.Module:
    """torchvision's MaxVit class, two stages of one block (MBConv with squeeze-excitation, window and
    grid attention with relative position bias via einsum, the LayerNorm / tanh head), at 32 px."""
    from torchvision.models.maxvit import MaxVit
    torch.manual_seed(0)
    m = MaxVit((32, 32), 16, 2, [16, 32], [1, 1], 8, 0.0, num_classes=10).eval()
    with torch.no_grad():
        for mod in m.modules():
            if hasattr(mod, "relative_position_bias_table"):
                mod.relative_position_bias_table.normal_(0, 1)
    return m


def test_small_maxvit_capture_and_bit_exact_real_images(imagenet_calib_dir):
    m = _small_maxvit()
    g = capture(m, (3, 32, 32))
    x = imagenet_images(imagenet_calib_dir, 32, 37)
    with torch.no_grad():
        ref = m(x)
        assert torch.allclose(run_float(g, x), ref, atol=1e-5 * float(ref.abs().max()))
    ops = [n.op for n in g.nodes]
    assert ops.count("matmul") == 2 * 2 * 2 and ops.count("add_const") == 2 * 2 and "tanh" in ops
    assert all(n.attrs["alpha"] != 1.0 for n in g.nodes if n.op == "matmul" and n.attrs["transpose_b"])
    stats = collect_stats(g, [x], progress=False)
    for w_bits in (8, 4):
        graph = lower(g, stats, QuantConfig(w_bits=w_bits, a_bits=8))
        assert "tanh" in {n.attrs["function"] for n in graph.nodes if n.op == "lut"}
        assert_bitexact(graph, x, f"MaxViT W{w_bits}A8")

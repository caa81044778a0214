"""CNN ops beyond conv/pool/add: lookup-table activations (hardswish, hardsigmoid, sigmoid, silu)
and the product of two activations (squeeze-and-excitation), in both executors against plain
Python oracles; their capture and lowering; MobileNetV3 (and EfficientNet-B0) bit-exact; hwmodel rows."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from hwmodel.arch import load_accelerator
from hwmodel.mapping import map_node
from hwmodel.simulate import batch1_shapes, simulate_graph
from integer_ref import arith, lut as LUT
from integer_ref import kernels as K
from integer_ref.ir import Graph, Node, QParams
from quantsim.emulate import executor as E, kernels as EK
from quantsim.errors import QuantsimError
from quantsim.graph.capture import capture, run_float
from quantsim.quant.calibrate import collect_stats
from quantsim.quant.config import QuantConfig
from quantsim.quant.lower import lower
from quantsim.run.stages import check_bitexact

SETTINGS = settings(max_examples=40, deadline=None)


# --- oracles: plain Python integers -------------------------------------------------------------

def mul_oracle(a: int, b: int, za: int, zb: int, m: int, n: int, zy: int, lo: int, hi: int) -> int:
    v = (a - za) * (b - zb) * m
    v = (v + (1 << (n - 1))) >> n if n > 0 else v  # Python >> floors: round half up
    return min(max(v + zy, lo), hi)


def table_oracle(fn: str, q: int, s_in: float, z_in: int, s_out: float, z_out: int, lo: int, hi: int) -> int:
    """Exact rational arithmetic, written out by hand: relu6(r + 3) as min/max on Fractions."""
    r = Fraction(s_in) * (q - z_in)
    g = min(max(r + 3, 0), 6) / Fraction(6)
    v = r * g if fn == "hardswish" else g
    t = v / Fraction(s_out)
    fl = t.numerator // t.denominator
    frac = t - fl
    y = fl + (1 if frac > Fraction(1, 2) or (frac == Fraction(1, 2) and fl % 2) else 0)  # half to even
    return min(max(y + z_out, lo), hi)


# --- lut --------------------------------------------------------------------------------------

@SETTINGS
@given(st.sampled_from(["hardswish", "hardsigmoid"]), st.integers(2, 10), st.booleans(),
       st.floats(1e-3, 1.0), st.floats(1e-3, 1.0), st.integers(-3, 3), st.booleans())
def test_exact_tables_match_rational_oracle(fn, bits, signed, s_in, s_out, z_in, out_signed):
    in_min, in_max = arith.qrange(bits, signed)
    lo, hi = arith.qrange(8, out_signed)
    table = LUT.build_table(fn, in_min, in_max, s_in, z_in, s_out, 0, lo, hi)
    assert table.dtype == np.int64 and table.size == in_max - in_min + 1
    want = [table_oracle(fn, q, s_in, z_in, s_out, 0, lo, hi) for q in range(in_min, in_max + 1)]
    assert table.tolist() == want


@SETTINGS
@given(st.sampled_from(["sigmoid", "silu"]), st.integers(2, 12), st.floats(1e-3, 0.5), st.floats(1e-3, 0.5))
def test_float_tables_are_rounded_function(fn, bits, s_in, s_out):
    in_min, in_max = arith.qrange(bits, True)
    lo, hi = arith.qrange(8, True)
    table = LUT.build_table(fn, in_min, in_max, s_in, 0, s_out, 0, lo, hi)
    r = s_in * np.arange(in_min, in_max + 1)
    f = r / (1 + np.exp(-r)) if fn == "silu" else 1 / (1 + np.exp(-r))
    assert np.all(np.abs(table - np.clip(f / s_out, lo, hi)) <= 0.5 + 1e-9)


def test_table_size_is_bounded():
    with pytest.raises(ValueError, match="at most"):
        LUT.build_table("hardswish", 0, 2**17, 0.1, 0, 0.1, 0, 0, 255)
    with pytest.raises(ValueError, match="no lookup table"):
        LUT.float_function("softplus", np.zeros(1))


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(2, 12), st.booleans())
def test_lut_kernel_both_executors_match_indexing_oracle(seed, bits, signed):
    rng = np.random.default_rng(seed)
    in_min, in_max = arith.qrange(bits, signed)
    table = rng.integers(-128, 128, size=in_max - in_min + 1)
    x = rng.integers(in_min, in_max + 1, size=(2, 3, 4, 5))
    want = np.array([table[v - in_min] for v in x.ravel()]).reshape(x.shape)
    y_ref = K.lut(x, table, in_min)
    y_emu = EK.lut(torch.as_tensor(x), torch.as_tensor(table), in_min)
    assert np.array_equal(y_ref, want) and np.array_equal(y_emu.numpy(), want)


# --- mul --------------------------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(2, 16), st.integers(2, 16), st.booleans(), st.booleans(),
       st.integers(-5, 5), st.integers(-5, 5), st.integers(0, 2**31 - 1), st.integers(0, 40),
       st.sampled_from([(2, 3, 4, 5), (2, 3, 1, 1), (2, 1, 4, 5), (2, 3)]))
def test_mul_kernel_both_executors_match_python_oracle(seed, abits, bbits, asg, bsg, za, zb, m, n, bshape):
    rng = np.random.default_rng(seed)
    ashape = (2, 3, 4, 5) if len(bshape) == 4 else (2, 3)
    a = rng.integers(*arith.qrange(abits, asg), endpoint=True, size=ashape)
    b = rng.integers(*arith.qrange(bbits, bsg), endpoint=True, size=bshape)
    lo, hi = arith.qrange(8, True)
    zy = int(rng.integers(-3, 4))
    bb = np.broadcast_to(b, a.shape)
    want = np.array([mul_oracle(int(u), int(v), za, zb, m, n, zy, lo, hi)
                     for u, v in zip(a.ravel(), bb.ravel())]).reshape(a.shape)
    kw = dict(a_zero_point=za, b_zero_point=zb, y_zero_point=zy, lo=lo, hi=hi)
    y_ref = K.mul(a, b, np.int64(m), np.int64(n), **kw)
    y_emu = EK.mul(torch.as_tensor(a), torch.as_tensor(b), np.int64(m), np.int64(n), **kw)
    assert np.array_equal(y_ref, want)
    assert np.array_equal(y_emu.numpy(), want)


def _se_program(rng, zb=0):
    """quantize -> lut(hardsigmoid) gate on a pooled branch -> mul: the executors' dispatch."""
    q8, u8 = QParams(8, True, np.float64(0.05)), QParams(8, False, np.float64(1 / 255), zero_point=0)
    table = LUT.build_table("hardsigmoid", q8.qmin, q8.qmax, 0.05, 0, 1 / 255, 0, 0, 255)
    m, s = arith.quantize_multiplier(0.05 * (1 / 255) / 0.04)
    g = QParams(8, True, np.float64(0.05))
    nodes = [
        Node("x", "quantize", ["image"], q8),
        Node("pool", "global_avgpool", ["x"], g, {"count": 16},
             {"multiplier": np.int64(arith.quantize_multiplier(1 / 16)[0]),
              "shift": np.int64(arith.quantize_multiplier(1 / 16)[1])}),
        Node("gate", "lut", ["pool"], u8, {"function": "hardsigmoid", "in_min": q8.qmin}, {"table": table}),
        Node("se", "mul", ["x", "gate"], QParams(8, True, np.float64(0.04)), {},
             {"multiplier": np.int64(m), "shift": np.int64(s)}),
    ]
    return Graph(nodes, "image", (3, 4, 4), ["se"])


def test_se_program_bit_identical_in_both_executors():
    rng = np.random.default_rng(0)
    graph = _se_program(rng)
    x = torch.as_tensor(rng.normal(0, 3, size=(3, 3, 4, 4)).astype(np.float32))
    be = check_bitexact(graph, x)
    assert be.total_mismatches == 0 and len(be.mismatches) == 4
    gate = be.ref_tensors["gate"]
    assert gate.min() >= 0 and gate.max() <= 255


def test_mul_refuses_other_requant_modes():
    graph = _se_program(np.random.default_rng(0))
    graph["se"].attrs["requant"] = "float32"
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(NotImplementedError, match="mul"):
        E.run(graph, x)
    from integer_ref import executor as R
    with pytest.raises(NotImplementedError, match="mul"):
        R.run(graph, x.numpy())


# --- capture and lowering -----------------------------------------------------------------------

class _SE(nn.Module):
    def __init__(self, c, functional):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)
        self.functional = functional
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        s = self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * (F.hardsigmoid(s) if self.functional else self.gate(s))


class _Tiny(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.Hardswish()
        self.se = _SE(8, functional)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 5)
        self.functional = functional

    def forward(self, x):
        y = self.bn(self.conv(x))
        y = F.hardswish(y) if self.functional else self.act(y)
        y = self.conv2(self.se(y))
        y = torch.sigmoid(y) * F.silu(y)  # the other table functions, and a product of two full tensors
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("functional", [False, True])
@pytest.mark.parametrize("bits", [(8, 8), (4, 8)])
def test_capture_lower_se_block_bit_exact(functional, bits):
    torch.manual_seed(0)
    model = _Tiny(functional).eval()
    g = capture(model, (3, 12, 12))
    ops = [n.op for n in g.nodes]
    assert {"hardswish", "hardsigmoid", "sigmoid", "silu", "mul", "gap"} <= set(ops)
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(run_float(g, x), model(x), atol=1e-5)
    graph = lower(g, collect_stats(g, [x], progress=False), QuantConfig(w_bits=bits[0], a_bits=bits[1]))
    luts = {n.attrs["function"]: n for n in graph.nodes if n.op == "lut"}
    assert set(luts) == {"hardswish", "hardsigmoid", "sigmoid", "silu"}
    for n in luts.values():
        src = graph[n.inputs[0]].out
        assert n.params["table"].size == src.qmax - src.qmin + 1 and n.attrs["in_min"] == src.qmin
    assert not luts["hardsigmoid"].out.signed and not luts["sigmoid"].out.signed and luts["hardswish"].out.signed
    muls = [n for n in graph.nodes if n.op == "mul"]
    assert len(muls) == 2
    be = check_bitexact(graph, x[:2])
    assert be.total_mismatches == 0


def test_float32_requant_refuses_lut_and_mul():
    torch.manual_seed(0)
    model = _Tiny(False).eval()
    g = capture(model, (3, 12, 12))
    x = torch.randn(2, 3, 12, 12)
    with pytest.raises(QuantsimError, match="lookup-table"):
        lower(g, collect_stats(g, [x], progress=False), QuantConfig(w_bits=8, a_bits=8, requant="float32"))


def test_mean_over_channels_is_refused_with_a_clear_message():
    class M(nn.Module):
        def forward(self, x):
            return x.mean(1)
    with pytest.raises(QuantsimError, match="mean over axes"):
        capture(M(), (3, 4, 4))


# --- hwmodel ------------------------------------------------------------------------------------

def test_hwmodel_rows_for_lut_and_mul():
    torch.manual_seed(0)
    model = _Tiny(False).eval()
    g = capture(model, (3, 12, 12))
    x = torch.randn(2, 3, 12, 12)
    graph = lower(g, collect_stats(g, [x], progress=False), QuantConfig(w_bits=8, a_bits=8))
    from integer_ref import executor as R
    taps = R.run(graph, x.numpy()).tensors
    accel = load_accelerator("edge-16x16-ws")
    shapes = batch1_shapes(graph, taps)
    res = simulate_graph(graph, taps, accel)
    rows = {r["layer"]: r for r in res.rows}
    for n in graph.nodes:
        if n.op not in ("lut", "mul"):
            continue
        r, n_out = rows[n.name], int(np.prod(shapes[n.name]))
        assert r["n_mac"] == 0 and r["n_elem"] == n_out and r["cycles"] > 0
        assert r["e_vec_pj"] > 0 and r["e_total_pj"] > r["e_vec_pj"]
        if n.op == "lut":  # one table read per element, the table read once
            assert r["ops_lut"] == n_out and r["ops_mul"] == 0
            assert r["dram_rd_filter"] == n.params["table"].size
            assert map_node(graph, n, shapes, accel, force_bits=32)["dram_rd_filter"] == 0
        else:  # one multiply per output element; both inputs read once, the gate at its own size
            assert r["ops_mul"] == 2 * n_out  # the product and the requantization's acc*M
            assert r["ops_lut"] == 0
            assert r["dram_rd_ifmap"] == sum(int(np.prod(shapes[i])) for i in n.inputs)


# --- timm models --------------------------------------------------------------------------------

def _timm(name: str):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False).eval()


def _check_model(model, x: torch.Tensor, calib: torch.Tensor) -> dict:
    g = capture(model, tuple(x.shape[1:]))
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(run_float(g, x), ref, atol=1e-4 * float(ref.abs().max()) + 1e-7)
    stats = collect_stats(g, [calib], progress=False)
    out = {}
    for w_bits in (8, 4):
        graph = lower(g, stats, QuantConfig(w_bits=w_bits, a_bits=8))
        assert {"lut", "mul"} <= {n.op for n in graph.nodes}
        be = check_bitexact(graph, x)
        bad = {k: v for k, v in be.mismatches.items() if v}
        assert not bad, f"W{w_bits}A8: differing elements per node: {bad}"
        assert len(be.mismatches) == len(graph.nodes)
        logits = be.ref_tensors[graph.outputs[0]]
        assert logits.std() > 0  # the program computes something image-dependent
        out[w_bits] = graph
    return out


def test_mobilenetv3_small_bit_exact_random_images():
    model = _timm("mobilenetv3_small_100")
    torch.manual_seed(1)
    calib = torch.randn(8, 3, 64, 64)
    graphs = _check_model(model, calib[:2], calib)
    ops = [n.op for n in graphs[8].nodes]
    assert ops.count("mul") == 9  # one squeeze-and-excitation per block that has one
    assert {n.attrs["function"] for n in graphs[8].nodes if n.op == "lut"} == {"hardswish", "hardsigmoid"}


@pytest.fixture(scope="module")
def imagenet_64(imagenet_val_dir):
    from quantsim.zoo import datasets
    from quantsim.zoo.preprocess import Preprocess
    pre = Preprocess((3, 64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), resize=73)
    ds = datasets.deterministic_subset(datasets.build_dataset(f"imagenet:{imagenet_val_dir}", pre), 8, 0)
    return torch.stack([ds[i][0] for i in range(len(ds))])


@pytest.mark.parametrize("name", ["mobilenetv3_small_100", "efficientnet_b0"])
def test_timm_se_models_bit_exact_real_images(name, imagenet_64):
    """2 real imagenet-val images at 64x64 (calibrated on 8), W8A8 and W4A8."""
    _check_model(_timm(name), imagenet_64[:2], imagenet_64)


def test_torchvision_stochastic_depth_is_identity_in_eval():
    from torchvision.ops import StochasticDepth

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.sd = nn.Conv2d(3, 3, 1), StochasticDepth(0.2, "row")

        def forward(self, x):
            return x + self.sd(self.conv(x))
    g = capture(M().eval(), (3, 4, 4))
    assert [n.op for n in g.nodes] == ["input", "conv", "add"]


def test_torchvision_mobilenet_v3_small_bit_exact_random_images():
    """torchvision's SqueezeExcitation: adaptive_avg_pool2d(x, 1), scale * input (gate first)."""
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.get_model("mobilenet_v3_small", weights=None).eval()
    torch.manual_seed(1)
    calib = torch.randn(4, 3, 64, 64)
    graphs = _check_model(model, calib[:2], calib)
    assert sum(n.op == "mul" for n in graphs[8].nodes) == 9

"""quantsim.emulate (torch: arith, kernels, executor) against integer_ref (NumPy): zero differing elements, every op."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from integer_ref import arith, executor
from integer_ref import kernels as K
from integer_ref.ir import Graph, Node, QParams
from quantsim.emulate import arith as EA, executor as E, kernels as EK
from test_kernels import (conv_case, conv_case_modes, pool_case, qtensor_spec, rand_q, rand_requant, run_conv,
                          run_conv_mode)

SETTINGS = settings(max_examples=40, deadline=None)


def emu_conv(case, acc_bits=32):
    w = torch.as_tensor(case["weight"]) - torch.as_tensor(case["zw"]).reshape(-1, 1, 1, 1)
    acc = EK.conv2d_acc(torch.as_tensor(case["x"]), w, K.weight_col_l1_max(w.numpy()), case["zx"],
                        case["stride"], case["dilation"], case["groups"], case["padding"])
    return EK.requantize(acc, case["bias"], case["mult"], case["shift"], case["zy"], case["lo"],
                         case["hi"], 1, acc_bits)


def assert_same(a: torch.Tensor, b: np.ndarray):
    assert a.dtype == torch.int64 and tuple(a.shape) == b.shape
    assert int((a.numpy() != b).sum()) == 0


# --- single kernels ---------------------------------------------------------------------------

@SETTINGS
@given(conv_case(), st.integers(8, 32))
def test_conv2d_twin(case, acc_bits):
    y_ref, ov_ref = run_conv(case, acc_bits)
    y_emu, ov_emu = emu_conv(case, acc_bits)
    assert_same(y_emu, y_ref)
    assert ov_emu == ov_ref


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(-(2**63), 2**63 - 1), st.integers(2, 16), st.booleans())
def test_requantize_twin_on_wide_accumulators(seed, big, bits, signed):
    rng = np.random.default_rng(seed)
    acc = rng.integers(-(2**62), 2**62, size=(3, 4, 5))
    acc[0, 0, 0] = big
    acc[1] = rng.integers(-(2**31), 2**31, size=(4, 5))
    mult, shift = rand_requant(rng, 4)
    shift[0] = 3  # small shifts take the saturating branch
    lo, hi = arith.qrange(bits, signed)
    y_ref, ov_ref = K.requantize(acc, None, mult, shift, 0, lo, hi, 1, 32)
    y_emu, ov_emu = EK.requantize(torch.as_tensor(acc), None, mult, shift, 0, lo, hi, 1, 32)
    assert_same(y_emu, y_ref)
    assert ov_emu == ov_ref


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(-(2**63), 2**63 - 1), st.integers(0, 2**31 - 1),
       st.integers(0, 62), st.integers(20, 62))
def test_multiply_rshift_round_one_multiplier_twin(seed, big, m, n, acc_bits):
    """One M and n for the whole tensor (the GELU path): every element equals arith, before any
    clamp for n >= 31; for n < 31 arith saturates products beyond 2^32 (exact ones are as good), so
    compare after the int32 clamp every output stage applies."""
    rng = np.random.default_rng(seed)
    acc = rng.integers(-(2**acc_bits), 2**acc_bits, size=(4, 33))
    acc[0, 0], acc[1, :5] = big, rng.integers(-(2**31), 2**31, size=5)
    want = arith.multiply_rshift_round(acc, np.array(m), np.array(n))
    got = EA.multiply_rshift_round(torch.as_tensor(acc), torch.tensor(m), torch.tensor(n))
    if n < 31:
        want, got = np.clip(want, -(2**31), 2**31 - 1), got.clamp(-(2**31), 2**31 - 1)
    assert_same(got, want)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.floats(1e-4, 10.0), qtensor_spec())
def test_quantize_twin(seed, scale, spec):
    _, _, qmin, qmax, zp = spec
    x = np.random.default_rng(seed).normal(0, scale * (qmax - qmin) / 4, size=(2, 3, 5, 5)).astype(np.float32)
    x[0, 0, 0] = np.float32(scale) * np.float32([0.5, 1.5, 2.5, -0.5, -2.5])  # ties
    assert_same(EA.quantize(torch.as_tensor(x), scale, zp, qmin, qmax), K.quantize(x, scale, zp, qmin, qmax))


@SETTINGS
@given(st.integers(0, 2**32 - 1), qtensor_spec(), qtensor_spec(), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 3), st.lists(st.integers(0, 2), min_size=4, max_size=4))
def test_pool_twins(seed, xs, ys, kh, kw, s, pad):
    rng = np.random.default_rng(seed)
    x = rand_q(rng, (2, 3, 6, 7), xs[2], xs[3])
    pad = [min(pad[0], kh - 1), min(pad[1], kh - 1), min(pad[2], kw - 1), min(pad[3], kw - 1)]
    xt = torch.as_tensor(x)
    assert_same(EK.maxpool(xt, (kh, kw), s, pad), K.maxpool(x, (kh, kw), s, pad))
    assert_same(EK.avgpool_sum(xt, xs[4], (kh, kw), s, pad), K.avgpool_sum(x, xs[4], (kh, kw), s, pad))


@pytest.mark.parametrize("xbits,wbits,c,path", [
    (8, 8, 4, (torch.float32, 1)),       # plain float32
    (16, 8, 64, (torch.float32, 2)),     # float32 digit split
    (16, 16, 64, (torch.float64, 1)),    # one float64 pass
    (24, 24, 64, (torch.float64, 2)),    # float64 digit split (integer_ref: int64 matmul)
])
def test_wide_operands_take_each_exact_path(xbits, wbits, c, path):
    rng = np.random.default_rng(xbits + wbits)
    xq, wq = 2 ** (xbits - 1) - 1, 2 ** (wbits - 1) - 1
    x = rng.integers(-xq, xq + 1, size=(2, c, 5, 5))
    x[0, 0, 0, 0] = -xq  # the digit split must handle the most negative value
    w = rng.integers(-wq, wq + 1, size=(3, c, 3, 3))
    l1 = K.weight_col_l1_max(w)
    dtype, _, k = EK.digit_plan(l1, xq)
    assert (dtype, k) == path
    acc_ref = np.asarray(K.conv2d_acc(x, w, 0, 0, 1, 1, 1, [1, 1, 1, 1])).astype(np.int64)
    acc_emu = EK.conv2d_acc(torch.as_tensor(x), torch.as_tensor(w), l1, 0, 1, 1, 1, [1, 1, 1, 1])
    assert_same(acc_emu, acc_ref)
    mult, shift = rand_requant(rng, 3)
    y_ref, ov_ref = K.requantize(acc_ref, None, mult, shift, 0, -127, 127, 1, 32)
    y_emu, ov_emu = EK.requantize(acc_emu, None, mult, shift, 0, -127, 127, 1, 32)
    assert_same(y_emu, y_ref)
    assert ov_emu == ov_ref


# --- whole programs ---------------------------------------------------------------------------

def qp(bits, signed, zp=0, scale=0.05):
    return QParams(bits, signed, np.float64(scale), zp)


def mac_params(rng, o, fan_in_shape, wbits, relu_lo=None):
    wmin, wmax = arith.qrange(wbits, True)
    mult, shift = rand_requant(rng, o)
    return {"weight": rand_q(rng, (o,) + fan_in_shape, wmin, wmax),
            "bias": rng.integers(-(2**12), 2**12, size=o), "multiplier": mult, "shift": shift}


def build_program(rng, abits=8, wbits=8, a_signed=False, zin=0, c=3, h=8, stride=2, groups=1,
                  tf_same=False, fc_bits=8, acc_bits=32, n=3):
    """quantize -> conv(relu) -> conv -> add -> maxpool -> avgpool -> strided_slice ->
    pad_channels -> clamp -> global_avgpool -> reshape -> linear, random integer parameters."""
    amin, amax = arith.qrange(abits, a_signed)
    pad_attr = {"padding_mode": "tf_same"} if tf_same else {"padding": [1, 1, 1, 1]}
    a = qp(abits, a_signed, zin)
    relu = QParams(abits, False, np.float64(0.05), 0)
    pool_rq = lambda: dict(zip(("multiplier", "shift"), rand_requant(rng, 1)))
    nodes = [
        Node("q", "quantize", ["x"], a),
        Node("c1", "conv2d", ["q"], relu, attrs={"stride": [1, 1], "groups": groups, **pad_attr,
                                                  "clamp": [0, relu.qmax]},
             params=mac_params(rng, c, (c // groups, 3, 3), wbits)),
        Node("c2", "conv2d", ["c1"], a, attrs={"stride": [1, 1], "dilation": [1, 1], "padding": [1, 1, 1, 1]},
             params=mac_params(rng, c, (c, 3, 3), wbits)),
        Node("sum", "add", ["c2", "q"], a, params={
            "multiplier": arith.quantize_multipliers(rng.uniform(0.1, 1.5, 2))[0], "shift": np.int64(30)}),
        Node("mp", "maxpool", ["sum"], a, attrs={"kernel": [2, 2], "stride": [stride, stride],
                                                 "padding": [0, 1, 0, 1]}),
        Node("ap", "avgpool", ["mp"], a, attrs={"kernel": 2, "stride": 1, "padding": [1, 0, 1, 0],
                                                "count": 4}, params=pool_rq()),
        Node("sl", "strided_slice", ["ap"], a, attrs={"step": [2, 2]}),
        Node("pc", "pad_channels", ["sl"], a, attrs={"before": 1, "after": 2}),
        Node("r", "clamp", ["pc"], a, attrs={"clamp": [zin, amax]}),
        Node("gap", "global_avgpool", ["r"], a, attrs={"count": 4}, params=pool_rq()),
        Node("flat", "reshape", ["gap"], a, attrs={"shape": [-1, c + 3]}),
        Node("fc", "linear", ["flat"], qp(fc_bits, True, 0, 0.1), params=mac_params(rng, 5, (c + 3,), wbits)),
    ]
    g = Graph(nodes, "x", (c, h, h), ["fc"], {"acc_bits": acc_bits})
    x = rng.normal(0, float(a.scale) * (amax - amin) / 3, size=(n, c, h, h)).astype(np.float32)
    return g, x


@st.composite
def program(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    abits, a_signed = draw(st.integers(2, 16)), draw(st.booleans())
    amin, amax = arith.qrange(abits, a_signed)
    zin = min(max(draw(st.sampled_from([0, amin + (amax - amin) // 2])), amin), amax)
    c = draw(st.integers(1, 4))
    return build_program(rng, abits, draw(st.integers(2, 16)), a_signed, zin, c,
                         draw(st.integers(4, 9)), draw(st.integers(1, 2)), draw(st.sampled_from([1, c])),
                         draw(st.booleans()), draw(st.integers(2, 16)), draw(st.sampled_from([32, 32, 12])))


@SETTINGS
@given(program())
def test_programs_bit_identical(prog):
    g, x = prog
    ref = executor.run(g, x, keep="all")
    emu = E.run(g, torch.as_tensor(x), keep="all")
    assert set(ref.tensors) == set(emu.tensors) == {n.name for n in g.nodes}
    for name, want in ref.tensors.items():
        assert_same(emu.tensors[name], want)
    assert ref.acc_overflows == emu.acc_overflows


def test_overflow_counting_reported_per_node():
    g, x = build_program(np.random.default_rng(0), acc_bits=10)
    ref = executor.run(g, x)
    emu = E.run(g, torch.as_tensor(x))
    assert ref.acc_overflows == emu.acc_overflows
    assert ref.acc_overflows["c1"] > 0 and set(ref.acc_overflows) == {"c1", "c2", "ap", "gap", "fc"}


def test_executor_chunks_and_keep_outputs():
    g, x = build_program(np.random.default_rng(1), n=7)
    full = executor.run(g, x, keep="all")
    chunked = executor.run(g, x, keep="outputs", chunk=3)
    assert set(chunked.tensors) == {"fc"}
    assert (chunked.tensors["fc"] == full.tensors["fc"]).all()
    assert chunked.acc_overflows == full.acc_overflows
    assert set(E.run(g, torch.as_tensor(x)).tensors) == {"fc"}


def test_emulated_model_dequantizes_output():
    g, x = build_program(np.random.default_rng(2), n=4)
    ref = executor.run(g, x, keep="outputs")
    want = executor.dequantize(ref.tensors["fc"], g["fc"].out)
    model = E.EmulatedModel(g, out_dtype=torch.float64)
    got = model(torch.as_tensor(x))
    assert got.dtype == torch.float64 and np.array_equal(got.numpy(), want)


def test_narrower_pass_through_range_is_rejected():
    """Both executors size exact GEMMs from declared ranges, so a lowering bug there must not pass."""
    g, x = build_program(np.random.default_rng(3))
    g["sl"].out = qp(4, False)
    with pytest.raises(ValueError, match="'sl'"):
        executor.run(g, x)
    with pytest.raises(ValueError, match="'sl'"):
        E.run(g, torch.as_tensor(x))


# --- the real engines' requantization modes ----------------------------------------------------

def emu_conv_mode(case, acc_bits=32):
    w = torch.as_tensor(case["weight"]) - torch.as_tensor(case["zw"]).reshape(-1, 1, 1, 1)
    acc = EK.conv2d_acc(torch.as_tensor(case["x"]), w, K.weight_col_l1_max(w.numpy()), case["zx"],
                        case["stride"], case["dilation"], case["groups"], case["padding"])
    return EK.requantize(acc, case["bias"], case["mult"], case["shift"], case["zy"], case["lo"],
                         case["hi"], 1, acc_bits, mode=case["mode"], scale=case["scale"])


@SETTINGS
@given(conv_case_modes(), st.integers(8, 32))
def test_conv2d_engine_modes_twin(case, acc_bits):
    y_ref, ov_ref = run_conv_mode(case, acc_bits)
    y_emu, ov_emu = emu_conv_mode(case, acc_bits)
    assert_same(y_emu, y_ref)
    assert ov_emu == ov_ref


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from(["gemmlowp", "float32", "float32_bias"]), st.booleans())
def test_engine_requantize_twin_on_wide_accumulators(seed, mode, divide):
    """Accumulators beyond int32 (wrapped by gemmlowp, rounded to float32 by the float modes)."""
    rng = np.random.default_rng(seed)
    acc = rng.integers(-(2**40), 2**40, size=(3, 4, 5))
    acc[1] = rng.integers(-(2**20), 2**20, size=(4, 5))
    acc[0, 0, :4] = [2**31 - 1, -(2**31), 2**31, -(2**31) - 1]
    real = np.exp(rng.uniform(np.log(1e-4), np.log(8.0), size=4))  # > 1 too: gemmlowp left shifts
    mult, shift = arith.quantize_multipliers_q31(real)
    scale = real.astype(np.float32)
    bias = rng.integers(-(2**20), 2**20, size=4)
    if mode == "float32_bias":
        bias = bias.astype(np.float32) * np.float32(0.37)
    div = 49 if divide and mode == "gemmlowp" else None
    y_ref, ov_ref = K.requantize(acc, bias, mult, shift, 5, -128, 127, 1, 32, mode, scale, div)
    y_emu, ov_emu = EK.requantize(torch.as_tensor(acc), bias, mult, shift, 5, -128, 127, 1, 32,
                                  mode=mode, scale=scale, divide=div)
    assert_same(y_emu, y_ref)
    assert ov_emu == ov_ref


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_add_gemmlowp_twin(seed, signed):
    rng = np.random.default_rng(seed)
    lo, hi = (-128, 127) if signed else (0, 255)
    a, b = rng.integers(lo, hi + 1, size=(2, 3, 4, 4)), rng.integers(lo, hi + 1, size=(2, 3, 4, 4))
    za, zb, zy = (int(v) for v in rng.integers(lo, hi + 1, size=3))
    mult, shift = arith.quantize_multipliers_q31(rng.uniform(1e-3, 0.5, size=3))
    kw = dict(a_zero_point=za, b_zero_point=zb, y_zero_point=zy, lo=lo, hi=hi)
    assert_same(EK.add_gemmlowp(torch.as_tensor(a), torch.as_tensor(b), mult, shift, **kw),
                K.add_gemmlowp(a, b, mult, shift, **kw))


@SETTINGS
@given(pool_case())
def test_avgpool_round_div_twin(case):
    x, kernel, stride, pad, spec, _ = case
    kw = dict(lo=spec[2], hi=spec[3], kernel=kernel, stride=stride, padding=pad)
    assert_same(EK.avgpool_round_div(torch.as_tensor(x), **kw), K.avgpool_round_div(x, **kw))


def build_engine_program(rng, signed=False, n=3, c=4, h=9, modes=("gemmlowp", "float32", "float32_bias")):
    """What an imported TFLite / ONNX Runtime model looks like: raw-pixel quantize, uint8/int8
    asymmetric tensors, uint8 weights with a zero point, depthwise with a channel multiplier,
    gemmlowp ADD, TFLite average pool and mean, a requantize, float32-mode linear layers."""
    lo, hi = (-128, 127) if signed else (0, 255)
    act = lambda zp, s=0.05: QParams(8, signed, np.float64(s), int(zp), narrow=False)
    z = lambda: int(rng.integers(lo + 20, hi - 20))
    q31 = lambda real: arith.quantize_multipliers_q31(np.asarray(real, dtype=np.float64))

    def mac(o, fan_in, mode, wsigned):
        w = rng.integers(-127, 128, size=(o,) + fan_in) if wsigned else rng.integers(0, 256, size=(o,) + fan_in)
        real = np.exp(rng.uniform(np.log(1e-4), np.log(0.05), size=o))
        p = {"weight": w, "bias": rng.integers(-(2**12), 2**12, size=o)}
        if not wsigned:
            p["weight_zero_point"] = np.int64(rng.integers(100, 156))
        if mode == "gemmlowp":
            p["multiplier"], p["shift"] = q31(real)
        else:
            p["multiplier"], p["shift"] = arith.quantize_multipliers(real)  # present, unused
            p["requant_scale"] = real.astype(np.float32)
            if mode == "float32_bias":
                p["bias"] = (p["bias"] * 0.7).astype(np.float32)
        return p
    za, zb, zm = z(), z(), z()
    m_add, s_add = q31([0.3, 0.5, 1.0 / (2**20 * 0.07)])
    m_rq, s_rq = q31(0.05 / 0.06)
    m_mean, s_mean = q31(0.06 / 0.04)
    m1, m2 = modes[0], modes[1 % len(modes)]
    nodes = [
        Node("q", "quantize", ["x"], act(z(), 1 / 128), attrs={"scale": 1 / 255, "zero_point": lo}),
        Node("c1", "conv2d", ["q"], act(za), attrs={"stride": [2, 2], "padding_mode": "tf_same",
                                                     "clamp": [za, hi], "requant": "gemmlowp"},
             params=mac(c, (3, 3, 3), "gemmlowp", signed)),
        Node("dw", "conv2d", ["c1"], act(zb), attrs={"stride": [1, 1], "groups": c, "padding_mode": "tf_same",
                                                      "requant": "gemmlowp"},
             params=mac(2 * c, (1, 3, 3), "gemmlowp", signed)),
        Node("pw", "conv2d", ["dw"], act(za), attrs={"requant": m1}, params=mac(c, (2 * c, 1, 1), m1, signed)),
        Node("sum", "add", ["pw", "c1"], act(z(), 0.07), attrs={"requant": "gemmlowp"},
             params={"multiplier": m_add, "shift": s_add}),
        Node("ap", "avgpool", ["sum"], act(z(), 0.07), attrs={"kernel": [2, 2], "stride": [1, 1],
                                                            "padding": [0, 1, 0, 1], "requant": "round_div"}),
        Node("rq", "requantize", ["ap"], act(zm, 0.06), attrs={"requant": "gemmlowp"},
             params={"multiplier": m_rq, "shift": s_rq}),
        Node("mean", "global_avgpool", ["rq"], act(z(), 0.04), attrs={"requant": "gemmlowp", "divide": 25},
             params={"multiplier": m_mean, "shift": s_mean}),
        Node("flat", "reshape", ["mean"], act(0), attrs={"shape": [-1, c]}),
        Node("fc", "linear", ["flat"], act(z()), attrs={"requant": m2}, params=mac(5, (c,), m2, signed)),
    ]
    nodes[8].out = nodes[7].out
    g = Graph(nodes, "x", (3, h, h), ["fc"], {"acc_bits": 32})
    x = rng.integers(0, 256, size=(n, 3, h, h)).astype(np.float32) / np.float32(255)
    return g, x


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.booleans(), st.permutations(["gemmlowp", "float32", "float32_bias"]))
def test_engine_programs_bit_identical(seed, signed, modes):
    g, x = build_engine_program(np.random.default_rng(seed), signed, modes=modes)
    ref = executor.run(g, x, keep="all")
    emu = E.run(g, torch.as_tensor(x), keep="all")
    assert set(ref.tensors) == set(emu.tensors) == {n.name for n in g.nodes}
    for name, want in ref.tensors.items():
        assert_same(emu.tensors[name], want)
    assert ref.acc_overflows == emu.acc_overflows
    # the raw-pixel quantize: an image of pixels p / 255 gives back p (int8: p - 128)
    assert (ref.tensors["q"] == np.rint(x * 255) + (-128 if signed else 0)).all()


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_add_float32_and_dequant_quant_twins(seed, signed):
    """ONNX Runtime's QLinearAdd and DequantizeLinear -> QuantizeLinear: torch == NumPy."""
    rng = np.random.default_rng(seed)
    lo, hi = (-128, 127) if signed else (0, 255)
    a, b = rng.integers(lo, hi + 1, size=(2, 2, 3, 5, 5))
    scale = np.array([np.exp(rng.uniform(-8, 3)), np.exp(rng.uniform(-8, 3)), rng.uniform(-300, 300)], np.float32)
    assert_same(EK.add_float32(torch.as_tensor(a), torch.as_tensor(b), scale, lo=lo, hi=hi),
                K.add_float32(a, b, scale, lo=lo, hi=hi))
    s = np.exp(rng.uniform(-8, 1, size=2)).astype(np.float32)
    zx, zy = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    assert_same(EA.dequant_quant_float32(torch.as_tensor(a), zx, s[0], s[1], zy, lo, hi),
                K.requantize_tensor(a, None, None, x_zero_point=zx, y_zero_point=zy, lo=lo, hi=hi,
                                    requant="float32_dq", scale=s))

"""integer_ref kernels and arith primitives against plain Python-integer oracles.

The oracles are written the slow, obvious way (nested loops, Python ints that cannot
overflow) so that a bug would have to be made twice, differently, to slip through.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from integer_ref import arith
from integer_ref import kernels as K

SETTINGS = settings(max_examples=60, deadline=None)


# --- Python-integer oracles ------------------------------------------------------------------

def rshift_round_oracle(v: int, n: int) -> int:
    return (v + (1 << (n - 1) if n > 0 else 0)) >> n  # Python >> on ints is floor


def requant_oracle(acc: int, m: int, n: int, zy: int, lo: int, hi: int) -> int:
    return min(max(rshift_round_oracle(acc * m, n) + zy, lo), hi)


def conv_acc_oracle(x, w, zx, zw, stride, dilation, groups, pad):
    """Direct nested-loop convolution in Python ints; padding reads the zero point."""
    n_, c_, h, wd = x.shape
    o_, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), (t, b, l, r) = stride, dilation, pad
    ho = (h + t + b - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + l + r - dw * (kw - 1) - 1) // sw + 1
    zw = np.broadcast_to(np.asarray(zw), (o_,))
    acc = np.zeros((n_, o_, ho, wo), dtype=object)
    for n in range(n_):
        for o in range(o_):
            g = o // (o_ // groups)
            for oh in range(ho):
                for ow in range(wo):
                    s = 0
                    for c in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                ih, iw = oh * sh + i * dh - t, ow * sw + j * dw - l
                                inside = 0 <= ih < h and 0 <= iw < wd
                                xv = int(x[n, g * cg + c, ih, iw]) if inside else zx
                                s += (xv - zx) * (int(w[o, c, i, j]) - int(zw[o]))
                    acc[n, o, oh, ow] = s
    return acc


def requant_array_oracle(acc, bias, mult, shift, zy, lo, hi):
    out = np.zeros(acc.shape, dtype=np.int64)
    for idx in np.ndindex(*acc.shape):
        o = idx[1]
        out[idx] = requant_oracle(int(acc[idx]) + int(bias[o]), int(mult[o]), int(shift[o]), zy, lo, hi)
    return out


# --- strategies -------------------------------------------------------------------------------

@st.composite
def qtensor_spec(draw, min_bits=2, max_bits=16):
    """(bits, signed, qmin, qmax, zero_point) with the zero point inside the range."""
    bits = draw(st.integers(min_bits, max_bits))
    signed = draw(st.booleans())
    qmin, qmax = arith.qrange(bits, signed)
    zp = draw(st.sampled_from([0, 0, qmin + (qmax - qmin) // 3, qmax // 2]))
    zp = min(max(zp, qmin), qmax)
    return bits, signed, qmin, qmax, zp


def rand_q(rng, shape, qmin, qmax):
    return rng.integers(qmin, qmax + 1, size=shape, dtype=np.int64)


def rand_requant(rng, o):
    """Per-channel dyadic multipliers of random positive reals (the way lowering makes them)."""
    reals = np.exp(rng.uniform(np.log(1e-6), np.log(2.0), size=o))
    return arith.quantize_multipliers(reals)


@st.composite
def conv_case(draw, max_bits=16):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    groups = draw(st.sampled_from([1, 1, 2, 3, "dw"]))
    cg = draw(st.integers(1, 3))
    if groups == "dw":  # depthwise, channel multiplier 1 or 2
        c = draw(st.integers(1, 4))
        groups, cg, o = c, 1, c * draw(st.sampled_from([1, 2]))
    else:
        c, o = cg * groups, groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h = draw(st.integers((kh - 1) * dilation[0] + 1, 8))
    w = draw(st.integers((kw - 1) * dilation[1] + 1, 8))
    padding = draw(st.one_of(st.just("tf_same"), st.lists(st.integers(0, 2), min_size=4, max_size=4)))
    xs = draw(qtensor_spec(max_bits=max_bits))
    wbits = draw(st.integers(2, max_bits))
    wmin, wmax = arith.qrange(wbits, True)
    zw = draw(st.sampled_from([0, 0, 1, -1]))
    ys = draw(qtensor_spec())
    x = rand_q(rng, (draw(st.integers(1, 2)), c, h, w), xs[2], xs[3])
    weight = rand_q(rng, (o, cg, kh, kw), wmin, wmax)
    bias = rng.integers(-(2**20), 2**20, size=o)
    mult, shift = rand_requant(rng, o)
    lo = draw(st.sampled_from([ys[2], ys[4]]))  # plain range or ReLU at the zero point
    return dict(x=x, weight=weight, bias=bias, mult=mult, shift=shift, zx=xs[4], zw=zw, zy=ys[4],
                lo=lo, hi=ys[3], stride=stride, dilation=dilation, groups=groups, padding=padding)


def run_conv(case, acc_bits=32):
    return K.conv2d(case["x"], case["weight"], case["bias"], case["mult"], case["shift"],
                    x_zero_point=case["zx"], w_zero_point=case["zw"], y_zero_point=case["zy"],
                    lo=case["lo"], hi=case["hi"], stride=case["stride"], dilation=case["dilation"],
                    groups=case["groups"], padding=case["padding"], acc_bits=acc_bits)


def conv_oracle(case):
    x, w = case["x"], case["weight"]
    pad = K.resolve_padding(case["padding"], x.shape[2:], w.shape[2:], case["stride"], case["dilation"])
    acc = conv_acc_oracle(x, w, case["zx"], case["zw"], case["stride"], case["dilation"],
                          case["groups"], pad)
    y = requant_array_oracle(acc, case["bias"], case["mult"], case["shift"], case["zy"],
                             case["lo"], case["hi"])
    return acc + case["bias"].reshape(1, -1, 1, 1).astype(object), y


# --- arith ------------------------------------------------------------------------------------

@SETTINGS
@given(st.floats(1e-12, 1e6))
def test_quantize_multiplier_reconstructs(m):
    """Relative error 2^-30 while the shift fits 62 (m >= 2^-32); below, absolute 2^-63."""
    mult, shift = arith.quantize_multiplier(m)
    assert 0 <= shift <= 62 and 0 <= mult < 2**31
    err = abs(mult / 2.0**shift - m)
    assert err <= (m * 2.0**-30 if m >= 2.0**-32 else 2.0**-63)


@SETTINGS
@given(st.integers(-(2**61), 2**61), st.integers(0, 62))
def test_rounding_rshift_is_floor_of_half_up(x, n):
    got = int(arith.rounding_rshift(np.array([x]), np.array([n]))[0])
    assert got == (x + (2 ** (n - 1) if n else 0)) // 2**n  # Python ints: exact floor division


@SETTINGS
@given(st.integers(-(2**31) + 1, 2**31 - 1), st.integers(1, 2**31 - 1), st.integers(0, 62),
       st.integers(2, 16), st.booleans())
def test_requantize_huge_acc_does_not_overflow(acc, m, n, bits, signed):
    lo, hi = arith.qrange(bits, signed)
    got = int(arith.requantize_dyadic(np.array([acc]), np.array(m), np.array(n), 0, lo, hi)[0])
    assert got == requant_oracle(acc, m, n, 0, lo, hi)


@SETTINGS
@given(st.integers(-(2**63), 2**63 - 1), st.integers(0, 2**31 - 1), st.integers(0, 62),
       st.integers(2, 16), st.booleans())
def test_wide_product_requant_matches_python(acc, m, n, bits, signed):
    """acc beyond 32 bits (overflowed accumulators) still requantizes exactly after the clamp."""
    lo, hi = arith.qrange(bits, signed)
    vec = int(arith.requantize_dyadic(np.array([acc, 0]), np.array(m), np.array(n), 0, lo, hi)[0])
    one = int(arith.requantize_scalar(np.int64(acc), np.int64(m), np.int64(n), np.int64(0),
                                      np.int64(lo), np.int64(hi)))
    assert vec == one == requant_oracle(acc, m, n, 0, lo, hi)
    if n >= 31:  # exact before the clamp too
        assert int(arith.multiply_rshift_round(np.array([acc]), np.array(m), np.array(n))[0]) == \
            rshift_round_oracle(acc * m, n)


@pytest.mark.parametrize("amax,bmax,k", [(255, 127, 8), (2**15, 2**15, 64), (2**27, 2**27, 60)])
def test_exact_matmul_all_paths(amax, bmax, k):
    """float32, float64 and int64 paths all give the Python-integer product."""
    rng = np.random.default_rng(k)
    a = rng.integers(-amax, amax + 1, size=(5, k))
    b = rng.integers(-bmax, bmax + 1, size=(k, 4))
    a[0], b[:, 0] = amax, bmax  # the extreme corner
    want = np.array([[sum(int(a[i, t]) * int(b[t, j]) for t in range(k)) for j in range(4)]
                     for i in range(5)], dtype=object)
    assert (arith.exact_matmul(a, b).astype(object) == want).all()


def test_exact_float_dtype_thresholds():
    assert arith.exact_float_dtype(2**24 - 1) is np.float32
    assert arith.exact_float_dtype(2**24) is np.float64
    assert arith.exact_float_dtype(2**53) is None


# --- kernels ----------------------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**32 - 1), st.floats(1e-4, 10.0), qtensor_spec())
def test_quantize(seed, scale, spec):
    _, _, qmin, qmax, zp = spec
    x = np.random.default_rng(seed).normal(0, scale * (qmax - qmin) / 4, size=(2, 3, 4, 4)).astype(np.float32)
    x.flat[0] = np.float32(scale) * np.float32(2.5)  # a tie: must round to even
    got = K.quantize(x, scale, zp, qmin, qmax)
    s32 = np.float32(scale)
    want = [min(max(round(float(np.float32(v) / s32)) + zp, qmin), qmax) for v in x.ravel()]
    assert got.dtype == np.int64 and got.ravel().tolist() == want


@SETTINGS
@given(conv_case())
def test_conv2d_matches_direct_loop(case):
    acc_want, y_want = conv_oracle(case)
    y, _ = run_conv(case)
    assert y.dtype == np.int64 and (y == y_want).all()


@SETTINGS
@given(conv_case(), st.integers(8, 24))
def test_conv2d_counts_accumulator_overflows(case, acc_bits):
    acc_want, _ = conv_oracle(case)
    lim = 2 ** (acc_bits - 1)
    want = sum(1 for v in acc_want.ravel() if not -lim <= v < lim)
    assert run_conv(case, acc_bits)[1] == want


def test_conv2d_wide_operands_use_exact_paths():
    """16-bit operands, K = 3*3*64: bound far above 2^24 (float64) and 2^53 (int64 path)."""
    rng = np.random.default_rng(1)
    for xbits, wbits in ((16, 16), (24, 24)):
        xq, wq = 2 ** (xbits - 1) - 1, 2 ** (wbits - 1) - 1
        x = rng.integers(-xq, xq + 1, size=(1, 64, 4, 4))
        w = rng.integers(-wq, wq + 1, size=(2, 64, 3, 3))
        acc = K.conv2d_acc(x, w, 0, 0, 1, 1, 1, [1, 1, 1, 1])
        want = conv_acc_oracle(x, w, 0, 0, (1, 1), (1, 1), 1, (1, 1, 1, 1))
        assert (np.asarray(acc).astype(object) == want).all()


@SETTINGS
@given(st.integers(0, 2**32 - 1), qtensor_spec(), qtensor_spec(), st.integers(2, 16),
       st.integers(1, 40), st.integers(1, 5))
def test_linear(seed, xs, ys, wbits, k, o):
    rng = np.random.default_rng(seed)
    wmin, wmax = arith.qrange(wbits, True)
    x, w = rand_q(rng, (3, k), xs[2], xs[3]), rand_q(rng, (o, k), wmin, wmax)
    bias = rng.integers(-(2**20), 2**20, size=o)
    mult, shift = rand_requant(rng, o)
    y, _ = K.linear(x, w, bias, mult, shift, x_zero_point=xs[4], y_zero_point=ys[4],
                    lo=ys[2], hi=ys[3])
    for i in range(3):
        for j in range(o):
            acc = sum((int(x[i, t]) - xs[4]) * int(w[j, t]) for t in range(k)) + int(bias[j])
            assert y[i, j] == requant_oracle(acc, int(mult[j]), int(shift[j]), ys[4], ys[2], ys[3])


@SETTINGS
@given(st.integers(0, 2**32 - 1), qtensor_spec(), qtensor_spec(), qtensor_spec())
def test_add(seed, a_s, b_s, y_s):
    rng = np.random.default_rng(seed)
    a, b = rand_q(rng, (2, 3, 4, 4), a_s[2], a_s[3]), rand_q(rng, (2, 3, 4, 4), b_s[2], b_s[3])
    (ma, mb), _ = arith.quantize_multipliers(rng.uniform(0.01, 2.0, 2))
    n = int(rng.integers(20, 40))  # a shared shift, as lowering makes for add
    y = K.add(a, b, np.array([ma, mb]), n, a_zero_point=a_s[4], b_zero_point=b_s[4],
              y_zero_point=y_s[4], lo=y_s[2], hi=y_s[3])
    want = [min(max(rshift_round_oracle((int(p) - a_s[4]) * int(ma) + (int(q) - b_s[4]) * int(mb), n)
                    + y_s[4], y_s[2]), y_s[3]) for p, q in zip(a.ravel(), b.ravel())]
    assert y.ravel().tolist() == want


@st.composite
def pool_case(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = [draw(st.integers(0, kernel[0] - 1)), draw(st.integers(0, kernel[0] - 1)),
           draw(st.integers(0, kernel[1] - 1)), draw(st.integers(0, kernel[1] - 1))]
    spec = draw(qtensor_spec())
    x = rand_q(rng, (2, 3, draw(st.integers(kernel[0], 7)), draw(st.integers(kernel[1], 7))),
               spec[2], spec[3])
    return x, kernel, stride, pad, spec, rng


def pool_oracle(x, kernel, stride, pad, reduce, fill):
    n_, c_, h, w = x.shape
    (kh, kw), (sh, sw), (t, b, l, r) = kernel, stride, pad
    ho, wo = (h + t + b - kh) // sh + 1, (w + l + r - kw) // sw + 1
    out = np.zeros((n_, c_, ho, wo), dtype=object)
    for n, c, oh, ow in np.ndindex(n_, c_, ho, wo):
        vals = []
        for i in range(kh):
            for j in range(kw):
                ih, iw = oh * sh + i - t, ow * sw + j - l
                vals.append(int(x[n, c, ih, iw]) if 0 <= ih < h and 0 <= iw < w else fill)
        out[n, c, oh, ow] = reduce([v for v in vals if v is not None])
    return out


@SETTINGS
@given(pool_case())
def test_maxpool(case):
    x, kernel, stride, pad, _, _ = case
    assert (K.maxpool(x, kernel, stride, pad) == pool_oracle(x, kernel, stride, pad, max, None)).all()


@SETTINGS
@given(pool_case(), qtensor_spec())
def test_avgpool(case, ys):
    x, kernel, stride, pad, xs, rng = case
    mult, shift = rand_requant(rng, 1)
    y, _ = K.avgpool(x, mult[0], shift[0], x_zero_point=xs[4], y_zero_point=ys[4], lo=ys[2],
                     hi=ys[3], kernel=kernel, stride=stride, padding=pad)
    sums = pool_oracle(x - xs[4], kernel, stride, pad, sum, 0)
    want = [requant_oracle(int(v), int(mult[0]), int(shift[0]), ys[4], ys[2], ys[3]) for v in sums.ravel()]
    assert y.ravel().tolist() == want


@SETTINGS
@given(pool_case(), qtensor_spec())
def test_global_avgpool(case, ys):
    x, _, _, _, xs, rng = case
    mult, shift = rand_requant(rng, 1)
    y, _ = K.global_avgpool(x, mult[0], shift[0], x_zero_point=xs[4], y_zero_point=ys[4],
                            lo=ys[2], hi=ys[3])
    assert y.shape == x.shape[:2] + (1, 1)
    for n, c in np.ndindex(*x.shape[:2]):
        s = sum(int(v) - xs[4] for v in x[n, c].ravel())
        assert y[n, c, 0, 0] == requant_oracle(s, int(mult[0]), int(shift[0]), ys[4], ys[2], ys[3])


def test_shape_ops():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert K.reshape(x, [-1, 60]).shape == (2, 60)
    assert (K.reshape(x, [-1, 60])[1] == x[1].ravel()).all()
    assert (K.strided_slice(x, [2, 2]) == x[:, :, ::2, ::2]).all()
    p = K.pad_channels(x, 1, 2, zero_point=7)
    assert p.shape == (2, 6, 4, 5) and (p[:, 0] == 7).all() and (p[:, 4:] == 7).all()
    assert (p[:, 1:4] == x).all()
    assert (K.clamp(x, lo=10, hi=20) == np.clip(x, 10, 20)).all()


def test_tf_same_padding_matches_tensorflow_rule():
    # TF: out = ceil(in / stride); the odd extra pad goes after (bottom/right).
    assert K.resolve_padding("tf_same", (7, 8), (3, 3), (2, 2)) == (1, 1, 0, 1)
    assert K.resolve_padding("tf_same", (5, 5), (1, 1), (1, 1)) == (0, 0, 0, 0)


# --- real engines' requantization: gemmlowp (TFLite) and float32 (ONNX Runtime, fbgemm) -------

I32 = st.integers(-(2**31), 2**31 - 1)


def wrap32_oracle(v: int) -> int:
    return (v + 2**31) % 2**32 - 2**31


def c_div_oracle(a: int, b: int) -> int:
    """C integer division: truncates toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def srdhm_oracle(a: int, b: int) -> int:
    if a == b == -(2**31):
        return 2**31 - 1
    ab = a * b
    return c_div_oracle(ab + (2**30 if ab >= 0 else 1 - 2**30), 2**31)


def rdbp_oracle(x: int, e: int) -> int:
    """x / 2^e rounded to nearest, ties away from zero (Python ints)."""
    q, r = divmod(abs(x), 2**e)
    q += 2 * r >= 2**e if e > 0 else 0
    return q if x >= 0 else -q


def mbqm_oracle(x: int, m: int, n: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier, n a right shift (negative: left)."""
    xs = wrap32_oracle(wrap32_oracle(x) * 2 ** max(-n, 0))
    return rdbp_oracle(srdhm_oracle(xs, m), max(n, 0))


def gemmlowp_requant_oracle(acc, m, n, zy, lo, hi):
    return min(max(mbqm_oracle(acc, m, n) + zy, lo), hi)


def float32_requant_oracle(acc, scale, zy, lo, hi, bias_f32=None):
    v = np.float32(acc)
    if bias_f32 is not None:
        v = np.float32(v + np.float32(bias_f32))
    v = np.float32(v * np.float32(scale))
    return min(max(round(float(v)) + zy, lo), hi)  # Python round: ties to even


@SETTINGS
@given(I32, I32)
def test_saturating_rounding_doubling_high_mul(a, b):
    assert int(arith.saturating_rounding_doubling_high_mul(np.array([a]), np.array([b]))[0]) == srdhm_oracle(a, b)


def test_srdhm_saturates_and_rounds_ties_away():
    m = -(2**31)
    assert int(arith.saturating_rounding_doubling_high_mul(np.array([m]), np.array([m]))[0]) == 2**31 - 1
    # a*b = ±2^30 exactly, i.e. ±0.5: the nudge and C's truncation round ties upward (+0.5 -> 1,
    # -0.5 -> 0, -1.5 -> -1), unlike RoundingDivideByPOT, which rounds ties away from zero
    srdhm = lambda a, b: int(arith.saturating_rounding_doubling_high_mul(np.array([a]), np.array([b]))[0])
    assert srdhm(2**15, 2**15) == 1 and srdhm(-(2**15), 2**15) == 0 and srdhm(-3 * 2**15, 2**15) == -1


@SETTINGS
@given(I32, st.integers(0, 31))
def test_rounding_divide_by_pot(x, e):
    assert int(arith.rounding_divide_by_pot(np.array([x]), np.array([e]))[0]) == rdbp_oracle(x, e)


@SETTINGS
@given(st.integers(-(2**40), 2**40), st.integers(0, 2**31 - 1), st.integers(-8, 31))
def test_multiply_by_quantized_multiplier(x, m, n):
    got = int(arith.multiply_by_quantized_multiplier(np.array([x]), np.array([m]), np.array([n]))[0])
    assert got == mbqm_oracle(x, m, n)


@SETTINGS
@given(st.floats(1e-9, 1e3))
def test_quantize_multiplier_q31(m):
    q, e = arith.quantize_multiplier_q31(m)
    assert 2**30 <= q < 2**31
    assert abs(q * 2.0 ** (e - 31) - m) <= m * 2.0**-31  # round to nearest: half an ulp of Q31
    mult, shift = arith.quantize_multipliers_q31(np.array([m]))
    assert (int(mult[0]), int(shift[0])) == (q, -e)


def test_quantize_multiplier_q31_edges():
    assert arith.quantize_multiplier_q31(0.0) == (0, 0)
    assert arith.quantize_multiplier_q31(1.0) == (2**30, 1)
    assert arith.quantize_multiplier_q31(2.0**-40) == (0, 0)  # flushed like TFLite
    assert arith.quantize_multiplier_q31(1 - 2.0**-40) == (2**30, 1)  # the carry into 2^31


@SETTINGS
@given(st.integers(-(2**40), 2**40), st.integers(1, 5000))
def test_divide_round_away(x, c):
    want = c_div_oracle(x + c // 2 if x > 0 else x - c // 2, c)
    assert int(arith.divide_round_away(np.array([x]), np.array([c]))[0]) == want


@SETTINGS
@given(st.integers(-(2**40), 2**40), st.floats(2.0**-20, 4.0, width=32), st.integers(-128, 127),
       st.one_of(st.none(), st.floats(-2.0**17, 2.0**17, width=32)))
def test_requantize_float32(acc, scale, zy, bias_f32):
    got = int(arith.requantize_float32(np.array([acc]), np.float32(scale), zy, -128, 255, bias_f32)[0])
    assert got == float32_requant_oracle(acc, scale, zy, -128, 255, bias_f32)


def test_requantize_float32_ties_to_even():
    acc = np.array([1, 3, 5, -1, -3])  # times 0.5: ties
    assert arith.requantize_float32(acc, np.float32(0.5), 0, -10, 10).tolist() == [0, 2, 2, 0, -2]


def add_mode(case, mode, rng):
    """A conv/linear case in another requant mode: per-channel parameters like the engines'."""
    o = len(case["mult"])
    real = np.exp(rng.uniform(np.log(1e-5), np.log(1.5), size=o))
    case = dict(case, mode=mode, scale=None)
    if mode == "gemmlowp":
        case["mult"], case["shift"] = arith.quantize_multipliers_q31(real)
    elif mode in ("float32", "float32_bias"):
        case["scale"] = real.astype(np.float32)
        if mode == "float32_bias":
            case["bias"] = (case["bias"] * rng.uniform(0.5, 1.5, size=o)).astype(np.float32)
    return case


@st.composite
def conv_case_modes(draw, max_bits=16):
    case = draw(conv_case(max_bits))
    mode = draw(st.sampled_from(["gemmlowp", "float32", "float32_bias"]))
    return add_mode(case, mode, np.random.default_rng(draw(st.integers(0, 2**32 - 1))))


def run_conv_mode(case, acc_bits=32):
    return K.conv2d(case["x"], case["weight"], case["bias"], case["mult"], case["shift"],
                    x_zero_point=case["zx"], w_zero_point=case["zw"], y_zero_point=case["zy"],
                    lo=case["lo"], hi=case["hi"], stride=case["stride"], dilation=case["dilation"],
                    groups=case["groups"], padding=case["padding"], acc_bits=acc_bits,
                    requant=case["mode"], scale=case["scale"])


def requant_mode_oracle(acc, case, o):
    """One accumulator (without bias) of output channel o, requantized in case['mode']."""
    mode, b = case["mode"], case["bias"][o]
    if mode == "gemmlowp":
        return gemmlowp_requant_oracle(acc + int(b), int(case["mult"][o]), int(case["shift"][o]),
                                       case["zy"], case["lo"], case["hi"])
    if mode == "float32":
        return float32_requant_oracle(acc + int(b), case["scale"][o], case["zy"], case["lo"], case["hi"])
    return float32_requant_oracle(acc, case["scale"][o], case["zy"], case["lo"], case["hi"], b)


@SETTINGS
@given(conv_case_modes())
def test_conv2d_engine_modes_match_direct_loop(case):
    x, w = case["x"], case["weight"]
    pad = K.resolve_padding(case["padding"], x.shape[2:], w.shape[2:], case["stride"], case["dilation"])
    acc = conv_acc_oracle(x, w, case["zx"], case["zw"], case["stride"], case["dilation"], case["groups"], pad)
    y, _ = run_conv_mode(case)
    want = np.zeros(acc.shape, dtype=np.int64)
    for idx in np.ndindex(*acc.shape):
        want[idx] = requant_mode_oracle(int(acc[idx]), case, idx[1])
    assert (y == want).all()


@SETTINGS
@given(st.integers(0, 2**32 - 1), qtensor_spec(), st.integers(1, 40), st.integers(1, 5),
       st.sampled_from(["gemmlowp", "float32", "float32_bias"]))
def test_linear_engine_modes(seed, xs, k, o, mode):
    rng = np.random.default_rng(seed)
    x = rand_q(rng, (3, k), xs[2], xs[3])
    w = rng.integers(0, 256, size=(o, k))  # uint8 weights with a weight zero point
    zw = int(rng.integers(0, 256))
    case = add_mode({"mult": np.zeros(o), "bias": rng.integers(-(2**20), 2**20, size=o),
                     "zy": int(rng.integers(0, 256)), "lo": 0, "hi": 255}, mode, rng)
    y, _ = K.linear(x, w, case["bias"], case["mult"], case.get("shift"), x_zero_point=xs[4], w_zero_point=zw,
                    y_zero_point=case["zy"], lo=0, hi=255, requant=mode, scale=case["scale"])
    for i in range(3):
        for j in range(o):
            acc = sum((int(x[i, t]) - xs[4]) * (int(w[j, t]) - zw) for t in range(k))
            assert y[i, j] == requant_mode_oracle(acc, case, j)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_add_gemmlowp_matches_tflite_formula(seed, signed):
    rng = np.random.default_rng(seed)
    lo, hi = (-128, 127) if signed else (0, 255)
    a, b = rng.integers(lo, hi + 1, size=(2, 3, 4, 4)), rng.integers(lo, hi + 1, size=(2, 3, 4, 4))
    za, zb, zy = (int(v) for v in rng.integers(lo, hi + 1, size=3))
    sa, sb, sy = rng.uniform(0.01, 0.5, size=3)
    twice_max = 2 * max(sa, sb)
    mult, shift = arith.quantize_multipliers_q31(np.array([sa / twice_max, sb / twice_max, twice_max / (2**20 * sy)]))
    act_lo = int(rng.integers(lo, zy + 1))
    y = K.add_gemmlowp(a, b, mult, shift, a_zero_point=za, b_zero_point=zb, y_zero_point=zy, lo=act_lo, hi=hi)
    m, n = [int(v) for v in mult], [int(v) for v in shift]
    for p, q, got in zip(a.ravel(), b.ravel(), y.ravel()):
        s1 = mbqm_oracle((int(p) - za) * 2**20, m[0], n[0])
        s2 = mbqm_oracle((int(q) - zb) * 2**20, m[1], n[1])
        assert got == min(max(mbqm_oracle(s1 + s2, m[2], n[2]) + zy, act_lo), hi)


@SETTINGS
@given(pool_case())
def test_avgpool_round_div(case):
    x, kernel, stride, pad, spec, _ = case
    y = K.avgpool_round_div(x, lo=spec[2], hi=spec[3], kernel=kernel, stride=stride, padding=pad)

    def mean_away(vals):
        s, c = sum(vals), len(vals)
        return c_div_oracle(s + c // 2 if s > 0 else s - c // 2, c)
    want = pool_oracle(x, kernel, stride, pad, mean_away, None)
    assert y.tolist() == np.clip(want.astype(np.int64), spec[2], spec[3]).tolist()


@SETTINGS
@given(pool_case(), st.floats(0.2, 3.0))
def test_global_mean_gemmlowp(case, ratio):
    x, _, _, _, xs, _ = case
    mult, shift = arith.quantize_multipliers_q31(np.array(ratio))
    y, _ = K.global_avgpool(x, mult, shift, x_zero_point=xs[4], y_zero_point=3, lo=-128, hi=127,
                            requant="gemmlowp", divide=x.shape[2] * x.shape[3])
    c = x.shape[2] * x.shape[3]
    for n, ch in np.ndindex(*x.shape[:2]):
        v = mbqm_oracle(sum(int(t) - xs[4] for t in x[n, ch].ravel()), int(mult), int(shift))
        v = c_div_oracle(v + c // 2 if v > 0 else v - c // 2, c)
        assert y[n, ch, 0, 0] == min(max(v + 3, -128), 127)


def test_requantize_tensor_uint8_to_int8_identity_scale():
    x = np.arange(256).reshape(1, 1, 16, 16)
    mult, shift = arith.quantize_multipliers_q31(np.array(1.0))
    y = K.requantize_tensor(x, mult, shift, x_zero_point=127, y_zero_point=-1, lo=-128, hi=127)
    assert (y == np.clip(x - 128, -128, 127)).all()


# --- ONNX Runtime's QLinearAdd (float32 FMAs) and DequantizeLinear -> QuantizeLinear ----------

def fma_oracle(x: int, r, c) -> np.float32:
    """round-to-nearest-even float32 of the exact rational x·r + c."""
    from fractions import Fraction

    exact = Fraction(int(x)) * Fraction(float(np.float32(r))) + Fraction(float(np.float32(c)))
    lo = np.float32(float(exact))  # float() rounds correctly to float64; step to the float32 neighbours
    cands = {lo, np.nextafter(lo, np.float32(np.inf)), np.nextafter(lo, np.float32(-np.inf))}
    best = min(cands, key=lambda v: (abs(Fraction(float(v)) - exact),
                                     int(np.array(v, np.float32).view(np.int32)) & 1))
    return np.float32(best)


@SETTINGS
@given(st.integers(-255, 255), st.floats(2.0**-20, 256.0, width=32), st.floats(-600.0, 600.0, width=32))
def test_fma_float32_is_one_rounding(x, r, c):
    assert arith.fma_float32(np.array([x]), np.float32(r), np.array([c], np.float32))[0] == fma_oracle(x, r, c)


def test_fma_float32_differs_from_two_roundings_where_it_should():
    # 3·(1 + 2^-23) + (-3): two roundings lose the low bits, one rounding keeps them
    r = np.float32(1 + 2.0**-23)
    got = arith.fma_float32(np.array([3]), r, np.array([-3.0], np.float32))[0]
    assert got == np.float32(3 * 2.0**-23) and np.float32(np.float32(3 * r) - 3) != got


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_add_float32_matches_scalar_oracle(seed, signed):
    rng = np.random.default_rng(seed)
    lo, hi = (-128, 127) if signed else (0, 255)
    a, b = rng.integers(lo, hi + 1, size=(2, 40))
    ra, rb = (np.float32(np.exp(rng.uniform(-8, 3))) for _ in range(2))
    f = np.float32(rng.uniform(-300, 300))
    got = K.add_float32(a, b, np.array([ra, rb, f], np.float32), lo=lo, hi=hi)
    for i in range(a.size):
        t = fma_oracle(a[i], ra, fma_oracle(b[i], rb, f))
        assert got[i] == min(max(int(np.rint(t)), lo), hi)


@SETTINGS
@given(st.integers(0, 255), st.integers(0, 255), st.floats(2.0**-12, 4.0, width=32),
       st.floats(2.0**-12, 4.0, width=32), st.integers(0, 255))
def test_dequant_quant_float32_matches_float32_steps(x, zx, s_in, s_out, zy):
    v = np.float32(np.float32(x - zx) * np.float32(s_in))
    want = min(max(int(np.rint(np.float32(v / np.float32(s_out)))) + zy, 0), 255)
    got = K.requantize_tensor(np.array([[x]]), None, None, x_zero_point=zx, y_zero_point=zy, lo=0, hi=255,
                              requant="float32_dq", scale=np.array([s_in, s_out], np.float32))
    assert int(got[0, 0]) == want

"""Integer nonlinearities: NumPy reference vs torch twin (zero differing elements), exactness
of the integer square root, and accuracy against float at 8-bit inputs (documented bounds)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from integer_ref import nonlinear as N
from quantsim.emulate import nonlinear as T

SETTINGS = settings(max_examples=40, deadline=None)
scales = st.floats(min_value=1e-5, max_value=4.0, allow_nan=False, allow_infinity=False)


def _ints(rng, shape, bits):
    hi = 2 ** (bits - 1) - 1
    return rng.integers(-hi, hi + 1, shape, dtype=np.int64)


def _shape(data, last_max=70):
    rank = data.draw(st.integers(0, 3))
    lead = [data.draw(st.integers(1, 4)) for _ in range(rank)]
    return tuple(lead) + (data.draw(st.integers(1, last_max)),)


# --- integer primitives ---------------------------------------------------------------------------

EDGES = [0, 1, 2, 3, 4, 2**31 - 1, 2**31, 2**62, 2**63 - 1, (2**31 - 1) ** 2, (2**31) ** 2 - 1,
         (3037000499) ** 2, (3037000499) ** 2 - 1, 2**32 - 1, 2**32]


@SETTINGS
@given(st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=50))
def test_isqrt_equals_math_isqrt(values):
    v = np.array(values + EDGES, dtype=np.int64)
    want = np.array([math.isqrt(int(a)) for a in v], dtype=np.int64)
    assert np.array_equal(N.isqrt(v), want)
    assert np.array_equal(T.isqrt(torch.from_numpy(v)).numpy(), want)


def test_isqrt_dense_small_range():
    v = np.arange(0, 200_000, dtype=np.int64)
    want = np.array([math.isqrt(int(a)) for a in v])
    assert np.array_equal(N.isqrt(v), want)
    assert np.array_equal(T.isqrt(torch.from_numpy(v)).numpy(), want)


@SETTINGS
@given(st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=50))
def test_bit_length(values):
    v = np.array(values + EDGES, dtype=np.int64)
    want = np.array([int(a).bit_length() for a in v])
    assert np.array_equal(N.bit_length(v), want)
    assert np.array_equal(T.bit_length(torch.from_numpy(v)).numpy(), want)


def test_grid_shift():
    for s in (1e-7, 3e-5, 2.0**-14, 2.0**-15, 0.0123, 0.1, 1.0, 7.5, 300.0):
        t = N.grid_shift(s)
        g = math.ldexp(s, -t)
        assert 2.0**-15 < g <= 2.0**-14


# --- twins: zero differing elements ---------------------------------------------------------------

@SETTINGS
@given(st.data(), scales, st.integers(2, 24), st.integers(2, 16))
def test_softmax_twins_agree(data, scale, in_bits, out_bits):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = _ints(rng, _shape(data), in_bits)
    a, sa = N.i_softmax(x, scale, out_bits)
    b, sb = T.i_softmax(torch.from_numpy(x), scale, out_bits)
    assert sa == sb == 2.0**-out_bits
    assert np.array_equal(a, b.numpy())
    assert a.min() >= 0 and a.max() <= 2**out_bits - 1


@SETTINGS
@given(st.data(), scales, st.integers(2, 24))
def test_exp_twins_agree(data, scale, in_bits):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = -np.abs(_ints(rng, _shape(data), in_bits))
    a, sa = N.i_exp(x, scale)
    b, sb = T.i_exp(torch.from_numpy(x), scale)
    assert sa == sb and np.array_equal(a, b.numpy())
    assert (a >= 0).all()


@SETTINGS
@given(st.data(), scales, st.integers(2, 24), st.integers(2, 16), st.floats(0.05, 20.0))
def test_gelu_twins_agree(data, scale, in_bits, out_bits, out_ratio):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = _ints(rng, _shape(data), in_bits)
    out_scale = scale * out_ratio
    a, sa = N.i_gelu(x, scale, out_scale, out_bits)
    b, sb = T.i_gelu(torch.from_numpy(x), scale, out_scale, out_bits)
    assert sa == sb == out_scale
    assert np.array_equal(a, b.numpy())


@SETTINGS
@given(st.data(), scales, st.integers(2, 16), st.integers(2, 16), st.floats(1e-4, 10.0),
       st.sampled_from([0.0, 1e-6, 1e-5, 1e-3]))
def test_layernorm_twins_agree(data, scale, in_bits, out_bits, out_scale, eps):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    shape = _shape(data, last_max=300)
    x = _ints(rng, shape, in_bits)
    if data.draw(st.booleans()):  # constant rows: zero variance
        x[..., :] = x[..., :1]
    c = shape[-1]
    gamma = rng.normal(1, 0.5, c) * data.draw(st.sampled_from([1.0, 0.01, 100.0]))
    beta = rng.normal(0, 0.5, c)
    a, sa = N.i_layernorm(x, scale, gamma, beta, eps, out_scale, out_bits, in_bits)
    b, sb = T.i_layernorm(torch.from_numpy(x), scale, gamma, beta, eps, out_scale, out_bits, in_bits)
    assert sa == sb and np.array_equal(a, b.numpy())


def test_layernorm_rejects_out_of_range_input():
    x = np.array([[200, 0, 3]])
    with pytest.raises(ValueError, match="8-bit"):
        N.i_layernorm(x, 0.1, np.ones(3), np.zeros(3), 1e-6, 0.05, 8, in_bits=8)
    with pytest.raises(ValueError, match="8-bit"):
        T.i_layernorm(torch.from_numpy(x), 0.1, np.ones(3), np.zeros(3), 1e-6, 0.05, 8, in_bits=8)


# --- accuracy against float at 8-bit inputs (the bounds documented in the report) ------------------

@pytest.mark.parametrize("scale", [0.01, 0.03, 0.1, 0.3])
def test_softmax_accuracy_8bit(scale):
    """8-bit scores, 8-bit output (LSB 2^-8): max abs error <= 0.0041 (one output LSB; the
    polynomial's ~2e-3 relative error plus rounding, and 1 - 2^-8 saturation); the mean error
    within 2e-4 of the float mode's (whose error is the output rounding alone)."""
    rng = np.random.default_rng(0)
    x = _ints(rng, (64, 65), 8)
    y, s = N.i_softmax(x, scale, 8)
    ref = torch.softmax(torch.from_numpy(x * scale), -1).numpy()
    err = np.abs(y * s - ref)
    yf, _ = N.float_softmax(x, scale, 8)
    assert err.max() <= 0.0041 and err.mean() <= np.abs(yf * s - ref).mean() + 2e-4


def test_softmax_16bit_output_is_close():
    rng = np.random.default_rng(1)
    x = _ints(rng, (64, 65), 8)
    y, s = N.i_softmax(x, 0.05, 16)
    ref = torch.softmax(torch.from_numpy(x * 0.05), -1).numpy()
    assert np.abs(y * s - ref).max() <= 2.5e-3  # the exp polynomial's error dominates


@pytest.mark.parametrize("scale", [0.02, 0.05, 0.1])
def test_gelu_accuracy_8bit(scale):
    """8-bit input and output at the input scale: |err| <= 0.02 (I-BERT's erf polynomial)
    + half an output LSB."""
    x = np.arange(-127, 128, dtype=np.int64)
    y, s = N.i_gelu(x, scale, scale, 8)
    ref = F.gelu(torch.from_numpy(x * scale)).numpy()
    assert np.abs(y * s - ref).max() <= 0.02 + 0.5 * s


@pytest.mark.parametrize("c,scale", [(192, 0.05), (768, 0.01), (8, 0.2)])
def test_layernorm_accuracy_8bit(c, scale):
    """8-bit input, 8-bit output: |err| <= 0.52 output LSB (rounding, plus < 0.02 LSB)."""
    rng = np.random.default_rng(2)
    x = np.clip(np.round(rng.normal(0, 30, (128, c)) + rng.normal(0, 15, (128, 1))), -127, 127).astype(np.int64)
    gamma, beta = rng.normal(1, 0.3, c), rng.normal(0, 0.2, c)
    ref = F.layer_norm(torch.from_numpy(x * scale), (c,), torch.from_numpy(gamma), torch.from_numpy(beta),
                       1e-6).numpy()
    out_scale = np.abs(ref).max() / 127
    y, s = N.i_layernorm(x, scale, gamma, beta, 1e-6, out_scale, 8, in_bits=8)
    assert np.abs(y * s - ref).max() <= 0.52 * out_scale


def test_softmax_preserves_order_within_rows():
    rng = np.random.default_rng(3)
    x = _ints(rng, (200, 40), 8)
    y, _ = N.i_softmax(x, 0.08, 8)
    order = np.argsort(x, axis=-1, kind="stable")
    assert (np.diff(np.take_along_axis(y, order, -1), axis=-1) >= 0).all()


# --- float mode: a deviation, never bit-exact ---------------------------------------------------

def test_float_mode_deviation_helpers():
    rng = np.random.default_rng(4)
    x = _ints(rng, (16, 65), 8)
    for op, kw in (("softmax", {}), ("gelu", {}),
                   ("layernorm", {"gamma": np.ones(65), "beta": np.zeros(65), "eps": 1e-6, "out_scale": 0.03})):
        d = T.measure_deviation(op, torch.from_numpy(x), 0.05, **kw)
        assert d["float_max_lsb"] <= 0.5 + 1e-3  # float mode: only the output rounding
        assert d["int_max_lsb"] <= 1.0 and d["modes_max_lsb"] <= 1
    a, s = N.float_softmax(x, 0.05)
    b, _ = T.float_softmax(torch.from_numpy(x), 0.05)
    dev = N.deviation(a, b.numpy(), s)
    assert dev["max_abs_lsb"] <= 1  # NumPy vs torch float mode: close, not guaranteed identical
    a, _ = N.float_gelu(x, 0.05)
    b, _ = T.float_gelu(torch.from_numpy(x), 0.05)
    assert N.deviation(a, b.numpy())["max_abs_lsb"] <= 1

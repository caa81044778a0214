"""Physics the hardware model must keep: b^2 MACs, b-linear DRAM, packing, toggles."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hwmodel.arch import load_accelerator
from hwmodel.energy import (CALIBRATION_SEED, e_mac_b2, mac_energy_toggle, random_operands,
                            seed_energy)
from hwmodel.mapping import map_conv, map_eltwise, packed_bytes
from hwmodel.toggles import count_toggles, encode, im2col, weight_gemm

WS = load_accelerator("scalesim-32x32-ws")
OS = load_accelerator("scalesim-32x32-os")


# ---- seed model ------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["max", "product"])
def test_halving_bits_quarters_mac_and_halves_dram(form):
    mem8 = [(1000, 8), (500, 8), (700, 8)]
    mem4 = [(n, 4) for n, _ in mem8]
    e8 = seed_energy(WS, 12345, 8, 8, mem8, form)
    e4 = seed_energy(WS, 12345, 4, 4, mem4, form)
    assert e4["e_seed_mac_pj"] == pytest.approx(e8["e_seed_mac_pj"] / 4, rel=1e-12)
    assert e4["e_seed_dram_pj"] == pytest.approx(e8["e_seed_dram_pj"] / 2, rel=1e-12)


def test_mac_energy_uses_larger_width():
    assert e_mac_b2(WS, 4, 8) == e_mac_b2(WS, 8, 8) == WS.energy.e_mac8_pj
    assert e_mac_b2(WS, 4, 8, "product") == pytest.approx(WS.energy.e_mac8_pj / 2)


# ---- packing ---------------------------------------------------------------------------
def test_sub_byte_packing():
    n = 3 * 1024
    assert packed_bytes(n, 4) * 2 == packed_bytes(n, 8)
    assert packed_bytes(n, 6) * 4 == packed_bytes(n, 8) * 3
    assert packed_bytes(3, 4) == 2  # rounded up to whole bytes


def test_dram_bytes_of_a_tensor_pack():
    shape = (1, 64, 16, 16)
    r8 = map_eltwise("clamp", [shape], shape, WS, in_bits=[8], out_bits=8)
    r4 = map_eltwise("clamp", [shape], shape, WS, in_bits=[4], out_bits=4)
    r6 = map_eltwise("clamp", [shape], shape, WS, in_bits=[6], out_bits=6)
    assert 2 * r4["dram_rd_ifmap_bytes"] == r8["dram_rd_ifmap_bytes"]
    assert 4 * r6["dram_wr_ofmap_bytes"] == 3 * r8["dram_wr_ofmap_bytes"]
    assert r4["dram_bursts"] * 2 == r8["dram_bursts"]


def test_conv_weight_dram_bytes_pack():
    # 1x1 conv, weights 64*64: every weight is fetched once in ws
    a = map_conv((1, 64, 8, 8), (64, 64, 1, 1), WS, w_bits=8)
    b = map_conv((1, 64, 8, 8), (64, 64, 1, 1), WS, w_bits=4)
    assert a["dram_rd_filter"] == b["dram_rd_filter"] == 64 * 64
    assert b["dram_rd_filter_bytes"] * 2 == a["dram_rd_filter_bytes"]


# ---- toggles ---------------------------------------------------------------------------
@pytest.mark.parametrize("df", ["ws", "os", "is"])
def test_all_zero_stream_has_no_toggles(df):
    x = np.zeros((50, 40), np.int64)
    w = np.zeros((40, 37), np.int64)
    t = count_toggles(x, w, 8, True, 8, True, df, 8, 8)
    assert t["mult_toggles"] == t["mult_toggles_signmag"] == t["mult_toggles_offset"] == 0
    assert t["n_mac"] == 50 * 40 * 37


def _popcount(v: int) -> int:
    return bin(v).count("1")


def _enc(v: int, bits: int, signed: bool, enc: str) -> int:
    if not signed or enc == "own":
        return v & ((1 << bits) - 1)
    if enc == "signmag":
        return ((1 << (bits - 1)) if v < 0 else 0) | abs(v)
    return v + (1 << (bits - 1))


def oracle(x, w, xb, xs, wb, ws_, df, R, C, enc):
    """Plain-Python walk over every PE of every fold (see hwmodel.toggles docstring)."""
    M, K = len(x), len(x[0])
    N = len(w[0])
    X = [[_enc(v, xb, xs, enc) for v in row] for row in x]
    W = [[_enc(v, wb, ws_, enc) for v in row] for row in w]
    total = 0
    zx, zw = _enc(0, xb, xs, enc), _enc(0, wb, ws_, enc)  # bubbles and resets hold encoded 0
    if df == "ws":
        reg = {}
        for fc in range(-(-N // C)):
            for fr in range(-(-K // R)):
                for r in range(min(R, K - fr * R)):
                    for c in range(min(C, N - fc * C)):
                        k, n = fr * R + r, fc * C + c
                        total += _popcount(reg.get((r, c), zw) ^ W[k][n])
                        reg[(r, c)] = W[k][n]
                        prev = zx
                        for m in range(M):
                            total += _popcount(prev ^ X[m][k])
                            prev = X[m][k]
    elif df == "os":
        for fc in range(-(-N // C)):
            for fr in range(-(-M // R)):
                for r in range(min(R, M - fr * R)):
                    for c in range(min(C, N - fc * C)):
                        m, n = fr * R + r, fc * C + c
                        px, pw = zx, zw
                        for k in range(K):
                            total += _popcount(px ^ X[m][k]) + _popcount(pw ^ W[k][n])
                            px, pw = X[m][k], W[k][n]
    else:
        reg = {}
        for fc in range(-(-M // C)):
            for fr in range(-(-K // R)):
                for r in range(min(R, K - fr * R)):
                    for c in range(min(C, M - fc * C)):
                        k, m = fr * R + r, fc * C + c
                        total += _popcount(reg.get((r, c), zx) ^ X[m][k])
                        reg[(r, c)] = X[m][k]
                        prev = zw
                        for n in range(N):
                            total += _popcount(prev ^ W[k][n])
                            prev = W[k][n]
    return total


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9), st.integers(2, 8),
       st.booleans(), st.integers(2, 8), st.sampled_from(["ws", "os", "is"]),
       st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_toggles_match_python_oracle(M, K, N, xb, xs, wb, df, R, C, seed):
    rng = np.random.default_rng(seed)
    xlo, xhi = (-(2 ** (xb - 1) - 1), 2 ** (xb - 1) - 1) if xs else (0, 2**xb - 1)
    whi = 2 ** (wb - 1) - 1
    x = rng.integers(xlo, xhi + 1, (M, K))
    w = rng.integers(-whi, whi + 1, (K, N))
    t = count_toggles(x, w, xb, xs, wb, True, df, R, C)
    xl, wl = x.tolist(), w.tolist()
    for enc, key in (("own", "mult_toggles"), ("signmag", "mult_toggles_signmag"),
                     ("offset", "mult_toggles_offset")):
        assert t[key] == oracle(xl, wl, xb, xs, wb, True, df, R, C, enc), (enc, df)


def test_non_negative_values_same_bits_unsigned_or_twos_complement():
    # A non-negative value has the same bit pattern in b-bit two's complement and in
    # plain binary: holding post-ReLU values unsigned changes toggles only via the values.
    rng = np.random.default_rng(1)
    q = rng.integers(0, 128, 1000)
    assert np.array_equal(encode(q, 8, True), encode(q, 8, False))


def test_post_relu_unsigned_toggles_less_than_signed_twos_complement():
    """Post-ReLU activations held unsigned vs the same real activations kept signed
    (pre-ReLU values in two's complement, the ReLU applied after the multiplier as a
    datapath that does not fold it would): sign changes around zero flip the high bits."""
    rng = np.random.default_rng(7)
    pre = np.round(rng.normal(0, 20, (256, 64))).clip(-127, 127).astype(np.int64)
    post = np.maximum(pre, 0)
    w = rng.integers(-127, 128, (64, 32))
    for df in ("ws", "os"):
        t_uns = count_toggles(post, w, 8, False, 8, True, df, 32, 32)["mult_toggles"]
        t_sig = count_toggles(pre, w, 8, True, 8, True, df, 32, 32)["mult_toggles"]
        assert t_uns < t_sig
    # and sign-magnitude recovers most of two's complement's excess on signed data
    t = count_toggles(pre, w, 8, True, 8, True, "ws", 32, 32)
    assert t["mult_toggles_signmag"] < t["mult_toggles"]


@pytest.mark.parametrize("df", ["ws", "os", "is"])
def test_toggle_model_equals_b2_on_random_8bit(df):
    accel = {"ws": WS, "os": OS}.get(df) or WS.with_dataflow("is")
    x, w = random_operands(CALIBRATION_SEED + 12345)
    t = count_toggles(x, w, 8, True, 8, True, df, accel.rows, accel.cols)
    e_tog = mac_energy_toggle(accel, t["n_mac"], t["mult_toggles"], 8, 8)
    e_b2 = t["n_mac"] * e_mac_b2(accel, 8, 8)
    assert e_tog == pytest.approx(e_b2, rel=0.02)


# ---- im2col ----------------------------------------------------------------------------
def test_im2col_matches_direct_convolution():
    rng = np.random.default_rng(3)
    x = rng.integers(-5, 6, (2, 4, 7, 6))
    w = rng.integers(-3, 4, (6, 2, 3, 2))  # groups=2
    stride, dil, pad, g = (2, 1), (1, 2), (1, 0, 2, 1), 2
    outs = []
    for gi in range(g):
        X = im2col(x, (3, 2), stride=stride, dilation=dil, padding=pad, groups=g, group=gi)
        outs.append(X @ weight_gemm(w, g, gi))
    y = np.concatenate(outs, axis=1)
    # direct reference
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])))
    OH = (xp.shape[2] - dil[0] * 2 - 1) // stride[0] + 1
    OW = (xp.shape[3] - dil[1] * 1 - 1) // stride[1] + 1
    ref = np.zeros((2, 6, OH, OW), np.int64)
    for n in range(2):
        for o in range(6):
            gi = o // 3
            for i in range(OH):
                for j in range(OW):
                    for c in range(2):
                        for a in range(3):
                            for b in range(2):
                                ref[n, o, i, j] += (xp[n, gi * 2 + c, i * stride[0] + a * dil[0],
                                                       j * stride[1] + b * dil[1]] * w[o, c, a, b])
    assert np.array_equal(y, ref.transpose(0, 2, 3, 1).reshape(-1, 6))


def test_im2col_pads_with_zero_point():
    x = np.full((1, 1, 2, 2), 9)
    X = im2col(x, (3, 3), padding=(1, 1, 1, 1), zero_point=5)
    assert X[0].tolist() == [5, 5, 5, 5, 9, 9, 5, 9, 9]


@pytest.mark.parametrize("df", ["ws", "os", "is"])
@pytest.mark.parametrize("groups,cin,cout", [(2, 4, 6), (4, 4, 4), (3, 6, 9)])
def test_grouped_toggles_equal_the_sum_over_groups(df, groups, cin, cout):
    from hwmodel.toggles import count_toggles_grouped, grouped_gemm_operands
    rng = np.random.default_rng(groups * 100 + cin)
    x = rng.integers(-7, 8, (1, cin, 7, 6))
    w = rng.integers(-7, 8, (cout, cin // groups, 3, 3))
    conv = dict(stride=(2, 1), padding=(1, 1, 0, 1))
    ref = dict.fromkeys(("mult_toggles", "mult_toggles_signmag", "mult_toggles_offset", "n_mac"), 0)
    for gi in range(groups):
        t = count_toggles(im2col(x, (3, 3), groups=groups, group=gi, **conv), weight_gemm(w, groups, gi),
                          4, True, 4, True, df, 3, 2)
        for k in ref:
            ref[k] += t[k]
    xg, wg = grouped_gemm_operands(x, w, (3, 3), groups, **conv)
    assert count_toggles_grouped(xg, wg, groups, 4, True, 4, True, df, 3, 2) == ref

"""Integer operations of the ViT nonlinearities on the vector unit, and their energy.

softmax, GELU and LayerNorm run integer-only (I-BERT kernels, integer_ref.nonlinear) on a
vector unit beside the MAC array (`cols` lanes, one operation step per lane per cycle).
For each op this module lists the kernel's integer operations stage by stage, in the order
integer_ref.nonlinear's ``softmax_int``, ``gelu_int`` and ``layernorm_int`` execute them, as
``Stage(kind, count, bits, steps)``: `count` operations of `kind` on a `bits`-wide datapath,
each taking `steps` lane steps (1 except for division and square root). Widths come from the
node's declared input/output widths and its lowering-time constants (attrs), i.e. the width
the intermediate values can reach, not integer_ref's int64 container.

Kinds and energy per operation at width b (pJ), from the accelerator's energy table
(hwmodel.arch; Horowitz, ISSCC 2014, 45 nm, the figures the presets cite):

    add    add, subtract, compare, min/max, negate, the +2^(n-1) of a rounding shift:
           e_add32 * b/32. Adder energy grows about linearly with width: Horowitz gives 0.03 pJ
           at 8 bits and 0.1 pJ at 32 bits (0.1 * 8/32 = 0.025).
    shift  a shift (by a constant or by a per-element amount): priced as an add of the same
           width, e_add32 * b/32 (a b-bit barrel shifter / register stage; an upper estimate for
           shifts by constants, which are wiring).
    mul    multiply: e_mac8 * (b/8)^2, the MAC array's own b^2 law (energy.e_mac_b2, "max" form
           with b the wider operand): Horowitz 8b mult 0.2 pJ, 32b mult 3.1 pJ = 0.2 * (32/8)^2
           within 4 %; e_mac8 includes the MAC's add, so this slightly over-prices a bare multiply.
    div    integer division, restoring: one b-bit subtract per quotient bit, steps = quotient
           bits, each step priced as an add of width b.
    sqrt   integer square root of a b-bit radicand, digit by digit (non-restoring): b/2 result
           bits, one b-bit subtract each, priced as adds. integer_ref computes the same
           floor(sqrt(x)) by Newton steps (arith.isqrt); hardware would use the digit recurrence.
    lut    one read of a b-bit table entry (op lut: hardswish, sigmoid, ... over the 2^b input
           codes): priced as an on-chip SRAM read of b bits, e_sram_bit * b. An upper estimate:
           that constant describes the operand buffers; a 2^8-entry table is a small register file.

    shift_add  one term of attention·V under log2 attention (a matmul with attrs a_log2): V's
           integer shifted by K - k (the probability's log2 code) and added into the
           accumulator, in a shift-and-add PE in place of a multiplier: priced as a shift plus
           an add at the accumulator's width b (the shift rule above, then the add rule),
           2 * e_add32 * b/32. Derived from Horowitz's 32-bit add (0.1 pJ), not measured;
           decoding the zero code (a gate) is not priced. These terms run in the array (the
           GEMM mapping gives cycles and traffic), not on the vector unit; they are counted
           here (ops_shift_add) because they are not MACs: such a matmul has n_mac 0.

Elementwise ops outside the ViT (CNN activations and squeeze-and-excitation):
    lut    x - in_min (an add, only where in_min != 0), one table read per element.
    mul    (a - za)(b - zb): one multiply per OUTPUT element at the wider operand width (the
           broadcast operand is re-read, not re-multiplied), the zero-point subtractions where a
           zero point is non-zero, then the dyadic requantization of the (a_bits + b_bits)-bit
           product (acc*M, +2^(n-1), >>n, clamp).

FP32 reference (the unquantized model's nonlinearities): the same stage list priced per step
at e_fp32_mult (mul) or e_fp32_add (everything else): a rough stand-in for a float
exp/erf/rsqrt sequence of similar length, stated as such.

A division by a lowering-time constant (exp's floor(d / x0): 5 quotient bits; LayerNorm's
mean) is counted as a division, one subtract per quotient bit, not as a reciprocal multiply.
Counts are exact functions of the shape (per element or per row), never of the data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from integer_ref.nonlinear import EXP_CLIP_LN2, LN_FRAC_BITS, LN_GAMMA_BITS, LN_ROW_BITS, LOG2_MANTISSA_BITS

KINDS = ("add", "shift", "mul", "div", "sqrt", "lut", "shift_add")
VECTOR_OPS = ("softmax", "gelu", "layernorm", "l2norm")


@dataclass(frozen=True)
class Stage:
    kind: str
    count: int
    bits: int
    steps: int = 1
    what: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown vector op kind {self.kind!r}")


def _bl(v) -> int:
    return int(abs(int(v))).bit_length()


def _clog2(n: int) -> int:
    return max(0, math.ceil(math.log2(max(int(n), 1))))


def _requant_stages(n: int, acc_bits: int, out_bits: int, what: str) -> list[Stage]:
    """arith.multiply_rshift_round then clamp: acc*M (M < 2^31), + 2^(n-1), >> n, two compares."""
    wide = acc_bits + 31
    return [Stage("mul", n, max(acc_bits, 31), what=f"{what}: acc*M"),
            Stage("add", n, wide, what=f"{what}: +2^(n-1)"), Stage("shift", n, wide, what=f"{what}: >>n"),
            Stage("add", 2 * n, out_bits + 1, what=f"{what}: clamp")]


def softmax_stages(n: int, row: int, in_bits: int, attrs: dict, masked: bool = False) -> list[Stage]:
    """integer_ref.nonlinear.softmax_int over rows of `row` elements (n elements in all); masked (Swin's
    shifted windows): one select per element before the row max and one after exp (e := 0)."""
    e = attrs["exp"]
    rows = n // row
    t, x0, b, c = int(e["shift"]), int(e["x0"]), int(e["b"]), int(e["c"])
    P, ob = int(attrs["recip_bits"]), int(attrs["out_bits"])
    bd = _bl(EXP_CLIP_LN2 * x0) + 1          # d after the grid shift and the clip: >= 30*x0
    brb = _bl(abs(x0) + abs(b)) + 1          # r + b with x0 < r <= 0
    bz = _bl(c) + 1                          # 0 < z <= c (r(r+b) <= 0)
    bsum = bz + _clog2(row)                  # sum of a row of e
    qf = max(1, P - _bl(c) + 1)              # f = 2^P / sum < 2^P / c
    st = [Stage("add", n, in_bits, what="mask: x or min before the row max")] if masked else []
    st += [
        Stage("add", rows * (row - 1), in_bits, what="row max"),
        Stage("add", n, in_bits + 1, what="x - max"),
        Stage("add", n, in_bits + 1, what="exp: clip at -pre_clip"),
        Stage("shift", n, bd, what="exp: onto the fine grid"),
    ]
    if t < 0:
        st.append(Stage("add", n, bd, what="exp: rounding of the grid shift"))
    st += [
        Stage("add", n, bd, what="exp: clip at 30*x0"),
        Stage("div", n, bd, steps=_bl(EXP_CLIP_LN2), what="exp: q = d // x0"),
        Stage("mul", n, bd, what="exp: x0*q"), Stage("add", n, bd, what="exp: r = d - x0*q"),
        Stage("add", n, brb, what="exp: r + b"), Stage("mul", n, brb, what="exp: r(r + b)"),
        Stage("add", n, bz, what="exp: + c"), Stage("shift", n, bz, what="exp: >> q"),
    ]
    if masked:
        st += [Stage("add", n, in_bits + 1, what="mask: min(x - max, 0)"), Stage("add", n, bz, what="mask: e or 0")]
    st += [
        Stage("add", rows * (row - 1), bsum, what="row sum"),
        Stage("div", rows, bsum, steps=qf, what="f = 2^P // sum"),
        Stage("mul", n, max(bz, qf), what="e*f"),
    ]
    if attrs["quant"] == "log2":  # integer_ref.nonlinear.softmax_log2_codes
        kb = _bl(P) + 1
        return st + [
            Stage("shift", n, P + 1, steps=6, what="log2: bit length (6-step shift search)"),
            Stage("add", n, P + 1, steps=6, what="log2: bit length (6 compares)"),
            Stage("shift", n, P + 1, what="log2: 32-bit mantissa"),
            Stage("add", n, LOG2_MANTISSA_BITS + 2, what="log2: mantissa >= ceil(sqrt2 * 2^31)"),
            Stage("add", n, kb, what="log2: k = P - L - round"),
            Stage("add", 2 * n, kb, what="log2: zero code (v = 0 or k > K)"),
        ]
    return st + [
        Stage("add", n, P + 1, what="+2^(P-out-1)"), Stage("shift", n, P + 1, what=">> (P-out)"),
        Stage("add", 2 * n, ob + 1, what="clamp"),
    ]


def gelu_stages(n: int, in_bits: int, attrs: dict) -> list[Stage]:
    """integer_ref.nonlinear.gelu_int, elementwise."""
    t, pre, clip, one = int(attrs["shift"]), int(attrs["pre_clip"]), int(attrs["clip"]), int(attrs["one"])
    bu = _bl(pre << max(t, 0)) + 1           # |x| clipped, on the grid
    bone = _bl(one) + 2                      # c1 + E in [0, 2*c1]
    bacc = in_bits + bone
    st = [Stage("add", n, in_bits, what="|x|"), Stage("add", n, in_bits, what="min(|x|, pre_clip)"),
          Stage("shift", n, bu, what="onto the grid")]
    if t < 0:
        st.append(Stage("add", n, bu, what="rounding of the grid shift"))
    st += [
        Stage("add", n, bu, what="min(u, B)"), Stage("add", n, bu, what="u - B"),
        Stage("mul", n, bu, what="(u - B)^2"), Stage("add", n, bone, what="c1 - (u - B)^2"),
        Stage("add", n, bone, what="sign(x) * (.)"), Stage("add", n, bone, what="c1 + E"),
        Stage("mul", n, max(in_bits, bone), what="x (c1 + E)"),
    ]
    return st + _requant_stages(n, bacc, int(attrs["out_bits"]), "requant")


def layernorm_stages(n: int, row: int, in_bits: int, attrs: dict) -> list[Stage]:
    """integer_ref.nonlinear.layernorm_int over rows of `row` (= channels) elements; attrs center 0
    (l2norm: F.normalize) skips the mean's stages."""
    rows = n // row
    h, k, Q = int(attrs["mean_shift"]), int(attrs["sqrt_shift"]), int(attrs["recip_bits"])
    bsx = in_bits + _clog2(row) + h + 1          # (sum x) << h, doubled for round_div
    by = in_bits + h + 1                          # y = x*2^h - mean
    bv = min(LN_ROW_BITS, 2 * by + _clog2(row))  # v = sum y^2 + eps
    binv = max(1, Q - k + 1)                      # inv = 2^Q // r with r >= 2^k
    bu = LN_FRAC_BITS + 2                         # u = z/sqrt(C) * 2^15 with |z| <= sqrt(C)
    bacc = max(bu, LN_GAMMA_BITS) + bu + 1        # u*gamma + beta
    mean = [
        Stage("add", rows * (row - 1), bsx, what="sum x"),
        Stage("shift", rows, bsx, what="(sum x) << h"),
        Stage("add", rows, bsx, what="2a + C (round_div)"),
        Stage("div", rows, bsx, steps=by, what="mean = round((sum x << h) / C)"),
    ] if int(attrs["center"]) else []
    return mean + [
        Stage("shift", n, by, what="x << h"),
    ] + ([Stage("add", n, by, what="y = x*2^h - mean")] if mean else []) + [
        Stage("mul", n, by, what="y^2"), Stage("add", n, bv, what="sum y^2 + eps"),
        Stage("shift", rows, LN_ROW_BITS, what="v << 2k"),
        Stage("sqrt", rows, LN_ROW_BITS, steps=LN_ROW_BITS // 2, what="r = isqrt(v << 2k)"),
        Stage("add", rows, LN_ROW_BITS // 2 + 1, what="max(r, 1)"),
        Stage("div", rows, LN_ROW_BITS // 2 + 1, steps=binv, what="inv = 2^Q // r"),
        Stage("mul", n, max(by, binv), what="y*inv"),
        Stage("add", n, by + binv, what="+2^(s-1)"), Stage("shift", n, by + binv, what=">> s"),
        Stage("mul", n, max(bu, LN_GAMMA_BITS), what="u*gamma"), Stage("add", n, bacc, what="+ beta"),
    ] + _requant_stages(n, bacc, int(attrs["out_bits"]), "requant")


def lut_stages(n: int, in_bits: int, out_bits: int, in_min: int) -> list[Stage]:
    """integer_ref.kernels.lut over n elements."""
    st = [Stage("add", n, in_bits + 1, what="x - in_min")] if in_min else []
    return st + [Stage("lut", n, out_bits, what="table[x - in_min]")]


def mul_stages(n: int, a_bits: int, b_bits: int, out_bits: int, zero_points=(0, 0)) -> list[Stage]:
    """integer_ref.kernels.mul with n output elements."""
    st = [Stage("add", n, b + 1, what="x - zx") for b, z in zip((a_bits, b_bits), zero_points) if z]
    wide = max(a_bits, b_bits) + (1 if any(zero_points) else 0)
    st.append(Stage("mul", n, wide, what="(a - za)(b - zb)"))
    return st + _requant_stages(n, a_bits + b_bits, out_bits, "requant")


def log2_matmul_stages(n_terms: int, b_bits: int, max_exp: int) -> list[Stage]:
    """integer_ref.kernels_vit.log2_matmul_acc: n_terms = heads·M·K·N shift-and-add terms, V at
    b_bits shifted by up to max_exp; the sum of a row stays below 2·max|v|·2^K (kernels_vit.log2_bound)."""
    acc = b_bits + int(max_exp) + 1
    return [Stage("shift_add", int(n_terms), acc, what="attn·v: acc += v << (K - k)")]


def vector_stages(op: str, in_shape, in_bits: int, attrs: dict, masked: bool = False) -> list[Stage]:
    """The integer stages of one softmax/gelu/layernorm/l2norm node on an input of `in_shape`
    (masked: a softmax with a mask).

    Float-mode nodes (attrs mode "float") get no stages: their float arithmetic is not modelled
    (their memory traffic is)."""
    if attrs["mode"] != "integer":
        return []
    n = int(np.prod(in_shape))
    row = int(in_shape[-1])
    if op == "softmax":
        return softmax_stages(n, row, in_bits, attrs, masked)
    if op == "gelu":
        return gelu_stages(n, in_bits, attrs)
    if op in ("layernorm", "l2norm"):
        return layernorm_stages(n, row, in_bits, attrs)
    raise ValueError(f"no vector-unit op list for {op!r}")


def op_counts(stages: list[Stage]) -> dict:
    """Operations per kind (ops_add, ...; division and square root counted once each) and lane
    steps in all (n_vec_steps: what the vector unit's cycles are made of)."""
    out = {f"ops_{k}": 0 for k in KINDS}
    for s in stages:
        out[f"ops_{s.kind}"] += s.count
    out["n_vec_ops"] = sum(out[f"ops_{k}"] for k in KINDS)
    out["n_vec_steps"] = sum(s.count * s.steps for s in stages)
    return out


def e_op(accel, kind: str, bits: int) -> float:
    """Energy of one step of an operation of `kind` at width `bits` (pJ), see the module docstring."""
    en = accel.energy
    if kind == "mul":
        return en.e_mac8_pj * (bits / 8) ** 2
    if kind == "lut":
        return en.e_sram_bit_pj * bits
    if kind == "shift_add":
        return 2 * en.e_add32_pj * bits / 32
    return en.e_add32_pj * bits / 32


def stages_energy(accel, stages: list[Stage]) -> float:
    return float(sum(s.count * s.steps * e_op(accel, s.kind, s.bits) for s in stages))


def stages_energy_fp32(accel, stages: list[Stage]) -> float:
    en = accel.energy
    return float(sum(s.count * s.steps * (en.e_fp32_mult_pj if s.kind == "mul" else en.e_fp32_add_pj)
                     for s in stages))

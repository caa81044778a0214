"""Map IR nodes onto a MAC array: GEMM view, folds, cycles, SRAM and DRAM traffic.

Every conv2d/linear is a GEMM per group: M = N_batch*OH*OW output pixels, K = (C/g)*kh*kw
(window order kh, kw, c over an NHWC ifmap, as SCALE-Sim), N = O/g. A depthwise conv is g
GEMMs with N = 1 and is mapped as such (honestly poorly: one PE column busy).

Compute and SRAM counts follow SCALE-Sim 3.0.0's systolic compute models
(scalesim/compute/systolic_compute_{ws,os,is}.py), fold order column-fold outer,
row-fold inner. Each dataflow is a hwmodel.dataflow.Dataflow (the dimension on the rows,
on the columns, the streamed one), whose docstring has the table of folds, cycles per fold
and SRAM reads (ws: rows hold K, cols hold N, M streams; os: rows M, cols N, K streams; is:
rows K, cols M, N streams): fold_counts, map_gemm_layer and the replay read its fields
(folds per dimension, fill cycles, which operand is stationary) instead of branching on
the name.

DRAM reads of ifmap and filter replay each operand's demand stream (the exact order of
SCALE-Sim's skewed demand matrices) through SCALE-Sim's double-buffered read buffer in its
bandwidth-estimate mode (memory/read_buffer_estimate_bw.py). That buffer keeps the
addresses of the current 'active half' (50 of 100 sets of floor(capacity/100) elements);
once that many distinct new addresses have been fetched the active half is replaced, so an
address is fetched again when it returns after the window moved on: what fits is reused,
what does not is fetched again. Capacity in elements = SRAM bytes * 8 / bits (SCALE-Sim
fixes 1-byte words, so it agrees at 8 bits). One numba loop (_replay) walks the streams of
every dataflow: per fold the stationary operand loads its tile, a streaming one runs
SCALE-Sim's skewed stream along the array dimension its spatial dimension lies on.

Our own deviations, each asserted in tests/test_hw_scalesim.py:
- Padding: SCALE-Sim has none (it is given the padded input). Here padded positions are
  zeros injected at the array edge: no SRAM read, no DRAM traffic.
- Partial sums: SCALE-Sim writes every fold's partial ofmap (ws/is: ceil(K/R) per output)
  to DRAM at 1 byte. Our "scalesim" DRAM model keeps partial sums in the ofmap SRAM when one column fold's
  partial sums (at acc_bits) fit in its active half; otherwise they spill: written and read
  back at acc_bits. Final outputs go to DRAM once at the output's bit width.
  sram_wr_ofmap counts every fold's write like SCALE-Sim (ws/is), except that SCALE-Sim's os
  model adds R+C per fold to its write count (a bookkeeping quirk), which we do not.
- Cycles: SCALE-Sim reports the last cycle index (ours minus one per GEMM) and no stalls
  (bandwidth-estimate mode). We report folds * cycles/fold.

Element-wise ops (add, pools, clamp, slice, channel pad) read their inputs from DRAM and
write their output (layer-by-layer execution, no fusion), pass them through SRAM once, run
on a cols-wide vector unit, and count adds (pool sums, comparisons, residual adds), no MACs.
reshape is free. quantize (the graph input) is free: its output is read by its consumer.

Vision Transformer ops:
- matmul (q @ k^T, attn @ v; both operands activations) is one GEMM per head, mapped as a
  grouped linear layer whose weights are the second operand, held in the filter buffer at
  its own activation width (matmul_geometry): same folds, cycles, SRAM and DRAM rules.
  attn @ v under log2 attention (attrs a_log2) maps the same way on shift-and-add PEs: n_mac 0,
  one shift_add per term (hwmodel.vector_ops.log2_matmul_stages), no multiplier toggles; the FP32
  reference still multiplies.
- softmax, gelu, layernorm, l2norm run on the vector unit: read the input, write the output (at
  their declared widths), plus the integer operations of their I-BERT kernels counted and
  priced by hwmodel.vector_ops; cycles cover the larger of the movement and the arithmetic.
  A masked softmax (Swin's shifted windows) reads its mask once (1 bit per entry) and adds
  three selects per element.
- pad and roll (Swin's window padding, cyclic shift) are copies like permute: every element
  moved once, no arithmetic.
- layernorm's gamma/beta, add_const's position embedding and concat_token's class token are
  read once through the filter buffer (constant_operands).
- lut (hardswish, hardsigmoid, sigmoid, silu) and mul (squeeze-and-excitation's x * gate) run
  on the vector unit like the nonlinearities: no MACs (n_mac 0); lut does one table read per
  element (ops_lut) and reads its table once through the filter buffer (2^b entries at the
  output width; none for the FP32 reference, which computes the function); mul does one
  multiply per output element (ops_mul) plus its requantization, reading both inputs (the
  broadcast gate at its own, smaller size) once (hwmodel.vector_ops.mul_stages). add_const counts one add per
  output like add. take reads only the slice it keeps; permute moves every element once.
- concat (DenseNet, Inception, SqueezeNet's fire modules) and slice (ShuffleNet's channel split)
  are pass-through copies on the vector unit, no arithmetic: concat reads every input once and
  writes the joined output (its inputs share its quantization, so nothing is requantized);
  slice reads only the elements it keeps (in_elems) and writes them.

Two DRAM models (Accelerator.dram_model, TOML key dram.model):

- "scalesim": the read-buffer replay above, SCALE-Sim's counts (tested against its reports).
  Pessimistic: the buffer forgets its whole active half each time it fills, so in ws the
  im2col stream re-fetches an ifmap element almost every time it is demanded (ResNet-18
  layer3.1.conv1: 3.6M ifmap elements from DRAM for 50k distinct ones), and partial sums
  of a column fold that do not fit half the ofmap buffer spill to DRAM at acc_bits.
- "reuse" (default): each operand tile is fetched once per reuse window given the SRAM
  sizes (reuse_dram_traffic). The DRAM level is a tiled loop nest over output-row bands
  (m; a band's input rows with their kh-1 halo), input-channel slices (k) and output-
  channel tiles (n), tile sizes n, n/2, n/4, ... 1. An operand tile must fit half its
  buffer (the other half prefetches the next tile) or, when it is the whole operand, the
  whole buffer: what fits is fetched once and stays. In each of the six loop orders an
  operand is re-fetched once per iteration of every loop outside its innermost changing
  loop that does not index it (loop_nest_traffic; checked against an explicit walk in
  tests/test_hw_dram.py); partial sums go to DRAM and back, at acc_bits, only when the k
  loop sits outside the output's loops. The tiling and order moving the fewest bits win.
  Inside the array, where one column fold's partial sums (ws: M x min(N, C); is:
  min(M, C) x N, at acc_bits) exceed half the ofmap buffer, the streamed dimension is cut
  into psum_blocks blocks that fit, each paying its own array fill: cycles =
  folds * (blocks*(2R+C-2) + M) in ws (N in is), and the stationary operand is read from
  SRAM once per block. Otherwise cycles and SRAM reads are those of the SCALE-Sim order
  (SRAM ifmap/filter reads in closed form: padded taps are not read), and toggles follow
  the SCALE-Sim fold order.

DRAM bytes pack sub-byte values: ceil(count*bits/8) (4-bit two per byte, 6-bit four per
three bytes); bursts = ceil(bytes / burst_bytes) per operand transfer.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import njit

from integer_ref.arith import conv_output_size, tf_same_padding
from integer_ref.nonlinear import LN_GAMMA_BITS

from .arch import Accelerator
from .dataflow import dataflow
from .vector_ops import KINDS, VECTOR_OPS, log2_matmul_stages, lut_stages, mul_stages, op_counts, vector_stages

ACTIVE_SETS = 50  # SCALE-Sim: active_buf_frac 0.5 of 100 sets


PARTIAL_READ_OPS = ("take", "slice")  # ops that read only the elements they keep (output-sized)

def buffer_block_elems(sram_bytes: int, bits: int) -> int:
    """Distinct elements the active half of a read buffer holds (SCALE-Sim's set model)."""
    elems = (sram_bytes * 8) // bits
    return max(1, ACTIVE_SETS * (elems // 100))


def packed_bytes(count: int, bits: int) -> int:
    return -(-int(count) * int(bits) // 8)


def bursts(nbytes: int, burst_bytes: int) -> int:
    return -(-int(nbytes) // int(burst_bytes))


# --------------------------------------------------------------------------------------
# Demand-stream replay through the tumbling read buffer (numba)
# --------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _addr(m, k, mh, mw, mi, kh_, kw_, kc, H, W, Ctot):
    h = mh[m] + kh_[k]
    w = mw[m] + kw_[k]
    if h < 0 or h >= H or w < 0 or w >= W:
        return -1
    return ((mi[m] * H + h) * W + w) * Ctot + kc[k]


@njit(cache=True, inline="always")
def _touch(addr, stamp, state):
    # state[0] = block id, state[1] = distinct fetched in block, state[2] = total fetched,
    # state[3] = block size, state[4] = SRAM reads
    state[4] += 1
    if stamp[addr] == state[0]:
        return
    stamp[addr] = np.int32(state[0])
    state[1] += 1
    state[2] += 1
    if state[1] == state[3]:
        state[0] += 1
        state[1] = 0


@njit(cache=True, inline="always")
def _demand(operand, idx, K, mh, mw, mi, kh_, kw_, kc, H, W, Ctot, stamp, state):
    """One demand of element idx = (m, k, n): ifmap X[m, k] (padded taps are not read) or
    filter W[k, n]."""
    if operand == 0:
        a = _addr(idx[0], idx[1], mh, mw, mi, kh_, kw_, kc, H, W, Ctot)
        if a >= 0:
            _touch(a, stamp, state)
    else:
        _touch(idx[2] * K + idx[1], stamp, state)


@njit(cache=True)
def _replay(rows_dim, cols_dim, stream_dim, operand, M, K, N, R, C, block, geo, addr_space):
    """(SRAM reads, DRAM reads) of one operand (0 ifmap X[m, k], 1 filter W[k, n]) of one
    GEMM: its demand stream through the read buffer. rows_dim, cols_dim, stream_dim: the
    dataflow's GEMM dimensions as indices into (M, K, N) (Dataflow.codes). geo: ifmap
    geometry int64[14].

    Folds: column fold outer, row fold inner. In each fold an operand that does not index
    the streamed dimension (the stationary one) loads its R x C tile, last row first; the
    other streams: its spatial dimension's fold lies on the rows (or columns), lane c
    receiving stream element i - c at step i (SCALE-Sim's skewed demand matrix)."""
    OW, OHW, H, W, Ctot, c0, Cg, kw, sh, sw, dh, dw, pt, pl = (
        geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7], geo[8], geo[9],
        geo[10], geo[11], geo[12], geo[13])
    stamp = np.full(addr_space, -1, np.int32)
    state = np.zeros(5, np.int64)
    state[3] = block
    # per-row (output pixel) and per-column (window position) address tables
    mh = np.empty(M, np.int64)
    mw = np.empty(M, np.int64)
    mi = np.empty(M, np.int64)
    for m in range(M):
        img = m // OHW
        r = m - img * OHW
        oh = r // OW
        mi[m] = img
        mh[m] = oh * sh - pt
        mw[m] = (r - oh * OW) * sw - pl
    kh_ = np.empty(K, np.int64)
    kw_ = np.empty(K, np.int64)
    kc = np.empty(K, np.int64)
    for k in range(K):
        ki = k // (kw * Cg)
        rem = k - ki * (kw * Cg)
        kj = rem // Cg
        kh_[k] = ki * dh
        kw_[k] = kj * dw
        kc[k] = c0 + rem - kj * Cg
    ext = np.array([M, K, N], np.int64)
    # the operand's two dimensions: ifmap (M, K), filter (K, N)
    d0 = 0 if operand == 0 else 1
    d1 = d0 + 1
    idx = np.zeros(3, np.int64)  # the current (m, k, n)
    nfc = (ext[cols_dim] + C - 1) // C
    nfr = (ext[rows_dim] + R - 1) // R
    stationary = stream_dim != d0 and stream_dim != d1
    spatial = d1 if stream_dim == d0 else d0  # a streaming operand's dimension on the array
    on_rows = spatial == rows_dim
    lanes = R if on_rows else C
    for fc in range(nfc):
        for fr in range(nfr):
            if stationary:  # load the fold's tile, last row first
                rows = min(R, ext[rows_dim] - fr * R)
                cols = min(C, ext[cols_dim] - fc * C)
                for r in range(rows - 1, -1, -1):
                    for c in range(cols):
                        idx[rows_dim] = fr * R + r
                        idx[cols_dim] = fc * C + c
                        _demand(operand, idx, K, mh, mw, mi, kh_, kw_, kc, H, W, Ctot, stamp, state)
            else:  # skewed stream: lane c gets stream element i - c
                base = (fr if on_rows else fc) * lanes
                S = ext[stream_dim]
                for i in range(S + lanes - 1):
                    for c in range(lanes):
                        s = i - c
                        p = base + c
                        if s < 0 or s >= S or p >= ext[spatial]:
                            continue
                        idx[stream_dim] = s
                        idx[spatial] = p
                        _demand(operand, idx, K, mh, mw, mi, kh_, kw_, kc, H, W, Ctot, stamp, state)
    return state[4], state[2]


def replay(df, operand: int, M: int, K: int, N: int, R: int, C: int, block: int, geo: np.ndarray,
           addr_space: int) -> tuple[int, int]:
    """(SRAM reads, DRAM reads) of one operand (0 ifmap, 1 filter) of one GEMM under the
    dataflow `df` (a name or a Dataflow), through a read buffer of `block` elements."""
    rd, cd, sd = dataflow(df).codes
    s, d = _replay(rd, cd, sd, operand, M, K, N, R, C, block, geo, addr_space)
    return int(s), int(d)


# --------------------------------------------------------------------------------------
# GEMM layers
# --------------------------------------------------------------------------------------
def fold_counts(M: int, K: int, N: int, R: int, C: int, df) -> tuple[int, int, int]:
    """(row folds, col folds, cycles per fold) for one GEMM under the dataflow `df` (a name or
    a Dataflow; hwmodel.dataflow)."""
    return dataflow(df).fold_counts(M, K, N, R, C)


def conv_geometry(x_shape, w_shape, *, stride=(1, 1), dilation=(1, 1), padding=(0, 0, 0, 0),
                  groups=1, padding_mode=None) -> dict:
    n, c, h, w = (int(v) for v in x_shape)
    o, cg, kh, kw = (int(v) for v in w_shape)
    sh, sw = (int(v) for v in stride)
    dh, dw = (int(v) for v in dilation)
    if padding_mode == "tf_same":
        pt, pb = tf_same_padding(h, kh, sh, dh)
        pl, pr = tf_same_padding(w, kw, sw, dw)
    else:
        pt, pb, pl, pr = (int(v) for v in padding)
    oh = conv_output_size(h, kh, sh, pt, pb, dh)
    ow = conv_output_size(w, kw, sw, pl, pr, dw)
    if cg * groups != c:
        raise ValueError(f"weight {tuple(w_shape)} with groups={groups} does not fit input {tuple(x_shape)}")
    return dict(N=n, C=c, H=h, W=w, O=o, Cg=cg, kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw,
                pt=pt, pb=pb, pl=pl, pr=pr, OH=oh, OW=ow, groups=int(groups))


@lru_cache(maxsize=65536)
def _touched(lo: int, hi: int, k: int, stride: int, dil: int, pad: int, size: int) -> int:
    """Input indices in [0, size) read by output positions [lo, hi) of a window of k taps."""
    idx = {o * stride + i * dil - pad for o in range(lo, hi) for i in range(k)}
    return sum(1 for v in idx if 0 <= v < size)


def _inbounds_taps(out: int, k: int, stride: int, dil: int, pad: int, size: int) -> int:
    """(output position, tap) pairs that land inside the input along one axis."""
    o = np.arange(out)[:, None] * stride + np.arange(k)[None, :] * dil - pad
    return int(((o >= 0) & (o < size)).sum())


def ifmap_footprint(geo: dict) -> int:
    """Distinct in-bounds ifmap elements one group of the conv reads (all images)."""
    return (geo["N"] * _touched(0, geo["OH"], geo["kh"], geo["sh"], geo["dh"], geo["pt"], geo["H"])
            * _touched(0, geo["OW"], geo["kw"], geo["sw"], geo["dw"], geo["pl"], geo["W"]) * geo["Cg"])


def _band_fetch(geo: dict, rows: int) -> tuple[int, int, int]:
    """Output-row bands of `rows` rows: (bands per image, input rows fetched per image over
    all bands -- halo rows count in every band they feed --, the largest band's input rows)."""
    return _band_fetch_rows(geo["kh"], geo["sh"], geo["dh"], geo["pt"], geo["H"], geo["OH"], rows)


@lru_cache(maxsize=4096)
def _band_fetch_rows(kh, sh, dh, pt, H, OH, rows) -> tuple[int, int, int]:
    args = (kh, sh, dh, pt, H)
    bands = fetched = biggest = 0
    for a in range(0, OH, rows):
        t = _touched(a, min(OH, a + rows), *args)
        bands += 1
        fetched += t
        biggest = max(biggest, t)
    return bands, fetched, biggest


def _splits(n: int) -> list[int]:
    """Tile sizes tried for a dimension of extent n: n, n/2, n/4, ... 1 (rounded up)."""
    out, d = [], 1
    while True:
        t = -(-n // d)
        if not out or t != out[-1]:
            out.append(t)
        if t == 1:
            return out
        d *= 2


LOOP_ORDERS = ("mkn", "mnk", "kmn", "knm", "nmk", "nkm")  # DRAM loop orders, outermost first


def _refetch(order: str, trips: dict, indexed: str) -> int:
    """How many times an operand indexed by the loops `indexed` is fetched, relative to its
    size: each loop outside its innermost changing (trip > 1) indexing loop that does not
    index it brings its tiles back once per iteration; loops inside reuse the tile."""
    inner = max((i for i, l in enumerate(order) if l in indexed and trips[l] > 1), default=-1)
    f = 1
    for l in order[:max(inner, 0)]:
        if l not in indexed:
            f *= trips[l]
    return f


def reuse_dram_traffic(geo: dict, accel: Accelerator, x_bits: int, w_bits: int,
                       out_bits: int) -> dict:
    """DRAM traffic of one conv/linear (all groups) under the "reuse" model.

    Tiles: bands of output rows (m; the band's input rows with their kh-1 halo), slices of
    input channels (k: ck*kh*kw rows of W), tiles of output channels (n); sizes n, n/2,
    n/4, ... 1 per dimension. A tile must fit half its buffer (the other half prefetches
    the next) or, when it is the whole operand, the whole buffer; the output tile is held
    at acc_bits. For each of the six DRAM loop orders an operand is re-fetched once per
    iteration of each loop outside its innermost changing loop that does not index it;
    partial sums go to DRAM and back (at acc_bits) only when the k loop sits outside the
    output's loops. The cheapest fitting tiling and order, in bits moved, is taken (ties:
    the fewest tiles). If nothing fits, the cheapest overall is taken (tiles_fit False)."""
    g = geo["groups"]
    Cg, kh, kw, OW = geo["Cg"], geo["kh"], geo["kw"], geo["OW"]
    K, Nn, imgs = Cg * kh * kw, geo["O"] // g, geo["N"]
    outs = imgs * geo["OH"] * OW * Nn
    cols = _touched(0, OW, kw, geo["sw"], geo["dw"], geo["pl"], geo["W"])
    acc = accel.acc_bits
    caps = {"x": accel.sram_ifmap_bytes * 8, "w": accel.sram_filter_bytes * 8,
            "o": accel.sram_ofmap_bytes * 8}

    def fits(bits, whole, key):
        return bits <= (caps[key] if whole else caps[key] // 2)

    best = None
    for r in _splits(geo["OH"]):
        nbm, fetched_rows, big_rows = _band_fetch(geo, r)
        fx = imgs * fetched_rows * cols * Cg
        for ck in _splits(Cg):
            nbk = -(-Cg // ck)
            for tn in _splits(Nn):
                nbn = -(-Nn // tn)
                ok = (fits(big_rows * cols * ck * x_bits, imgs * nbm == 1 and nbk == 1, "x")
                      and fits(ck * kh * kw * tn * w_bits, nbk == 1 and nbn == 1, "w")
                      and fits(r * OW * tn * acc, imgs * nbm == 1 and nbn == 1, "o"))
                tiles = imgs * nbm * nbk * nbn
                trips = {"m": imgs * nbm, "k": nbk, "n": nbn}
                for order in LOOP_ORDERS:
                    x, w, ps = _nest_traffic(fx, K * Nn, outs, trips, order)
                    bits = x * x_bits + w * w_bits + 2 * ps * acc + outs * out_bits
                    key = (not ok, bits, tiles)
                    if best is None or key < best[0]:
                        best = (key, dict(dram_rd_ifmap=g * x, dram_rd_filter=g * w, psum_dram=g * ps,
                                          dram_order=order, dram_tiles=f"m{imgs * nbm}k{nbk}n{nbn}",
                                          tiles_fit=ok, tile=(r, ck, tn)))
    return best[1]


def _nest_traffic(fx: int, kn: int, outs: int, trips: dict, order: str) -> tuple[int, int, int]:
    return (fx * _refetch(order, trips, "mk"), kn * _refetch(order, trips, "kn"),
            outs * (_refetch(order, trips, "mn") - 1))


def loop_nest_traffic(geo: dict, rows: int, ck: int, tn: int, order: str) -> tuple[int, int, int]:
    """DRAM traffic of ONE group for a tiling (output-row bands of `rows` rows per image,
    ck input channels, tn output channels) and a loop order over (m, k, n), outermost
    first: (ifmap elements read, filter elements read, partial sums written and read
    back). Outputs are written once more at their own width (not counted here)."""
    Cg, Nn, imgs = geo["Cg"], geo["O"] // geo["groups"], geo["N"]
    nbm, fetched_rows, _ = _band_fetch(geo, rows)
    cols = _touched(0, geo["OW"], geo["kw"], geo["sw"], geo["dw"], geo["pl"], geo["W"])
    fx = imgs * fetched_rows * cols * Cg  # one pass over the ifmap, halos included
    trips = {"m": imgs * nbm, "k": -(-Cg // ck), "n": -(-Nn // tn)}
    outs = imgs * geo["OH"] * geo["OW"] * Nn
    K = Cg * geo["kh"] * geo["kw"]
    return _nest_traffic(fx, K * Nn, outs, trips, order)


def map_gemm_layer(geo: dict, accel: Accelerator, x_bits: int = 8, w_bits: int = 8,
                   out_bits: int = 8, dram_model: str | None = None) -> dict:
    """Per-layer counts for a conv (geometry from conv_geometry) or a linear (H=W=kh=kw=1).

    dram_model overrides accel.dram_model ("reuse" or "scalesim", see the module docstring)."""
    R, C, df = accel.rows, accel.cols, dataflow(accel.dataflow)
    dm = dram_model or accel.dram_model
    if dm not in ("reuse", "scalesim"):
        raise ValueError(f"unknown DRAM model {dm!r} (expected 'reuse' or 'scalesim')")
    g = geo["groups"]
    M = geo["N"] * geo["OH"] * geo["OW"]
    K = geo["Cg"] * geo["kh"] * geo["kw"]
    N = geo["O"] // g
    # bit-fusion: a PE takes `lanes` terms of K per cycle, so the schedule is that of K / lanes
    lanes = accel.fusion_lanes(x_bits, w_bits)
    Ks = -(-K // lanes)
    ext = {"M": M, "K": Ks, "N": N}
    rf, cf, per_fold = df.fold_counts(M, Ks, N, R, C)
    folds = rf * cf
    n_mac = g * M * K * N
    # SRAM reads of ifmap and filter in SCALE-Sim's fold order (padded taps are not read)
    inb = geo["N"] * geo["Cg"] * (
        _inbounds_taps(geo["OH"], geo["kh"], geo["sh"], geo["dh"], geo["pt"], geo["H"])
        * _inbounds_taps(geo["OW"], geo["kw"], geo["sw"], geo["dw"], geo["pl"], geo["W"]))
    # (each operand once per fold of the dimension it does not index)
    sram_x = g * inb * df.sram_reads("ifmap", M, K, N, R, C)
    sram_w = g * K * N * df.sram_reads("filter", M, K, N, R, C)
    # Partial sums accumulate over the folds of K in the ofmap SRAM (ws, is; os: K streams).
    k_folds = df.folds_of("K", M, Ks, N, R, C)
    outs = g * M * N
    psum_writes = (k_folds - 1) * outs  # partial writes before the final one
    # one column fold's live partial sums: the streamed extent x the fold's columns
    live = ext[df.stream] * min(ext[df.cols], C) if k_folds > 1 else 0
    acc = accel.acc_bits
    psum_cap = ((accel.sram_ofmap_bytes * 8) // 2) // acc
    too_big = k_folds > 1 and live > psum_cap
    extra = {"dram_order": "", "dram_tiles": "", "tiles_fit": True}
    blocks = 1
    if dm == "scalesim":
        spill = too_big
        psum_dram = psum_writes if spill else 0
        blk_x = buffer_block_elems(accel.sram_ifmap_bytes, x_bits)
        blk_w = buffer_block_elems(accel.sram_filter_bytes, w_bits)
        x_space = geo["N"] * geo["H"] * geo["W"] * geo["C"]
        dram_x = dram_w = 0
        for gi in range(g):
            ga = np.array([geo["OW"], geo["OH"] * geo["OW"], geo["H"], geo["W"], geo["C"],
                           gi * geo["Cg"], geo["Cg"], geo["kw"], geo["sh"], geo["sw"], geo["dh"],
                           geo["dw"], geo["pt"], geo["pl"]], dtype=np.int64)
            dram_x += replay(df, 0, M, K, N, R, C, blk_x, ga, x_space)[1]
            dram_w += replay(df, 1, M, K, N, R, C, blk_w, ga, K * N)[1]
    else:
        r = reuse_dram_traffic(geo, accel, x_bits, w_bits, out_bits)
        dram_x, dram_w = r["dram_rd_ifmap"], r["dram_rd_filter"]
        psum_dram = r["psum_dram"]
        spill = psum_dram > 0
        extra = {k: r[k] for k in ("dram_order", "dram_tiles", "tiles_fit")}
        if too_big:  # block the streamed dimension so each block's partial sums fit
            blocks = -(-live // max(psum_cap, 1))
            stream = ext[df.stream]
            blocks = min(blocks, stream)
            per_fold = blocks * df.fill_cycles(R, C) + stream  # each block fills the array
            if df.stationary == "filter":  # the stationary operand is read once per block
                sram_w *= blocks
            else:
                sram_x *= blocks
    # bit-serial: every step b_a/serial cycles; bit-fusion: temporal steps of operands wider than a PE
    cycles = g * folds * per_fold * accel.cycle_steps(x_bits, w_bits)
    row = dict(
        gemm_m=M, gemm_k=K, gemm_n=N, groups=g, row_folds=rf, col_folds=cf, folds=g * folds,
        cycles=cycles, utilization=n_mac / (cycles * R * C * lanes), n_mac=n_mac, n_add=0,
        sram_rd_ifmap=sram_x, sram_rd_filter=sram_w, sram_rd_ofmap=psum_writes,
        sram_wr_ofmap=k_folds * outs,
        sram_rd_ifmap_bytes=packed_bytes(sram_x, x_bits),
        sram_rd_filter_bytes=packed_bytes(sram_w, w_bits),
        sram_rd_ofmap_bytes=packed_bytes(psum_writes, acc),
        sram_wr_ofmap_bytes=packed_bytes(psum_writes, acc) + packed_bytes(outs, out_bits),
        dram_rd_ifmap=dram_x, dram_rd_filter=dram_w,
        dram_rd_ofmap=psum_dram,
        dram_wr_ofmap=outs + psum_dram,
        psum_spill=bool(spill), psum_blocks=blocks, dram_model=dm,
        x_bits=x_bits, w_bits=w_bits, out_bits=out_bits,
        # SCALE-Sim's own bookkeeping, for the comparison (see module docstring)
        ss_sram_wr_ofmap=k_folds * outs + (g * folds * (R + C) if df.ss_fold_ofmap_writes else 0),
        ss_dram_wr_ofmap=k_folds * outs,
        **extra,
    )
    row["dram_rd_ifmap_bytes"] = packed_bytes(dram_x, x_bits)
    row["dram_rd_filter_bytes"] = packed_bytes(dram_w, w_bits)
    row["dram_rd_ofmap_bytes"] = packed_bytes(row["dram_rd_ofmap"], acc)
    row["dram_wr_ofmap_bytes"] = packed_bytes(outs, out_bits) + packed_bytes(psum_dram, acc)
    add_bursts(row, accel)
    return row


def add_bursts(row: dict, accel: Accelerator) -> None:
    bb = accel.burst_bytes
    row["dram_bursts"] = sum(bursts(row[k], bb) for k in (
        "dram_rd_ifmap_bytes", "dram_rd_filter_bytes", "dram_rd_ofmap_bytes", "dram_wr_ofmap_bytes"))
    row["dram_rd_bytes"] = row["dram_rd_ifmap_bytes"] + row["dram_rd_filter_bytes"] + row["dram_rd_ofmap_bytes"]
    row["dram_wr_bytes"] = row["dram_wr_ofmap_bytes"]


def map_conv(x_shape, w_shape, accel: Accelerator, *, stride=(1, 1), dilation=(1, 1),
             padding=(0, 0, 0, 0), groups=1, padding_mode=None, x_bits=8, w_bits=8, out_bits=8,
             dram_model: str | None = None) -> dict:
    geo = conv_geometry(x_shape, w_shape, stride=stride, dilation=dilation, padding=padding,
                        groups=groups, padding_mode=padding_mode)
    return map_gemm_layer(geo, accel, x_bits, w_bits, out_bits, dram_model)


def map_linear(x_shape, w_shape, accel: Accelerator, *, x_bits=8, w_bits=8, out_bits=8,
               dram_model: str | None = None) -> dict:
    x_shape = tuple(int(v) for v in x_shape)
    batch = int(np.prod(x_shape[:-1])) if len(x_shape) > 1 else 1
    o, k = (int(v) for v in w_shape)
    geo = dict(N=batch, C=k, H=1, W=1, O=o, Cg=k, kh=1, kw=1, sh=1, sw=1, dh=1, dw=1,
               pt=0, pb=0, pl=0, pr=0, OH=1, OW=1, groups=1)
    return map_gemm_layer(geo, accel, x_bits, w_bits, out_bits, dram_model)


# --------------------------------------------------------------------------------------
# Element-wise ops
# --------------------------------------------------------------------------------------
_ZERO_GEMM = dict(gemm_m=0, gemm_k=0, gemm_n=0, groups=0, row_folds=0, col_folds=0, folds=0,
                  n_mac=0, psum_spill=False, ss_sram_wr_ofmap=0, ss_dram_wr_ofmap=0,
                  sram_rd_filter=0, sram_rd_filter_bytes=0, dram_rd_filter=0,
                  dram_rd_filter_bytes=0, sram_rd_ofmap=0, sram_rd_ofmap_bytes=0,
                  dram_rd_ofmap=0, dram_rd_ofmap_bytes=0, w_bits=0, psum_blocks=0,
                  dram_order="", dram_tiles="", tiles_fit=True)


def map_eltwise(op: str, in_shapes: list, out_shape, accel: Accelerator, *, in_bits: list[int],
                out_bits: int, n_add: int = 0, params: list[tuple[int, int]] = (),
                vec_steps: int = 0, in_elems: list[int] | None = None) -> dict:
    """Memory traffic of an element-wise op: read every input once, write the output once.

    params: constant operands [(elements, bits)] (LayerNorm gamma/beta, position embedding,
    class token), read once from DRAM through the filter buffer. vec_steps: vector-unit lane
    steps of the op's arithmetic (hwmodel.vector_ops); cycles cover the larger of the data
    movement and the arithmetic. in_elems: elements actually read per input where an op reads
    only part of it (take), default all."""
    n_in = [int(np.prod(s)) for s in in_shapes] if in_elems is None else [int(v) for v in in_elems]
    n_out = int(np.prod(out_shape))
    if op in ("reshape", "quantize"):
        n_in, n_out = [0 for _ in n_in], 0
    rd = sum(n_in)
    rd_bytes = sum(packed_bytes(n, b) for n, b in zip(n_in, in_bits))
    wr_bytes = packed_bytes(n_out, out_bits)
    work = max(rd, n_out, int(vec_steps))
    cycles = -(-work // accel.cols) if work else 0
    n_par = sum(int(n) for n, _ in params)
    par_bytes = sum(packed_bytes(n, b) for n, b in params)
    row = dict(_ZERO_GEMM, cycles=cycles, utilization=0.0, n_add=int(n_add) if work else 0,
               sram_rd_ifmap=rd, sram_rd_ifmap_bytes=rd_bytes, sram_wr_ofmap=n_out,
               sram_wr_ofmap_bytes=wr_bytes, dram_rd_ifmap=rd, dram_rd_ifmap_bytes=rd_bytes,
               dram_wr_ofmap=n_out, dram_wr_ofmap_bytes=wr_bytes,
               x_bits=max(in_bits) if in_bits else 0, out_bits=out_bits)
    if n_par:
        row.update(sram_rd_filter=n_par, sram_rd_filter_bytes=par_bytes, dram_rd_filter=n_par,
                   dram_rd_filter_bytes=par_bytes, w_bits=max(b for _, b in params))
    add_bursts(row, accel)
    return row


# --------------------------------------------------------------------------------------
# Activation x activation matmul (attention: q @ k^T, attn @ v)
# --------------------------------------------------------------------------------------
def matmul_geometry(a_shape, b_shape, transpose_b: bool = False) -> dict:
    """y = a @ b[^T] over the last two axes, batched over the leading ones, as the GEMM
    geometry of a grouped linear layer: one group per head (every leading index, the batch
    axis included), M = rows of a, K = its columns, N = columns of b (rows when transposed).

    The second operand plays the weight: a grouped linear with groups = heads has exactly
    the counts of `heads` independent (M, K, N) GEMMs (each group reads its own K-slice of
    the ifmap and its own K x N weights), so folds, cycles, SRAM and DRAM traffic follow the
    same mapping rules as conv/linear."""
    a_shape, b_shape = tuple(int(v) for v in a_shape), tuple(int(v) for v in b_shape)
    m, k = a_shape[-2:]
    kb, n = (b_shape[-1], b_shape[-2]) if transpose_b else b_shape[-2:]
    heads = int(np.prod(a_shape[:-2]))
    if kb != k or int(np.prod(b_shape[:-2])) != heads:
        raise ValueError(f"matmul operands do not match: a {a_shape}, b {b_shape}, transpose_b={transpose_b}")
    return dict(N=m, C=heads * k, H=1, W=1, O=heads * n, Cg=k, kh=1, kw=1, sh=1, sw=1, dh=1, dw=1,
                pt=0, pb=0, pl=0, pr=0, OH=1, OW=1, groups=heads)


def map_matmul(a_shape, b_shape, accel: Accelerator, *, transpose_b: bool = False, a_bits: int = 8,
               b_bits: int = 8, out_bits: int = 8, dram_model: str | None = None) -> dict:
    """Counts of an activation x activation matmul: the first operand streams as the ifmap,
    the second is held like weights (filter buffer, at its own activation width)."""
    return map_gemm_layer(matmul_geometry(a_shape, b_shape, transpose_b), accel, a_bits, b_bits,
                          out_bits, dram_model)


def signed_width(values) -> int:
    """Bits of the narrowest signed integer holding every value (at least 2)."""
    v = np.asarray(values, dtype=np.int64)
    return max(2, int(np.abs(v).max(initial=0)).bit_length() + 1)


def constant_operands(node, force_bits: int | None = None) -> list[tuple[int, int]]:
    """Constant tensors a ViT op reads besides its input, [(elements, bits)]: LayerNorm gamma
    (LN_GAMMA_BITS) and beta, add_const's constant, concat_token's token (at the output's
    quantization). Widths not declared in the IR are the narrowest signed width of the values."""
    p = node.params
    if node.op in ("layernorm", "l2norm") and node.attrs["mode"] == "integer":
        out = [(p["gamma"].size, LN_GAMMA_BITS), (p["beta"].size, signed_width(p["beta"]))]
    elif node.op == "layernorm":
        out = [(p["gamma_float"].size, 32), (p["beta_float"].size, 32)]
    elif node.op == "add_const":
        out = [(p["const"].size, signed_width(p["const"]))]
    elif node.op == "concat_token":
        out = [(p["token"].size, node.out.bits)]
    elif node.op == "lut" and not force_bits:  # the FP32 reference computes the function: no table
        out = [(p["table"].size, node.out.bits)]
    elif node.op == "softmax" and "mask" in p:  # one bit per entry (FP32: the float model's additive mask)
        out = [(p["mask"].size, 1)]
    else:
        out = []
    return [(int(n), force_bits or int(b)) for n, b in out]


# --------------------------------------------------------------------------------------
# IR dispatch
# --------------------------------------------------------------------------------------
VECTOR_DEFAULTS = {**{f"ops_{k}": 0 for k in KINDS}, "n_vec_ops": 0, "n_vec_steps": 0}


def input_qparams(graph, node):
    """QParams of a node's first input: the producer's .out, else node.in_q."""
    src = node.inputs[0]
    try:
        return graph[src].out
    except KeyError:
        return node.in_q


def node_conv_geometry(node, x_shape) -> dict:
    """conv_geometry of a conv2d IR node on an input of x_shape (attrs complete: integer_ref.ir.ATTRS)."""
    a = node.attrs
    return conv_geometry(x_shape, node.params["weight"].shape, stride=a["stride"], dilation=a["dilation"],
                         padding=a["padding"], groups=a["groups"], padding_mode=a["padding_mode"])


def map_node(graph, node, shapes: dict, accel: Accelerator, force_bits: int | None = None) -> dict:
    """Counts for one IR node (batch as in `shapes`; pass batch-1 shapes for one image).

    force_bits maps every tensor at that width (32 for the FP32 reference)."""
    out_shape = tuple(shapes[node.name])
    fb = force_bits
    out_bits = fb or node.out.bits
    if node.op == "conv2d":
        xq = input_qparams(graph, node)
        row = map_gemm_layer(node_conv_geometry(node, shapes[node.inputs[0]]), accel,
                             fb or xq.bits, fb or node.weight_q.bits, out_bits)
    elif node.op == "linear":
        xq = input_qparams(graph, node)
        row = map_linear(shapes[node.inputs[0]], node.params["weight"].shape, accel,
                         x_bits=fb or xq.bits, w_bits=fb or node.weight_q.bits,
                         out_bits=out_bits)
    elif node.op == "matmul":
        qa, qb = (graph[i].out for i in node.inputs)
        row = map_matmul(shapes[node.inputs[0]], shapes[node.inputs[1]], accel,
                         transpose_b=bool(node.attrs["transpose_b"]),
                         a_bits=fb or qa.bits, b_bits=fb or qb.bits, out_bits=out_bits)
        if node.attrs["a_log2"] and not fb:  # shifts and adds, no multiplier (the FP32 model multiplies)
            stages = log2_matmul_stages(row["n_mac"], qb.bits, node.attrs["log2_max_exp"])
            row.update(n_mac=0, **op_counts(stages), vec_stages=stages)
    else:
        ins = [tuple(shapes[i]) for i in node.inputs] if node.op != "quantize" else []
        in_bits = ([fb or graph[i].out.bits for i in node.inputs]
                   if node.op != "quantize" else [])
        n_out = int(np.prod(out_shape))
        if node.op == "add":
            n_add = n_out
        elif node.op in ("maxpool", "avgpool"):
            kk = node.attrs["kernel"]
            kk = (kk, kk) if isinstance(kk, int) else kk
            n_add = n_out * (int(kk[0]) * int(kk[1]) - 1)
        elif node.op == "global_avgpool":
            n_add = int(np.prod(ins[0]))
        elif node.op == "add_const":  # the residual add's arithmetic, constant second operand
            n_add = n_out
        else:
            n_add = 0
        # Vector-unit arithmetic of the integer nonlinearities, at the node's real widths
        # (also for the FP32 reference, which prices the same steps at fp32 energies).
        if node.op in VECTOR_OPS:
            stages = vector_stages(node.op, ins[0], graph[node.inputs[0]].out.bits, node.attrs,
                                   masked="mask" in node.params)
        elif node.op == "lut":
            stages = lut_stages(n_out, in_bits[0], out_bits, 0 if fb else int(node.attrs["in_min"]))
        elif node.op == "mul":
            stages = mul_stages(n_out, in_bits[0], in_bits[1], out_bits,
                                (0, 0) if fb else tuple(graph[i].out.zero_point for i in node.inputs))
        else:
            stages = []
        row = map_eltwise(node.op, ins, out_shape, accel, in_bits=in_bits, out_bits=out_bits,
                          n_add=n_add, params=constant_operands(node, fb),
                          vec_steps=op_counts(stages)["n_vec_steps"],
                          in_elems=[n_out] if node.op in PARTIAL_READ_OPS else None)
        row.update(op_counts(stages), vec_stages=stages)
    row = {"layer": node.name, "op": node.op, **VECTOR_DEFAULTS, "vec_stages": [], **row}
    row["n_elem"] = 0 if node.op in ("reshape", "quantize") else int(np.prod(out_shape))
    return row

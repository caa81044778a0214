"""Multiplier-input bit toggles from the real integer operands, per dataflow.

A toggle is one bit of a multiplier input register changing between consecutive operands:
popcount(previous XOR next). The streams follow the dataflow (hwmodel.dataflow: the GEMM
dimension on the PE rows, on the columns, the streamed one; same folds as hwmodel.mapping,
column fold outer, row fold inner), in one walk for all three:

- An input operand that indexes the streamed dimension streams: each of its lines along
  that dimension passes every PE of the dimension it does not index (N for X, M for W), so
  its toggles are that extent times the toggles of its streams (the column stream walk
  when it streams along its first axis, the row stream walk along its second).
- An input operand that does not index it is stationary: its registers change only at
  reloads (_reload_toggles): each PE register changes from the value it held in its
  previous fold (0 before the first) to the new one.

What that gives per dataflow:

- ws: PE (r, c) of fold (fr, fc) holds W[k, n] (k = fr*R + r, n = fc*C + c) while X[:, k]
  streams past it, m = 0..M-1. Activation-input toggles of that PE =
  popcount(x[0,k]) + sum_m popcount(x[m,k] ^ x[m+1,k]); each of the N output columns sees
  the stream once, so the layer total is N * sum_k(stream toggles of column k).
  Weight-input toggles happen only at weight reloads.
- os: PE (r, c) owns output (m, n); X[m, :] and W[:, n] both stream over k. Activation
  toggles = N * sum_m(toggles of row m of X), weight toggles = M * sum_n(toggles of column n
  of W).
- is: PE (r, c) holds X[m, k] (k = fr*R + r, m = fc*C + c) while W[k, :] streams over n:
  weight toggles = M * sum_k(toggles of row k of W), activation toggles at reloads only.

Between folds the streamed input sees the pipeline bubble (the encoding of 0): every
stream starts from encoded 0, which is also why its first value counts
popcount(value ^ encode(0)); stationary registers start at encoded 0 too.

Encodings (b = the operand's bit width): 'own' is two's complement in b bits for a signed
operand and plain binary for an unsigned one; 'signmag' holds signed operands as sign and
magnitude (the restricted range fits); 'offset' holds signed operands as x + 2^(b-1)
(offset binary, i.e. unsigned). Unsigned operands are the same bits in all three.
For non-negative values two's complement and plain binary are the same bit patterns, so
holding post-ReLU values unsigned changes toggles only through the values themselves
(range and scale), not the encoding; signed, zero-centred operands are where the
encodings differ.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from integer_ref.arith import conv_output_size

from .dataflow import OPERAND_DIMS, dataflow as _dataflow

ENCODINGS = ("own", "signmag", "offset")


def encode(q: np.ndarray, bits: int, signed: bool, encoding: str = "own") -> np.ndarray:
    """Bit pattern (as uint64) of integer values q held in `bits` bits."""
    q = np.asarray(q, dtype=np.int64)
    mask = np.int64((1 << bits) - 1)
    if not signed or encoding == "own":
        return (q & mask).astype(np.uint64)
    if encoding == "signmag":
        return (((q < 0).astype(np.int64) << (bits - 1)) | np.abs(q)).astype(np.uint64)
    if encoding == "offset":
        return ((q + (1 << (bits - 1))) & mask).astype(np.uint64)
    raise ValueError(f"unknown encoding {encoding!r}")


@njit(cache=True, inline="always")
def _popcount(v):
    v = v - ((v >> np.uint64(1)) & np.uint64(0x5555555555555555))
    v = (v & np.uint64(0x3333333333333333)) + ((v >> np.uint64(2)) & np.uint64(0x3333333333333333))
    v = (v + (v >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (v * np.uint64(0x0101010101010101)) >> np.uint64(56)


@njit(cache=True, inline="always")
def _enc3(v, mask, h, signed):
    """(own, sign-magnitude, offset) patterns of v, each re-based so that 0 encodes as 0."""
    own = np.uint64(v & mask)
    if not signed:
        return own, own, own
    sm = np.uint64((h if v < 0 else 0) | abs(v))
    off = np.uint64(((v + h) & mask) ^ h)
    return own, sm, off


@njit(cache=True, parallel=True)
def _col_stream_toggles(a, bits, signed):
    """Toggles of the streams a[0, j], a[1, j], ... (each from 0), summed over j: 3 encodings."""
    M, K = a.shape
    mask = (1 << bits) - 1
    h = 1 << (bits - 1)
    nchunk = 64
    step = (K + nchunk - 1) // nchunk
    out = np.zeros((nchunk, 3), np.uint64)
    for ch in prange(nchunk):
        j0 = ch * step
        j1 = min(K, j0 + step)
        if j0 >= j1:
            continue
        w = j1 - j0
        p0 = np.zeros(w, np.uint64)
        p1 = np.zeros(w, np.uint64)
        p2 = np.zeros(w, np.uint64)
        t0 = np.uint64(0)
        t1 = np.uint64(0)
        t2 = np.uint64(0)
        for i in range(M):
            for jj in range(w):
                e0, e1, e2 = _enc3(a[i, j0 + jj], mask, h, signed)
                t0 += _popcount(p0[jj] ^ e0)
                t1 += _popcount(p1[jj] ^ e1)
                t2 += _popcount(p2[jj] ^ e2)
                p0[jj] = e0
                p1[jj] = e1
                p2[jj] = e2
        out[ch, 0] = t0
        out[ch, 1] = t1
        out[ch, 2] = t2
    return out.sum(axis=0)


@njit(cache=True, parallel=True)
def _row_stream_toggles(a, bits, signed):
    """Toggles of the streams a[i, 0], a[i, 1], ... (each from 0), summed over i: 3 encodings."""
    M, K = a.shape
    mask = (1 << bits) - 1
    h = 1 << (bits - 1)
    out = np.zeros((M, 3), np.uint64)
    for i in prange(M):
        p0 = np.uint64(0)
        p1 = np.uint64(0)
        p2 = np.uint64(0)
        t0 = np.uint64(0)
        t1 = np.uint64(0)
        t2 = np.uint64(0)
        for j in range(K):
            e0, e1, e2 = _enc3(a[i, j], mask, h, signed)
            t0 += _popcount(p0 ^ e0)
            t1 += _popcount(p1 ^ e1)
            t2 += _popcount(p2 ^ e2)
            p0 = e0
            p1 = e1
            p2 = e2
        out[i, 0] = t0
        out[i, 1] = t1
        out[i, 2] = t2
    return out.sum(axis=0)


@njit(cache=True)
def _reload_toggles(s, R, C, bits, signed):
    """Toggles of stationary registers: s (rows P, cols Q) is tiled onto R x C PEs,
    fold order column fold outer, row fold inner; each PE register keeps its value
    between folds and changes only where a fold loads it. 3 encodings."""
    P, Q = s.shape
    mask = (1 << bits) - 1
    h = 1 << (bits - 1)
    reg = np.zeros((3, R, C), np.uint64)
    t = np.zeros(3, np.uint64)
    for fc in range((Q + C - 1) // C):
        for fr in range((P + R - 1) // R):
            rows = min(R, P - fr * R)
            cols = min(C, Q - fc * C)
            for r in range(rows):
                for c in range(cols):
                    e0, e1, e2 = _enc3(s[fr * R + r, fc * C + c], mask, h, signed)
                    t[0] += _popcount(reg[0, r, c] ^ e0)
                    t[1] += _popcount(reg[1, r, c] ^ e1)
                    t[2] += _popcount(reg[2, r, c] ^ e2)
                    reg[0, r, c] = e0
                    reg[1, r, c] = e1
                    reg[2, r, c] = e2
    return t


def count_toggles(x_gemm: np.ndarray, w_gemm: np.ndarray, x_bits: int, x_signed: bool,
                  w_bits: int, w_signed: bool, dataflow: str, rows: int, cols: int) -> dict:
    """Multiplier-input toggles of one GEMM X (M, K) @ W (K, N) on a rows x cols array:
    count_toggles_grouped with one group.

    Registers start from (and pipeline bubbles hold) the encoding of 0."""
    x = np.asarray(x_gemm)
    w = np.asarray(w_gemm)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"GEMM operands do not match: X {x.shape}, W {w.shape}")
    return count_toggles_grouped(x, w, 1, x_bits, x_signed, w_bits, w_signed, dataflow, rows, cols)


# --------------------------------------------------------------------------------------
# GEMM views of conv operands (window order kh, kw, c -- as hwmodel.mapping and SCALE-Sim)
# --------------------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _im2col(x, c0, cg, kh, kw, sh, sw, dh, dw, pt, pl, OH, OW, zp):
    N, C, H, W = x.shape
    out = np.empty((N * OH * OW, kh * kw * cg), np.int64)
    for row in prange(N * OH * OW):
        n = row // (OH * OW)
        r = row - n * OH * OW
        oh = r // OW
        ow = r - oh * OW
        col = 0
        for i in range(kh):
            h = oh * sh + i * dh - pt
            for j in range(kw):
                w = ow * sw + j * dw - pl
                inside = h >= 0 and h < H and w >= 0 and w < W
                for c in range(cg):
                    out[row, col] = x[n, c0 + c, h, w] if inside else zp
                    col += 1
    return out


def im2col(x: np.ndarray, kernel, *, stride=(1, 1), dilation=(1, 1), padding=(0, 0, 0, 0),
           groups: int = 1, group: int = 0, zero_point: int = 0) -> np.ndarray:
    """NCHW integer input -> (N*OH*OW, kh*kw*C/g) for one group; pads with the zero point."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.int64))
    kh, kw = kernel
    _, C, H, W = x.shape
    pt, pb, pl, pr = padding
    OH = conv_output_size(H, kh, stride[0], pt, pb, dilation[0])
    OW = conv_output_size(W, kw, stride[1], pl, pr, dilation[1])
    cg = C // groups
    return _im2col(x, group * cg, cg, kh, kw, stride[0], stride[1], dilation[0], dilation[1],
                   pt, pl, OH, OW, zero_point)


def weight_gemm(weight: np.ndarray, groups: int = 1, group: int = 0) -> np.ndarray:
    """(O, C/g, kh, kw) -> (kh*kw*C/g, O/g) for one group, rows in (kh, kw, c) order."""
    w = np.asarray(weight, dtype=np.int64)
    og = w.shape[0] // groups
    wg = w[group * og:(group + 1) * og]
    return np.ascontiguousarray(wg.transpose(2, 3, 1, 0).reshape(-1, og))


def _stream_toggles(a: np.ndarray, groups: int, stream_axis: int, bits: int, signed: bool) -> np.ndarray:
    """Toggles of a grouped operand a (P, g*Q; group gi in columns gi*Q..(gi+1)*Q-1) streamed
    along stream_axis, each stream from 0, summed: down the columns (axis 0; the columns of
    all groups are independent streams) or along the rows of each group (axis 1)."""
    if stream_axis == 0:
        return _col_stream_toggles(a, bits, signed)
    P, gQ = a.shape
    return _row_stream_toggles(a.reshape(P * groups, gQ // groups), bits, signed)


def count_toggles_grouped(x_gm: np.ndarray, w_gm: np.ndarray, groups: int, x_bits: int, x_signed: bool,
                          w_bits: int, w_signed: bool, dataflow: str, rows: int, cols: int) -> dict:
    """count_toggles summed over the groups of a grouped conv, in a few whole-layer calls.

    x_gm (M, g*Kg): group gi's GEMM input in columns gi*Kg..(gi+1)*Kg-1; w_gm (Kg, g*Ng):
    group gi's weights in columns gi*Ng..(gi+1)*Ng-1. Equal to the sum of count_toggles over
    the groups, each group on its own (registers from 0).

    One walk for every dataflow (hwmodel.dataflow): an input operand that indexes the
    streamed dimension streams, each of its lines seen once by every PE of the dimension it
    does not index (N for X, M for W): streams are independent per column or row, so the
    groups' streams are laid side by side. The stationary input operand (W in ws, X in is;
    os keeps the outputs) changes only at reloads, counted group by group on its tile of
    the array (its rows dimension on the PE rows)."""
    df = _dataflow(dataflow)
    x = np.ascontiguousarray(np.asarray(x_gm, dtype=np.int64))
    w = np.ascontiguousarray(np.asarray(w_gm, dtype=np.int64))
    g = int(groups)
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(f"GEMM operands must be matrices: X {x.shape}, W {w.shape}")
    M, gK = x.shape
    Kg, gN = w.shape
    if gK != g * Kg or gN % g:
        raise ValueError(f"grouped GEMM operands do not match: X {x.shape}, W {w.shape}, groups {g}")
    Ng = gN // g
    # operand: (grouped matrix, its (axis 0, axis 1) dimensions, columns per group, bits,
    # signed, extent of the dimension it does not index)
    operands = ((x, OPERAND_DIMS["ifmap"], Kg, x_bits, bool(x_signed), Ng),
                (w, OPERAND_DIMS["filter"], Ng, w_bits, bool(w_signed), M))
    tot = np.zeros(3, np.uint64)
    for a, dims, q, bits, signed, other in operands:
        if df.stream in dims:
            tot += _stream_toggles(a, g, dims.index(df.stream), bits, signed) * np.uint64(other)
        else:  # stationary: reloads, group by group, oriented (rows dimension, cols dimension)
            for gi in range(g):
                tile = a[:, gi * q:(gi + 1) * q]
                if dims != (df.rows, df.cols):
                    tile = tile.T
                tot += _reload_toggles(np.ascontiguousarray(tile), rows, cols, bits, signed)
    return {"mult_toggles": int(tot[0]), "mult_toggles_signmag": int(tot[1]),
            "mult_toggles_offset": int(tot[2]), "n_mac": M * Kg * gN}


def grouped_gemm_operands(x: np.ndarray, weight: np.ndarray, kernel, groups: int, **conv) -> tuple:
    """(x_gm, w_gm) for count_toggles_grouped: one im2col of all channels, columns regrouped
    group-major in (kh, kw, c) order within each group; weights (Kg, g*Ng)."""
    kh, kw = kernel
    C = np.shape(x)[1]
    cg = C // groups
    full = im2col(x, kernel, groups=1, **conv)  # columns (kh, kw, c) over all C
    idx = np.array([(i * kw + j) * C + gi * cg + c for gi in range(groups) for i in range(kh)
                    for j in range(kw) for c in range(cg)], dtype=np.int64)
    x_gm = np.ascontiguousarray(full[:, idx])
    w_gm = np.ascontiguousarray(np.concatenate([weight_gemm(weight, groups, gi) for gi in range(groups)], axis=1))
    return x_gm, w_gm

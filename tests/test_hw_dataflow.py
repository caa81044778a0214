"""hwmodel.dataflow: the three dataflows as data, checked against the SCALE-Sim formulas of
hwmodel.mapping's docstring written out by hand here, through the Dataflow itself, the
layer mapping (map_linear) and the one demand-stream replay loop; toggles on a GEMM small
enough to count by hand; unknown names raise."""
from __future__ import annotations

from dataclasses import replace
from math import ceil

import numpy as np
import pytest

from hwmodel.arch import load_accelerator
from hwmodel.dataflow import DATAFLOWS, Dataflow, dataflow
from hwmodel.mapping import buffer_block_elems, fold_counts, map_linear, replay
from hwmodel.toggles import count_toggles

BASE = load_accelerator("scalesim-32x32-ws")
GEMMS = [(1, 1, 1), (5, 7, 3), (9, 4, 11), (20, 13, 6), (3, 30, 17), (16, 8, 9)]
ARRAYS = [(4, 3), (3, 5), (8, 8)]


def hand(df, M, K, N, R, C):
    """(row folds, col folds, cycles per fold, SRAM ifmap reads, SRAM filter reads), from
    mapping.py's docstring table."""
    if df == "ws":
        return ceil(K / R), ceil(N / C), 2 * R + C + M - 2, M * K * ceil(N / C), K * N
    if df == "os":
        return ceil(M / R), ceil(N / C), K + R + C - 2, M * K * ceil(N / C), K * N * ceil(M / R)
    assert df == "is"
    return ceil(K / R), ceil(M / C), 2 * R + C + N - 2, M * K, K * N * ceil(M / C)


def test_the_three_descriptions():
    assert set(DATAFLOWS) == {"ws", "os", "is"}
    got = {n: (d.rows, d.cols, d.stream, d.stationary) for n, d in DATAFLOWS.items()}
    assert got == {"ws": ("K", "N", "M", "filter"), "os": ("M", "N", "K", "ofmap"),
                   "is": ("K", "M", "N", "ifmap")}
    assert [n for n, d in DATAFLOWS.items() if d.ss_fold_ofmap_writes] == ["os"]
    assert all(dataflow(n) is d and dataflow(d) is d and d.name == n for n, d in DATAFLOWS.items())


@pytest.mark.parametrize("df", ["ws", "os", "is"])
@pytest.mark.parametrize("R,C", ARRAYS)
def test_folds_cycles_and_sram_reads_match_hand_formulas(df, R, C):
    d = dataflow(df)
    accel = replace(BASE, rows=R, cols=C, dataflow=df, dram_model="scalesim")
    for M, K, N in GEMMS:
        rf, cf, per_fold, sx, sw = hand(df, M, K, N, R, C)
        assert fold_counts(M, K, N, R, C, df) == (rf, cf, per_fold)
        assert d.fold_counts(M, K, N, R, C) == (rf, cf, per_fold)
        assert M * K * d.sram_reads("ifmap", M, K, N, R, C) == sx
        assert K * N * d.sram_reads("filter", M, K, N, R, C) == sw
        r = map_linear((M, K), (N, K), accel)
        assert (r["gemm_m"], r["gemm_k"], r["gemm_n"]) == (M, K, N)
        assert (r["row_folds"], r["col_folds"], r["folds"]) == (rf, cf, rf * cf)
        assert r["cycles"] == rf * cf * per_fold
        assert (r["sram_rd_ifmap"], r["sram_rd_filter"]) == (sx, sw)
        k_folds = rf if df in ("ws", "is") else 1  # outputs written once per fold of K
        assert r["sram_wr_ofmap"] == k_folds * M * N
        assert r["ss_sram_wr_ofmap"] == (M * N + rf * cf * (R + C) if df == "os" else k_folds * M * N)


@pytest.mark.parametrize("df", ["ws", "os", "is"])
@pytest.mark.parametrize("R,C", ARRAYS)
def test_replay_demands_what_the_formulas_say(df, R, C):
    """The one replay loop's SRAM demand count equals the closed forms, and a buffer that
    holds every operand fetches each distinct element from DRAM exactly once."""
    for M, K, N in GEMMS:
        _, _, _, sx, sw = hand(df, M, K, N, R, C)
        geo = np.array([1, 1, 1, 1, K, 0, K, 1, 1, 1, 1, 1, 0, 0], np.int64)  # linear: M images
        big = buffer_block_elems(1 << 20, 8)
        assert replay(df, 0, M, K, N, R, C, big, geo, M * K) == (sx, M * K)
        assert replay(df, 1, M, K, N, R, C, big, geo, K * N) == (sw, K * N)
        # a one-element buffer forgets at once: every demand is a fetch
        assert replay(df, 0, M, K, N, R, C, 1, geo, M * K) == (sx, sx)
        assert replay(df, 1, M, K, N, R, C, 1, geo, K * N) == (sw, sw)


def test_toggles_counted_by_hand():
    """X = [[1], [3]] (M=2, K=1), W = [[1, 2]] (K=1, N=2), 8-bit unsigned, 2x2 array."""
    x, w = np.array([[1], [3]]), np.array([[1, 2]])
    # ws: X streams down its column (0->1->3: 1 + 1 toggles) past N=2 PEs; W loaded once (1 + 1)
    # os: X rows stream over K (1; 2 bits) past N=2; W columns over K (1; 1) past M=2
    # is: W's row streams over N (0->1->2: 1 + 2) past M=2; X loaded once (1 + 2)
    want = {"ws": 2 * 2 + 2, "os": 3 * 2 + 2 * 2, "is": 3 * 2 + 3}
    for df, t in want.items():
        got = count_toggles(x, w, 8, False, 8, False, df, 2, 2)
        assert got["mult_toggles"] == t, df
        assert got["n_mac"] == 4


def test_unknown_dataflow_raises():
    with pytest.raises(ValueError, match=r"unknown dataflow 'rs' \(expected one of ws, os, is\)"):
        dataflow("rs")
    with pytest.raises(ValueError, match="unknown dataflow"):
        fold_counts(4, 4, 4, 2, 2, "WS")
    with pytest.raises(ValueError, match="unknown dataflow"):
        count_toggles(np.ones((2, 2)), np.ones((2, 2)), 8, False, 8, False, "rs", 2, 2)
    with pytest.raises(ValueError, match="unknown dataflow"):
        BASE.with_dataflow("rs")
    with pytest.raises(ValueError, match="M, K and N once each"):
        Dataflow("bad", rows="K", cols="K", stream="M")

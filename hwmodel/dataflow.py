"""The dataflows of the MAC array as data: which GEMM dimension is spatial on the PE rows,
which on the columns, which streams in time, and so which operand stays in the PEs.

Every conv2d/linear/matmul is a GEMM per group, Y (M x N) = X (M x K) @ W (K x N): the
ifmap X indexes (M, K), the filter W (K, N), the ofmap Y (M, N). A dataflow puts two of
M, K, N on the R x C array (one on the rows, one on the columns) and streams the third;
the operand that does not index the streamed dimension stays in the PEs (is stationary).
SCALE-Sim 3.0.0's three compute models (scalesim/compute/systolic_compute_{ws,os,is}.py),
fold order column fold outer, row fold inner:

    ws: rows hold K, cols hold N, M streams.   folds = ceil(K/R)*ceil(N/C)
        cycles/fold = 2R + C + M - 2;  SRAM reads ifmap M*K*ceil(N/C), filter K*N
    os: rows hold M, cols hold N, K streams.   folds = ceil(M/R)*ceil(N/C)
        cycles/fold = K + R + C - 2;   SRAM reads ifmap M*K*ceil(N/C), filter K*N*ceil(M/R)
    is: rows hold K, cols hold M, N streams.   folds = ceil(K/R)*ceil(M/C)
        cycles/fold = 2R + C + N - 2;  SRAM reads ifmap M*K, filter K*N*ceil(M/C)

The table follows from the three fields (``Dataflow`` derives each entry):

- folds: ceil(rows dimension / R) * ceil(cols dimension / C);
- cycles per fold: the streamed extent plus R + C - 2 to fill and drain the skewed array,
  plus R to load a stationary operand first (ws, is; os's stationary outputs start at 0);
- SRAM reads of an operand: its size times the folds of the one dimension it does not
  index (1 where that dimension streams): the ifmap is read again for every N fold, the
  filter for every M fold;
- partial sums: an output is written once per fold of K (ws, is: K on the rows; os: K
  streams, so each output is written once).

hwmodel.mapping (folds, cycles, SRAM reads, the demand-stream replay) and hwmodel.toggles
(the toggle walk) read these fields; nothing else branches on the dataflow's name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

DIMS = ("M", "K", "N")  # GEMM dimensions; integer codes 0, 1, 2 for the numba kernels
OPERAND_DIMS = {"ifmap": ("M", "K"), "filter": ("K", "N"), "ofmap": ("M", "N")}


@dataclass(frozen=True)
class Dataflow:
    """One dataflow. rows/cols: the GEMM dimension mapped on the PE rows/columns; stream:
    the one that streams in time. ss_fold_ofmap_writes: SCALE-Sim's bookkeeping quirk of
    this compute model (os) adding R + C ofmap SRAM writes per fold, reported only in
    ss_sram_wr_ofmap for the comparison with SCALE-Sim."""
    name: str
    rows: str
    cols: str
    stream: str
    ss_fold_ofmap_writes: bool = False

    def __post_init__(self):
        if sorted((self.rows, self.cols, self.stream)) != sorted(DIMS):
            raise ValueError(f"dataflow {self.name!r}: rows, cols and stream must be M, K and N "
                             f"once each, got {self.rows}, {self.cols}, {self.stream}")

    @property
    def stationary(self) -> str:
        """The operand that does not index the streamed dimension: it stays in the PEs."""
        return next(op for op, dims in OPERAND_DIMS.items() if self.stream not in dims)

    @property
    def codes(self) -> tuple[int, int, int]:
        """(rows, cols, stream) as indices into (M, K, N), for the numba kernels."""
        return DIMS.index(self.rows), DIMS.index(self.cols), DIMS.index(self.stream)

    def folds_of(self, dim: str, M: int, K: int, N: int, R: int, C: int) -> int:
        """Folds of one GEMM dimension: ceil(extent / R) on the rows, ceil(extent / C) on
        the columns, 1 for the streamed dimension."""
        ext = {"M": M, "K": K, "N": N}[dim]
        if dim == self.rows:
            return math.ceil(ext / R)
        if dim == self.cols:
            return math.ceil(ext / C)
        return 1

    def fill_cycles(self, R: int, C: int) -> int:
        """Cycles of one fold besides the streamed extent: R + C - 2 to fill and drain the
        skewed array, plus R to load the stationary operand when it is an input."""
        return R + C - 2 + (R if self.stationary != "ofmap" else 0)

    def fold_counts(self, M: int, K: int, N: int, R: int, C: int) -> tuple[int, int, int]:
        """(row folds, col folds, cycles per fold) for one GEMM."""
        S = {"M": M, "K": K, "N": N}[self.stream]
        return (self.folds_of(self.rows, M, K, N, R, C), self.folds_of(self.cols, M, K, N, R, C),
                S + self.fill_cycles(R, C))

    def sram_reads(self, operand: str, M: int, K: int, N: int, R: int, C: int) -> int:
        """Times each element of an input operand is read from SRAM: the folds of the GEMM
        dimension it does not index."""
        (other,) = set(DIMS) - set(OPERAND_DIMS[operand])
        return self.folds_of(other, M, K, N, R, C)


DATAFLOWS = {
    "ws": Dataflow("ws", rows="K", cols="N", stream="M"),   # weight stationary
    "os": Dataflow("os", rows="M", cols="N", stream="K", ss_fold_ofmap_writes=True),  # output
    "is": Dataflow("is", rows="K", cols="M", stream="N"),   # input stationary
}


def dataflow(name: str | Dataflow) -> Dataflow:
    """The Dataflow called `name` ("ws", "os" or "is"); a Dataflow passes through."""
    if isinstance(name, Dataflow):
        return name
    try:
        return DATAFLOWS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataflow {name!r} (expected one of {', '.join(DATAFLOWS)})") from None

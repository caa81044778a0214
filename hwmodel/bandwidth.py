"""DRAM bandwidth stalls: a layer takes max(its compute cycles, the cycles its DRAM traffic needs).

The operand buffers are double-buffered (one half computes while the other is filled), so
DRAM transfers overlap compute and a layer waits only for the traffic the bus cannot move
in its compute time. The traffic is what the bus carries: every transfer in whole bursts
(dram_bursts * burst_bytes, the bytes the detailed energy prices), after residency has moved
the kept activations to the global buffer. Bandwidth: Accelerator.dram_cycles (bus_bits/8 *
transfer_mts / clock_mhz bytes per cycle). Columns added to a mapped row:

    compute_cycles  the array's (or vector unit's) cycles, as hwmodel.mapping counts them
    dram_cycles     cycles the DRAM interface needs for the layer's bursts (0 without a data rate)
    stall_cycles    max(0, dram_cycles - compute_cycles) with dram.stalls on, else 0
    cycles          compute_cycles + stall_cycles

utilization stays the array's utilization while it computes (n_mac over compute cycles).
"""
from __future__ import annotations

from .arch import Accelerator


def apply_bandwidth(row: dict, accel: Accelerator) -> None:
    """Add the stall columns to one mapped row, in place (call after residency)."""
    compute = int(row["cycles"])
    dram = accel.dram_cycles(int(row["dram_bursts"]) * accel.burst_bytes)
    stall = max(0, dram - compute) if accel.dram_stalls else 0
    row.update(compute_cycles=compute, dram_cycles=dram, stall_cycles=stall, cycles=compute + stall)

"""Activations held on chip between layers: which tensors a global buffer keeps, and what that
takes off each layer's DRAM traffic.

A tensor is kept from the layer that writes it to the last layer that reads it when it fits
beside the tensors already kept (first come, first kept; a kept tensor is freed once its last
reader has run). A reshape is a view of its input, not a tensor of its own. Never kept: the
input image (it arrives from DRAM), the network's outputs (they go back to the host) and the
weights and constants (read from DRAM once per inference). A kept tensor's write and its
readers' reads go to the global buffer instead of DRAM; partial-sum spills stay in DRAM.
"""
from __future__ import annotations

import numpy as np

from integer_ref.executor import last_uses

from .arch import Accelerator
from .mapping import PARTIAL_READ_OPS, add_bursts, packed_bytes

VIEW_OPS = ("reshape",)


def _root(graph, name: str) -> str:
    """The tensor a name's data lives in: through views to the node that wrote it."""
    while name in graph._index and graph[name].op in VIEW_OPS:
        name = graph[name].inputs[0]
    return name


def resident_tensors(graph, shapes: dict, accel: Accelerator, force_bits: int | None = None) -> set[str]:
    """Names of the tensors the global buffer keeps (empty when residency is off)."""
    if not accel.residency:
        return set()
    last_use: dict[str, int] = {}  # per tensor, through its views
    for name, i in last_uses(graph).items():
        r = _root(graph, name)
        last_use[r] = max(last_use.get(r, -1), i)
    outputs = {_root(graph, o) for o in graph.outputs}
    held: dict[str, int] = {}
    kept: set[str] = set()
    for i, n in enumerate(graph.nodes):
        for r in [r for r in held if last_use.get(r, -1) < i]:
            del held[r]
        if n.op in VIEW_OPS or n.op == "quantize" or n.name in outputs or n.name not in last_use:
            continue
        size = packed_bytes(int(np.prod(shapes[n.name])), force_bits or n.out.bits)
        if sum(held.values()) + size <= accel.sram_global_bytes:
            held[n.name] = size
            kept.add(n.name)
    return kept


def _input_reads(graph, node, shapes: dict, row: dict, force_bits: int | None) -> list[tuple[str, str, int, int]]:
    """(input name, row column it is read under, elements, bytes) for each activation input."""
    if node.op in ("conv2d", "linear"):
        return [(node.inputs[0], "dram_rd_ifmap", row["dram_rd_ifmap"], row["dram_rd_ifmap_bytes"])]
    if node.op == "matmul":
        return [(node.inputs[0], "dram_rd_ifmap", row["dram_rd_ifmap"], row["dram_rd_ifmap_bytes"]),
                (node.inputs[1], "dram_rd_filter", row["dram_rd_filter"], row["dram_rd_filter_bytes"])]
    if node.op in VIEW_OPS or node.op == "quantize":
        return []
    out = []
    for name in node.inputs:  # element-wise ops read each input once (PARTIAL_READ_OPS: what they keep)
        n = int(np.prod(shapes[node.name] if node.op in PARTIAL_READ_OPS else shapes[name]))
        out.append((name, "dram_rd_ifmap", n, packed_bytes(n, force_bits or graph[name].out.bits)))
    return out


def apply_residency(graph, node, shapes: dict, row: dict, kept: set[str], accel: Accelerator,
                    force_bits: int | None = None) -> tuple[set[str], bool]:
    """Move the kept tensors' DRAM traffic of one mapped row to the global buffer, in place
    (columns gb_rd_bytes, gb_wr_bytes; bursts recounted). Returns (the inputs read on chip,
    whether the output stays on chip), for the seed model's DRAM term."""
    row.setdefault("gb_rd_bytes", 0)
    row.setdefault("gb_wr_bytes", 0)
    if not kept:
        return set(), False
    on_chip = set()
    for name, col, n, nbytes in _input_reads(graph, node, shapes, row, force_bits):
        if _root(graph, name) in kept:
            row[col] -= n
            row[col + "_bytes"] -= nbytes
            row["gb_rd_bytes"] += nbytes
            on_chip.add(name)
    out_kept = node.name in kept
    if out_kept:
        n_out = int(np.prod(shapes[node.name]))
        nbytes = packed_bytes(n_out, force_bits or node.out.bits)
        row["dram_wr_ofmap"] -= n_out
        row["dram_wr_ofmap_bytes"] -= nbytes
        row["gb_wr_bytes"] += nbytes
    add_bursts(row, accel)
    return on_chip, out_kept

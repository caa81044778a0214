"""One entry point: the integer program + its operand taps -> per-layer hardware rows.

    res = simulate_graph(graph, taps, load_accelerator("scalesim-32x32-ws"))
    res.rows    # one dict per IR node (columns below), counts for ONE image
    res.totals  # energy totals (seed, detailed, breakdown, FP32), cycles, latency, EDP, preset name

`taps` maps every node name to its integer output for a batch of images (batch axis
first), as integer_ref's executor produces them. All counts and energies are per image
(batch 1): energy per inference. Toggles come from the real operands of the first
`toggle_images` images and are averaged over them.

A row's cycles include its DRAM bandwidth stalls (hwmodel.bandwidth: compute_cycles,
dram_cycles, stall_cycles); the totals' cycles and latency_us are their sums, and the
energy-delay product edp_pj_us = e_total_pj * latency_us (detailed energy per image times
latency per image, pJ·µs; None without a clock). The FP32 reference has its own cycles
(cycles_fp32: every tensor at 32 bits, so more DRAM stalls) and edp_fp32_pj_us.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .arch import Accelerator
from .energy import detailed_energy, fp32_energy, seed_energy
from .mapping import PARTIAL_READ_OPS, constant_operands, input_qparams, map_node, node_conv_geometry, packed_bytes
from .bandwidth import apply_bandwidth
from .residency import apply_residency, resident_tensors
from .toggles import count_toggles, count_toggles_grouped, grouped_gemm_operands, im2col, weight_gemm

ROW_COLUMNS = [
    "layer", "op", "gemm_m", "gemm_k", "gemm_n", "groups", "folds", "cycles", "compute_cycles",
    "dram_cycles", "stall_cycles", "utilization",
    "n_mac", "n_add", "n_elem", "ops_add", "ops_shift", "ops_mul", "ops_div", "ops_sqrt", "ops_lut", "ops_shift_add",
    "n_vec_ops",
    "n_vec_steps", "x_bits", "w_bits", "out_bits",
    "sram_rd_ifmap", "sram_rd_filter", "sram_rd_ofmap", "sram_wr_ofmap",
    "sram_rd_ifmap_bytes", "sram_rd_filter_bytes", "sram_rd_ofmap_bytes", "sram_wr_ofmap_bytes",
    "dram_rd_ifmap", "dram_rd_filter", "dram_rd_ofmap", "dram_wr_ofmap",
    "dram_rd_ifmap_bytes", "dram_rd_filter_bytes", "dram_rd_ofmap_bytes", "dram_wr_ofmap_bytes",
    "dram_bursts", "gb_rd_bytes", "gb_wr_bytes", "psum_spill", "psum_blocks", "dram_tiles", "dram_order",
    "mult_toggles", "mult_toggles_signmag", "mult_toggles_offset",
    "e_mac_pj", "e_vec_pj", "e_sram_pj", "e_dram_pj", "e_total_pj", "e_seed_pj", "e_seed_mac_pj",
    "e_seed_dram_pj", "e_fp32_pj",
]


@dataclass
class HwResult:
    rows: list[dict]
    totals: dict
    accelerator: str = ""
    columns: list[str] = field(default_factory=lambda: list(ROW_COLUMNS))


def batch1_shapes(graph, taps: dict) -> dict:
    """Per-image shapes of every node output (and the graph input)."""
    shapes = {graph.input_name: (1, *graph.input_shape)}
    for n in graph.nodes:
        if n.name not in taps:
            raise ValueError(f"no tap for node {n.name!r}: simulate_graph needs every node's output")
        shapes[n.name] = (1, *np.shape(taps[n.name])[1:])
    return shapes


def matmul_toggles(a: np.ndarray, b: np.ndarray, a_q, b_q, transpose_b: bool, accel: Accelerator) -> dict:
    """Multiplier-input toggles of one image's activation x activation matmul: a (..., M, K)
    streams as the ifmap, b (..., K, N) (or (..., N, K) with transpose_b) is held as the
    weights, one GEMM per head (every leading index), each operand in its own declared width
    and signedness (a_q, b_q: QParams). The heads are laid side by side as the groups of
    count_toggles_grouped, which equals the sum of count_toggles over the heads."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if transpose_b:
        b = np.swapaxes(b, -1, -2)
    M, K = a.shape[-2:]
    N = b.shape[-1]
    heads = int(np.prod(a.shape[:-2]))
    x_gm = a.reshape(heads, M, K).transpose(1, 0, 2).reshape(M, heads * K)
    w_gm = b.reshape(heads, K, N).transpose(1, 0, 2).reshape(K, heads * N)
    return count_toggles_grouped(x_gm, w_gm, heads, a_q.bits, a_q.signed, b_q.bits, b_q.signed,
                                 accel.dataflow, accel.rows, accel.cols)


def node_toggles(graph, node, taps: dict, accel: Accelerator, images: int) -> dict | None:
    """Average multiplier-input toggles per image for a conv2d/linear/matmul node (None for a
    log2-attention matmul: shifts and adds, no multiplier)."""
    if node.op == "matmul" and node.attrs["a_log2"]:
        return None
    if node.op == "matmul":
        a_all, b_all = (np.asarray(taps[i]) for i in node.inputs)
        qa, qb = (graph[i].out for i in node.inputs)
        images = max(1, min(int(images), a_all.shape[0]))
        acc = {"mult_toggles": 0.0, "mult_toggles_signmag": 0.0, "mult_toggles_offset": 0.0}
        for img in range(images):
            t = matmul_toggles(a_all[img], b_all[img], qa, qb, bool(node.attrs["transpose_b"]), accel)
            for k in acc:
                acc[k] += t[k]
        return {k: v / images for k, v in acc.items()}
    if node.op not in ("conv2d", "linear"):
        return None
    x_all = np.asarray(taps[node.inputs[0]])
    xq = input_qparams(graph, node)
    wq = node.weight_q
    w = np.asarray(node.params["weight"], dtype=np.int64)
    images = max(1, min(int(images), x_all.shape[0]))
    acc = {"mult_toggles": 0.0, "mult_toggles_signmag": 0.0, "mult_toggles_offset": 0.0}
    for img in range(images):
        x = x_all[img:img + 1]
        if node.op == "linear":
            pairs = [(x.reshape(-1, w.shape[1]).astype(np.int64), np.ascontiguousarray(w.T))]
        else:
            g = int(node.attrs["groups"])
            geo = node_conv_geometry(node, x.shape)
            conv = dict(stride=(geo["sh"], geo["sw"]), dilation=(geo["dh"], geo["dw"]),
                        padding=(geo["pt"], geo["pb"], geo["pl"], geo["pr"]),
                        zero_point=int(xq.zero_point))
            if g > 1:  # all groups in a few whole-layer kernel calls
                xg, wg = grouped_gemm_operands(x, w, (geo["kh"], geo["kw"]), g, **conv)
                t = count_toggles_grouped(xg, wg, g, xq.bits, xq.signed, wq.bits, wq.signed,
                                          accel.dataflow, accel.rows, accel.cols)
                for k in acc:
                    acc[k] += t[k]
                continue
            pairs = [(im2col(x, (geo["kh"], geo["kw"]), **conv), weight_gemm(w, 1, 0))]
        for xg, wg in pairs:
            t = count_toggles(xg, wg, xq.bits, xq.signed, wq.bits, wq.signed,
                              accel.dataflow, accel.rows, accel.cols)
            for k in acc:
                acc[k] += t[k]
    return {k: v / images for k, v in acc.items()}


def _seed_mem(graph, node, shapes, row, on_chip: tuple[set[str], bool] = (set(), False)) -> list[tuple[int, int]]:
    """The seed model's DRAM tensors of one node: its inputs, weights, constants and output, less
    those the global buffer holds (on_chip: apply_residency's inputs read on chip, output kept)."""
    if node.op in ("reshape", "quantize"):
        return []
    ins, out_kept = on_chip
    mem = [(int(np.prod(shapes[i])), graph[i].out.bits) for i in node.inputs if i in graph._index and i not in ins]
    if node.op in PARTIAL_READ_OPS:
        mem = [(int(np.prod(shapes[node.name])), b) for _, b in mem]
    if "weight" in node.params:
        mem.append((int(np.prod(node.params["weight"].shape)), node.weight_q.bits))
    mem += constant_operands(node)
    if not out_kept:
        mem.append((int(np.prod(shapes[node.name])), node.out.bits))
    return mem


def fp32_reference(graph, shapes: dict, accel: Accelerator) -> dict:
    """FP32 energy of the unquantized model on the same array: per layer and total (pJ).

    Detailed: every tensor at 32 bits through the same mapping (SRAM, DRAM bursts), an fp32
    multiply + add per MAC. Seed: fp32 multiply + add per MAC, fp32 add per pool/residual
    add, compulsory DRAM traffic of every tensor once at 32 bits."""
    per, seed, cycles, stalls = {}, 0.0, 0, 0
    en = accel.energy
    kept = resident_tensors(graph, shapes, accel, force_bits=32)
    for n in graph.nodes:
        row = map_node(graph, n, shapes, accel, force_bits=32)
        on_chip = apply_residency(graph, n, shapes, row, kept, accel, force_bits=32)
        apply_bandwidth(row, accel)
        cycles += row["cycles"]
        stalls += row["stall_cycles"]
        per[n.name] = fp32_energy(accel, row)
        mem = sum(k for k, _ in _seed_mem(graph, n, shapes, row, on_chip))
        seed += (row["n_mac"] * (en.e_fp32_mult_pj + en.e_fp32_add_pj) + row["n_add"] * en.e_fp32_add_pj
                 + 32 * mem * en.e_dram_bit_pj)
    return {"layers": per, "e_fp32_pj": float(sum(per.values())), "e_fp32_seed_pj": float(seed),
            "cycles_fp32": int(cycles), "stall_cycles_fp32": int(stalls)}


def edp(e_pj: float, latency_us: float | None) -> float | None:
    """Energy-delay product per image in pJ·µs (None without a latency, i.e. without a clock)."""
    return None if latency_us is None else float(e_pj) * float(latency_us)


def simulate_graph(graph, taps: dict, accel: Accelerator, toggle_images: int = 1,
                   mac_form: str = "max", dram_model: str | None = None) -> HwResult:
    """dram_model overrides accel.dram_model ("reuse" or "scalesim"); FP32 uses the same."""
    if dram_model is not None:
        accel = accel.with_dram_model(dram_model)
    shapes = batch1_shapes(graph, taps)
    fp32 = fp32_reference(graph, shapes, accel)
    rows = []
    kept = resident_tensors(graph, shapes, accel)
    on_chip = {}
    for node in graph.nodes:
        row = map_node(graph, node, shapes, accel)
        on_chip[node.name] = apply_residency(graph, node, shapes, row, kept, accel)
        apply_bandwidth(row, accel)
        tg = node_toggles(graph, node, taps, accel, toggle_images)
        row.update(tg or {"mult_toggles": 0, "mult_toggles_signmag": 0, "mult_toggles_offset": 0})
        row.update(seed_energy(accel, row["n_mac"], row["x_bits"], row["w_bits"],
                               _seed_mem(graph, node, shapes, row, on_chip[node.name]), form=mac_form))
        row.update(detailed_energy(accel, row, tg["mult_toggles"] if tg else None))
        row["e_fp32_pj"] = fp32["layers"][node.name]
        row.pop("vec_stages", None)  # the stage list priced above; the counts stay as columns
        rows.append(row)

    def tot(k):
        return float(sum(r[k] for r in rows))

    totals = {
        "accelerator": accel.name, "dataflow": accel.dataflow, "dram_model": accel.dram_model,
        "rows": accel.rows,
        "cols": accel.cols, "mac_form": mac_form, "toggle_images": int(toggle_images),
        "cycles": int(tot("cycles")), "compute_cycles": int(tot("compute_cycles")),
        "stall_cycles": int(tot("stall_cycles")), "dram_stalls": bool(accel.dram_stalls),
        "dram_bytes_per_cycle": accel.dram_bytes_per_cycle(), "n_mac": int(tot("n_mac")),
        "e_seed_pj": tot("e_seed_pj"), "e_seed_mac_pj": tot("e_seed_mac_pj"),
        "e_seed_dram_pj": tot("e_seed_dram_pj"),
        "e_total_pj": tot("e_total_pj"), "e_mac_pj": tot("e_mac_pj"), "e_vec_pj": tot("e_vec_pj"),
        "n_vec_ops": int(tot("n_vec_ops")),
        "e_sram_pj": tot("e_sram_pj"), "e_dram_pj": tot("e_dram_pj"),
        "residency": bool(accel.residency), "resident_tensors": len(kept),
        "e_fp32_pj": fp32["e_fp32_pj"], "e_fp32_seed_pj": fp32["e_fp32_seed_pj"],
        "seed_dram_bytes": int(sum(
            packed_bytes(n, b) for node in graph.nodes
            for n, b in _seed_mem(graph, node, shapes, None, on_chip[node.name]))),
        "dram_bytes": int(tot("dram_rd_ifmap_bytes") + tot("dram_rd_filter_bytes")
                          + tot("dram_rd_ofmap_bytes") + tot("dram_wr_ofmap_bytes")),
        "mult_toggles": tot("mult_toggles"), "mult_toggles_signmag": tot("mult_toggles_signmag"),
        "mult_toggles_offset": tot("mult_toggles_offset"),
    }
    totals["clock_mhz"] = accel.clock_mhz
    totals["latency_us"] = accel.latency_us(totals["cycles"])
    totals["edp_pj_us"] = edp(totals["e_total_pj"], totals["latency_us"])
    totals["cycles_fp32"] = fp32["cycles_fp32"]
    totals["stall_cycles_fp32"] = fp32["stall_cycles_fp32"]
    totals["latency_fp32_us"] = accel.latency_us(fp32["cycles_fp32"])
    totals["edp_fp32_pj_us"] = edp(fp32["e_fp32_pj"], totals["latency_fp32_us"])
    totals["energy_vs_fp32_detailed"] = totals["e_total_pj"] / totals["e_fp32_pj"] if totals["e_fp32_pj"] else float("nan")
    return HwResult(rows=rows, totals=totals, accelerator=accel.name)

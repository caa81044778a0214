"""Glue between a quantization run and hwmodel: simulate, summarise, merge, plot."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from hwmodel.simulate import HwResult, simulate_graph
from hwmodel.mapping import node_conv_geometry
from hwmodel.toggles import count_toggles, im2col
from integer_ref.arith import qrange, quantize_float32
from quantsim.graph.capture import run_float, run_node
from quantsim.run.stages import integer_taps
from reports.plots import energy_breakdown


def simulate(graph, taps, accel, toggle_images: int = 1, mac_form: str = "max", images=None,
             dram_model: str | None = None) -> HwResult:
    """Hardware rows for the program; `taps` are integer_ref's outputs (or run them on `images`).

    dram_model ("reuse" | "scalesim") overrides the preset's [dram] model."""
    if taps is None:
        taps = integer_taps(graph, images)
    return simulate_graph(graph, taps, accel, toggle_images=toggle_images, mac_form=mac_form,
                          dram_model=dram_model)


def energy_summary(hw: HwResult, w8: HwResult, fp32: bool = False) -> dict:
    """Energy totals for summary.json: seed and detailed models, breakdown, ratios.

    `w8` is the W8A8 program of the same model on the same accelerator and DRAM model (pass
    `hw` itself for a W8A8 run): energy_ratio_w8a8 / seed_ratio_w8a8 compare the detailed /
    seed totals with it, energy_ratio_fp32 / seed_ratio_fp32 with the FP32 reference of the
    same model. For an FP32 run (fp32=True) the totals are the FP32 reference's, its cycles,
    latency and energy-delay product too (every tensor at 32 bits: more DRAM stalls).
    edp_pj_us is hwmodel's detailed energy times latency (pJ·µs, None without a clock);
    edp_ratio_w8a8 divides it by the W8A8 program's."""
    t, r = hw.totals, w8.totals
    for k in ("accelerator", "dram_model", "mac_form"):
        if t.get(k) != r.get(k):
            raise ValueError(f"energy_summary: W8A8 reference ran with {k}={r.get(k)!r}, this run with {t.get(k)!r}")
    out = {
        "accelerator": t["accelerator"], "dataflow": t["dataflow"], "dram_model": t["dram_model"],
        "array": f"{t['rows']}x{t['cols']}",
        "mac_form": t["mac_form"], "toggle_images": t["toggle_images"],
        "cycles": t["cycles"], "compute_cycles": t["compute_cycles"], "stall_cycles": t["stall_cycles"],
        "dram_stalls": t["dram_stalls"], "dram_bytes_per_cycle": t["dram_bytes_per_cycle"],
        "clock_mhz": t["clock_mhz"], "latency_us": t["latency_us"], "edp_pj_us": t["edp_pj_us"],
        "latency_w8a8_us": r["latency_us"], "edp_w8a8_pj_us": r["edp_pj_us"],
        "n_mac": t["n_mac"], "dram_bytes": t["dram_bytes"],
        "e_fp32_pj": t["e_fp32_pj"], "e_fp32_seed_pj": t["e_fp32_seed_pj"],
        "e_w8a8_pj": r["e_total_pj"], "e_w8a8_seed_pj": r["e_seed_pj"],
    }
    if fp32:  # the float model: only its reference energy is meaningful
        out.update(e_total_pj=t["e_fp32_pj"], e_seed_pj=t["e_fp32_seed_pj"], energy_ratio_fp32=1.0,
                   seed_ratio_fp32=1.0, energy_ratio_w8a8=t["e_fp32_pj"] / r["e_total_pj"],
                   seed_ratio_w8a8=t["e_fp32_seed_pj"] / r["e_seed_pj"],
                   cycles=t["cycles_fp32"], stall_cycles=t["stall_cycles_fp32"],
                   compute_cycles=t["cycles_fp32"] - t["stall_cycles_fp32"], latency_us=t["latency_fp32_us"],
                   edp_pj_us=t["edp_fp32_pj_us"], edp_ratio_w8a8=_ratio(t["edp_fp32_pj_us"], r["edp_pj_us"]))
        return out
    out.update({
        "e_total_pj": t["e_total_pj"], "e_mac_pj": t["e_mac_pj"], "e_sram_pj": t["e_sram_pj"],
        "e_dram_pj": t["e_dram_pj"],
        "e_seed_pj": t["e_seed_pj"], "e_seed_mac_pj": t["e_seed_mac_pj"], "e_seed_dram_pj": t["e_seed_dram_pj"],
        "energy_ratio_fp32": t["e_total_pj"] / t["e_fp32_pj"],
        "seed_ratio_fp32": t["e_seed_pj"] / t["e_fp32_seed_pj"],
        "energy_ratio_w8a8": t["e_total_pj"] / r["e_total_pj"],
        "seed_ratio_w8a8": t["e_seed_pj"] / r["e_seed_pj"],
        "edp_ratio_w8a8": _ratio(t["edp_pj_us"], r["edp_pj_us"]),
        "mult_toggles": t["mult_toggles"], "mult_toggles_signmag": t["mult_toggles_signmag"],
        "mult_toggles_offset": t["mult_toggles_offset"],
    })
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else float(a) / float(b)


def plot_energy(hw: HwResult, path_stem, title: str) -> None:
    df = pd.DataFrame(hw.rows)
    df = df[df["e_total_pj"] > 0]
    energy_breakdown(df, path_stem, title=title)


# --------------------------------------------------------------------------------------
# Signed vs unsigned multiplier inputs on real images (tests/test_hw_real.py, benchmarks)
# --------------------------------------------------------------------------------------
def relu_toggle_study(prep, graph, x_calib: list, x, accel, dataflows=("ws", "os")) -> list[dict]:
    """For every conv whose input is a fused-ReLU tensor: multiplier-input toggles of that
    layer's activation stream held unsigned post-ReLU (integer_ref's real operands) against
    the same layer's pre-ReLU tensor quantized signed at the same width.

    The pre-ReLU tensor is the producer's output without its fused activation
    (quantsim.graph.capture.run_node on the node with act=None), quantized with the executor's
    rules for a signed activation: restricted range +-(2^(b-1)-1), scale = max|x| over the
    calibration batches / qmax (the minmax rule of quantsim.quant.lower), round half to even in
    float32 (integer_ref.arith.quantize_float32). The post-ReLU stream is integer_ref's tap
    of the producer (unsigned, plain binary). Both go through the same im2col (zero padding)
    and hwmodel.toggles.count_toggles on `accel`'s array; activation-input toggles only
    (the weight input is held at zero, so its toggles vanish; the weights are the same in
    both cases). Returns one row per (layer, dataflow); counts for all images in x."""
    fg = prep.fgraph
    targets = {}
    for node in graph.nodes:
        if node.op != "conv2d":
            continue
        src = node.inputs[0]
        if src in fg.index and fg[src].act == "relu" and not graph[src].out.signed:
            targets[node.name] = src
    producers = set(targets.values())

    def pre_relu(batch):
        seen = {}

        def transform(n, xs):
            if n.name not in producers:
                return None
            y = run_node(dataclasses.replace(n, act=None), xs)
            seen[n.name] = y
            return torch.relu(y)
        run_float(fg, batch, transform=transform)
        return seen

    absmax = dict.fromkeys(producers, 0.0)
    for b in x_calib:
        for k, v in pre_relu(b).items():
            absmax[k] = max(absmax[k], float(v.abs().max()))
    pre = {k: v.numpy() for k, v in pre_relu(x).items()}
    taps = integer_taps(graph, x)
    rows = []
    for name, src in targets.items():
        node = graph[name]
        bits = graph[src].out.bits
        lo, hi = qrange(bits, True)
        q_signed = quantize_float32(pre[src], max(absmax[src], 1e-8) / hi, 0, lo, hi)
        q_unsigned = np.asarray(taps[src], dtype=np.int64)
        g = int(node.attrs["groups"])
        w = np.asarray(node.params["weight"])
        geo = node_conv_geometry(node, q_unsigned.shape)
        kw = dict(stride=(geo["sh"], geo["sw"]), dilation=(geo["dh"], geo["dw"]),
                  padding=(geo["pt"], geo["pb"], geo["pl"], geo["pr"]), groups=g)
        for df in dataflows:
            tot = dict(unsigned=0, unsigned_signmag=0, unsigned_offset=0, signed_twos=0,
                       signed_signmag=0, signed_offset=0, relu_twos=0, relu_unsigned=0, n_mac=0)
            for gi in range(g):
                xu = im2col(q_unsigned, (geo["kh"], geo["kw"]), group=gi, **kw)
                xs = im2col(q_signed, (geo["kh"], geo["kw"]), group=gi, **kw)
                xr = np.maximum(xs, 0)  # ReLU applied to the signed codes, same scale
                w0 = np.zeros((xu.shape[1], w.shape[0] // g), np.int64)
                args = (df, accel.rows, accel.cols)
                tu = count_toggles(xu, w0, bits, False, 8, True, *args)
                ts = count_toggles(xs, w0, bits, True, 8, True, *args)
                tr = count_toggles(xr, w0, bits, True, 8, True, *args)
                tr_u = count_toggles(xr, w0, bits, False, 8, True, *args)
                tot["unsigned"] += tu["mult_toggles"]
                tot["unsigned_signmag"] += tu["mult_toggles_signmag"]
                tot["unsigned_offset"] += tu["mult_toggles_offset"]
                tot["signed_twos"] += ts["mult_toggles"]
                tot["signed_signmag"] += ts["mult_toggles_signmag"]
                tot["signed_offset"] += ts["mult_toggles_offset"]
                tot["relu_twos"] += tr["mult_toggles"]
                tot["relu_unsigned"] += tr_u["mult_toggles"]
                tot["n_mac"] += tu["n_mac"]
            rows.append(dict(layer=name, producer=src, bits=bits, dataflow=df,
                             frac_negative=float((q_signed < 0).mean()),
                             frac_zero_unsigned=float((q_unsigned == 0).mean()), **tot))
    return rows

"""The second-generation hardware model beside the first: on-chip residency of activations in a
global buffer, a bit-serial (precision-scalable) array, and DRAM bandwidth stalls (latency and
energy-delay product), for CIFAR ResNet-20 and EfficientNet-Lite0 at W8A8 / W6A6 / W4A4.

    python benchmarks/hw_generations.py [--models resnet20,lite0] [--calib 32] [--no-docs]

Pairs, each against its baseline in the same run:
- edge-16x16-ws (no global buffer) vs edge-16x16-gb256k-ws (256 KiB global buffer, residency on);
- scalesim-32x32-os (bit-parallel) vs bitserial-32x32-os (activations one bit per cycle);
- scalesim-32x32-os vs bitfusion-32x32-os (Bit Fusion-style PEs: (8/b_w)(8/b_a) products per cycle).
Every preset counts DRAM stalls (cycles = max(compute, DRAM bus cycles), hwmodel.bandwidth); the
tables give compute and stall cycles, latency at the preset's (assumed) clock and the EDP, and per
preset at W8A8 the layers that wait longest for DRAM.
One real image per inference (operands from integer_ref); weights and data from ../shared.
Writes the `hw-generations` section of docs/results.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, replace_section  # noqa: E402
from energy import MODELS, _images  # noqa: E402

from hwmodel import load_accelerator  # noqa: E402
from quantsim.quant.config import QuantConfig  # noqa: E402
from quantsim.run import hardware, stages  # noqa: E402
from quantsim.zoo import models  # noqa: E402

PAIRS = [("edge-16x16-ws", "edge-16x16-gb256k-ws"), ("scalesim-32x32-os", "bitserial-32x32-os"),
         ("scalesim-32x32-os", "bitfusion-32x32-os")]
BITS = [8, 6, 4]
STALLED_SHOWN = 5  # per model and preset, the layers with the most stall cycles at W8A8


def run_model(name: str, n_calib: int) -> tuple[list[dict], list[dict]]:
    """(one row per width and preset: totals; one row per stalled layer at W8A8)."""
    spec_fn, calib_spec, tog_spec, _ = MODELS[name]
    spec, arch = spec_fn()
    torch.manual_seed(0)
    loaded = models.load_model(spec, arch=arch)
    xc = _images(calib_spec, loaded.preprocess, "calib", n_calib, 0)
    x = _images(tog_spec, loaded.preprocess, "eval", 1, 1)
    prep = stages.prepare(loaded.model, loaded.preprocess.input_size, list(xc.split(16)), progress=False)
    rows, stalled = [], []
    for b in BITS:
        g = stages.quantize(prep, QuantConfig(w_bits=b, a_bits=b))
        taps = stages.integer_taps(g, x)
        for base, new in PAIRS:
            for preset in (base, new):
                t0 = time.perf_counter()
                accel = load_accelerator(preset)
                hw = hardware.simulate(g, taps, accel)
                t = hw.totals
                if b == 8 and not any(s["model"] == name and s["preset"] == preset for s in stalled):
                    stalled += [dict(model=name, preset=preset, layer=r["layer"], op=r["op"],
                                     compute=r["compute_cycles"], dram=r["dram_cycles"], stall=r["stall_cycles"],
                                     dram_bytes=r["dram_bursts"] * accel.burst_bytes)
                                for r in hw.rows if r["stall_cycles"]]
                rows.append(dict(model=name, pair=f"{base} vs {new}", preset=preset, bits=f"W{b}A{b}",
                                 cycles=t["cycles"], compute_cycles=t["compute_cycles"],
                                 stall_cycles=t["stall_cycles"], latency_us=t["latency_us"], edp_pj_us=t["edp_pj_us"],
                                 stalled_layers=sum(1 for r in hw.rows if r["stall_cycles"]),
                                 bytes_per_cycle=t["dram_bytes_per_cycle"],
                                 dram_bytes=t["dram_bytes"], seed_uj=t["e_seed_pj"] / 1e6,
                                 det_uj=t["e_total_pj"] / 1e6, mac_uj=t["e_mac_pj"] / 1e6,
                                 sram_uj=t["e_sram_pj"] / 1e6, dram_uj=t["e_dram_pj"] / 1e6,
                                 fp32_uj=t["e_fp32_pj"] / 1e6, kept=t["resident_tensors"],
                                 seconds=time.perf_counter() - t0))
    return rows, stalled


def markdown(df: pd.DataFrame, stalled: pd.DataFrame, n_calib: int) -> str:
    L = ["## Hardware model, second generation: residency, bit-serial arrays, DRAM stalls (issue 16)", "",
         f"`python benchmarks/hw_generations.py` ({n_calib} calibration images, one real image per inference). "
         "Each new preset beside the one it extends, in the same run. `edge-16x16-gb256k-ws` is `edge-16x16-ws` "
         "plus a 256 KiB global buffer that keeps each activation on chip while it fits (first come, first kept; "
         "weights, the image and the logits always cross DRAM; global-buffer bits at 0.82 pJ, interpolated from "
         "Horowitz's 32 KB and 1 MB SRAM figures). `bitserial-32x32-os` is `scalesim-32x32-os` fed one "
         "activation bit per cycle (Stripes-style): cycles scale with b_a, traffic and energy terms do not "
         "change (its per-MAC energy is the same b² law, a simplification). `bitfusion-32x32-os` is "
         "`scalesim-32x32-os` with Bit Fusion-style PEs (16 2-bit BitBricks each): (8/b_w)(8/b_a) products of "
         "the same dot product per PE per cycle, so the schedule is that of K / lanes (4 lanes at W4A4; W6A6 "
         "rounds up to 8 bits: 1 lane); traffic and energy terms unchanged.", "",
         "| model | bits | preset | cycles | DRAM bytes | kept tensors | seed µJ | detailed µJ | MAC / SRAM+GB / DRAM µJ | "
         "vs baseline: cycles, DRAM bytes, detailed E |", "|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for (model, bits, pair), grp in df.groupby(["model", "bits", "pair"], sort=False):
        base = grp.iloc[0]
        for _, r in grp.iterrows():
            rel = "baseline" if r.preset == base.preset else (
                f"{r.cycles / base.cycles:.3f}, {r.dram_bytes / base.dram_bytes:.3f}, {r.det_uj / base.det_uj:.3f}")
            L.append(f"| {model} | {bits} | {r.preset} | {int(r.cycles):,} | {int(r.dram_bytes):,} | {int(r.kept)} | "
                     f"{r.seed_uj:.2f} | {r.det_uj:.2f} | {r.mac_uj:.2f} / {r.sram_uj:.2f} / {r.dram_uj:.2f} | {rel} |")
    L += ["", "### DRAM bandwidth: stalls, latency and energy-delay product", "",
          "Same run. Each preset's DRAM moves bus_bits/8 x transfer_mts / clock_mhz bytes per cycle (DDR4-3200 or "
          "LPDDR4-3200 on the edge and SCALE-Sim-sized presets, HBM2 at 2 Gb/s per pin on hbm-64x64-os; the "
          "pairing and the clocks are assumptions, named in each preset). A layer takes max(compute, the cycles its "
          "DRAM bursts need): transfers overlap compute (double-buffered SRAM), and the rest is stall. "
          "Latency = cycles / clock; EDP = detailed energy x latency. `dram.stalls = false` in a preset, "
          "or `--dram-stalls off`, gives "
          "the cycles without stalls (tests/test_hw_bandwidth.py: main's cycles, layer for layer).", "",
          "| model | bits | preset | B/cycle | compute cycles | stall cycles | stalled layers | latency µs | "
          "latency without stalls µs | detailed µJ | EDP nJ·s |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in df.itertuples():
        clock = r.cycles / r.latency_us
        L.append(f"| {r.model} | {r.bits} | {r.preset} | {r.bytes_per_cycle:.3g} | {int(r.compute_cycles):,} | "
                 f"{int(r.stall_cycles):,} | {int(r.stalled_layers)} | {r.latency_us:,.1f} | "
                 f"{r.compute_cycles / clock:,.1f} | {r.det_uj:.2f} | {r.edp_pj_us * 1e-9:,.1f} |")
    L += ["", "Stalled layers at W8A8 by op: " + "; ".join(
        f"{model} on {preset}: " + ", ".join(f"{n} {op}" for op, n in grp["op"].value_counts().items())
        for (model, preset), grp in stalled.groupby(["model", "preset"], sort=False)) + "."]
    L += ["", f"Per preset at W8A8, the {STALLED_SHOWN} layers that wait longest for DRAM (cycles per image; "
          "DRAM bytes as the bus moves them, whole bursts):", "",
          "| model | preset | layer | op | compute cycles | DRAM bus cycles | stall cycles | DRAM bytes |",
          "|---|---|---|---|---:|---:|---:|---:|"]
    for (model, preset), grp in stalled.groupby(["model", "preset"], sort=False):
        for r in grp.sort_values("stall", ascending=False, kind="stable").head(STALLED_SHOWN).itertuples():
            L.append(f"| {model} | {preset} | {r.layer} | {r.op} | {int(r.compute):,} | {int(r.dram):,} | "
                     f"{int(r.stall):,} | {int(r.dram_bytes):,} |")
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,lite0")
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    rows, stalled = [], []
    for name in tqdm(args.models.split(","), desc="models", unit="model"):
        r, st = run_model(name, args.calib)
        rows, stalled = rows + r, stalled + st
    df = pd.DataFrame(rows)
    st = pd.DataFrame(stalled, columns=["model", "preset", "layer", "op", "compute", "dram", "stall", "dram_bytes"])
    pd.set_option("display.width", 200)
    print(df.drop(columns=["pair"]).to_string(index=False))
    print(st.sort_values("stall", ascending=False).head(20).to_string(index=False))
    if not args.no_docs:
        replace_section(ROOT / "docs" / "results.md", "hw-generations", markdown(df, st, args.calib))


if __name__ == "__main__":
    main()

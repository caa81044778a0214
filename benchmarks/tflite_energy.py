"""Per-layer energy of the deployed int8 MobileNetV2 (TFLite) on the accelerator presets.

    python benchmarks/tflite_energy.py [--presets scalesim-32x32-ws,scalesim-32x32-os,edge-16x16-ws]

Runs `python -m quantsim.simulate tf2_mobilenet_v2_1.0_224_ptq.tflite` (imported, TFLite's own
arithmetic, checked against TFLite's reference kernels on 2 images) once per preset on real
imagenet-val images, and writes the per-layer detailed energy (MAC / SRAM / DRAM) and totals
to the `tflite-energy` section of docs/results.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from common import ROOT, SHARED, replace_section

MODEL = SHARED / "models" / "tflite" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"


def run_preset(preset: str, out: Path, n_eval: int) -> tuple[dict, pd.DataFrame]:
    cmd = [sys.executable, "-m", "quantsim.simulate", str(MODEL), "--data", f"imagenet:{SHARED}/data/imagenet-val",
           "--eval", str(n_eval), "--bitexact-images", "2", "--oracle", "tflite", "--accel", preset,
           "--out", str(out), "--no-progress"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads((out / "summary.json").read_text()), pd.read_csv(out / "layers.csv")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--presets", default="scalesim-32x32-ws,scalesim-32x32-os,edge-16x16-ws")
    p.add_argument("--eval", type=int, default=64)
    p.add_argument("--top", type=int, default=12, help="layers listed per preset (largest energy first)")
    args = p.parse_args()
    lines = ["## Deployed int8 MobileNetV2 (TFLite) on the accelerator presets (issue 6)", "",
             f"`python benchmarks/tflite_energy.py` — `tf2_mobilenet_v2_1.0_224_ptq.tflite` imported with its own "
             f"arithmetic (gemmlowp requant, int8 per-channel weights), checked against TFLite's reference kernels "
             f"(`--oracle tflite`, 2 images, every layer), top-1 on {args.eval} imagenet-val images. Energy per "
             "image, detailed model (toggle-aware MAC from the real operands of one image, SRAM, DRAM bursts).", "",
             "| preset | top-1 % | oracle mismatches | cycles | MAC µJ | SRAM µJ | DRAM µJ | total µJ | seed µJ |",
             "|---|---|---|---|---|---|---|---|---|"]
    tables = []
    with tempfile.TemporaryDirectory() as d:
        for preset in args.presets.split(","):
            s, layers = run_preset(preset, Path(d) / preset, args.eval)
            lines.append(f"| {preset} | {s['top1']:.2f} | {s.get('oracle_mismatches')} | {s['cycles']:,} | "
                         f"{s['e_mac_pj'] / 1e6:.1f} | {s['e_sram_pj'] / 1e6:.1f} | {s['e_dram_pj'] / 1e6:.1f} | "
                         f"{s['e_total_pj'] / 1e6:.1f} | {s['e_seed_pj'] / 1e6:.1f} |")
            top = layers[layers.e_total_pj > 0].nlargest(args.top, "e_total_pj")
            t = [f"### {preset}: the {args.top} most energy-hungry layers", "",
                 "| layer | op | GEMM M×K×N | utilization | MAC µJ | SRAM µJ | DRAM µJ | total µJ | share |",
                 "|---|---|---|---|---|---|---|---|---|"]
            total = layers.e_total_pj.sum()
            for r in top.itertuples():
                t.append(f"| {r.layer} | {r.op} | {int(r.gemm_m)}×{int(r.gemm_k)}×{int(r.gemm_n)} | "
                         f"{r.utilization:.2f} | {r.e_mac_pj / 1e6:.2f} | {r.e_sram_pj / 1e6:.2f} | "
                         f"{r.e_dram_pj / 1e6:.2f} | {r.e_total_pj / 1e6:.2f} | {100 * r.e_total_pj / total:.1f}% |")
            tables += [""] + t
    body = "\n".join(lines + tables)
    print(body)
    replace_section(ROOT / "docs" / "results.md", "tflite-energy", body)


if __name__ == "__main__":
    main()

"""Time the hardware simulation (mapping + toggles + energy) of ResNet-18 at 224x224, one image,
on the real integer operands integer_ref produces for a real image.

The program: torchvision ResNet-18 (random-init weights: no ImageNet weights are stored here),
calibrated on real ../shared/data/imagenet-calib images, W8A8, operands from integer_ref on
one real imagenet-val image. Timed: quantsim.run.hardware.simulate on those taps (every layer
mapped, SRAM/DRAM counted, multiplier-input toggles of every conv/linear counted from the
real operands, energies), for the default "reuse" DRAM model and for the "scalesim" replay.
Printed next to SCALE-Sim 3.0.0's wall time for the same network and preset (compute and
memory counts only: no toggles, no energy), run here in .venv-scalesim when it exists,
otherwise the time recorded with the fixtures (tests/fixtures/scalesim/README.md).

    python benchmarks/hw_speed.py [--preset scalesim-32x32-ws] [--skip-scalesim]
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import SHARED  # noqa: E402
from scalesim_compare import FIXTURES, NETWORKS, SCALESIM_PY, run_scalesim, write_inputs  # noqa: E402

from hwmodel.arch import load_accelerator  # noqa: E402


def fixture_seconds(preset: str) -> float | None:
    """SCALE-Sim's ResNet-18 wall time recorded in the fixtures' README for this dataflow."""
    readme = FIXTURES / "README.md"
    if not readme.exists():
        return None
    m = re.search(r"ResNet-18 ws (\d+) s, os (\d+) s", readme.read_text())
    if not m:
        return None
    return float(m.group(1) if preset.endswith("ws") else m.group(2))


def resnet18_program(n_calib: int = 8):
    from quantsim.zoo import datasets, models
    from quantsim.run import stages as pipeline
    from quantsim.quant.config import QuantConfig

    torch.manual_seed(0)
    loaded = models.load_model("resnet18")
    pre = loaded.preprocess
    cal = datasets.deterministic_subset(
        datasets.build_dataset(f"imagenet:{SHARED}/data/imagenet-calib", pre, role="calib"), n_calib, 0)
    ev = datasets.deterministic_subset(
        datasets.build_dataset(f"imagenet:{SHARED}/data/imagenet-val", pre, role="eval"), 1, 1)
    xc = torch.stack([cal[i][0] for i in range(len(cal))])
    prep = pipeline.prepare(loaded.model, pre.input_size, [xc], progress=False)
    g = pipeline.quantize(prep, QuantConfig(w_bits=8, a_bits=8))
    x = torch.stack([ev[0][0]])
    t0 = time.perf_counter()
    taps = pipeline.integer_taps(g, x)
    return g, taps, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="scalesim-32x32-ws")
    ap.add_argument("--skip-scalesim", action="store_true", help="print the fixture-recorded time instead")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: hw_speed needs real images")
    from quantsim.run import hardware

    accel = load_accelerator(args.preset)
    g, taps, t_taps = resnet18_program()
    print(f"ResNet-18 224x224 W8A8 program: {len(g.nodes)} nodes; integer_ref taps for 1 image {t_taps:.2f} s")
    best = {}
    for dm in ("reuse", "scalesim"):
        t0 = time.perf_counter()
        hw = hardware.simulate(g, taps, accel, dram_model=dm)  # first call: JIT cache load
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            hardware.simulate(g, taps, accel, dram_model=dm)
            times.append(time.perf_counter() - t0)
        best[dm] = min(times)
        t = hw.totals
        print(f"hwmodel {args.preset}, dram_model={dm}: {best[dm]:.2f} s per image "
              f"(first call {first:.2f} s), {t['n_mac'] / 1e9:.2f} GMAC, {t['mult_toggles'] / 1e9:.2f} G toggles, "
              f"detailed {t['e_total_pj'] / 1e6:.0f} uJ")
    if not args.skip_scalesim and SCALESIM_PY.exists():
        with tempfile.TemporaryDirectory() as d:
            write_inputs(NETWORKS["resnet18"], accel, Path(d), "speed")
            dt = run_scalesim(Path(d))
        src = "run now"
    else:
        dt = fixture_seconds(args.preset)
        src = ("recorded with the fixtures (tests/fixtures/scalesim/README.md, ws and os run side by side "
               "on 2 shared cores)" + ("" if args.skip_scalesim else f"; {SCALESIM_PY.parent.parent} not found"))
        if dt is None:
            print("SCALE-Sim: no venv and no recorded time")
            return
    print(f"SCALE-Sim 3.0.0 same network and preset (counts only, no toggles, no energy): {dt:.0f} s, {src}")
    for dm, b in best.items():
        print(f"  -> hwmodel ({dm}) is {dt / b:.0f}x faster")


if __name__ == "__main__":
    main()

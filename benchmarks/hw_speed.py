"""Time the hardware simulation (mapping + toggles) of ResNet-18 at 224x224, one image.

Random int8 operands of the right shapes stand in for real taps (quantsim feeds real ones).
Printed next to SCALE-Sim 3.0.0's wall time for the same network and preset, run here in
its own venv (about 5-6 minutes; --skip-scalesim to leave it out).

    python benchmarks/hw_speed.py [--preset scalesim-32x32-ws] [--skip-scalesim]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from hwmodel.arch import load_accelerator  # noqa: E402
from hwmodel.mapping import map_conv, map_linear  # noqa: E402
from hwmodel.toggles import count_toggles, im2col, weight_gemm  # noqa: E402
from scalesim_compare import NETWORKS, SCALESIM_PY, run_scalesim, write_inputs  # noqa: E402


def simulate_resnet18(accel, rng) -> tuple[float, int]:
    t0 = time.perf_counter()
    toggles = 0
    for name, h, w, kh, kw, c, o, s, p in NETWORKS["resnet18"]:
        x = rng.integers(-127, 128, (1, c, h, w))
        wt = rng.integers(-127, 128, (o, c, kh, kw))
        if name == "fc":
            map_linear((1, c), (o, c), accel)
            X, W = x.reshape(1, c), np.ascontiguousarray(wt.reshape(o, c).T)
        else:
            map_conv(x.shape, wt.shape, accel, stride=(s, s), padding=(p, p, p, p))
            X = im2col(x, (kh, kw), stride=(s, s), padding=(p, p, p, p))
            W = weight_gemm(wt)
        t = count_toggles(X, W, 8, True, 8, True, accel.dataflow, accel.rows, accel.cols)
        toggles += t["mult_toggles"]
    return time.perf_counter() - t0, toggles


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="scalesim-32x32-ws")
    ap.add_argument("--skip-scalesim", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    accel = load_accelerator(args.preset)
    rng = np.random.default_rng(0)
    t_first, _ = simulate_resnet18(accel, rng)  # includes numba compilation / cache load
    times = [simulate_resnet18(accel, rng)[0] for _ in range(args.repeats)]
    best = min(times)
    print(f"hwmodel ResNet-18 224x224, 1 image, {args.preset} (mapping + toggles): "
          f"{best:.2f} s (first call {t_first:.2f} s incl. JIT)")
    if args.skip_scalesim:
        return
    if not SCALESIM_PY.exists():
        print(f"SCALE-Sim: venv {SCALESIM_PY.parent.parent} not found, skipped")
        return
    with tempfile.TemporaryDirectory() as d:
        write_inputs(NETWORKS["resnet18"], accel, Path(d), "speed")
        dt = run_scalesim(Path(d))
    print(f"SCALE-Sim 3.0.0 same network and preset (no toggles, no energy): {dt:.0f} s "
          f"-> hwmodel is {dt / best:.0f}x faster")


if __name__ == "__main__":
    main()

"""Executor speed against PyTorch FP32 eager on the same images, measured in the same run.

    python benchmarks/speed.py [--models resnet20,lite0] [--images 256] [--threads 2]

Prints images/s for PyTorch FP32 eager (the baseline), quantsim.emulate.executor (torch, integer
exact) and integer_ref (NumPy/Numba reference), each on the same real evaluation images,
W8A8 per-channel, and the ratios. Aim (issue 2): integer_ref within 3x of FP32.
Also prints the hardware-simulation time of one 224x224 ResNet-18 image (issue 3) when
benchmarks/hw_speed.py provides it.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import batched, load_workload

from integer_ref import executor
from quantsim.emulate import executor as emulate
from quantsim.run import stages as pipeline
from quantsim.quant.config import QuantConfig


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(name: str, n_images: int, batch: int, repeats: int) -> dict:
    wl = load_workload(name, n_images, n_calib=64)
    x = wl.x_eval
    prep = pipeline.prepare(wl.loaded.model, wl.loaded.preprocess.input_size, wl.calib, progress=False)
    graph = pipeline.quantize(prep, QuantConfig(w_bits=8, a_bits=8, granularity="per-channel"))
    emu = emulate.EmulatedModel(graph)
    xn = x.numpy().astype(np.float32)
    # warm up (Numba compilation, oneDNN primitive caches) before timing
    with torch.no_grad():
        wl.loaded.model(x[:2]), emu(x[:2])
    executor.run(graph, xn[:2], keep="outputs")
    t_fp = best_of(lambda: batched(wl.loaded.model, x, batch), repeats)
    t_emu = best_of(lambda: batched(emu, x, batch), repeats)
    t_ref = best_of(lambda: executor.run(graph, xn, keep="outputs", chunk=batch), repeats)
    n = len(x)
    return {"model": name, "images": n, "fp32_ips": n / t_fp, "emulate_ips": n / t_emu, "integer_ref_ips": n / t_ref,
            "ref_slowdown": t_ref / t_fp, "emulate_slowdown": t_emu / t_fp}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", default="resnet20,lite0")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-hw", action="store_true", help="skip the ResNet-18 hardware-simulation timing")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'model':10s} {'images':>6s} {'FP32 img/s':>11s} {'emulate img/s':>14s} {'integer_ref img/s':>18s} "
          f"{'ref/FP32 time':>14s} {'emu/FP32 time':>14s}")
    for name in args.models.split(","):
        r = measure(name, args.images if name != "lite0" else min(args.images, 64), args.batch, args.repeats)
        print(f"{r['model']:10s} {r['images']:6d} {r['fp32_ips']:11.1f} {r['emulate_ips']:14.1f} "
              f"{r['integer_ref_ips']:18.1f} {r['ref_slowdown']:13.2f}x {r['emulate_slowdown']:13.2f}x", flush=True)
    if args.skip_hw:
        return
    # issue 3: hardware simulation of one real 224x224 ResNet-18 image, toggles included
    import hw_speed
    from hwmodel.arch import load_accelerator
    from quantsim.run import hardware

    accel = load_accelerator("scalesim-32x32-ws")
    graph, taps, _ = hw_speed.resnet18_program()
    hardware.simulate(graph, taps, accel)  # JIT warm-up
    t_hw = best_of(lambda: hardware.simulate(graph, taps, accel), args.repeats)
    t_ss = hw_speed.fixture_seconds("scalesim-32x32-ws")
    line = f"hardware simulation, ResNet-18 224x224, one real image (mapping + DRAM + toggles + energy): {t_hw:.2f} s"
    if t_ss:
        line += f"; SCALE-Sim 3.0.0 same network (counts only, recorded with the fixtures): {t_ss:.0f} s ({t_ss / t_hw:.0f}x)"
    print(line)

if __name__ == "__main__":
    main()

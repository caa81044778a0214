"""Where W4A4's accuracy goes on CIFAR ResNet-20 (issue 13): every layer at 4 bits vs the first conv
and the classifier at 8, one tensor at a time, and the activation clipping rule.

    cd benchmarks && OMP_NUM_THREADS=1 nice python ptq_diagnose.py --eval 2000

Round-to-nearest weights (per channel), 256 calibration images; each row widens some tensors of
the all-4-bit program back to 8 bits through the per-layer widths (QuantConfig.layer_bits:
[w_bits, a_bits] of a MAC layer; a_bits is the width of that layer's input tensor, so the first
conv's a_bits is the width of the quantized input image). The logits are held at out_bits (16)
in every row. Top-1 of the emulated integer program on the first N test images; every program
checked bit-exact on 2 images. Prints a markdown table; writes nothing.
"""
from __future__ import annotations

import argparse
import json
import time

from common import batched, load_workload, top1

from quantsim.emulate import executor as emulate
from quantsim.quant.config import QuantConfig
from quantsim.run import stages


def variants(first: str, last: str) -> dict[str, dict]:
    """row label -> layer_bits over the all-4-bit program."""
    return {"all 4": {},
            "input image 8": {first: [4, 8]},
            "first conv weights 8": {first: [8, 4]},
            "first conv W8A8": {first: [8, 8]},
            "classifier input 8": {last: [4, 8]},
            "classifier weights 8": {last: [8, 4]},
            "classifier W8A8": {last: [8, 8]},
            "input image 8 + classifier input 8": {first: [4, 8], last: [4, 8]},
            "first/last W8A8": {first: [8, 8], last: [8, 8]}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eval", type=int, default=2000)
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--methods", default="minmax,percentile,mse", help="activation clipping rules")
    p.add_argument("--rows", default=None, help="comma-separated row labels (default: all)")
    args = p.parse_args(argv)
    wl = load_workload("resnet20", args.eval, n_calib=args.calib)
    prep = stages.prepare(wl.loaded.model, wl.loaded.preprocess.input_size, wl.calib, progress=False)
    fp32 = top1(batched(wl.loaded.model, wl.x_eval), wl.y_eval)
    macs = [n.name for n in prep.fgraph.mac_nodes()]
    rows = variants(macs[0], macs[-1])
    labels = list(rows) if args.rows is None else args.rows.split(",")
    methods = args.methods.split(",")
    table: dict[str, dict[str, float]] = {}
    for label in labels:
        for m in methods:
            t = time.perf_counter()
            cfg = QuantConfig(w_bits=4, a_bits=4, calib_method=m, layer_bits=rows[label])
            graph = stages.quantize(prep, cfg)
            acc = top1(batched(emulate.EmulatedModel(graph), wl.x_eval), wl.y_eval)
            mism = stages.check_bitexact(graph, wl.x_eval[:2]).total_mismatches
            table.setdefault(label, {})[m] = acc
            print(json.dumps({"row": label, "calib_method": m, "top1": round(acc, 2), "bitexact_mismatches": mism,
                              "s": round(time.perf_counter() - t, 1)}), flush=True)
    print(f"\nresnet20 W4A4 nearest, per-channel weights: FP32 {fp32:.2f} on {len(wl.y_eval)} test images, "
          f"{args.calib} calibration images\n")
    print("| widened to 8 bits | " + " | ".join(methods) + " |")
    print("|---|" + "---:|" * len(methods))
    for label in labels:
        print(f"| {label} | " + " | ".join(f"{table[label][m]:.2f}" for m in methods) + " |")


if __name__ == "__main__":
    main()

"""Cross-layer equalization and bias correction (issue 13, DFQ): EfficientNet-Lite0 by default.

    nice python benchmarks/equalize.py --eval 300 --calib 256
    nice python benchmarks/equalize.py --bits W8A8,W6A6,W4A8 --methods nearest,eq,eq+bc,eq-relu+bc,eq+gptq

Rows, all per-channel weights, min-max scales, the same calibration images:
- nearest: round-to-nearest, the plain row every ratio divides by;
- bc: + empirical bias correction (quantsim.quant.scale_search.correct_biases, sequential inputs);
- eq: --equalize (quantsim.quant.equalize; pairs with a ReLU6 between them are skipped, so the float
  network is unchanged: on Lite0 that leaves the project -> expand pairs without a residual);
- eq-relu: --equalize --equalize-relu6 relu (DFQ: the paired layers' ReLU6 become ReLU first);
- '+bc' adds bias correction, '+gptq' GPTQ rounding (sequential Hessians).
Each prepared model (capture + [equalization] + statistics) is made once and its time printed;
'quantize s' is the row's quantization (bias correction / GPTQ included), 'total s' adds its
prepare time, '× plain' is total s over the nearest row's total s, measured in this run. Top-1 of
the emulated integer program on the first N evaluation images, and integer_ref vs the emulation
on --bitexact images (differing elements, every node). Prints a markdown table; writes nothing.
"""
from __future__ import annotations

import argparse
import json
import time

from common import batched, load_workload, top1

from quantsim.emulate import executor as emulate
from quantsim.quant.config import QuantConfig, parse_bits
from quantsim.run import stages

# method -> (prepare kwargs, config kwargs)
METHODS = {
    "nearest": ({}, {}),
    "bc": ({}, {"bias_correction": True}),
    "gptq": ({}, {"rounding": "gptq"}),
    "eq": ({"equalize": True}, {}),
    "eq+bc": ({"equalize": True}, {"bias_correction": True}),
    "eq+gptq": ({"equalize": True}, {"rounding": "gptq"}),
    "eq-relu": ({"equalize": True, "equalize_relu6": "relu"}, {}),
    "eq-relu+bc": ({"equalize": True, "equalize_relu6": "relu"}, {"bias_correction": True}),
    "eq-relu+gptq": ({"equalize": True, "equalize_relu6": "relu"}, {"rounding": "gptq"}),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lite0", choices=["lite0", "resnet20", "resnet56"])
    p.add_argument("--eval", type=int, default=300)
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--bits", default="W8A8,W6A6,W4A8")
    p.add_argument("--methods", default="nearest,bc,eq,eq+bc,eq-relu,eq-relu+bc")
    p.add_argument("--bitexact", type=int, default=1, help="images checked integer_ref vs emulation")
    args = p.parse_args(argv)
    methods = args.methods.split(",")
    wl = load_workload(args.model, args.eval, n_calib=args.calib)
    fp32 = top1(batched(wl.loaded.model, wl.x_eval), wl.y_eval)
    preps: dict[tuple, tuple] = {}
    for m in methods:
        key = tuple(sorted(METHODS[m][0].items()))
        if key not in preps:
            t0 = time.perf_counter()
            prep = stages.prepare(wl.loaded.model, wl.loaded.preprocess.input_size, wl.calib, progress=False,
                                  **METHODS[m][0])
            preps[key] = (prep, time.perf_counter() - t0)
            eq = prep.equalized
            print(json.dumps({"prepare": dict(key), "seconds": round(preps[key][1], 2),
                              "pairs": len(eq.pairs) if eq else 0,
                              "skipped_relu6": len(eq.skipped_relu6) if eq else 0,
                              "relu6_made_relu": len(eq.relu6_replaced) if eq else 0}), flush=True)
    rows = []
    for bits in args.bits.split(","):
        wb, ab = parse_bits(bits)
        plain_total = None
        for m in methods:
            pkw, ckw = METHODS[m]
            prep, t_prep = preps[tuple(sorted(pkw.items()))]
            cfg = QuantConfig(w_bits=wb, a_bits=ab, granularity="per-channel", **pkw, **ckw)
            t = time.perf_counter()
            graph = stages.quantize(prep, cfg)
            secs = time.perf_counter() - t
            acc = top1(batched(emulate.EmulatedModel(graph), wl.x_eval, 50), wl.y_eval)
            mism = stages.check_bitexact(graph, wl.x_eval[:args.bitexact]).total_mismatches
            total = t_prep + secs
            plain_total = total if m == "nearest" else plain_total
            row = {"bits": bits, "method": m, "top1": round(acc, 2), "delta_fp32": round(acc - fp32, 2),
                   "quantize_s": round(secs, 2), "total_s": round(total, 2),
                   "ratio_vs_plain": round(total / plain_total, 2) if plain_total else None,
                   "bitexact_mismatches": mism}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{args.model}: FP32 top-1 {fp32:.2f} on {len(wl.y_eval)} evaluation images; calibration {args.calib} "
          f"images; prepare s: " + ", ".join(f"{dict(k) or 'plain'} {v[1]:.1f}" for k, v in preps.items()) + "\n")
    print("| bits | method | top-1 % | Δ FP32 | quantize s | total s | × plain | bit-exact mismatches |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["ratio_vs_plain"] if r["ratio_vs_plain"] is not None else "-"
        print(f"| {r['bits']} | {r['method']} | {r['top1']:.2f} | {r['delta_fp32']:+.2f} | {r['quantize_s']:.2f} | "
              f"{r['total_s']:.2f} | {ratio} | {r['bitexact_mismatches']} ({args.bitexact} images) |")


if __name__ == "__main__":
    main()

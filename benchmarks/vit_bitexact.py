"""ViTs in integer-only mode: integer_ref vs emulate on every node, on real images.

    .venv/bin/python benchmarks/vit_bitexact.py                       # both ViTs, 16 images each
    .venv/bin/python benchmarks/vit_bitexact.py --models deit_tiny_patch16_224 --weights deit.pth
    .venv/bin/python benchmarks/vit_bitexact.py --nonlinear float     # reported, never bit-exact

DeiT-Tiny (timm deit_tiny_patch16_224, 224x224) calibrates on imagenet-calib and is checked on
imagenet-val; the CIFAR ViT (vit_tiny_patch4_32) calibrates on cifar10 train images and is
checked on cifar10 test images. Without --weights the models are randomly initialised (the
bit-exact check does not need trained weights; the SQNR of the logits against float is
printed for information only: random-init attention is near uniform, which 8-bit softmax
outputs at 2^-8 resolve poorly). Prints one line per model: nodes, differing elements in
total and on the worst node, accumulator overflows, logit SQNR, seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"

from quantsim.zoo import datasets, models
from quantsim.emulate import executor as emulate  # noqa: E402
from quantsim.quant.config import CALIB_METHODS, QuantConfig  # noqa: E402
from quantsim.quant.lower import float_nodes  # noqa: E402
from quantsim.run.stages import check_bitexact, prepare, quantize  # noqa: E402
from quantsim.zoo.models import load_cifar_vit  # noqa: E402
from quantsim.zoo.vit import CIFAR10_VIT_PRE, CIFAR_VITS  # noqa: E402

DATA = {  # model -> (calibration spec, evaluation spec, input shape)
    "deit_tiny_patch16_224": (f"imagenet:{SHARED}/data/imagenet-calib", f"imagenet:{SHARED}/data/imagenet-val",
                              (3, 224, 224)),
    **{name: (f"cifar10:{SHARED}/data/cifar10", f"cifar10:{SHARED}/data/cifar10", (3, 32, 32)) for name in CIFAR_VITS},
}


def load(name: str, weights: str | None):
    if name in CIFAR_VITS:
        return load_cifar_vit(name, weights), CIFAR10_VIT_PRE
    lm = models.load_model(name, weights=weights)
    return lm.model, lm.preprocess


def images(spec: str, pre, n: int, role: str, seed: int) -> torch.Tensor:
    ds = datasets.deterministic_subset(datasets.build_dataset(spec, pre, role=role), n, seed)
    return torch.stack([ds[i][0] for i in range(len(ds))])


def sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    noise = float(((ref.double() - got.double()) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((ref.double() ** 2).sum()) / noise)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["deit_tiny_patch16_224", "vit_tiny_patch4_32"], choices=list(DATA))
    ap.add_argument("--weights", help="local timm checkpoint (.pth/.safetensors) for the (single) model")
    ap.add_argument("--images", type=int, default=16, help="evaluation images checked bit for bit")
    ap.add_argument("--calib", type=int, default=16, help="calibration images")
    ap.add_argument("--bits", default="8", help="W and A bits, e.g. 8 or W6A8")
    ap.add_argument("--granularity", default="per-channel", choices=["per-channel", "per-tensor"])
    ap.add_argument("--method", default="minmax", choices=CALIB_METHODS)
    ap.add_argument("--nonlinear", default="integer", choices=["integer", "float"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: this benchmark needs the real images")
    if args.weights and len(args.models) != 1:
        sys.exit("--weights goes with exactly one model in --models")
    from quantsim.quant.config import parse_bits
    w_bits, a_bits = parse_bits(args.bits)
    torch.manual_seed(args.seed)
    worst = 0
    for name in args.models:
        t0 = time.perf_counter()
        calib_spec, eval_spec, shape = DATA[name]
        model, pre = load(name, args.weights)
        x_cal = images(calib_spec, pre, args.calib, "calib", args.seed)
        x = images(eval_spec, pre, args.images, "eval", args.seed + 1)
        prep = prepare(model, shape, list(x_cal.split(8)), seed=args.seed, progress=False)
        cfg = QuantConfig(w_bits=w_bits, a_bits=a_bits, granularity=args.granularity, calib_method=args.method,
                          nonlinear=args.nonlinear)
        graph = quantize(prep, cfg)
        be = check_bitexact(graph, x)
        with torch.no_grad():
            ref = model(x)
        got = emulate.EmulatedModel(graph)(x)
        worst_node = max(be.mismatches, key=be.mismatches.get)
        exact = "bit-exact" if be.total_mismatches == 0 else "NOT bit-exact"
        if float_nodes(graph):
            exact += f" (float nonlinearities on {len(float_nodes(graph))} nodes: never claimed bit-exact)"
        print(f"{name} {cfg.label} {args.granularity} {args.method} nonlinear={args.nonlinear} "
              f"weights={args.weights or 'random-init'}: {len(graph.nodes)} nodes, {be.images} real images, "
              f"{be.total_mismatches} differing elements (worst node {worst_node}: {be.mismatches[worst_node]}), "
              f"{sum(be.acc_overflows.values())} accumulator overflows, logit SQNR {sqnr_db(ref, got):.1f} dB, "
              f"top-1 agreement {100 * float((ref.argmax(1) == got.argmax(1)).float().mean()):.0f}%, "
              f"{time.perf_counter() - t0:.0f} s: {exact}")
        worst = max(worst, be.total_mismatches)
    return 0 if worst == 0 or args.nonlinear == "float" else 1


if __name__ == "__main__":
    sys.exit(main())

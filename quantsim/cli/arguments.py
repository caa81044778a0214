"""Argument groups shared by every command (simulate, pareto): one definition per flag, so a
sweep accepts every quantization option a run accepts. Their names are RunOptions' fields."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from quantsim.errors import QuantsimError
from quantsim.quant.config import (ACC_OVERFLOW_MODES, CALIB_METHODS, EQUALIZE_RELU6, GPTQ_INPUTS, RECONSTRUCT_UNITS,
                                   ROUNDING_METHODS, SOFTMAX_QUANT)
from quantsim.run.options import DEFAULT_ACCEL

__all__ = ["add_hw_args", "add_mixed_args", "add_model_data_args", "add_output_args", "add_quant_args",
           "run_command"]


def add_model_data_args(p: argparse.ArgumentParser) -> None:
    """Model and data options (shared by every command)."""
    p.add_argument("model", nargs="?", help="model name (resnet18, resnet18_cifar, cifar_resnet20, "
                   "tf_efficientnet_lite0, any timm name, torchvision:NAME) or a file (.pt/.pth/.th checkpoint, .pt2 export)")
    p.add_argument("--arch", help="architecture of a plain state-dict file (a registry, timm or torchvision:NAME name)")
    p.add_argument("--trust-model", action="store_true", help="allow unpickling a full module (runs code from the file)")
    p.add_argument("--pretrained", action="store_true", help="download the released weights of a timm or torchvision:NAME model (needs internet)")
    p.add_argument("--weights", help="local weights file (.pth/.safetensors) for a named timm or torchvision:NAME model")
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
    p.add_argument("--acc-overflow", default="count", choices=list(ACC_OVERFLOW_MODES),
                   help="what a 32-bit accumulator holds of a sum outside its range: count (the exact sum; "
                        "overflows counted in layers.csv), saturate, or wrap (two's complement)")
    p.add_argument("--search-steps", type=int, default=100,
                   help="similarity / ranking: points searched in [0.5, 1.2] x max (default 100)")
    p.add_argument("--bias-correction", action="store_true",
                   help="correct each MAC layer's bias (CNNs and ViTs) by the mean quantization error of its output "
                        "per channel (calibration images, quantsim.quant.scale_search.correct_biases)")
    p.add_argument("--rounding", default="nearest", choices=list(ROUNDING_METHODS),
                   help="weight rounding at the weight scale: nearest, gptq (Frantar et al. 2023: column by "
                        "column with error feedback from the layer's calibration Hessian, quantsim.quant.gptq), or "
                        "adaround (Nagel et al. 2020: learned up/down rounding per weight from the layer's output "
                        "reconstruction on the calibration images, quantsim.quant.adaround; --seed makes it reproducible)")
    p.add_argument("--recon-iters", type=int, default=500,
                   help="adaround: Adam iterations per layer, --reconstruct: per unit (batches of 32 calibration "
                        "inputs; default 500)")
    p.add_argument("--reconstruct", default="none", choices=list(RECONSTRUCT_UNITS),
                   help="with --rounding adaround: none (per-layer AdaRound of the weights), or reconstruction of "
                        "each layer / residual block, a ViT's attention and MLP halves (BRECQ, Li et al. 2021; "
                        "quantsim.quant.reconstruct): learned "
                        "rounding plus learned activation scales on the unit's output error")
    p.add_argument("--qdrop", type=float, default=0.5,
                   help="--reconstruct: probability that an activation element stays unquantized while "
                        "reconstructing (QDrop, Wei et al. 2022; 0: plain BRECQ; default 0.5)")
    p.add_argument("--recon-crop", type=int, default=0, metavar="P",
                   help="--reconstruct: a unit of local ops (convolutions, adds, activations) wider than P pixels "
                        "learns on one aligned P x P window of its input per iteration, the loss on the window's "
                        "outputs that equal the whole image's (edge rows measured and left out): fewer pixels "
                        "per step on wide early layers (e.g. 64 on 224 x 224 ImageNet models; default 0: whole "
                        "images)")
    p.add_argument("--rounding-cache", metavar="DIR", default=None,
                   help="keep the learned codes of --rounding gptq / adaround / --reconstruct in DIR, keyed by the "
                        "model's weights, the calibration images and the config, and reuse them when a later run "
                        "asks for the same (default: not kept; a Pareto sweep keeps them in OUT/state)")
    p.add_argument("--gptq-inputs", default="sequential", choices=list(GPTQ_INPUTS),
                   help="gptq: Hessians on the network whose earlier layers carry their GPTQ weights "
                        "(sequential), or on the float network (float)")
    p.add_argument("--equalize", action="store_true",
                   help="cross-layer equalization (Nagel et al. 2019) of consecutive conv/linear pairs before "
                        "calibration (quantsim.quant.equalize); the float function is unchanged")
    p.add_argument("--equalize-relu6", default="skip", choices=list(EQUALIZE_RELU6),
                   help="--equalize across a ReLU6 (not scale-invariant): skip such pairs (exact, default), or "
                        "replace their ReLU6 by a ReLU first as DFQ does (changes the network where inputs exceed 6)")
    p.add_argument("--reparam-ln", action="store_true",
                   help="RepQ-ViT (Li et al. 2023): per-channel ranges of every LayerNorm's output, calibrated, "
                        "folded into its gamma/beta and its readers' weights so one per-tensor scale fits them "
                        "(quantsim.quant.reparam_ln); the float function is unchanged. Needs a LayerNorm")
    p.add_argument("--softmax-quant", default="uniform", choices=list(SOFTMAX_QUANT),
                   help="attention probabilities: uniform codes at 2^-b, or log2 (code k means 2^-k, one code "
                        "for zero; attention x V as shifts and adds of V's integers, no multiplies). Needs a softmax")


def add_hw_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accel", default=DEFAULT_ACCEL, help="accelerator preset name or TOML file "
                   f"(default {DEFAULT_ACCEL}; presets: see hwmodel/presets)")
    p.add_argument("--toggle-images", type=int, default=1, help="images whose real operands feed the toggle count")
    p.add_argument("--mac-form", default="max", choices=["max", "product"],
                   help="seed MAC energy: b=max(b_w,b_a) squared, or the product b_w*b_a")
    p.add_argument("--dram-model", choices=["reuse", "scalesim"], default=None,
                   help="DRAM traffic: 'reuse' (each tile fetched once per reuse window) or 'scalesim' "
                        "(SCALE-Sim 3.0.0's read-buffer replay); default: the preset's")
    p.add_argument("--residency", choices=["on", "off"], default=None,
                   help="keep activations in the accelerator's global buffer between layers (sram.global_bytes; "
                        "hwmodel.residency); default: the preset's")
    p.add_argument("--dram-stalls", choices=["on", "off"], default=None,
                   help="count the cycles a layer waits for DRAM bandwidth (dram.transfer_mts; hwmodel.bandwidth); "
                        "off: cycles ignore bandwidth, as before stalls were modelled; default: the preset's")


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


def add_output_args(p: argparse.ArgumentParser) -> None:
    """What the command prints on stdout at the end (the files in --out are the same either way)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quiet", action="store_true",
                   help="print nothing on stdout and no progress bars (errors still go to stderr)")
    g.add_argument("--json", action="store_true",
                   help="print the result as one JSON line (summary.json; a sweep's points) instead of the "
                        "human summary")


def run_command(run: Callable[[Any], Any], opts, show: Callable[[Any], None],
                mismatches: Callable[[Any], int], where: str) -> int:
    """A command's exit: a QuantsimError is one `error:` line (2); integers differing between
    integer_ref and emulate are an error too (3) unless opts.allow_mismatch."""
    try:
        result = run(opts)
    except QuantsimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    show(result)
    bad = int(mismatches(result))
    if bad and not opts.allow_mismatch:
        print(f"error: integer_ref differs from emulate in {bad} elements (see {where}); "
              "pass --allow-mismatch to keep going", file=sys.stderr)
        return 3
    return 0

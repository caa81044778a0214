"""What a run needs before the expensive work: validated options, the accelerator, the model
and its calibration / evaluation / held-out images. Shared by the single run and the sweep."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hwmodel.arch import Accelerator, load_accelerator
from quantsim.errors import QuantsimError
from quantsim.mixed.allocate import width_order
from quantsim.quant.config import parse_bits
from quantsim.run.options import DEFAULT_MODEL, RunOptions
from quantsim.zoo import datasets, models

__all__ = ["Inputs", "check_out_dir", "check_sources", "heldout_indices", "heldout_labelled", "load_accel",
           "load_inputs", "parse_candidates", "batches"]

EMBEDDED_NOTE = ("embedded default: real photos from scikit-image carry no ImageNet labels, so the report gives "
                 "agreement with FP32 instead of accuracy; point it at labelled data with e.g. "
                 "`python -m quantsim.simulate tf_efficientnet_lite0 --data imagenet:DIR --calib-data imagenet:DIR2`")

NO_DATA = "no evaluation data: pass --data imagenet:DIR, cifar10:DIR, cifar100:DIR or folder:DIR"


def check_out_dir(out: str | Path) -> Path:
    """--out must be a directory or creatable as one: checked before any calibration, so a bad
    path costs nothing. Nothing is created here (reports are written atomically at the end)."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise QuantsimError(f"--out {out} exists and is not a directory")
        if not os.access(out, os.W_OK):
            raise QuantsimError(f"--out {out} is not writable")
        return out
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise QuantsimError(f"--out {out} cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise QuantsimError(f"--out {out} cannot be created: {parent} is not writable")
    return out


def parse_candidates(text: str) -> tuple:
    """'4,6,8' -> (4, 6, 8); 'WxAy' tokens give (w_bits, a_bits) pairs (weights and the layer's
    input activation at different widths), e.g. '4,6,8,W4A8'. WbAb is the int b. Narrowest first."""
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


def load_accel(spec: str, dram_model: str | None = None, residency: str | None = None,
               dram_stalls: str | None = None) -> Accelerator:
    """The accelerator preset or file, with --dram-model, --residency on|off and --dram-stalls on|off
    (None: the preset's)."""
    try:
        accel = load_accelerator(spec)
        if residency is not None:
            accel = accel.with_residency(residency == "on")
        if dram_stalls is not None:
            accel = accel.with_stalls(dram_stalls == "on")
        return accel.with_dram_model(dram_model) if dram_model else accel
    except (ValueError, OSError) as exc:
        raise QuantsimError(f"--accel {spec}: {exc}".splitlines()[0]) from exc


@dataclass
class Inputs:
    """The loaded model and its image sets (deterministic subsets of the data sources)."""

    loaded: models.LoadedModel
    calib_ds: object
    eval_ds: object
    note: str | None


def check_sources(opts: RunOptions) -> None:
    """The model and data options name things that exist (nothing is loaded): what load_inputs
    would refuse first, found before any run of a sweep file starts."""
    models.check_model_spec(opts.model or DEFAULT_MODEL, opts.weights)
    if opts.data:
        datasets.check_data_spec(opts.data, opts.download)
        if opts.calib_data:
            datasets.check_data_spec(opts.calib_data, opts.download)
    elif opts.model:
        raise QuantsimError(NO_DATA)


def load_inputs(opts: RunOptions) -> Inputs:
    spec = opts.model or DEFAULT_MODEL
    loaded = models.load_model(spec, arch=opts.arch, trust_model=opts.trust_model,
                               pretrained=opts.pretrained, weights=opts.weights)
    pre = loaded.preprocess
    if opts.data:
        eval_ds = datasets.build_dataset(opts.data, pre, role="eval", download=opts.download)
        calib_ds = datasets.build_dataset(opts.calib_data or opts.data, pre, role="calib", download=opts.download)
        note = None
    else:
        if opts.model:
            raise QuantsimError(NO_DATA)
        eval_ds = calib_ds = datasets.embedded_photos(pre)
        note = EMBEDDED_NOTE
    calib_ds = datasets.deterministic_subset(calib_ds, opts.calib, opts.seed)
    eval_ds = datasets.deterministic_subset(eval_ds, opts.eval, opts.seed + 1)
    if len(eval_ds) == 0 or len(calib_ds) == 0:
        raise QuantsimError("the data source holds no images")
    return Inputs(loaded, calib_ds, eval_ds, note)


def heldout_indices(total: int, used, n: int, seed: int) -> list[int]:
    """n indices of range(total) outside ``used`` (all of them if fewer remain), seeded, sorted."""
    rest = np.setdiff1d(np.arange(total), np.asarray(list(used), dtype=np.int64))
    if n < len(rest):
        rest = np.sort(np.random.default_rng(seed).choice(rest, size=n, replace=False))
    return [int(i) for i in rest]


def heldout_labelled(opts: RunOptions, preprocess, calib_ds) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """For --rerank-by top1: labelled images of the calibration source that calibration did not
    use (a seeded subset of --rerank-images), as (x, y) batches; None when not asked for."""
    if opts.rerank_by != "top1" or not opts.rerank:
        return None
    if not (opts.calib_data or opts.data):
        raise QuantsimError("--rerank-by top1 needs labelled data: pass --data (and --calib-data) with labels")
    if opts.rerank_images < 1:
        raise QuantsimError(f"--rerank-images {opts.rerank_images}: give a positive count")
    source = datasets.build_dataset(opts.calib_data or opts.data, preprocess, role="calib", download=opts.download)
    idx = heldout_indices(len(source), calib_ds.indices, opts.rerank_images, opts.seed + 2)
    if not idx:
        raise QuantsimError("--rerank-by top1: calibration used every image of its source, none is left to hold out")
    pick = datasets.Subset(source, idx)
    held = [(x, y) for x, y in datasets.make_loader(pick, batch_size=opts.batch_size)]
    if any(bool((y < 0).any()) for _, y in held):
        raise QuantsimError("--rerank-by top1: the held-out images carry no labels (use --rerank-by joint)")
    return held


def batches(ds, batch_size: int) -> list[torch.Tensor]:
    return [x for x, _ in datasets.make_loader(ds, batch_size=batch_size)]


def check_images(eval_ds, opts: RunOptions) -> torch.Tensor:
    """The first evaluation images: the bit-exact check and the toggle count run on them."""
    n_check = min(max(opts.bitexact_images, opts.toggle_images), len(eval_ds))
    return torch.stack([eval_ds[i][0] for i in range(n_check)])

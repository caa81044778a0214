"""One run, start to end: validate, load, calibrate, quantize (uniform or a mixed plan),
evaluate, check bit-exactness, simulate the hardware, write the report.

`python -m quantsim.simulate` calls `run(RunOptions)`; a Pareto sweep's points call
`measure_program` and `fp32_energy` below, so a point and a run compute the same numbers."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quantsim.errors import QuantsimError
from quantsim.interop.imported import is_importable
from quantsim.interop.onnx_export import export_onnx
from quantsim.mixed.plan import layer_columns, plan_mixed, widths_table
from quantsim.quant.config import QuantConfig, parse_bits
from quantsim.run import hardware, stages
from quantsim.run.imported import run_imported
from quantsim.run.inputs import (batches, check_images, check_out_dir, heldout_labelled, load_accel,
                                 load_inputs, parse_candidates)
from quantsim.run.layer_table import layer_table, merge_rows, write_reports
from quantsim.run.options import RunOptions
from quantsim.run.predictions import predictions_table, thumbnails
from quantsim.zoo import datasets
from reports.plots import width_map

__all__ = ["Checked", "check_options", "fp32_energy", "measure_program", "run", "w8a8_reference"]


@dataclass
class Checked:
    """The options, checked and parsed: what the run will do."""

    mixed: bool
    wa: tuple[int, int] | None  # None: FP32
    candidates: tuple | None
    cfg: QuantConfig | None     # None: FP32, or mixed until the plan fills it in
    accel: object
    out: Path


def _check_export(opts: RunOptions, wa, mixed: bool) -> None:
    """--export-onnx: refused up front where the program cannot export."""
    if opts.requant != "float32":
        raise QuantsimError("--export-onnx needs --requant float32 (ONNX Runtime's float32 multipliers)")
    if mixed or wa != (8, 8):
        raise QuantsimError(f"--export-onnx needs --bits 8 (ONNX QLinear ops hold 8-bit tensors), got {opts.bits}")
    path = Path(opts.export_onnx)
    if path.is_dir():
        raise QuantsimError(f"--export-onnx {path} is a directory")
    if not path.parent.is_dir():
        raise QuantsimError(f"--export-onnx {path}: directory {path.parent} does not exist")
    if is_importable(opts.model):
        raise QuantsimError("--export-onnx exports models quantsim quantizes itself, not imported .tflite/.onnx files")


def _check_mixed(opts: RunOptions, mixed: bool) -> tuple | None:
    if not mixed:
        if opts.energy_budget is not None:
            raise QuantsimError("--energy-budget needs --bits mixed")
        return None
    if opts.energy_budget is not None and not (np.isfinite(opts.energy_budget) and opts.energy_budget > 0):
        raise QuantsimError(f"--energy-budget {opts.energy_budget}: give a positive ratio of W8A8 energy, e.g. 0.6")
    return parse_candidates(opts.candidates)


def base_config(opts: RunOptions, w_bits: int = 8, a_bits: int = 8, **over) -> QuantConfig:
    """The quantization config these options give at one width (validated by QuantConfig)."""
    return QuantConfig(w_bits=w_bits, a_bits=a_bits, granularity=opts.granularity,
                       calib_method=opts.calib_method, percentile=opts.percentile, requant=opts.requant,
                       search_steps=opts.search_steps, bias_correction=opts.bias_correction,
                       rounding=opts.rounding, gptq_inputs=opts.gptq_inputs, recon_iters=opts.recon_iters,
                       recon_seed=opts.seed, reconstruct=opts.reconstruct, qdrop=opts.qdrop, recon_crop=opts.recon_crop,
                       equalize=opts.equalize,
                       equalize_relu6=opts.equalize_relu6, reparam_ln=opts.reparam_ln,
                       softmax_quant=opts.softmax_quant, acc_overflow=opts.acc_overflow, **over)


def check_options(opts: RunOptions) -> Checked:
    """Every check that needs no model or data: bad input fails here, before any loading."""
    mixed = opts.bits.strip().lower() == "mixed"
    wa = (8, 8) if mixed else parse_bits(opts.bits)
    candidates = _check_mixed(opts, mixed)
    out = check_out_dir(opts.out)
    if opts.export_onnx:
        _check_export(opts, wa, mixed)
    if opts.toggle_images < 1:
        raise QuantsimError("--toggle-images must be at least 1")
    if opts.oracle and not is_importable(opts.model):
        raise QuantsimError(f"--oracle {opts.oracle} needs a model quantized by that engine (a .tflite or .onnx file)")
    # ONNX QLinear ops hold 8-bit tensors only: the exported logits are 8-bit
    cfg = base_config(opts, *wa, **({"out_bits": 8} if opts.export_onnx else {})) if wa is not None else None
    accel = load_accel(opts.accel, opts.dram_model, opts.residency, opts.dram_stalls)
    return Checked(mixed, wa, candidates, cfg, accel, out)


def measure_program(graph, x: torch.Tensor, opts: RunOptions, accel, prep=None, hw=None):
    """integer_ref against emulate on the images x (when --bitexact-images > 0), the per-layer
    SQNR where the float graph is given, and the hardware model on integer_ref's real operands
    (unless `hw` is given: a mixed plan has simulated its program already)."""
    bitexact, sqnr = None, {}
    if opts.bitexact_images > 0:
        bitexact = stages.check_bitexact(graph, x)
        taps = bitexact.ref_tensors
        if prep is not None:
            sqnr = stages.layer_sqnr(prep, graph, x[:opts.bitexact_images], taps)
    else:
        taps = stages.integer_taps(graph, x[:opts.toggle_images])
    if hw is None:
        hw = hardware.simulate(graph, taps, accel, opts.toggle_images, opts.mac_form)
    return bitexact, sqnr, hw


def w8a8_reference(prep, cfg: QuantConfig, hw, accel, images: torch.Tensor, toggle_images: int, mac_form: str):
    """The hardware rows of the same model's W8A8 program at cfg's granularity (the reference
    every energy ratio divides by): `hw` itself when cfg is W8A8, else simulated on `images`."""
    if cfg.label == "W8A8":
        return hw
    w8_graph = stages.quantize(prep, QuantConfig(granularity=cfg.granularity, equalize=cfg.equalize,
                                                 equalize_relu6=cfg.equalize_relu6, reparam_ln=cfg.reparam_ln,
                                                 softmax_quant=cfg.softmax_quant))
    return hardware.simulate(w8_graph, None, accel, toggle_images, mac_form, images=images)


def fp32_energy(w8_hw) -> dict:
    """The FP32 model's energy on the array (its reference model), from the W8A8 program's shapes."""
    return hardware.energy_summary(w8_hw, w8_hw, fp32=True)


def run(opts: RunOptions) -> dict:
    t_start = time.perf_counter()
    chk = check_options(opts)
    if is_importable(opts.model):  # an engine's quantized model: no calibration, no lowering
        return run_imported(opts, chk.accel)
    torch.manual_seed(opts.seed)
    inp = load_inputs(opts)
    loaded, calib_ds, eval_ds = inp.loaded, inp.calib_ds, inp.eval_ds
    calib = batches(calib_ds, opts.batch_size)
    prep = stages.prepare(loaded.model, loaded.preprocess.input_size, calib, opts.seed, opts.progress,
                          equalize=opts.equalize, equalize_relu6=opts.equalize_relu6,
                          reparam_ln=opts.reparam_ln, softmax_quant=opts.softmax_quant)
    prep.rounding_cache = Path(opts.rounding_cache) if opts.rounding_cache else None
    x = check_images(eval_ds, opts)
    cfg, plan = chk.cfg, None
    if chk.mixed:
        plan = plan_mixed(prep, cfg, chk.accel, calib, x[:opts.toggle_images], chk.candidates,
                          policy="threshold" if opts.energy_budget is None else "budget",
                          budget=opts.energy_budget, sens_at=opts.sensitivity_at,
                          weighting=opts.sensitivity_weighting, mac_form=opts.mac_form,
                          cache_dir=opts.sensitivity_cache, progress=opts.progress, unit=opts.mixed_unit,
                          rerank=opts.rerank, rerank_data=heldout_labelled(opts, loaded.preprocess, calib_ds))
        cfg = plan.cfg
    # FP32 runs still lower a W8A8 program: its shapes give the FP32 energy on the same array
    structure_cfg = cfg or QuantConfig(granularity=opts.granularity, equalize=opts.equalize,
                                       equalize_relu6=opts.equalize_relu6, reparam_ln=opts.reparam_ln,
                                       softmax_quant=opts.softmax_quant)
    graph = plan.graph if plan else stages.quantize(prep, structure_cfg, opts.progress)
    eval_loader = datasets.make_loader(eval_ds, batch_size=opts.batch_size)
    acc = stages.evaluate(loaded.model, graph if cfg else None, eval_loader, opts.progress)
    if cfg is not None:
        bitexact, sqnr, hw = measure_program(graph, x, opts, chk.accel, prep, hw=plan.hw if plan else None)
    else:
        bitexact, sqnr = None, {}
        hw = hardware.simulate(graph, stages.integer_taps(graph, x), chk.accel, opts.toggle_images, opts.mac_form)
    w8 = w8a8_reference(prep, structure_cfg, hw, chk.accel, x[:opts.toggle_images], opts.toggle_images, opts.mac_form)

    summary = {
        "model": loaded.arch, "model_source": loaded.source,
        "bits": cfg.label if cfg else "fp32",
        "w_bits": None if plan else cfg.w_bits if cfg else 32,
        "a_bits": None if plan else cfg.a_bits if cfg else 32,
        "granularity": cfg.granularity if cfg else None,
        "calib_method": cfg.calib_method if cfg else None,
        "rounding": cfg.rounding if cfg else None,
        "equalized_pairs": len(prep.equalized.pairs) if prep.equalized else 0,
        "reparam_layernorms": len(prep.reparam.norms) if prep.reparam else 0,
        "requant": cfg.requant if cfg else None,
        "n_calib": len(calib_ds) if cfg else 0,
        **acc.as_dict(),
        "bitexact_images": bitexact.images if bitexact else 0,
        "bitexact_mismatches": bitexact.total_mismatches if bitexact else 0,
        "acc_overflows": int(sum(bitexact.acc_overflows.values())) if bitexact else 0,
        "acc_bits_needed_max": bitexact.acc_bits_needed_max if bitexact else None,
        # lowering's accumulator floor: output channels whose weight scale it widened, and in how many layers
        "scale_floored_channels": sum(int(n.attrs.get("scale_floored", 0)) for n in graph.nodes) if cfg else 0,
        "scale_floored_layers": sum(1 for n in graph.nodes if n.attrs.get("scale_floored", 0)) if cfg else 0,
        **(fp32_energy(hw) if cfg is None else hardware.energy_summary(hw, w8)),
        "seconds": round(time.perf_counter() - t_start, 2),
        "config": cfg.to_json() if cfg else None,
        "preprocess": loaded.preprocess.to_json(),
    }
    if inp.note:
        summary["note"] = inp.note
    if opts.export_onnx:
        summary["onnx_export"] = str(export_onnx(graph, loaded.preprocess, opts.export_onnx).path)
    layers = None
    if cfg:
        layers = merge_rows(layer_table(graph, bitexact, sqnr), hw)
        if plan:
            layers = layers.merge(layer_columns(plan), on="layer", how="left")
    if plan:
        summary.update(plan.summary())
        summary["seconds_mixed"] = {k: round(v, 2) for k, v in plan.tables.seconds.items()}
    title = f"{loaded.arch} {summary['bits']} on {chk.accel.name}"

    def figures(rd):
        hardware.plot_energy(hw, rd.path("energy_breakdown"), title)
        if plan:
            width_map(widths_table(plan, hw), rd.path("width_map"), title=f"{title}: widths and energy share per layer")
    write_reports(chk.out, summary, layers, graph if (opts.save_ir and cfg) else None, extra=figures,
                  predictions=predictions_table(acc, eval_ds, loaded.class_names) if cfg else None,
                  thumbs=thumbnails(eval_ds, loaded.preprocess) if cfg else None)
    if inp.note and opts.json:  # the human summary carries the note; a script reading JSON sees it here
        print(inp.note, file=sys.stderr)
    return summary

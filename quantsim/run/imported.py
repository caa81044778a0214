"""`python -m quantsim.simulate model.tflite|model.onnx ...`: a run on an imported integer program.

An imported graph is already quantized: calibration and lowering are skipped. Accuracy
comes from the emulated program (quantsim.emulate.executor) on the evaluation data, the bit-exact
check compares integer_ref with it on every layer, the hardware model and energy run on
integer_ref's operands, and `--oracle tflite|onnxruntime` runs the real engine beside integer_ref on
the bit-exact images (summary: oracle, oracle_images, oracle_mismatches).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from quantsim.errors import QuantsimError
from quantsim.emulate import executor as emulate
from quantsim.interop import oracles
from quantsim.interop.imported import load_imported
from quantsim.run import hardware, stages as pipeline
from quantsim.run.layer_table import layer_table, merge_rows, write_reports
from quantsim.zoo import datasets
from quantsim.zoo.metrics import hits, top_indices


@torch.no_grad()
def _accuracy(graph, loader, label_offset: int, progress: bool) -> dict:
    model = emulate.EmulatedModel(graph)
    n = labelled = top1 = top5 = 0
    for x, y in tqdm(loader, desc="evaluate", unit="batch", disable=not progress, leave=False):
        logits = model(x)[:, label_offset:]
        n += len(x)
        mask = y >= 0
        if mask.any():
            labelled += int(mask.sum())
            top = top_indices(logits, 5)
            top1 += hits(top, y, 1)
            top5 += hits(top, y, 5)
    has = labelled > 0
    return {"n_eval": n, "n_labelled": labelled, "top1": 100.0 * top1 / labelled if has else None,
            "top5": 100.0 * top5 / labelled if has else None, "top1_fp32": None, "top5_fp32": None,
            "agreement_fp32": None}


def run_imported(args, accel) -> dict:
    t_start = time.perf_counter()
    try:
        imp = load_imported(args.model)
    except ValueError as exc:
        raise QuantsimError(str(exc)) from None
    graph = imp.graph
    if args.bits not in ("8", "W8A8", "w8a8"):
        raise QuantsimError(f"--bits {args.bits}: {args.model} is already quantized by its engine; "
                            "an imported model runs at its own widths (leave --bits at 8)")
    if not args.data:
        raise QuantsimError("no evaluation data: pass --data imagenet:DIR (or folder:DIR)")
    eval_ds = datasets.build_dataset(args.data, imp.preprocess, role="eval", download=args.download)
    eval_ds = datasets.deterministic_subset(eval_ds, args.eval, args.seed + 1)
    if len(eval_ds) == 0:
        raise QuantsimError("the data source holds no images")
    progress = args.progress
    acc = _accuracy(graph, datasets.make_loader(eval_ds, batch_size=args.batch_size), imp.label_offset, progress)
    n_check = min(max(args.bitexact_images, args.toggle_images, 1), len(eval_ds))
    x = torch.stack([eval_ds[i][0] for i in range(n_check)])
    bitexact = pipeline.check_bitexact(graph, x)
    summary_oracle = {}
    oracle = getattr(args, "oracle", None)
    if oracle:
        fmt = {"tflite": "tflite", "onnxruntime": "onnx"}.get(oracle)
        if graph.meta.get("source_format") != fmt:
            raise QuantsimError(f"--oracle {oracle}: needs a .{fmt} model (this one is "
                                f"{graph.meta.get('source_format')})")
        n_or = min(max(args.bitexact_images, 1), n_check)
        compare = oracles.compare_tflite if oracle == "tflite" else oracles.compare_onnxruntime
        res = compare(graph, imp.source, x[:n_or].numpy().astype(np.float32),
                      {k: v[:n_or] for k, v in bitexact.ref_tensors.items()})
        summary_oracle = {"oracle": oracle, "oracle_images": res.images,
                          "oracle_mismatches": res.total_mismatches,
                          "oracle_elements": res.total_elements}
    hw = hardware.simulate(graph, bitexact.ref_tensors, accel, args.toggle_images, args.mac_form)
    summary = {
        "model": imp.arch, "model_source": imp.source, "bits": "imported", "w_bits": None, "a_bits": None,
        "granularity": None, "calib_method": None, "requant": graph.meta.get("requant"), "n_calib": 0,
        **acc,
        "bitexact_images": bitexact.images, "bitexact_mismatches": bitexact.total_mismatches,
        "acc_overflows": int(sum(bitexact.acc_overflows.values())),
        "acc_bits_needed_max": bitexact.acc_bits_needed_max,
        **summary_oracle,
        **hardware.energy_summary(hw, hw),
        "seconds": round(time.perf_counter() - t_start, 2),
        "config": None, "preprocess": imp.preprocess.to_json(),
        "note": "; ".join(imp.notes + ["energy ratios are against the imported program itself "
                                       "(no FP32 model to compare with)"]),
    }
    layers = merge_rows(layer_table(graph, bitexact, {}), hw)
    out = Path(args.out)
    write_reports(out, summary, layers, graph if args.save_ir else None,
                  extra=lambda rd: hardware.plot_energy(hw, rd.path("energy_breakdown"), f"{imp.arch} on {accel.name}"))
    if summary_oracle.get("oracle_mismatches"):
        print(f"warning: integer_ref differs from {oracle} in {summary_oracle['oracle_mismatches']} elements",
              file=sys.stderr)
    return summary

"""layers.csv is built here and only here: the quantization columns of each IR node, then the
hardware columns of the same node, then (mixed runs) the plan's columns; and the run's report
files (written through reports.io, atomically)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hwmodel.mapping import packed_bytes
from integer_ref.ir import MAC_OPS, Graph
from reports.html import run_report
from reports.io import ReportDir, write_bytes_atomic
from reports.summary_text import run_summary

LAYER_COLUMNS = ["layer", "op", "source", "w_bits", "a_bits", "out_bits", "w_signed", "a_signed", "out_signed",
                 "granularity", "n_mac", "n_params", "weight_bytes", "in_bytes", "out_bytes", "in_shape",
                 "out_shape", "sqnr_db", "acc_overflows", "acc_peak", "acc_bits_needed", "scale_floored",
                 "bitexact_mismatches"]


def layer_table(graph: Graph, bitexact, sqnr: dict[str, float]) -> pd.DataFrame:
    taps = bitexact.ref_tensors if bitexact else {}
    rows = []
    for node in graph.nodes:
        out_shape = tuple(taps[node.name].shape[1:]) if node.name in taps else ()
        src = node.inputs[0]
        in_shape = tuple(taps[src].shape[1:]) if src in taps else ()
        in_q = node.in_q
        row = {
            "layer": node.name, "op": node.op, "source": node.source,
            "w_bits": node.weight_q.bits if node.weight_q else None,
            "a_bits": in_q.bits if in_q else None,
            "out_bits": node.out.bits,
            "w_signed": node.weight_q.signed if node.weight_q else None,
            "a_signed": in_q.signed if in_q else None,
            "out_signed": node.out.signed,
            "granularity": ("per-channel" if node.weight_q.per_channel else "per-tensor") if node.weight_q else None,
            "n_mac": 0, "n_params": 0, "weight_bytes": 0,
            "in_bytes": packed_bytes(int(np.prod(in_shape)), in_q.bits) if in_q and in_shape else 0,
            "out_bytes": packed_bytes(int(np.prod(out_shape)), node.out.bits) if out_shape else 0,
            "in_shape": "x".join(map(str, in_shape)), "out_shape": "x".join(map(str, out_shape)),
            "sqnr_db": sqnr.get(node.name),
            "acc_overflows": bitexact.acc_overflows.get(node.name, 0) if bitexact else None,
            # empty for nodes that form no accumulator
            "acc_peak": bitexact.acc_peaks.get(node.name) if bitexact else None,
            "acc_bits_needed": bitexact.acc_bits_needed.get(node.name) if bitexact else None,
            # output channels whose weight scale lowering widened so the bias fits the accumulator
            "scale_floored": node.attrs.get("scale_floored"),
            "bitexact_mismatches": bitexact.mismatches.get(node.name) if bitexact else None,
        }
        if node.op in MAC_OPS:
            w = node.params["weight"]
            k = int(np.prod(w.shape[1:]))
            outputs = int(np.prod(out_shape)) if out_shape else w.shape[0]
            row["n_mac"] = outputs * k
            row["n_params"] = int(w.size) + (int(node.params["bias"].size) if "bias" in node.params else 0)
            row["weight_bytes"] = packed_bytes(int(w.size), node.weight_q.bits)
        rows.append(row)
    df = pd.DataFrame(rows, columns=LAYER_COLUMNS + [c for c in rows[0] if c not in LAYER_COLUMNS])
    # widths and counts stay integers even where a row has none (non-MAC ops have no w_bits)
    for col in ("w_bits", "a_bits", "acc_overflows", "acc_peak", "acc_bits_needed", "scale_floored",
                "bitexact_mismatches"):
        df[col] = df[col].astype("Int64")
    for col in ("w_signed", "a_signed"):
        df[col] = df[col].astype("boolean")
    return df


def merge_rows(layers: pd.DataFrame, hw) -> pd.DataFrame:
    """layers.csv: the quantization columns, then the hardware columns of the same node.

    n_mac is taken from the hardware rows (the same count for conv/linear; the quantization
    table counts weight MACs only, so the attention matmuls' MACs come from here)."""
    hw_df = pd.DataFrame(hw.rows)
    keep = [c for c in hw.columns if c in hw_df.columns and (c == "layer" or c not in layers.columns)]
    out = layers.merge(hw_df[keep], on="layer", how="left")
    if "n_mac" in layers.columns and "n_mac" in hw_df.columns:
        out["n_mac"] = out["layer"].map(dict(zip(hw_df["layer"], hw_df["n_mac"]))).fillna(out["n_mac"]).astype("int64")
    return out


FIGURES = (("energy_breakdown.svg", "Energy per layer: MAC, SRAM, DRAM"),
           ("width_map.svg", "Widths per layer and their share of energy"))


def write_reports(out: Path, summary: dict, layers: pd.DataFrame | None, graph: Graph | None = None,
                  extra=None, predictions: pd.DataFrame | None = None, thumbs: list[bytes] | None = None) -> str:
    """Everything for --out in one staged commit: a failed run leaves no files behind. Last come
    the person's views of those files, summary.txt and report.html; returns the summary text."""
    flat = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    with ReportDir(out) as rd:
        rd.write_json("summary.json", summary)
        rd.write_csv("summary.csv", pd.DataFrame([flat]))
        if layers is not None:
            rd.write_csv("layers.csv", layers)
        if predictions is not None:
            rd.write_csv("predictions.csv", predictions)
        if thumbs:
            for i, png in enumerate(thumbs):
                write_bytes_atomic(rd.path(f"thumbs/{i:03d}.png"), png)
        if graph is not None:
            graph.save(rd.path("ir"))
        if extra is not None:
            extra(rd)
        figures = {caption: (rd.staging / name).read_text() for name, caption in FIGURES
                   if (rd.staging / name).exists()}
        files = sorted(p.name + ("/" if p.is_dir() else "") for p in rd.staging.iterdir()) + ["summary.txt"]
        text = run_summary(summary, layers, predictions, out, files)
        rd.write_text("summary.txt", text)
        rd.write_text("report.html", run_report(summary, layers, predictions, figures, text, thumbs))
    return text

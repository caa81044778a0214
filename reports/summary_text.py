"""The run's story in a few lines for a person at a terminal (and summary.txt): accuracy or
agreement with what it means, bit-exactness, energy against FP32 and W8A8 in both models,
where it goes, cycles and latency, DRAM traffic, the costliest layers, where the files are.
Everything shown is a number of summary.json, layers.csv or predictions.csv."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports import format as fmt

__all__ = ["costliest", "run_summary", "photo_lines", "sweep_summary", "PHOTOS_SHOWN"]

PHOTOS_SHOWN = 16  # per-image lines on the terminal up to this many evaluation images


def costliest(layers: pd.DataFrame | None, k: int = 3) -> pd.DataFrame:
    """The k layers of the highest detailed energy (ties: the earlier layer first)."""
    if layers is None or "e_total_pj" not in layers.columns or layers.empty:
        return pd.DataFrame(columns=["layer", "op", "e_total_pj"])
    e = pd.to_numeric(layers["e_total_pj"], errors="coerce")
    return layers.assign(_e=e).sort_values("_e", ascending=False, kind="stable").head(k).drop(columns="_e")


def widths(row) -> str:
    w, a = row.get("w_bits"), row.get("a_bits")
    if fmt.missing(w) and fmt.missing(a):
        return "-"
    if fmt.missing(w):  # no weights (add, pool): the input's width only
        return f"A{int(a)}"
    return f"W{int(w)}" + ("" if fmt.missing(a) else f"A{int(a)}")


def accuracy_lines(s: dict) -> list[str]:
    n, lab = s.get("n_eval"), s.get("n_labelled")
    if not fmt.missing(s.get("top1")):
        fp = f" (FP32 {fmt.pct(s.get('top1_fp32'))})" if not fmt.missing(s.get("top1_fp32")) else ""
        fp5 = f" (FP32 {fmt.pct(s.get('top5_fp32'))})" if not fmt.missing(s.get("top5_fp32")) else ""
        lines = [f"top-1 {fmt.pct(s['top1'])}{fp}, top-5 {fmt.pct(s.get('top5'))}{fp5} on {fmt.count(lab)} labelled images"]
        if not fmt.missing(s.get("agreement_fp32")) and s.get("bits") != "fp32":
            lines.append(f"top-1 class equals FP32's on {fmt.pct(s['agreement_fp32'], 1)} of the images")
        return lines
    if fmt.missing(s.get("agreement_fp32")):
        return [f"no labels on the {fmt.count(n)} images, and no FP32 model to compare with"]
    agree = round(float(s["agreement_fp32"]) * float(n) / 100.0) if not fmt.missing(n) else None
    lines = [f"no labels on these {fmt.count(n)} images, so no accuracy: instead, the integer program's top-1 "
             f"class equals FP32's on {fmt.count(agree)} of {fmt.count(n)} ({fmt.pct(s['agreement_fp32'], 1)})"]
    if not fmt.missing(s.get("top5_overlap_fp32")):
        lines.append(f"their top-5 lists share {float(s['top5_overlap_fp32']):.2g} of 5 classes on average "
                     "(a changed top-1 among close classes is not an error)")
    return lines


def energy_lines(s: dict) -> list[str]:
    if fmt.missing(s.get("e_total_pj")):
        return []
    w8 = str(s.get("bits")).upper() == "W8A8"  # the reference itself: its W8A8 ratio is 1 by definition
    lines = [f"{fmt.energy(s['e_total_pj'])} per image (detailed model): {fmt.ratio(s.get('energy_ratio_fp32'))} "
             f"FP32's {fmt.energy(s.get('e_fp32_pj'))}, "
             + ("this is the W8A8 reference" if w8 else
                f"{fmt.ratio(s.get('energy_ratio_w8a8'))} W8A8's {fmt.energy(s.get('e_w8a8_pj'))}")]
    if not fmt.missing(s.get("e_seed_pj")):
        lines.append(f"{fmt.energy(s['e_seed_pj'])} per image (seed model, E_MAC ~ b^2 + DRAM): "
                     f"{fmt.ratio(s.get('seed_ratio_fp32'))} FP32"
                     + ("" if w8 else f", {fmt.ratio(s.get('seed_ratio_w8a8'))} W8A8"))
    tot = s.get("e_total_pj")
    parts = [(k, s.get(f"e_{k.lower()}_pj")) for k in ("MAC", "SRAM", "DRAM")]
    if all(not fmt.missing(v) for _, v in parts) and tot:
        lines.append("spent on " + ", ".join(f"{k} {100.0 * float(v) / float(tot):.0f}%" for k, v in parts))
    return lines


def hardware_lines(s: dict) -> list[str]:
    where = f"on {s.get('accelerator')} ({s.get('array')} {s.get('dataflow')}, {s.get('dram_model')} DRAM model)"
    cyc = f"{fmt.count(s.get('cycles'))} cycles per image"
    if not fmt.missing(s.get("latency_us")):
        cyc += f" = {fmt.latency(s['latency_us'])} at {float(s['clock_mhz']):g} MHz (an assumed clock)"
    lines = [where, cyc]
    if s.get("dram_stalls"):
        lines.append(f"of which {fmt.count(s.get('stall_cycles'))} wait for DRAM "
                     f"({float(s['dram_bytes_per_cycle']):.3g} bytes per cycle)")
    elif not fmt.missing(s.get("dram_bytes_per_cycle")):
        lines.append("DRAM bandwidth not counted in the cycles (stalls off: dram.stalls = false or --dram-stalls off)")
    if not fmt.missing(s.get("edp_pj_us")):
        w8 = "" if str(s.get("bits")).upper() == "W8A8" else f", {fmt.ratio(s.get('edp_ratio_w8a8'))} W8A8's"
        lines.append(f"energy-delay product {fmt.edp(s['edp_pj_us'])} (detailed energy x latency){w8}")
    return lines + [f"{fmt.nbytes(s.get('dram_bytes'))} DRAM traffic per image"]


def bitexact_line(s: dict) -> str:
    n, bad = s.get("bitexact_images") or 0, s.get("bitexact_mismatches") or 0
    if not n:
        return "not checked (no integer program, or --bitexact-images 0)"
    if bad:
        return f"MISMATCH: integer_ref and the emulation differ in {fmt.count(bad)} elements on {n} images (see layers.csv)"
    return f"yes: integer_ref equals the emulation on every layer of {n} images (0 differing elements)"


def accumulator_lines(s: dict) -> list[str]:
    """What the accumulator held (integer_ref's measure) and where lowering had to widen a weight
    scale so that a bias fits it; nothing for runs without those keys."""
    out = []
    if s.get("acc_bits_needed_max") is not None:
        out.append(f"accumulator: {fmt.count(s.get('acc_overflows') or 0)} values outside its bits; the widest "
                   f"layer needed {s['acc_bits_needed_max']} bits")
    if s.get("scale_floored_channels"):
        out.append(f"lowering widened the weight scale of {fmt.count(s['scale_floored_channels'])} output channels in "
                   f"{s['scale_floored_layers']} layers so their biases fit the accumulator (layers.csv scale_floored)")
    return out


def photo_lines(pred: pd.DataFrame | None, bits: str) -> list[str]:
    if pred is None or pred.empty or len(pred) > PHOTOS_SHOWN:
        return []
    w = max(len(str(x)) for x in pred["image"])
    b = max(4, len(bits))
    out = [f"Per image, five best classes, FP32 and the {bits} integer program:"]
    for r in pred.to_dict("records"):
        lab = f" (label: {r['label_name']})" if isinstance(r.get("label_name"), str) else ""
        same = "same top-1" if r["top1_agrees"] else "top-1 differs"
        out.append(f"  {str(r['image']):<{w}}  {'FP32':<{b}}  {', '.join(r['fp32_top5'].split('|'))}{lab}")
        out.append(f"  {'':<{w}}  {bits:<{b}}  {', '.join(r['quant_top5'].split('|'))}  "
                   f"[{same}, {r['top5_overlap']}/5 shared]")
    return out


def _block(label: str, lines: list[str]) -> list[str]:
    return [f"{label:<11}{line}" if i == 0 else f"{'':<11}{line}" for i, line in enumerate(lines)]


def run_summary(s: dict, layers: pd.DataFrame | None, pred: pd.DataFrame | None, out: str | Path,
                files: list[str]) -> str:
    """The terminal summary of one run (a plain-text block, ends with a newline)."""
    bits = str(s.get("bits"))
    head = f"quantsim: {s.get('model')} at {bits}"
    extra = [x for x in (s.get("granularity"), s.get("calib_method") and f"{s['calib_method']} calibration") if x]
    if extra:
        head += f" ({', '.join(extra)})"
    lines = [head, ""]
    photos = photo_lines(pred, bits)
    if photos:
        lines += photos + [""]
    lines += _block("Accuracy", accuracy_lines(s))
    lines += _block("Bit-exact", [bitexact_line(s)] + accumulator_lines(s))
    lines += _block("Energy", energy_lines(s) or ["n/a"])
    lines += _block("Hardware", hardware_lines(s))
    top = costliest(layers)
    if len(top):
        tot = float(s.get("e_total_pj") or 0) or float(pd.to_numeric(layers["e_total_pj"]).sum())
        w = max(len(str(x)) for x in top["layer"])
        lines += _block("Costliest", [
            f"{i}. {str(r['layer']):<{w}}  {r['op']:<7} {widths(r):<6} {fmt.energy(r['e_total_pj']):>9}  "
            f"{100.0 * float(r['e_total_pj']) / tot:4.1f}% of the energy"
            for i, r in enumerate(top.to_dict("records"), 1)])
    if s.get("note"):
        lines += _block("Note", [str(s["note"])])
    lines += _block("Files", [f"{Path(out) / 'report.html'}  (open in a browser: plots and every layer)",
                              ", ".join(files)])
    return "\n".join(lines) + "\n"


def sweep_summary(points: pd.DataFrame, meta: dict, out: str | Path, frontier) -> str:
    """The terminal summary of a Pareto sweep: every point, the frontier marked."""
    lines = [f"quantsim pareto: {meta.get('model')} on {meta.get('accelerator')}, "
             f"{fmt.count(meta.get('n_eval'))} evaluation images, energies per image (detailed model)", ""]
    rows = []
    for on, r in zip(frontier, points.to_dict("records")):
        rows.append([("* " if on else "  ") + str(r.get("label")), str(r.get("policy")),
                     fmt.pct(r.get("top1")), fmt.pct(r.get("agreement_fp32"), 1), fmt.energy(r.get("e_total_pj")),
                     fmt.ratio(r.get("energy_ratio_w8a8")), fmt.latency(r.get("latency_us")), fmt.edp(r.get("edp_pj_us")),
                     fmt.count(r.get("bitexact_mismatches")),
                     str(r.get("note")) if isinstance(r.get("note"), str) else ""])
    head = ["  point", "policy", "top-1", "agrees", "energy", "vs W8A8", "latency", "EDP", "mismatch", "note"]
    w = [max(len(x[i]) for x in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        lines.append("  ".join(c.ljust(w[i]) if i in (0, 1, 9) else c.rjust(w[i]) for i, c in enumerate(r)).rstrip())
    lines += ["", "* on the Pareto frontier of the quantized points: no other is as accurate for less energy, or more accurate for no more",
              "latency per image includes DRAM stalls; EDP = detailed energy x latency",
              f"Files      {Path(out) / 'report.html'}  (open in a browser: the plot and every point)",
              "           points.csv, pareto.png/.svg, pareto_latency.png/.svg, sweep.json, summary.txt"]
    return "\n".join(lines) + "\n"

"""The accuracy-energy Pareto sweep of one model (`python -m quantsim.pareto`).

Points: FP32; uniform W8A8, W6A6, W4A8, W4A4, each per-tensor and per-channel; mixed
precision with the threshold policy; mixed precision with the energy-budget policy at each
of --budgets (ratios of the W8A8 energy). Calibration, the FP32 pass over the evaluation
set, the sensitivity table and the per-layer energy tables are computed once and reused.

Out dir:
  points.csv       one row per point, rewritten atomically as each point finishes
                   (an interrupted sweep keeps what it finished; --resume skips those)
  pareto.png/.svg  top-1 against energy, the frontier, FP32 and W8A8 reference lines
  pareto_latency.png/.svg  top-1 against latency per image (DRAM stalls included), the same way
  widths_<label>.csv, width_map_<label>.png/.svg   per layer widths beside energy shares
  state/           FP32 predictions and the sensitivity cache (reused on --resume)
"""
from __future__ import annotations

import io
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from quantsim.emulate.executor import EmulatedModel
from quantsim.errors import QuantsimError
from quantsim.mixed.plan import mixed_tables, plan_mixed, widths_table
from quantsim.quant.config import QuantConfig
from quantsim.run import distribute, hardware, stages
from quantsim.run.inputs import (batches, check_images, check_out_dir, check_sources, heldout_labelled, load_accel,
                                 load_inputs, parse_candidates)
from quantsim.run.options import SweepOptions
from quantsim.run.single import base_config, fp32_energy, measure_program
from quantsim.zoo import datasets
from quantsim.zoo.metrics import hits, top_indices
from reports.html import sweep_report
from reports.io import write_bytes_atomic, write_csv_atomic, write_json_atomic, write_text_atomic
from reports.plots import pareto as pareto_plot, pareto_front, width_map
from reports.summary_text import sweep_summary

POINT_COLUMNS = ["label", "policy", "granularity", "w_bits", "a_bits", "top1", "top5", "agreement_fp32",
                 "e_total_pj", "e_seed_pj", "energy_ratio_w8a8", "latency_us", "edp_pj_us", "bitexact_mismatches",
                 "budget", "planned_energy_ratio", "binding", "optimal", "total_sensitivity", "widths",
                 "seconds", "note"]
UNIFORM = ((8, 8), (6, 6), (4, 8), (4, 4))
GRAN_TAG = {"per-tensor": "pt", "per-channel": "pc"}
CACHE_EVAL_BYTES = 1 << 30  # keep evaluation batches in memory up to this size


@dataclass
class Point:
    label: str
    policy: str  # fp32 | uniform | mixed-threshold | mixed-budget
    granularity: str | None = None
    w_bits: int | None = None
    a_bits: int | None = None
    budget: float | None = None


def parse_budgets(text: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise QuantsimError(f"--budgets {text!r}: give ratios separated by commas, e.g. 0.5,0.6") from None
    if not vals or any(not (math.isfinite(v) and v > 0) for v in vals):
        raise QuantsimError(f"--budgets {text!r}: every budget must be a positive ratio of W8A8 energy")
    return sorted(set(vals))


def sweep_points(granularity: str, budgets: list[float], uniform: bool = True,
                 uniform_grans=("per-tensor", "per-channel")) -> list[Point]:
    pts = [Point("FP32", "fp32")]
    if uniform:
        for gran in uniform_grans:
            for w, a in UNIFORM:
                pts.append(Point(f"W{w}A{a}-{GRAN_TAG[gran]}", "uniform", gran, w, a))
    pts.append(Point("mixed-thr", "mixed-threshold", granularity))
    # the budget policy at the threshold plan's achieved energy (budget filled in at run time)
    pts.append(Point("mixed-at-thr", "mixed-budget", granularity))
    for b in budgets:
        pts.append(Point(f"mixed-{b:g}", "mixed-budget", granularity, budget=b))
    return pts


# --------------------------------------------------------------------------- evaluation


class EvalSet:
    """The evaluation batches, held in memory when small enough, and the FP32 top-5."""

    def __init__(self, ds, batch_size: int):
        self.loader = datasets.make_loader(ds, batch_size=batch_size)
        self.n = len(ds)
        c, h, w = ds[0][0].shape
        self.cached = self.n * c * h * w * 4 <= CACHE_EVAL_BYTES
        self._batches: list | None = None

    def batches(self):
        if self._batches is not None:
            return self._batches
        if not self.cached:
            return self.loader
        self._batches = [(x, y) for x, y in self.loader]
        return self._batches

    def __getstate__(self):
        """Pickled (a --ray task's copy) with its batches when they fit in memory, else with the
        loader, whose data set's files must then be at the same paths on every worker."""
        state = dict(self.__dict__)
        if self.cached:
            state.update(_batches=self.batches(), loader=None)
        return state


@torch.no_grad()
def fp32_predictions(model, ev: EvalSet, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-5 class indices per image (FP32) and the labels (-1 where none)."""
    tops, labels = [], []
    for x, y in tqdm(ev.batches(), desc="FP32", unit="batch", disable=not progress, leave=False):
        f = model(x)
        tops.append(top_indices(f, 5))
        labels.append(y.numpy())
    return np.concatenate(tops), np.concatenate(labels)


def accuracy(top5: np.ndarray, labels: np.ndarray, fp32_top1: np.ndarray | None) -> dict:
    mask = labels >= 0
    out = {"top1": None, "top5": None}
    if mask.any():
        out["top1"] = 100.0 * hits(top5, labels, 1) / int(mask.sum())
        out["top5"] = 100.0 * hits(top5, labels, 5) / int(mask.sum())
    out["agreement_fp32"] = 100.0 if fp32_top1 is None else 100.0 * float((top5[:, 0] == fp32_top1).mean())
    return out


@torch.no_grad()
def quantized_predictions(graph, ev: EvalSet, progress: bool, desc: str) -> np.ndarray:
    qm = EmulatedModel(graph)
    tops = []
    for x, _ in tqdm(ev.batches(), desc=desc, unit="batch", disable=not progress, leave=False):
        q = qm(x)
        tops.append(top_indices(q, 5))
    return np.concatenate(tops)


# --------------------------------------------------------------------------- points file


def total_mismatches(df: pd.DataFrame) -> int:
    """Differing elements (integer_ref vs emulate) over a table's rows; missing counts as 0."""
    return int(pd.to_numeric(df.get("bitexact_mismatches"), errors="coerce").fillna(0).sum())


def read_points(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=POINT_COLUMNS)
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise QuantsimError(f"--resume: cannot read {path}: {exc}".splitlines()[0]) from exc
    if "label" not in df.columns:
        raise QuantsimError(f"--resume: {path} has no label column")
    older = [c for c in ("latency_us", "edp_pj_us") if c not in df.columns]
    if older:  # written before latency was recorded: its points keep their numbers, latency unknown
        df = df.assign(**{c: float("nan") for c in older})
        print(f"warning: {path} has no {' / '.join(older)} column (an older quantsim): its {len(df)} points "
              "stay out of the latency frontier; run the sweep without --resume to measure them", file=sys.stderr)
    return df


def write_points(path: Path, rows: list[dict]) -> None:
    df = pd.DataFrame(rows)
    df = df[[c for c in POINT_COLUMNS if c in df.columns] + [c for c in df.columns if c not in POINT_COLUMNS]]
    write_csv_atomic(path, df)


# --------------------------------------------------------------------------- the sweep


@dataclass
class SweepContext:
    """What every point reads, computed once by the driver (under --ray, put in the object
    store once): the prepared model, the images, the FP32 predictions, the W8A8 reference."""

    args: SweepOptions
    prep: stages.Prepared
    base: QuantConfig
    accel: object
    calib: list
    ev: EvalSet
    x: torch.Tensor
    toggle_x: torch.Tensor
    fp32_top5: np.ndarray
    labels: np.ndarray
    w8_pj: float
    fp32: dict
    candidates: tuple
    rerank_data: object
    out: Path
    progress: bool
    tables: object = None  # the mixed tables, measured at the first mixed point

    def mixed_tables(self):
        if self.tables is None:
            a = self.args
            self.tables = mixed_tables(self.prep, self.base, self.accel, self.calib, self.toggle_x, self.candidates,
                                       a.sensitivity_at, a.sensitivity_weighting, a.mac_form,
                                       a.sensitivity_cache or self.out / "state", self.progress, unit=a.mixed_unit)
        return self.tables


@dataclass
class PointResult:
    """A point's row of points.csv and, for a mixed plan, its widths table and re-ranking record
    (the driver writes them: a worker on another machine has no access to the out dir)."""

    row: dict
    widths: pd.DataFrame | None = None
    rerank: dict | None = None


def measure_point(ctx: SweepContext, p: Point, thr: PointResult | dict | None = None) -> PointResult:
    """One point (`thr`: the mixed-thr point's row or result, which mixed-at-thr's budget is)."""
    t0 = time.perf_counter()
    args = ctx.args
    row = {"label": p.label, "policy": p.policy, "granularity": p.granularity,
           "w_bits": p.w_bits, "a_bits": p.a_bits, "budget": p.budget}
    if p.policy == "fp32":
        row.update(accuracy(ctx.fp32_top5, ctx.labels, None))
        row.update(w_bits=32, a_bits=32, e_total_pj=float(ctx.fp32["e_total_pj"]),
                   e_seed_pj=float(ctx.fp32["e_seed_pj"]), latency_us=ctx.fp32["latency_us"],
                   edp_pj_us=ctx.fp32["edp_pj_us"], bitexact_mismatches=0)
        row["energy_ratio_w8a8"] = row["e_total_pj"] / ctx.w8_pj
        row["seconds"] = round(time.perf_counter() - t0, 2)
        return PointResult(row)
    plan = None
    if p.policy == "uniform":
        d = ctx.base.to_json()
        d.update(w_bits=p.w_bits, a_bits=p.a_bits, granularity=p.granularity)
        graph = stages.quantize(ctx.prep, QuantConfig.from_json(d))
    else:
        tables = ctx.mixed_tables()
        budget = p.budget
        if p.label == "mixed-at-thr":
            thr_row = thr.row if isinstance(thr, PointResult) else thr
            ratio = pd.to_numeric(pd.Series([thr_row.get("energy_ratio_w8a8") if thr_row else None]),
                                  errors="coerce")[0]
            if not np.isfinite(ratio):
                row.update(note="no threshold point to match")
                return PointResult(row)
            budget = row["budget"] = float(ratio)
        try:
            plan = plan_mixed(ctx.prep, ctx.base, ctx.accel, ctx.calib, ctx.toggle_x, ctx.candidates,
                              policy="threshold" if p.policy == "mixed-threshold" else "budget",
                              budget=budget, tables=tables, progress=ctx.progress, rerank=args.rerank,
                              rerank_data=ctx.rerank_data)
        except QuantsimError as exc:  # an infeasible budget: record it, keep going
            row.update(note=str(exc), seconds=round(time.perf_counter() - t0, 2))
            tqdm.write(f"{p.label}: {exc}", file=sys.stderr)
            return PointResult(row)
        graph = plan.graph
        s = plan.summary()
        row.update(planned_energy_ratio=s["planned_energy_ratio"], binding=s["binding"],
                   optimal=s["optimal"], total_sensitivity=s["total_sensitivity"],
                   widths="-".join(str(b) if isinstance(b, int) else f"W{b[0]}A{b[1]}"
                                   for b in s["chosen_widths"]),
                   note="; ".join(x for x in (
                       f"refinements={s['refinements']}" if s["refinements"] else "",
                       f"re-ranked: {s['rerank']['chosen']} of {s['rerank']['candidates']}" if s["rerank"] else "")
                       if x) or None)
    top5 = quantized_predictions(graph, ctx.ev, ctx.progress, p.label)
    row.update(accuracy(top5, ctx.labels, ctx.fp32_top5[:, 0]))
    bx, _, hw = measure_program(graph, ctx.x, args, ctx.accel)
    row.update(e_total_pj=float(hw.totals["e_total_pj"]), e_seed_pj=float(hw.totals["e_seed_pj"]),
               energy_ratio_w8a8=float(hw.totals["e_total_pj"]) / ctx.w8_pj,
               latency_us=hw.totals["latency_us"], edp_pj_us=hw.totals["edp_pj_us"],
               bitexact_mismatches=bx.total_mismatches if bx else None)
    res = PointResult(row)
    if plan is not None:
        res.widths = widths_table(plan, hw)
        res.rerank = plan.rerank  # what each re-ranked candidate measured, to audit the choice
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return res


@dataclass
class CheckedSweep:
    """What `check` derives from a sweep's options, before anything loads."""
    budgets: list[float]
    candidates: tuple
    out: Path
    accel: object
    base: QuantConfig
    points: list[Point]


def check(args: SweepOptions) -> CheckedSweep:
    """Every check of a sweep that needs no model or data: bad input fails here, before any
    loading (a sweep file checks all its runs so before the first starts)."""
    budgets = parse_budgets(args.budgets)
    candidates = parse_candidates(args.candidates)
    if args.toggle_images < 1:
        raise QuantsimError("--toggle-images must be at least 1")
    if args.ray is not None:
        distribute.check_address(args.ray)
        if args.ray_retries < 0:
            raise QuantsimError(f"--ray-retries {args.ray_retries}: give 0 or more")
    out = check_out_dir(args.out)
    accel = load_accel(args.accel, args.dram_model, args.residency, args.dram_stalls)
    base = base_config(args)
    check_sources(args)
    grans = [g.strip() for g in args.uniform_granularity.split(",") if g.strip()]
    if not grans or any(g not in GRAN_TAG for g in grans):
        raise QuantsimError(f"--uniform-granularity {args.uniform_granularity!r}: per-tensor and/or per-channel")
    return CheckedSweep(budgets, candidates, out, accel, base,
                        sweep_points(args.granularity, budgets, not args.no_uniform, grans))


def run(args: SweepOptions) -> pd.DataFrame:
    """The sweep; each point is a run of quantsim.run.single's measure_program on its program,
    one after another, or (--ray) as Ray tasks with the rows still written in point order."""
    t_start = time.perf_counter()
    chk = check(args)
    budgets, candidates, out, accel, base, points = (chk.budgets, chk.candidates, chk.out, chk.accel,
                                                     chk.base, chk.points)
    points_path = out / "points.csv"
    done = read_points(points_path) if args.resume else pd.DataFrame(columns=POINT_COLUMNS)
    rows = [r for r in done.to_dict("records")]
    done_labels = {str(r["label"]) for r in rows}
    todo = [p for p in points if p.label not in done_labels]
    progress = args.progress
    if not todo:
        print(f"all {len(points)} points already in {points_path}", file=sys.stderr)
        _plots(out, pd.DataFrame(rows), args, accel.name)
        meta_path = out / "sweep.json"
        _report(out, pd.DataFrame(rows), json.loads(meta_path.read_text()) if meta_path.exists()
                else {"accelerator": accel.name})
        return pd.DataFrame(rows)

    torch.manual_seed(args.seed)
    inp = load_inputs(args)
    loaded, calib_ds, eval_ds = inp.loaded, inp.calib_ds, inp.eval_ds
    out.mkdir(parents=True, exist_ok=True)
    calib = batches(calib_ds, args.batch_size)
    prep = stages.prepare(loaded.model, loaded.preprocess.input_size, calib, args.seed, progress,
                          equalize=args.equalize, equalize_relu6=args.equalize_relu6,
                          reparam_ln=args.reparam_ln, softmax_quant=args.softmax_quant)
    ev = EvalSet(eval_ds, args.batch_size)
    rerank_data = heldout_labelled(args, loaded.preprocess, calib_ds)
    x = check_images(eval_ds, args)
    toggle_x = x[:args.toggle_images]

    fp32_file = out / "state" / "fp32_top5.npy"
    labels_file = out / "state" / "labels.npy"
    if args.resume and fp32_file.exists() and labels_file.exists() and len(np.load(fp32_file)) == len(eval_ds):
        fp32_top5, labels = np.load(fp32_file), np.load(labels_file)
    else:
        fp32_top5, labels = fp32_predictions(loaded.model, ev, progress)
        for path, arr in ((fp32_file, fp32_top5), (labels_file, labels)):
            buf = io.BytesIO()
            np.save(buf, arr)
            write_bytes_atomic(path, buf.getvalue())

    # W8A8 at the base granularity: the reference every energy ratio divides by
    w8_graph = stages.quantize(prep, base)
    w8_hw = hardware.simulate(w8_graph, stages.integer_taps(w8_graph, toggle_x), accel,
                              args.toggle_images, args.mac_form)
    w8_pj = float(w8_hw.totals["e_total_pj"])
    fp32 = fp32_energy(w8_hw)  # what `simulate --bits fp32` reports, from the same function
    ctx = SweepContext(args, prep, base, accel, calib, ev, x, toggle_x, fp32_top5, labels, w8_pj, fp32,
                       candidates, rerank_data, out, progress)

    def record(res: PointResult) -> None:
        if res.widths is not None:
            _write_widths(out, res.row["label"], res.widths, loaded.arch)
        if res.rerank:
            write_json_atomic(out / "state" / f"rerank_{res.row['label']}.json", res.rerank)

    if args.ray is None:
        def finish(row: dict) -> None:
            rows.append(row)
            write_points(points_path, rows)

        bar = tqdm(todo, desc="pareto", unit="point", disable=not progress)
        for p in bar:
            bar.set_postfix_str(p.label)
            res = measure_point(ctx, p, next((r for r in rows if r["label"] == "mixed-thr"), None))
            record(res)
            finish(res.row)
        bar.close()
    else:
        rows = rows + _run_on_ray(ctx, todo, rows, points_path, record)
    df = pd.DataFrame(rows)
    tables = ctx.tables
    meta = {"model": loaded.arch, "accelerator": accel.name, "n_eval": len(eval_ds), "n_calib": len(calib_ds),
            "granularity": args.granularity, "candidates": list(candidates), "budgets": budgets,
            "sensitivity_at": args.sensitivity_at, "sensitivity_weighting": args.sensitivity_weighting,
            "mixed_unit": args.mixed_unit, "rerank": args.rerank, "rerank_by": args.rerank_by,
            "rerank_images": args.rerank_images if args.rerank_by == "top1" else None,
            "mac_form": args.mac_form, "w8a8_pj": w8_pj, "seconds": round(time.perf_counter() - t_start, 1)}
    if tables is not None:
        meta.update(tied=tables.tied, fixed_energy_pj=tables.fixed_pj,
                    min_energy_ratio=(sum(min(r.values()) for r in tables.energy.values()) + tables.fixed_pj) / w8_pj,
                    seconds_tables={k: round(v, 2) for k, v in tables.seconds.items()})
    write_json_atomic(out / "sweep.json", meta)
    _plots(out, df, args, f"{loaded.arch} on {accel.name}")
    _report(out, df, meta)
    return df


def _run_on_ray(ctx: SweepContext, todo: list[Point], done_rows: list[dict], points_path: Path,
                record) -> list[dict]:
    """The points as Ray tasks (quantsim.run.distribute); points.csv rewritten atomically as
    each finishes, its rows in point order, so --resume works as in a serial sweep. Returns
    the new rows in point order."""
    thr_done = next((r for r in done_rows if r["label"] == "mixed-thr"), None)
    labels = {p.label for p in todo}
    jobs = [distribute.Job(p.label, (p,),
                           after="mixed-thr" if p.label == "mixed-at-thr" and "mixed-thr" in labels else None,
                           dep=thr_done if p.label == "mixed-at-thr" else None) for p in todo]
    needs_tables = {p.label for p in todo if p.policy not in ("fp32", "uniform")}

    def mixed_jobs():
        # the mixed points' tables, measured once here in the driver while the uniform points run
        ctx.mixed_tables()
        return replace(ctx, progress=False), [j for j in jobs if j.key in needs_tables]

    results: dict[str, PointResult] = {}

    def on_done(label: str, res: PointResult) -> None:
        results[label] = res
        record(res)
        write_points(points_path, done_rows + [results[p.label].row for p in todo if p.label in results])

    distribute.run_jobs(measure_point, replace(ctx, progress=False), [j for j in jobs if j.key not in needs_tables],
                        on_done, address=ctx.args.ray, retries=ctx.args.ray_retries, progress=ctx.progress,
                        desc="pareto", later=mixed_jobs if needs_tables else None)
    return [results[p.label].row for p in todo]


def _write_widths(out: Path, label: str, df: pd.DataFrame, arch: str) -> None:
    write_csv_atomic(out / f"widths_{label}.csv", df)
    width_map(df, out / f"width_map_{label}", title=f"{arch} {label}: widths and energy share per layer")


def _plots(out: Path, df: pd.DataFrame, args, title: str) -> None:
    pts = df[pd.to_numeric(df["top1"], errors="coerce").notna()].copy()
    if pts.empty:
        return
    fp32 = pts[pts["policy"] == "fp32"]
    ref = pts[(pts["label"] == f"W8A8-{GRAN_TAG[args.granularity]}")]
    # the FP32 point costs about 2.5x W8A8: drawn as a line, not as a point, so the axis stays readable
    q = pts[pts["policy"] != "fp32"]
    fp32_top1 = float(fp32["top1"].iloc[0]) if len(fp32) else None
    pareto_plot(q, out / "pareto", fp32_top1=fp32_top1,
                w8a8_cost=float(ref["e_total_pj"].iloc[0]) if len(ref) else None, title=title)
    if "latency_us" in q.columns and pd.to_numeric(q["latency_us"], errors="coerce").notna().any():
        w8_lat = pd.to_numeric(ref["latency_us"], errors="coerce") if len(ref) else pd.Series(dtype=float)
        pareto_plot(q, out / "pareto_latency", fp32_top1=fp32_top1, cost="latency_us", title=title,
                    w8a8_cost=float(w8_lat.iloc[0]) if w8_lat.notna().any() else None)


def _report(out: Path, df: pd.DataFrame, meta: dict) -> None:
    """summary.txt and report.html: the points, the Pareto plot and the width maps, for a person."""
    # the frontier of the quantized points, as the plot draws it (FP32 is a reference line there)
    quantized = (df["policy"] != "fp32").to_numpy()
    pts = pd.DataFrame({"top1": pd.to_numeric(df["top1"], errors="coerce").where(quantized),
                        "e_total_pj": pd.to_numeric(df["e_total_pj"], errors="coerce")})
    front = pareto_front(pts)
    pareto_svg = (out / "pareto.svg").read_text() if (out / "pareto.svg").exists() else None
    latency_svg = (out / "pareto_latency.svg").read_text() if (out / "pareto_latency.svg").exists() else None
    maps = {f"{label}: widths per layer and their share of energy": (out / f"width_map_{label}.svg").read_text()
            for label in df["label"].astype(str) if (out / f"width_map_{label}.svg").exists()}
    text = sweep_summary(df, meta, out, front)
    write_text_atomic(out / "summary.txt", text)
    write_text_atomic(out / "report.html", sweep_report(df, meta, front, pareto_svg, maps, text, latency_svg))

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
                   (--reference DIR: both plots also draw that earlier sweep's points faintly and
                   its frontier dashed; --replot OUT draws OUT's plots and report again from its
                   points.csv and sweep.json, measuring nothing)
  widths_<label>.csv, width_map_<label>.png/.svg   per layer widths beside energy shares
  state/           FP32 predictions, the sensitivity cache and the learned codes (reused on --resume)
"""
from __future__ import annotations

import io
import json
import math
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Subset
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
# --ray: a point's evaluation is split into tasks of about this many images (a few seconds each
# on a CIFAR ResNet), so that the last tasks of a sweep are short and no worker idles long at the end
EVAL_CHUNK_IMAGES = 1024


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

    def chunks(self, n_batches: int):
        """The batches, n_batches at a time, as EvalChunks (--ray: one task's share of a point);
        decoded here, one chunk after another, when the set fits in memory."""
        if not self.cached:
            size = n_batches * self.loader.batch_size
            for start in range(0, self.n, size):
                yield EvalChunk(self.loader.batch_size, start=start, stop=min(start + size, self.n))
            return
        group: list = []
        for i, batch in enumerate(self.batches() if self._batches is not None else self.loader):
            group.append(batch)
            if len(group) == n_batches or i == len(self.loader) - 1:
                yield EvalChunk(self.loader.batch_size, np.concatenate([x.numpy() for x, _ in group]),
                                np.concatenate([y.numpy() for _, y in group]))
                group = []


@dataclass
class EvalChunk:
    """Consecutive evaluation batches: decoded by the driver (x, y: the batches' images and labels,
    in the object store), or, for a set over CACHE_EVAL_BYTES, the images start:stop, which the
    task decodes from the data set (its files then at the same paths on every worker). Either
    way the batches are the serial sweep's, so the predictions are too."""

    batch_size: int
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    start: int = 0
    stop: int = 0

    def batches(self, ds=None):
        if self.x is None:
            yield from datasets.make_loader(Subset(ds, range(self.start, self.stop)), batch_size=self.batch_size)
            return
        for i in range(0, len(self.x), self.batch_size):  # copies: the object store's arrays are read-only
            yield (torch.from_numpy(self.x[i:i + self.batch_size].copy()),
                   torch.from_numpy(self.y[i:i + self.batch_size].copy()))


def chunk_top5(what, chunk: EvalChunk, ds=None) -> tuple[np.ndarray, np.ndarray | None, float] | None:
    """A --ray task's share of a point's evaluation: the top-5 per image of the FP32 model (an
    nn.Module; with the labels) or of a program (an integer Graph), and the seconds it took;
    None for a point without a program (an infeasible budget)."""
    if what is None:
        return None
    t0 = time.perf_counter()
    if isinstance(what, torch.nn.Module):
        top5, labels = fp32_predictions(what, chunk.batches(ds), False)
    else:
        with warnings.catch_warnings():  # the program's arrays come read-only from the object store; only read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            top5, labels = quantized_predictions(what, chunk.batches(ds), False, ""), None
    return top5, labels, time.perf_counter() - t0


@torch.no_grad()
def fp32_predictions(model, batches, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-5 class indices per image (FP32) and the labels (-1 where none)."""
    tops, labels = [], []
    for x, y in tqdm(batches, desc="FP32", unit="batch", disable=not progress, leave=False):
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
def quantized_predictions(graph, batches, progress: bool, desc: str) -> np.ndarray:
    qm = EmulatedModel(graph)
    tops = []
    for x, _ in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
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


# what a plot reads of a sweep's points.csv (an earlier sweep's, --reference, or one to --replot)
PLOTTED_COLUMNS = ("label", "policy", "top1", "e_total_pj")
# what a sweep records of its quantization method (sweep.json; a points.csv column where one has it)
METHOD_KEYS = ("rounding", "reconstruct", "qdrop", "equalize")


@dataclass
class Reference:
    """An earlier sweep drawn beside this one in the Pareto plots (--reference DIR)."""
    points: pd.DataFrame  # its points.csv
    label: str            # the legend's "reference: <label>"


def read_sweep_points(folder: str | Path, flag: str) -> pd.DataFrame:
    """A finished sweep's points.csv, checked to have something to plot; else one QuantsimError
    naming `flag` (checked before anything loads)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QuantsimError(f"{flag} {folder}: no such folder (give the --out folder of an earlier sweep)")
    path = folder / "points.csv"
    if not path.is_file():
        raise QuantsimError(f"{flag} {folder}: no points.csv there (give the --out folder of an earlier sweep)")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise QuantsimError(f"{flag}: cannot read {path}: {exc}".splitlines()[0]) from exc
    missing = [c for c in PLOTTED_COLUMNS if c not in df.columns]
    if missing:
        raise QuantsimError(f"{flag}: {path} has no {' / '.join(missing)} column (not a sweep's points.csv)")
    top1 = pd.to_numeric(df["top1"], errors="coerce")
    energy = pd.to_numeric(df["e_total_pj"], errors="coerce")
    if not ((df["policy"] != "fp32") & np.isfinite(top1) & np.isfinite(energy)).any():
        raise QuantsimError(f"{flag}: {path} has no quantized point with a top-1 and an energy to plot")
    return df


def read_sweep_meta(folder: str | Path, flag: str) -> dict:
    """A finished sweep's sweep.json ({} when it has none); unreadable: one QuantsimError naming `flag`."""
    meta_path = Path(folder) / "sweep.json"
    try:
        return json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QuantsimError(f"{flag}: cannot read {meta_path}: {exc}".splitlines()[0]) from exc


def method_label(recorded: dict) -> str | None:
    """A short name of a sweep's quantization method from what it recorded (METHOD_KEYS), e.g.
    "nearest" or "adaround, block reconstruction, QDrop 0.5"; None when it recorded none."""
    def given(key):
        v = recorded.get(key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    rounding = given("rounding")
    if rounding is None:
        return None
    parts = [str(rounding)]
    reconstruct = given("reconstruct")
    if reconstruct not in (None, "none"):
        parts.append(f"{reconstruct} reconstruction")
        if given("qdrop"):
            parts.append(f"QDrop {float(given('qdrop')):g}")
    if given("equalize") in (True, "True", "true", 1):
        parts.append("equalized")
    return ", ".join(parts)


def read_reference(folder: str, label: str | None = None) -> Reference:
    """--reference DIR: its points, and its legend label: `label` (--reference-label), else the
    method its sweep.json or points.csv records, else the folder's name."""
    df = read_sweep_points(folder, "--reference")
    if label is None:
        meta = read_sweep_meta(folder, "--reference")
        in_points = {k: df[k].dropna().iloc[0] for k in METHOD_KEYS if k in df.columns and df[k].notna().any()}
        label = method_label(meta) or method_label(in_points) or Path(folder).resolve().name
    return Reference(df, label)


def check_reference(args: SweepOptions) -> Reference | None:
    if args.reference is None:
        if args.reference_label is not None:
            raise QuantsimError("--reference-label names the --reference sweep: give --reference DIR too")
        return None
    return read_reference(args.reference, args.reference_label)


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
    fp32_seconds: float = 0.0  # the FP32 pass (0 when its predictions were read back on --resume)

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
    (the driver writes them: a worker on another machine has no access to the out dir).
    `seconds`: the time spent on the point so far (None: the row records none)."""

    row: dict
    widths: pd.DataFrame | None = None
    rerank: dict | None = None
    seconds: float | None = None


def measure_point(ctx: SweepContext, p: Point, thr: PointResult | dict | None = None) -> PointResult:
    """One point (`thr`: the mixed-thr point's row or result, which mixed-at-thr's budget is):
    its program, then its evaluation over every image."""
    graph, res = point_program(ctx, p, thr)
    if p.policy == "fp32":
        return finish_point(res, ctx.fp32_top5, ctx.fp32_top5, ctx.labels, ctx.fp32_seconds)
    if graph is None:
        return finish_point(res, None, ctx.fp32_top5, ctx.labels, 0.0)
    t0 = time.perf_counter()
    top5 = quantized_predictions(graph, ctx.ev.batches(), ctx.progress, p.label)
    return finish_point(res, top5, ctx.fp32_top5, ctx.labels, time.perf_counter() - t0)


def point_program(ctx: SweepContext, p: Point, thr: PointResult | dict | None = None):
    """A point up to its evaluation: its program (None for FP32, an infeasible budget or no
    threshold point to match) and its result without accuracy: energy, latency, bit-exactness,
    a mixed plan's widths. Under --ray a task of its own, which forwards the program to the
    point's evaluation tasks and its result to the driver."""
    t0 = time.perf_counter()
    args = ctx.args
    row = {"label": p.label, "policy": p.policy, "granularity": p.granularity,
           "w_bits": p.w_bits, "a_bits": p.a_bits, "budget": p.budget}
    if p.policy == "fp32":
        row.update(w_bits=32, a_bits=32, e_total_pj=float(ctx.fp32["e_total_pj"]),
                   e_seed_pj=float(ctx.fp32["e_seed_pj"]), latency_us=ctx.fp32["latency_us"],
                   edp_pj_us=ctx.fp32["edp_pj_us"], bitexact_mismatches=0)
        row["energy_ratio_w8a8"] = row["e_total_pj"] / ctx.w8_pj
        return None, PointResult(row, seconds=time.perf_counter() - t0)
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
                return None, PointResult(row)
            budget = row["budget"] = float(ratio)
        try:
            plan = plan_mixed(ctx.prep, ctx.base, ctx.accel, ctx.calib, ctx.toggle_x, ctx.candidates,
                              policy="threshold" if p.policy == "mixed-threshold" else "budget",
                              budget=budget, tables=tables, progress=ctx.progress, rerank=args.rerank,
                              rerank_data=ctx.rerank_data)
        except QuantsimError as exc:  # an infeasible budget: record it, keep going
            row.update(note=str(exc))
            tqdm.write(f"{p.label}: {exc}", file=sys.stderr)
            return None, PointResult(row, seconds=time.perf_counter() - t0)
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
    bx, _, hw = measure_program(graph, ctx.x, args, ctx.accel)
    row.update(e_total_pj=float(hw.totals["e_total_pj"]), e_seed_pj=float(hw.totals["e_seed_pj"]),
               energy_ratio_w8a8=float(hw.totals["e_total_pj"]) / ctx.w8_pj,
               latency_us=hw.totals["latency_us"], edp_pj_us=hw.totals["edp_pj_us"],
               bitexact_mismatches=bx.total_mismatches if bx else None)
    res = PointResult(row)
    if plan is not None:
        res.widths = widths_table(plan, hw)
        res.rerank = plan.rerank  # what each re-ranked candidate measured, to audit the choice
    res.seconds = time.perf_counter() - t0
    return graph, res


def finish_point(res: PointResult, top5: np.ndarray | None, fp32_top5: np.ndarray, labels: np.ndarray,
                 seconds: float) -> PointResult:
    """A point's row completed: its accuracy from its top-5 predictions (None: it has no program,
    no accuracy) and the seconds of its evaluation added to its time."""
    row = res.row
    if top5 is not None:
        row.update(accuracy(top5, labels, None if row["policy"] == "fp32" else fp32_top5[:, 0]))
    if res.seconds is not None:
        row["seconds"] = round(res.seconds + seconds, 2)
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
    reference: Reference | None = None


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
                        sweep_points(args.granularity, budgets, not args.no_uniform, grans), check_reference(args))


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
        _plots(out, pd.DataFrame(rows), args.granularity, accel.name, chk.reference)
        meta_path = out / "sweep.json"
        _report(out, pd.DataFrame(rows), json.loads(meta_path.read_text()) if meta_path.exists()
                else {"accelerator": accel.name})
        return pd.DataFrame(rows)

    torch.manual_seed(args.seed)
    # --ray: the cluster starts first and its workers import quantsim while this driver loads
    with (distribute.session(args.ray, args.ray_retries, warm_up=__name__) if args.ray else nullcontext()) as ray_session:
        inp = load_inputs(args)
        loaded, calib_ds, eval_ds = inp.loaded, inp.calib_ds, inp.eval_ds
        out.mkdir(parents=True, exist_ok=True)
        calib = batches(calib_ds, args.batch_size)
        prep = stages.prepare(loaded.model, loaded.preprocess.input_size, calib, args.seed, progress,
                              equalize=args.equalize, equalize_relu6=args.equalize_relu6,
                              reparam_ln=args.reparam_ln, softmax_quant=args.softmax_quant)
        # each width's learned codes once per sweep, reused on --resume and by every Ray task
        prep.rounding_cache = Path(args.rounding_cache) if args.rounding_cache else out / "state"
        ev = EvalSet(eval_ds, args.batch_size)
        rerank_data = heldout_labelled(args, loaded.preprocess, calib_ds)
        x = check_images(eval_ds, args)
        toggle_x = x[:args.toggle_images]

        # W8A8 at the base granularity: the reference every energy ratio divides by
        w8_graph = stages.quantize(prep, base)
        w8_hw = hardware.simulate(w8_graph, stages.integer_taps(w8_graph, toggle_x), accel,
                                  args.toggle_images, args.mac_form)
        w8_pj = float(w8_hw.totals["e_total_pj"])
        fp32 = fp32_energy(w8_hw)  # what `simulate --bits fp32` reports, from the same function
        ctx = SweepContext(args, prep, base, accel, calib, ev, x, toggle_x, None, None, w8_pj, fp32,
                           candidates, rerank_data, out, progress)
        fp32_file, labels_file = out / "state" / "fp32_top5.npy", out / "state" / "labels.npy"
        if args.resume and fp32_file.exists() and labels_file.exists() and len(np.load(fp32_file)) == len(eval_ds):
            ctx.fp32_top5, ctx.labels = np.load(fp32_file), np.load(labels_file)

        def record(res: PointResult) -> None:
            if res.widths is not None:
                _write_widths(out, res.row["label"], res.widths, loaded.arch)
            if res.rerank:
                write_json_atomic(out / "state" / f"rerank_{res.row['label']}.json", res.rerank)

        if ray_session is None:
            if ctx.fp32_top5 is None:
                t0 = time.perf_counter()
                ctx.fp32_top5, ctx.labels = fp32_predictions(loaded.model, ev.batches(), progress)
                ctx.fp32_seconds = time.perf_counter() - t0
                _save_fp32(out, ctx.fp32_top5, ctx.labels)
            bar = tqdm(todo, desc="pareto", unit="point", disable=not progress)
            for p in bar:
                bar.set_postfix_str(p.label)
                res = measure_point(ctx, p, next((r for r in rows if r["label"] == "mixed-thr"), None))
                record(res)
                rows.append(res.row)
                write_points(points_path, rows)
            bar.close()
        else:
            rows = rows + _run_on_ray(ray_session, ctx, loaded.model, todo, rows, points_path, record)
    df = pd.DataFrame(rows)
    tables = ctx.tables
    meta = {"model": loaded.arch, "accelerator": accel.name, "n_eval": len(eval_ds), "n_calib": len(calib_ds),
            "granularity": args.granularity, "candidates": list(candidates), "budgets": budgets,
            "sensitivity_at": args.sensitivity_at, "sensitivity_weighting": args.sensitivity_weighting,
            "mixed_unit": args.mixed_unit, "rerank": args.rerank, "rerank_by": args.rerank_by,
            "rerank_images": args.rerank_images if args.rerank_by == "top1" else None,
            "mac_form": args.mac_form, "calib_method": base.calib_method, "recon_iters": base.recon_iters,
            "w8a8_pj": w8_pj, "seconds": round(time.perf_counter() - t_start, 1),
            **{k: getattr(base, k) for k in METHOD_KEYS}}  # what a later --reference to this sweep is labelled by
    if tables is not None:
        meta.update(tied=tables.tied, fixed_energy_pj=tables.fixed_pj,
                    min_energy_ratio=(sum(min(r.values()) for r in tables.energy.values()) + tables.fixed_pj) / w8_pj,
                    seconds_tables={k: round(v, 2) for k, v in tables.seconds.items()})
    write_json_atomic(out / "sweep.json", meta)
    _plots(out, df, args.granularity, f"{loaded.arch} on {accel.name}", chk.reference)
    _report(out, df, meta)
    return df


def replot(args: SweepOptions) -> pd.DataFrame:
    """--replot OUT: OUT's Pareto plots, summary.txt and report.html drawn again from its points.csv
    and sweep.json (with --reference, beside that sweep); nothing is loaded or measured."""
    out = check_out_dir(args.replot)
    df = read_sweep_points(out, "--replot")
    reference = check_reference(args)
    meta = read_sweep_meta(out, "--replot")
    meta_path = out / "sweep.json"
    granularity = meta.get("granularity", args.granularity)
    if granularity not in GRAN_TAG:
        raise QuantsimError(f"--replot: {meta_path} names granularity {granularity!r}, "
                            f"not one of {', '.join(GRAN_TAG)}")
    title = f"{meta['model']} on {meta['accelerator']}" if "model" in meta and "accelerator" in meta else out.name
    _plots(out, df, granularity, title, reference)
    _report(out, df, meta)
    return df


def _save_fp32(out: Path, fp32_top5: np.ndarray, labels: np.ndarray) -> None:
    """The FP32 predictions, for --resume (state/)."""
    for path, arr in ((out / "state" / "fp32_top5.npy", fp32_top5), (out / "state" / "labels.npy", labels)):
        buf = io.BytesIO()
        np.save(buf, arr)
        write_bytes_atomic(path, buf.getvalue())


def _run_on_ray(session: distribute.Session, ctx: SweepContext, model, todo: list[Point], done_rows: list[dict],
                points_path: Path, record) -> list[dict]:
    """The points as Ray tasks (quantsim.run.distribute), so that every worker is busy from the
    first task to the last: per point a task for its program (quantize or plan, bit-exactness,
    hardware model) and one per EVAL_CHUNK_IMAGES evaluation images, which takes the program
    from it; the FP32 pass in chunks alike; the uniform points submitted before the driver
    decodes the evaluation images (chunk by chunk, each submitted as it is ready) and measures
    the mixed tables. The driver assembles each point's row from its tasks (the serial
    sweep's functions, so its numbers) and rewrites points.csv atomically as each point
    completes, its rows in point order, so --resume works as in a serial sweep. Returns the
    new rows in point order."""
    from quantsim.run.distribute import Job, Result

    labels = {p.label for p in todo}
    thr_done = next((r for r in done_rows if r["label"] == "mixed-thr"), None)
    early = [p for p in todo if p.policy == "uniform"]
    late = [p for p in todo if p.policy not in ("fp32", "uniform")]
    programs: dict[str, PointResult] = {}
    if "FP32" in labels:
        programs["FP32"] = point_program(ctx, next(p for p in todo if p.label == "FP32"))[1]
    chunk_of: dict[str, tuple[str, int]] = {}  # evaluation job -> (point, chunk)
    parts: dict[str, dict[int, tuple]] = {label: {} for label in labels | {"FP32"}}
    results: dict[str, PointResult] = {}

    def shared_ctx():  # what the program tasks read: no evaluation images (the chunks carry them)
        return session.put(replace(ctx, ev=None, fp32_top5=None, labels=None, progress=False))

    def submit_programs(shared, points):
        for p in points:
            thr = (Result("mixed-thr", part=1) if p.label == "mixed-at-thr" and "mixed-thr" in labels
                   else thr_done)
            session.submit(Job(p.label, point_program, (shared, p, thr), forward=True))

    def submit_evaluation(label: str, what, i: int, chunk) -> None:
        key = f"{label}@{i}"
        chunk_of[key] = (label, i)
        session.submit(Job(key, chunk_top5, (what, chunk, ds_ref), point=label))

    submit_programs(shared_ctx(), early)
    ds_ref = None if ctx.ev.cached else session.put(ctx.ev.loader.dataset)  # chunks the tasks decode
    model_ref = session.put(model) if ctx.fp32_top5 is None else None
    chunks = []
    for i, chunk in enumerate(tqdm(ctx.ev.chunks(max(1, EVAL_CHUNK_IMAGES // ctx.ev.loader.batch_size)),
                                   desc="images", unit="chunk", disable=not ctx.progress, leave=False)):
        chunks.append(session.put(chunk))
        if model_ref is not None:
            submit_evaluation("FP32", model_ref, i, chunks[-1])
        for p in early:
            submit_evaluation(p.label, Result(p.label), i, chunks[-1])
    if late:
        ctx.mixed_tables()  # here in the driver (it may write the sensitivity cache) while the tasks run
        submit_programs(shared_ctx(), late)
        for p in late:
            for i, chunk in enumerate(chunks):
                submit_evaluation(p.label, Result(p.label), i, chunk)

    def complete(label: str) -> bool:
        return len(parts[label]) == len(chunks) and (label == "FP32" or label in programs)

    def on_done(key: str, result) -> None:
        if key in chunk_of:
            label, i = chunk_of[key]
            parts[label][i] = result
        else:
            programs[key] = result
        finish_ready()

    def finish_ready() -> None:
        """Every point whose tasks have all finished, once the FP32 predictions are in."""
        if ctx.fp32_top5 is None:
            if not complete("FP32"):
                return
            fp32 = [parts["FP32"][i] for i in range(len(chunks))]
            ctx.fp32_top5, ctx.labels = np.concatenate([f[0] for f in fp32]), np.concatenate([f[1] for f in fp32])
            ctx.fp32_seconds = sum(f[2] for f in fp32)
            _save_fp32(ctx.out, ctx.fp32_top5, ctx.labels)
        finished = False
        for p in todo:
            if p.label in results or not (p.label == "FP32" or complete(p.label)):
                continue
            if p.label == "FP32":
                res = finish_point(programs["FP32"], ctx.fp32_top5, ctx.fp32_top5, ctx.labels, ctx.fp32_seconds)
            else:
                got = [parts[p.label][i] for i in range(len(chunks))]
                top5 = None if got[0] is None else np.concatenate([g[0] for g in got])
                res = finish_point(programs[p.label], top5, ctx.fp32_top5, ctx.labels,
                                   sum(g[2] for g in got if g is not None))
            results[p.label] = res
            record(res)
            finished = True
        if finished:
            write_points(points_path, done_rows + [results[p.label].row for p in todo if p.label in results])

    finish_ready()  # FP32 read back on --resume: its row needs no task
    session.wait(on_done, ctx.progress, desc="pareto")
    return [results[p.label].row for p in todo]


def _write_widths(out: Path, label: str, df: pd.DataFrame, arch: str) -> None:
    write_csv_atomic(out / f"widths_{label}.csv", df)
    width_map(df, out / f"width_map_{label}", title=f"{arch} {label}: widths and energy share per layer")


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().any()


def _plots(out: Path, df: pd.DataFrame, granularity: str, title: str, reference: Reference | None = None) -> None:
    pts = df[pd.to_numeric(df["top1"], errors="coerce").notna()].copy()
    if pts.empty:
        return
    fp32 = pts[pts["policy"] == "fp32"]
    ref = pts[(pts["label"] == f"W8A8-{GRAN_TAG[granularity]}")]
    # the FP32 point costs about 2.5x W8A8: drawn as a line, not as a point, so the axis stays readable
    q = pts[pts["policy"] != "fp32"]
    other = None if reference is None else reference.points[reference.points["policy"] != "fp32"]
    label = reference.label if reference is not None else "reference"
    fp32_top1 = float(fp32["top1"].iloc[0]) if len(fp32) else None
    pareto_plot(q, out / "pareto", fp32_top1=fp32_top1,
                w8a8_cost=float(ref["e_total_pj"].iloc[0]) if len(ref) else None, title=title,
                reference=other, reference_label=label)
    if _has(q, "latency_us"):
        w8_lat = pd.to_numeric(ref["latency_us"], errors="coerce") if len(ref) else pd.Series(dtype=float)
        # a reference from before latency was recorded stays off this plot only
        pareto_plot(q, out / "pareto_latency", fp32_top1=fp32_top1, cost="latency_us", title=title,
                    w8a8_cost=float(w8_lat.iloc[0]) if w8_lat.notna().any() else None,
                    reference=other if other is not None and _has(other, "latency_us") else None,
                    reference_label=label)


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

"""A sweep file (`python -m quantsim.pareto --sweep FILE.toml`): the cross product of models x
accelerators x methods, each one Pareto sweep (quantsim.run.sweep) in its own folder.

    out = "runs/sweeps"                       # run folders: OUT/<model>-<accelerator>[-<method>]
    accelerators = ["scalesim-32x32-ws", "edge-16x16-ws"]   # preset names or .toml files

    [defaults]                                # any option of `python -m quantsim.pareto`,
    data = "cifar10:../shared/data/cifar10"   #   named as on the command line (dashes or
    calib = 128                               #   underscores), typed as there
    budgets = [0.5, 0.6]                      # comma options also as TOML lists

    [[models]]
    model = "cifar_resnet20"
    weights = "../shared/models/cifar10-resnet/resnet20.th"
    name = "resnet20"                         # its folder part (default: the name, or the file's stem)

    [[methods]]                               # optional; without it one method, no folder suffix
    name = "nearest"
    [[methods]]
    name = "adaround"
    rounding = "adaround"

A model's keys override [defaults], a method's keys override the model's, and options given on
the command line override the file. Relative paths (out, data, weights, model and accelerator
files, the sensitivity cache, a `reference` sweep) are relative to the sweep file's folder.
Every run is checked (option names and types, then each sweep's own checks, the model and data
existing) before the first starts; a `reference` that is an earlier run of the file (e.g. the
nearest method's folder beside a learned-rounding method) is read when its run starts. A run
that fails later is reported and the others go on; OUT/sweeps.csv and OUT/summary.txt list
every run (written atomically after each one), and the exit is non-zero if any failed.
`--resume` resumes every run's points.csv.
"""
from __future__ import annotations

import difflib
import re
import sys
import time
import tomllib
import typing
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from quantsim.errors import QuantsimError
from quantsim.run import distribute, sweep
from quantsim.run.options import DEFAULT_ACCEL, SweepOptions
from quantsim.zoo.models import is_torchvision_name, looks_like_path
from reports.io import write_csv_atomic, write_text_atomic

__all__ = ["SweepRun", "load_sweep_file", "run_sweep_file", "RUN_COLUMNS"]

TOP_KEYS = ("out", "accelerators", "defaults", "models", "methods")
# set by the file's structure, not as options
NOT_OPTIONS = {"out": "the file's top-level `out` and the run folders name the output",
               "accel": "name the accelerators in the top-level `accelerators` list",
               "json": "a sweep file prints its table of runs",
               "sweep": "a sweep file does not name another",
               "replot": "replot a run's folder on the command line (python -m quantsim.pareto --replot OUT)"}
COMMA_OPTIONS = ("budgets", "candidates", "uniform_granularity")  # also written as TOML lists
PATH_OPTIONS = ("weights", "sensitivity_cache", "rounding_cache", "reference")
DATA_OPTIONS = ("data", "calib_data")
RUN_COLUMNS = ["run", "model", "accelerator", "method", "out", "status", "points", "fp32_top1", "w8a8_top1",
               "cheapest_within_1pt", "cheapest_energy_ratio", "bitexact_mismatches", "seconds", "error"]
_OPTION_TYPES = typing.get_type_hints(SweepOptions)


@dataclass
class SweepRun:
    name: str          # <model>-<accelerator>[-<method>], its folder under the file's out
    model: str
    accelerator: str
    method: str | None
    options: SweepOptions


def _where(path: Path, section: str) -> str:
    return f"sweep file {path}, {section}"


def _field_name(key: str, where: str) -> str:
    name = key.replace("-", "_")
    if name in NOT_OPTIONS:
        raise QuantsimError(f"{where}: {key!r} is not an option here ({NOT_OPTIONS[name]})")
    if name not in _OPTION_TYPES:
        close = difflib.get_close_matches(name, list(_OPTION_TYPES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise QuantsimError(f"{where}: unknown option {key!r}{hint}; the options are those of "
                            "`python -m quantsim.pareto --help`, as field names")
    return name


def _typed(name: str, value, where: str):
    """The TOML value as the option's type: int for float is fine, bool is never a number."""
    kinds = typing.get_args(_OPTION_TYPES[name]) or (_OPTION_TYPES[name],)
    if name in COMMA_OPTIONS and isinstance(value, list):
        if not value or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            raise QuantsimError(f"{where}: {name} must be a non-empty list of numbers or strings")
        value = ",".join(str(v) for v in value)
    if isinstance(value, bool):
        ok = bool in kinds
    elif isinstance(value, int):
        ok = int in kinds or float in kinds
        value = float(value) if int not in kinds else value
    else:
        ok = type(value) in kinds
    if not ok:
        want = " or ".join(k.__name__ for k in kinds if k is not type(None))
        raise QuantsimError(f"{where}: {name} = {value!r} must be {want}")
    return value


def _relative(base: Path, text: str) -> str:
    p = Path(text).expanduser()
    return str(p if p.is_absolute() else base / p)


def _resolve_paths(opts: dict, base: Path) -> dict:
    """Paths in a sweep file are relative to the file's folder, whatever the working directory."""
    out = dict(opts)
    for k in PATH_OPTIONS:
        if out.get(k):
            out[k] = _relative(base, out[k])
    for k in DATA_OPTIONS:
        kind, sep, rest = str(out.get(k) or "").partition(":")
        if sep and rest:
            out[k] = f"{kind}:{_relative(base, rest)}"
    if out.get("model") and not is_torchvision_name(out["model"]) and looks_like_path(out["model"]):
        out["model"] = _relative(base, out["model"])
    return out


def _options(table, where: str, skip: tuple = ()) -> dict:
    if not isinstance(table, dict):
        raise QuantsimError(f"{where}: expected a table of options, got {type(table).__name__}")
    out = {}
    for k, v in table.items():
        if k not in skip:
            name = _field_name(k, where)
            out[name] = _typed(name, v, f"{where}: {k}")
    return out


_FOLDER = re.compile(r"[^A-Za-z0-9._+=-]+")


def _folder_part(text: str, where: str) -> str:
    part = _FOLDER.sub("-", text).strip("-.")
    if not part:
        raise QuantsimError(f"{where}: {text!r} gives an empty folder name; give a name")
    return part


def _model_entries(doc: dict, path: Path) -> list[tuple[str, dict]]:
    entries = doc.get("models")
    if not isinstance(entries, list) or not entries:
        raise QuantsimError(f"{_where(path, 'models')}: give at least one model, e.g. [[models]] "
                            "model = \"cifar_resnet20\"")
    out = []
    for i, e in enumerate(entries):
        where = _where(path, f"models[{i}]")
        e = {"model": e} if isinstance(e, str) else e
        if not isinstance(e, dict) or not isinstance(e.get("model"), str) or not e["model"]:
            raise QuantsimError(f"{where}: needs model = \"NAME or FILE\"")
        name = e.get("name")
        if name is not None and not isinstance(name, str):
            raise QuantsimError(f"{where}: name must be a string")
        spec = e["model"]
        default = spec.split(":", 1)[1] if is_torchvision_name(spec) else (
            Path(spec).stem if looks_like_path(spec) else spec)
        out.append((_folder_part(name or default, where), _options(e, where, skip=("name",))))
    return out


def _method_entries(doc: dict, path: Path) -> list[tuple[str | None, dict]]:
    entries = doc.get("methods")
    if entries is None:
        return [(None, {})]
    if not isinstance(entries, list) or not entries:
        raise QuantsimError(f"{_where(path, 'methods')}: a list of tables, each with a name ([[methods]])")
    out = []
    for i, e in enumerate(entries):
        where = _where(path, f"methods[{i}]")
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not e["name"]:
            raise QuantsimError(f"{where}: needs name = \"...\" (its folder suffix)")
        out.append((_folder_part(e["name"], where), _options(e, where, skip=("name",))))
    return out


def _accelerators(doc: dict, path: Path, base: Path) -> list[tuple[str, str]]:
    accs = doc.get("accelerators", [DEFAULT_ACCEL])
    if isinstance(accs, str):
        accs = [accs]
    if not isinstance(accs, list) or not accs or not all(isinstance(a, str) and a for a in accs):
        raise QuantsimError(f"{_where(path, 'accelerators')}: a list of preset names or .toml files")
    out = []
    for a in accs:
        file_like = a.endswith(".toml") or "/" in a
        out.append((_folder_part(Path(a).stem if file_like else a, _where(path, "accelerators")),
                    _relative(base, a) if file_like else a))
    return out


def _unique(names: list, what: str, path: Path) -> None:
    seen = [n for n in names if names.count(n) > 1]
    if seen:
        raise QuantsimError(f"{_where(path, what)}: {seen[0]!r} appears twice (folder names must differ)")


def load_sweep_file(path: str | Path, overrides: dict | None = None) -> list[SweepRun]:
    """Every run of the file, each checked as its sweep checks itself, before anything loads.
    `overrides`: options (field names) that replace the file's in every run (the command line's)."""
    path = Path(path)
    if not path.is_file():
        raise QuantsimError(f"sweep file {path} does not exist")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise QuantsimError(f"sweep file {path} is not valid TOML: {e}") from None
    unknown = [k for k in doc if k not in TOP_KEYS]
    if unknown:
        raise QuantsimError(f"sweep file {path}: unknown top-level key {unknown[0]!r}; the keys are "
                            f"{', '.join(TOP_KEYS)} (options go in [defaults], a model's or a method's table)")
    base = path.resolve().parent
    out_root = doc.get("out", "runs/sweeps")
    if not isinstance(out_root, str) or not out_root:
        raise QuantsimError(f"{_where(path, 'out')}: a folder name")
    out_root = Path(_relative(base, out_root))
    defaults = _options(doc.get("defaults", {}), _where(path, "[defaults]"))
    models, methods, accels = _model_entries(doc, path), _method_entries(doc, path), _accelerators(doc, path, base)
    for what, names in (("models", [m for m, _ in models]), ("methods", [m for m, _ in methods]),
                        ("accelerators", [a for a, _ in accels])):
        _unique(names, what, path)
    overrides = {_field_name(k, "the command line"): v for k, v in (overrides or {}).items()}
    runs = []
    for mname, mopts in models:
        for aname, accel in accels:
            for meth, methopts in methods:
                name = "-".join(p for p in (mname, aname, meth) if p)
                merged = _resolve_paths({**defaults, **mopts, **methopts}, base)
                merged.update(overrides)
                opts = SweepOptions(**{**merged, "accel": accel, "out": str(out_root / name)})
                # a reference that is an earlier run of this file exists only once that run is done:
                # its own sweep.check, when it starts, reads it
                earlier = opts.reference is not None and Path(opts.reference).resolve() in {
                    Path(r.options.out).resolve() for r in runs}
                try:
                    sweep.check(replace(opts, reference=None, reference_label=None) if earlier else opts)
                except QuantsimError as e:
                    raise QuantsimError(f"sweep file {path}, run {name}: {e}") from None
                runs.append(SweepRun(name, merged["model"], accel, meth, opts))
    return runs


def _run_row(r: SweepRun, df: pd.DataFrame | None, seconds: float, error: str | None) -> dict:
    row = {"run": r.name, "model": r.model, "accelerator": r.accelerator, "method": r.method,
           "out": r.options.out, "status": "ok" if error is None else "failed", "points": None,
           "fp32_top1": None, "w8a8_top1": None, "cheapest_within_1pt": None, "cheapest_energy_ratio": None,
           "bitexact_mismatches": None, "seconds": round(seconds, 1), "error": error}
    if df is None or df.empty:
        return row
    top1 = pd.to_numeric(df["top1"], errors="coerce")
    ratio = pd.to_numeric(df["energy_ratio_w8a8"], errors="coerce")
    by = dict(zip(df["label"].astype(str), top1))
    fp32 = by.get("FP32")
    row.update(points=int(top1.notna().sum()), fp32_top1=fp32,
               bitexact_mismatches=sweep.total_mismatches(df),
               w8a8_top1=by.get(f"W8A8-{sweep.GRAN_TAG[r.options.granularity]}"))
    if fp32 is not None and pd.notna(fp32):
        # the cheapest quantized point that a user would call lossless (within a point of FP32)
        ok = (df["policy"].astype(str) != "fp32") & (top1 >= fp32 - 1.0) & ratio.notna()
        if ok.any():
            best = ratio[ok].idxmin()
            row.update(cheapest_within_1pt=str(df.loc[best, "label"]), cheapest_energy_ratio=float(ratio[best]))
    return row


def summary_text(table: pd.DataFrame, out_root: Path) -> str:
    show = table[["run", "status", "points", "fp32_top1", "w8a8_top1", "cheapest_within_1pt",
                  "cheapest_energy_ratio", "seconds"]]
    lines = [f"sweep file: {len(table)} runs, {int((table['status'] == 'ok').sum())} ok, "
             f"{int((table['status'] == 'failed').sum())} failed, {int((table['status'] == 'pending').sum())} pending",
             show.to_string(index=False, na_rep="-"),
             "cheapest_within_1pt: the lowest-energy quantized point within 1 top-1 point of FP32 "
             "(energy as a ratio of W8A8's)", f"each run's report: {out_root}/<run>/summary.txt"]
    for _, r in table[table["status"] == "failed"].iterrows():
        lines.append(f"failed: {r['run']}: {r['error']}")
    return "\n".join(lines) + "\n"


def run_sweep_file(path: str | Path, overrides: dict | None = None, progress: bool = True) -> pd.DataFrame:
    """Every run of the file, one after another (each a Pareto sweep, on Ray where its options
    say so); the table of runs, rewritten after each. Raises QuantsimError naming the failed
    runs after all have been tried."""
    runs = load_sweep_file(path, overrides)
    out_root = Path(runs[0].options.out).parent
    rows = [_run_row(r, None, 0.0, None) | {"status": "pending"} for r in runs]

    def write() -> pd.DataFrame:
        table = pd.DataFrame(rows, columns=RUN_COLUMNS)
        write_csv_atomic(out_root / "sweeps.csv", table)
        write_text_atomic(out_root / "summary.txt", summary_text(table, out_root))
        return table

    addresses = {r.options.ray for r in runs if r.options.ray is not None}
    bar = tqdm(list(enumerate(runs)), desc="sweep file", unit="run", disable=not progress, position=0)
    # one Ray session for every run when they share an address (no cluster start per run)
    with distribute.cluster(addresses.pop() if len(addresses) == 1 else None):
        for i, r in bar:
            bar.set_postfix_str(r.name)
            t0 = time.perf_counter()
            try:
                df, error = sweep.run(replace(r.options, no_progress=r.options.no_progress or not progress)), None
            except QuantsimError as e:
                df, error = None, str(e)
                print(f"run {r.name} failed: {e}", file=sys.stderr)
            rows[i] = _run_row(r, df, time.perf_counter() - t0, error)
            table = write()
    bar.close()
    failed = [r["run"] for r in rows if r["status"] == "failed"]
    if failed:
        raise QuantsimError(f"{len(failed)} of {len(runs)} runs failed ({', '.join(failed)}); "
                            f"see {out_root / 'summary.txt'}")
    return table

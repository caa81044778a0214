"""Real engines as oracles: imported TFLite MobileNets against TFLite's reference kernels.

    python benchmarks/oracles.py                       # 32 images every layer + top-1 on all imagenet-val
    python benchmarks/oracles.py --models mobilenet_v1_0.25_128_quant --top1-images 200
    python benchmarks/oracles.py --onnx-resnet20       # ResNet-20 quantized by ONNX Runtime vs ONNX Runtime

Per model (../shared/models/tflite): import into the IR; on --images imagenet-val images,
integer_ref against TFLite (OpResolverType.BUILTIN_REF, every intermediate tensor kept)
on every mapped tensor, counting differing elements; then on --top1-images images the
emulated integer program (quantsim.emulate) against the TFLite interpreter: its logits
(the SOFTMAX input) element for element, top-1 of ours vs TFLite's logits and vs TFLite's
uint8 softmax output (ties there can move the argmax), and accuracy against the labels
(1001 outputs, background at 0). Writes the oracles section of docs/results.md and a JSON
summary next to it with --json.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from common import ROOT, SHARED, replace_section

from integer_ref import executor
from quantsim import datasets, emulate, oracles
from quantsim.importers import load_imported

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
        "imported into the IR (`quantsim.importers.tflite`, requant mode `gemmlowp`), against "
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


def run_onnx_resnet20(n_images: int, n_calib: int = 32) -> dict:
    """CIFAR ResNet-20 quantized by ONNX Runtime (quantize_static, QOperator, per-channel U8S8,
    n_calib cifar10 train images), imported; integer_ref vs ONNX Runtime on every mapped tensor
    and the float graph output of n_images cifar10 test images."""
    import tempfile

    from quantsim import models
    from quantsim.ort_quantize import ort_quantize_static

    lm = models.load_model("cifar_resnet20", weights=str(SHARED / "models" / "cifar10-resnet" / "resnet20-12fca82f.th"))
    data = f"cifar10:{SHARED / 'data' / 'cifar10'}"
    take = lambda role, n: np.stack([ds[i][0].numpy() for ds in [datasets.build_dataset(data, lm.preprocess, role=role)]
                                     for i in range(n)]).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        q = ort_quantize_static(lm.model, lm.preprocess, take("calib", n_calib), d)
        imp = load_imported(q)
        x = take("eval", n_images)
        t0 = time.perf_counter()
        ref = executor.run(imp.graph, x, keep="all")
        t_ref = time.perf_counter() - t0
        res = oracles.compare_onnxruntime(imp.graph, q, x, ref.tensors)
    return {"model": "onnx:cifar_resnet20", "engine": "onnxruntime", "images": res.images,
            "layers": len(imp.graph.meta["onnx_tensors"]), "elements": res.total_elements,
            "mismatches": res.total_mismatches, "seconds_ref": round(t_ref, 2),
            "seconds_engine": round(res.seconds_engine, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx-resnet20", action="store_true",
                    help="only: ResNet-20 quantized by ONNX Runtime vs ONNX Runtime on --images cifar10 images")
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--images", type=int, default=32, help="images compared on every layer")
    ap.add_argument("--top1-images", type=int, default=None, help="images for top-1 (default all)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--from-json", default=None, help="only rewrite the docs section from rows saved by --json")
    args = ap.parse_args()
    if args.onnx_resnet20:
        print(json.dumps(run_onnx_resnet20(args.images)), flush=True)
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

"""TFLite import against TFLite's reference kernels: zero differing elements, every layer.

Real quantized MobileNets (../shared/models/tflite) on real imagenet-val images; skipped
with a reason when the shared models or the engine package are absent.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
TFLITE_DIR = SHARED / "models" / "tflite"
VAL = SHARED / "data" / "imagenet-val"
MODELS = ["mobilenet_v1_0.25_128_quant", "mobilenet_v1_0.5_160_quant", "mobilenet_v1_0.75_192_quant",
          "mobilenet_v2_1.0_224_quant", "tf2_mobilenet_v2_1.0_224_ptq"]
N_IMAGES = 4

pytest.importorskip("tflite", reason="the `tflite` flatbuffer bindings are not installed")
pytest.importorskip("ai_edge_litert", reason="ai-edge-litert (the TFLite oracle) is not installed")
if not (TFLITE_DIR.is_dir() and VAL.is_dir()):
    pytest.skip(f"{TFLITE_DIR} or {VAL} is absent", allow_module_level=True)

from integer_ref import executor  # noqa: E402
from quantsim.zoo import datasets
from quantsim.emulate import executor as emulate
from quantsim.interop import oracles  # noqa: E402
from quantsim.errors import QuantsimError  # noqa: E402
from quantsim.interop.imported import is_importable, load_imported  # noqa: E402


def images(pre, n=N_IMAGES) -> np.ndarray:
    ds = datasets.build_dataset(f"imagenet:{VAL}", pre, role="eval")
    return np.stack([ds[i][0].numpy() for i in range(n)]).astype(np.float32)


@pytest.mark.parametrize("name", MODELS)
def test_every_layer_matches_tflite_reference_kernels(name):
    path = TFLITE_DIR / f"{name}.tflite"
    imp = load_imported(path)
    g = imp.graph
    x = images(imp.preprocess)
    ref = executor.run(g, x, keep="all")
    res = oracles.compare_tflite(g, path, x, ref.tensors)
    mapped = g.meta["tflite_tensors"]
    assert res.images == N_IMAGES
    assert set(res.mismatches) == set(mapped) and len(mapped) >= len(g.nodes) - 1
    assert res.total_mismatches == 0, {k: v for k, v in res.mismatches.items() if v}
    assert all(res.elements[k] > 0 for k in mapped)
    # the torch twin runs the same imported program bit for bit (accuracy goes through it)
    emu = emulate.run(g, torch.as_tensor(x), keep="all")
    for node in g.nodes:
        assert np.array_equal(emu.tensors[node.name].numpy(), ref.tensors[node.name]), node.name
    # the input node reproduces the model's uint8 input: the raw pixels
    assert ref.tensors["input"].min() >= g["input"].out.qmin and ref.tensors["input"].max() <= 255
    # logits: argmax of ours = argmax of TFLite's softmax input; 1001 classes, background at 0
    logits = ref.tensors[g.outputs[0]]
    assert logits.shape == (N_IMAGES, 1001) and imp.label_offset == 1


def test_import_structure_and_ops():
    imp = load_imported(TFLITE_DIR / "mobilenet_v2_1.0_224_quant.tflite")
    g = imp.graph
    ops = {n.op for n in g.nodes}
    assert ops == {"quantize", "conv2d", "add", "avgpool", "reshape"}
    dw = [n for n in g.nodes if n.op == "conv2d" and n.attrs["groups"] > 1]
    assert dw and all(n.params["weight"].shape[1] == 1 for n in dw)
    assert all(n.attrs.get("requant") in ("gemmlowp", "round_div") for n in g.nodes if n.op != "quantize"
               and n.op != "reshape")
    assert g["input"].out.zero_point == 128 and float(g["input"].out.scale) == 1 / 128
    assert any("SOFTMAX" in note for note in imp.notes)
    # uint8 per-tensor weights keep their zero point
    assert all("weight_zero_point" in n.params for n in g.nodes if n.op == "conv2d")
    tf2 = load_imported(TFLITE_DIR / "tf2_mobilenet_v2_1.0_224_ptq.tflite").graph
    assert {n.op for n in tf2.nodes} >= {"requantize", "global_avgpool"}
    assert all(n.weight_q.per_channel and "weight_zero_point" not in n.params for n in tf2.nodes
               if n.op == "conv2d")


def test_ir_roundtrip_keeps_bit_exactness(tmp_path):
    imp = load_imported(TFLITE_DIR / "mobilenet_v1_0.25_128_quant.tflite")
    imp.graph.save(tmp_path / "ir")
    from integer_ref.ir import Graph

    g2 = Graph.load(tmp_path / "ir")
    x = images(imp.preprocess, 2)
    a = executor.run(imp.graph, x, keep="outputs").tensors[imp.graph.outputs[0]]
    b = executor.run(g2, x, keep="outputs").tensors[g2.outputs[0]]
    assert np.array_equal(a, b)


def test_bad_files_give_one_clear_error(tmp_path):
    bad = tmp_path / "junk.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    assert is_importable(str(bad)) and not is_importable("resnet18")
    with pytest.raises(QuantsimError):
        load_imported(bad)
    with pytest.raises(QuantsimError, match="cannot read"):
        load_imported(tmp_path / "missing.tflite")


def test_simulate_cli_on_tflite_with_oracle(tmp_path):
    """python -m quantsim.simulate model.tflite --oracle tflite: no calibration, hardware model,
    energy, and the oracle fields in summary.json."""
    import json

    from quantsim.cli import simulate

    out = tmp_path / "run"
    rc = simulate.main([str(TFLITE_DIR / "tf2_mobilenet_v2_1.0_224_ptq.tflite"), "--data", f"imagenet:{VAL}",
                        "--eval", "8", "--batch-size", "8", "--bitexact-images", "2", "--oracle", "tflite",
                        "--out", str(out), "--no-progress"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["oracle"] == "tflite" and s["oracle_images"] == 2 and s["oracle_mismatches"] == 0
    assert s["bitexact_mismatches"] == 0 and s["n_calib"] == 0 and s["n_eval"] == 8
    assert s["e_total_pj"] > 0 and s["n_mac"] > 0 and s["top1"] is not None
    assert (out / "layers.csv").exists()


def test_oracle_flag_needs_an_imported_model(tmp_path):
    from quantsim.cli import simulate

    rc = simulate.main(["cifar_resnet20", "--oracle", "tflite", "--data", f"imagenet:{VAL}",
                        "--out", str(tmp_path / "r"), "--no-progress"])
    assert rc == 2 and not (tmp_path / "r").exists()

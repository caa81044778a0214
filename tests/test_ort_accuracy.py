"""benchmarks/ort_accuracy.py: ONNX Runtime's calibration is fed exactly the images ours uses.

The calibration files are those `python -m quantsim.simulate --calib N` picks, and the
arrays that reach onnxruntime's quantize_static (captured by a stand-in that drains the
CalibrationDataReader) are, image for image and bit for bit, the batches our observers get,
for the per-channel path (quantsim.interop.ort_quantize) and the per-tensor one (the benchmark).
Skipped with a reason when onnx / onnxruntime or the shared data are absent.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the `onnx` package is not installed")
ortq = pytest.importorskip("onnxruntime.quantization", reason="onnxruntime is not installed")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CIFAR = SHARED / "data" / "cifar10"
CKPTS = sorted((SHARED / "models" / "cifar10-resnet").glob("resnet20-*.th")) if SHARED.is_dir() else []
pytestmark = pytest.mark.skipif(not (CKPTS and CIFAR.is_dir()), reason=f"{SHARED}: ResNet-20 checkpoint or cifar10 absent")
sys.path.insert(0, str(ROOT / "benchmarks"))

N_CALIB = 8


def test_ort_calibration_reader_gets_our_calibration_images(tmp_path, monkeypatch):
    import ort_accuracy as oa

    from quantsim.cli import simulate
    from quantsim.run.inputs import load_inputs
    from quantsim.run.options import RunOptions
    from quantsim.interop.ort_quantize import ort_quantize_static

    d = oa.load("resnet20", n_eval=4, n_calib=N_CALIB)
    # the same files as the command line's --calib N_CALIB
    args = simulate.build_parser().parse_args([str(CKPTS[0]), "--arch", "cifar_resnet20", "--data", f"cifar10:{CIFAR}",
                                               "--calib", str(N_CALIB)])
    calib_ds = load_inputs(RunOptions.from_namespace(args)).calib_ds
    assert d.calib_files == oa._files(calib_ds)
    assert len(set(d.calib_files)) == N_CALIB
    cli = torch.cat([x for x, _ in oa.datasets.make_loader(calib_ds, batch_size=args.batch_size)])
    ours = torch.cat(oa.calib_batches(d.calib))
    assert torch.equal(ours, cli)

    fed = []

    def fake_quantize_static(model_input, model_output, reader, **kw):
        xs = []
        while (item := reader.get_next()) is not None:
            (x,) = item.values()
            xs.append(np.array(x))
        fed.append((np.concatenate(xs), kw))
        shutil.copy(model_input, model_output)

    monkeypatch.setattr(ortq, "quantize_static", fake_quantize_static)
    q = ort_quantize_static(d.loaded.model, d.loaded.preprocess, d.calib, tmp_path)
    oa.ort_per_tensor(tmp_path / "fp32_pre.onnx", tmp_path / "pt.onnx", d.calib)
    assert q.is_file() and len(fed) == 2
    for (x, kw), per_channel in zip(fed, (True, False)):
        assert x.shape == tuple(ours.shape) and x.dtype == np.float32
        assert np.array_equal(x, ours.numpy())  # every image once, in order, bit for bit
        assert kw["per_channel"] is per_channel
        assert kw["quant_format"] == ortq.QuantFormat.QOperator
        assert (kw["activation_type"], kw["weight_type"]) == (ortq.QuantType.QUInt8, ortq.QuantType.QInt8)

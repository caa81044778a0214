"""ONNX Runtime's own quantizer on a torch model (the reference our W8A8 is compared with).

    q = ort_quantize_static(model, preprocess, calib_images, out_dir)   # -> out_dir/int8.onnx

timm's TF-SAME convs made static (quantsim.interop.tf_same, on a copy: ORT cannot quantize their
dynamic padding) -> torch.onnx.export (opset 17, TorchScript exporter) -> quant_pre_process (shape inference and
constant folding) -> quantize_static (fmt "qoperator" (QLinearConv, QLinearAdd, ...) or "qdq"
(DequantizeLinear -> float op -> QuantizeLinear node units; ONNX Runtime fuses them back into
the QOperator kernels when it loads the model), per-channel, U8S8: uint8 asymmetric
activations, int8 symmetric weights, MinMax calibration on the given images). The model's
preprocessing is written into its metadata (quantsim.interop.onnx_import.PREPROCESS_KEY) so that
`python -m quantsim.simulate int8.onnx` feeds it the images it was calibrated on.

Exporting our own quantized IR to ONNX is quantsim.interop.onnx_export.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from quantsim.errors import QuantsimError
from quantsim.interop.onnx_import import PREPROCESS_KEY
from quantsim.zoo.preprocess import Preprocess
from quantsim.interop.tf_same import static_same_padding


def ort_quantize_static(model: torch.nn.Module, pre: Preprocess, calib: np.ndarray, out_dir: str | Path,
                        opset: int = 17, fmt: str = "qoperator", extra_options: dict | None = None) -> Path:
    if fmt not in ("qoperator", "qdq"):
        raise QuantsimError(f"fmt {fmt!r}: only 'qoperator' or 'qdq'")
    try:
        import onnx  # optional extra [onnx]
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # optional extra [onnx]
        from onnxruntime.quantization.shape_inference import quant_pre_process  # optional extra [onnx]
    except ImportError as exc:
        raise QuantsimError("needs the `onnx` and `onnxruntime` packages (pip install 'quantsim[onnx]')") from exc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    calib = np.asarray(calib, np.float32)
    fp = out_dir / "fp32.onnx"
    # a copy: the caller's model keeps its Conv2dSame (our own capture handles it)
    model = static_same_padding(copy.deepcopy(model).eval(), torch.as_tensor(calib[:1]))
    torch.onnx.export(model, (torch.as_tensor(calib[:1]),), str(fp), opset_version=opset, dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    pp = out_dir / "fp32_pre.onnx"
    quant_pre_process(str(fp), str(pp))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    q = out_dir / "int8.onnx"
    qf = QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator
    quantize_static(str(pp), str(q), Reader(), quant_format=qf, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, extra_options=extra_options)
    m = onnx.load(str(q))
    m.metadata_props.add(key=PREPROCESS_KEY, value=json.dumps(pre.to_json()))
    onnx.save(m, str(q))
    return q

"""Make timm's TF-"SAME" convolutions (Conv2dSame) pad statically, for ONNX export.

    model = static_same_padding(model, example)   # example: one input of the size it will run at

Conv2dSame computes its (asymmetric) padding from the input size on every call. Traced with
a dynamic batch axis (as quantsim.interop.ort_quantize exports) that becomes a Shape -> ... -> Pad
subgraph ONNX Runtime cannot fold, and quantize_static then fails ("Graph is not a DAG").
For one input size the pads are constants: ZeroPad2d + Conv2d(padding 0) computes the same
floats (timm's pad_same is F.pad with 0), and ONNX Runtime's optimizer fuses that Pad into
the Conv's own pads. The model is changed in place and returned.
"""
from __future__ import annotations

import torch
from torch import nn


def static_same_padding(model: nn.Module, example: torch.Tensor) -> nn.Module:
    try:
        from timm.layers.conv2d_same import Conv2dSame  # deferred: a heavy import that only timm-model paths need
        from timm.layers.padding import get_same_padding  # deferred: a heavy import that only timm-model paths need
    except ImportError:  # no timm, no Conv2dSame
        return model
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: sizes.__setitem__(n, tuple(a[0].shape[-2:])))
             for n, m in model.named_modules() if isinstance(m, Conv2dSame)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    for name, (ih, iw) in sizes.items():
        m = model.get_submodule(name)
        ph = get_same_padding(ih, m.kernel_size[0], m.stride[0], m.dilation[0])
        pw = get_same_padding(iw, m.kernel_size[1], m.stride[1], m.dilation[1])
        conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, 0, m.dilation, m.groups,
                         m.bias is not None)
        conv.load_state_dict(m.state_dict())
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf,
                nn.Sequential(nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)), conv))
    return model

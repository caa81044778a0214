"""Capture a float model as a small graph of quantizable ops (torch.fx), BN folded, activations fused.

The FloatGraph is the float twin of the integer program: one node per tensor that the
integer program will hold. It runs in torch (for calibration, sensitivity and fake
quantization) and is what quantsim.quant.lower turns into integer_ref's IR.

Vision Transformers (timm VisionTransformer and models built from its blocks): tracing
switches every attention block's ``fused_attn`` off for the duration (and restores it), so
q·kᵀ·scale, softmax and attn·v appear as separate ops. The captured graph then holds
- ``layernorm`` (gamma/beta), ``gelu`` (exact erf only), ``softmax`` (last axis);
- ``matmul`` of two activations, with ``transpose_b`` (kᵀ) and ``alpha`` (the scalar
  ``q * scale`` folded in);
- ``reshape``, ``permute``, ``take`` (one index along an axis: ``x[:, 0]`` and ``unbind``),
  all keeping the batch axis first: qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
  is rewritten as take(axis 2) then permute(0, 2, 1, 3) per q, k, v;
- ``concat_token`` (the class token, a constant, prepended along axis 1) and ``add_const``
  (the position embedding, a constant added to every item);
- timm ``LayerScale`` folded into the linear before it.

nn.MultiheadAttention (torchvision's ViT: batch_first self-attention, no mask) is written out as the
same ops: the in-projection linear, reshape (N, L, 3, H, D), take + permute per q, k, v, q·kᵀ with
alpha 1/sqrt(D), softmax, attn·v, permute, reshape, the out-projection linear; ``out[0]`` is its output.

ConvNeXt (torchvision): ``LayerNorm2d`` is permute(0, 2, 3, 1) -> layernorm over the last axis ->
permute(0, 3, 1, 2) (timm's LayerNorm2d the same); the block's per-channel layer scale
(``self.layer_scale * x``, timm's ``x.mul(gamma.reshape(1, -1, 1, 1))``: a constant of shape (C, 1, 1))
is folded into the linear (or conv) before it, through the permute between them; nn.GELU and F.gelu
(timm's GELU class) are the ViT path's integer GELU.

Elementwise activations held as lookup tables (integer_ref.lut): ``hardswish``, ``hardsigmoid``,
``sigmoid``, ``silu`` (nn modules, their functional forms, timm's own classes); and ``mul``,
the product of two activations with broadcasting (squeeze-and-excitation's ``x * gate``, e.g.
timm's SqueezeExcite: ``x.mean((2, 3), keepdim=True)`` -> conv -> act -> conv -> gate -> mul);
``x.mean`` over the spatial axes is a global average pool.
Extra forward arguments with defaults (timm's attn_mask=None, is_causal=False) are traced
at their defaults.

Concatenation and channel splits (torchvision's SqueezeNet, GoogLeNet, DenseNet, ShuffleNet):
``concat`` (torch.cat of activations along a non-batch axis; lowering gives its inputs one shared
quantization, so it copies integers), ``slice`` (torch.chunk / torch.split / ``x[:, a:b]`` along
one non-batch axis); ShuffleNet's channel shuffle is reshape -> transpose -> reshape (permute).
Pools: max pool ``ceil_mode`` becomes extra bottom/right padding (the output size torch gives;
padded positions never win the max); an average pool whose ceil_mode adds no window is a plain
one; adaptive average pools to 1x1 are global pools, to the input's own size the identity, to
sizes that divide the input an average pool with even windows (uneven windows are refused);
the functional forms F.max_pool2d / F.avg_pool2d / F.adaptive_avg_pool2d as the modules.
A BatchNorm that follows no convolution (DenseNet's norm after each concat) is a depthwise 1x1
convolution: its per-channel affine, quantized like any conv.

Constant folding: every traced value that depends only on parameters and buffers (no path from the
input) is evaluated once, in float, on the shape-recording run, and enters the graph as a constant
(Swin's relative position bias, v2's cpb_mlp over its coordinate table); its readers take it as
they take a parameter. torchvision Swin's fx-wrapped window attention and patch merging are written
out as graph ops in quantsim.graph.swin (``pad`` and ``roll``: integer copies; ``l2norm``; a
masked softmax; per-head matmul alpha); timm's SwinTransformerBlock is a leaf written out there too.
Shape arithmetic: torch.fx traces ``x.shape`` and the ints computed from it as nodes; their values at
the traced shapes are on the shape run's record, and F.pad reads its amounts from there (``_static``).
Where plain torch.fx cannot trace the model at all (Python control flow on sizes), it is traced again
with every size fixed at the input shape (quantsim.graph.static_trace); timm's MobileViT blocks are
traced batch-first at that shape (quantsim.graph.mobilevit).
"""
from __future__ import annotations

import functools
import inspect
import linecache
import operator
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.operator_schemas import normalize_function

from integer_ref.arith import tf_same_padding
from quantsim.graph.mobilevit import batch_first_blocks
from quantsim.graph.static_trace import StaticShapes
from quantsim.graph.swin import is_swin_function, swin_nodes, timm_block_nodes, timm_swin_blocks
from quantsim.zoo import cifar_resnet
from quantsim.zoo.cifar_resnet import OptionAShortcut
from quantsim.errors import QuantsimError

@functools.cache
def _library_types(timm: bool, torchvision: bool) -> SimpleNamespace:
    """timm's and torchvision's module classes that capture understands whole, of the libraries
    named; () (or {}) for each class of a library not named or not there."""
    lib = SimpleNamespace(TIMM_LUT={}, StochasticDepth=(), LayerNorm2d=(), LevitLinearNorm=(), LevitNormLinear=(),
                          Conv2dSame=(), SelectAdaptivePool2d=(), DropPath=(), LayerScale=())
    tv_ln2d = timm_ln2d = ()
    if torchvision:
        try:  # torchvision's stochastic depth (EfficientNet, ConvNeXt): the identity in eval mode
            from torchvision.ops import StochasticDepth
            lib.StochasticDepth = StochasticDepth
        except ImportError:  # pragma: no cover
            pass
        try:  # torchvision ConvNeXt's LayerNorm over the channels of NCHW (a subclass of nn.LayerNorm)
            from torchvision.models.convnext import LayerNorm2d as tv_ln2d
        except ImportError:  # pragma: no cover
            pass
    if timm:
        try:  # timm's own activation classes: leaves (their forward is x * relu6(x + 3) / 6 and the like)
            from timm.layers import activations as timm_act
            lib.TIMM_LUT = {timm_act.HardSwish: "hardswish", timm_act.HardSigmoid: "hardsigmoid",
                            timm_act.Sigmoid: "sigmoid", timm_act.Swish: "silu"}
        except (ImportError, AttributeError):  # pragma: no cover
            pass
        try:  # timm's (ConvNeXt, and others): the same permute / layer_norm / permute, also a subclass of nn.LayerNorm
            from timm.layers import LayerNorm2d as timm_ln2d
        except ImportError:  # pragma: no cover
            pass
        try:  # timm LeViT's linear + BatchNorm1d pairs: leaves, one linear each with the BN folded in
            from timm.models.levit import LinearNorm, NormLinear
            lib.LevitLinearNorm, lib.LevitNormLinear = LinearNorm, NormLinear
        except ImportError:  # pragma: no cover
            pass
        try:  # timm's layers are leaves we understand whole
            from timm.layers import DropPath, LayerScale
            from timm.layers.adaptive_avgmax_pool import SelectAdaptivePool2d
            from timm.layers.conv2d_same import Conv2dSame
            lib.Conv2dSame, lib.SelectAdaptivePool2d, lib.DropPath, lib.LayerScale = (
                Conv2dSame, SelectAdaptivePool2d, DropPath, LayerScale)
        except ImportError:  # pragma: no cover
            pass
    lib.LayerNorm2d = tuple(t for t in (tv_ln2d, timm_ln2d) if isinstance(t, type))
    return lib


def _lib() -> SimpleNamespace:
    """The library classes of `_library_types` for the libraries imported so far. A model can hold
    a timm or torchvision module only once that library is imported, so capture never imports
    one itself: timm and torchvision cost seconds to import (a Ray worker, a CIFAR ResNet run)."""
    return _library_types("timm" in sys.modules, "torchvision" in sys.modules)


# Ops whose output needs a new scale (requantizing producers) vs ops that keep their
# input's scale exactly (the integer program passes values through unchanged).
# Elementwise activations lowered to a lookup table (integer_ref.lut), by FloatGraph op name.
LUT_OPS = ("hardswish", "hardsigmoid", "sigmoid", "silu", "tanh")
REQUANT_OPS = {"input", "conv", "linear", "add", "avgpool", "gap", "mul",
               "matmul", "layernorm", "l2norm", "gelu", "softmax", "add_const", *LUT_OPS}
PASSTHROUGH_OPS = {"maxpool", "flatten", "shortcut_a", "relu", "relu6",
                   "reshape", "permute", "take", "concat_token", "concat", "slice", "pad", "roll"}
ACTIVATIONS = {"relu", "relu6"}


@dataclass
class FNode:
    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    act: str | None = None  # fused activation on the output: 'relu' | 'relu6'
    source: str = ""

    @property
    def is_mac(self) -> bool:
        return self.op in ("conv", "linear")


@dataclass
class FloatGraph:
    nodes: list[FNode]
    output: str
    input_shape: tuple[int, int, int]

    def __post_init__(self):
        self.index = {n.name: n for n in self.nodes}

    def __getitem__(self, name: str) -> FNode:
        return self.index[name]

    def consumers(self, name: str) -> list[FNode]:
        return [n for n in self.nodes if name in n.inputs]

    def mac_nodes(self) -> list[FNode]:
        return [n for n in self.nodes if n.is_mac]

    def non_negative(self, name: str) -> bool:
        """Is this tensor provably >= 0 (so it can be held unsigned)?"""
        n = self[name]
        if n.act in ACTIVATIONS or n.op in ACTIVATIONS:
            return True
        if n.op in ("softmax", "hardsigmoid", "sigmoid"):
            return True
        if n.op in ("maxpool", "flatten", "shortcut_a", "avgpool", "gap", "reshape", "permute", "take", "slice",
                    "pad", "roll"):
            return self.non_negative(n.inputs[0])
        if n.op in ("add", "mul", "concat"):
            return all(self.non_negative(i) for i in n.inputs)
        return False


# --------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------
def _leaf_types() -> tuple[type, ...]:
    lib = _lib()
    types: list[type] = [nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MultiheadAttention,
                         nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity,
                         nn.Dropout, nn.Flatten, nn.LayerNorm, nn.GELU, cifar_resnet.OptionAShortcut,
                         nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU, nn.Tanh, *lib.TIMM_LUT]
    for t in (lib.SelectAdaptivePool2d, lib.DropPath, lib.LayerScale, lib.StochasticDepth, lib.LevitLinearNorm,
              lib.LevitNormLinear, *timm_swin_blocks()):
        if isinstance(t, type):
            types.append(t)
    return tuple(types)


class _LeafTracer(fx.Tracer):
    def __init__(self):
        super().__init__()
        self.leaves = _leaf_types()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def _default_args(model: nn.Module) -> dict[str, Any]:
    """Forward arguments after the first that have defaults: traced at those defaults."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover
        return {}
    return {p.name: p.default for p in params[1:]
            if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _trace_failure_site(model: nn.Module, exc: BaseException) -> str:
    """' in LAYER (Class) at file:line `code`': the innermost frame of the model's own forward code
    (not torch's) where tracing failed, so the one error line names the layer."""
    names = {id(m): n for n, m in model.named_modules()}
    site = ""
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        path = frame.f_code.co_filename
        if "/torch/" in path.replace("\\", "/"):
            continue
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            layer = names[id(owner)] or "the model"
            code = (linecache.getline(path, lineno) or "").strip()
            site = f" (in {layer} ({type(owner).__name__}) at {Path(path).name}:{lineno} `{code}`)"
    return site


class _StaticShapeTracer(StaticShapes, _LeafTracer):
    """_LeafTracer with sizes fixed at an example input (quantsim.graph.static_trace)."""


def trace(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> fx.GraphModule:
    """torch.fx's graph of `model`. Given `input_shape` (C, H, W), capture's one static shape: timm's
    MobileViT blocks are traced at it (quantsim.graph.mobilevit), and a model that plain torch.fx
    cannot trace (Python control flow on sizes) is traced again with its sizes fixed at that shape
    (a batch of 2, as the shape run)."""
    # timm attention: the unfused path, so that q·kᵀ, softmax and attn·v are separate ops
    fused = [(m, m.fused_attn) for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    # timm's per-device caches of attention biases (LeViT) would keep the trace's proxies: restored after
    caches = [(m, dict(m.attention_bias_cache)) for m in model.modules()
              if isinstance(getattr(m, "attention_bias_cache", None), dict)]
    concrete = _default_args(model) or None
    static = ""
    try:
        for m, _ in fused:
            m.fused_attn = False
        with batch_first_blocks(model, input_shape):
            tracer = _LeafTracer()
            try:
                graph = tracer.trace(model, concrete_args=concrete)
            except Exception:
                if input_shape is None:
                    raise
                static = ", even with its sizes fixed at the input shape"
                tracer = _StaticShapeTracer(torch.zeros(2, *input_shape))
                graph = tracer.trace(model, concrete_args=concrete)
    except QuantsimError:
        raise
    except Exception as exc:  # fx raises many kinds; the user needs one line
        line = f"cannot trace the model with torch.fx{static}: {type(exc).__name__}: {exc}".splitlines()[0]
        raise QuantsimError(line + _trace_failure_site(model, exc)) from exc
    finally:
        for m, flag in fused:
            m.fused_attn = flag
        for m, cache in caches:
            m.attention_bias_cache = cache
    return fx.GraphModule(tracer.root, graph)


# --------------------------------------------------------------------------------------
# fx graph -> FloatGraph (raw: BN still separate, activations separate)
# --------------------------------------------------------------------------------------
def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _conv_node(name: str, m: nn.Conv2d, inp: str, source: str) -> FNode:
    if m.padding_mode != "zeros":
        raise QuantsimError(f"cannot lower {source}: conv padding_mode {m.padding_mode!r} (only zero padding)")
    attrs = {"stride": list(_pair(m.stride)), "dilation": list(_pair(m.dilation)), "groups": m.groups,
             "kernel": list(m.weight.shape[2:])}
    conv2d_same = _lib().Conv2dSame
    if isinstance(conv2d_same, type) and isinstance(m, conv2d_same):
        attrs["padding_mode"] = "tf_same"
    elif isinstance(m.padding, str):
        if m.padding == "valid":
            attrs["padding"] = [0, 0, 0, 0]
        else:  # torch 'same' (stride 1): the extra pixel goes after, like TF
            attrs["padding_mode"] = "tf_same"
    else:
        ph, pw = _pair(m.padding)
        attrs["padding"] = [ph, ph, pw, pw]
    bias = m.bias.detach().clone() if m.bias is not None else None
    return FNode(name, "conv", [inp], attrs, m.weight.detach().clone(), bias, source=source)


def _attention_nodes(name: str, m: nn.MultiheadAttention, node: fx.Node, args: list[str],
                     shapes: dict[str, Any]) -> list[FNode]:
    """nn.MultiheadAttention(x, x, x) as the ViT path's ops (module docstring)."""
    src = node.target
    fx_args = [a for a in node.args if isinstance(a, fx.Node)]
    masks = [node.kwargs.get(k) for k in ("key_padding_mask", "attn_mask")] + list(node.args[3:4])
    if len(fx_args) != 3 or len({a.name for a in fx_args}) != 1 or any(v is not None for v in masks[:2]):
        raise QuantsimError(f"cannot lower {src}: attention other than unmasked self-attention (query is key is value)")
    if not m.batch_first or not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise QuantsimError(f"cannot lower {src}: MultiheadAttention without batch_first, or with separate q/k/v "
                            "sizes, bias_k/bias_v or add_zero_attn")
    if node.kwargs.get("is_causal"):
        raise QuantsimError(f"cannot lower {src}: causal attention")
    shape = shapes[fx_args[0].name]
    if len(shape) != 3:
        raise QuantsimError(f"cannot lower {src}: attention over a tensor of shape {tuple(shape)} (only (N, L, E))")
    length, e = int(shape[1]), int(shape[2])
    h = m.num_heads
    d = e // h
    bias = m.in_proj_bias.detach().clone() if m.in_proj_bias is not None else None
    out_bias = m.out_proj.bias.detach().clone() if m.out_proj.bias is not None else None
    nodes = [FNode(f"{name}.qkv", "linear", args[:1], {}, m.in_proj_weight.detach().clone(), bias, source=src),
             FNode(f"{name}.qkv.reshape", "reshape", [f"{name}.qkv"], {"shape": [-1, length, 3, h, d]}, source=src)]
    for i, part in enumerate("qkv"):
        nodes += [FNode(f"{name}.{part}.take", "take", [f"{name}.qkv.reshape"], {"axis": 2, "index": i}, source=src),
                  FNode(f"{name}.{part}", "permute", [f"{name}.{part}.take"], {"perm": [0, 2, 1, 3]}, source=src)]
    nodes += [FNode(f"{name}.scores", "matmul", [f"{name}.q", f"{name}.k"],
                    {"alpha": float(d) ** -0.5, "transpose_b": True}, source=src),
              FNode(f"{name}.softmax", "softmax", [f"{name}.scores"], source=src),
              FNode(f"{name}.attn_v", "matmul", [f"{name}.softmax", f"{name}.v"], {"alpha": 1.0, "transpose_b": False},
                    source=src),
              FNode(f"{name}.heads", "permute", [f"{name}.attn_v"], {"perm": [0, 2, 1, 3]}, source=src),
              FNode(f"{name}.merge", "reshape", [f"{name}.heads"], {"shape": [-1, length, e]}, source=src),
              FNode(name, "linear", [f"{name}.merge"], {}, m.out_proj.weight.detach().clone(), out_bias, source=src)]
    return nodes


def _ceil_extra(size: int, k: int, s: int, p: int) -> int:
    """Extra bottom/right padding that makes a floor-mode pool give torch's ceil_mode output size
    (the last window must start inside the input or its left padding, as torch rules)."""
    out = -(-(size + 2 * p - k) // s) + 1
    if (out - 1) * s >= size + p:
        out -= 1
    return max(0, (out - 1) * s + k - (size + 2 * p))


def _pool_node(name: str, op: str, inp: str, kernel, stride, padding, ceil_mode: bool, in_shape, source: str,
               dilation=1, divisor_override=None, **extra) -> FNode:
    """maxpool / avgpool FNode (module or functional form); ceil_mode as extra bottom/right padding
    (max pool only: an average pool's divisor would change, so there ceil_mode must add no window)."""
    if _pair(dilation) != (1, 1):
        raise QuantsimError(f"cannot lower {source}: {op} with dilation {dilation}")
    if divisor_override:
        raise QuantsimError(f"cannot lower {source}: {op} with divisor_override")
    k = _pair(kernel)
    s = _pair(stride) if stride not in (None, [], ()) else k
    p = _pair(padding)
    pads = [p[0], p[0], p[1], p[1]]
    if ceil_mode:
        if in_shape is None or len(in_shape) != 4:
            raise QuantsimError(f"cannot lower {source}: a ceil_mode pool of a tensor that is not NCHW")
        eh, ew = _ceil_extra(in_shape[2], k[0], s[0], p[0]), _ceil_extra(in_shape[3], k[1], s[1], p[1])
        if op == "avgpool" and (eh or ew):
            raise QuantsimError(f"cannot lower {source}: average pool with ceil_mode on a {in_shape[2]}x{in_shape[3]} "
                                f"input (its extra windows would change the divisor)")
        pads[1] += eh
        pads[3] += ew
    return FNode(name, op, [inp], {"kernel": list(k), "stride": list(s), "padding": pads, **extra}, source=source)


def _adaptive_avg_nodes(name: str, inp: str, output_size, in_shape, source: str) -> list[FNode]:
    """Adaptive average pool: global pool (1x1), identity (the input's size), or even windows."""
    if in_shape is None or len(in_shape) != 4:
        raise QuantsimError(f"cannot lower {source}: adaptive average pool of a tensor that is not NCHW")
    h, w = int(in_shape[2]), int(in_shape[3])
    oh, ow = _pair(output_size)
    oh, ow = (h if oh is None else int(oh)), (w if ow is None else int(ow))
    if (oh, ow) == (1, 1):
        return [FNode(name, "gap", [inp], source=source)]
    if (oh, ow) == (h, w):
        return [FNode(name, "identity", [inp], source=source)]
    if h % oh or w % ow:
        raise QuantsimError(f"cannot lower {source}: adaptive average pool from {h}x{w} to {oh}x{ow} has uneven "
                            f"windows (only output sizes that divide the input; try another input size)")
    k = [h // oh, w // ow]
    return [FNode(name, "avgpool", [inp], {"kernel": k, "stride": list(k), "padding": [0, 0, 0, 0],
                                          "count_include_pad": True}, source=source)]


def _module_node(name: str, m: nn.Module, args: list[str], source: str, in_shape=None) -> list[FNode]:
    inp = args[0]
    if isinstance(m, nn.Conv2d):
        return [_conv_node(name, m, inp, source)]
    if isinstance(m, nn.Linear):
        bias = m.bias.detach().clone() if m.bias is not None else None
        return [FNode(name, "linear", [inp], {}, m.weight.detach().clone(), bias, source=source)]
    lib = _lib()
    if isinstance(lib.LevitLinearNorm, type) and isinstance(m, (lib.LevitLinearNorm, lib.LevitNormLinear)):
        return [_linear_with_batchnorm(name, m, inp, source)]
    if isinstance(m, nn.BatchNorm2d):
        bn = FNode(name, "bn", [inp], {"eps": m.eps}, source=source)
        bn.weight, bn.bias = _bn_affine(m)
        act = getattr(m, "act", None)  # timm BatchNormAct2d carries its activation
        drop = getattr(m, "drop", None)
        if drop is not None and not isinstance(drop, (nn.Identity, nn.Dropout)):
            raise QuantsimError(f"cannot lower {source}.drop: {type(drop).__name__}")
        if act is None or isinstance(act, nn.Identity):
            return [bn]
        return [bn] + _module_node(name + ".act", act, [name], source + ".act", in_shape)
    if isinstance(m, nn.ReLU):
        return [FNode(name, "relu", [inp], source=source)]
    lut = _LUT_MODULES.get(type(m)) or lib.TIMM_LUT.get(type(m))
    if lut is not None:
        return [FNode(name, lut, [inp], source=source)]
    if isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0)):
        return [FNode(name, "relu6", [inp], source=source)]
    if isinstance(m, (nn.Identity, nn.Dropout)) or any(isinstance(t, type) and isinstance(m, t)
                                                       for t in (lib.DropPath, lib.StochasticDepth)):
        return [FNode(name, "identity", [inp], source=source)]
    if isinstance(m, nn.MaxPool2d):
        return [_pool_node(name, "maxpool", inp, m.kernel_size, m.stride, m.padding, m.ceil_mode, in_shape, source,
                           dilation=m.dilation)]
    if isinstance(m, nn.AvgPool2d):
        return [_pool_node(name, "avgpool", inp, m.kernel_size, m.stride, m.padding, m.ceil_mode, in_shape, source,
                           divisor_override=m.divisor_override, count_include_pad=m.count_include_pad)]
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return _adaptive_avg_nodes(name, inp, m.output_size, in_shape, source)
    if isinstance(lib.SelectAdaptivePool2d, type) and isinstance(m, lib.SelectAdaptivePool2d):
        if m.pool_type != "avg":
            raise QuantsimError(f"cannot lower {source}: global pool type {m.pool_type!r} (only avg)")
        nhwc = tuple(getattr(m.pool, "dim", (2, 3))) == (1, 2)  # timm's fast pool of NHWC (Swin's head)
        nodes = [FNode(name + ".to_nchw", "permute", [inp], {"perm": [0, 3, 1, 2]}, source=source)] if nhwc else []
        nodes.append(FNode(name, "gap", [nodes[-1].name if nodes else inp], source=source))
        if m.is_identity() or not isinstance(m.flatten, nn.Identity) or getattr(m.pool, "flatten", False) is True:
            nodes.append(FNode(name + ".flatten", "flatten", [name], source=source))
        elif nhwc:
            nodes.append(FNode(name + ".to_nhwc", "permute", [name], {"perm": [0, 2, 3, 1]}, source=source))
        return nodes
    swin_blocks = timm_swin_blocks()
    if swin_blocks and isinstance(m, swin_blocks):
        return [FNode(*spec, source=source) for spec in timm_block_nodes(name, m, inp, tuple(in_shape))]
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise QuantsimError(f"cannot lower {source}: flatten from dim {m.start_dim}")
        return [FNode(name, "flatten", [inp], source=source)]
    if lib.LayerNorm2d and isinstance(m, lib.LayerNorm2d):
        c = m.normalized_shape[0]
        gamma = m.weight.detach().clone() if m.weight is not None else torch.ones(c)
        beta = m.bias.detach().clone() if m.bias is not None else torch.zeros(c)
        return [FNode(name + ".to_nhwc", "permute", [inp], {"perm": [0, 2, 3, 1]}, source=source),
                FNode(name + ".ln", "layernorm", [name + ".to_nhwc"], {"eps": float(m.eps)}, gamma, beta, source=source),
                FNode(name, "permute", [name + ".ln"], {"perm": [0, 3, 1, 2]}, source=source)]
    if isinstance(m, nn.LayerNorm):
        if len(m.normalized_shape) != 1:
            raise QuantsimError(f"cannot lower {source}: LayerNorm over {tuple(m.normalized_shape)} (only the last axis)")
        c = m.normalized_shape[0]
        gamma = m.weight.detach().clone() if m.weight is not None else torch.ones(c)
        beta = m.bias.detach().clone() if m.bias is not None else torch.zeros(c)
        return [FNode(name, "layernorm", [inp], {"eps": float(m.eps)}, gamma, beta, source=source)]
    if isinstance(m, nn.GELU):
        return [_gelu_node(name, inp, m.approximate, source)]
    if isinstance(lib.LayerScale, type) and isinstance(m, lib.LayerScale):
        return [FNode(name, "layerscale", [inp], {}, m.gamma.detach().clone(), source=source)]
    if isinstance(m, OptionAShortcut):
        return [FNode(name, "shortcut_a", [inp], {"stride": m.stride, "pad_before": m.pad_before,
                                                  "pad_after": m.pad_after}, source=source)]
    raise QuantsimError(f"cannot lower module {source} ({type(m).__name__}): unsupported layer type")


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """A BatchNorm in eval mode as y = a·x + b per channel: (a, b)."""
    scale = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
    shift = bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_mean)
    inv = scale / torch.sqrt(bn.running_var + bn.eps)
    return inv.clone(), (shift - bn.running_mean * inv).clone()


def _linear_with_batchnorm(name: str, m: nn.Module, inp: str, source: str) -> FNode:
    """timm LeViT's LinearNorm (linear, then BatchNorm1d over its outputs: diag(a)·W, b) and NormLinear
    (BatchNorm1d over the inputs, then linear: W·diag(a), W·b + bias) as one linear."""
    lin = m.linear
    a, b = _bn_affine(m.bn)
    w = lin.weight.detach()
    bias = lin.bias.detach() if lin.bias is not None else torch.zeros(w.shape[0])
    if isinstance(m, _lib().LevitLinearNorm):
        w, bias = w * a[:, None], bias * a + b
    else:
        w, bias = w * a[None, :], w @ b + bias
    return FNode(name, "linear", [inp], {}, w.clone(), bias.clone(), source=source)


def _gelu_node(name: str, inp: str, approximate: str, source: str) -> FNode:
    """nn.GELU and F.gelu (timm's GELU class calls it): the one integer GELU, exact erf form only."""
    if approximate != "none":
        raise QuantsimError(f"cannot lower {source}: GELU approximate={approximate!r} (only the exact erf form)")
    return FNode(name, "gelu", [inp], source=source)


_LUT_MODULES = {nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.Sigmoid: "sigmoid", nn.SiLU: "silu",
                nn.Tanh: "tanh"}
_LUT_FUNCS = {F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", torch.sigmoid: "sigmoid",
              F.sigmoid: "sigmoid", F.silu: "silu", torch.tanh: "tanh", F.tanh: "tanh"}
_LUT_METHODS = {"sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh"}
_ADD_TARGETS = {operator.add, operator.iadd, torch.add}
_RELU_TARGETS = {F.relu, torch.relu, torch.relu_, F.relu_}
_PASS_FUNCS = {F.dropout}


def _normalized_kwargs(node: fx.Node) -> dict[str, Any]:
    """A torch function call's arguments by name, defaults filled in (torch.fx's schema matcher)."""
    pair = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    if pair is None:
        raise QuantsimError(f"cannot lower {_where(node)}: its arguments could not be matched to its signature")
    return dict(pair.kwargs)


def _function_node(name: str, node: fx.Node, args: list[str], shapes: dict[str, Any] | None = None) -> list[FNode]:
    t = node.target
    in_shape = shapes.get(node.args[0].name) if shapes and node.args and isinstance(node.args[0], fx.Node) else None
    where = f"{node.name} ({getattr(t, '__name__', t)}) in forward, from `{node.stack_trace.strip().splitlines()[-1].strip() if node.stack_trace else node.format_node()}`"
    if t in _ADD_TARGETS:
        if len(args) != 2 or node.kwargs.get("alpha", 1) != 1:
            raise QuantsimError(f"cannot lower {where}: add of a constant or with alpha")
        return [FNode(name, "add", args, source=node.name)]
    if t in _RELU_TARGETS:
        return [FNode(name, "relu", args[:1], source=node.name)]
    if t in _LUT_FUNCS:
        return [FNode(name, _LUT_FUNCS[t], args[:1], source=node.name)]
    if t in (operator.mul, operator.imul, torch.mul):
        if len(args) != 2:
            raise QuantsimError(f"cannot lower {where}: multiplication by a constant")
        return [FNode(name, "mul", args, source=node.name)]
    if t is F.relu6 or (t is F.hardtanh and tuple(node.args[1:3]) == (0.0, 6.0)):
        return [FNode(name, "relu6", args[:1], source=node.name)]
    if t in _PASS_FUNCS:
        return [FNode(name, "identity", args[:1], source=node.name)]
    if t is F.pad:
        return _pad_nodes(name, node, args, shapes, where)
    if t is F.gelu:
        return [_gelu_node(name, args[0], _normalized_kwargs(node).get("approximate", "none"), where)]
    if t is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        if start != 1:
            raise QuantsimError(f"cannot lower {where}: flatten from dim {start}")
        return [FNode(name, "flatten", args[:1], source=node.name)]
    if t is F.max_pool2d:
        kw = _normalized_kwargs(node)
        if kw.get("return_indices"):
            raise QuantsimError(f"cannot lower {where}: max pool that returns its indices")
        return [_pool_node(name, "maxpool", args[0], kw["kernel_size"], kw.get("stride"), kw.get("padding", 0),
                           bool(kw.get("ceil_mode")), in_shape, node.name, dilation=kw.get("dilation", 1))]
    if t is F.avg_pool2d:
        kw = _normalized_kwargs(node)
        return [_pool_node(name, "avgpool", args[0], kw["kernel_size"], kw.get("stride"), kw.get("padding", 0),
                           bool(kw.get("ceil_mode")), in_shape, node.name, divisor_override=kw.get("divisor_override"),
                           count_include_pad=bool(kw.get("count_include_pad", True)))]
    if t is F.adaptive_avg_pool2d:
        return _adaptive_avg_nodes(name, args[0], _normalized_kwargs(node)["output_size"], in_shape, node.name)
    raise QuantsimError(f"cannot lower function {where}: unsupported operation")


def _static(v, shapes: dict[str, Any], where: str):
    """A Python value with every fx node in it replaced by what the shape run computed for it: the
    shape arithmetic torch.fx traced (x.shape -> getitem -> mod ...) is constant at capture's shapes."""
    if isinstance(v, fx.Node):
        value = shapes.get(v.name)
        if not isinstance(value, (int, float, bool)):
            raise QuantsimError(f"cannot lower {where}: its argument {v.name} is a tensor, not a size")
        return value
    if isinstance(v, (tuple, list)):
        return type(v)(_static(u, shapes, where) for u in v)
    return v


def _pad_nodes(name: str, node: fx.Node, args: list[str], shapes: dict[str, Any], where: str) -> list[FNode]:
    """F.pad with zeros, amounts static at the traced shapes (timm Swin's patch merging: H % 2, W % 2)."""
    kw = _normalized_kwargs(node)
    pad = [int(v) for v in _static(kw["pad"], shapes, where)]
    value = _static(kw.get("value"), shapes, where)
    zeros = kw.get("mode", "constant") == "constant" and value in (None, 0, 0.0)
    if not zeros or len(pad) % 2 or min(pad, default=0) < 0:
        raise QuantsimError(f"cannot lower {where}: padding other than with zeros, by non-negative amounts")
    nd = len(shapes[node.args[0].name])
    pads = [[0, 0] for _ in range(nd)]
    for i in range(len(pad) // 2):  # F.pad's pairs run from the last axis backwards
        pads[nd - 1 - i] = [pad[2 * i], pad[2 * i + 1]]
    if pads[0] != [0, 0]:
        raise QuantsimError(f"cannot lower {where}: padding along the batch axis")
    if not any(b or a for b, a in pads):
        return [FNode(name, "identity", args[:1], source=node.name)]
    return [FNode(name, "pad", args[:1], {"pads": pads}, source=node.name)]


def _method_node(name: str, node: fx.Node, args: list[str], shapes: dict[str, torch.Size]) -> list[FNode]:
    if node.target in ("view", "reshape", "flatten"):
        in_shape, out_shape = shapes[node.args[0].name], shapes[node.name]
        if len(out_shape) == 2 and out_shape[0] == in_shape[0]:
            return [FNode(name, "flatten", args[:1], source=node.name)]
    if node.target in ("relu", "relu_"):
        return [FNode(name, "relu", args[:1], source=node.name)]
    if node.target in _LUT_METHODS:
        return [FNode(name, _LUT_METHODS[node.target], args[:1], source=node.name)]
    if node.target in ("mul", "mul_") and len(args) == 2:
        return [FNode(name, "mul", args[:2], source=node.name)]
    if node.target == "mean":
        return _mean_node(name, node, args, shapes)
    if node.target in ("add", "add_"):
        return [FNode(name, "add", args[:2], source=node.name)]
    raise QuantsimError(f"cannot lower method call .{node.target}() at {node.name}: unsupported operation")


def _mean_node(name: str, node: fx.Node, args: list[str], shapes: dict[str, torch.Size]) -> list[FNode]:
    """x.mean((2, 3), keepdim=...) of an NCHW tensor: a global average pool (then a flatten)."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    in_shape = shapes[node.args[0].name]
    nd = len(in_shape)
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if nd == 3 and [d % nd for d in dims] == [1] and not keep:  # (B, N, C) over the tokens (LeViT's head)
        n_tok, c = int(in_shape[1]), int(in_shape[2])
        return [FNode(name + ".to_nchw", "permute", args[:1], {"perm": [0, 2, 1]}, source=node.name),
                FNode(name + ".grid", "reshape", [name + ".to_nchw"], {"shape": [-1, c, n_tok, 1]}, source=node.name),
                FNode(name + ".pool", "gap", [name + ".grid"], source=node.name),
                FNode(name, "flatten", [name + ".pool"], source=node.name)]
    if nd != 4 or sorted(d % nd for d in dims) != [2, 3]:
        raise QuantsimError(f"cannot lower {_where(node)}: mean over axes {dims} (only the spatial axes of NCHW)")
    if keep:
        return [FNode(name, "gap", args[:1], source=node.name)]
    return [FNode(name + ".pool", "gap", args[:1], source=node.name),
            FNode(name, "flatten", [name + ".pool"], source=node.name)]


_MATMUL_TARGETS = {operator.matmul, torch.matmul, torch.bmm}
_MUL_TARGETS = {operator.mul, torch.mul}
_SOFTMAX_TARGETS = {F.softmax, torch.softmax}


def _channel_axis(c: torch.Tensor, out_shape) -> int | None:
    """The one axis along which constant `c` (broadcast against out_shape) varies, or None."""
    nd = len(out_shape)
    if c.dim() > nd or c.dim() == 0:
        return None
    sizes = [1] * (nd - c.dim()) + list(c.shape)
    axes = [i for i, v in enumerate(sizes) if v != 1]
    if len(axes) != 1 or axes[0] == 0 or sizes[axes[0]] != out_shape[axes[0]]:
        return None
    return axes[0]


def _where(node: fx.Node) -> str:
    t = node.target
    trace = node.stack_trace.strip().splitlines()[-1].strip() if node.stack_trace else node.format_node()
    return f"{node.name} ({getattr(t, '__name__', t)}) in forward, from `{trace}`"


def _last_axis(dim: int, ndim: int) -> bool:
    return dim in (-1, ndim - 1)


def _vit_node(name: str, node: fx.Node, args: list[str], shapes: dict[str, Any], consts: dict[str, torch.Tensor],
              unbinds: dict[str, tuple[str, int]], alias: dict[str, str]) -> list[FNode] | None:
    """Transformer ops (see the module docstring); None when the node is not one of them."""
    t, kind = node.target, node.op
    fname = getattr(t, "__name__", "")
    arg0 = node.args[0] if node.args else None
    in_shape = shapes.get(arg0.name) if isinstance(arg0, fx.Node) else None
    out_shape = shapes.get(node.name)
    src = node.name
    # softmax over the last axis
    if (kind == "call_method" and t == "softmax") or (kind == "call_function" and t in _SOFTMAX_TARGETS):
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        if dim is None or not _last_axis(dim, len(in_shape)):
            raise QuantsimError(f"cannot lower {_where(node)}: softmax over axis {dim} (only the last axis)")
        return [FNode(name, "softmax", args[:1], source=src)]
    if kind == "call_function" and t in _MATMUL_TARGETS:
        if len(args) != 2:
            raise QuantsimError(f"cannot lower {_where(node)}: matmul with a constant operand")
        return [FNode(name, "matmul", args, {"alpha": 1.0, "transpose_b": False}, source=src)]
    if kind == "call_function" and t is torch.einsum:
        if len(args) != 2 or len(node.args) != 3 or not isinstance(node.args[0], str):
            raise QuantsimError(f"cannot lower {_where(node)}: einsum other than of two activations")
        return [FNode(name, "matmul", args, {"alpha": 1.0, "transpose_b": _einsum_transpose_b(node)}, source=src)]
    if kind in ("call_function", "call_method") and getattr(t, "__name__", t) in ("swapaxes", "swapdims"):
        nd = len(in_shape)
        a, b = (int(v) % nd for v in node.args[1:3])
        perm = list(range(nd))
        perm[a], perm[b] = perm[b], perm[a]
        return [FNode(name, "permute", args[:1], {"perm": perm}, source=src)]
    if kind == "call_function" and t is operator.truediv and len(args) == 1 and node.args[0].name in alias:
        c = node.args[1]
        if isinstance(c, (int, float)) and c > 0:  # x / c (LeViT's mean of its two heads)
            return [FNode(name, "scale", args, {"value": 1.0 / float(c)}, source=src)]
        raise QuantsimError(f"cannot lower {_where(node)}: division other than by a positive constant")
    if ((kind == "call_function" and t in _MUL_TARGETS) or (kind == "call_method" and t in ("mul", "mul_"))) \
            and len(args) == 1:  # x * c, x.mul(c) (timm ConvNeXt's layer scale)
        other = [a for a in node.args if not isinstance(a, fx.Node)]
        if len(other) == 1 and isinstance(other[0], (int, float)) and other[0] > 0:
            return [FNode(name, "scale", args, {"value": float(other[0])}, source=src)]
        const = [consts[a.name] for a in node.args if isinstance(a, fx.Node) and a.name in consts]
        axis = _channel_axis(const[0], out_shape) if len(const) == 1 else None
        if axis is not None:  # a per-channel constant (ConvNeXt's layer scale)
            return [FNode(name, "layerscale", args, {"axis": axis}, const[0].detach().reshape(-1).clone(), source=src)]
        raise QuantsimError(f"cannot lower {_where(node)}: multiplication by a tensor or a non-positive constant")
    # the attention mask helpers of timm, traced with attn_mask=None, is_causal=False
    if kind == "call_function" and fname == "resolve_self_attn_mask":
        if any(a is not None and a is not False for a in node.args[2:]):
            raise QuantsimError(f"cannot lower {_where(node)}: an attention mask")
        return []
    if kind == "call_function" and fname == "maybe_add_mask":
        mask = node.args[1] if len(node.args) > 1 else None
        if mask is not None and not (isinstance(mask, fx.Node) and mask.name not in alias and mask.name not in consts):
            raise QuantsimError(f"cannot lower {_where(node)}: an attention mask")
        return [FNode(name, "identity", args[:1], source=src)]
    # class token and position embedding (constants)
    if kind == "call_function" and t is torch.cat:
        parts = node.args[0]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        names = [p.name for p in parts if isinstance(p, fx.Node)]
        if (len(parts) >= 2 and dim in (1, 1 - len(out_shape)) and len(out_shape) == 3
                and all(n in consts for n in names[:-1]) and names[-1] in alias):
            token = torch.cat([consts[n].reshape(-1, out_shape[-1]) for n in names[:-1]], dim=0)
            return [FNode(name, "concat_token", [alias[names[-1]]], {"axis": 1}, token.detach().clone(), source=src)]
        if (len(names) == len(parts) and all(n in alias for n in names) and isinstance(dim, int)
                and dim % len(out_shape) != 0):
            return [FNode(name, "concat", [alias[n] for n in names], {"axis": dim % len(out_shape)}, source=src)]
        raise QuantsimError(f"cannot lower {_where(node)}: concatenation along axis {dim} (only activations along "
                            "a non-batch axis, or constant tokens prepended along axis 1)")
    if kind == "call_function" and t in (torch.chunk, torch.split):
        return _split_node(node, args, shapes, unbinds)
    if kind == "call_function" and t in (torch.transpose, torch.permute):
        kw = _normalized_kwargs(node)
        return [FNode(name, "permute", args[:1], {"perm": _perm(node, in_shape, kw)}, source=src)]
    if t in _ADD_TARGETS or (kind == "call_method" and t in ("add", "add_")):
        names = [a.name for a in node.args if isinstance(a, fx.Node)]
        if len(args) == 1 and len(names) == 2 and any(n in consts for n in names):
            c = consts[next(n for n in names if n in consts)].detach()
            if c.dim() == len(out_shape) and c.shape[0] == 1:
                c = c[0]
            items = tuple(int(v) for v in out_shape[1:])
            # the same constant for every item, or one broadcast over the leading item axes (MaxViT's
            # relative position bias (1, heads, P, P) over the windows)
            fits = c.dim() <= len(items) and all(cs in (1, o) for cs, o in zip(reversed(c.shape), reversed(items)))
            if not fits:
                raise QuantsimError(f"cannot lower {_where(node)}: constant of shape {tuple(c.shape)} added to "
                                    f"items of shape {tuple(out_shape[1:])}")
            return [FNode(name, "add_const", args, {}, c.clone(), source=src)]
        return None
    if kind != "call_method":
        if kind == "call_function" and t is operator.getitem:
            return _getitem_node(name, node, args, shapes, unbinds)
        return None
    # tensor methods: layout
    if t == "contiguous":
        return [FNode(name, "identity", args[:1], source=src)]
    if t in ("transpose", "permute"):
        return [FNode(name, "permute", args[:1], {"perm": _perm(node, in_shape)}, source=src)]
    if t in ("chunk", "split"):
        return _split_node(node, args, shapes, unbinds)
    if t in ("reshape", "view", "flatten"):
        if len(out_shape) == 2 and out_shape[0] == in_shape[0]:
            return None  # a flatten to (N, K): the CNN path
        if int(out_shape[0]) != int(in_shape[0]):
            raise QuantsimError(f"cannot lower {_where(node)}: a reshape from {tuple(in_shape)} to {tuple(out_shape)} "
                                "moves the batch axis (at a batch of 2; the integer program keeps it first)")
        return [FNode(name, "reshape", args[:1], {"shape": [-1, *[int(v) for v in out_shape[1:]]]}, source=src)]
    if t == "unbind":
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        unbinds[node.name] = (args[0], int(dim) % len(in_shape))
        return []
    return None


def _einsum_transpose_b(node: fx.Node) -> bool:
    """A two-operand einsum that is a batched matmul, a @ b or a @ bᵀ: both operands and the output
    share their leading (batch) letters; a is (.., i, k), b is (.., k, j) or (.., j, k) -> (.., i, j).
    MaxViT's attention: 'BGHID,BGHJD->BGHIJ' (q·kᵀ) and 'BGHIJ,BGHJD->BGHID' (attn·v)."""
    eq = node.args[0].replace(" ", "")
    ins, _, out = eq.partition("->")
    parts = ins.split(",")
    ok = len(parts) == 2 and out and "." not in eq and all(len(p) >= 2 for p in parts)
    if ok:
        a, b = parts
        batch = a[:-2]
        i, k = a[-2:]
        ok = (b[:-2] == batch and len(b) == len(a) and out[:-2] == batch and len(out) == len(a)
              and len(set(a)) == len(a) and len(set(b)) == len(b))
        if ok and b[-2:] == k + out[-1] and out[-2] == i and out[-1] not in a:
            return False
        if ok and b[-2:] == out[-1] + k and out[-2] == i and out[-1] not in a:
            return True
    raise QuantsimError(f"cannot lower {_where(node)}: einsum {node.args[0]!r} (only a batched matmul: "
                        "'..ik,..kj->..ij' or '..ik,..jk->..ij' with the same leading letters)")


def _perm(node: fx.Node, in_shape, kw: dict | None = None) -> list[int]:
    """The permutation of a transpose / permute call (method, or torch function with `kw`)."""
    nd = len(in_shape)
    fname = node.target if node.op == "call_method" else node.target.__name__
    if fname == "transpose":
        d0, d1 = (kw["dim0"], kw["dim1"]) if kw is not None else node.args[1:3]
        perm = list(range(nd))
        perm[d0 % nd], perm[d1 % nd] = perm[d1 % nd], perm[d0 % nd]
        return perm
    if kw is not None:
        dims = kw["dims"]
    else:
        dims = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (list, tuple)) else node.args[1]
    return [int(d) % nd for d in dims]


def _split_node(node: fx.Node, args: list[str], shapes: dict[str, Any], unbinds: dict) -> list[FNode]:
    """torch.chunk / torch.split (function or method): its pieces' bounds, for the getitems that read them."""
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
    pieces = shapes[node.name]
    nd = len(pieces[0].shape)
    axis = int(dim) % nd
    if axis == 0 or not args:
        raise QuantsimError(f"cannot lower {_where(node)}: a split along the batch axis or of a constant")
    bounds, start = [], 0
    for p in pieces:
        bounds.append((start, start + int(p.shape[axis])))
        start += int(p.shape[axis])
    unbinds[node.name] = (args[0], axis, bounds)
    return []


def _getitem_node(name, node, args, shapes, unbinds) -> list[FNode] | None:
    src, idx = node.args[0], node.args[1]
    if src.name in unbinds:
        inp, axis, *bounds = unbinds[src.name]
        if bounds:  # a piece of a chunk / split
            start, stop = bounds[0][int(idx)]
            return [FNode(name, "slice", [inp], {"axis": axis, "start": start, "stop": stop}, source=node.name)]
        return [FNode(name, "take", [inp], {"axis": axis, "index": int(idx)}, source=node.name)]
    if not args:
        return None
    in_shape = shapes[src.name]
    idx = idx if isinstance(idx, tuple) else (idx,)
    lead = 0
    while lead < len(idx) and idx[lead] == slice(None):
        lead += 1
    rest = idx[lead:]
    while len(rest) > 1 and rest[-1] == slice(None):  # x[:, :16, :, :] is x[:, :16] (GhostNet)
        rest = rest[:-1]
    if lead >= 1 and len(rest) == 1 and isinstance(rest[0], int):
        return [FNode(name, "take", args[:1], {"axis": lead, "index": int(rest[0]) % in_shape[lead]},
                      source=node.name)]
    every = [r.step for r in rest if isinstance(r, slice) and r.start in (None, 0) and r.stop is None]
    if lead == 1 and len(in_shape) == 4 and len(rest) == 2 and len(every) == 2 and every[0] == every[1] \
            and (every[0] or 1) > 1:  # x[:, ::s, ::s] of (B, H, W, C) (LeViT's subsample): option A's strided copy
        return [FNode(name + ".to_nchw", "permute", args[:1], {"perm": [0, 3, 1, 2]}, source=node.name),
                FNode(name + ".every", "shortcut_a", [name + ".to_nchw"],
                      {"stride": int(every[0]), "pad_before": 0, "pad_after": 0}, source=node.name),
                FNode(name, "permute", [name + ".every"], {"perm": [0, 2, 3, 1]}, source=node.name)]
    if lead >= 1 and len(rest) == 1 and isinstance(rest[0], slice) and rest[0].step in (None, 1):
        start, stop, _ = rest[0].indices(int(in_shape[lead]))
        if stop > start:
            return [FNode(name, "slice", args[:1], {"axis": lead, "start": start, "stop": stop}, source=node.name)]
    raise QuantsimError(f"cannot lower {_where(node)}: indexing {idx} (only x[:, ..., i] and x[:, ..., a:b])")


def _shape_map(gm: fx.GraphModule, example: torch.Tensor, kinds: dict[str, str] | None = None,
               folded: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Run the traced module once, recording every node's output shape (and in `kinds`
    whether it is a 'tensor', a tuple of 'tensors' or some 'other' value; in `folded` the value of
    every computed tensor that depends on parameters and buffers only: the constant folding)."""
    shapes: dict[str, Any] = {}
    kinds = {} if kinds is None else kinds
    folded = {} if folded is None else folded
    constant: set[str] = set()  # get_attr nodes and everything computed from them alone

    class _Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.op == "get_attr" or (n.op in ("call_function", "call_method", "call_module")
                                      and all(a.name in constant for a in n.all_input_nodes)):
                constant.add(n.name)
                if n.op != "get_attr" and isinstance(out, torch.Tensor):
                    folded[n.name] = out.detach().clone()
            shapes[n.name] = out.shape if isinstance(out, torch.Tensor) else out
            if isinstance(out, torch.Tensor):
                kinds[n.name] = "tensor"
            elif isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
                kinds[n.name] = "tensors"
            else:
                kinds[n.name] = "other"
            return out

    with torch.no_grad():
        _Recorder(gm).run(example)
    return shapes


def _scoped_name(node: fx.Node) -> str:
    """A function call named after the module that made it: layer1.0.add, not add_3."""
    stack = node.meta.get("nn_module_stack") or {}
    scope = list(stack.values())[-1][0] if stack else ""
    base = node.name.rstrip("0123456789").rstrip("_") or node.name
    return f"{scope}.{base}" if scope else node.name


def _raw_graph(gm: fx.GraphModule, input_shape: tuple[int, int, int]) -> FloatGraph:
    modules = dict(gm.named_modules())
    kinds: dict[str, str] = {}
    folded: dict[str, torch.Tensor] = {}
    shapes = _shape_map(gm, torch.zeros(2, *input_shape), kinds, folded)  # batch 2: the batch axis is visible
    alias: dict[str, str] = {}  # fx node name -> FNode name that holds its value
    consts: dict[str, torch.Tensor] = {}  # fx node name -> parameter read directly in forward
    unbinds: dict[str, tuple[str, int]] = {}  # fx unbind node -> (FNode name, axis)
    attn_outputs: set[str] = set()  # fx nodes of nn.MultiheadAttention calls: (output, weights)
    nodes: list[FNode] = []
    used: set[str] = set()
    output = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if nodes and node.args:  # an argument traced at its default (concrete_args)
                continue
            if nodes:
                raise QuantsimError("cannot lower a model with more than one input")
            nodes.append(FNode("input", "input", [], source="input"))
            alias[node.name] = "input"
            continue
        if node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node):
                raise QuantsimError("cannot lower a model whose output is not a single tensor")
            output = alias[out.name]
            continue
        if node.op == "get_attr":
            value = gm
            for part in node.target.split("."):
                value = getattr(value, part)
            if not isinstance(value, torch.Tensor):
                raise QuantsimError(f"cannot lower {node.target}: a non-tensor attribute used in forward")
            consts[node.name] = value.detach()
            continue
        if node.name in folded:  # computed from parameters and buffers alone: a constant
            consts[node.name] = folded[node.name]
            continue
        if node.op != "call_module" and kinds.get(node.name) == "other":
            continue  # shape queries, asserts, comparisons: nothing to compute
        if (node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node)
                and node.args[0].name in attn_outputs):
            if node.args[1] != 0:
                raise QuantsimError(f"cannot lower {_where(node)}: attention weights (only the attention output)")
            alias[node.name] = alias[node.args[0].name]
            continue
        args = []
        for a in node.args:
            if isinstance(a, fx.Node) and a.name in alias:
                args.append(alias[a.name])
        if node.op == "call_method" and node.target == "expand" and node.args[0].name in consts:
            consts[node.name] = consts[node.args[0].name]  # a constant broadcast over the batch
            continue
        if not args and any(isinstance(a, fx.Node) and a.name in consts for a in node.args):
            raise QuantsimError(f"cannot lower {_where(node)}: computation on a parameter (only class tokens "
                                "and position embeddings are supported)")
        name = node.target if node.op == "call_module" else _scoped_name(node)
        if name in used:  # a module called twice: each call is its own tensor
            name = f"{name}#{sum(1 for u in used if u.split('#')[0] == name)}"
        used.add(name)
        if node.op == "call_module" and isinstance(modules[node.target], nn.MultiheadAttention):
            new = _attention_nodes(name, modules[node.target], node, args, shapes)
            attn_outputs.add(node.name)
        elif node.op == "call_module":
            arg0 = node.args[0] if node.args else None
            new = _module_node(name, modules[node.target], args, node.target,
                               shapes.get(arg0.name) if isinstance(arg0, fx.Node) else None)
        else:
            if node.op == "call_function" and node.target is getattr and not args:
                continue
            if node.op == "call_method" and node.target == "size":  # shape queries feed view()
                continue
            if node.op == "call_function" and is_swin_function(node.target):
                new = [FNode(*spec, source=node.name) for spec in swin_nodes(name, node, args, shapes, consts)]
                nodes.extend(new)
                alias[node.name] = new[-1].name
                continue
            new = _vit_node(name, node, args, shapes, consts, unbinds, alias)
            if new is None and node.op == "call_function":
                new = _function_node(name, node, args, shapes)
            elif new is None and node.op == "call_method":
                new = _method_node(name, node, args, shapes)
            elif new is None:  # pragma: no cover
                raise QuantsimError(f"cannot lower fx node {node.format_node()}")
        if not new:  # nothing to compute (an unbind, a mask that is None)
            continue
        nodes.extend(new)
        alias[node.name] = new[-1].name
    if output is None:
        raise QuantsimError("the traced model has no output")
    return FloatGraph(nodes, output, tuple(input_shape))


# --------------------------------------------------------------------------------------
# Graph rewrites: drop identities, fold BN, fuse activations
# --------------------------------------------------------------------------------------
def _replace_uses(g: FloatGraph, old: str, new: str) -> None:
    for n in g.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]
    if g.output == old:
        g.output = new


def _remove(g: FloatGraph, node: FNode) -> None:
    _replace_uses(g, node.name, node.inputs[0])
    g.nodes.remove(node)
    g.index.pop(node.name)


def _drop_identities(g: FloatGraph) -> None:
    for n in [n for n in g.nodes if n.op == "identity"]:
        _remove(g, n)


def _fold_batchnorm(g: FloatGraph) -> None:
    for bn in [n for n in g.nodes if n.op == "bn"]:
        prod = g[bn.inputs[0]]
        if prod.op != "conv" or len(g.consumers(prod.name)) != 1:
            _batchnorm_as_depthwise(bn)
            continue
        w = prod.weight
        prod.weight = w * bn.weight.reshape(-1, *([1] * (w.dim() - 1)))
        b0 = prod.bias if prod.bias is not None else torch.zeros(w.shape[0])
        prod.bias = b0 * bn.weight + bn.bias
        _remove(g, bn)


def _batchnorm_as_depthwise(bn: FNode) -> None:
    """A BatchNorm with no convolution to fold into: y = a_c·x + b_c as a depthwise 1x1 conv."""
    c = bn.weight.numel()
    bn.op = "conv"
    bn.weight = bn.weight.reshape(c, 1, 1, 1).clone()
    bn.attrs = {"stride": [1, 1], "dilation": [1, 1], "groups": c, "kernel": [1, 1], "padding": [0, 0, 0, 0]}


def _fuse_activations(g: FloatGraph) -> None:
    for act in [n for n in g.nodes if n.op in ACTIVATIONS]:
        prod = g[act.inputs[0]]
        if prod.op in ("conv", "linear", "add") and prod.act is None and len(g.consumers(prod.name)) == 1:
            prod.act = act.op
            _remove(g, act)
            # later nodes refer to the producer now; keep the activation's name visible
            prod.source = f"{prod.source}+{act.source}"


def _fold_layerscale(g: FloatGraph) -> None:
    """timm LayerScale (per-channel gamma) into the linear before it."""
    scales = [n for n in g.nodes if n.op == "layerscale"]
    dims: dict[str, int] = {}
    if any(ls.attrs.get("axis", -1) != -1 for ls in scales):  # every tensor's rank, once
        run_float(g, torch.zeros(1, *g.input_shape), observe=lambda n, y: dims.__setitem__(n.name, y.dim()))
    for ls in scales:
        prod = g[ls.inputs[0]]
        axis = ls.attrs.get("axis", -1)  # timm's LayerScale: the last axis
        if prod.op == "permute" and len(g.consumers(prod.name)) == 1 and axis != -1:
            axis = prod.attrs["perm"][axis]  # through ConvNeXt's permute back to NCHW
            prod = g[prod.inputs[0]]
        fits = ((prod.op == "linear" and (axis == -1 or axis == dims[prod.name] - 1)) or (prod.op == "conv" and axis == 1))
        if not fits or len(g.consumers(prod.name)) != 1:
            raise QuantsimError(f"cannot lower {ls.source}: a per-channel scale that does not follow a linear "
                                "or conv layer's output channels")
        prod.weight = prod.weight * ls.weight.reshape(-1, *([1] * (prod.weight.dim() - 1)))
        if prod.bias is not None:
            prod.bias = prod.bias * ls.weight
        _remove(g, ls)



def _commute_take_permute(g: FloatGraph) -> None:
    """take(permute(t, P), d, i) -> permute(take(t, P[d], i), P'): the batch axis stays first."""
    changed = True
    while changed:
        changed = False
        for tk in [n for n in g.nodes if n.op == "take"]:
            pm = g[tk.inputs[0]]
            if pm.op != "permute":
                continue
            perm, d = pm.attrs["perm"], tk.attrs["axis"]
            src_axis = perm[d]
            rest = [p - (p > src_axis) for j, p in enumerate(perm) if j != d]
            take = FNode(tk.name + ".take", "take", list(pm.inputs), {"axis": src_axis, "index": tk.attrs["index"]},
                         source=tk.source)
            g.nodes.insert(g.nodes.index(tk), take)
            g.index[take.name] = take
            tk.op, tk.inputs, tk.attrs = "permute", [take.name], {"perm": rest}
            if not g.consumers(pm.name) and g.output != pm.name:
                g.nodes.remove(pm)
                g.index.pop(pm.name)
            changed = True


def _fold_into_matmul(g: FloatGraph) -> None:
    """kᵀ (a permute swapping the last two axes) -> transpose_b; q * c -> alpha *= c."""
    for mm in [n for n in g.nodes if n.op == "matmul"]:
        b = g[mm.inputs[1]]
        perm = b.attrs.get("perm") if b.op == "permute" else None
        if perm is not None and len(perm) >= 2 and perm == [*range(len(perm) - 2), len(perm) - 1, len(perm) - 2]:
            mm.inputs[1] = b.inputs[0]
            mm.attrs["transpose_b"] = not mm.attrs["transpose_b"]
            if not g.consumers(b.name):
                g.nodes.remove(b)
                g.index.pop(b.name)
        for k, i in enumerate(list(mm.inputs)):
            sc = g[i]
            if sc.op == "scale" and len(g.consumers(sc.name)) == 1 and not isinstance(mm.attrs["alpha"], list):
                mm.attrs["alpha"] *= sc.attrs["value"]
                mm.inputs[k] = sc.inputs[0]
                g.nodes.remove(sc)
                g.index.pop(sc.name)
                mm.source = f"{mm.source}+{sc.source}"


def _fold_scales(g: FloatGraph) -> None:
    """A multiplication by a positive constant that no matmul's input took (_fold_into_matmul), into
    what computes its input: a matmul's alpha (LeViT's q·k * scale), a linear / conv's weights and bias
    (relu commutes with it), or both such producers of an add ((x + x_dist) / 2, LeViT's two heads)."""
    def foldable(name: str) -> bool:
        n = g[name]
        if len(g.consumers(name)) != 1 or n.act not in (None, "relu"):
            return False
        if n.op == "matmul":
            return not isinstance(n.attrs["alpha"], list)
        if n.op in ("linear", "conv"):
            return True
        return n.op == "add" and all(foldable(i) for i in n.inputs)

    def fold(name: str, c: float) -> None:
        n = g[name]
        if n.op == "matmul":
            n.attrs["alpha"] *= c
        elif n.op == "add":
            for i in n.inputs:
                fold(i, c)
        else:
            n.weight = n.weight * c
            n.bias = n.bias * c if n.bias is not None else None

    for sc in [n for n in g.nodes if n.op == "scale"]:
        if foldable(sc.inputs[0]):
            fold(sc.inputs[0], sc.attrs["value"])
            g[sc.inputs[0]].source += f"+{sc.source}"
            _remove(g, sc)


def _simplify_permutes(g: FloatGraph) -> None:
    """permute(permute(t, P1), P2) -> permute(t, P1∘P2) where the inner one has no other reader;
    identity permutes removed."""
    for pm in [n for n in g.nodes if n.op == "permute"]:
        inner = g[pm.inputs[0]]
        if inner.op == "permute" and len(g.consumers(inner.name)) == 1:
            pm.attrs["perm"] = [inner.attrs["perm"][j] for j in pm.attrs["perm"]]
            pm.inputs = list(inner.inputs)
            g.nodes.remove(inner)
            g.index.pop(inner.name)
    for pm in [n for n in g.nodes if n.op == "permute"]:
        if pm.attrs["perm"] == list(range(len(pm.attrs["perm"]))):
            _remove(g, pm)


def _check_batch_first(g: FloatGraph) -> None:
    """Every tensor keeps the batch axis first (the executors split and join batches there)."""
    sizes: dict[str, int] = {}
    run_float(g, torch.zeros(2, *g.input_shape), observe=lambda n, y: sizes.__setitem__(n.name, y.shape[0]))
    run_float(g, torch.zeros(3, *g.input_shape), observe=lambda n, y: sizes.__setitem__(n.name, (sizes[n.name], y.shape[0])))
    for n in g.nodes:
        if sizes[n.name] != (2, 3):
            raise QuantsimError(f"cannot lower {n.source}: its output does not keep the batch axis first")
    for n in g.nodes:
        if n.op in ("scale", "layerscale"):
            raise QuantsimError(f"cannot lower {n.source}: a multiplication by a constant that feeds no matmul")


def capture(model: nn.Module, input_shape: tuple[int, int, int]) -> FloatGraph:
    """Trace, fold BN, fuse activations; the result computes what the model computes."""
    model = model.eval()
    gm = trace(model, input_shape)
    g = _raw_graph(gm, input_shape)
    _drop_identities(g)
    _fold_batchnorm(g)
    _fuse_activations(g)
    transformer = any(n.op in ("permute", "take", "matmul", "layerscale") for n in g.nodes)
    if transformer:
        _fold_layerscale(g)
        _commute_take_permute(g)
        _fold_into_matmul(g)
    _fold_scales(g)
    if transformer:
        _simplify_permutes(g)
        _check_batch_first(g)
    _check_finite(g)
    return g


def _check_finite(g: FloatGraph) -> None:
    for n in g.nodes:
        for label, t in (("weight", n.weight), ("bias", n.bias)):
            if t is not None and not torch.isfinite(t).all():
                raise QuantsimError(f"{n.source}: {label} holds NaN or Inf values")


# --------------------------------------------------------------------------------------
# Float execution (with optional fake quantization and per-node observation)
# --------------------------------------------------------------------------------------
def _apply_act(y: torch.Tensor, act: str | None) -> torch.Tensor:
    if act == "relu":
        return F.relu(y)
    if act == "relu6":
        return F.relu6(y)
    return y


def conv_padding(attrs: dict, h: int, w: int) -> list[int]:
    """[top, bottom, left, right] for a conv/pool, resolving TF 'SAME' from the input size."""
    if attrs.get("padding_mode") == "tf_same":
        kh, kw = attrs["kernel"]
        sh, sw = attrs["stride"]
        dh, dw = attrs.get("dilation", [1, 1])
        return [*tf_same_padding(h, kh, sh, dh), *tf_same_padding(w, kw, sw, dw)]
    return list(attrs["padding"])


def run_node(n: FNode, xs: list[torch.Tensor], weight: torch.Tensor | None = None) -> torch.Tensor:
    """One FloatGraph node in float. `weight` overrides n.weight (fake-quantized weights)."""
    w = n.weight if weight is None else weight
    x = xs[0]
    if n.op == "conv":
        t, b, l, r = conv_padding(n.attrs, x.shape[2], x.shape[3])
        x = F.pad(x, (l, r, t, b))
        y = F.conv2d(x, w, n.bias, n.attrs["stride"], 0, n.attrs["dilation"], n.attrs["groups"])
    elif n.op == "linear":
        y = F.linear(x, w, n.bias)
    elif n.op == "add":
        y = xs[0] + xs[1]
    elif n.op == "mul":
        y = xs[0] * xs[1]
    elif n.op == "hardswish":
        y = F.hardswish(x)
    elif n.op == "hardsigmoid":
        y = F.hardsigmoid(x)
    elif n.op == "sigmoid":
        y = torch.sigmoid(x)
    elif n.op == "silu":
        y = F.silu(x)
    elif n.op == "tanh":
        y = torch.tanh(x)
    elif n.op == "relu":
        y = F.relu(x)
    elif n.op == "relu6":
        y = F.relu6(x)
    elif n.op == "maxpool":
        t, b, l, r = n.attrs["padding"]
        y = F.max_pool2d(F.pad(x, (l, r, t, b), value=float("-inf")), n.attrs["kernel"], n.attrs["stride"])
    elif n.op == "avgpool":
        t, b, l, r = n.attrs["padding"]
        if t != b or l != r:
            raise QuantsimError(f"{n.source}: asymmetric average-pool padding")
        y = F.avg_pool2d(x, n.attrs["kernel"], n.attrs["stride"], (t, l),
                         count_include_pad=n.attrs["count_include_pad"])
    elif n.op == "gap":
        y = x.mean(dim=(2, 3), keepdim=True)
    elif n.op == "flatten":
        y = torch.flatten(x, 1)
    elif n.op == "shortcut_a":
        s = n.attrs["stride"]
        y = F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, n.attrs["pad_before"], n.attrs["pad_after"]))
    elif n.op == "layernorm":
        y = F.layer_norm(x, (x.shape[-1],), w, n.bias, n.attrs["eps"])
    elif n.op == "gelu":
        y = F.gelu(x)
    elif n.op == "l2norm":
        y = F.normalize(x, dim=-1)
    elif n.op == "softmax":  # a mask (Swin's shifted windows): its entries left out (quantsim.graph.swin)
        y = torch.softmax(x if w is None else x.masked_fill(w, float("-inf")), dim=-1)
    elif n.op == "matmul":
        b = xs[1].transpose(-1, -2) if n.attrs["transpose_b"] else xs[1]
        y = torch.matmul(x, b)
        alpha = n.attrs["alpha"]
        if isinstance(alpha, list):  # one per index of alpha_axis (Swin v2's per-head logit scale)
            shape = [1] * y.dim()
            shape[n.attrs["alpha_axis"]] = -1
            y = y * torch.tensor(alpha, dtype=y.dtype).reshape(shape)
        elif alpha != 1.0:
            y = y * alpha
    elif n.op == "scale":
        y = x * n.attrs["value"]
    elif n.op == "layerscale":
        axis = n.attrs.get("axis", -1)
        shape = [1] * x.dim()
        shape[axis] = -1
        y = x * w.reshape(shape)
    elif n.op == "reshape":
        y = x.reshape(x.shape[0], *n.attrs["shape"][1:])
    elif n.op == "permute":
        y = x.permute(*n.attrs["perm"])
    elif n.op == "take":
        y = x.select(n.attrs["axis"], n.attrs["index"])
    elif n.op == "concat":
        y = torch.cat(xs, dim=n.attrs["axis"])
    elif n.op == "slice":
        y = x.narrow(n.attrs["axis"], n.attrs["start"], n.attrs["stop"] - n.attrs["start"])
    elif n.op == "pad":
        y = F.pad(x, [v for b, a in reversed(n.attrs["pads"]) for v in (b, a)])
    elif n.op == "roll":
        y = torch.roll(x, n.attrs["shifts"], n.attrs["dims"])
    elif n.op == "concat_token":
        tok = w.to(x.dtype)
        y = torch.cat([tok.expand(x.shape[0], *tok.shape), x], dim=n.attrs["axis"])
    elif n.op == "add_const":
        y = x + w.to(x.dtype)
    else:
        raise QuantsimError(f"cannot run float op {n.op!r} ({n.source})")
    return _apply_act(y, n.act)


@torch.no_grad()
def run_float(g: FloatGraph, x: torch.Tensor,
              observe: Callable[[FNode, torch.Tensor], None] | None = None,
              transform: Callable[[FNode, list[torch.Tensor]], torch.Tensor] | None = None) -> torch.Tensor:
    """Run the FloatGraph; `observe` sees each node's output; `transform(node, inputs)`
    may replace a node's computation (fake quantization, sensitivity probes)."""
    values: dict[str, torch.Tensor] = {}
    for n in g.nodes:
        if n.op == "input":
            y = x
        else:
            xs = [values[i] for i in n.inputs]
            y = transform(n, xs) if transform is not None else None
            if y is None:
                y = run_node(n, xs)
        values[n.name] = y
        if observe is not None:
            observe(n, y)
    return values[g.output]

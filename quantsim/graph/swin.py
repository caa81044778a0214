"""torchvision's Swin Transformer (v1 and v2) as FloatGraph ops: the functions it wraps for torch.fx.

torchvision.models.swin_transformer marks three functions with ``torch.fx.wrap``, so a trace holds
each as a single call whose Python (shape arithmetic, ``if``s on sizes) never ran symbolically:

- ``_get_relative_position_bias(table, index, window)`` reads only a parameter and a buffer (in v2
  the table is ``cpb_mlp`` over a constant coordinate buffer, then ``16 * sigmoid``): capture
  constant-folds it like every subgraph of parameters and buffers (capture._shape_map).
- ``_patch_merging_pad(x)``: (B, H, W, C) -> (B, H/2, W/2, 4C), the four 2x2 phases side by side
  along the channels, torchvision's order cat[x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2],
  x[1::2, 1::2]], i.e. phase (dh, dw) in channel block 2·dw + dh. Written as pad (odd sizes) ->
  reshape (B, H/2, 2, W/2, 2, C) -> permute (B, H/2, W/2, dw, dh, C) -> reshape: data movement only.
- ``shifted_window_attention(x, ...)``: written out below for the static shapes of the trace,
  step for step as torchvision computes it, with the batch axis kept first (windows are an axis
  of their own, (B, nW, ...), where torchvision folds them into the batch):
  pad to whole windows (zero point = real 0; torchvision does not mask the padded tokens, nor do
  we) -> cyclic shift (roll) -> partition (reshape, permute, reshape to (B, nW, N, C)) -> qkv
  linear -> q, k, v per head -> logits -> + relative position bias -> (masked) softmax -> attn·v
  -> proj linear -> reverse partition -> roll back -> drop the padding (slices).

The logits (B, nW, heads, N, N):
- v1: q·kᵀ with alpha D^-0.5 folded into the matmul's requantization (as the ViT path does).
- v2 (cosine attention): l2norm(q)·l2norm(k)ᵀ, the per-head logit scale exp(min(s, ln 100)), a
  constant, folded into the matmul as one requantization multiplier per head (alpha per head).
- The relative position bias (heads, N, N), a folded constant, is an ``add_const`` on the logits:
  the existing constant add (a 16-bit constant, per tensor, and the residual-add arithmetic) whose
  output is calibrated like any softmax input. Folding it into the matmul instead is impossible
  (the matmul has one output scale and the bias is not a product), and a 16-bit constant keeps it
  well below the logits' own resolution.
- The shifted-window mask (torchvision adds -100 where query and key come from different regions
  of the rolled map) is NOT added: adding -100 would stretch the logits' calibrated range about a
  hundredfold (at 8 bits the real logits would keep almost no resolution), and exp(-100) = 4e-44 is
  far below any softmax output step (2^-16), so leaving the masked entries out of the softmax (a
  masked softmax: out of the row max and sum, output 0) is what the float model computes to the
  output's precision. The mask is a constant of the softmax node (FNode.weight, bool, (nW, 1, N, N)).
"""
from __future__ import annotations

import inspect
import math
import sys
from typing import Any, NamedTuple

import torch
import torch.fx as fx

from quantsim.errors import QuantsimError



def _tv_swin():
    """torchvision's Swin module (its wrapped functions, matched by identity), or None while
    torchvision is not imported: no traced model calls them then, and importing it costs seconds."""
    if "torchvision" not in sys.modules:
        return None
    try:
        from torchvision.models import swin_transformer
    except ImportError:  # pragma: no cover
        return None
    return swin_transformer


def timm_swin_blocks() -> tuple:
    """timm's Swin v1 / v2 block classes (leaves of the trace, written out whole by timm_block_nodes);
    () while timm is not imported (no model holds one then; importing timm costs seconds)."""
    if "timm" not in sys.modules:
        return ()
    try:
        from timm.models.swin_transformer import SwinTransformerBlock
        from timm.models.swin_transformer_v2 import SwinTransformerV2Block
    except ImportError:  # pragma: no cover
        return ()
    return SwinTransformerBlock, SwinTransformerV2Block


class Spec(NamedTuple):
    """One FloatGraph node as capture builds it (capture imports this module, not the reverse)."""
    name: str
    op: str
    inputs: list
    attrs: dict
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None


def is_swin_function(target) -> bool:
    tv_swin = _tv_swin()
    return tv_swin is not None and target in (tv_swin.shifted_window_attention, tv_swin._patch_merging_pad)


def swin_nodes(name: str, node: fx.Node, args: list[str], shapes: dict[str, Any],
               consts: dict[str, torch.Tensor]) -> list[Spec]:
    """The FloatGraph nodes of one call of a wrapped Swin function (see the module docstring)."""
    if node.target is _tv_swin()._patch_merging_pad:
        return patch_merging_nodes(name, args[0], tuple(shapes[node.args[0].name]), node.name)
    bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    kw = dict(bound.arguments)

    def const(key):
        v = kw[key]
        if v is None:
            return None
        if not isinstance(v, fx.Node) or v.name not in consts:
            raise QuantsimError(f"cannot lower {node.name} (shifted_window_attention): its {key} is not a constant")
        return consts[v.name].detach().clone()
    x = kw["input"]
    if not isinstance(x, fx.Node) or x.name in consts:
        raise QuantsimError(f"cannot lower {node.name} (shifted_window_attention): its input is a constant")
    return window_attention_nodes(name, args[0], tuple(shapes[x.name]), qkv_weight=const("qkv_weight"),
                                  qkv_bias=const("qkv_bias"), proj_weight=const("proj_weight"),
                                  proj_bias=const("proj_bias"), position_bias=const("relative_position_bias"),
                                  logit_scale=const("logit_scale"), window=list(kw["window_size"]),
                                  heads=int(kw["num_heads"]), shift=list(kw["shift_size"]), source=node.name)


def patch_merging_nodes(name: str, inp: str, shape: tuple[int, ...], source: str) -> list[Spec]:
    if len(shape) != 4:
        raise QuantsimError(f"cannot lower {source} (patch merging): input of shape {shape} (only (B, H, W, C))")
    _, h, w, c = (int(v) for v in shape)
    nodes, cur = [], inp
    if h % 2 or w % 2:
        nodes.append(Spec(f"{name}.pad", "pad", [cur], {"pads": [[0, 0], [0, h % 2], [0, w % 2], [0, 0]]}))
        cur, h, w = f"{name}.pad", h + h % 2, w + w % 2
    nodes += [Spec(f"{name}.phases", "reshape", [cur], {"shape": [-1, h // 2, 2, w // 2, 2, c]}),
              Spec(f"{name}.order", "permute", [f"{name}.phases"], {"perm": [0, 1, 3, 4, 2, 5]}),
              Spec(name, "reshape", [f"{name}.order"], {"shape": [-1, h // 2, w // 2, 4 * c]})]
    return nodes


def shifted_window_mask(padded_hw: tuple[int, int], window: list[int], shift: list[int]) -> torch.Tensor:
    """(nW, N, N) bool, true where query and key lie in different regions of the rolled map: the
    entries torchvision's shifted_window_attention sets to -100 (its region labelling)."""
    ph, pw = padded_hw
    labels = torch.zeros(ph, pw)
    count = 0
    for hs in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for ws in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            labels[hs[0]:hs[1], ws[0]:ws[1]] = count
            count += 1
    labels = labels.view(ph // window[0], window[0], pw // window[1], window[1]).permute(0, 2, 1, 3)
    labels = labels.reshape(-1, window[0] * window[1])
    return (labels.unsqueeze(1) - labels.unsqueeze(2)) != 0


def window_attention_nodes(name: str, inp: str, shape: tuple[int, ...], *, qkv_weight, qkv_bias, proj_weight,
                           proj_bias, position_bias, logit_scale, window: list[int], heads: int, shift: list[int],
                           source: str) -> list[Spec]:
    """torchvision's shifted_window_attention on an input of `shape` (B, H, W, C) as FloatGraph nodes."""
    if len(shape) != 4:
        raise QuantsimError(f"cannot lower {source} (shifted_window_attention): input of shape {shape}")
    _, h, w, c = (int(v) for v in shape)
    ws0, ws1 = (int(v) for v in window)
    pad_b, pad_r = (ws0 - h % ws0) % ws0, (ws1 - w % ws1) % ws1
    ph, pw = h + pad_b, w + pad_r
    shift = [0 if ws0 >= ph else int(shift[0]), 0 if ws1 >= pw else int(shift[1])]  # torchvision's rule
    nh, nw, n, d = ph // ws0, pw // ws1, ws0 * ws1, c // heads
    nodes: list[Spec] = []

    def add(suffix, op, inputs, attrs=None, weight=None, bias=None):
        nodes.append(Spec(f"{name}.{suffix}" if suffix else name, op, inputs, attrs or {}, weight, bias))
        return nodes[-1].name

    cur = inp
    if pad_b or pad_r:
        cur = add("pad", "pad", [cur], {"pads": [[0, 0], [0, pad_b], [0, pad_r], [0, 0]]})
    if sum(shift) > 0:
        cur = add("shift", "roll", [cur], {"shifts": [-shift[0], -shift[1]], "dims": [1, 2]})
    cur = add("windows.split", "reshape", [cur], {"shape": [-1, nh, ws0, nw, ws1, c]})
    cur = add("windows.order", "permute", [cur], {"perm": [0, 1, 3, 2, 4, 5]})
    cur = add("windows", "reshape", [cur], {"shape": [-1, nh * nw, n, c]})
    if logit_scale is not None and qkv_bias is not None:  # v2: the key has no bias (torchvision zeroes it)
        qkv_bias[c:2 * c] = 0
    qkv = add("qkv", "linear", [cur], {}, qkv_weight, qkv_bias)
    qkv = add("qkv.heads", "reshape", [qkv], {"shape": [-1, nh * nw, n, 3, heads, d]})
    q, k, v = (add(part, "permute", [add(f"{part}.take", "take", [qkv], {"axis": 3, "index": i})],
                   {"perm": [0, 1, 3, 2, 4]}) for i, part in enumerate("qkv"))
    if logit_scale is None:
        logits = add("scores", "matmul", [q, k], {"alpha": float(d) ** -0.5, "transpose_b": True})
    else:
        # F.normalize's x / max(‖x‖, 1e-12) as x / sqrt(‖x‖² + eps), eps = (1e-12)²: equal for every x != 0
        qn = add("q.normalize", "l2norm", [q], {"eps": 1e-24})
        kn = add("k.normalize", "l2norm", [k], {"eps": 1e-24})
        per_head = torch.clamp(logit_scale.double(), max=math.log(100.0)).exp().reshape(-1)
        logits = add("scores", "matmul", [qn, kn], {"alpha": [float(a) for a in per_head], "alpha_axis": 2,
                                                    "transpose_b": True})
    bias = position_bias.reshape(heads, n, n)[None]  # broadcast over the windows
    logits = add("scores.bias", "add_const", [logits], {}, bias.clone())
    mask = shifted_window_mask((ph, pw), [ws0, ws1], shift).unsqueeze(1) if sum(shift) > 0 else None
    attn = add("softmax", "softmax", [logits], {}, mask)
    cur = add("attn_v", "matmul", [attn, v], {"alpha": 1.0, "transpose_b": False})
    cur = add("merge.order", "permute", [cur], {"perm": [0, 1, 3, 2, 4]})
    cur = add("merge", "reshape", [cur], {"shape": [-1, nh * nw, n, c]})
    cur = add("proj", "linear", [cur], {}, proj_weight, proj_bias)
    cur = add("reverse.split", "reshape", [cur], {"shape": [-1, nh, nw, ws0, ws1, c]})
    cur = add("reverse.order", "permute", [cur], {"perm": [0, 1, 3, 2, 4, 5]})
    cur = add("reverse", "reshape", [cur], {"shape": [-1, ph, pw, c]})
    if sum(shift) > 0:
        cur = add("unshift", "roll", [cur], {"shifts": shift, "dims": [1, 2]})
    if pad_b:
        cur = add("unpad.h", "slice", [cur], {"axis": 1, "start": 0, "stop": h})
    if pad_r:
        cur = add("unpad.w", "slice", [cur], {"axis": 2, "start": 0, "stop": w})
    add("", "identity", [cur])  # the call's own name holds its output
    return nodes


def _layernorm_spec(name: str, inp: str, m: torch.nn.Module, source: str) -> Spec:
    if not isinstance(m, torch.nn.LayerNorm) or len(m.normalized_shape) != 1:
        raise QuantsimError(f"cannot lower {source}: a {type(m).__name__} (only a LayerNorm over the last axis)")
    c = m.normalized_shape[0]
    gamma = m.weight.detach().clone() if m.weight is not None else torch.ones(c)
    beta = m.bias.detach().clone() if m.bias is not None else torch.zeros(c)
    return Spec(name, "layernorm", [inp], {"eps": float(m.eps)}, gamma, beta)


def _linear_spec(name: str, inp: str, m: torch.nn.Linear) -> Spec:
    return Spec(name, "linear", [inp], {}, m.weight.detach().clone(),
                m.bias.detach().clone() if m.bias is not None else None)


def _timm_v2_position_bias(attn, n: int) -> torch.Tensor:
    """timm v2's relative position bias (heads, N, N): 16·sigmoid(cpb_mlp(coordinates)) at each pair's index."""
    table = attn.cpb_mlp(attn.relative_coords_table).view(-1, attn.num_heads)
    return 16 * torch.sigmoid(table[attn.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1))


def timm_block_nodes(name: str, m, inp: str, shape: tuple[int, ...]) -> list[Spec]:
    """timm's SwinTransformerBlock on (B, H, W, C): v1 x + attn(norm1(x)), then x + mlp(norm2(x));
    v2 (SwinTransformerV2Block, post-norm, cosine attention) x + norm1(attn(x)), then x + norm2(mlp(x)).

    timm rolls before it pads, torchvision pads before it rolls; the two agree where no padding is
    needed, so sizes that are not whole windows are refused. The window attention is torchvision's
    (window_attention_nodes): the same qkv layout (N, 3, heads, D), scale D^-0.5, the relative
    position bias (timm's own _get_rel_pos_bias, evaluated once) and the same shift-mask regions
    (checked against timm's -100 / 0 mask, which is left out of the softmax as for torchvision)."""
    src = name
    if len(shape) != 4:
        raise QuantsimError(f"cannot lower {src} (timm Swin block): input of shape {shape} (only (B, H, W, C))")
    _, h, w, c = (int(v) for v in shape)
    win, shift = [int(v) for v in m.window_size], [int(v) for v in m.shift_size]
    if h % win[0] or w % win[1]:
        raise QuantsimError(f"cannot lower {src} (timm Swin block): a {h}x{w} map is not a whole number of "
                            f"{win[0]}x{win[1]} windows (choose an input size that is)")
    attn = m.attn
    for part in ("drop_path1", "drop_path2"):
        dp = getattr(m, part)
        if not (isinstance(dp, torch.nn.Identity) or type(dp).__name__ == "DropPath"):
            raise QuantsimError(f"cannot lower {src}.{part}: {type(dp).__name__}")
    from timm.layers import Mlp as _TimmMlp  # a timm block: timm is imported
    from timm.layers.activations import GELU as _TimmGELU
    from timm.models.swin_transformer_v2 import SwinTransformerV2Block as _TimmSwinV2Block

    mlp = m.mlp
    act_ok = isinstance(mlp.act, _TimmGELU) or (isinstance(mlp.act, torch.nn.GELU) and mlp.act.approximate == "none")
    if (not isinstance(mlp, _TimmMlp) or not act_ok or not isinstance(mlp.norm, torch.nn.Identity)
            or not isinstance(mlp.fc1, torch.nn.Linear)):
        raise QuantsimError(f"cannot lower {src}.mlp: only timm's Mlp with the exact GELU and no norm")
    v2 = isinstance(m, _TimmSwinV2Block)
    n = win[0] * win[1]
    with torch.no_grad():
        bias = _timm_v2_position_bias(attn, n) if v2 else attn._get_rel_pos_bias()
        bias = bias.detach().reshape(attn.num_heads, n, n)
        if v2 and attn.q_bias is not None:  # timm's q / zero k / v biases, as torchvision's v2 zeroes k's
            qkv_bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)).detach().clone()
        else:
            qkv_bias = None if attn.qkv.bias is None else attn.qkv.bias.detach().clone()
        mask = m.get_attn_mask(torch.zeros(1, h, w, 1)) if getattr(m, "dynamic_mask", False) else m.attn_mask
    if any(shift):
        expected = shifted_window_mask((h, w), win, shift)
        if mask is None or tuple(mask.shape) != tuple(expected.shape) or not torch.equal(mask != 0, expected):
            raise QuantsimError(f"cannot lower {src} (timm Swin block): its attention mask is not the shifted-window "
                                "regions' mask")
    if not v2 and abs(float(attn.scale) - (c // attn.num_heads) ** -0.5) > 1e-12:
        raise QuantsimError(f"cannot lower {src}.attn: a scale other than head_dim^-0.5")
    nodes = [] if v2 else [_layernorm_spec(f"{name}.norm1", inp, m.norm1, f"{src}.norm1")]
    # v2's logit scale: timm clamps at ln(1 / 0.01), torchvision (window_attention_nodes) at ln 100, the same
    nodes += window_attention_nodes(f"{name}.attn", nodes[-1].name if nodes else inp, shape,
                                    qkv_weight=attn.qkv.weight.detach().clone(), qkv_bias=qkv_bias,
                                    proj_weight=attn.proj.weight.detach().clone(),
                                    proj_bias=None if attn.proj.bias is None else attn.proj.bias.detach().clone(),
                                    position_bias=bias, logit_scale=attn.logit_scale.detach() if v2 else None,
                                    window=win, heads=int(attn.num_heads), shift=shift, source=f"{src}.attn")
    if v2:
        nodes.append(_layernorm_spec(f"{name}.norm1", nodes[-1].name, m.norm1, f"{src}.norm1"))
    nodes.append(Spec(f"{name}.add1", "add", [inp, nodes[-1].name], {}))
    mlp_in = f"{name}.add1"
    if not v2:
        nodes.append(_layernorm_spec(f"{name}.norm2", mlp_in, m.norm2, f"{src}.norm2"))
        mlp_in = f"{name}.norm2"
    nodes += [_linear_spec(f"{name}.mlp.fc1", mlp_in, mlp.fc1),
              Spec(f"{name}.mlp.act", "gelu", [f"{name}.mlp.fc1"], {}),
              _linear_spec(f"{name}.mlp.fc2", f"{name}.mlp.act", mlp.fc2)]
    if v2:
        nodes.append(_layernorm_spec(f"{name}.norm2", f"{name}.mlp.fc2", m.norm2, f"{src}.norm2"))
    nodes.append(Spec(name, "add", [f"{name}.add1", nodes[-1].name], {}))
    return nodes

"""timm's MobileViT block, traced batch-first at capture's static input shape.

timm's ``MobileVitBlock.forward`` cannot be traced by torch.fx as written: it branches on the
traced sizes (``if new_h != H``: bilinear resampling to whole patches), and its unfold folds the
patch pixels into the batch axis, ``(B, C, H, W) -> (B * P, N, C)`` (P = ph·pw pixels per patch,
N = nh·nw patches), which the integer program cannot hold (every tensor keeps the batch axis
first: the executors split and join batches there).

Capture happens at one fixed input shape, so the sizes are plain numbers there: a first run at
that shape records each block's map size (C, H, W) after ``conv_1x1``, the branch is decided in
Python (maps that are not whole patches are refused: the integer program has no bilinear
resampling), and for the duration of the trace each block's ``forward`` is replaced by
``block_forward``, the same computation with the patch axis kept after the batch axis:

- unfold: (B, C, H, W) -> reshape (B, C, nh, ph, nw, pw) -> permute (B, ph, pw, nh, nw, C)
  -> reshape (B, P, N, C); token (p, n) is timm's item b·P + p, row n: the same values;
- each timm ``Block`` of ``block.transformer`` traced as it is (x + attn(norm1(x)), then
  x + mlp(norm2(x)); timm's Mlp with its SiLU: the lookup-table op), its attention's forward replaced
  by ``attention_forward``, timm's unfused attention over the extra patch axis: qkv -> reshape (B, P, N, 3, heads, D) -> q, k, v
  per head (take, permute to (B, P, heads, N, D)) -> q·scale·kᵀ -> softmax -> ·v -> permute,
  reshape (B, P, N, C) -> proj: capture's ViT path folds the scale and kᵀ into the matmul;
- ``block.norm``, then fold: the unfold's inverse, reshape (B, ph, pw, nh, nw, C) -> permute
  (B, C, nh, ph, nw, pw) -> reshape (B, C, H, W);
- ``conv_proj``, then ``conv_fusion`` of ``torch.cat((shortcut, x), dim=1)`` (capture's concat).

tests/test_mobilevit.py checks the captured float graph against timm's own forward.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from quantsim.errors import QuantsimError


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if "timm" not in sys.modules:  # no model holds a timm block then (and importing timm costs seconds)
        return []
    try:
        from timm.models.mobilevit import MobileVitBlock
    except ImportError:  # pragma: no cover
        return []
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MobileVitBlock)]


def _check_transformer(name: str, block: nn.Module) -> None:
    """Only the layers block_forward rewrites: timm ViT Blocks with plain attention."""
    from timm.layers import Attention as _TimmAttention  # a MobileViT block: timm is imported
    from timm.models.vision_transformer import Block as _TimmBlock

    for i, blk in enumerate(block.transformer):
        where = f"{name}.transformer.{i}"
        if type(blk) is not _TimmBlock or type(blk.attn) is not _TimmAttention:
            raise QuantsimError(f"cannot lower {where} ({type(blk).__name__}): only timm's ViT Block with its "
                                "Attention inside a MobileViT block")
        attn = blk.attn
        plain = all(isinstance(getattr(attn, k, None), (nn.Identity, type(None))) for k in ("q_norm", "k_norm", "norm"))
        if not plain or getattr(attn, "gate", None) is not None:
            raise QuantsimError(f"cannot lower {where}.attn: attention with q/k norms, an output norm or a gate")


def _static_sizes(model: nn.Module, blocks: list[tuple[str, nn.Module]],
                  input_shape: tuple[int, ...]) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of every block's map after conv_1x1, from one run at capture's input shape."""
    sizes: dict[str, tuple[int, int, int]] = {}
    hooks = [m.conv_1x1.register_forward_hook(
        lambda _m, _i, out, name=name: sizes.__setitem__(name, tuple(int(v) for v in out.shape[1:])))
        for name, m in blocks]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return sizes


def attention_forward(attn: nn.Module, patch_area: int, patches: int):
    """timm's Attention (unfused) on (B, P, N, C), the P patch pixels an axis of their own."""
    heads, head_dim = attn.num_heads, attn.head_dim

    def forward(x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise QuantsimError("cannot lower a MobileViT block's attention with a mask")
        qkv = attn.qkv(x).reshape(-1, patch_area, patches, 3, heads, head_dim)
        q, k, v = qkv.unbind(3)
        q, k, v = q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3)  # (B, P, heads, N, D)
        q, k = attn.q_norm(q), attn.k_norm(k)
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        y = attn.attn_drop(scores.softmax(dim=-1)) @ v
        y = attn.norm(y.transpose(2, 3).reshape(-1, patch_area, patches, heads * head_dim))
        return attn.proj_drop(attn.proj(y))

    return forward


def block_forward(block: nn.Module, name: str, size: tuple[int, int, int]):
    """`block`'s forward for a conv_1x1 map of `size` (C, H, W), with the batch axis kept first
    (its transformer's attention layers: attention_forward)."""
    c, h, w = size
    ph, pw = (int(v) for v in block.patch_size)
    if h % ph or w % pw:
        raise QuantsimError(f"cannot lower {name} (MobileVitBlock): its {h}x{w} map is not a whole number of "
                            f"{ph}x{pw} patches (timm resamples it bilinearly; choose an input size that is)")
    nh, nw = h // ph, w // pw
    area, patches = ph * pw, nh * nw

    def forward(x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = block.conv_1x1(block.conv_kxk(x))
        x = x.reshape(-1, c, nh, ph, nw, pw).permute(0, 3, 5, 2, 4, 1).reshape(-1, area, patches, c)
        x = block.norm(block.transformer(x))
        x = x.reshape(-1, ph, pw, nh, nw, c).permute(0, 5, 3, 1, 4, 2).reshape(-1, c, h, w)
        x = block.conv_proj(x)
        if block.conv_fusion is not None:
            x = block.conv_fusion(torch.cat((shortcut, x), dim=1))
        return x

    return forward, [(blk.attn, attention_forward(blk.attn, area, patches)) for blk in block.transformer]


@contextmanager
def batch_first_blocks(model: nn.Module, input_shape: tuple[int, ...] | None) -> Iterator[None]:
    """For the duration: every MobileVitBlock of `model` (and its attention layers) runs block_forward at
    `input_shape`."""
    blocks = _blocks(model)
    if blocks and input_shape is None:
        raise QuantsimError(f"cannot trace {blocks[0][0]} (MobileVitBlock) without the capture's input shape")
    patched = []
    try:
        if blocks:
            sizes = _static_sizes(model, blocks, tuple(input_shape))
            for name, m in blocks:
                if name not in sizes:
                    raise QuantsimError(f"cannot lower {name} (MobileVitBlock): not run by the model's forward")
                _check_transformer(name, m)
                forward, attentions = block_forward(m, name, sizes[name])
                for module, fn in [(m, forward), *attentions]:
                    module.forward = fn
                    patched.append(module)
        yield
    finally:
        for m in patched:
            del m.forward  # the class's own forward again

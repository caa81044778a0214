"""Vision Transformers of the zoo: the CIFAR ViT with DeiT-Tiny's width and depth, and the
timm ViT names the ViT path targets.

``vit_tiny_patch4_32``: timm's VisionTransformer at DeiT-Tiny's width and depth (embed 192,
depth 12, 3 heads, MLP ratio 4, class token, learned position embedding, LayerNorm eps 1e-6,
exact-erf GELU) on 32x32 images cut into 4x4 patches (8x8 = 64 patches + the class token =
65 tokens), 10 classes; about 5.36M parameters. Its preprocessing normalises with the
CIFAR-10 training-set mean and std.

Registry entry for quantsim.zoo.models.ARCHS (one line, with ``from quantsim import vit``):
    "vit_tiny_patch4_32": ArchSpec(vit.vit_tiny_patch4_32, vit.CIFAR10_VIT_PRE, "cifar10"),
"""
from __future__ import annotations

from typing import Any

from torch import nn

from quantsim.zoo.preprocess import Preprocess

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_VIT_PRE = Preprocess((3, 32, 32), CIFAR10_MEAN, CIFAR10_STD)

# DeiT-Tiny's shape (timm deit_tiny_patch16_224).
DEIT_TINY_SHAPE = {"embed_dim": 192, "depth": 12, "num_heads": 3, "mlp_ratio": 4.0}

# timm ViTs the ViT path (capture, lowering, ranking-aware PTQ) targets, by name.
TARGET_TIMM_VITS = ("deit_tiny_patch16_224", "deit_small_patch16_224", "vit_tiny_patch16_224")

# Project ViTs: name -> (factory, preprocess, dataset hint), the shape of models.ARCHS entries.
CIFAR_VITS: dict[str, tuple[Any, Preprocess, str]] = {}


def vit_tiny_patch4_32(num_classes: int = 10, img_size: int = 32, patch_size: int = 4,
                       drop_rate: float = 0.0, drop_path_rate: float = 0.0, **kwargs: Any) -> nn.Module:
    """DeiT-Tiny width/depth ViT for 32x32 images (timm VisionTransformer), randomly initialised.

    drop_rate / drop_path_rate are for training (dropout, stochastic depth); they do nothing
    in eval mode, so a checkpoint loads into the default model.
    """
    from timm.models.vision_transformer import VisionTransformer  # deferred: a heavy import that only timm-model paths need
    shape = {**DEIT_TINY_SHAPE, **{k: kwargs.pop(k) for k in list(kwargs) if k in DEIT_TINY_SHAPE}}
    model = VisionTransformer(img_size=img_size, patch_size=patch_size, num_classes=num_classes,
                              drop_rate=drop_rate, drop_path_rate=drop_path_rate, **shape, **kwargs)
    return model


CIFAR_VITS["vit_tiny_patch4_32"] = (vit_tiny_patch4_32, CIFAR10_VIT_PRE, "cifar10")


def vit_tiny_patch8_32(num_classes: int = 10, img_size: int = 32, patch_size: int = 8,
                       drop_rate: float = 0.0, drop_path_rate: float = 0.0, **kwargs: Any) -> nn.Module:
    """The same DeiT-Tiny width/depth ViT with 8x8 patches (4x4 = 16 patches + class token).

    Why it exists: a quarter of the tokens makes training and evaluation about 4x cheaper,
    which is what lets the trained CIFAR ViT be made on a 2-core CPU; Hassani et al. 2021
    (ViT-Lite-7/8 vs 7/4 on CIFAR-10) measure 8x8 patches within a point of 4x4.
    """
    return vit_tiny_patch4_32(num_classes=num_classes, img_size=img_size, patch_size=patch_size,
                              drop_rate=drop_rate, drop_path_rate=drop_path_rate, **kwargs)


CIFAR_VITS["vit_tiny_patch8_32"] = (vit_tiny_patch8_32, CIFAR10_VIT_PRE, "cifar10")


def timm_vit_names(available_only: bool = True) -> list[str]:
    """The targeted timm ViT names (those this timm knows, unless available_only=False)."""
    if not available_only:
        return list(TARGET_TIMM_VITS)
    import timm  # deferred: a heavy import that only timm-model paths need
    return [n for n in TARGET_TIMM_VITS if timm.is_model(n)]


def is_vit(model: nn.Module) -> bool:
    """True for timm VisionTransformer models (what the ViT capture path handles)."""
    from timm.models.vision_transformer import VisionTransformer  # deferred: a heavy import that only timm-model paths need
    return isinstance(model, VisionTransformer)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""Per-model input preprocessing: one small, printable config object per model.

Like timm's ``pretrained_cfg``, every model in the zoo carries how its inputs must be
prepared (input size, normalisation, resize/crop policy, interpolation); the data set
builders only ask this object for a transform.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import torch
from PIL import Image

from quantsim.errors import QuantsimError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# torchvision's InterpolationMode members, by their lower-case names (torchvision itself is
# imported only where a transform is built: importing it costs a Ray worker over a second)
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


class _ToRGB:
    """PIL image in any mode (L, RGBA, P, CMYK) -> RGB."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


class _ResizeIfNeeded:
    """Resize straight to (H, W), but only when the image is not that size already."""

    def __init__(self, size: tuple[int, int], interpolation):
        from torchvision import transforms as T

        self.size = size
        self.resize = T.Resize(size, interpolation=interpolation, antialias=True)

    def __call__(self, img: Image.Image) -> Image.Image:
        h, w = self.size
        if img.size == (w, h):  # PIL size is (W, H)
            return img
        return self.resize(img)

    def __repr__(self) -> str:
        return f"ResizeIfNeeded(size={self.size})"


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its images: PIL RGB image -> float32 CHW tensor, normalised.

    ``resize`` set: resize the short side to ``resize`` then center-crop to (H, W)
    (the ImageNet "resize 256, crop 224" policy). ``resize`` None: resize straight to
    (H, W), and only when the image is not already that size (CIFAR 32x32 images pass
    through untouched).
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.input_size)
        if len(size) != 3 or min(size) <= 0:
            raise QuantsimError(f"preprocess input_size must be (C, H, W) with positive sizes, got {self.input_size!r}")
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != size[0] or len(self.std) != size[0]:
            raise QuantsimError(
                f"preprocess mean/std need {size[0]} values (one per channel), got {len(self.mean)}/{len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise QuantsimError(f"preprocess std must be positive, got {self.std}")
        if self.interpolation not in _INTERPOLATIONS:
            raise QuantsimError(
                f"unknown interpolation {self.interpolation!r}; known: {', '.join(_INTERPOLATIONS)}")
        if self.resize is not None:
            object.__setattr__(self, "resize", int(self.resize))
            if self.resize < min(size[1], size[2]):
                raise QuantsimError(f"preprocess resize {self.resize} is smaller than the crop {size[1:]}")

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> float32 CHW tensor (RGB, scaled to [0, 1], normalised)."""
        from torchvision import transforms as T

        interp = T.InterpolationMode[self.interpolation.upper()]
        _, h, w = self.input_size
        steps: list[Any] = [_ToRGB()]
        if self.resize is not None:
            steps += [T.Resize(self.resize, interpolation=interp, antialias=True), T.CenterCrop((h, w))]
        else:
            steps.append(_ResizeIfNeeded((h, w), interp))
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)

    def to_json(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Preprocess":
        try:
            return cls(input_size=tuple(d["input_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                       resize=d.get("resize"), interpolation=d.get("interpolation", "bilinear"))
        except (KeyError, TypeError, ValueError) as e:
            raise QuantsimError(f"preprocess config is malformed ({e}): {dict(d)!r}") from None

    @classmethod
    def from_timm_cfg(cls, cfg: Mapping[str, Any] | Any) -> "Preprocess":
        """Map a timm pretrained_cfg (dict or PretrainedCfg) onto a Preprocess."""
        if not isinstance(cfg, Mapping):
            cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else vars(cfg)
        input_size = tuple(cfg.get("input_size", (3, 224, 224)))
        crop_pct = cfg.get("crop_pct") or 0.875
        crop_mode = cfg.get("crop_mode", "center")
        resize = int(input_size[1] / crop_pct) if crop_mode in (None, "center") else None
        interp = cfg.get("interpolation") or "bilinear"
        if interp not in _INTERPOLATIONS:
            interp = "bilinear"
        return cls(input_size=input_size, mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
                   std=tuple(cfg.get("std", IMAGENET_STD)), resize=resize, interpolation=interp)


def imagenet_preprocess(size: int = 224, resize: int | None = 256, interpolation: str = "bilinear") -> Preprocess:
    return Preprocess((3, size, size), IMAGENET_MEAN, IMAGENET_STD, resize=resize, interpolation=interpolation)

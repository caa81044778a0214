"""Train or fine-tune a model of the zoo on a data spec, resumably.

    python -m quantsim.train vit_tiny_patch4_32 --data cifar10:../shared/data/cifar10 \\
        --epochs 100 --out runs/vit --max-minutes 50 --resume

ARCH is a zoo name (quantsim.zoo.models.ARCHS, the project ViTs of quantsim.zoo.vit, or any timm
name); ``--init FILE`` starts from a checkpoint (fine-tuning). Training uses the data
spec's training split (role 'calib'), evaluates on its test split after every epoch, and
writes into --out:

- ``last.pt``          our checkpoint format (quantsim.zoo.models.save_checkpoint), loadable by
                       load_model; rewritten every epoch and every --save-every-steps steps
- ``last.state.pt``    what resuming needs besides: optimizer, scheduler, epoch/step
                       counters, RNG states, the hyperparameters, and a copy of the weights
                       (so that the pair is consistent even if a write is interrupted)
- ``log.jsonl``        one JSON object per line: 'start', 'step' (every --log-every steps),
                       'epoch' (train loss/accuracy, test loss/accuracy, seconds), 'stop', 'done'
- ``model.pt``         the final weights (fp16 with --half: a small checkpoint to commit;
                       load_model casts them back to float32), with ``recipe.json``.

Determinism and resuming: the batch order of epoch e is a permutation drawn from
(seed, e); each image's augmentation (random crop with 4-pixel zero padding, horizontal
flip) is drawn from (seed, e, image index); dropout/stochastic depth use torch's RNG,
whose state is saved. ``--resume`` continues mid-epoch at the next step, and on the CPU
reproduces an uninterrupted run bit for bit. ``--resume`` without a saved state starts
fresh, so a chunked CPU run is one loop:
``until python -m quantsim.train ... --max-minutes 50 --resume; do :; done``
(exit 0: finished; 3: stopped by --max-minutes or --stop-after-steps with a checkpoint
written; 2: bad input, one line).

Hyperparameters (epochs, lr, batch size, ...) are saved in the state; on --resume they
come from there, and giving a different value is an error.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from quantsim.zoo.datasets import build_dataset, deterministic_subset
from quantsim.zoo.metrics import hits
from quantsim.zoo import models, vit
from quantsim.zoo.models import save_checkpoint, save_torch_atomic
from quantsim.errors import QuantsimError
from reports.io import write_text_atomic
from quantsim.zoo.preprocess import Preprocess

STATE_FORMAT = "quantsim-train-state/1"
EXIT_DONE, EXIT_ERROR, EXIT_STOPPED = 0, 2, 3

# Hyperparameters: fixed for a run (saved, checked on --resume), with their defaults.
HYPER_DEFAULTS: dict[str, Any] = {
    "data": None, "epochs": 10, "batch_size": 128, "lr": 1e-3, "min_lr_ratio": 0.01, "weight_decay": 0.05,
    "warmup_epochs": 1.0, "label_smoothing": 0.0, "clip_grad": 1.0, "seed": 0, "augment": "crop-flip",
    "drop_path": None, "arch_kwargs": "{}", "init": None, "train_limit": None, "amp": "auto",
}


# ----------------------------------------------------------------------------- models

def resolve_arch(arch: str) -> tuple[Callable[..., nn.Module], Preprocess]:
    """(factory(**kwargs) -> model, preprocess) for a zoo name, project ViT or timm name."""
    if arch in models.ARCHS:
        spec = models.ARCHS[arch]
        return spec.factory, spec.preprocess
    if arch in vit.CIFAR_VITS:
        factory, pre, _ = vit.CIFAR_VITS[arch]
        return factory, pre
    model = models.create_model(arch)  # timm name, or a clear error for an unknown one
    pre, _ = models._arch_preprocess(arch, model)
    return (lambda **kw: models.create_model(arch, **kw)), pre


def build_model(arch: str, arch_kwargs: dict, drop_path: float | None) -> tuple[nn.Module, Preprocess]:
    factory, pre = resolve_arch(arch)
    kwargs = dict(arch_kwargs)
    if drop_path:
        kwargs["drop_path_rate"] = float(drop_path)
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise QuantsimError(f"bad arguments {kwargs} for architecture {arch!r}: {e}") from None
    return model.float(), pre


# ----------------------------------------------------------------------------- data

class AugmentedDataset(Dataset):
    """Wraps a dataset of un-normalised [0, 1] CHW tensors: deterministic augmentation per
    (seed, epoch, index), then normalisation. Set ``epoch`` before building each loader."""

    def __init__(self, base: Dataset, mean, std, seed: int, augment: str, pad: int = 4):
        self.base, self.seed, self.augment, self.pad, self.epoch = base, int(seed), augment, pad, 0
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.base[i]
        if self.augment == "crop-flip":
            rng = np.random.default_rng([self.seed, self.epoch, int(i)])
            dy, dx = (int(v) for v in rng.integers(0, 2 * self.pad + 1, 2))
            flip = bool(rng.integers(0, 2))
            h, w = x.shape[-2:]
            x = F.pad(x, (self.pad,) * 4)[:, dy:dy + h, dx:dx + w]
            if flip:
                x = x.flip(-1)
        return (x - self.mean) / self.std, y


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of epoch `epoch`: a permutation from (seed, epoch), full batches only."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    perm = torch.randperm(n, generator=g).tolist()
    bs = min(batch_size, n)
    return [perm[i:i + bs] for i in range(0, n - bs + 1, bs)]


def _raw_preprocess(pre: Preprocess) -> Preprocess:
    """Same geometry, no normalisation (augmentation works on [0, 1] pixels)."""
    c = pre.input_size[0]
    return Preprocess(pre.input_size, (0.0,) * c, (1.0,) * c, resize=pre.resize, interpolation=pre.interpolation)


# ----------------------------------------------------------------------------- schedule

def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine decay to min_ratio at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith((".bias", "pos_embed", "cls_token", "dist_token")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------- files

class JsonLog:
    def __init__(self, path: Path):
        self.path = path

    def write(self, **record: Any) -> None:
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _cpu_state_dict(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu").clone()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v
    return out


# ----------------------------------------------------------------------------- training

@dataclass
class Progress:
    epoch: int = 0          # the epoch in progress (0-based)
    step_in_epoch: int = 0  # steps of that epoch already done
    global_step: int = 0
    best_acc: float = -1.0
    loss_sum: float = 0.0   # running training loss/accuracy of the epoch in progress
    correct: int = 0
    seen: int = 0


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype) -> tuple[float, float]:
    """(mean loss, top-1 %) over a loader; labels < 0 are skipped."""
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device)
            keep = y >= 0
            if not bool(keep.any()):
                continue
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
            logits = logits.float()[keep]
            loss_sum += float(F.cross_entropy(logits, y[keep], reduction="sum"))
            correct += hits(logits.argmax(-1)[:, None].cpu(), y[keep], 1)
            total += int(keep.sum())
    return (loss_sum / max(total, 1), 100.0 * correct / max(total, 1))


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise QuantsimError(f"--device {name}: no CUDA device is available")
    return torch.device(name)


def _hyper_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in HYPER_DEFAULTS}


def _merge_hyper(given: dict, saved: dict | None) -> dict:
    if saved is None:
        return {k: (HYPER_DEFAULTS[k] if v is None else v) for k, v in given.items()}
    diffs = [f"--{k.replace('_', '-')} {given[k]!r} (saved {saved.get(k)!r})"
             for k, v in given.items() if v is not None and v != saved.get(k)]
    if diffs:
        raise QuantsimError("--resume continues the saved run; these differ from it: " + ", ".join(diffs))
    return dict(saved)


def train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path, ckpt_path = out / "last.state.pt", out / "last.pt"
    saved = None
    if args.resume and state_path.exists():
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise QuantsimError(f"{state_path} is not a {STATE_FORMAT} training state")
        if saved["arch"] != args.arch:
            raise QuantsimError(f"{state_path} trains {saved['arch']!r}, not {args.arch!r}")
    elif not args.resume and state_path.exists():
        raise QuantsimError(f"{out} already holds a training run; pass --resume to continue it "
                            f"or choose another --out")
    hp = _merge_hyper(_hyper_from_args(args), saved["hyper"] if saved else None)
    if hp["data"] is None:
        raise QuantsimError("--data is required (e.g. cifar10:DIR)")
    if hp["epochs"] < 1 or hp["batch_size"] < 1:
        raise QuantsimError("--epochs and --batch-size must be positive")
    try:
        arch_kwargs = json.loads(hp["arch_kwargs"])
        assert isinstance(arch_kwargs, dict)
    except (ValueError, AssertionError):
        raise QuantsimError(f"--arch-kwargs must be a JSON object, got {hp['arch_kwargs']!r}") from None

    torch.manual_seed(hp["seed"])
    device = _pick_device(args.device)
    model, pre = build_model(args.arch, arch_kwargs, hp["drop_path"])
    if hp["init"] and saved is None:  # our checkpoint, a plain state dict or .safetensors
        models._load_state_dict_checked(model, models._load_weights_file(Path(hp["init"])), hp["init"])
    model.to(device)

    train_base = build_dataset(hp["data"], _raw_preprocess(pre), role="calib")
    if hp["train_limit"]:
        train_base = deterministic_subset(train_base, hp["train_limit"], hp["seed"])
    train_ds = AugmentedDataset(train_base, pre.mean, pre.std, hp["seed"], hp["augment"])
    test_ds = build_dataset(hp["data"], pre, role="eval")
    if args.eval_limit:
        test_ds = deterministic_subset(test_ds, args.eval_limit, 0)
    test_loader = DataLoader(test_ds, batch_size=max(hp["batch_size"], 256), shuffle=False,
                             num_workers=args.workers, pin_memory=device.type == "cuda")

    n_train = len(train_ds)
    steps_per_epoch = len(epoch_batches(n_train, hp["batch_size"], hp["seed"], 0))
    total_steps = steps_per_epoch * hp["epochs"]
    warmup = int(round(hp["warmup_epochs"] * steps_per_epoch))
    opt = torch.optim.AdamW(_param_groups(model, hp["weight_decay"]), lr=hp["lr"], betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, warmup, hp["min_lr_ratio"]))
    amp_dtype = None
    # bf16 autocast: on by default on CUDA; on the CPU only when asked (--amp bf16), where
    # it pays on CPUs with native bf16 (AVX512-BF16/AMX: 1.3x on the project machine).
    if (device.type == "cuda" and hp["amp"] in ("auto", "bf16")) or hp["amp"] == "bf16":
        amp_dtype = torch.bfloat16
    prog = Progress()
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        prog = Progress(**saved["progress"])
        torch.set_rng_state(saved["rng"]["torch"])
        if device.type == "cuda" and saved["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(saved["rng"]["cuda"], device)

    log = JsonLog(out / "log.jsonl")
    log.write(event="start", arch=args.arch, resumed=saved is not None, device=str(device),
              threads=torch.get_num_threads(), n_train=n_train, n_test=len(test_ds),
              steps_per_epoch=steps_per_epoch, total_steps=total_steps, progress=vars(prog), hyper=hp)
    if not args.quiet:
        what = f"resuming at epoch {prog.epoch + 1} step {prog.step_in_epoch}" if saved else "starting"
        print(f"{args.arch}: {what}; {n_train} training images, {steps_per_epoch} steps/epoch x "
              f"{hp['epochs']} epochs, device {device}", file=sys.stderr)

    def save() -> None:
        save_checkpoint(ckpt_path, model, args.arch, arch_kwargs)
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        save_torch_atomic({"format": STATE_FORMAT, "arch": args.arch, "arch_kwargs": arch_kwargs,
                            "hyper": hp, "progress": vars(prog), "model": _cpu_state_dict(model),
                            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng},
                           state_path)

    t_start = time.monotonic()
    steps_this_run = 0
    while prog.epoch < hp["epochs"]:
        epoch = prog.epoch
        train_ds.epoch = epoch
        start_step = prog.step_in_epoch
        batches = epoch_batches(n_train, hp["batch_size"], hp["seed"], epoch)[start_step:]
        # Its own generator: creating a loader mid-epoch on resume must not draw from torch's RNG.
        loader = DataLoader(train_ds, batch_sampler=batches, num_workers=args.workers,
                            pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(hp["seed"] + epoch))
        model.train()
        t_epoch = time.monotonic()
        bar = None
        if not args.quiet and not args.no_progress:
            bar = tqdm(total=steps_per_epoch, initial=prog.step_in_epoch, desc=f"epoch {epoch + 1}/{hp['epochs']}",
                       file=sys.stderr, dynamic_ncols=True)
        stopped = None
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=hp["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if hp["clip_grad"]:
                nn.utils.clip_grad_norm_(model.parameters(), hp["clip_grad"])
            opt.step()
            sched.step()
            prog.step_in_epoch += 1
            prog.global_step += 1
            steps_this_run += 1
            lv = float(loss.detach())
            prog.loss_sum += lv * len(y)
            prog.correct += int((logits.argmax(-1) == y).sum())
            prog.seen += len(y)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{lv:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            if args.log_every and prog.global_step % args.log_every == 0:
                log.write(event="step", epoch=epoch + 1, step=prog.global_step, loss=lv,
                          lr=sched.get_last_lr()[0], seconds=round(time.monotonic() - t_epoch, 3))
            end_of_epoch = prog.step_in_epoch >= steps_per_epoch
            if args.save_every_steps and prog.global_step % args.save_every_steps == 0 and not end_of_epoch:
                save()
            if args.stop_after_steps and steps_this_run >= args.stop_after_steps and not end_of_epoch:
                stopped = f"--stop-after-steps {args.stop_after_steps}"
            elif args.max_minutes and time.monotonic() - t_start > 60 * args.max_minutes and not end_of_epoch:
                stopped = f"--max-minutes {args.max_minutes}"
            if stopped:
                break
        if bar is not None:
            bar.close()
        if stopped:
            save()
            log.write(event="stop", reason=stopped, progress=vars(prog))
            if not args.quiet:
                print(f"stopped ({stopped}) at epoch {epoch + 1} step {prog.step_in_epoch}/{steps_per_epoch}; "
                      f"continue with --resume", file=sys.stderr)
            return EXIT_STOPPED
        train_seconds = time.monotonic() - t_epoch
        test_loss, test_acc = evaluate(model, test_loader, device, amp_dtype)
        steps_timed = steps_per_epoch - start_step
        record = dict(event="epoch", epoch=epoch + 1, step=prog.global_step,
                      train_loss=prog.loss_sum / max(prog.seen, 1), train_acc=100.0 * prog.correct / max(prog.seen, 1),
                      train_images=prog.seen, test_loss=test_loss, test_acc=test_acc,
                      train_seconds=round(train_seconds, 3),
                      seconds_per_step=round(train_seconds / max(1, steps_timed), 4),
                      lr=sched.get_last_lr()[0])
        prog.epoch += 1
        prog.step_in_epoch = 0
        prog.loss_sum, prog.correct, prog.seen = 0.0, 0, 0
        prog.best_acc = max(prog.best_acc, test_acc)
        log.write(**record)
        if not args.quiet:
            print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.2f}%  "
                  f"test loss {test_loss:.4f} acc {test_acc:.2f}%  ({train_seconds:.0f} s)", file=sys.stderr)
        save()
        if (args.max_minutes and time.monotonic() - t_start > 60 * args.max_minutes
                and prog.epoch < hp["epochs"]):
            log.write(event="stop", reason=f"--max-minutes {args.max_minutes}", progress=vars(prog))
            return EXIT_STOPPED

    _finish(out, args, hp, arch_kwargs, model, prog, test_loader, device, amp_dtype, log)
    return EXIT_DONE


def _finish(out: Path, args, hp, arch_kwargs, model, prog, test_loader, device, amp_dtype, log) -> None:
    final = copy.deepcopy(model).to("cpu")
    if args.half:
        final = final.half()
    save_checkpoint(out / "model.pt", final, args.arch, arch_kwargs)
    test_loss, test_acc = evaluate(model, test_loader, device, amp_dtype)
    if args.half:  # the accuracy of the weights as committed (fp16, loaded back as fp32)
        reloaded = copy.deepcopy(model).to("cpu").float()
        reloaded.load_state_dict({k: v.float() if v.is_floating_point() else v
                                  for k, v in final.state_dict().items()})
        test_loss, test_acc = evaluate(reloaded.to(device), test_loader, device, amp_dtype)
    recipe = {"arch": args.arch, "arch_kwargs": arch_kwargs, "hyper": hp, "weights": "model.pt",
              "weights_dtype": "float16" if args.half else "float32", "epochs_done": prog.epoch,
              "global_steps": prog.global_step, "test_acc": test_acc, "test_loss": test_loss,
              "test_images": len(test_loader.dataset), "best_epoch_test_acc": prog.best_acc,
              "params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__,
              "python": platform.python_version(), "device": str(device),
              "command": "python -m quantsim.train " + " ".join(args.argv)}
    write_text_atomic(out / "recipe.json", json.dumps(recipe, indent=1) + "\n")
    log.write(event="done", test_acc=test_acc, test_loss=test_loss, weights=str(out / "model.pt"))
    if not args.quiet:
        print(f"done: test accuracy {test_acc:.2f}% -> {out / 'model.pt'}", file=sys.stderr)


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m quantsim.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arch", help="zoo architecture name (e.g. vit_tiny_patch4_32, cifar_resnet20, resnet18_cifar)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, log, final weights)")
    h = p.add_argument_group("hyperparameters (saved; fixed on --resume)")
    h.add_argument("--data", help="data spec with a training split, e.g. cifar10:DIR or cifar100:DIR")
    h.add_argument("--epochs", type=int)
    h.add_argument("--batch-size", type=int)
    h.add_argument("--lr", type=float, help="peak AdamW learning rate (default 1e-3)")
    h.add_argument("--min-lr-ratio", type=float, help="cosine floor as a fraction of --lr (default 0.01)")
    h.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.05; none on biases/norms)")
    h.add_argument("--warmup-epochs", type=float, help="linear warmup length (default 1)")
    h.add_argument("--label-smoothing", type=float, help="default 0 (off)")
    h.add_argument("--clip-grad", type=float, help="gradient norm clip (default 1.0; 0 = off)")
    h.add_argument("--seed", type=int)
    h.add_argument("--augment", choices=["crop-flip", "none"], help="default crop-flip (pad 4, random crop, hflip)")
    h.add_argument("--drop-path", type=float, help="stochastic depth rate (timm models; default off)")
    h.add_argument("--arch-kwargs", help="JSON object of architecture arguments (default {})")
    h.add_argument("--init", help="start from this checkpoint (fine-tuning)")
    h.add_argument("--train-limit", type=int, help="use a fixed random subset of this many training images")
    h.add_argument("--amp", choices=["auto", "bf16", "off"], help="bf16 autocast (auto: on CUDA only; bf16: also on the CPU)")
    o = p.add_argument_group("operation")
    o.add_argument("--resume", action="store_true", help="continue the run saved in --out (fresh start if none)")
    o.add_argument("--save-every-steps", type=int, default=0, help="also checkpoint every N steps")
    o.add_argument("--max-minutes", type=float, default=0, help="stop cleanly (checkpoint, exit 3) after this long")
    o.add_argument("--stop-after-steps", type=int, default=0, help="stop cleanly after this many steps (exit 3)")
    o.add_argument("--eval-limit", type=int, default=0, help="evaluate on a fixed subset of the test split")
    o.add_argument("--half", action="store_true", help="save the final model.pt in fp16")
    o.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    o.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    o.add_argument("--log-every", type=int, default=50, help="log a 'step' line every N steps (0: never)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--quiet", action="store_true", help="no progress bar and no messages")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return train(args)
    except QuantsimError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

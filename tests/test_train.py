"""quantsim.zoo.train: a tiny model learns on a tiny cifar10-style folder; an interrupted and
resumed run ends in exactly the state of an uninterrupted one; the CIFAR ViT factory."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quantsim.zoo import train as T
from quantsim.zoo import vit

TINY_VIT = json.dumps({"depth": 1, "embed_dim": 32, "num_heads": 2})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """cifar10-style folder: train/ with 12 images per class, test/ with 4 (two classes)."""
    from PIL import Image
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for k, cls in enumerate(("airplane", "automobile")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):  # class-dependent brightness so there is something to learn
                img = rng.integers(0, 128, (32, 32, 3)) + 100 * k
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    return root


def _args(data, out, *extra):
    return ["vit_tiny_patch4_32", "--data", f"cifar10:{data}", "--out", str(out), "--arch-kwargs", TINY_VIT,
            "--batch-size", "6", "--lr", "3e-3", "--warmup-epochs", "0.5", "--quiet", "--log-every", "1", *extra]


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_tiny_vit_learns(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert T.main(_args(tiny_data, out, "--epochs", "6", "--augment", "none", "--half")) == 0
    epochs = [r for r in _log(out) if r["event"] == "epoch"]
    assert len(epochs) == 6 and epochs[-1]["step"] == 6 * 4
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["weights_dtype"] == "float16" and recipe["epochs_done"] == 6
    ck = torch.load(out / "model.pt", weights_only=True)
    assert ck["format"] == "quantsim-checkpoint/1" and ck["arch"] == "vit_tiny_patch4_32"
    assert ck["state_dict"]["head.weight"].dtype == torch.float16
    assert (out / "last.pt").exists() and (out / "last.state.pt").exists()


def test_resume_reproduces_uninterrupted_run(tiny_data, tmp_path):
    common = ["--epochs", "3", "--seed", "5", "--drop-path", "0.1", "--eval-limit", "4"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert T.main(_args(tiny_data, a, *common)) == 0
    # interrupted twice mid-epoch (after 2 steps, then 5 more), resumed to the end
    assert T.main(_args(tiny_data, b, *common, "--stop-after-steps", "2")) == T.EXIT_STOPPED
    assert T.main(_args(tiny_data, b, "--resume", "--stop-after-steps", "5")) == T.EXIT_STOPPED
    state = torch.load(b / "last.state.pt", weights_only=False)
    assert state["progress"]["global_step"] == 7
    assert T.main(_args(tiny_data, b, "--resume")) == 0
    sa = torch.load(a / "last.state.pt", weights_only=False)
    sb = torch.load(b / "last.state.pt", weights_only=False)
    assert sa["progress"] == sb["progress"] and sa["progress"]["global_step"] == 12
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    ma = torch.load(a / "model.pt", weights_only=True)["state_dict"]
    mb = torch.load(b / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    ea = [r["train_loss"] for r in _log(a) if r["event"] == "epoch"]
    eb = [r["train_loss"] for r in _log(b) if r["event"] == "epoch"]
    assert ea == eb and len(ea) == 3  # running epoch sums are part of the saved state


def test_resume_rejects_changed_hyperparameters(tiny_data, tmp_path, capsys):
    out = tmp_path / "r"
    assert T.main(_args(tiny_data, out, "--epochs", "2", "--stop-after-steps", "1")) == T.EXIT_STOPPED
    assert T.main(_args(tiny_data, out, "--resume", "--lr", "1e-2")) == T.EXIT_ERROR
    assert "--lr" in capsys.readouterr().err
    assert T.main(_args(tiny_data, out, "--epochs", "2")) == T.EXIT_ERROR  # exists, no --resume


def test_schedule_and_batches():
    assert T.lr_factor(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert T.lr_factor(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert T.lr_factor(100, 100, 10, 0.01) == pytest.approx(0.01)
    b0, b1 = T.epoch_batches(50, 8, 0, 0), T.epoch_batches(50, 8, 0, 1)
    assert len(b0) == 6 and all(len(b) == 8 for b in b0) and b0 != b1
    assert b0 == T.epoch_batches(50, 8, 0, 0)


def test_cifar_vit_factory():
    model = vit.vit_tiny_patch4_32().eval()
    n = vit.param_count(model)
    assert 5.3e6 < n < 5.45e6  # DeiT-Tiny width/depth at 65 tokens: 5,362,762
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert model.patch_embed.num_patches == 64 and model.embed_dim == 192 and len(model.blocks) == 12
    assert vit.CIFAR10_VIT_PRE.input_size == (3, 32, 32)
    assert set(vit.timm_vit_names()) == set(vit.TARGET_TIMM_VITS)
    assert vit.is_vit(model)

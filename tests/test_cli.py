"""The command line: a real run end to end, and every kind of bad input -> one line, exit 2, no files."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from quantsim.zoo.cifar_resnet import cifar_resnet20
from quantsim.zoo.models import save_checkpoint
from quantsim.cli.simulate import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR = SHARED / "data" / "cifar10"
R20 = next(iter(sorted((SHARED / "models" / "cifar10-resnet").glob("resnet20-*.th"))), None) if SHARED.exists() else None
needs_shared = pytest.mark.skipif(R20 is None or not CIFAR.exists(), reason="../shared (real CIFAR-10 data and ResNets) is absent")




def _fails(capsys, argv, pattern) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert pattern in err[0], err[0]
    return err[0]


def _common(out, data):
    return ["--data", f"cifar10:{data}", "--calib", "4", "--eval", "4", "--bitexact-images", "2",
            "--out", str(out), "--no-progress"]


def test_bits_out_of_range(capsys, tmp_path, tiny_ckpt, tiny_data):
    for bits in ("1", "17", "W1A8", "W8A17"):
        out = tmp_path / f"o{bits}"
        _fails(capsys, [str(tiny_ckpt), "--bits", bits, *_common(out, tiny_data)], "out of range")
        assert not out.exists()


def test_truncated_checkpoint(capsys, tmp_path, tiny_ckpt, tiny_data):
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(tiny_ckpt.read_bytes()[:1000])
    _fails(capsys, [str(bad), *_common(tmp_path / "o", tiny_data)], "trunc.pt")
    assert not (tmp_path / "o").exists()


def test_pickled_module_needs_trust(capsys, tmp_path, tiny_data):
    path = tmp_path / "module.pt"
    torch.save(cifar_resnet20(), path)
    _fails(capsys, [str(path), *_common(tmp_path / "o", tiny_data)], "--trust-model")
    assert not (tmp_path / "o").exists()
    assert main([str(path), "--trust-model", *_common(tmp_path / "ok", tiny_data)]) == 0
    assert (tmp_path / "ok" / "summary.json").exists()


def test_nan_weights(capsys, tmp_path, tiny_data):
    model = cifar_resnet20()
    with torch.no_grad():
        model.layer2[0].conv1.weight[0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    save_checkpoint(path, model, "cifar_resnet20", {})
    _fails(capsys, [str(path), *_common(tmp_path / "o", tiny_data)], "layer2.0.conv1.weight")
    assert not (tmp_path / "o").exists()


def test_missing_data_dir(capsys, tmp_path, tiny_ckpt):
    _fails(capsys, [str(tiny_ckpt), "--data", f"cifar10:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "o")],
           "nowhere")
    assert not (tmp_path / "o").exists()


def test_unlowerable_layer(capsys, tmp_path, tiny_data):
    model = cifar_resnet20()
    model.layer1[0].relu1 = torch.nn.ELU()  # GELU (ViT path) and SiLU, Hardswish (lookup tables) lower
    path = tmp_path / "elu.pt"
    torch.save(model, path)
    line = _fails(capsys, [str(path), "--trust-model", *_common(tmp_path / "o", tiny_data)], "layer1.0.relu1")
    assert "ELU" in line
    assert not (tmp_path / "o").exists()


def test_bad_accelerator(capsys, tmp_path, tiny_ckpt, tiny_data):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[array]\nrows = 0\n")
    _fails(capsys, [str(tiny_ckpt), "--accel", str(bad), *_common(tmp_path / "o", tiny_data)], "bad.toml")
    _fails(capsys, [str(tiny_ckpt), "--accel", "no-such-preset", *_common(tmp_path / "o", tiny_data)], "no-such-preset")
    assert not (tmp_path / "o").exists()


def test_dram_stalls_on_and_off(capsys, tmp_path, tiny_ckpt, tiny_data):
    """--dram-stalls off: the cycles without bandwidth stalls; on: the same compute cycles plus the
    stalls, and the same traffic and energy. A file naming no DRAM rate cannot turn them on."""
    summaries = {}
    for mode in ("on", "off"):
        out = tmp_path / mode
        argv = [str(tiny_ckpt), "--bits", "W8A8", "--accel", "scalesim-32x32-os", "--dram-stalls", mode]
        assert main(argv + _common(out, tiny_data)) == 0
        summaries[mode] = json.loads((out / "summary.json").read_text())
        layers = pd.read_csv(out / "layers.csv")
        assert (layers["cycles"] == layers["compute_cycles"] + layers["stall_cycles"]).all()
    on, off = summaries["on"], summaries["off"]
    assert off["stall_cycles"] == 0 and off["cycles"] == off["compute_cycles"] == on["compute_cycles"]
    assert on["stall_cycles"] > 0 and on["cycles"] == on["compute_cycles"] + on["stall_cycles"]
    assert on["latency_us"] > off["latency_us"] and on["edp_pj_us"] > off["edp_pj_us"]
    for k in ("e_total_pj", "e_seed_pj", "dram_bytes", "energy_ratio_w8a8"):
        assert on[k] == off[k], k
    assert f"of which {on['stall_cycles']:,} wait for DRAM" in (tmp_path / "on" / "summary.txt").read_text()
    assert "DRAM bandwidth not counted in the cycles" in (tmp_path / "off" / "summary.txt").read_text()
    doc = (Path(__file__).resolve().parents[1] / "hwmodel" / "presets" / "scalesim-32x32-os.toml").read_text()
    no_rate = tmp_path / "no_rate.toml"
    no_rate.write_text("\n".join(l for l in doc.splitlines() if not l.startswith(("transfer_", "stalls"))))
    _fails(capsys, [str(tiny_ckpt), "--accel", str(no_rate), "--dram-stalls", "on",
                    *_common(tmp_path / "o", tiny_data)], "names no DRAM data rate")
    assert not (tmp_path / "o").exists()


def test_failed_run_keeps_previous_report(capsys, tmp_path, tiny_ckpt, tiny_data):
    out = tmp_path / "o"
    assert main([str(tiny_ckpt), "--bits", "8", *_common(out, tiny_data)]) == 0
    before = (out / "summary.json").read_bytes()
    _fails(capsys, [str(tiny_ckpt), "--bits", "17", *_common(out, tiny_data)], "out of range")
    assert (out / "summary.json").read_bytes() == before


@needs_shared
def test_real_resnet20_w8_report(tmp_path):
    out = tmp_path / "r20"
    code = main([str(R20), "--arch", "cifar_resnet20", "--data", f"cifar10:{CIFAR}", "--bits", "W8A8",
                 "--granularity", "per-channel", "--calib", "64", "--eval", "128", "--bitexact-images", "4",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    for key in ("model", "bits", "granularity", "calib_method", "n_calib", "n_eval", "top1", "top5", "top1_fp32",
                "top5_fp32", "agreement_fp32", "bitexact_images", "bitexact_mismatches", "acc_overflows", "seconds",
                "e_total_pj", "e_seed_pj", "energy_ratio_w8a8", "energy_ratio_fp32", "cycles"):
        assert key in s, key
    assert s["bitexact_mismatches"] == 0 and s["bitexact_images"] == 4
    assert s["top1_fp32"] >= 70 and abs(s["top1"] - s["top1_fp32"]) <= 4  # 128 images: coarse
    assert s["energy_ratio_w8a8"] == pytest.approx(1.0)
    layers = pd.read_csv(out / "layers.csv")
    assert len(layers[layers.op == "conv2d"]) == 19
    assert (layers.bitexact_mismatches == 0).all()
    conv1 = layers.set_index("layer").loc["conv1"]
    assert conv1.n_mac == 16 * 32 * 32 * 27 and conv1.weight_bytes == 16 * 27
    assert (out / "energy_breakdown.png").stat().st_size > 1000

"""quantsim.cli.pareto: every point written as it finishes, --resume skips what is done,
bad input is one line; the real ResNet-20 sweep where ../shared exists."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.data import TensorDataset

from quantsim.cli import pareto, simulate
from quantsim.errors import QuantsimError
from quantsim.run import inputs, single, sweep
from quantsim.zoo.preprocess import Preprocess
from test_mixed_plan import Tiny

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR = SHARED / "data" / "cifar10"
R20 = next(iter(sorted((SHARED / "models" / "cifar10-resnet").glob("resnet20-*.th"))), None) if SHARED.exists() else None
needs_shared = pytest.mark.skipif(R20 is None or not CIFAR.exists(), reason="../shared (real CIFAR-10 data and ResNets) is absent")


@pytest.fixture
def tiny(monkeypatch):
    """quantsim.run.inputs.load_inputs replaced by a tiny residual net on random labelled images."""
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(12, 3, 8, 8)
    y = torch.randint(0, 10, (12,))
    loaded = SimpleNamespace(model=model, preprocess=Preprocess((3, 8, 8), (0.0,) * 3, (1.0,) * 3, resize=None),
                             arch="tiny", source="random init", class_names=None)

    def fake_load(args):
        return inputs.Inputs(loaded, TensorDataset(x[:8], y[:8]), TensorDataset(x[8:], y[8:]), None)

    monkeypatch.setattr(sweep, "load_inputs", fake_load)
    monkeypatch.setattr(single, "load_inputs", fake_load)
    monkeypatch.setattr(sweep, "check_sources", lambda opts: None)  # "tiny" names the fake loader's model
    calls = []
    real = sweep.quantized_predictions

    def counting(graph, ev, progress, desc):
        calls.append(desc)
        return real(graph, ev, progress, desc)

    monkeypatch.setattr(sweep, "quantized_predictions", counting)
    return calls


def _argv(out, *extra):
    return ["tiny", "--calib", "8", "--bitexact-images", "2", "--batch-size", "4",
            "--accel", "scalesim-32x32-os", "--out", str(out), "--no-progress", *extra]


def test_sweep_writes_points_and_resume_skips_them(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert pareto.main(_argv(out, "--budgets", "0.8,0.1")) == 0
    pts = pd.read_csv(out / "points.csv")
    labels = ["FP32"] + [f"W{w}A{a}-{g}" for g in ("pt", "pc") for w, a in sweep.UNIFORM] + [
        "mixed-thr", "mixed-at-thr", "mixed-0.1", "mixed-0.8"]
    assert list(pts["label"]) == labels
    for col in sweep.POINT_COLUMNS[:12]:
        assert col in pts.columns
    assert (pts["bitexact_mismatches"].fillna(0) == 0).all()
    w8 = pts.set_index("label").loc["W8A8-pc"]
    assert w8["energy_ratio_w8a8"] == pytest.approx(1.0)
    infeasible = pts.set_index("label").loc["mixed-0.1"]
    assert np.isnan(infeasible["top1"]) and "infeasible" in infeasible["note"]
    m = pts.set_index("label").loc["mixed-0.8"]
    # the verified energy meets the budget; the plan itself may pass it after a re-solve that
    # spent budget the first plan left unused (quantsim.mixed.plan, "refinements")
    assert m["energy_ratio_w8a8"] <= 0.8 * (1 + 1e-9)
    assert m["planned_energy_ratio"] <= 0.8 or "refinements" in str(m["note"])
    for f in ("pareto.png", "pareto.svg", "pareto_latency.png", "pareto_latency.svg", "width_map_mixed-0.8.png",
              "widths_mixed-thr.csv", "sweep.json"):
        assert (out / f).exists(), f
    # latency per image (DRAM stalls included) and EDP on every measured point; FP32 moves 32-bit
    # tensors, so it waits longer for DRAM than W8A8 on the same array
    measured = pts[pts["top1"].notna()].set_index("label")
    assert (measured["latency_us"] > 0).all()
    assert np.allclose(measured["edp_pj_us"], measured["e_total_pj"] * measured["latency_us"], rtol=1e-12)
    assert measured.loc["FP32", "latency_us"] > measured.loc["W8A8-pc", "latency_us"]
    at = pts.set_index("label").loc["mixed-at-thr"]
    thr = pts.set_index("label").loc["mixed-thr"]
    assert at["budget"] == thr["energy_ratio_w8a8"] and at["energy_ratio_w8a8"] <= at["budget"]
    assert at["total_sensitivity"] <= thr["total_sensitivity"] + 1e-12
    assert len(tiny) == 11  # every quantized point evaluated once; FP32 from its own pass

    # resume: a sentinel in a finished row survives, only the new budget is computed
    pts.loc[pts["label"] == "W8A8-pc", "top1"] = 123.0
    pts.to_csv(out / "points.csv", index=False)
    tiny.clear()
    assert pareto.main(_argv(out, "--budgets", "0.8,0.1,0.9", "--resume")) == 0
    again = pd.read_csv(out / "points.csv").set_index("label")
    assert again.loc["W8A8-pc", "top1"] == 123.0
    assert "mixed-0.9" in again.index and len(again) == len(labels) + 1
    assert tiny == ["mixed-0.9"]


def test_resume_of_a_points_file_without_latency(tiny, tmp_path, capsys):
    """points.csv written before latency was recorded: its points are kept, latency unknown (a
    warning says so), and new points get theirs."""
    out = tmp_path / "sweep"
    assert pareto.main(_argv(out, "--no-uniform", "--budgets", "0.8")) == 0
    old = pd.read_csv(out / "points.csv").drop(columns=["latency_us", "edp_pj_us"])
    old.to_csv(out / "points.csv", index=False)
    capsys.readouterr()
    tiny.clear()
    assert pareto.main(_argv(out, "--no-uniform", "--budgets", "0.8,0.9", "--resume")) == 0
    assert "has no latency_us / edp_pj_us column (an older quantsim)" in capsys.readouterr().err
    again = pd.read_csv(out / "points.csv").set_index("label")
    assert tiny == ["mixed-0.9"]
    assert again.loc[list(old["label"]), "latency_us"].isna().all()
    assert again.loc["mixed-0.9", "latency_us"] > 0 and again.loc["mixed-0.9", "edp_pj_us"] > 0
    assert again.loc["mixed-0.8", "e_total_pj"] == pytest.approx(old.set_index("label").loc["mixed-0.8", "e_total_pj"])


def test_uniform_points_of_one_granularity(tiny, tmp_path):
    out = tmp_path / "pc"
    assert pareto.main(_argv(out, "--budgets", "0.8", "--uniform-granularity", "per-channel")) == 0
    labels = list(pd.read_csv(out / "points.csv")["label"])
    assert labels == ["FP32"] + [f"W{w}A{a}-pc" for w, a in sweep.UNIFORM] + ["mixed-thr", "mixed-at-thr", "mixed-0.8"]


def test_interrupted_sweep_keeps_finished_points(tiny, tmp_path, monkeypatch):
    out = tmp_path / "cut"
    real = sweep.quantized_predictions

    def dies_third(graph, ev, progress, desc):
        if len(tiny) == 2:  # two quantized points done
            raise KeyboardInterrupt
        return real(graph, ev, progress, desc)

    monkeypatch.setattr(sweep, "quantized_predictions", dies_third)
    with pytest.raises(KeyboardInterrupt):
        pareto.main(_argv(out, "--budgets", "0.8"))
    assert list(pd.read_csv(out / "points.csv")["label"]) == ["FP32", "W8A8-pt", "W6A6-pt"]
    monkeypatch.setattr(sweep, "quantized_predictions", real)
    assert pareto.main(_argv(out, "--budgets", "0.8", "--resume")) == 0
    assert len(pd.read_csv(out / "points.csv")) == 12  # FP32, 8 uniform, threshold, budget at its energy, one budget


@pytest.mark.parametrize("extra,pattern", [
    (["--budgets", "abc"], "--budgets"),
    (["--budgets", "0.5,-1"], "positive"),
    (["--candidates", "4,17"], "out of range"),
    (["--accel", "no-such-preset"], "--accel"),
    (["--uniform-granularity", "per-row"], "--uniform-granularity"),
])
def test_bad_input_one_line_exit_2(tiny, tmp_path, capsys, extra, pattern):
    out = tmp_path / "bad"
    assert pareto.main(_argv(out, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and pattern in err[0], err
    assert not out.exists()


@needs_shared
def test_real_resnet20_mixed_points(tmp_path):
    out = tmp_path / "r20"
    argv = [str(R20), "--arch", "cifar_resnet20", "--data", f"cifar10:{CIFAR}", "--calib", "32", "--eval", "32",
            "--bitexact-images", "2", "--accel", "scalesim-32x32-os", "--no-uniform", "--budgets", "0.6",
            "--rerank", "1", "--rerank-by", "top1", "--rerank-images", "24", "--out", str(out), "--no-progress"]
    assert pareto.main(argv) == 0
    pts = pd.read_csv(out / "points.csv").set_index("label")
    assert list(pts.index) == ["FP32", "mixed-thr", "mixed-at-thr", "mixed-0.6"]
    assert pts.loc["FP32", "top1"] > 50
    assert pts.loc["mixed-0.6", "energy_ratio_w8a8"] <= 0.6
    for lab in ("mixed-thr", "mixed-0.6"):  # achieved vs planned energy on a real network: within 2% (1.2% measured at 0.6)
        assert pts.loc[lab, "energy_ratio_w8a8"] == pytest.approx(pts.loc[lab, "planned_energy_ratio"], rel=0.02)
    assert (pts["bitexact_mismatches"] == 0).all()
    meta = json.loads((out / "sweep.json").read_text())
    assert len(meta["tied"]) == 1 and len(meta["tied"][0]) == 10  # 9 block-input convs + the linear layer
    # the budget points were re-ranked by held-out top-1; the record says what each candidate scored
    for lab in ("mixed-at-thr", "mixed-0.6"):
        rr = json.loads((out / "state" / f"rerank_{lab}.json").read_text())
        assert rr["metric"] == "heldout_top1" and rr["heldout_top1"] == max(c["heldout_top1"] for c in rr["all"])
        chosen = next(c for c in rr["all"] if c["source"] == rr["chosen"])
        assert "-".join(map(str, chosen["widths"])) == pts.loc[lab, "widths"]
    # at the threshold point's energy the threshold rule's own allocation is a candidate
    assert pts.loc["mixed-thr", "widths"] in {"-".join(map(str, c["widths"])) for c in
                                              json.loads((out / "state" / "rerank_mixed-at-thr.json").read_text())["all"]}


@needs_shared
def test_heldout_labelled_images_are_not_calibration_images():
    """--rerank-by top1 measures on cifar10 train images that calibration did not use, with labels."""
    from quantsim.zoo import datasets
    from quantsim.zoo.models import load_model

    pre = load_model(str(R20), arch="cifar_resnet20").preprocess
    args = SimpleNamespace(rerank_by="top1", rerank=4, rerank_images=64, calib_data=None, data=f"cifar10:{CIFAR}",
                           download=False, seed=0, batch_size=32)
    calib_ds = datasets.deterministic_subset(datasets.build_dataset(args.data, pre, role="calib"), 48, 0)
    held = inputs.heldout_labelled(args, pre, calib_ds)
    x = torch.cat([b for b, _ in held])
    y = torch.cat([t for _, t in held])
    assert len(x) == 64 and int(y.min()) >= 0 and int(y.max()) <= 9 and len(set(y.tolist())) > 3
    calib_x = torch.stack([calib_ds[i][0] for i in range(len(calib_ds))])
    same = (x[:, None].flatten(2) == calib_x[None].flatten(2)).all(-1)
    assert not bool(same.any())
    args.rerank_images = 0
    with pytest.raises(QuantsimError, match="--rerank-images"):
        inputs.heldout_labelled(args, pre, calib_ds)
    args.rerank_by = "joint"
    assert inputs.heldout_labelled(args, pre, calib_ds) is None


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 300), st.data())
def test_heldout_indices_avoid_calibration(total, data):
    used = data.draw(st.sets(st.integers(0, total - 1)))
    n = data.draw(st.integers(1, 400))
    idx = inputs.heldout_indices(total, used, n, 7)
    assert not set(idx) & used and len(set(idx)) == len(idx) == min(n, total - len(used))
    assert idx == sorted(idx) and all(0 <= i < total for i in idx)
    assert idx == inputs.heldout_indices(total, used, n, 7)


def test_fp32_point_energy_equals_simulate_fp32(tiny, tmp_path):
    """A sweep's FP32 point and `simulate --bits fp32` report the same e_total_pj and e_seed_pj
    (the sweep once wrote the detailed model's FP32 energy into e_seed_pj)."""
    out = tmp_path / "sweep"
    assert pareto.main(_argv(out, "--no-uniform", "--budgets", "0.8")) == 0
    fp32 = pd.read_csv(out / "points.csv").set_index("label").loc["FP32"]
    run_out = tmp_path / "fp32"
    assert simulate.main(_argv(run_out, "--bits", "fp32")) == 0
    s = json.loads((run_out / "summary.json").read_text())
    assert fp32["e_total_pj"] == pytest.approx(s["e_total_pj"], rel=1e-12)
    assert fp32["e_seed_pj"] == pytest.approx(s["e_seed_pj"], rel=1e-12)
    assert s["e_seed_pj"] != s["e_total_pj"]  # the two energy models differ, so the test can fail
    # and the same latency: the FP32 program's own cycles (32-bit traffic, its own DRAM stalls)
    assert fp32["latency_us"] == pytest.approx(s["latency_us"], rel=1e-12)
    assert fp32["edp_pj_us"] == pytest.approx(s["edp_pj_us"], rel=1e-12)
    assert s["cycles"] == s["compute_cycles"] + s["stall_cycles"] and s["stall_cycles"] > 0


@pytest.mark.parametrize("command", ["simulate", "pareto"])
def test_out_that_cannot_be_created_fails_before_loading(tmp_path, monkeypatch, capsys, command):
    """--out under an existing file: one error line, exit 2, and no model or data is loaded."""
    def must_not_load(opts):
        raise AssertionError("loaded the model before checking --out")

    monkeypatch.setattr(single, "load_inputs", must_not_load)
    monkeypatch.setattr(sweep, "load_inputs", must_not_load)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    main = simulate.main if command == "simulate" else pareto.main
    assert main(_argv(blocker / "sub" / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out ") and "not a directory" in err[0], err


def test_sweep_accepts_every_quantization_option_of_a_run():
    """By construction (shared argument groups): every flag of simulate's quantization, hardware and
    model/data groups parses in pareto, and both fill the same option fields."""
    run_flags = {a.dest for a in simulate.build_parser()._actions}
    sweep_flags = {a.dest for a in pareto.build_parser()._actions}
    only_run = run_flags - sweep_flags
    assert only_run == {"bits", "energy_budget", "save_ir", "export_onnx", "oracle"}, only_run
    assert {"search_steps", "bias_correction", "calib_method", "requant"} <= sweep_flags


def test_command_line_defaults_are_the_options_defaults():
    """The parsers and RunOptions / SweepOptions declare each default; they must not drift apart
    (the Python API and the command line then run the same configuration)."""
    from dataclasses import fields

    from quantsim.run.options import RunOptions, SweepOptions

    for parser, cls in ((simulate.build_parser(), RunOptions), (pareto.build_parser(), SweepOptions)):
        want = {f.name: f.default for f in fields(cls)}
        dests = [a for a in parser._actions if a.dest in want]
        assert len(dests) > 30
        assert {a.dest: a.default for a in dests} == {a.dest: want[a.dest] for a in dests}, cls.__name__


@pytest.mark.parametrize("in_memory", [True, False])
def test_eval_chunks_are_the_serial_batches(monkeypatch, in_memory):
    """--ray's evaluation chunks (decoded by the driver, or, for a set too large to cache, by the
    task from the data set) hold the serial sweep's batches, so a chunk task's predictions,
    concatenated, are the serial ones."""
    if not in_memory:
        monkeypatch.setattr(sweep, "CACHE_EVAL_BYTES", 0)
    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(10, 3, 8, 8), torch.arange(10))
    ev = sweep.EvalSet(ds, batch_size=3)
    assert ev.cached == in_memory
    chunks = list(ev.chunks(2))  # 2 batches each: images 0-5, then 6-9 (batches of 3 and 1)
    assert len(chunks) == 2 and (chunks[0].x is not None) == in_memory
    got = [b for c in chunks for b in c.batches(None if in_memory else ev.loader.dataset)]
    want = list(sweep.datasets.make_loader(ds, batch_size=3))
    assert [len(x) for x, _ in got] == [3, 3, 3, 1]
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        assert torch.equal(gx, wx) and torch.equal(gy, wy)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10)).eval()
    parts = [sweep.chunk_top5(model, c, None if in_memory else ev.loader.dataset) for c in chunks]
    top5, labels = sweep.fp32_predictions(model, want, False)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), top5)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), labels)
    assert sweep.chunk_top5(None, chunks[0]) is None  # a point without a program


# ------------------------------------------------------------------------ --reference, --replot


def _finished_sweep(folder: Path, top1_shift: float = 0.0, meta: dict | None = None, latency: bool = True) -> Path:
    """A synthetic finished sweep: points.csv with a real sweep's columns (and sweep.json if `meta`)."""
    rows = [dict(label="FP32", policy="fp32", w_bits=32, a_bits=32, top1=81.0, e_total_pj=8e8),
            dict(label="W8A8-pc", policy="uniform", granularity="per-channel", w_bits=8, a_bits=8, top1=80.9,
                 e_total_pj=1.7e8),
            dict(label="W6A6-pc", policy="uniform", granularity="per-channel", w_bits=6, a_bits=6, top1=79.0,
                 e_total_pj=1.25e8),
            dict(label="W4A4-pc", policy="uniform", granularity="per-channel", w_bits=4, a_bits=4, top1=48.9,
                 e_total_pj=8.2e7),
            dict(label="mixed-0.6", policy="mixed-budget", granularity="per-channel", budget=0.6, top1=55.0,
                 e_total_pj=1.0e8)]
    for r in rows:
        if r["policy"] != "fp32":
            r["top1"] += top1_shift
        r.update(energy_ratio_w8a8=r["e_total_pj"] / 1.7e8, e_seed_pj=r["e_total_pj"] * 0.9, bitexact_mismatches=0)
        if latency:
            r.update(latency_us=r["e_total_pj"] / 1e5, edp_pj_us=r["e_total_pj"] ** 2 / 1e5)
    folder.mkdir(parents=True)
    columns = [c for c in sweep.POINT_COLUMNS if latency or c not in ("latency_us", "edp_pj_us")]
    pd.DataFrame(rows).reindex(columns=columns).to_csv(folder / "points.csv", index=False)
    if meta is not None:
        (folder / "sweep.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a model or data fails the test: --reference / --replot checks come first, replot loads nothing."""
    def must_not_load(opts):
        raise AssertionError("loaded a model")

    monkeypatch.setattr(single, "load_inputs", must_not_load)
    monkeypatch.setattr(sweep, "load_inputs", must_not_load)
    monkeypatch.setattr(sweep, "check_sources", lambda opts: None)


R20_META = {"model": "cifar_resnet20", "accelerator": "scalesim-32x32-os", "granularity": "per-channel",
            "n_eval": 10000, "rounding": "adaround", "reconstruct": "block", "qdrop": 0.5, "equalize": False}


@pytest.mark.parametrize("ref_meta,extra,label", [
    ({"rounding": "nearest", "reconstruct": "none", "qdrop": 0.5, "equalize": False}, [], "nearest"),
    (None, [], "r20-before"),                              # nothing recorded: the folder's name
    ({"rounding": "gptq"}, ["--reference-label", "RTN, 2025"], "RTN, 2025"),
])
def test_replot_draws_the_reference_frontier_and_measures_nothing(no_loading, tmp_path, ref_meta, extra, label):
    out = _finished_sweep(tmp_path / "r20-block", meta=R20_META)
    ref = _finished_sweep(tmp_path / "r20-before", top1_shift=-8.0, meta=ref_meta)
    points = (out / "points.csv").read_bytes()
    assert pareto.main(["--replot", str(out), "--reference", str(ref), "--quiet", *extra]) == 0
    assert (out / "points.csv").read_bytes() == points
    for name in ("pareto.svg", "pareto_latency.svg", "report.html"):
        text = (out / name).read_text()
        assert f"reference: {escape(label)}" in text, name
        assert "cifar_resnet20 on scalesim-32x32-os" in text, name
    assert (out / "pareto.png").stat().st_size > 1000 and "cifar_resnet20" in (out / "summary.txt").read_text()
    # again without --reference: the same plots, no reference line
    assert pareto.main(["--replot", str(out), "--quiet"]) == 0
    assert "reference:" not in (out / "pareto.svg").read_text()


def test_reference_without_latency_stays_off_the_latency_plot_only(no_loading, tmp_path):
    out = _finished_sweep(tmp_path / "new", meta=R20_META)
    ref = _finished_sweep(tmp_path / "old", top1_shift=-5.0, latency=False)
    assert pareto.main(["--replot", str(out), "--reference", str(ref), "--quiet"]) == 0
    assert "reference: old" in (out / "pareto.svg").read_text()
    assert "reference:" not in (out / "pareto_latency.svg").read_text()


def test_method_label_names_what_a_sweep_recorded():
    assert sweep.method_label({"rounding": "nearest", "reconstruct": "none", "qdrop": 0.5}) == "nearest"
    assert (sweep.method_label({"rounding": "adaround", "reconstruct": "block", "qdrop": 0.5, "equalize": True})
            == "adaround, block reconstruction, QDrop 0.5, equalized")
    assert sweep.method_label({"rounding": "adaround", "reconstruct": "layer", "qdrop": 0.0}) == \
        "adaround, layer reconstruction"
    assert sweep.method_label({"model": "x"}) is None and sweep.method_label({"rounding": float("nan")}) is None


def test_sweep_draws_its_reference_and_records_its_method(tiny, tmp_path):
    """A sweep with --reference: the reference line in its plots; its sweep.json records its method,
    which labels it when it is the reference of another."""
    ref = _finished_sweep(tmp_path / "synthetic", top1_shift=-50.0)
    out = tmp_path / "sweep"
    assert pareto.main(_argv(out, "--no-uniform", "--budgets", "0.8", "--reference", str(ref),
                             "--reference-label", "RTN")) == 0
    assert "reference: RTN" in (out / "pareto.svg").read_text()
    assert "reference: RTN" in (out / "pareto_latency.svg").read_text()
    meta = json.loads((out / "sweep.json").read_text())
    assert {k: meta[k] for k in sweep.METHOD_KEYS} == {"rounding": "nearest", "reconstruct": "none", "qdrop": 0.5,
                                                       "equalize": False}
    assert pareto.main(["--replot", str(ref), "--reference", str(out), "--quiet"]) == 0
    assert "reference: nearest" in (ref / "pareto.svg").read_text()


def _bad_reference(tmp_path: Path, case: str) -> Path:
    ref = tmp_path / "ref"
    if case == "missing":
        return ref
    ref.mkdir()
    if case == "empty":
        (ref / "points.csv").write_text("")
    elif case == "columns":
        (ref / "points.csv").write_text("label,top1\nW8A8-pc,80.0\n")
    elif case == "nothing to plot":
        (ref / "points.csv").write_text("label,policy,top1,e_total_pj\nFP32,fp32,81.0,8e8\nmixed-0.1,mixed-budget,,\n")
    elif case == "not csv":
        (ref / "points.csv").write_bytes(b"\xff\xfe\x00\x81label\n")
    return ref


BAD_REFERENCES = [("missing", "no such folder"), ("no points", "no points.csv there"), ("empty", "cannot read"),
                  ("columns", "has no policy / e_total_pj column"), ("nothing to plot", "no quantized point"),
                  ("not csv", "cannot read")]


@pytest.mark.parametrize("case,pattern", BAD_REFERENCES)
def test_bad_reference_is_one_line_before_loading(no_loading, tmp_path, capsys, case, pattern):
    ref = _bad_reference(tmp_path, case)
    out = tmp_path / "out"
    assert pareto.main(_argv(out, "--reference", str(ref))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --reference") and pattern in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("argv,pattern", [
    (lambda t: ["tiny", "--out", str(t / "o"), "--reference-label", "RTN"], "give --reference DIR too"),
    (lambda t: ["--replot", str(t / "nowhere")], "--replot"),
    (lambda t: ["--replot", str(_finished_sweep(t / "s")), "tiny"], "drop a model"),
    (lambda t: ["--replot", str(_finished_sweep(t / "s")), "--reference", str(t / "nowhere")], "--reference"),
])
def test_bad_replot_or_label_is_one_line(no_loading, tmp_path, capsys, argv, pattern):
    assert pareto.main(argv(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and pattern in err[0], err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s" / "pareto.svg").exists()


def test_learned_codes_kept_in_state_and_reused_by_a_second_sweep(tiny, tmp_path, monkeypatch):
    """--rounding gptq: each point's codes land in OUT/state once; a second sweep given that folder
    as --rounding-cache learns nothing and measures the same points."""
    from quantsim.quant import gptq

    learned = []
    real = gptq.gptq_codes
    monkeypatch.setattr(gptq, "gptq_codes", lambda *a, **k: learned.append(1) or real(*a, **k))
    first = tmp_path / "first"
    argv = ("--rounding", "gptq", "--uniform-granularity", "per-channel", "--budgets", "0.8")
    assert pareto.main(_argv(first, *argv)) == 0
    files = sorted((first / "state").glob("rounding-gptq-*.npz"))
    assert files and len(files) == len(learned)  # one learning per distinct program, each kept
    n_learned = len(learned)
    second = tmp_path / "second"
    assert pareto.main(_argv(second, *argv, "--rounding-cache", str(first / "state"))) == 0
    assert len(learned) == n_learned
    assert not list((second / "state").glob("rounding-*.npz"))
    cols = ["label", "top1", "e_total_pj", "bitexact_mismatches"]
    a, b = (pd.read_csv(d / "points.csv")[cols] for d in (first, second))
    assert len(a) > 2
    pd.testing.assert_frame_equal(a, b)

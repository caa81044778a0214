"""python -m quantsim.pareto --ray: the same points.csv as a serial sweep (same rows, same numbers,
same order) on a 2-CPU local Ray cluster; a point whose worker dies, or whose task raises, is
retried and the sweep finishes; a point that keeps failing is one `error:` line naming it, the
other points are kept and --resume finishes the sweep.

The faults come from quantsim.run.distribute's test-only hook (QUANTSIM_RAY_FAULTS)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import pytest

from quantsim.cli import pareto
from quantsim.run import distribute, sweep

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'quantsim[ray]')")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR = SHARED / "data" / "cifar10"
R20 = next(iter(sorted((SHARED / "models" / "cifar10-resnet").glob("resnet20-*.th"))), None) if SHARED.exists() else None
needs_shared = pytest.mark.skipif(R20 is None or not CIFAR.exists(),
                                  reason="../shared (real CIFAR-10 data and ResNet-20) is absent")
LABELS = ["FP32", "mixed-thr", "mixed-at-thr", "mixed-0.6"]
WALL_TIME = ["seconds"]  # the only column that may differ between two runs of a point


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster of 2 CPUs for the module; a sweep's `--ray local` reuses it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sens_cache(tmp_path_factory) -> Path:
    """The sensitivity tables measured by the first sweep, read back by the others."""
    return tmp_path_factory.mktemp("sens")


def _argv(out: Path, cache: Path, *extra) -> list[str]:
    # 4 points: FP32, the threshold plan, the budget plan at its energy (a task that waits for
    # the threshold point's result) and one budget
    return [str(R20), "--arch", "cifar_resnet20", "--data", f"cifar10:{CIFAR}", "--calib", "32", "--eval", "64",
            "--bitexact-images", "2", "--accel", "scalesim-32x32-os", "--no-uniform", "--budgets", "0.6",
            "--sensitivity-cache", str(cache), "--out", str(out), "--no-progress", *extra]


@pytest.fixture(scope="module")
def serial(tmp_path_factory, sens_cache) -> Path:
    out = tmp_path_factory.mktemp("serial")
    assert pareto.main(_argv(out, sens_cache)) == 0
    return out


def _same_rows(a: Path, b: Path) -> None:
    x, y = pd.read_csv(a / "points.csv"), pd.read_csv(b / "points.csv")
    assert list(x["label"]) == list(y["label"]) == LABELS
    assert list(x.columns) == list(y.columns)
    pd.testing.assert_frame_equal(x.drop(columns=WALL_TIME), y.drop(columns=WALL_TIME), check_exact=True)


@needs_shared
def test_ray_sweep_writes_the_serial_rows(cluster, serial, sens_cache, tmp_path):
    out = tmp_path / "ray"
    assert pareto.main(_argv(out, sens_cache, "--ray", "local")) == 0
    _same_rows(serial, out)
    pts = pd.read_csv(out / "points.csv").set_index("label")
    assert pts.loc["mixed-at-thr", "budget"] == pts.loc["mixed-thr", "energy_ratio_w8a8"]
    assert (pts["bitexact_mismatches"] == 0).all()
    # the driver wrote each mixed point's widths table, as the serial sweep does
    for lab in LABELS[1:]:
        pd.testing.assert_frame_equal(pd.read_csv(serial / f"widths_{lab}.csv"), pd.read_csv(out / f"widths_{lab}.csv"),
                                      check_exact=True)


@needs_shared
def test_failed_points_are_retried(cluster, serial, sens_cache, tmp_path, monkeypatch):
    """mixed-0.6's worker process dies on its first attempt, mixed-thr's task raises on its first:
    both are retried once and the rows are still the serial ones."""
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "mixed-0.6.exit").touch()
    (faults / "mixed-thr.raise").touch()
    monkeypatch.setenv(distribute.FAULTS_ENV, str(faults))
    out = tmp_path / "ray"
    assert pareto.main(_argv(out, sens_cache, "--ray", "local")) == 0
    _same_rows(serial, out)
    for lab in ("mixed-0.6", "mixed-thr"):
        pids = (faults / f"{lab}.attempts").read_text().split()
        assert len(pids) == 2, (lab, pids)
    assert len(set((faults / "mixed-0.6.attempts").read_text().split())) == 2  # a new worker after the death
    assert not (faults / "FP32.attempts").exists()


@needs_shared
def test_point_that_keeps_failing_is_one_error_and_resume_finishes(cluster, serial, sens_cache, tmp_path,
                                                                    monkeypatch, capsys):
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "mixed-thr.always").touch()
    monkeypatch.setenv(distribute.FAULTS_ENV, str(faults))
    out = tmp_path / "ray"
    assert pareto.main(_argv(out, sens_cache, "--ray", "local", "--ray-retries", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --ray: point "), err
    assert "mixed-thr failed after 2 attempts (RuntimeError: fault injected" in err[0], err
    assert "mixed-at-thr not run: its input mixed-thr failed" in err[0], err
    assert len((faults / "mixed-thr.attempts").read_text().split()) == 2
    kept = pd.read_csv(out / "points.csv")
    assert list(kept["label"]) == ["FP32", "mixed-0.6"]  # the finished points, in point order
    # resumed without the fault (and without Ray): only the two missing points run
    monkeypatch.delenv(distribute.FAULTS_ENV)
    assert pareto.main(_argv(out, sens_cache, "--resume")) == 0
    again = pd.read_csv(out / "points.csv")
    assert list(again["label"]) == ["FP32", "mixed-0.6", "mixed-thr", "mixed-at-thr"]
    ref = pd.read_csv(serial / "points.csv").set_index("label").loc[list(again["label"])].reset_index()
    pd.testing.assert_frame_equal(again.drop(columns=WALL_TIME), ref.drop(columns=WALL_TIME), check_exact=True)


@pytest.mark.parametrize("extra,pattern", [
    (["--ray", "not an address"], "--ray 'not an address'"),
    (["--ray", "local", "--ray-retries", "-1"], "--ray-retries -1"),
])
def test_bad_ray_options_fail_before_loading(tmp_path, monkeypatch, capsys, extra, pattern):
    def must_not_load(opts):
        raise AssertionError("loaded the model before checking --ray")

    monkeypatch.setattr(sweep, "load_inputs", must_not_load)
    out = tmp_path / "bad"
    assert pareto.main(["some-model", "--out", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and pattern in err[0], err
    assert not out.exists()

"""Sweep files (`python -m quantsim.pareto --sweep FILE.toml`): the cross product of models x
accelerators x methods, options merged defaults < model < method < command line, paths relative
to the file, every run checked before the first starts, each sweep in its own folder with the
points a direct `pareto` call writes, a failed run reported while the others finish."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from quantsim.cli import pareto
from quantsim.errors import QuantsimError
from quantsim.run import sweep, sweep_file
from test_pareto import CIFAR, SHARED, tiny  # noqa: F401  (tiny: the fixture of a small residual net)

REPO = Path(__file__).resolve().parents[1]
WALL_TIME = ["seconds"]


def _write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


CROSS = """
out = "runs"
accelerators = ["scalesim-32x32-ws", "edge-16x16-ws"]

[defaults]
data = "cifar10:data"
calib = 64
budgets = [0.5, 0.6]
rounding = "nearest"

[[models]]
model = "cifar_resnet20"
calib = 32

[[models]]
model = "torchvision:resnet18"
name = "r18"

[[methods]]
name = "nearest"

[[methods]]
name = "gptq"
rounding = "gptq"
recon-iters = 7
"""


def test_cross_product_names_precedence_and_paths(tmp_path):
    (tmp_path / "data").mkdir()
    f = _write(tmp_path, CROSS)
    runs = sweep_file.load_sweep_file(f, {"eval": 5, "calib": 16})
    names = [r.name for r in runs]
    assert names == [f"{m}-{a}-{k}" for m in ("cifar_resnet20", "r18")
                     for a in ("scalesim-32x32-ws", "edge-16x16-ws") for k in ("nearest", "gptq")]
    by = {r.name: r.options for r in runs}
    o = by["cifar_resnet20-edge-16x16-ws-gptq"]
    assert o.rounding == "gptq" and o.recon_iters == 7 and o.accel == "edge-16x16-ws"
    assert o.calib == 16 and o.eval == 5                      # the command line beats the model's 32
    assert o.budgets == "0.5,0.6"                             # a TOML list becomes the flag's comma list
    assert o.data == f"cifar10:{tmp_path / 'data'}"           # relative to the file, not the working directory
    assert Path(o.out) == tmp_path / "runs" / "cifar_resnet20-edge-16x16-ws-gptq"
    assert by["r18-scalesim-32x32-ws-nearest"].rounding == "nearest"
    assert by["r18-scalesim-32x32-ws-nearest"].model == "torchvision:resnet18"
    runs = sweep_file.load_sweep_file(f)
    assert {r.options.calib for r in runs if r.model == "cifar_resnet20"} == {32}   # the model beats [defaults]
    assert {r.options.calib for r in runs if r.model == "torchvision:resnet18"} == {64}


def test_reference_is_relative_to_the_file(tmp_path):
    """A method's `reference` (an earlier sweep's folder, drawn beside its frontier) is a path
    relative to the sweep file, like the data; an earlier run's folder, not yet written, is accepted
    (a missing folder that is no run's is refused: test_bad_file_one_error_line_before_any_run)."""
    (tmp_path / "data").mkdir()
    f = _write(tmp_path, 'out = "runs"\n[defaults]\ndata = "cifar10:data"\n[[models]]\nmodel = "cifar_resnet20"\n'
                         '[[methods]]\nname = "nearest"\n[[methods]]\nname = "block"\nrounding = "adaround"\n'
                         'reconstruct = "block"\nreference = "runs/cifar_resnet20-scalesim-32x32-ws-nearest"\n')
    by = {r.method: r.options for r in sweep_file.load_sweep_file(f)}
    assert by["nearest"].reference is None
    assert by["block"].reference == str(tmp_path / "runs" / "cifar_resnet20-scalesim-32x32-ws-nearest")


@pytest.mark.parametrize("text,pattern", [
    ('out = "x"\nmodel = "cifar_resnet20"\n', "unknown top-level key 'model'"),
    ('[[models]]\nmodel = "cifar_resnet20"\n[defaults]\nbudget = "0.5"\n', "did you mean 'budgets'"),
    ('[[models]]\nmodel = "cifar_resnet20"\n[defaults]\ncalib = "64"\n', "calib = '64' must be int"),
    ('[[models]]\nmodel = "cifar_resnet20"\n[defaults]\ncalib = true\n', "calib = True must be int"),
    ('[[models]]\nmodel = "cifar_resnet20"\n[defaults]\nout = "y"\n', "'out' is not an option here"),
    ('[[models]]\nmodel = "cifar_resnet20"\n[defaults]\naccel = "edge-16x16-ws"\n', "accelerators"),
    ('[[models]]\nmodel = "cifar_resnet20"\n[[models]]\nmodel = "cifar_resnet20"\n', "appears twice"),
    ('[[models]]\nmodel = "no_such_model_anywhere"\n', "unknown model 'no_such_model_anywhere'"),
    ('[[models]]\nmodel = "cifar_resnet20"\n[defaults]\ndata = "cifar10:missing"\n', "missing"),
    ('[defaults]\ndata = "cifar10:data"\n[[models]]\nmodel = "cifar_resnet20"\n'
     '[[methods]]\nname = "a"\n[[methods]]\nname = "b"\nbudgets = "0.5,-1"\n',
     "run cifar_resnet20-scalesim-32x32-ws-b: --budgets"),
    ('accelerators = ["edge-16x16-ws", "no-such-preset"]\n[defaults]\ndata = "cifar10:data"\n'
     '[[models]]\nmodel = "cifar_resnet20"\n', "run cifar_resnet20-no-such-preset"),
    ('[[models]]\nmodel = "cifar_resnet20"\n', "no evaluation data"),
    ('[[models]]\nmodel = "cifar_resnet20"\n[[methods]]\nrounding = "gptq"\n', "needs name"),
    ('[[models]]\nmodel = "cifar_resnet20"\n[defaults]\nreplot = "y"\n', "'replot' is not an option here"),
    ('[defaults]\ndata = "cifar10:data"\n[[models]]\nmodel = "cifar_resnet20"\n'
     '[[methods]]\nname = "a"\n[[methods]]\nname = "b"\nreference = "nowhere"\n',
     "run cifar_resnet20-scalesim-32x32-ws-b: --reference"),
    ('[[models\n', "not valid TOML"),
    ('out = "x"\n', "give at least one model"),
])
def test_bad_file_one_error_line_before_any_run(tmp_path, monkeypatch, capsys, text, pattern):
    """Each mistake is one `error:` line, exit 2, found before any model or data is loaded, even
    when it is in the last run of the cross product."""
    def must_not_run(opts):
        raise AssertionError("a sweep started before the file was checked")

    monkeypatch.setattr(sweep, "run", must_not_run)
    (tmp_path / "data").mkdir()
    f = _write(tmp_path, text)
    assert pareto.main(["--sweep", str(f), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and pattern in err[0], err


def test_model_with_sweep_file_refused(tmp_path, capsys):
    f = _write(tmp_path, '[[models]]\nmodel = "cifar_resnet20"\n')
    assert pareto.main(["cifar_resnet20", "--sweep", str(f)]) == 2
    assert "the models come from the file" in capsys.readouterr().err


TINY = """
out = "runs"
accelerators = ["scalesim-32x32-os", "edge-16x16-ws"]

[defaults]
calib = 8
bitexact-images = 2
batch-size = 4
budgets = [0.8]
uniform-granularity = "per-channel"

[[models]]
model = "resnet18"
name = "tiny"
"""


def test_each_run_writes_what_a_direct_sweep_writes(tiny, tmp_path, capsys):  # noqa: F811
    """Every (model, accelerator) folder holds the points.csv a direct `pareto` call with the same
    options writes (every column but the wall time), and sweeps.csv one row per run."""
    f = _write(tmp_path, TINY)
    assert pareto.main(["--sweep", str(f), "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "runs" / "sweeps.csv")
    assert list(table["run"]) == ["tiny-scalesim-32x32-os", "tiny-edge-16x16-ws"]
    assert (table["status"] == "ok").all() and (table["bitexact_mismatches"] == 0).all()
    shown = capsys.readouterr().out
    assert "2 runs, 2 ok, 0 failed" in shown and "tiny-edge-16x16-ws" in shown
    energies = {}
    for accel in ("scalesim-32x32-os", "edge-16x16-ws"):
        via_file = pd.read_csv(tmp_path / "runs" / f"tiny-{accel}" / "points.csv")
        direct_out = tmp_path / f"direct-{accel}"
        assert pareto.main(["resnet18", "--calib", "8", "--bitexact-images", "2", "--batch-size", "4",
                            "--budgets", "0.8", "--uniform-granularity", "per-channel", "--accel", accel,
                            "--out", str(direct_out), "--no-progress", "--quiet"]) == 0
        direct = pd.read_csv(direct_out / "points.csv")
        pd.testing.assert_frame_equal(via_file.drop(columns=WALL_TIME), direct.drop(columns=WALL_TIME),
                                      check_exact=True)
        assert (tmp_path / "runs" / f"tiny-{accel}" / "summary.txt").exists()
        energies[accel] = via_file.set_index("label").loc["W8A8-pc", "e_total_pj"]
    assert energies["scalesim-32x32-os"] != energies["edge-16x16-ws"]  # the accelerator axis reached the runs
    row = table.set_index("run").loc["tiny-edge-16x16-ws"]
    pts = pd.read_csv(tmp_path / "runs" / "tiny-edge-16x16-ws" / "points.csv").set_index("label")
    assert row["fp32_top1"] == pts.loc["FP32", "top1"] and row["w8a8_top1"] == pts.loc["W8A8-pc", "top1"]


def test_a_failed_run_is_reported_and_the_others_finish(tiny, tmp_path, monkeypatch, capsys):  # noqa: F811
    real = sweep.run

    def flaky(opts):
        if "scalesim" in opts.out:
            raise QuantsimError("the disk is full (simulated)")
        return real(opts)

    monkeypatch.setattr(sweep, "run", flaky)
    f = _write(tmp_path, TINY)
    assert pareto.main(["--sweep", str(f), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: 1 of 2 runs failed (tiny-scalesim-32x32-os)"), err
    table = pd.read_csv(tmp_path / "runs" / "sweeps.csv").set_index("run")
    assert table.loc["tiny-scalesim-32x32-os", "status"] == "failed"
    assert "disk is full" in table.loc["tiny-scalesim-32x32-os", "error"]
    assert table.loc["tiny-edge-16x16-ws", "status"] == "ok"
    assert (tmp_path / "runs" / "tiny-edge-16x16-ws" / "points.csv").exists()
    assert "failed: tiny-scalesim-32x32-os" in (tmp_path / "runs" / "summary.txt").read_text()


@pytest.mark.skipif(not (SHARED / "models" / "cifar10-resnet").is_dir() or not CIFAR.is_dir(),
                    reason="../shared (CIFAR-10 and the CIFAR ResNets) is absent")
def test_the_readme_example_file_checks_clean(monkeypatch):
    """docs/sweeps/cifar_resnets.toml, the README's example, names models, data and presets that exist."""
    runs = sweep_file.load_sweep_file(REPO / "docs" / "sweeps" / "cifar_resnets.toml")
    assert len(runs) == 8 and {r.options.rounding for r in runs} == {"nearest", "gptq"}
    assert all(Path(r.options.model).is_file() for r in runs)

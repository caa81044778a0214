"""reports: atomic writers, the staged report directory, the Pareto mask and the plots."""
import json
import os
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reports import plots
from reports.io import (
    ReportDir,
    save_figure_atomic,
    to_jsonable,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------ atomic writers


def test_text_json_csv_round_trip(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    obj = {"i": np.int64(3), "f": np.float32(0.5), "arr": np.arange(3), "nan": float("nan"),
           "b": np.bool_(True), "t": (1, 2), (4, 8): "pair", 8: np.array([[1.5]]),
           "path": tmp_path}
    write_json_atomic(tmp_path / "sub" / "s.json", obj)  # parent created
    got = json.loads((tmp_path / "sub" / "s.json").read_text())
    assert got == {"i": 3, "f": 0.5, "arr": [0, 1, 2], "nan": None, "b": True, "t": [1, 2],
                   "4,8": "pair", "8": [[1.5]], "path": str(tmp_path)}
    df = pd.DataFrame({"layer": ["c1", "c2"], "bits": [4, 8]})
    write_csv_atomic(tmp_path / "l.csv", df)
    assert (tmp_path / "l.csv").read_text() == "layer,bits\nc1,4\nc2,8\n"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "l.csv"), df)
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "l.csv", "sub"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"ok": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_to_jsonable_dataclass_with_to_dict():
    from quantsim.mixed.allocate import allocate_threshold
    a = allocate_threshold({"l0": {4: 1.0, 6: 0.5, 8: 0.1}})
    assert to_jsonable({"alloc": a})["alloc"]["policy"] == "threshold"


def test_written_files_have_ordinary_permissions(tmp_path):
    write_text_atomic(tmp_path / "x.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------------ ReportDir


def _fig():
    from matplotlib.figure import Figure
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def test_reportdir_exception_leaves_nothing(tmp_path):
    out = tmp_path / "runs" / "r1"  # neither runs/ nor r1/ exists yet
    with pytest.raises(RuntimeError, match="boom"):
        with ReportDir(out) as rd:
            rd.write_text("layers.csv", "a,b\n")
            rd.write_json("summary.json", {"x": 1})
            assert rd.staging.exists() and rd.staging.parent == out.parent
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the parent it made is gone too


def test_reportdir_exception_keeps_existing_out_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("old")
    with pytest.raises(KeyError):
        with ReportDir(out) as rd:
            rd.write_text("summary.json", "new")
            rd.write_text("layers.csv", "new")
            raise KeyError("x")
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]
    assert (out / "summary.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_reportdir_commit_moves_everything(tmp_path):
    out = tmp_path / "out"
    with ReportDir(out) as rd:
        rd.write_text("layers.csv", "a\n1\n")
        rd.write_json("summary.json", {"top1": np.float64(0.9)})
        rd.write_csv("points.csv", pd.DataFrame({"label": ["W8A8"]}))
        rd.save_figure(_fig(), "plots/energy")
        assert not out.exists()  # nothing visible before commit
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "layers.csv", "plots/energy.png", "plots/energy.svg", "points.csv", "summary.json"]
    assert json.loads((out / "summary.json").read_text()) == {"top1": 0.9}
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # staging dir gone


def test_reportdir_commit_into_existing_out_replaces_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("old")
    (out / "keep.txt").write_text("keep")
    rd = ReportDir(out, autocommit=False)
    rd.write_text("summary.json", "new")
    rd.commit()
    rd.commit()  # idempotent
    assert (out / "summary.json").read_text() == "new"
    assert (out / "keep.txt").read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(RuntimeError):
        rd.path("late.txt")


def test_reportdir_without_autocommit_aborts_on_clean_exit(tmp_path):
    out = tmp_path / "out"
    with ReportDir(out, autocommit=False) as rd:
        rd.write_text("a.txt", "a")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_reportdir_rejects_paths_outside(tmp_path):
    with ReportDir(tmp_path / "out", autocommit=False) as rd:
        with pytest.raises(ValueError):
            rd.path("../escape.txt")
        with pytest.raises(ValueError):
            rd.path(tmp_path / "abs.txt")


# ------------------------------------------------------------------------ Pareto mask


def _brute_front(acc, en):
    n = len(acc)
    keep = []
    for i in range(n):
        if not (np.isfinite(acc[i]) and np.isfinite(en[i])):
            keep.append(False)
            continue
        dominated = False
        for j in range(n):
            if j == i or not (np.isfinite(acc[j]) and np.isfinite(en[j])):
                continue
            if en[j] <= en[i] and acc[j] >= acc[i] and (en[j] < en[i] or acc[j] > acc[i]):
                dominated = True
        keep.append(not dominated)
    return np.array(keep, dtype=bool)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.1, 0.5, 0.7, 0.9, float("nan")]) | st.floats(0, 1),
                          st.integers(1, 20).map(float) | st.just(float("nan"))),
                min_size=0, max_size=12))
def test_pareto_front_against_brute_force(pts):
    acc = np.array([p[0] for p in pts], dtype=float)
    en = np.array([p[1] for p in pts], dtype=float)
    df = pd.DataFrame({"top1": acc, "e_total_pj": en})
    np.testing.assert_array_equal(plots.pareto_front(df), _brute_front(acc, en))


def test_pareto_front_known_example():
    df = pd.DataFrame({"label": ["fp32", "w8", "w6", "w4", "mix", "dup"],
                       "top1": [0.92, 0.918, 0.90, 0.80, 0.915, 0.80],
                       "e_total_pj": [100.0, 10.0, 7.0, 3.0, 6.0, 3.0]})
    assert plots.pareto_front(df).tolist() == [True, True, False, True, True, True]


# ------------------------------------------------------------------------ plots


def _assert_png_svg(paths, texts):
    png, svg = paths
    assert png.suffix == ".png" and svg.suffix == ".svg"
    data = png.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC
    text = svg.read_text(encoding="utf-8")
    assert text.lstrip().startswith("<?xml") and "</svg>" in text
    for t in texts:
        assert escape(t) in text, f"{t!r} not in the SVG"


def test_energy_breakdown_plot(tmp_path):
    rows = pd.DataFrame({"layer": [f"layer{i}.conv" for i in range(6)],
                         "e_mac_pj": np.arange(6) + 1.0, "e_sram_pj": np.ones(6),
                         "e_dram_pj": np.full(6, 2.0)})
    paths = plots.energy_breakdown(rows, tmp_path / "energy", title="ResNet-20 W8A8")
    _assert_png_svg(paths, list(rows["layer"]) + ["MAC", "SRAM", "DRAM", "ResNet-20 W8A8"])


def test_pareto_plot(tmp_path):
    pts = pd.DataFrame({"label": ["FP32", "W8A8 pt", "W4A4 pc", "mixed-budget 0.6", "W6A6 pt"],
                        "policy": ["fp32", "uniform", "uniform", "budget", "uniform"],
                        "top1": [0.92, 0.918, 0.80, 0.915, 0.91],
                        "e_total_pj": [1e9, 1e8, 3e7, 6e7, 6.5e7]})
    paths = plots.pareto(pts, tmp_path / "pareto", fp32_top1=0.92, w8a8_cost=1e8)
    _assert_png_svg(paths, list(pts["label"]) + ["Pareto frontier", "budget", "uniform"])
    # no policy column, linear axis, a NaN point: still draws
    paths = plots.pareto(pts.drop(columns="policy").assign(
        top1=[0.92, 0.918, 0.80, float("nan"), 0.91]), tmp_path / "p2", logx=False)
    _assert_png_svg(paths, ["W8A8 pt", "W4A4 pc"])
    # against latency: its own axis, unit and reference line
    paths = plots.pareto(pts.assign(latency_us=[3000.0, 900.0, 500.0, 700.0, 800.0]), tmp_path / "lat",
                         fp32_top1=0.92, w8a8_cost=900.0, cost="latency_us")
    _assert_png_svg(paths, ["latency per image (ms)", "W8A8 latency (0.9 ms)", "Pareto frontier"])
    with pytest.raises(ValueError, match="cost 'cycles' is not one of"):
        plots.pareto(pts.assign(cycles=1), tmp_path / "bad", cost="cycles")


def test_pareto_plot_draws_a_reference_sweep(tmp_path, monkeypatch):
    """A reference sweep: its points faint and unlabelled, its own frontier as a dashed step line
    'reference: <label>' beside the sweep's (which stays as without one), on one shared axis."""
    figures = []
    real_save = plots.save_figure_atomic

    def keep(fig, stem):
        figures.append(fig)
        return real_save(fig, stem)

    monkeypatch.setattr(plots, "save_figure_atomic", keep)
    pts = pd.DataFrame({"label": ["W8A8", "W6A6", "W4A4", "mixed-0.6"], "policy": ["uniform"] * 3 + ["budget"],
                        "top1": [0.92, 0.91, 0.80, 0.915], "e_total_pj": [1e8, 6.5e7, 3e7, 6e7]})
    # frontier (3e7, .70), (6e7, .85), (2e9, .90); (8e7, .84) is dominated by (6e7, .85)
    ref = pd.DataFrame({"label": ["a", "b", "c", "d"], "policy": ["uniform"] * 4,
                        "top1": [0.90, 0.70, 0.85, 0.84], "e_total_pj": [2e9, 3e7, 6e7, 8e7]})
    paths = plots.pareto(pts, tmp_path / "ref", w8a8_cost=1e8, reference=ref, reference_label="nearest", logx=False)
    _assert_png_svg(paths, ["reference: nearest", "Pareto frontier", "W4A4"])
    ax = figures[-1].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    dashed = lines["reference: nearest"]
    assert dashed.get_linestyle() == "--" and dashed.get_drawstyle() == "steps-post"
    # the reference's 2 nJ point makes the shared unit mJ, for the sweep's points too
    assert ax.get_xlabel() == "energy per image (mJ)"
    np.testing.assert_allclose(dashed.get_xdata(), [3e7 / 1e9, 6e7 / 1e9, 2.0])
    np.testing.assert_allclose(dashed.get_ydata(), [0.70, 0.85, 0.90])
    own = lines["Pareto frontier"]
    np.testing.assert_allclose(own.get_xdata(), [3e7 / 1e9, 6e7 / 1e9, 1e8 / 1e9])
    np.testing.assert_allclose(own.get_ydata(), [0.80, 0.915, 0.92])
    faint = [c for c in ax.collections if c.get_alpha() is not None and c.get_alpha() < 0.5]
    assert len(faint) == 1 and len(faint[0].get_offsets()) == 4
    assert not any(t.get_text() in set(ref["label"]) for t in ax.texts)  # the sweep's points alone are labelled
    # without a reference: no such line, the same frontier
    plots.pareto(pts, tmp_path / "plain", w8a8_cost=1e8, logx=False)
    plain = figures[-1].axes[0]
    assert [l.get_label() for l in plain.get_lines()].count("reference: nearest") == 0
    assert plain.get_xlabel() == "energy per image (µJ)"
    with pytest.raises(KeyError, match="reference needs columns"):
        plots.pareto(pts, tmp_path / "bad", reference=ref.drop(columns="e_total_pj"))


def test_width_map_plot(tmp_path):
    layers = pd.DataFrame({"layer": ["conv1", "layer1.0.conv1", "fc"], "w_bits": [8, 4, 6],
                           "a_bits": [8, 8, 6], "energy_share": [0.2, 0.5, 0.3]})
    paths = plots.width_map(layers, tmp_path / "widths")
    _assert_png_svg(paths, list(layers["layer"]) + ["weights", "activations"])


def test_plots_name_missing_columns(tmp_path):
    with pytest.raises(KeyError, match="e_dram_pj"):
        plots.energy_breakdown(pd.DataFrame({"layer": ["a"], "e_mac_pj": [1.0],
                                             "e_sram_pj": [1.0]}), tmp_path / "e")
    assert list(tmp_path.iterdir()) == []


def test_save_figure_atomic_strips_suffix_and_is_reproducible(tmp_path):
    fig = _fig()
    png, svg = save_figure_atomic(fig, tmp_path / "f.png")
    assert png.name == "f.png" and svg.name == "f.svg"
    first = svg.read_bytes()
    save_figure_atomic(fig, tmp_path / "f")
    assert svg.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "f.svg"]

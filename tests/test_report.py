"""The person's view of a run: the terminal summary (stdout = summary.txt), report.html (its key
numbers are summary.json's, every layer of layers.csv is in it, nothing is fetched), --quiet and
--json, a sweep's page; and the page in headless Chromium (no console message, a real picture,
the tables sort)."""
from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from quantsim.cli import pareto, simulate
from reports import format as fmt
from test_pareto import tiny  # noqa: F401  (fixture: a tiny residual net on random images)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR = SHARED / "data" / "cifar10"
R20 = next(iter(sorted((SHARED / "models" / "cifar10-resnet").glob("resnet20-*.th"))), None) if SHARED.exists() else None
needs_shared = pytest.mark.skipif(R20 is None or not CIFAR.exists(), reason="../shared (real CIFAR-10 data and ResNets) is absent")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


class Page(HTMLParser):
    """The parts of report.html the tests read: key-number cells, table cells, links."""

    def __init__(self, text: str):
        super().__init__()
        self.keys: dict[str, list[tuple[str, str]]] = {}  # data-key -> [(data-value, shown text)]
        self.tables: dict[str, list[list[str]]] = {}
        self.urls: list[str] = []
        self._key = self._table = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href", "xlink:href"):
            if k in a:
                self.urls.append(a[k])
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
            self._key = (a["data-key"], a["data-value"]) if "data-key" in a else None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            if self._table and self.tables[self._table]:
                self.tables[self._table][-1].append(text)
            if self._key:
                self.keys.setdefault(self._key[0], []).append((self._key[1], text))
            self._cell, self._key = None, None
        elif tag == "table":
            self._table = None


UNITS = {"pJ": 1.0, "nJ": 1e3, "µJ": 1e6, "mJ": 1e9, "J": 1e12, "ns": 1e-3, "µs": 1.0, "ms": 1e3, "s": 1e6,
         "B": 1.0, "KiB": 2.0 ** 10, "MiB": 2.0 ** 20, "GiB": 2.0 ** 30, "%": 1.0, "x": 1.0, "": 1.0,
         # energy-delay products, whose summary.json value is in pJ·µs (1 J·s = 1e18 pJ·µs)
         "fJ·s": 1e3, "pJ·s": 1e6, "nJ·s": 1e9, "µJ·s": 1e12, "mJ·s": 1e15, "J·s": 1e18}


def shown_value(text: str) -> float:
    """The number a person reads in '186 µJ', '93.1 µs', '75.00%', '0.221x', '93,108'."""
    m = re.fullmatch(r"(-?[\d,]*\.?\d+(?:e[-+]?\d+)?)\s*([a-zA-Zµ%·]*)", text.strip())
    assert m, f"not a number with a unit: {text!r}"
    return float(m.group(1).replace(",", "")) * UNITS[m.group(2)]


def check_key_numbers(page: Page, summary: dict) -> int:
    """Each key-number cell's exact value is summary.json's, and what it shows reads as that value."""
    checked = 0
    for key, cells in page.keys.items():
        for value, text in cells:
            assert json.loads(value) == summary[key], key
            v = summary[key]
            if isinstance(v, (int, float)) and not isinstance(v, bool) and text != "n/a":
                assert shown_value(text) == pytest.approx(v, rel=6e-3, abs=1e-9), (key, text, v)
                checked += 1
    return checked


def run_main(main, argv) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def r20(tmp_path_factory):
    """One real ResNet-20 W4A8 run on 16 CIFAR-10 test images, its stdout kept."""
    if R20 is None or not CIFAR.exists():
        pytest.skip("../shared (real CIFAR-10 data and ResNets) is absent")
    out = tmp_path_factory.mktemp("r20") / "run"
    code, stdout = run_main(simulate.main, [str(R20), "--arch", "cifar_resnet20", "--data", f"cifar10:{CIFAR}",
                                            "--bits", "W4A8", "--calib", "32", "--eval", "16",
                                            "--bitexact-images", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    return out, stdout


@needs_shared
def test_terminal_summary_is_summary_txt_and_tells_the_numbers(r20):
    out, stdout = r20
    s = json.loads((out / "summary.json").read_text())
    layers = pd.read_csv(out / "layers.csv")
    assert stdout == (out / "summary.txt").read_text()
    assert stdout.startswith("quantsim: cifar_resnet20 at W4A8")
    m = re.search(r"top-1 ([\d.]+)% \(FP32 ([\d.]+)%\).* on (\d+) labelled images", stdout)
    assert m and float(m.group(1)) == pytest.approx(s["top1"], abs=0.005)
    assert float(m.group(2)) == pytest.approx(s["top1_fp32"], abs=0.005) and int(m.group(3)) == s["n_labelled"] == 16
    m = re.search(r"Energy +(\S+ \S+) per image \(detailed model\): (\S+) FP32's (\S+ \S+), (\S+) W8A8's", stdout)
    assert m, stdout
    assert shown_value(m.group(1)) == pytest.approx(s["e_total_pj"], rel=6e-3)
    assert shown_value(m.group(2)) == pytest.approx(s["energy_ratio_fp32"], rel=6e-3)
    assert shown_value(m.group(3)) == pytest.approx(s["e_fp32_pj"], rel=6e-3)
    assert shown_value(m.group(4)) == pytest.approx(s["energy_ratio_w8a8"], rel=6e-3) and s["energy_ratio_w8a8"] < 1
    m = re.search(r"(\S+ \S+) per image \(seed model", stdout)
    assert shown_value(m.group(1)) == pytest.approx(s["e_seed_pj"], rel=6e-3)
    m = re.search(r"([\d,]+) cycles per image = (\S+ \S+) at (\d+) MHz", stdout)
    assert int(m.group(1).replace(",", "")) == s["cycles"] and int(m.group(3)) == s["clock_mhz"]
    assert shown_value(m.group(2)) == pytest.approx(s["cycles"] / s["clock_mhz"], rel=6e-3)
    m = re.search(r"of which ([\d,]+) wait for DRAM \(([\d.]+) bytes per cycle\)", stdout)
    assert int(m.group(1).replace(",", "")) == s["stall_cycles"] == s["cycles"] - s["compute_cycles"] > 0
    assert float(m.group(2)) == pytest.approx(s["dram_bytes_per_cycle"], rel=1e-3)
    assert s["stall_cycles"] == layers["stall_cycles"].sum() and s["cycles"] == layers["cycles"].sum()
    m = re.search(r"energy-delay product (\S+ \S+) \(detailed energy x latency\), (\S+) W8A8's", stdout)
    assert shown_value(m.group(1)) == pytest.approx(s["edp_pj_us"], rel=6e-3)
    assert s["edp_pj_us"] == pytest.approx(s["e_total_pj"] * s["latency_us"], rel=1e-12)
    assert shown_value(m.group(2)) == pytest.approx(s["edp_ratio_w8a8"], rel=6e-3)
    assert s["edp_ratio_w8a8"] == pytest.approx(s["edp_pj_us"] / s["edp_w8a8_pj_us"], rel=1e-12)
    m = re.search(r"(\S+ \S+) DRAM traffic per image", stdout)
    assert shown_value(m.group(1)) == pytest.approx(s["dram_bytes"], rel=6e-3)
    shares = dict(re.findall(r"(MAC|SRAM|DRAM) (\d+)%", stdout))
    for part in ("MAC", "SRAM", "DRAM"):
        assert int(shares[part]) == round(100 * s[f"e_{part.lower()}_pj"] / s["e_total_pj"])
    assert "yes: integer_ref equals the emulation on every layer of 2 images" in stdout
    # the three costliest layers, in order, from layers.csv
    named = re.findall(r"^(?:Costliest| ) +\d\. (\S+) ", stdout, re.M)
    assert named == list(layers.sort_values("e_total_pj", ascending=False, kind="stable")["layer"][:3])
    # every evaluation image, FP32's and the program's five classes by name
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == 16 and set(pred["label_name"]) <= {"airplane", "automobile", "bird", "cat", "deer", "dog",
                                                          "frog", "horse", "ship", "truck"}
    for r in pred.itertuples():
        assert f"{r.image}  FP32  {r.fp32_top5.replace('|', ', ')}" in stdout
    assert pred["top1_agrees"].mean() * 100 == pytest.approx(s["agreement_fp32"])
    assert pred["top5_overlap"].mean() == pytest.approx(s["top5_overlap_fp32"])
    assert (out / "report.html").as_posix() in stdout


@needs_shared
def test_report_html_holds_the_summary_and_every_layer(r20):
    out, stdout = r20
    s = json.loads((out / "summary.json").read_text())
    layers = pd.read_csv(out / "layers.csv")
    text = (out / "report.html").read_text()
    page = Page(text)
    for key in ("top1", "top1_fp32", "agreement_fp32", "bitexact_mismatches", "e_total_pj", "e_seed_pj",
                "energy_ratio_fp32", "energy_ratio_w8a8", "seed_ratio_w8a8", "cycles", "latency_us", "dram_bytes",
                "stall_cycles", "edp_pj_us", "edp_ratio_w8a8"):
        assert key in page.keys, key
    assert check_key_numbers(page, s) >= 20
    rows = page.tables["layers"]
    head = rows[0]
    assert [r[head.index("layer")] for r in rows[1:]] == list(layers["layer"])
    for r, (_, want) in zip(rows[1:], layers.iterrows()):
        assert shown_value(r[head.index("e_total_pj")]) == pytest.approx(want["e_total_pj"], rel=1e-3)
        assert r[head.index("w_bits")] == ("" if pd.isna(want["w_bits"]) else str(int(want["w_bits"])))
    assert len(page.tables["predictions"]) == 1 + 16
    assert text.count("<svg") >= 1 and "<?xml" not in text  # the energy plot, inline
    # self-contained: every link and source is inside the page
    inside = [u for u in page.urls if u.startswith("#")]
    thumbs = [u for u in page.urls if u.startswith("data:image/png;base64,")]
    assert inside and len(inside) + len(thumbs) == len(page.urls), set(page.urls) - set(inside) - set(thumbs)
    # a thumbnail per image (16: few enough), each the PNG written beside the report
    assert len(thumbs) == 16
    for i, u in enumerate(thumbs):
        png = base64.b64decode(u.split(",", 1)[1])
        assert png == (out / "thumbs" / f"{i:03d}.png").read_bytes()
        assert Image.open(io.BytesIO(png)).size == (96, 96)  # CIFAR's 32x32, enlarged 3x
    assert not re.search(r"url\(\s*['\"]?(https?:|//)|@import|<link\b", text)
    assert html.unescape(re.search(r"<pre>(.*?)</pre>", text, re.S).group(1)) == stdout


@pytest.mark.parametrize("mode", ["--quiet", "--json"])
def test_quiet_and_json(tmp_path, tiny_ckpt, tiny_data, mode, capsys):
    out = tmp_path / "o"
    argv = [str(tiny_ckpt), "--data", f"cifar10:{tiny_data}", "--calib", "4", "--eval", "4", "--bitexact-images", "2",
            "--out", str(out), mode]
    code = simulate.main(argv)
    got = capsys.readouterr()
    assert code == 0
    assert (out / "summary.txt").exists() and (out / "report.html").exists()
    if mode == "--quiet":
        assert got.out == "" and got.err == ""  # no progress bars either
    else:
        lines = got.out.splitlines()
        assert len(lines) == 1 and json.loads(lines[0]) == json.loads((out / "summary.json").read_text())
        assert {"model", "bits", "top1", "agreement_fp32", "bitexact_mismatches", "e_total_pj"} <= set(json.loads(lines[0]))


def test_fp32_run_summary_says_what_was_not_checked(tmp_path, tiny_ckpt, tiny_data, capsys):
    out = tmp_path / "fp32"
    assert simulate.main([str(tiny_ckpt), "--bits", "fp32", "--data", f"cifar10:{tiny_data}", "--calib", "4",
                          "--eval", "4", "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    assert stdout == (out / "summary.txt").read_text() and stdout.startswith("quantsim: cifar_resnet20 at fp32")
    assert "Bit-exact  not checked" in stdout and "Costliest" not in stdout  # no integer program, no layers.csv
    assert s["energy_ratio_fp32"] == 1.0 and s["energy_ratio_w8a8"] > 1
    page = Page((out / "report.html").read_text())
    assert check_key_numbers(page, s) >= 10 and "layers" not in page.tables


def test_numbers_read_as_a_person_reads_them():
    assert fmt.energy(1.86e8) == "186 µJ" and fmt.energy(3.45e9) == "3.45 mJ" and fmt.energy(12.0) == "12 pJ"
    assert fmt.energy(0) == "0 pJ" and fmt.energy(None) == fmt.energy(float("nan")) == "n/a"
    assert fmt.latency(93.108) == "93.1 µs" and fmt.latency(4035.162) == "4.04 ms" and fmt.latency(0.5) == "500 ns"
    assert fmt.nbytes(955392) == "933 KiB" and fmt.nbytes(512) == "512 B" and fmt.nbytes(3 * 2 ** 30) == "3 GiB"
    assert fmt.ratio(0.2214) == "0.221x" and fmt.pct(62.5, 1) == "62.5%" and fmt.count(4035162) == "4,035,162"
    assert fmt.short(np.float64(9137000.0)) == "9,137,000" and fmt.short(0.012346) == "0.01235"
    assert fmt.short(np.bool_(True)) == "yes" and fmt.short(pd.NA) == "" and fmt.short(None) == ""
    for text, value in (("186 µJ", 1.86e8), ("93.1 µs", 93.1), ("933 KiB", 933 * 1024), ("75.00%", 75.0),
                        ("0.221x", 0.221), ("4,035,162", 4035162), ("9.137e+06", 9.137e6)):
        assert shown_value(text) == pytest.approx(value)


def test_quiet_and_json_exclude_each_other(tmp_path, tiny_ckpt, capsys):
    with pytest.raises(SystemExit) as e:
        simulate.main([str(tiny_ckpt), "--quiet", "--json", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_mixed_run_page_shows_widths_and_sensitivity(tiny, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "mixed"
    assert simulate.main(["tiny", "--bits", "mixed", "--calib", "8", "--bitexact-images", "2", "--batch-size", "4",
                          "--accel", "scalesim-32x32-os", "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out == (out / "summary.txt").read_text()
    layers = pd.read_csv(out / "layers.csv")
    page = Page((out / "report.html").read_text())
    head, rows = page.tables["layers"][0], page.tables["layers"][1:]
    assert {"chosen_bits", "sens_w4", "sens_w8"} <= set(head)
    mac = layers[layers["chosen_bits"].notna()]
    shown = {r[head.index("layer")]: r for r in rows}
    for _, want in mac.iterrows():
        r = shown[want["layer"]]
        assert r[head.index("chosen_bits")] == str(int(want["chosen_bits"]))
        assert shown_value(r[head.index("sens_w4")]) == pytest.approx(want["sens_w4"], rel=1e-3)
    assert "Widths per layer" in (out / "report.html").read_text() and (out / "width_map.svg").exists()
    check_key_numbers(page, json.loads((out / "summary.json").read_text()))


def test_sweep_summary_and_page(tiny, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "sweep"
    argv = ["tiny", "--calib", "8", "--bitexact-images", "2", "--batch-size", "4", "--accel", "scalesim-32x32-os",
            "--out", str(out), "--no-progress", "--no-uniform", "--budgets", "0.9"]
    assert pareto.main(argv) == 0
    stdout = capsys.readouterr().out
    pts = pd.read_csv(out / "points.csv")
    assert list(pts["label"]) == ["FP32", "mixed-thr", "mixed-at-thr", "mixed-0.9"]
    assert stdout == (out / "summary.txt").read_text()
    for r in pts.itertuples():
        line = next(l for l in stdout.splitlines() if re.match(rf"[* ] {re.escape(r.label)} ", l))
        assert fmt.pct(r.top1) in line and fmt.energy(r.e_total_pj) in line
        assert fmt.latency(r.latency_us) in line and fmt.edp(r.edp_pj_us) in line
    page = Page((out / "report.html").read_text())
    head, rows = page.tables["points"][0], page.tables["points"][1:]
    assert [r[head.index("label")] for r in rows] == list(pts["label"])
    for r, (_, want) in zip(rows, pts.iterrows()):
        assert shown_value(r[head.index("top1")]) == pytest.approx(want["top1"], rel=1e-3)
        assert shown_value(r[head.index("e_total_pj")]) == pytest.approx(want["e_total_pj"], rel=1e-3)
        assert shown_value(r[head.index("latency_us")]) == pytest.approx(want["latency_us"], rel=1e-3)
    front = [r[head.index("frontier")] == "yes" for r in rows]
    # the frontier marks, among the quantized points (FP32 is the plot's reference line): a point is
    # marked exactly when no other is at least as good on both axes and better on one
    q = pts[pts["policy"] != "fp32"]
    assert not front[0] and any(front)
    for i, on in enumerate(front[1:], 1):
        a, e = pts["top1"][i], pts["e_total_pj"][i]
        beaten = ((q["top1"] >= a) & (q["e_total_pj"] <= e) & ((q["top1"] > a) | (q["e_total_pj"] < e))).any()
        assert on == (not beaten), pts.iloc[i]["label"]
    text = (out / "report.html").read_text()
    assert text.count("<svg") >= 3  # the Pareto plots (energy, latency) and width maps, inline
    assert "Top-1 against latency per image" in text
    assert all(u.startswith("#") for u in page.urls)
    # --json: the points as one JSON line
    assert pareto.main(argv + ["--resume", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and [p["label"] for p in json.loads(lines[0])] == list(pts["label"])


# ----------------------------------------------------------------------------- the browser

def chromium(args: list[str], tmp: Path, url: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a file URL, offline flags, console messages logged to stderr."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
           *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if ":CONSOLE" in l]


@needs_chromium
def test_console_check_sees_a_broken_page(tmp_path):
    """The console check below can fail: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>no_such_function();</script></body></html>")
    res = chromium(["--screenshot=" + str(tmp_path / "bad.png"), "--window-size=400,300"], tmp_path, bad.as_uri())
    assert any("no_such_function" in l for l in console_messages(res.stderr)), res.stderr


@needs_chromium
@needs_shared
def test_report_in_headless_chromium(r20, tmp_path):
    out, _ = r20
    shot = tmp_path / "shot.png"
    res = chromium([f"--screenshot={shot}", "--window-size=1280,1600"], tmp_path, (out / "report.html").as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    assert console_messages(res.stderr) == []
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape == (1600, 1280, 3)
    ink = (img < 200).any(axis=2)  # not background
    assert 0.02 < ink.mean() < 0.6, ink.mean()
    assert ink[:200].any() and ink[800:].any()  # text at the top and further down (cards, table, plot)
    colours = {tuple(c) for c in img[::7, ::7].reshape(-1, 3)}
    assert len(colours) > 50  # the plot's colours, not a blank or one-colour page
    # the sortable table really sorts in a browser: the layers by energy, most first
    url = (out / "report.html").as_uri() + "#sort=layers:e_total_pj:desc"
    res = chromium(["--dump-dom"], tmp_path, url)
    assert console_messages(res.stderr) == []
    dom = Page(res.stdout)
    head, rows = dom.tables["layers"][0], dom.tables["layers"][1:]
    e = [shown_value(r[head.index("e_total_pj")]) for r in rows]
    layers = pd.read_csv(out / "layers.csv")
    assert len(e) == len(layers) and e == sorted(e, reverse=True)
    assert e != [shown_value(fmt.short(v)) for v in layers["e_total_pj"]]  # the order changed
    assert 'data-sorted="e_total_pj:desc"' in res.stdout

"""The README's examples work as written: the Python API block runs, the TOML preset loads."""
from __future__ import annotations

import json
import re
from pathlib import Path

from hwmodel.arch import load_accelerator

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(lang: str, after: str) -> str:
    text = README.read_text()
    start = text.index(after)
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    assert m, f"no ```{lang} block after {after!r} in README.md"
    return m.group(1)


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_block("python", "## Python API"), "README.md", "exec"), {})
    out = tmp_path / "runs" / "api-example"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bits"] == "W4A8" and summary["bitexact_mismatches"] == 0
    assert 0 < summary["energy_ratio_w8a8"] < 1  # 4-bit weights cost less than W8A8 on the same array
    printed = capsys.readouterr().out.split()
    assert float(printed[0]) == summary["e_total_pj"]
    layers = (out / "layers.csv").read_text().splitlines()
    assert len(layers) > 20 and layers[0].startswith("layer,")


def test_readme_toml_example_loads(tmp_path):
    path = tmp_path / "my-array.toml"
    path.write_text(_block("toml", "## Accelerator presets"))
    a = load_accelerator(path)
    assert (a.name, a.rows, a.cols, a.dataflow) == ("my-array", 32, 32, "ws")
    assert a.energy.e_mac8_pj == 0.23 and "Horowitz" in a.energy.sources["e_mac8_pj"]

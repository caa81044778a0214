"""Run SCALE-Sim 3.0.0 on the conv layers of ResNet-18 (224x224) and CIFAR ResNet-20 and
compare it layer by layer with hwmodel.mapping (dram_model="scalesim", which replays
SCALE-Sim's read buffer; the default "reuse" model's DRAM reads are printed beside it).

SCALE-Sim lives in its own venv (.venv-scalesim: `pip install scalesim==3.0.0 'numpy<2.3'`);
this script drives it through a subprocess, so the project venv never imports it.

    python benchmarks/scalesim_compare.py                     # run SCALE-Sim, then compare
    python benchmarks/scalesim_compare.py --reuse DIR         # compare against earlier output
    python benchmarks/scalesim_compare.py --write-fixtures    # refresh tests/fixtures/scalesim

SCALE-Sim models no padding and computes ofmap = ceil((H - k + s) / s); we give it the
input extent the convolution really reads, (OH - 1) * stride + k per axis (the padded
input, minus the trailing rows a strided window never reaches), so its GEMM is ours.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCALESIM_PY = ROOT / ".venv-scalesim" / "bin" / "python"
FIXTURES = ROOT / "tests" / "fixtures" / "scalesim"

# name, H, W (unpadded input), kh, kw, C, O, stride, pad   -- torchvision order
def _resnet18():
    L = [("conv1", 224, 224, 7, 7, 3, 64, 2, 3)]
    for b in range(2):
        L += [(f"layer1.{b}.conv1", 56, 56, 3, 3, 64, 64, 1, 1),
              (f"layer1.{b}.conv2", 56, 56, 3, 3, 64, 64, 1, 1)]
    size, cin = 56, 64
    for stage, cout in ((2, 128), (3, 256), (4, 512)):
        L += [(f"layer{stage}.0.conv1", size, size, 3, 3, cin, cout, 2, 1),
              (f"layer{stage}.0.conv2", size // 2, size // 2, 3, 3, cout, cout, 1, 1),
              (f"layer{stage}.0.downsample.0", size, size, 1, 1, cin, cout, 2, 0),
              (f"layer{stage}.1.conv1", size // 2, size // 2, 3, 3, cout, cout, 1, 1),
              (f"layer{stage}.1.conv2", size // 2, size // 2, 3, 3, cout, cout, 1, 1)]
        size, cin = size // 2, cout
    L += [("fc", 1, 1, 1, 1, 512, 1000, 1, 0)]
    return L


def _resnet20():
    L = [("conv1", 32, 32, 3, 3, 3, 16, 1, 1)]
    size, cin = 32, 16
    for stage, cout in ((1, 16), (2, 32), (3, 64)):
        for b in range(3):
            s = 2 if (b == 0 and stage > 1) else 1
            L += [(f"layer{stage}.{b}.conv1", size, size, 3, 3, cin, cout, s, 1)]
            size //= s
            L += [(f"layer{stage}.{b}.conv2", size, size, 3, 3, cout, cout, 1, 1)]
            cin = cout
    L += [("fc", 1, 1, 1, 1, 64, 10, 1, 0)]
    return L


NETWORKS = {"resnet18": _resnet18(), "resnet20": _resnet20()}
PRESETS = ("scalesim-32x32-ws", "scalesim-32x32-os")


def effective_input(h, k, s, p):
    """Input extent the conv reads (padded, without rows a strided window never reaches)."""
    oh = (h + 2 * p - k) // s + 1
    return oh, (oh - 1) * s + k


def topology_rows(layers):
    rows = []
    for name, h, w, kh, kw, c, o, s, p in layers:
        _, he = effective_input(h, kh, s, p)
        _, we = effective_input(w, kw, s, p)
        rows.append((name, he, we, kh, kw, c, o, s))
    return rows


def write_inputs(layers, accel, out: Path, run_name: str):
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "topology.csv", "w") as f:
        f.write("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
                "Num Filter, Strides,\n")
        for r in topology_rows(layers):
            f.write(", ".join(str(x) for x in r) + ",\n")
    # The layout file is only read when a custom layout is on (it is off); it must still
    # hold one row of integers per layer.
    with open(out / "layout.csv", "w") as f:
        f.write("Layer name," + ",".join(f"f{i}" for i in range(20)) + ",\n")
        for name, *_ in layers:
            f.write(name + "," + ",".join(["1"] * 6 + ["0", "1", "2", "0", "1", "2",
                                                       "0", "1", "2", "3", "0", "1", "2", "3"]) + ",\n")
    kb = [accel.sram_ifmap_bytes // 1024, accel.sram_filter_bytes // 1024,
          accel.sram_ofmap_bytes // 1024]
    (out / "scale.cfg").write_text(f"""[general]
run_name = {run_name}

[architecture_presets]
ArrayHeight:    {accel.rows}
ArrayWidth:     {accel.cols}
IfmapSramSzkB:   {kb[0]}
FilterSramSzkB:  {kb[1]}
OfmapSramSzkB:   {kb[2]}
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Bandwidth : 10
Dataflow : {accel.dataflow}
MemoryBanks:   1
ReadRequestBuffer: 512
WriteRequestBuffer: 512

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
""")
    with open(out / "layers.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["name", "H", "W", "kh", "kw", "C", "O", "stride", "pad"])
        wr.writerows(layers)


SCALESIM_CMD = (
    "from scalesim.scale_sim import scalesim; "
    "s = scalesim(save_disk_space=True, verbose=False, config='scale.cfg', "
    "topology='topology.csv', layout='layout.csv'); s.run_scale(top_path='results')"
)


def run_scalesim(workdir: Path) -> float:
    """Run SCALE-Sim in workdir (inputs written by write_inputs); returns wall seconds."""
    if not SCALESIM_PY.exists():
        raise SystemExit(f"SCALE-Sim venv not found at {SCALESIM_PY}")
    t0 = time.perf_counter()
    subprocess.run([str(SCALESIM_PY), "-c", SCALESIM_CMD], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    (workdir / "wall_seconds.txt").write_text(f"{dt:.1f}\n")
    return dt


# --------------------------------------------------------------------------------------
# Reading SCALE-Sim reports and comparing with hwmodel.mapping
# --------------------------------------------------------------------------------------
def read_report(path: Path) -> list[dict]:
    """A SCALE-Sim report CSV as a list of {column: float} (trailing commas dropped)."""
    lines = [ln.strip().rstrip(",") for ln in Path(path).read_text().splitlines() if ln.strip()]
    head = [h.strip() for h in lines[0].split(",")]
    return [dict(zip(head, (float(v) for v in ln.split(",")))) for ln in lines[1:]]


def compare(layers, accel, results_dir: Path) -> list[dict]:
    """Per layer: SCALE-Sim's counts next to hwmodel's, mapped with SCALE-Sim's view of the
    layer (padded input extent, no padding, 8-bit words)."""
    from hwmodel.mapping import map_conv
    comp = read_report(results_dir / "COMPUTE_REPORT.csv")
    acc = read_report(results_dir / "DETAILED_ACCESS_REPORT.csv")
    out = []
    for (name, he, we, kh, kw, c, o, s), cr, ar in zip(topology_rows(layers), comp, acc):
        hw = map_conv((1, c, he, we), (o, c, kh, kw), accel, stride=(s, s), dram_model="scalesim")
        ru = map_conv((1, c, he, we), (o, c, kh, kw), accel, stride=(s, s), dram_model="reuse")
        out.append({
            "reuse_dram_ifmap": ru["dram_rd_ifmap"], "reuse_dram_filter": ru["dram_rd_filter"],
            "layer": name,
            "ss_cycles": cr["Total Cycles"], "hw_cycles": hw["cycles"],
            "ss_sram_ifmap": ar["SRAM IFMAP Reads"], "hw_sram_ifmap": hw["sram_rd_ifmap"],
            "ss_sram_filter": ar["SRAM Filter Reads"], "hw_sram_filter": hw["sram_rd_filter"],
            "ss_sram_ofmap_wr": ar["SRAM OFMAP Writes"], "hw_sram_ofmap_wr": hw["sram_wr_ofmap"],
            "hw_ss_sram_ofmap_wr": hw["ss_sram_wr_ofmap"],
            "ss_dram_ifmap": ar["DRAM IFMAP Reads"], "hw_dram_ifmap": hw["dram_rd_ifmap"],
            "ss_dram_filter": ar["DRAM Filter Reads"], "hw_dram_filter": hw["dram_rd_filter"],
            "ss_dram_ofmap_wr": ar["DRAM OFMAP Writes"], "hw_dram_ofmap_wr": hw["dram_wr_ofmap"],
            "hw_ss_dram_ofmap_wr": hw["ss_dram_wr_ofmap"],
        })
    return out


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1)


def print_comparison(rows, title):
    print(f"\n{title}")
    keys = [("cycles", "hw_cycles"), ("sram_ifmap", "hw_sram_ifmap"),
            ("sram_filter", "hw_sram_filter"), ("dram_ifmap", "hw_dram_ifmap"),
            ("dram_filter", "hw_dram_filter"), ("dram_ofmap_wr", "hw_ss_dram_ofmap_wr")]
    print(f"{'layer':24s}" + "".join(f"{k:>16s}" for k, _ in keys) + "   (relative difference)")
    worst = {k: 0.0 for k, _ in keys}
    for r in rows:
        cells = []
        for k, hk in keys:
            d = _rel(r[hk], r["ss_" + k])
            worst[k] = max(worst[k], d)
            cells.append(f"{d * 100:15.3f}%")
        print(f"{r['layer']:24s}" + "".join(cells))
    print(f"{'worst':24s}" + "".join(f"{worst[k] * 100:15.3f}%" for k, _ in keys))
    ss = sum(r["ss_dram_ifmap"] + r["ss_dram_filter"] for r in rows)
    ru = sum(r["reuse_dram_ifmap"] + r["reuse_dram_filter"] for r in rows)
    print(f"DRAM ifmap+filter reads, whole network: SCALE-Sim {ss:,}; hwmodel dram_model='reuse' "
          f"(the default) {ru:,} ({ru / max(ss, 1):.3f}x)")
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reuse", type=Path, help="directory with earlier runs (NET_DF/results/...)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "scalesim")
    ap.add_argument("--nets", default="resnet18,resnet20")
    ap.add_argument("--write-fixtures", action="store_true",
                    help="copy the ResNet-18/20 reports into tests/fixtures/scalesim/<preset>/")
    args = ap.parse_args()
    from hwmodel.arch import load_accelerator
    base = args.reuse or args.work
    for net in args.nets.split(","):
        for preset in PRESETS:
            accel = load_accelerator(preset)
            d = base / f"{net}_{accel.dataflow}"
            if not args.reuse:
                write_inputs(NETWORKS[net], accel, d, f"{net}_{accel.dataflow}")
                dt = run_scalesim(d)
                print(f"SCALE-Sim {net} {preset}: {dt:.0f} s")
            res = d / "results" / f"{net}_{accel.dataflow}"
            rows = compare(NETWORKS[net], accel, res)
            print_comparison(rows, f"{net} on {preset}: hwmodel vs SCALE-Sim 3.0.0")
            if args.write_fixtures:
                fx = FIXTURES / preset / net
                fx.mkdir(parents=True, exist_ok=True)
                for f in ("COMPUTE_REPORT.csv", "DETAILED_ACCESS_REPORT.csv", "BANDWIDTH_REPORT.csv"):
                    shutil.copy(res / f, fx / f)
                for f in ("topology.csv", "scale.cfg", "layers.csv", "layout.csv"):
                    shutil.copy(d / f, fx / f)


if __name__ == "__main__":
    main()

"""report.html: one self-contained page per run or sweep (inline CSS, inline SVG figures, a few
lines of inline JavaScript to sort tables; nothing fetched from anywhere).

The page renders what the run produced (summary.json, layers.csv, predictions.csv, the sweep's
points, the figures' SVG text); it computes nothing new. Every key number is a cell carrying
``data-key`` (the summary.json key) and ``data-value`` (its exact value), so a reader script
or a test can check the page against summary.json.
"""
from __future__ import annotations

import base64
import html
import json
import math
import re

import pandas as pd

from reports import format as fmt

__all__ = ["inline_svg", "run_report", "sweep_report", "KEY_NUMBERS", "LAYER_COLUMNS"]

# (summary key, label, formatter): the run's key numbers, in the order shown
KEY_NUMBERS = (
    ("top1", "top-1 (integer program)", fmt.pct), ("top1_fp32", "top-1 FP32", fmt.pct),
    ("top5", "top-5 (integer program)", fmt.pct), ("top5_fp32", "top-5 FP32", fmt.pct),
    ("agreement_fp32", "top-1 equals FP32's", fmt.pct),
    ("top5_overlap_fp32", "top-5 classes shared with FP32 (of 5)", lambda x: fmt.NA if fmt.missing(x) else f"{float(x):.3g}"),
    ("n_eval", "evaluation images", fmt.count), ("n_labelled", "of them labelled", fmt.count),
    ("bitexact_images", "images checked bit-exactly", fmt.count),
    ("bitexact_mismatches", "differing integers (integer_ref vs emulation)", fmt.count),
    ("e_total_pj", "energy per image (detailed model)", fmt.energy),
    ("energy_ratio_fp32", "  vs FP32", fmt.ratio), ("energy_ratio_w8a8", "  vs W8A8", fmt.ratio),
    ("e_seed_pj", "energy per image (seed model)", fmt.energy),
    ("seed_ratio_fp32", "  vs FP32 (seed)", fmt.ratio), ("seed_ratio_w8a8", "  vs W8A8 (seed)", fmt.ratio),
    ("e_fp32_pj", "FP32 energy per image", fmt.energy), ("e_w8a8_pj", "W8A8 energy per image", fmt.energy),
    ("e_mac_pj", "MAC energy", fmt.energy), ("e_sram_pj", "SRAM energy", fmt.energy),
    ("e_dram_pj", "DRAM energy", fmt.energy),
    ("cycles", "cycles per image", fmt.count),
    ("stall_cycles", "  of which waiting for DRAM", fmt.count), ("latency_us", "latency per image", fmt.latency),
    ("edp_pj_us", "energy-delay product (detailed energy x latency)", fmt.edp),
    ("edp_ratio_w8a8", "  vs W8A8", fmt.ratio),
    ("dram_bytes_per_cycle", "DRAM bandwidth, bytes per cycle", lambda x: fmt.NA if fmt.missing(x) else f"{float(x):.4g}"),
    ("clock_mhz", "clock (assumed), MHz", lambda x: fmt.NA if fmt.missing(x) else f"{float(x):g}"),
    ("dram_bytes", "DRAM traffic per image", fmt.nbytes), ("n_mac", "MACs per image", fmt.count),
)

# layers.csv columns shown in the page's table (all of them stay in layers.csv)
LAYER_COLUMNS = ("layer", "op", "w_bits", "a_bits", "chosen_bits", "out_shape", "n_mac", "cycles", "stall_cycles", "utilization",
                 "sqnr_db", "e_mac_pj", "e_sram_pj", "e_dram_pj", "e_total_pj", "e_seed_pj", "e_fp32_pj",
                 "bitexact_mismatches")
POINT_COLUMNS = ("label", "policy", "granularity", "w_bits", "a_bits", "top1", "top5", "agreement_fp32",
                 "e_total_pj", "e_seed_pj", "energy_ratio_w8a8", "latency_us", "edp_pj_us", "bitexact_mismatches",
                 "budget", "widths", "note")
PREDICTIONS_SHOWN = 100

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2330;
     margin:0;background:#f5f6f8}
main{max-width:1200px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
.sub{color:#5b6475;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{flex:1 1 220px;border:1px solid #dde1e7;border-radius:8px;padding:10px 14px;background:#fafbfc}
.card .k{color:#5b6475;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:600;margin:2px 0}
.card .d{color:#5b6475;font-size:12.5px}
.ok{color:#17803d} .bad{color:#b42318}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border-bottom:1px solid #e6e8ec;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f0f2f5;position:sticky;top:0;cursor:pointer;user-select:none}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
td.t,th.t{text-align:left} tr:hover td{background:#f7f9fc}
.scroll{max-height:640px;overflow:auto;border:1px solid #e6e8ec}
.bar{display:inline-block;height:9px;background:#4c78a8;vertical-align:middle;margin-right:6px}
figure{margin:10px 0;overflow-x:auto} figure svg{max-width:100%;height:auto}
pre{background:#f6f8fa;border:1px solid #e6e8ec;padding:10px;overflow-x:auto;font-size:12px}
img.thumb{width:72px;height:auto;image-rendering:pixelated;border-radius:3px;vertical-align:middle}
td.w{white-space:normal;min-width:240px;text-align:left} b.new{color:#b42318;font-weight:600}
.pair{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
details{margin:8px 0} summary{cursor:pointer;color:#2b4a7e}
"""

JS = """
(function(){
  function val(td){var v=td.getAttribute('data-v');
    if(v===null)return td.textContent;if(v==='')return null;return parseFloat(v);}
  function cmp(x,y){if(x===null||y===null)return (x===null)-(y===null);
    if(typeof x==='number'&&typeof y==='number')return x-y;return String(x).localeCompare(String(y));}
  function sortBy(t,i,desc){
    var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows);
    rows.sort(function(r,s){var x=val(r.cells[i]),y=val(s.cells[i]);
      if(x===null||y===null)return cmp(x,y);return desc?cmp(y,x):cmp(x,y);});
    rows.forEach(function(r){b.appendChild(r);});
    var hs=t.tHead.rows[0].cells;for(var j=0;j<hs.length;j++)hs[j].classList.remove('sorted-asc','sorted-desc');
    hs[i].classList.add(desc?'sorted-desc':'sorted-asc');
    t.setAttribute('data-sorted',hs[i].getAttribute('data-col')+':'+(desc?'desc':'asc'));
  }
  var tables=document.querySelectorAll('table.sortable');
  Array.prototype.forEach.call(tables,function(t){
    var hs=t.tHead.rows[0].cells;
    Array.prototype.forEach.call(hs,function(h,i){h.title='click to sort';
      h.addEventListener('click',function(){sortBy(t,i,!h.classList.contains('sorted-desc'));});});
  });
  var m=/sort=([^:&]+):([^:&]+):(asc|desc)/.exec(decodeURIComponent(location.hash));
  if(m){var t=document.getElementById(m[1]);if(t){var hs=t.tHead.rows[0].cells;
    for(var i=0;i<hs.length;i++)if(hs[i].getAttribute('data-col')===m[2])sortBy(t,i,m[3]==='desc');}}
  document.body.setAttribute('data-ready','1');
})();
"""

_E = html.escape


def inline_svg(svg: str) -> str:
    """matplotlib's SVG file without its XML prolog and doctype, to sit inside HTML."""
    start = svg.find("<svg")
    if start < 0:
        raise ValueError("not an SVG document")
    return re.sub(r"<!--.*?-->", "", svg[start:], flags=re.S)


def _value_attr(v) -> str:
    """The exact value a cell stands for (JSON text, so floats keep every digit)."""
    if isinstance(v, float) and not math.isfinite(v):
        v = None
    try:
        return _E(json.dumps(v.item() if hasattr(v, "item") else v), quote=True)
    except (TypeError, ValueError):
        return _E(str(v), quote=True)


def _cell(v, col: str = "") -> str:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return '<td data-v=""></td>'
    if isinstance(v, str):
        return f'<td class="t">{_E(v)}</td>'
    txt = fmt.short(v)
    return f'<td data-v="{_E(repr(float(v)) if not isinstance(v, bool) else str(int(v)))}">{_E(txt)}</td>'


def _table(df: pd.DataFrame, cols, tid: str, bar: str | None = None, bar_total: float | None = None) -> str:
    cols = [c for c in cols if c in df.columns]
    text = {c: not pd.api.types.is_numeric_dtype(df[c]) for c in cols}
    head = "".join(f'<th data-col="{_E(c)}" class="{"t" if text[c] else "n"}">{_E(c)}</th>' for c in cols)
    if bar:
        head += '<th data-col="share">share of energy</th>'
    body = []
    for r in df[cols].to_dict("records"):
        cells = "".join(_cell(r[c], c) for c in cols)
        if bar:
            share = 100.0 * float(r[bar]) / bar_total if bar_total and not fmt.missing(r[bar]) else 0.0
            cells += (f'<td class="t" data-v="{share!r}"><span class="bar" style="width:{max(share, 0) * 2:.1f}px">'
                      f'</span>{share:.1f}%</td>')
        body.append(f"<tr>{cells}</tr>")
    return (f'<div class="scroll"><table class="sortable" id="{_E(tid)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _key_numbers(s: dict) -> str:
    """Two tables side by side: accuracy and bit-exactness; energy and hardware."""
    split = [k for k, _, _ in KEY_NUMBERS].index("e_total_pj")
    tables = []
    for tid, group in (("key-accuracy", KEY_NUMBERS[:split]), ("key-hardware", KEY_NUMBERS[split:])):
        rows = [f'<tr><td class="t">{_E(label)}</td><td data-key="{key}" data-value="{_value_attr(s[key])}">'
                f'{_E(f(s[key]))}</td><td class="t"><code>{key}</code></td></tr>'
                for key, label, f in group if key in s]
        tables.append(f'<table id="{tid}"><tbody>{"".join(rows)}</tbody></table>')
    return f'<div class="pair">{"".join(tables)}</div>'


def _predictions(pred: pd.DataFrame, thumbs: list[bytes] | None, bits: str) -> str:
    """Per image: its picture, FP32's and the program's five best classes (the program's classes
    that FP32's five lack in bold), whether the top-1 agrees, how many of the five are shared."""
    shown = pred.head(PREDICTIONS_SHOWN)
    pics = thumbs if thumbs and len(thumbs) == len(pred) else None
    labelled = shown["label_name"].notna().any()
    head = ([("picture", "picture")] if pics else []) + [("image", "image")] + (
        [("label_name", "label")] if labelled else []) + [
        ("fp32_top5", "FP32 top-5"), ("quant_top5", f"{bits} top-5"), ("top1_agrees", "same top-1"),
        ("top5_overlap", "shared of 5")]
    ths = "".join(f'<th data-col="{c}" class="t">{_E(lab)}</th>' for c, lab in head)
    body = []
    for i, r in enumerate(shown.to_dict("records")):
        f5, q5 = str(r["fp32_top5"]).split("|"), str(r["quant_top5"]).split("|")
        q = ", ".join(_E(c) if c in f5 else f'<b class="new">{_E(c)}</b>' for c in q5)
        lab = r.get("label_name")
        cells = [f'<td class="t">{_E(str(r["image"]))}</td>'] + (
                [f'<td class="t">{_E(lab) if isinstance(lab, str) else ""}</td>'] if labelled else []) + [
                 f'<td class="t w">{_E(", ".join(f5))}</td>', f'<td class="t w">{q}</td>',
                 f'<td class="t {"ok" if r["top1_agrees"] else "bad"}">{"yes" if r["top1_agrees"] else "no"}</td>',
                 f'<td data-v="{int(r["top5_overlap"])}">{int(r["top5_overlap"])}/5</td>']
        if pics:
            src = "data:image/png;base64," + base64.b64encode(pics[i]).decode("ascii")
            cells.insert(0, f'<td class="t" data-v="{i}"><img class="thumb" alt="{_E(str(r["image"]))}" src="{src}"></td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    table = (f'<table class="sortable" id="predictions"><thead><tr>{ths}</tr></thead>'
             f'<tbody>{"".join(body)}</tbody></table>')
    return table if len(shown) <= 16 else f'<div class="scroll">{table}</div>'  # a few photos: no scroll box


def _card(title: str, value: str, detail: str, cls: str = "") -> str:
    return (f'<div class="card"><div class="k">{_E(title)}</div><div class="v {cls}">{_E(value)}</div>'
            f'<div class="d">{_E(detail)}</div></div>')


def _cards(s: dict) -> str:
    if not fmt.missing(s.get("top1")):
        acc = _card("top-1", fmt.pct(s["top1"]), f"FP32 {fmt.pct(s.get('top1_fp32'))} on {fmt.count(s.get('n_labelled'))} labelled images")
    else:
        acc = _card("agreement with FP32", fmt.pct(s.get("agreement_fp32"), 1),
                    f"no labels: images ({fmt.count(s.get('n_eval'))}) whose top-1 class is FP32's")
    bad = s.get("bitexact_mismatches") or 0
    bx = _card("bit-exact", "yes" if s.get("bitexact_images") and not bad else ("no" if bad else "not checked"),
               f"{fmt.count(bad)} differing integers on {fmt.count(s.get('bitexact_images'))} images",
               "bad" if bad else "ok")
    w8 = "the W8A8 reference" if str(s.get("bits")).upper() == "W8A8" else f"{fmt.ratio(s.get('energy_ratio_w8a8'))} W8A8"
    en = _card("energy per image", fmt.energy(s.get("e_total_pj")),
               f"{fmt.ratio(s.get('energy_ratio_fp32'))} FP32, {w8} (seed model {fmt.energy(s.get('e_seed_pj'))})")
    lat = _card("latency per image", fmt.latency(s.get("latency_us")),
                f"{fmt.count(s.get('cycles'))} cycles at {fmt.short(s.get('clock_mhz')) or 'n/a'} MHz (assumed), "
                f"{fmt.count(s.get('stall_cycles'))} waiting for DRAM; DRAM {fmt.nbytes(s.get('dram_bytes'))}; "
                f"EDP {fmt.edp(s.get('edp_pj_us'))}")
    return f'<div class="cards">{acc}{bx}{en}{lat}</div>'


def _figure(svg: str) -> str:
    return f"<figure>{inline_svg(svg)}</figure>"


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_E(title)}</title><style>{CSS}</style></head>\n<body><main>\n{body}\n</main>"
            f"<script>{JS}</script></body></html>\n")


def _flat_summary(s: dict) -> str:
    rows = "".join(f'<tr><td class="t"><code>{_E(k)}</code></td><td class="t" data-key="{_E(k)}" '
                   f'data-value="{_value_attr(v)}">{_E(fmt.short(v) if not isinstance(v, str) else v)}</td></tr>'
                   for k, v in s.items() if not isinstance(v, (dict, list)))
    return f'<table id="summary-json"><tbody>{rows}</tbody></table>'


def run_report(s: dict, layers: pd.DataFrame | None, pred: pd.DataFrame | None, figures: dict[str, str],
               text: str, thumbs: list[bytes] | None = None) -> str:
    """report.html of one run; `figures` maps a caption to an SVG document's text, `thumbs` are
    PNG bytes per evaluation image (shown beside its predictions)."""
    title = f"{s.get('model')} at {s.get('bits')} on {s.get('accelerator')}"
    parts = [f"<h1>{_E(title)}</h1>",
             f'<p class="sub">{_E(str(s.get("granularity") or ""))} {_E(str(s.get("calib_method") or ""))} '
             f'&middot; {_E(str(s.get("array")))} {_E(str(s.get("dataflow")))} array, {_E(str(s.get("dram_model")))} '
             f'DRAM model &middot; model source {_E(str(s.get("model_source")))}</p>',
             _cards(s)]
    if s.get("note"):
        parts.append(f'<p class="sub">{_E(str(s["note"]))}</p>')
    per_image = []
    if pred is not None and len(pred):
        more = f" (first {PREDICTIONS_SHOWN} of {len(pred)}; all in predictions.csv)" if len(pred) > PREDICTIONS_SHOWN else ""
        per_image = [f"<h2>Per image: five best classes, FP32 and the integer program{_E(more)}</h2>",
                     '<p class="sub">In bold: the program\'s classes that are not among FP32\'s five.</p>',
                     _predictions(pred, thumbs, str(s.get("bits")))]
    few = len(pred) <= (len(thumbs) if thumbs else 0) if pred is not None else False
    if few:  # a handful of photos (the demo): their story comes first
        parts += per_image
    for caption, svg in figures.items():
        parts += [f"<h2>{_E(caption)}</h2>", _figure(svg)]
    parts += ["<h2>Key numbers</h2>", _key_numbers(s)]
    if not few:
        parts += per_image
    if layers is not None and len(layers):
        tot = float(pd.to_numeric(layers["e_total_pj"], errors="coerce").sum()) if "e_total_pj" in layers else None
        cols = list(LAYER_COLUMNS) + [c for c in layers.columns if c.startswith("sens_")]
        parts += [f"<h2>Every layer ({len(layers)}; click a column to sort; all columns in layers.csv)</h2>",
                  _table(layers, cols, "layers", bar="e_total_pj" if tot else None, bar_total=tot)]
    parts += ["<h2>Terminal summary</h2>", f"<pre>{_E(text)}</pre>",
              "<details><summary>All of summary.json's flat keys</summary>", _flat_summary(s), "</details>"]
    return _page(title, "\n".join(parts))


def sweep_report(points: pd.DataFrame, meta: dict, frontier, pareto_svg: str | None, width_maps: dict[str, str],
                 text: str, latency_svg: str | None = None) -> str:
    """report.html of a Pareto sweep: the plots (accuracy against energy, and against latency when
    the points have one), every point (frontier marked: the energy frontier), the width maps
    (`width_maps`: a caption per SVG text) folded."""
    title = f"Pareto sweep: {meta.get('model')} on {meta.get('accelerator')}"
    pts = points.copy()
    pts.insert(1, "frontier", [bool(x) for x in frontier])
    parts = [f"<h1>{_E(title)}</h1>",
             f'<p class="sub">{fmt.count(meta.get("n_eval"))} evaluation images, {fmt.count(meta.get("n_calib"))} '
             f'calibration images; energy per image, detailed model; W8A8 {fmt.energy(meta.get("w8a8_pj"))}</p>']
    if pareto_svg:
        parts += ["<h2>Top-1 against energy per image (frontier, FP32 top-1, W8A8 energy)</h2>", _figure(pareto_svg)]
    if latency_svg:
        parts += ["<h2>Top-1 against latency per image, DRAM stalls included (frontier, FP32 top-1, W8A8 latency)</h2>",
                  _figure(latency_svg)]
    parts += [f"<h2>Every point ({len(pts)}; click a column to sort)</h2>",
              _table(pts, ("label", "frontier") + POINT_COLUMNS[1:], "points")]
    if width_maps:
        parts.append("<h2>Widths per layer of the mixed points</h2>")
    for caption, svg in width_maps.items():
        parts += [f"<details><summary>{_E(caption)}</summary>", _figure(svg), "</details>"]
    parts += ["<h2>Terminal summary</h2>", f"<pre>{_E(text)}</pre>"]
    return _page(title, "\n".join(parts))

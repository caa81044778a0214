"""How numbers read to a person, shared by the terminal summary and report.html: SI energy
units, ratios, percentages, latency, bytes. Missing values (None, NaN) read as "n/a"."""
from __future__ import annotations

import math

import pandas as pd

__all__ = ["missing", "energy", "ratio", "pct", "latency", "edp", "nbytes", "count", "short"]

NA = "n/a"


def missing(x) -> bool:
    if x is None:
        return True
    try:
        return not math.isfinite(float(x))
    except (TypeError, ValueError):
        return True


def _si(x: float, units: tuple[tuple[float, str], ...], digits: int = 3) -> str:
    for scale, unit in units:
        if abs(x) >= scale:
            return f"{x / scale:.{digits}g} {unit}"
    scale, unit = units[-1]
    return f"{x / scale:.{digits}g} {unit}"


def energy(pj) -> str:
    """Picojoules as pJ / nJ / µJ / mJ / J, three significant digits."""
    if missing(pj):
        return NA
    return _si(float(pj), ((1e12, "J"), (1e9, "mJ"), (1e6, "µJ"), (1e3, "nJ"), (1.0, "pJ")))


def ratio(x) -> str:
    return NA if missing(x) else f"{float(x):.3g}x"


def pct(x, digits: int = 2) -> str:
    """A percentage already in 0..100."""
    return NA if missing(x) else f"{float(x):.{digits}f}%"


def latency(us) -> str:
    if missing(us):
        return NA
    return _si(float(us), ((1e6, "s"), (1e3, "ms"), (1.0, "µs"), (1e-3, "ns")))


def edp(pj_us) -> str:
    """An energy-delay product given in pJ·µs, read in J·s with an SI prefix (1e18 pJ·µs = 1 J·s)."""
    if missing(pj_us):
        return NA
    return _si(float(pj_us) * 1e-18, ((1.0, "J·s"), (1e-3, "mJ·s"), (1e-6, "µJ·s"), (1e-9, "nJ·s"),
                                      (1e-12, "pJ·s"), (1e-15, "fJ·s")))


def nbytes(n) -> str:
    if missing(n):
        return NA
    n = float(n)
    for scale, unit in ((2 ** 30, "GiB"), (2 ** 20, "MiB"), (2 ** 10, "KiB")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def count(n) -> str:
    return NA if missing(n) else f"{int(n):,}"


def short(x) -> str:
    """A table cell: integers with separators, floats with 4 significant digits, text as is."""
    if x is None or x is pd.NA or x is pd.NaT or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15):
        return f"{int(x):,}"
    if isinstance(x, float):
        return f"{x:.4g}"
    try:  # numpy / pandas scalars
        return short(x.item())
    except AttributeError:
        return str(x)

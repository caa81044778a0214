"""Atomic report writers: a reader sees the old file or the whole new one, never half.

Every writer puts its bytes in a hidden temporary file in the target's own directory
(same file system), flushes and fsyncs it, then ``os.replace``-s it over the target. On
any error the temporary file is removed and the target is untouched.

``ReportDir`` goes one step further for a whole run: every file of the run is staged in a
hidden directory next to ``--out`` and moved in only by ``commit()``, so a run that fails
half way leaves ``--out`` exactly as it was (and does not create it).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = [
    "write_text_atomic",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_csv_atomic",
    "save_figure_atomic",
    "to_jsonable",
    "ReportDir",
]

# mkstemp makes 0600 files; give reports the mode an ordinary open() would (0666 & ~umask).
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def _atomic_target(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path beside ``path``; on clean exit move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


atomic_target = _atomic_target  # public: for writers of other formats (torch.save, np.savez)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with _atomic_target(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with _atomic_target(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return Path(path)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from what results hold: numpy scalars and arrays, tuples, paths,
    dataclasses. Non-finite floats become None (strict JSON has no NaN); dict keys become
    strings (a tuple key (4, 8) becomes "4,8")."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return to_jsonable(obj.to_dict())
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(k, tuple):
                key = ",".join(str(to_jsonable(x)) for x in k)
            elif isinstance(k, str):
                key = k
            else:
                key = str(to_jsonable(k))
            out[key] = to_jsonable(v)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "to_dict"):  # pandas Series and the like
        return to_jsonable(obj.to_dict())
    raise TypeError(f"cannot write {type(obj).__name__} as JSON: {obj!r}")


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False)
    return write_text_atomic(path, text + "\n")


def write_csv_atomic(path: str | os.PathLike, df, index: bool = False, **kwargs) -> Path:
    """Write a pandas DataFrame as CSV (no index column unless asked)."""
    text = df.to_csv(index=index, lineterminator="\n", **kwargs)
    return write_text_atomic(path, text)


def save_figure_atomic(fig, path_stem: str | os.PathLike, dpi: int = 150) -> tuple[Path, Path]:
    """Save a matplotlib figure as ``<stem>.png`` and ``<stem>.svg``, each atomically.

    SVG text stays text (``svg.fonttype = none``), so labels can be searched and edited;
    the date is left out of the metadata so the same figure gives the same SVG bytes.
    """
    import matplotlib  # deferred: only plotting needs matplotlib

    stem = Path(path_stem)
    if stem.suffix.lower() in (".png", ".svg"):
        stem = stem.with_suffix("")
    png, svg = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "quantsim"}):
        with _atomic_target(png) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight",
                        metadata={"Software": None})
        with _atomic_target(svg) as tmp:
            fig.savefig(tmp, format="svg", bbox_inches="tight", metadata={"Date": None})
    return png, svg


class ReportDir:
    """Stage a run's files; move them into ``out`` only when the run succeeded.

    ::

        with ReportDir(args.out) as rd:
            rd.write_csv("layers.csv", df)
            rd.write_json("summary.json", summary)
            rd.save_figure(fig, "energy")      # energy.png + energy.svg
        # committed here if the block raised nothing

    The staging directory is hidden (``.<name>.staging-*``) in the parent of ``out``, so
    the final moves are renames on one file system. ``commit()`` renames the whole staging
    directory to ``out`` when ``out`` does not exist; otherwise it moves each staged file
    over its namesake in ``out`` (each move atomic; files of ``out`` the run did not write
    are kept). On an exception inside the ``with`` block, or ``abort()``, the staging
    directory is removed, ``out`` is untouched, and parent directories this object created
    are removed again. With ``autocommit=False`` a clean exit without ``commit()`` aborts.
    """

    def __init__(self, out: str | os.PathLike, autocommit: bool = True):
        self.out = Path(out).absolute()
        self.autocommit = autocommit
        self.committed = False
        self._created_parents: list[Path] = []
        parent = self.out.parent
        missing = []
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for p in reversed(missing):
            p.mkdir()
            self._created_parents.append(p)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.staging-", dir=self.out.parent))

    # -- paths and writers ------------------------------------------------------------
    def path(self, name: str | os.PathLike) -> Path:
        """Where a file of the run is staged (``name`` relative to ``out``)."""
        if self.committed:
            raise RuntimeError("ReportDir already committed")
        if self.staging is None:
            raise RuntimeError("ReportDir was aborted")
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"report file name must stay inside the report dir: {name}")
        p = self.staging / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_text(self, name, text: str) -> Path:
        return write_text_atomic(self.path(name), text)

    def write_json(self, name, obj) -> Path:
        return write_json_atomic(self.path(name), obj)

    def write_csv(self, name, df, **kwargs) -> Path:
        return write_csv_atomic(self.path(name), df, **kwargs)

    def save_figure(self, fig, stem, **kwargs) -> tuple[Path, Path]:
        return save_figure_atomic(fig, self.path(stem), **kwargs)

    # -- commit / abort ---------------------------------------------------------------
    def commit(self) -> Path:
        if self.committed:
            return self.out
        if self.staging is None:
            raise RuntimeError("ReportDir was aborted")
        if not self.out.exists():
            os.chmod(self.staging, 0o777 & ~_UMASK)  # mkdtemp made it 0700
            os.replace(self.staging, self.out)
        else:
            if not self.out.is_dir():
                raise NotADirectoryError(f"output path exists and is not a directory: {self.out}")
            for src in sorted(self.staging.rglob("*")):
                if src.is_dir():
                    continue
                dst = self.out / src.relative_to(self.staging)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
            shutil.rmtree(self.staging, ignore_errors=True)
        self.staging = None
        self.committed = True
        self._created_parents = []
        return self.out

    def abort(self) -> None:
        if self.committed or self.staging is None:
            return
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging = None
        for p in reversed(self._created_parents):  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
        self._created_parents = []

    def __enter__(self) -> "ReportDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None and self.autocommit:
            self.commit()
        else:
            self.abort()
        return False

    def __del__(self):  # a ReportDir dropped without commit leaves no staging dir
        with contextlib.suppress(Exception):
            if not self.committed:
                self.abort()

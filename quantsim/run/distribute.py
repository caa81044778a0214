"""A sweep's independent points as Ray tasks (`--ray local|ADDRESS`): connecting to a cluster,
the shared object put in the object store once, one task per job, results handed to the
driver as they complete, retries, and one clear error per job that still fails.

Ray is an optional dependency (`pip install quantsim[ray]`): it is imported inside the
functions that use it, and `check_address` says so before any expensive work.

Test-only fault hook: when the driver's environment sets QUANTSIM_RAY_FAULTS=DIR, a job whose
key K has a marker file DIR/K.exit (the worker process dies, os._exit) or DIR/K.raise (the
task raises) fails on its first attempt, and DIR/K.always fails on every attempt; each
attempt appends a line to DIR/K.attempts, so a test can count the retries. DIR must be on a
file system the workers share (a local cluster's always is). Unset: no file is touched.
"""
from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numba
import torch
from tqdm import tqdm

from quantsim.errors import QuantsimError

__all__ = ["FAULTS_ENV", "Job", "check_address", "connect", "run_jobs"]

FAULTS_ENV = "QUANTSIM_RAY_FAULTS"
# a Ray client address (ray://host:port), a GCS address (host:port) or auto (RAY_ADDRESS / the local head)
_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the quantsim package
_ADDRESS = re.compile(r"^(local|auto|ray://[^\s:/]+(:\d+)?|[^\s:/]+:\d+)$")


@dataclass
class Job:
    """One task: `fn(shared, *args, dep)`; `after` names the job whose result is `dep` (Ray
    runs this one once that one has finished), else `dep` is given as is."""

    key: str
    args: tuple = ()
    after: str | None = None
    dep: Any = None


def check_address(address: str) -> None:
    """--ray's value and Ray's presence, checked before any loading."""
    if not _ADDRESS.match(address):
        raise QuantsimError(f"--ray {address!r}: give local, auto, ray://HOST:PORT (Ray client) or HOST:PORT")
    try:
        import ray  # noqa: F401  (optional dependency: only --ray needs it)
    except ImportError:
        raise QuantsimError("--ray needs Ray: pip install 'quantsim[ray]'") from None


def connect(address: str) -> bool:
    """Start a local cluster sized to the cores (`local`) or join one; True when this call
    started Ray (the caller then shuts it down). A Ray already initialised in this process is reused."""
    import ray  # optional dependency: only --ray needs it

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines: no usage report
    try:
        if address == "local":
            # the workers import the quantsim this driver runs (a checkout need not be installed)
            path = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise QuantsimError(f"--ray {address}: cannot start or reach Ray: {str(exc).splitlines()[0]}") from exc
    return True


def _fault(faults: str | None, key: str) -> None:
    """The test-only fault hook (module docstring); nothing when `faults` is None."""
    if not faults:
        return
    d = Path(faults)
    modes = [m for m in ("exit", "raise", "always") if (d / f"{key}.{m}").exists()]
    if not modes:
        return
    attempts = d / f"{key}.attempts"
    first = not attempts.exists()
    with open(attempts, "a") as f:
        f.write(f"{os.getpid()}\n")
    if modes[0] == "always" or (first and modes[0] == "raise"):
        raise RuntimeError(f"fault injected by {FAULTS_ENV} ({modes[0]})")
    if first:
        os._exit(1)


def _task(fn: Callable, shared, args: tuple, dep, key: str, threads: int, faults: str | None):
    # one task per CPU it was given: torch and numba threads split so that tasks side by side
    # do not oversubscribe the cores
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    _fault(faults, key)
    return fn(shared, *args, dep)


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".rstrip(": ")


@contextmanager
def cluster(address: str | None):
    """Ray connected (or started) for the duration of a block, e.g. a sweep file's runs, so that
    each run's run_jobs reuses it instead of starting its own; nothing when address is None."""
    if address is None:
        yield
        return
    import ray  # optional dependency: only --ray needs it

    owned = connect(address)
    try:
        yield
    finally:
        if owned:
            ray.shutdown()


def run_jobs(fn: Callable, shared, jobs: list[Job], on_done: Callable[[str, Any], None], *,
             address: str = "local", retries: int = 2, cpus_per_task: int = 1, progress: bool = True,
             desc: str = "points", later: Callable[[], tuple[Any, list[Job]]] | None = None) -> None:
    """Each job a Ray task running `fn` (a module-level function, imported by the workers) on
    `shared` (put in the object store once), on the cluster `connect(address)` gives (shut
    down again if it started it); `on_done(key, result)` in the driver as each finishes, in
    completion order. A task is retried `retries` times (worker deaths and exceptions alike);
    the jobs that still fail are one QuantsimError naming each, raised once every other job
    has finished and been handed to `on_done`.

    `later`: called in the driver once `jobs` are submitted, so its work overlaps theirs; it
    returns a second shared object and the jobs that need it (their `after` may name any job)."""
    import ray  # optional dependency: only --ray needs it

    with cluster(address):
        _run(ray, fn, shared, jobs, on_done, retries, cpus_per_task, progress, desc, later)


def _run(ray, fn, shared, jobs, on_done, retries, cpus_per_task, progress, desc, later) -> None:
    faults = os.environ.get(FAULTS_ENV) or None
    remote = ray.remote(_task).options(num_cpus=cpus_per_task, max_retries=retries, retry_exceptions=True)
    refs: dict[str, Any] = {}
    after: dict[str, str | None] = {}

    def submit(shared_obj, batch: list[Job]) -> None:
        shared_ref = ray.put(shared_obj)
        for job in batch:
            dep = refs[job.after] if job.after is not None else job.dep
            refs[job.key] = remote.remote(fn, shared_ref, job.args, dep, job.key, cpus_per_task, faults)
            after[job.key] = job.after

    submit(shared, jobs)
    try:
        if later is not None:
            late_shared, late_jobs = later()
            submit(late_shared, late_jobs)
    except BaseException:
        for ref in refs.values():
            ray.cancel(ref, force=True)
        raise
    pending = {ref: key for key, ref in refs.items()}
    failed, errors = set(), []
    bar = tqdm(total=len(refs), desc=desc, unit="point", disable=not progress)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            key = pending.pop(ready[0])
            bar.set_postfix_str(key)
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                failed.add(key)
                errors.append(f"{key} not run: its input {after[key]} failed" if after[key] in failed
                              else f"{key} failed after {retries + 1} attempts ({_cause(exc)})")
            else:
                on_done(key, result)
            bar.update()
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    if errors:
        raise QuantsimError("--ray: point " + "; point ".join(errors))

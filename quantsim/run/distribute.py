"""A sweep's points as Ray tasks (`--ray local|ADDRESS`): connecting to a cluster, objects put
in the object store once, jobs submitted as the driver makes them (a job may take other jobs'
results, handed worker to worker), results handed to the driver as they complete, retries,
and one clear error per point that still fails.

Ray is an optional dependency (`pip install quantsim[ray]`): it is imported inside the
functions that use it, and `check_address` says so before any expensive work.

Test-only fault hook: when the driver's environment sets QUANTSIM_RAY_FAULTS=DIR, a job whose
key K has a marker file DIR/K.exit (the worker process dies, os._exit) or DIR/K.raise (the
task raises) fails on its first attempt, and DIR/K.always fails on every attempt; each
attempt appends a line to DIR/K.attempts, so a test can count the retries. DIR must be on a
file system the workers share (a local cluster's always is). Unset: no file is touched.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numba
import torch
from tqdm import tqdm

from quantsim.errors import QuantsimError

__all__ = ["FAULTS_ENV", "Job", "Result", "Session", "Shared", "check_address", "cluster", "connect", "run_jobs", "session"]

FAULTS_ENV = "QUANTSIM_RAY_FAULTS"
# a Ray client address (ray://host:port), a GCS address (host:port) or auto (RAY_ADDRESS / the local head)
_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the quantsim package
_ADDRESS = re.compile(r"^(local|auto|ray://[^\s:/]+(:\d+)?|[^\s:/]+:\d+)$")


@dataclass(frozen=True)
class Result:
    """A job's result as another job's argument: Ray hands it from worker to worker (the driver
    never fetches it); `part` picks one of a forwarding job's two results (0: the one it
    forwards, 1: the driver's)."""

    key: str
    part: int = 0


@dataclass(frozen=True)
class Shared:
    """An object put in the object store once (`Session.put`), an argument of any number of jobs."""

    ref: Any


@dataclass
class Job:
    """One task, `fn(*args)`; an argument that is a `Result` or a `Shared` is replaced by that
    object (Ray starts the task once every Result it names exists). `point`: what progress and
    errors call it (several jobs may make one point; default: the key). `forward`: `fn` returns
    (what the jobs that take its Result get, what the driver gets)."""

    key: str
    fn: Callable
    args: tuple = ()
    point: str | None = None
    forward: bool = False

    @property
    def name(self) -> str:
        return self.point or self.key


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
            # the workers import the quantsim this driver runs (a checkout need not be installed):
            # PYTHONPATH in the environment the cluster's processes inherit, not a runtime_env, so
            # that the workers Ray starts with the cluster serve the first tasks (a runtime_env's
            # workers would start only then)
            old = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), old) if p)
            try:
                ray.init(num_cpus=local_cpus(), include_dashboard=False, logging_level=logging.WARNING)
            finally:
                if old is None:
                    del os.environ["PYTHONPATH"]
                else:
                    os.environ["PYTHONPATH"] = old
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise QuantsimError(f"--ray {address}: cannot start or reach Ray: {str(exc).splitlines()[0]}") from exc
    return True


def local_cpus() -> int:
    """The cores this process may run on (a CPU affinity mask, e.g. taskset, counts; os.cpu_count does not)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS)
        return os.cpu_count() or 1


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


def _task(fn: Callable, key: str, threads: int, faults: str | None, *args):
    # one task per CPU it was given: torch and numba threads split so that tasks side by side
    # do not oversubscribe the cores
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    _fault(faults, key)
    return fn(*args)


def _import(module: str) -> None:
    importlib.import_module(module)


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


class Session:
    """Jobs submitted as Ray tasks as the driver makes them (`submit`), so that the driver's own
    work between submissions overlaps theirs, then `wait` hands each result to the driver.
    Made by `session`, which may still be starting the cluster: the first call here waits for it."""

    def __init__(self, ray, retries: int, cpus_per_task: int):
        self._ray = ray
        self._retries = retries
        self._cpus = cpus_per_task
        self._faults = os.environ.get(FAULTS_ENV) or None
        self._remote = ray.remote(_task)
        self._jobs: dict[str, Job] = {}
        self._refs: dict[str, list] = {}  # per job its result refs (a forwarding job: two)
        self._inputs: dict[str, list[str]] = {}  # per job the jobs whose Results it takes
        self._warming: list = []
        self._started: threading.Event | None = None  # set once a background start has finished
        self._start_error: BaseException | None = None
        self.owned = False  # this session started Ray (and shuts it down)

    def _start(self, address: str, warm_up: str | None) -> None:
        self.owned = connect(address)
        if warm_up:
            # each worker imports the module now (torch and quantsim take seconds to import), while
            # the driver loads and calibrates, rather than in its first task
            n = int(self._ray.cluster_resources().get("CPU", 1)) // self._cpus
            self._warming = [self._ray.remote(_import).options(num_cpus=self._cpus).remote(warm_up)
                             for _ in range(max(1, n))]

    def _start_in_background(self, address: str, warm_up: str | None) -> threading.Event:
        """`_start` in a thread that lives until the returned event is set: Ray's processes are
        started with PR_SET_PDEATHSIG, so they die with the thread that started them."""
        self._started, stop = threading.Event(), threading.Event()

        def body():
            # Ray says its driver has no SIGTERM handler off the main thread: true and harmless here
            # (the cluster's processes die with this thread), so not said to the user
            logging.getLogger("ray._private.worker").addFilter(
                lambda record: "SIGTERM handler is not set" not in record.getMessage())
            try:
                self._start(address, warm_up)
            except BaseException as exc:  # handed to the driver's thread by _ready
                self._start_error = exc
            finally:
                self._started.set()
            stop.wait()

        threading.Thread(target=body, name="ray-start", daemon=True).start()
        return stop

    def _ready(self, quiet: bool = False) -> bool:
        """Wait for the cluster; connect's QuantsimError surfaces here (quiet: False instead)."""
        if self._started is not None:
            self._started.wait()
        if self._start_error is not None and not quiet:
            raise self._start_error
        return self._start_error is None

    def put(self, obj) -> Shared:
        self._ready()
        return Shared(self._ray.put(obj))

    def submit(self, job: Job) -> None:
        self._ready()
        if job.key in self._jobs:
            raise ValueError(f"job {job.key!r} submitted twice")
        args, inputs = [], []
        for a in job.args:
            if isinstance(a, Result):
                args.append(self._refs[a.key][a.part])
                inputs.append(a.key)
            else:
                args.append(a.ref if isinstance(a, Shared) else a)
        remote = self._remote.options(num_cpus=self._cpus, max_retries=self._retries, retry_exceptions=True,
                                      num_returns=2 if job.forward else 1)
        refs = remote.remote(job.fn, job.key, self._cpus, self._faults, *args)
        self._jobs[job.key] = job
        self._refs[job.key] = list(refs) if job.forward else [refs]
        self._inputs[job.key] = inputs

    def cancel(self) -> None:
        if not self._ready(quiet=True):
            return
        for refs in self._refs.values():
            self._ray.cancel(refs[-1], force=True)
        self._refs.clear()

    def wait(self, on_done: Callable[[str, Any], None], progress: bool = True, desc: str = "points") -> None:
        """`on_done(key, result)` in the driver as each job finishes (a forwarding job: its
        driver's part), in completion order; then one QuantsimError naming each point with a job
        that still failed after its retries (its first failed job's cause, or the point whose
        result it needed), raised once every other job has finished and been handed over."""
        self._ready()
        ray = self._ray
        pending = {refs[-1]: key for key, refs in self._refs.items()}
        left = {}  # per point its jobs not yet finished, for the progress bar
        for key, job in self._jobs.items():
            left[job.name] = left.get(job.name, 0) + 1
        failed: dict[str, BaseException] = {}
        bar = tqdm(total=len(left), desc=desc, unit="point", disable=not progress)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                key = pending.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayError as exc:
                    failed[key] = exc
                else:
                    on_done(key, result)
                name = self._jobs[key].name
                left[name] -= 1
                if not left[name]:
                    bar.set_postfix_str(name)
                    bar.update()
        except BaseException:
            self.cancel()
            raise
        finally:
            bar.close()
        errors: dict[str, str] = {}  # per point, in submission order, its first failed job's cause
        for key in self._jobs:
            name = self._jobs[key].name
            if key not in failed or name in errors:
                continue
            lost = [k for k in self._inputs[key] if k in failed]
            errors[name] = (f"{name} not run: its input {self._jobs[lost[0]].name} failed" if lost
                            else f"{name} failed after {self._retries + 1} attempts ({_cause(failed[key])})")
        self._refs.clear()
        if errors:
            raise QuantsimError("--ray: point " + "; point ".join(errors.values()))


@contextmanager
def session(address: str = "local", retries: int = 2, cpus_per_task: int = 1, warm_up: str | None = None):
    """A Session on the cluster `connect(address)` gives (shut down after the block if this
    started it); its tasks cancelled if the block fails. A new local cluster starts in the
    background (seconds: its processes, then `warm_up`, a module each worker imports), so that
    the block's first work overlaps it; an address is reached before the block starts, so that a
    wrong one fails before any loading."""
    import ray  # optional dependency: only --ray needs it

    s = Session(ray, retries, cpus_per_task)
    stop = None
    if address == "local" and not ray.is_initialized():
        stop = s._start_in_background(address, warm_up)
    else:
        s._start(address, warm_up)
    try:
        yield s
    except BaseException:
        s.cancel()
        raise
    finally:
        s._ready(quiet=True)
        if s.owned:
            ray.shutdown()
        if stop is not None:
            stop.set()


def run_jobs(fn: Callable, shared, jobs: list[tuple[str, tuple]], on_done: Callable[[str, Any], None], *,
             address: str = "local", retries: int = 2, cpus_per_task: int = 1, progress: bool = True,
             desc: str = "points") -> None:
    """Independent jobs `fn(shared, *args)`, one per (key, args), `shared` put in the object store
    once; `on_done(key, result)` in the driver as each finishes (Session.wait)."""
    with session(address, retries, cpus_per_task) as s:
        ref = s.put(shared)
        for key, args in jobs:
            s.submit(Job(key, fn, (ref, *args)))
        s.wait(on_done, progress, desc)

"""Parameter sweeps: grid expansion, stable point ids, parallel execution, resume.

A sweep is a list of points (parameter dicts) and a point function `params -> summary row`.
Points run in worker processes (or serially, or on a Dask distributed cluster); the parent
appends each finished point to points.jsonl at once (see results_io.PointLog) and keeps
summary.csv current, so Ctrl-C or a kill keeps every finished point and `resume=True` runs only
the points not yet in the log. A point that raises is recorded as failed with its error.

Interruptions: Ctrl-C (SIGINT) and SIGTERM stop the sweep the same way (finished points kept,
workers stopped). Worker processes die with the parent even when it is killed outright (kill -9):
on Linux the kernel sends them SIGKILL when the parent goes (PR_SET_PDEATHSIG), and a watchdog thread
in every worker exits it once its parent is gone (the fallback elsewhere). Dask's local cluster is
started with SIGINT ignored, so a terminal's Ctrl-C reaches only this process (which shuts the
cluster down) and the workers print no tracebacks.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.results_io import POINTS_FILE, PointLog, write_summary
from sim.records.results import SUMMARY_KEYS

PointFn = Callable[[dict[str, Any]], Mapping[str, Any]]
EXECUTORS: tuple[str, ...] = ("process", "serial", "dask")


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One point of a sweep: its full parameter dict and an id derived from it (stable across runs)."""

    point_id: str
    params: Mapping[str, Any]


def point_id(params: Mapping[str, Any]) -> str:
    """A 12-hex-digit id of a parameter dict: the same parameters always give the same id."""
    canon = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(canon.encode("utf-8")).hexdigest()[:12]


def expand_grid(axes: Mapping[str, Sequence[Any]], base: Mapping[str, Any] | None = None) -> list[SweepPoint]:
    """The Cartesian product of `axes` (in the given axis order) over `base`; duplicates dropped.

    Raises ValueError naming an axis with no values.
    """
    for name, values in axes.items():
        if len(values) == 0:
            raise ValueError(f"sweep axis '{name}' has no values")
    points: list[SweepPoint] = []
    seen: set[str] = set()
    names = list(axes)
    for combo in itertools.product(*(axes[n] for n in names)):
        params = dict(base or {})
        params.update(zip(names, combo, strict=True))
        pid = point_id(params)
        if pid not in seen:
            seen.add(pid)
            points.append(SweepPoint(pid, params))
    return points


def run_point(fn: PointFn, point: SweepPoint) -> dict[str, Any]:
    """Run one point, never raising for an ordinary exception: returns the record for the log."""
    t0 = time.perf_counter()
    try:
        row = dict(fn(dict(point.params)))
        status, error, tb = "ok", "", ""
    except Exception as exc:  # a failing point is data, not a crash of the sweep
        row, status = {}, "failed"
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        tb = traceback.format_exc(limit=8)
    rec: dict[str, Any] = {
        "point_id": point.point_id, "status": status, "params": dict(point.params), "row": row,
        "error": error, "elapsed_s": round(time.perf_counter() - t0, 4),
    }
    if tb:
        rec["traceback"] = tb
    return rec


@dataclass(slots=True)
class SweepOutcome:
    """What a sweep call did: counts, whether it was interrupted, and the summary table."""

    total: int
    ran: int = 0
    skipped: int = 0
    failed: int = 0
    interrupted: bool = False
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)


def points_table(points: Sequence[SweepPoint], log: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per grid point that is in the log: SUMMARY_KEYS, point_id/status/error, params, extras."""
    rows = []
    for p in points:
        rec = log.get(p.point_id)
        if rec is None:
            continue
        row: dict[str, Any] = {k: math.nan for k in SUMMARY_KEYS}
        row.update(rec.get("row") or {})
        for k, v in p.params.items():
            row.setdefault(k, v)
        row.update(point_id=p.point_id, status=rec["status"], error=rec.get("error", ""))
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=[*SUMMARY_KEYS, "point_id", "status", "error"])
    df = pd.DataFrame(rows)
    lead = [*SUMMARY_KEYS, "point_id", "status", "error"]
    return df[lead + [c for c in df.columns if c not in lead]]


def run_sweep(
    points: Sequence[SweepPoint],
    fn: PointFn,
    out_dir: Path | str,
    *,
    executor: str = "process",
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    resume: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    summary_interval_s: float = 1.0,
) -> SweepOutcome:
    """Run the points not yet finished in `out_dir`, recording each one as it completes.

    executor: "process" (ProcessPoolExecutor, `workers` processes; default CPU count),
      "serial" (in this process), or "dask" (`client`, or a Client on `scheduler` address, or a
      LocalCluster with `workers` workers). `fn` must be picklable for "process"/"dask".
    resume: required when out_dir already holds a points log; finished points are skipped (failed
      ones too, unless retry_failed). Ctrl-C stops the sweep, keeps every finished point and
      returns an outcome with interrupted=True.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor {executor!r} unknown (valid: {', '.join(EXECUTORS)})")
    if workers is not None and workers < 1:
        raise ValueError(f"workers = {workers} out of range (valid: >= 1)")
    out = Path(out_dir)
    log = PointLog(out / POINTS_FILE)
    if log.path.exists() and not resume:
        raise ValueError(f"{log.path} exists: resume that sweep (--resume, resume=True) or choose another output directory")
    out.mkdir(parents=True, exist_ok=True)
    log.repair()
    done = log.read()
    skip = {pid for pid, r in done.items() if r["status"] == "ok" or not retry_failed}
    pending = [p for p in points if p.point_id not in skip]
    outcome = SweepOutcome(total=len(points), skipped=len(points) - len(pending))

    last_write = [0.0]

    def record(rec: dict[str, Any]) -> None:
        log.append(rec)
        done[rec["point_id"]] = rec
        outcome.ran += 1
        outcome.failed += rec["status"] == "failed"
        now = time.monotonic()
        if now - last_write[0] >= summary_interval_s:
            write_summary(out, points_table(points, done))
            last_write[0] = now

    runner = {"process": _run_processes, "serial": _run_serial, "dask": _run_dask}[executor]
    with _progress(progress, len(points), outcome.skipped) as advance, _sigterm_as_interrupt():
        gen = runner(pending, fn, workers=workers, scheduler=scheduler, client=client)
        try:
            for rec in gen:
                with _signals_deferred():  # a point is logged and counted whole, or not at all
                    record(rec)
                    advance(rec)
        except KeyboardInterrupt:
            outcome.interrupted = True
        finally:
            with _signals_deferred():  # a second Ctrl-C must not cut the shutdown short
                gen.close()  # shuts the executor down (and stops running points) on an interrupt
    outcome.summary = write_summary(out, points_table(points, done))
    return outcome


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM stops the sweep as Ctrl-C does (workers shut down, points kept)."""
    if not _on_main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold a Ctrl-C or SIGTERM that arrives inside the block until the block is done, then raise
    KeyboardInterrupt."""
    if not _on_main_thread():
        yield
        return
    hit: list[int] = []
    old = {s: signal.signal(s, lambda signum, _: hit.append(signum)) for s in _STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if hit:
        raise KeyboardInterrupt


# --------------------------------------------------------------------------- executors
def _run_serial(pending: Sequence[SweepPoint], fn: PointFn, **_: Any) -> Generator[dict[str, Any], None, None]:
    for p in pending:
        yield run_point(fn, p)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _worker_init(parent_pid: int) -> None:
    """Worker process set-up: leave Ctrl-C to the parent, and die with the parent.

    The parent stops the sweep on Ctrl-C or SIGTERM and shuts the workers down itself, so workers
    ignore SIGINT and take SIGTERM's default action (a fork inherits the parent's Python handlers).
    If the parent is killed outright (kill -9) it cannot: on Linux the kernel then sends each worker
    SIGKILL (PR_SET_PDEATHSIG), and a watchdog thread exits the worker once its parent is gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform == "linux":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl (e.g. musl without it): the watchdog remains
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="pagesim-parent-watchdog",
                     daemon=True).start()


def _watch_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    """Exit this worker as soon as its parent process is gone (it is re-parented: getppid changes)."""
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    os._exit(1)


def _run_processes(
    pending: Sequence[SweepPoint], fn: PointFn, *, workers: int | None, **_: Any
) -> Generator[dict[str, Any], None, None]:
    if not pending:
        return
    n = min(workers or multiprocessing.cpu_count(), len(pending))
    # Linux: fork, so a script without an `if __name__ == "__main__":` guard works and workers start
    # fast (the progress bar refreshes without a thread, so nothing is mid-lock at fork time).
    # Elsewhere spawn (fork is unsafe on macOS): `fn` must be importable and scripts need the guard.
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_worker_init,
                               initargs=(os.getpid(),))
    futures: set[Future[dict[str, Any]]] = set()
    try:
        it = iter(pending)
        # Keep only a few points queued per worker so an interrupt leaves little to cancel.
        for p in itertools.islice(it, 2 * n):
            futures.add(pool.submit(run_point, fn, p))
        while futures:
            finished, futures = wait(futures, return_when=FIRST_COMPLETED)
            for f in finished:
                yield f.result()
                nxt = next(it, None)
                if nxt is not None:
                    futures.add(pool.submit(run_point, fn, nxt))
    finally:
        for f in futures:
            f.cancel()
        if futures:  # interrupted: stop running points now rather than waiting for them
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _run_dask(
    pending: Sequence[SweepPoint], fn: PointFn, *, workers: int | None, scheduler: str | None,
    client: Any, **_: Any,
) -> Generator[dict[str, Any], None, None]:
    if not pending:
        return
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as exc:  # optional dependency
        raise ValueError("executor 'dask' needs dask[distributed]: pip install 'pagesim[dask]'") from exc
    own_client = client is None
    cluster = None
    if own_client:
        if scheduler:
            client = Client(scheduler, timeout="10s")
        else:
            cluster = _local_cluster(LocalCluster, workers or 2)
            client = Client(cluster)
    futures = [client.submit(run_point, fn, p, pure=False) for p in pending]
    try:
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        client.cancel(futures)
        if own_client:
            client.close()
            if cluster is not None:
                cluster.close()


def _local_cluster(factory: Any, workers: int) -> Any:
    """A Dask LocalCluster whose worker processes ignore Ctrl-C and log only errors.

    A terminal's Ctrl-C goes to the whole foreground process group; Dask's nanny and worker
    processes would each print a KeyboardInterrupt traceback. Started while SIGINT is ignored, they
    keep ignoring it (a child inherits an ignored signal, and Python keeps it ignored), and this
    process shuts them down in order. Their logs are silenced below CRITICAL: shutting down races
    (a cancelled task's warning, a heartbeat to a scheduler already closed, logged as an ERROR with a
    traceback), and a failing point is recorded by run_point anyway. The
    scheduler's HTTP server (dashboard, /health) takes a free port: the default 8787 would warn on
    stderr whenever another cluster holds it.
    """
    if not _on_main_thread():
        return factory(n_workers=workers, threads_per_worker=1, processes=True, silence_logs=logging.CRITICAL,
                       dashboard_address=":0")
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return factory(n_workers=workers, threads_per_worker=1, processes=True, silence_logs=logging.CRITICAL,
                       dashboard_address=":0")
    finally:
        signal.signal(signal.SIGINT, old)


# --------------------------------------------------------------------------- progress
class _progress:
    """A rich progress bar on stderr (or nothing) that advances per finished point."""

    def __init__(self, enabled: bool, total: int, already: int) -> None:
        self.enabled, self.total, self.already = enabled, total, already
        self._p: Any = None

    def __enter__(self) -> Callable[[Mapping[str, Any]], None]:
        if not self.enabled:
            return lambda rec: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
            TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            auto_refresh=False,  # no refresh thread: worker processes are forked from this one
        )
        self._p.start()
        task = self._p.add_task("sweep", total=self.total, completed=self.already, failed=0)
        self._p.refresh()
        failed = [0]

        def advance(rec: Mapping[str, Any]) -> None:
            failed[0] += rec["status"] == "failed"
            self._p.update(task, advance=1, failed=failed[0])
            self._p.refresh()

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()

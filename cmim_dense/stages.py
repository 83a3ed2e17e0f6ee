"""A job as named stages with dependencies, run in order or ``jobs`` at a time in worker processes.

A stage is skipped when it is already done, reported (not raised) when it fails, and the stages
that need a failed one are skipped, so a job runs everything it can and a re-run continues.  With
``jobs > 1`` the stages marked ``in_worker`` (pretrainings and fine-tunes: picklable, each in its
own folder) run in spawned worker processes that share the CPU threads, their output goes to
``ROOT/logs/STAGE.log``, and the others (charts, reports) run in the parent once their needs are
done.  On a small CPU this raises throughput: one small network seldom keeps two threads busy
(measured: two 60-epoch study pretrainings at one thread each finished in 88 s, one after the
other at two threads each in 118 s).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import re
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .run_folder import owned_folder


@dataclass
class Stage:
    name: str
    done: Callable[[], bool]
    run: Callable[[], Any]
    needs: list[str] = field(default_factory=list)
    in_worker: bool = False  # ``run`` pickles (a module-level function and its arguments) and may run in a worker


def run_stages(stages: list[Stage], root: Path, jobs: int = 1) -> list[str]:
    """Run (or skip) every stage, holding ``root``'s lock (one job per root at a time,
    :mod:`cmim_dense.run_folder`), ``jobs`` at a time; returns the names of the stages that failed."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be a positive integer, got {jobs!r}")
    with owned_folder(root):
        return _run(stages, root, jobs)


def failure(error: BaseException) -> str:
    """One line for a failed stage: the error and the place it was raised."""
    last = traceback.extract_tb(error.__traceback__)[-1]
    return f"{type(error).__name__}: {error} ({Path(last.filename).name}:{last.lineno})"


def _run(stages: list[Stage], root: Path, jobs: int) -> list[str]:
    """:func:`run_stages`: each stage starts, in the listed order, as soon as the stages it needs
    are done and (with ``jobs > 1``, for an ``in_worker`` stage) a spawned worker is free; with
    ``jobs == 1`` every stage runs in this process, its output on the console."""
    logs = root / "logs"
    names = {stage.name for stage in stages}
    finished: set[str] = set()
    failed: list[str] = []
    waiting = list(enumerate(stages, 1))
    running: dict[Future, tuple[str, int, float]] = {}
    start = time.perf_counter()

    def prefix(number: int, name: str) -> str:
        return f"[{number}/{len(stages)} {time.perf_counter() - start:5.0f}s] {name}"

    threads = max(1, torch.get_num_threads() // jobs)
    workers = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=torch.set_num_threads, initargs=(threads,)) if jobs > 1 else None
    with workers or contextlib.nullcontext() as pool:
        while waiting or running:
            before = len(waiting)
            for entry in list(waiting):
                number, stage = entry
                blocked = [name for name in stage.needs if name in failed]
                pending = [name for name in stage.needs if name in names and name not in finished]
                in_worker = stage.in_worker and pool is not None
                if not blocked and (pending or (in_worker and len(running) >= jobs)):
                    continue
                waiting.remove(entry)
                if blocked:
                    print(f"{prefix(number, stage.name)}: skipped, needs {', '.join(blocked)}", flush=True)
                    failed.append(stage.name)
                    continue
                try:
                    if stage.done():
                        print(f"{prefix(number, stage.name)}: already done", flush=True)
                        finished.add(stage.name)
                        continue
                    if in_worker:
                        logs.mkdir(parents=True, exist_ok=True)
                        log = logs / f"{re.sub(r'[^A-Za-z0-9_.+-]+', '_', stage.name)}.log"
                        print(f"{prefix(number, stage.name)} ... (log: {log})", flush=True)
                        running[pool.submit(_run_logged, stage.run, log)] = (stage.name, number, time.perf_counter())
                        continue
                    print(f"{prefix(number, stage.name)} ...", flush=True)
                    stage.run()
                    finished.add(stage.name)
                except Exception as error:  # report, continue with the independent stages
                    print(f"{prefix(number, stage.name)}: FAILED: {failure(error)}", flush=True)
                    failed.append(stage.name)
            if not running:
                if len(waiting) == before:  # nothing could start, nothing will finish: the needs form a cycle
                    for number, stage in waiting:
                        print(f"{prefix(number, stage.name)}: FAILED: its needs form a cycle", flush=True)
                        failed.append(stage.name)
                    waiting.clear()
                continue
            for future in wait(running, return_when=FIRST_COMPLETED).done:
                name, number, began = running.pop(future)
                try:
                    future.result()
                except Exception as error:  # the worker's one line (see _run_logged), or a worker that died
                    print(f"{prefix(number, name)}: FAILED: {error}", flush=True)
                    failed.append(name)
                    continue
                print(f"{prefix(number, name)}: done in {time.perf_counter() - began:.0f} s", flush=True)
                finished.add(name)
    return failed


def _run_logged(run: Callable[[], Any], log: Path) -> None:
    """A worker's stage: ``run`` with its output in ``log``; a failure comes back as one picklable
    line (the error and where it was raised), its traceback in the log."""
    with log.open("a", buffering=1) as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        try:
            run()
        except Exception as error:
            traceback.print_exc()
            raise RuntimeError(f"{failure(error)}; log: {log}") from None

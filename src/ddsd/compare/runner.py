"""Executing a comparison's plan: parallel ``ddsd train`` subprocesses, progress inside each run, stopping.

Each run is a subprocess ``python -m ddsd train ... --no-progress --threads T`` whose output goes to
``<rundir>/train.log`` (``T``: the default rule of :mod:`ddsd.engine.resources` shared by the ``jobs``: 1 on
2 cores, else the idle cores // jobs, at most 8); a failed run is reported and the others continue. While
runs train, each one's epoch (from its ``metrics.csv``) is printed as ``epoch k/n``. The subprocesses watch
this process (``DDSD_PARENT_PID``) and stop when it dies, even by SIGKILL; an interruption (Ctrl-C,
SIGTERM) terminates them and waits for them.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ddsd.compare.grid import RunSpec, run_state
from ddsd.engine.interrupts import PARENT_ENV
from ddsd.engine.resources import resolve_threads

__all__ = ["RunResult", "execute"]


@dataclass
class RunResult:
    """What happened to one run: ``skipped`` (already finished), ``ok`` or ``failed`` (see ``log``)."""

    spec: RunSpec
    status: str
    returncode: int | None = None
    seconds: float = 0.0


class _Launcher:
    """Starts run subprocesses and remembers them, so an interruption can stop them all."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def run(self, spec: RunSpec) -> RunResult:
        resume = run_state(spec.rundir) == "resume"
        argv = spec.argv(prog=(sys.executable, "-m", "ddsd"), threads=self.threads, resume=resume)
        spec.rundir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(self.threads),
               "MKL_NUM_THREADS": str(self.threads), PARENT_ENV: str(os.getpid())}
        t0 = time.perf_counter()
        with spec.log.open("a") as log:
            log.write(f"$ {shlex.join(argv)}\n")
            log.flush()
            with self.lock:
                if self.stopping:
                    return RunResult(spec, "failed", None, 0.0)
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
                self.procs.add(proc)
            try:
                rc = proc.wait()
            finally:
                with self.lock:
                    self.procs.discard(proc)
        ok = rc == 0 and run_state(spec.rundir) == "done"
        return RunResult(spec, "ok" if ok else "failed", rc, time.perf_counter() - t0)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _now() -> str:
    return time.strftime("%H:%M:%S")


def execute(plan: Sequence[RunSpec], jobs: int = 1, console: Console | None = None,
            progress: bool = True) -> list[RunResult]:
    """Run the unfinished runs of ``plan`` with ``jobs`` parallel subprocesses; one progress bar over runs.

    Returns one :class:`RunResult` per run of the plan, in plan order. Ctrl-C stops the running subprocesses
    (their last checkpoints stay valid, so the next ``ddsd compare`` resumes them) and re-raises.
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    console = console or Console(stderr=True)
    threads, _ = resolve_threads(None, jobs)  # the measured rule: 1 on 2 cores, else the idle cores // jobs
    results: dict[int, RunResult] = {}
    todo = []
    for i, spec in enumerate(plan):
        if run_state(spec.rundir) == "done":
            results[i] = RunResult(spec, "skipped")
        else:
            todo.append(i)
    launcher = _Launcher(threads)
    bar = Progress(TextColumn("[bold]compare"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not progress)
    n_resume = sum(run_state(plan[i].rundir) == "resume" for i in todo)
    console.print(f"compare: {len(plan)} runs, {len(plan) - len(todo)} already finished, {len(todo)} to run "
                  f"({n_resume} resumed from their last checkpoint) with {jobs} job(s) x {threads} thread(s)")
    with bar, ThreadPoolExecutor(max_workers=jobs) as pool:
        task = bar.add_task("runs", total=len(plan), completed=len(plan) - len(todo), info="")
        pending: dict[Future, int] = {pool.submit(launcher.run, plan[i]): i for i in todo}
        failed = 0
        epochs_seen: dict[int, int] = {}
        try:
            while pending:
                done, _ = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
                _report_epochs(list(pending.values()), plan, epochs_seen, bar, task)  # the ones just done too
                for fut in done:
                    i = pending.pop(fut)
                    res = fut.result()
                    results[i] = res
                    if res.status == "ok":
                        bar.console.print(escape(f"{_now()} done   {res.spec.name} ({res.seconds:.1f}s)"))
                    else:
                        failed += 1
                        bar.console.print(f"{_now()} [red]FAILED[/] " + escape(
                            f"{res.spec.name} (exit {res.returncode}); log: {res.spec.log}"))
                    bar.update(task, advance=1, info=f"{failed} failed" if failed else "")
        except BaseException:
            for fut in pending:
                fut.cancel()
            launcher.stop()
            raise
    return [results[i] for i in range(len(plan))]


def _epochs_of(spec: RunSpec) -> tuple[int, int | None]:
    """``(epochs done, epochs planned)`` of a run from its metrics.csv and config.yaml (0 / None when absent)."""
    from ddsd.engine.rundir import read_metrics

    try:
        done = len(read_metrics(spec.rundir / "metrics.csv"))
        total = spec.epochs
        if total is None and (spec.rundir / "config.yaml").is_file():
            import yaml

            total = int(yaml.safe_load((spec.rundir / "config.yaml").read_text())["train"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # a file being replaced, a partial one
        return 0, None
    return done, total


def _report_epochs(running: Sequence[int], plan: Sequence[RunSpec], seen: dict[int, int], bar: Progress,
                   task) -> None:
    """Print ``epoch k/n <run>`` when a running run finishes an epoch; the bar shows the running ones."""
    info = []
    for i in running:
        if not plan[i].rundir.is_dir():
            continue
        done, total = _epochs_of(plan[i])
        of = f"/{total}" if total else ""
        if done and seen.get(i) != done:
            seen[i] = done
            bar.console.print(escape(f"{_now()} epoch {done}{of}  {plan[i].name}"))
        info.append(f"{plan[i].name} {done}{of}")
    bar.update(task, info="running: " + ", ".join(info) if info else "")

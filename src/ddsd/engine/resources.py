"""How many CPU threads and data-loader workers a run uses when the config leaves them to ``None`` (auto).

Measured (docs/benchmarks.md, "Threads on a busy machine"): on a 2-core machine with another busy process,
torch's default of one thread per core made a run 3-4x slower than one thread (the threads of a parallel
region wait for each other, and one of them keeps losing its core), and a loader worker was slower still
(it competes for the same cores as the compute). So the rule is: the cores this process may run on
(``os.sched_getaffinity``) minus the ones already busy (1-minute load average), at least 1, at most 8; one
thread on 2 cores or fewer. Workers only where cores are left over beyond the threads and the busy ones.
``OMP_NUM_THREADS``, when set, is taken as the user's choice of threads.
"""

from __future__ import annotations

import math
import os

__all__ = ["available_cores", "busy_cores", "resolve_threads", "resolve_workers"]

MAX_AUTO_THREADS = 8
MAX_AUTO_WORKERS = 2


def available_cores() -> int:
    """Cores this process may run on (its affinity mask; ``os.cpu_count()`` where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def busy_cores(cores: int) -> int:
    """Cores other processes keep busy now: the 1-minute load average, rounded up, at most ``cores - 1``."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return 0
    return min(cores - 1, max(0, math.ceil(load - 0.25)))


def resolve_threads(requested: int | None, jobs: int = 1) -> tuple[int, str]:
    """``(threads, why)``: ``requested`` when given, else ``$OMP_NUM_THREADS``, else the rule above, for one of
    ``jobs`` processes that share the machine (``ddsd compare --jobs``)."""
    if requested:
        return requested, "train.threads / --threads"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = available_cores()
    if cores <= 2:
        return 1, f"auto: {cores} core(s), one thread (more collapse when another process is busy)"
    busy = busy_cores(cores)
    n = max(1, min((cores - busy) // max(1, jobs), MAX_AUTO_THREADS))
    return n, f"auto: {cores} cores, {busy} busy" + (f", {jobs} jobs" if jobs > 1 else "")


def resolve_workers(requested: int | None, threads: int) -> tuple[int, str]:
    """``(workers, why)``: ``requested`` when given, else the cores left beyond ``threads`` and busy ones."""
    if requested is not None:
        return requested, "data.num_workers / --workers"
    cores = available_cores()
    spare = cores - threads - busy_cores(cores)
    n = max(0, min(spare, MAX_AUTO_WORKERS)) if cores > 2 else 0
    return n, "auto: no spare core" if n == 0 else f"auto: {spare} spare core(s)"

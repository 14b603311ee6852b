"""The training engine: one loop for every method (the method only changes the criterion).

``train(cfg)`` builds data, student, optional frozen teacher, criterion (:func:`ddsd.methods.build_criterion`),
optimiser and LR schedule from a :class:`~ddsd.config.RunConfig` (:mod:`ddsd.engine.session`), then per epoch:
train (:mod:`ddsd.engine.epoch`), evaluate on val, write
``metrics.csv``, save ``checkpoints/last.pt`` (and ``best.pt`` when the main val metric improves) atomically.
At the end ``best.pt`` is scored on ``data.eval_splits`` and ``summary.json`` is written.

Reproducibility: the data order of epoch ``e`` is drawn from a generator seeded by ``(seed, e)`` and the
augmentations by ``(seed, e, index)``; model/optimiser/schedule/criterion/RNG states are checkpointed at every
epoch end, so ``resume=True`` after any interruption (even SIGKILL) gives the same weights and metrics as an
uninterrupted run on CPU. Epochs are 1-based in every output (log, metrics.csv, summary, snapshots).

Safety: the run directory is locked while the run writes it; Ctrl-C / SIGTERM end in
:class:`~ddsd.engine.interrupts.TrainingInterrupted` and a failed write in ``RunWriteError``, both naming
what ``last.pt`` holds; the end-of-epoch writes complete before a signal is acted on.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ddsd._io import exclusive_lock
from ddsd.config import RunConfig, save_config
from ddsd.data import build_dataset
from ddsd.engine import distributed
from ddsd.engine.checkpoint import load_checkpoint
from ddsd.engine.epoch import EpochStats, epoch_row, train_epoch
from ddsd.engine.evaluate import evaluate, main_metric
from ddsd.engine.interrupts import TrainingInterrupted, deferred, sigterm_as_interrupt, watch_parent
from ddsd.engine.resume import data_identity
from ddsd.engine.rundir import MetricsLog, RunDir, environment, remove_attempt, run_files, write_json
from ddsd.engine.saving import RunProgress, guarded_write, save_epoch
from ddsd.engine.seeding import get_rng_state
from ddsd.engine.session import Session, build_lr_lambda, open_session, resume_session, unwrap
from ddsd.engine.snapshots import save_snapshot
from ddsd.models import CachedTeacher

__all__ = ["RunExistsError", "build_lr_lambda", "train"]


class RunExistsError(FileExistsError):
    """The output directory already holds a run and ``resume`` was not asked for."""


def _sync_buffers(model: nn.Module, ctx: distributed.DistContext) -> None:
    """Under DDP, give every rank rank 0's buffers (BatchNorm running statistics drift apart per rank), so the
    ranks evaluate exactly the model that rank 0 saves."""
    if ctx.enabled:
        for b in model.buffers():
            torch.distributed.broadcast(b, 0)


def train(cfg: RunConfig, resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Train one run described by ``cfg``; returns the summary (also written to ``<out>/summary.json``).

    The run directory is locked while the run writes it (a second writer gets :class:`ddsd._io.LockedError`);
    SIGTERM and Ctrl-C raise :class:`~ddsd.engine.interrupts.TrainingInterrupted`; a start that fails before
    its first checkpoint removes the run directory it created (nothing is left to block the next attempt).
    """
    console = console or Console(stderr=True)
    run = RunDir(cfg.out)
    if run.finished and not resume:
        raise RunExistsError(f"{run.root} already holds a finished run (summary.json); choose another --out")
    if run.last.exists() and not resume:
        raise RunExistsError(f"{run.root} holds a checkpoint; pass --resume to continue it or choose another --out")
    ctx = distributed.setup(cfg.train.device)
    lock_existed = run.lock.exists()
    existed: set = set()
    where = RunProgress()
    watch_parent()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(sigterm_as_interrupt())
            if ctx.is_main:
                run.root.mkdir(parents=True, exist_ok=True)
                stack.enter_context(exclusive_lock(run.lock, f"run directory {run.root}"))
                existed = run_files(run.root) - (set() if lock_existed else {run.lock})  # what was there before
            try:
                return _train(cfg, run, resume, ctx, console, where)
            except BaseException as e:
                if ctx.is_main:  # still under the lock: only this attempt's files, never another writer's
                    remove_attempt(run.root, existed)
                if isinstance(e, KeyboardInterrupt) and not isinstance(e, TrainingInterrupted):
                    raise TrainingInterrupted(run.root, where.epoch, where.saved) from None
                raise
    finally:
        distributed.cleanup(ctx)


@dataclass
class _Outputs:
    """Where a run writes: the run directory, the progress a signal reports, metrics.csv (main process only),
    TensorBoard, and what every checkpoint carries besides the states (environment, resolved config)."""

    run: RunDir
    where: RunProgress
    log: MetricsLog | None
    writer: Any
    env: dict[str, Any]
    saved_config: dict[str, Any]
    key: str
    data: dict[str, Any]  # the train / val images (ddsd.engine.resume.data_identity): a resume must find them


def _open_outputs(s: Session, run: RunDir, where: RunProgress) -> _Outputs:
    """Write config.yaml (resolved config + environment), open metrics.csv (rows after the resumed epoch are
    dropped) and, when asked, TensorBoard."""
    ctx, cfg, spec = s.ctx, s.cfg, s.spec
    env = environment(ctx.device)
    dataset_info = {"name": spec.name, "class_names": list(spec.class_names), "positive_class": spec.positive_class,
                    "ignore_index": spec.ignore_index, "colors": {int(c): list(v) for c, v in spec.colors.items()}}
    saved_config = {**cfg.model_dump(mode="json"), "dataset": dataset_info}
    if ctx.is_main:
        meta = {**env, "world_size": ctx.world_size, "threads": s.threads, "workers": s.workers}
        guarded_write(run.config, run, where, save_config, cfg, run.config, meta)
    log = MetricsLog(run.metrics, keep_epochs_below=s.start_epoch + 1) if ctx.is_main else None
    writer = None
    if cfg.train.tensorboard and ctx.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise RuntimeError("train.tensorboard needs the tensorboard package: pip install tensorboard") from e
        writer = SummaryWriter(str(run.root / "tensorboard"))
    return _Outputs(run, where, log, writer, env, saved_config, main_metric(s.val_ds),
                    data_identity({"train": s.train_ds, "val": s.val_ds}))


def _wrap(s: Session) -> nn.Module:
    """The module the steps run: DDP-wrapped under several processes, compiled when ``train.compile``."""
    net: nn.Module = s.model
    if s.ctx.enabled:
        net = DistributedDataParallel(s.model, device_ids=[s.device.index] if s.device.type == "cuda" else None)
    return torch.compile(net) if s.cfg.train.compile else net


def _train(cfg: RunConfig, run: RunDir, resume: bool, ctx: distributed.DistContext, console: Console,
           where: RunProgress):
    t_start = time.perf_counter()
    s = open_session(cfg, ctx, console)
    if resume and run.last.exists():
        resume_session(s, run)
    where.saved = s.start_epoch
    o = _open_outputs(s, run, where)
    net = _wrap(s)
    progress_on = s.cfg.train.progress and ctx.is_main
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=not progress_on,
    )
    with progress:
        task = progress.add_task(f"{s.cfg.method.name} {s.spec.name}", total=s.total_steps, completed=s.step,
                                 info="")

        def on_step(loss: float, rate: float) -> None:  # one host sync per step, only for the bar
            progress.update(task, advance=1, info=f"loss {loss:.3f} rate {rate:.2f}")

        for epoch in range(s.start_epoch, s.cfg.train.epochs):
            where.epoch = epoch + 1
            t0 = time.perf_counter()
            stats = train_epoch(s, net, epoch, on_step if progress_on else None)
            _end_epoch(s, o, net, epoch, stats, t0)

    summary = _finish(s, run, o.key)
    summary["wall_time_s"] = time.perf_counter() - t_start
    if isinstance(t := s.teacher, CachedTeacher):
        summary["teacher_cache"] = {"dir": str(t.cache_dir), "hits": t.hits, "misses": t.misses}
        if ctx.is_main:
            console.print(escape(f"teacher cache {t.cache_dir}: {t.hits} hits, {t.misses} misses"))
    if ctx.is_main:
        guarded_write(run.summary, run, where, write_json, run.summary, summary)
        if o.writer is not None:
            o.writer.close()
    return summary


def _end_epoch(s: Session, o: _Outputs, net: nn.Module, epoch: int, stats: EpochStats, t0: float) -> None:
    """Evaluate on val, then (main process) snapshot, metrics.csv row + last.pt (+ best.pt when the main val
    metric improved) written together, TensorBoard and the console line; every rank waits for it."""
    ctx, cfg = s.ctx, s.cfg
    _sync_buffers(s.model, ctx)
    val = evaluate(net if not ctx.enabled else s.model, s.val_ds, s.device, cfg.data.batch_size, ctx.rank,
                   ctx.world_size, s.amp_dtype, cfg.train.channels_last)
    score = val[o.key]
    improved = score is not None and math.isfinite(score) and score > s.best
    if improved:
        s.best, s.best_epoch = score, epoch + 1
    row = epoch_row(s, epoch, stats, val, t0)
    if ctx.enabled:  # the capability counts are all-reduced in crit.step(): every rank has one rate
        rates: list[float | None] = [None] * ctx.world_size
        torch.distributed.all_gather_object(rates, float(getattr(s.crit, "rate", 0.0)))
        if len(set(rates)) != 1:
            raise RuntimeError(f"ranks disagree on the dropout rate after epoch {epoch}: {rates}")
    snapshot_epochs = {1, (cfg.train.epochs + 1) // 2, cfg.train.epochs}  # early, middle, late
    if ctx.is_main and cfg.train.snapshots and epoch + 1 in snapshot_epochs:
        snap = o.run.root / "snapshots" / f"epoch_{epoch + 1:03d}.npz"
        guarded_write(snap, o.run, o.where, save_snapshot, snap, unwrap(s.model), s.crit, s.val_ds,
                      cfg.train.snapshots, epoch + 1, s.device, s.teacher)
    if ctx.is_main:
        state = {
            "model": unwrap(s.model).state_dict(), "optimizer": s.opt.state_dict(),
            "lr_scheduler": s.lr_sched.state_dict(), "criterion": s.crit.state_dict(),
            "scaler": s.scaler.state_dict(), "rng": get_rng_state(), "epoch": epoch + 1, "step": s.step,
            "best_metric": s.best, "best_epoch": s.best_epoch, "config": o.saved_config, "val": val, "env": o.env,
            "data": o.data,
        }
        assert o.log is not None
        with deferred():  # a signal waits until last.pt and where.saved agree
            save_epoch(o.run, o.where, o.log, row, state, improved)
        if o.writer is not None:
            for name, v in row.items():
                if isinstance(v, int | float) and v is not None:
                    o.writer.add_scalar(name, v, epoch + 1)
        s.console.print(escape(f"{time.strftime('%H:%M:%S')} epoch {epoch + 1}/{cfg.train.epochs}  {o.key} "
                               f"{score:.4f}  best {s.best:.4f}  dropout rate {row['rate']:.3f}  "
                               f"{row['epoch_time_s']:.1f}s"))
    ctx.barrier()


def _finish(s: Session, run: RunDir, key: str) -> dict[str, Any]:
    """Score the last weights on val, then load ``best.pt`` and score it on val and ``eval_splits``; the summary."""
    cfg, ctx = s.cfg, s.ctx
    ctx.barrier()
    final_val = evaluate(s.model, s.val_ds, s.device, cfg.data.batch_size, ctx.rank, ctx.world_size, s.amp_dtype)
    best_state = load_checkpoint(run.best if run.best.exists() else run.last, map_location=s.device)
    unwrap(s.model).load_state_dict(best_state["model"])
    summary: dict[str, Any] = {
        "method": cfg.method.name, "dataset": s.spec.name, "model": cfg.model.name, "seed": cfg.train.seed,
        "epochs": cfg.train.epochs, "main_metric": key, "best_epoch": s.best_epoch,
        "best_val": best_state["val"], "final_val": final_val, **{k: v for k, v in best_state["val"].items()},
    }
    for split in cfg.data.eval_splits:
        if split not in s.spec.splits:
            continue
        ds = build_dataset(s.spec, split, s.size, augment=False, cache_dir=cfg.data.cache_dir,
                           resize=cfg.data.resize)
        summary[split] = evaluate(s.model, ds, s.device, cfg.data.batch_size, ctx.rank, ctx.world_size, s.amp_dtype)
    return summary

"""The training engine: one loop for every method (the method only changes the criterion).

``train(cfg)`` builds data, student, optional frozen teacher, criterion (:func:`ddsd.methods.build_criterion`),
optimiser and LR schedule from a :class:`~ddsd.config.RunConfig`, then per epoch: train, evaluate on val, write
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
from contextlib import nullcontext
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ddsd._io import exclusive_lock
from ddsd.config import RunConfig, save_config
from ddsd.data import build_dataset, collate_keep, load_spec
from ddsd.data.sizing import resolve_size
from ddsd.engine import distributed
from ddsd.engine.checkpoint import load_checkpoint
from ddsd.engine.evaluate import evaluate, main_metric
from ddsd.engine.interrupts import TrainingInterrupted, deferred, sigterm_as_interrupt, watch_parent
from ddsd.engine.resources import resolve_threads, resolve_workers
from ddsd.engine.resume import check_resumable, load_last
from ddsd.engine.rundir import MetricsLog, RunDir, environment, remove_attempt, run_files, write_json
from ddsd.engine.saving import RunProgress, guarded_write, save_epoch
from ddsd.engine.seeding import get_rng_state, seed_everything, set_rng_state, worker_init_fn
from ddsd.engine.snapshots import save_snapshot
from ddsd.methods import TEACHER_METHODS, build_criterion
from ddsd.models import CachedTeacher, build_student, build_teacher
from ddsd.models.outputs import aux_loss, to_logits

__all__ = ["RunExistsError", "build_lr_lambda", "train"]

_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class RunExistsError(FileExistsError):
    """The output directory already holds a run and ``resume`` was not asked for."""


def build_lr_lambda(schedule: str, total_steps: int, warmup_steps: int, power: float = 0.9):
    """Per-iteration LR factor: linear warm-up, then ``poly`` (1 - p)^power, ``cosine`` or ``constant``."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "poly":
            return (1.0 - p) ** power
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * p))
        return 1.0

    return factor


def _optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)
    return torch.optim.AdamW(groups, lr=o.lr)


def _unwrap(model: nn.Module) -> nn.Module:
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def _train_loader(cfg: RunConfig, dataset, epoch: int, ctx: distributed.DistContext, workers: int = 0) -> DataLoader:
    """The epoch's loader. The order is one seeded permutation per epoch, shared by every world size: with
    N ranks, rank r takes positions r, r+N, ... of it and a per-rank batch of ``batch_size / N``, so the union
    of the ranks' batches at a step is the single-process batch at that step."""
    dataset.set_epoch(epoch)
    seed = cfg.train.seed
    if cfg.data.batch_size % ctx.world_size:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} (the global batch) must be divisible by the "
                         f"number of processes {ctx.world_size}")
    sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    per_rank = cfg.data.batch_size // ctx.world_size
    loader_gen = torch.Generator().manual_seed(seed * 7_919 + epoch)
    return DataLoader(
        dataset, batch_size=per_rank, sampler=sampler, num_workers=workers, collate_fn=collate_keep,
        drop_last=len(dataset) >= cfg.data.batch_size, worker_init_fn=worker_init_fn, generator=loader_gen,
        pin_memory=ctx.device.type == "cuda",
    )


def _quiet(_: str) -> None:
    return None


def _sync_buffers(model: nn.Module, ctx: distributed.DistContext) -> None:
    """Under DDP, give every rank rank 0's buffers (BatchNorm running statistics drift apart per rank), so the
    ranks evaluate exactly the model that rank 0 saves."""
    if ctx.enabled:
        for b in model.buffers():
            torch.distributed.broadcast(b, 0)


def _scalar_metrics(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in metrics.items() if isinstance(v, int | float)}


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


def _train(cfg: RunConfig, run: RunDir, resume: bool, ctx: distributed.DistContext, console: Console,
           where: RunProgress):
    t_start = time.perf_counter()
    threads, why_threads = resolve_threads(cfg.train.threads)
    torch.set_num_threads(threads)
    seed_everything(cfg.train.seed)
    device = ctx.device
    spec = load_spec(cfg.data.name, cfg.data.root)
    choice = resolve_size(spec, cfg.data.size, cfg.data.resize)
    size = choice.size
    if ctx.is_main and choice.picked:
        console.print(escape(f"training size {size[0]}x{size[1]} (HxW, data.resize={cfg.data.resize}): "
                             f"{choice.reason}"))
    train_ds = build_dataset(spec, "train", size, augment=cfg.data.augment, seed=cfg.train.seed,
                             cache_dir=cfg.data.cache_dir, resize=cfg.data.resize)
    val_ds = build_dataset(spec, "val", size, augment=False, cache_dir=cfg.data.cache_dir, resize=cfg.data.resize)
    if len(train_ds) < cfg.data.batch_size:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} is larger than the train split of '{spec.name}' "
                         f"({len(train_ds)} images); use --batch-size {len(train_ds)} or less")
    workers, why_workers = resolve_workers(cfg.data.num_workers, threads)
    if ctx.is_main:
        console.print(escape(f"{spec.name}: {len(train_ds)} train / {len(val_ds)} val images; {threads} CPU "
                             f"thread(s) ({why_threads}), {workers} data-loader worker(s) ({why_workers})"))
    k = spec.num_classes
    cfg = cfg.model_copy(deep=True)  # the resolved config: what was actually used is what gets saved
    if cfg.data.size is None:
        cfg.data.size = tuple(size)
    if cfg.model.num_classes is None:
        cfg.model.num_classes = k
    elif cfg.model.num_classes != k:
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but dataset '{spec.name}' has {k} classes")
    model = build_student(cfg.model, k, log=console.log if ctx.is_main else _quiet).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.teacher and cfg.method.name not in TEACHER_METHODS:
        raise ValueError(f"method '{cfg.method.name}' does not use a network teacher (only {', '.join(TEACHER_METHODS)}"
                         f" do); drop --teacher {cfg.teacher}")
    if cfg.train.teacher_cache and not cfg.teacher:
        raise ValueError(f"train.teacher_cache={cfg.train.teacher_cache!r} caches a network teacher's logits, "
                         "but no teacher is set (--teacher)")
    teacher_cl = cfg.train.teacher_channels_last or cfg.train.channels_last
    teacher: nn.Module | None = None
    if cfg.teacher_weights and not cfg.teacher:
        raise ValueError(f"teacher_weights={cfg.teacher_weights!r} needs a teacher model spec (--teacher)")
    if cfg.teacher:
        teacher, t_fingerprint = build_teacher(cfg.teacher, cfg.teacher_weights, k, _AMP[cfg.train.teacher_amp],
                                               teacher_cl, log=console.log if ctx.is_main else _quiet)
        teacher = teacher.to(device)
    if teacher is not None and teacher.num_classes not in (None, k):
        raise ValueError(f"teacher {cfg.teacher} predicts {teacher.num_classes} classes, the data has {k}")
    if teacher is not None and cfg.train.teacher_cache:
        assert cfg.teacher is not None
        # the key covers how the teacher runs (its precision and layout change the logits' last bits)
        how = f"|amp={cfg.train.teacher_amp}|channels_last={teacher_cl}"
        teacher = CachedTeacher(teacher, cfg.train.teacher_cache, t_fingerprint + how)

    steps_per_epoch = len(_train_loader(cfg, train_ds, 0, ctx, workers))
    total_steps = cfg.train.epochs * steps_per_epoch
    crit = build_criterion(cfg.method, k, total_steps, spec.ignore_index, seed=cfg.train.seed).to(device)
    opt = _optimizer(cfg, model)
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        opt, build_lr_lambda(cfg.optim.lr_schedule, total_steps, warmup, cfg.optim.poly_power)
    )
    amp_dtype = _AMP[cfg.train.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")

    start_epoch, step, best, best_epoch = 0, 0, -math.inf, 0  # epochs are 1-based in every output
    if resume and run.last.exists():
        state = load_last(run.last, run.best, map_location=device)
        check_resumable(state.get("config", {}), cfg, run.last)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        crit.load_state_dict(state["criterion"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch, step = state["epoch"], state["step"]
        best, best_epoch = state["best_metric"], state["best_epoch"]
        before = state.get("env", {}).get("cpu_threads")
        if cfg.train.threads is None and isinstance(before, int) and before != threads and device.type == "cpu":
            torch.set_num_threads(before)  # auto: keep the run's thread count, so the resumed run is bit-identical
            threads = before
        if ctx.is_main:
            console.print(f"[bold]resuming[/] {escape(str(run.root))} after epoch {start_epoch} "
                          f"({threads} CPU thread(s))")
    where.saved = start_epoch
    env = environment(device)
    dataset_info = {"name": spec.name, "class_names": list(spec.class_names), "positive_class": spec.positive_class,
                    "ignore_index": spec.ignore_index, "colors": {int(c): list(v) for c, v in spec.colors.items()}}
    saved_config = {**cfg.model_dump(mode="json"), "dataset": dataset_info}
    if ctx.is_main:
        meta = {**env, "world_size": ctx.world_size, "threads": threads, "workers": workers}
        guarded_write(run.config, run, where, save_config, cfg, run.config, meta)
    log = MetricsLog(run.metrics, keep_epochs_below=start_epoch + 1) if ctx.is_main else None
    net: nn.Module = model
    if ctx.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        net = torch.compile(net)
    writer = None
    if cfg.train.tensorboard and ctx.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise RuntimeError("train.tensorboard needs the tensorboard package: pip install tensorboard") from e
        writer = SummaryWriter(str(run.root / "tensorboard"))
    key = main_metric(val_ds)

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=not (cfg.train.progress and ctx.is_main),
    )
    progress_on = cfg.train.progress and ctx.is_main
    with progress:
        task = progress.add_task(f"{cfg.method.name} {spec.name}", total=total_steps, completed=step, info="")
        for epoch in range(start_epoch, cfg.train.epochs):
            where.epoch = epoch + 1
            t0 = time.perf_counter()
            net.train()
            if teacher is not None:
                teacher.eval()
            sums: torch.Tensor | None = None
            counts: torch.Tensor | None = None
            stat_names: list[str] = []
            n_batches, data_time = 0, 0.0
            t_data = time.perf_counter()
            for batch in _train_loader(cfg, train_ds, epoch, ctx, workers):
                x = batch["image"].to(device, non_blocking=True)
                y = batch["mask"].to(device, non_blocking=True)
                if cfg.train.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                data_time += time.perf_counter() - t_data
                autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
                with autocast:
                    raw = net(x)
                    logits = to_logits(raw, y.shape[-2:])  # dict / .logits / low-res outputs -> [B, K, H, W]
                    t_logits = teacher(x, size=tuple(y.shape[-2:])) if teacher is not None else None
                out = crit(logits, y, t_logits)
                if (aux := aux_loss(raw, y, cfg.model.aux_weight, spec.ignore_index)) is not None:
                    out = out._replace(loss=out.loss + aux)
                stat_names = ["loss", *out.tensors]
                opt.zero_grad(set_to_none=True)
                scaler.scale(out.loss).backward()
                if cfg.optim.grad_clip:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                scaler.step(opt)
                scaler.update()
                lr_sched.step()
                crit.step()
                step += 1
                n_batches += 1
                vals = torch.stack([out.loss.detach().double(), *(v.double() for v in out.tensors.values())])
                finite = torch.isfinite(vals)
                sums = sums + torch.where(finite, vals, 0.0) if sums is not None else torch.where(finite, vals, 0.0)
                counts = counts + finite if counts is not None else finite.long()
                if progress_on:  # one host sync per step, only for the bar
                    progress.update(task, advance=1, info=f"loss {float(vals[0]):.3f} rate {float(vals[1]):.2f}")
                t_data = time.perf_counter()
            train_time = time.perf_counter() - t0
            _sync_buffers(model, ctx)
            val = evaluate(net if not ctx.enabled else model, val_ds, device, cfg.data.batch_size, ctx.rank,
                           ctx.world_size, amp_dtype, cfg.train.channels_last)
            score = val[key]
            improved = score is not None and math.isfinite(score) and score > best
            if improved:
                best, best_epoch = score, epoch + 1
            means: dict[str, float] = {}
            if sums is not None and counts is not None:
                avg = (sums / counts.clamp_min(1)).tolist()
                means = {
                    f"train_{n}": (v if c else math.nan)
                    for n, v, c in zip(stat_names, avg, counts.tolist(), strict=True)
                }
            row = {
                "epoch": epoch + 1, "step": step, "lr": lr_sched.get_last_lr()[0],
                **means,
                "rate": getattr(crit, "rate", 0.0),
                "capability": getattr(getattr(crit, "schedule", None), "capability", None),
                **_scalar_metrics("val_", val),
                "train_time_s": train_time, "data_time_s": data_time,
                "epoch_time_s": time.perf_counter() - t0,
            }
            if ctx.enabled:  # the capability counts are all-reduced in crit.step(): every rank has one rate
                rates: list[float | None] = [None] * ctx.world_size
                torch.distributed.all_gather_object(rates, float(getattr(crit, "rate", 0.0)))
                if len(set(rates)) != 1:
                    raise RuntimeError(f"ranks disagree on the dropout rate after epoch {epoch}: {rates}")
            snapshot_epochs = {1, (cfg.train.epochs + 1) // 2, cfg.train.epochs}  # early, middle, late
            if ctx.is_main and cfg.train.snapshots and epoch + 1 in snapshot_epochs:
                snap = run.root / "snapshots" / f"epoch_{epoch + 1:03d}.npz"
                guarded_write(snap, run, where, save_snapshot, snap, _unwrap(model), crit, val_ds, cfg.train.snapshots,
                       epoch + 1, device, teacher)
            if ctx.is_main:
                state = {
                    "model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                    "lr_scheduler": lr_sched.state_dict(), "criterion": crit.state_dict(),
                    "scaler": scaler.state_dict(), "rng": get_rng_state(), "epoch": epoch + 1, "step": step,
                    "best_metric": best, "best_epoch": best_epoch, "config": saved_config,
                    "val": val, "env": env,
                }
                assert log is not None
                with deferred():  # a signal waits until last.pt and where.saved agree
                    save_epoch(run, where, log, row, state, improved)
                if writer is not None:
                    for name, v in row.items():
                        if isinstance(v, int | float) and v is not None:
                            writer.add_scalar(name, v, epoch + 1)
                console.print(escape(f"{time.strftime('%H:%M:%S')} epoch {epoch + 1}/{cfg.train.epochs}  {key} "
                                     f"{score:.4f}  best {best:.4f}  dropout rate {row['rate']:.3f}  "
                                     f"{row['epoch_time_s']:.1f}s"))
            ctx.barrier()

    summary = _finish(cfg, run, model, val_ds, spec, size, device, ctx, amp_dtype, key, best, best_epoch)
    summary["wall_time_s"] = time.perf_counter() - t_start
    if isinstance(teacher, CachedTeacher):
        summary["teacher_cache"] = {"dir": str(teacher.cache_dir), "hits": teacher.hits, "misses": teacher.misses}
        if ctx.is_main:
            console.print(escape(f"teacher cache {teacher.cache_dir}: {teacher.hits} hits, {teacher.misses} misses"))
    if ctx.is_main:
        guarded_write(run.summary, run, where, write_json, run.summary, summary)
        if writer is not None:
            writer.close()
    return summary


def _finish(cfg, run, model, val_ds, spec, size, device, ctx, amp_dtype, key, best, best_epoch) -> dict[str, Any]:
    """Score the last and best weights on val, best on ``eval_splits``; the summary dict."""
    ctx.barrier()
    final_val = evaluate(model, val_ds, device, cfg.data.batch_size, ctx.rank, ctx.world_size, amp_dtype)
    best_state = load_checkpoint(run.best if run.best.exists() else run.last, map_location=device)
    _unwrap(model).load_state_dict(best_state["model"])
    summary: dict[str, Any] = {
        "method": cfg.method.name, "dataset": spec.name, "model": cfg.model.name, "seed": cfg.train.seed,
        "epochs": cfg.train.epochs, "main_metric": key, "best_epoch": best_epoch, "best_val": best_state["val"],
        "final_val": final_val, **{k: v for k, v in best_state["val"].items()},
    }
    for split in cfg.data.eval_splits:
        if split not in spec.splits:
            continue
        ds = build_dataset(spec, split, size, augment=False, cache_dir=cfg.data.cache_dir, resize=cfg.data.resize)
        summary[split] = evaluate(model, ds, device, cfg.data.batch_size, ctx.rank, ctx.world_size, amp_dtype)
    return summary

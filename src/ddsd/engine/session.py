"""What one training run is made of, built in a fixed order: data, student, optional frozen teacher, criterion,
optimiser, LR schedule and gradient scaler (:func:`open_session`), and the state a checkpoint restores
(:func:`resume_session`).

The order of the builds is part of the reproducibility contract: the global RNG is seeded once, then the datasets,
the student's initialisation and the teacher consume it in this order, so a run of the same config gives the
same weights on the same machine and software.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ddsd.config import RunConfig
from ddsd.data import build_dataset, collate_keep, load_spec
from ddsd.data.sizing import resolve_size
from ddsd.engine import distributed
from ddsd.engine.resources import resolve_threads, resolve_workers
from ddsd.engine.resume import check_resumable, check_same_data, data_identity, load_last
from ddsd.engine.rundir import RunDir
from ddsd.engine.seeding import seed_everything, set_rng_state, worker_init_fn
from ddsd.methods import TEACHER_METHODS, build_criterion
from ddsd.models import CachedTeacher, build_student, build_teacher

__all__ = ["AMP", "Session", "build_lr_lambda", "open_session", "resume_session", "train_loader", "unwrap"]

AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers (what checkpoints hold)."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def train_loader(cfg: RunConfig, dataset, epoch: int, ctx: distributed.DistContext, workers: int = 0) -> DataLoader:
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


@dataclass
class Session:
    """Everything one run trains with. ``cfg`` is the resolved config (size and class count filled in: what was
    actually used, and what gets saved); ``step`` / ``start_epoch`` / ``best`` / ``best_epoch`` are the
    progress a checkpoint restores (epochs are 1-based in every output)."""

    cfg: RunConfig
    ctx: distributed.DistContext
    console: Console
    spec: Any
    size: tuple[int, int]
    train_ds: Any
    val_ds: Any
    threads: int
    workers: int
    model: nn.Module
    teacher: nn.Module | None
    crit: nn.Module
    opt: torch.optim.Optimizer
    lr_sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    total_steps: int
    start_epoch: int = 0
    step: int = 0
    best: float = -math.inf
    best_epoch: int = 0

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP[self.cfg.train.amp]


def _quiet(_: str) -> None:
    return None


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


def _data(cfg: RunConfig, ctx: distributed.DistContext, console: Console, threads: int, why_threads: str):
    """(spec, size, train set, val set, workers); checks the batch fits the train split."""
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
    return spec, size, train_ds, val_ds, workers


def _resolved(cfg: RunConfig, size: tuple[int, int], k: int, dataset: str) -> RunConfig:
    """A copy of ``cfg`` with the size and class count the run actually uses (what gets saved)."""
    cfg = cfg.model_copy(deep=True)
    if cfg.data.size is None:
        cfg.data.size = tuple(size)
    if cfg.model.num_classes is None:
        cfg.model.num_classes = k
    elif cfg.model.num_classes != k:
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but dataset '{dataset}' has {k} classes")
    return cfg


def _check_teacher_keys(cfg: RunConfig) -> None:
    if cfg.teacher and cfg.method.name not in TEACHER_METHODS:
        raise ValueError(f"method '{cfg.method.name}' does not use a network teacher (only {', '.join(TEACHER_METHODS)}"
                         f" do); drop --teacher {cfg.teacher}")
    if cfg.train.teacher_cache and not cfg.teacher:
        raise ValueError(f"train.teacher_cache={cfg.train.teacher_cache!r} caches a network teacher's logits, "
                         "but no teacher is set (--teacher)")
    if cfg.teacher_weights and not cfg.teacher:
        raise ValueError(f"teacher_weights={cfg.teacher_weights!r} needs a teacher model spec (--teacher)")


def _teacher(cfg: RunConfig, k: int, device: torch.device, log) -> nn.Module | None:
    """The frozen network teacher of ``cfg.teacher`` (None without one), behind the logit cache when asked."""
    _check_teacher_keys(cfg)
    if not cfg.teacher:
        return None
    teacher_cl = cfg.train.teacher_channels_last or cfg.train.channels_last
    teacher, fingerprint = build_teacher(cfg.teacher, cfg.teacher_weights, k, AMP[cfg.train.teacher_amp],
                                         teacher_cl, log=log)
    teacher = teacher.to(device)
    if teacher.num_classes not in (None, k):
        raise ValueError(f"teacher {cfg.teacher} predicts {teacher.num_classes} classes, the data has {k}")
    if cfg.train.teacher_cache:
        # the key covers how the teacher runs (its precision and layout change the logits' last bits)
        how = f"|amp={cfg.train.teacher_amp}|channels_last={teacher_cl}"
        teacher = CachedTeacher(teacher, cfg.train.teacher_cache, fingerprint + how)
    return teacher


def open_session(cfg: RunConfig, ctx: distributed.DistContext, console: Console) -> Session:
    """Seed, then build data, student, teacher, criterion, optimiser, LR schedule and scaler, in that order."""
    threads, why_threads = resolve_threads(cfg.train.threads)
    torch.set_num_threads(threads)
    seed_everything(cfg.train.seed)
    spec, size, train_ds, val_ds, workers = _data(cfg, ctx, console, threads, why_threads)
    k = spec.num_classes
    cfg = _resolved(cfg, size, k, spec.name)
    log = console.log if ctx.is_main else _quiet
    model = build_student(cfg.model, k, log=log).to(ctx.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    teacher = _teacher(cfg, k, ctx.device, log)
    steps_per_epoch = len(train_loader(cfg, train_ds, 0, ctx, workers))
    total_steps = cfg.train.epochs * steps_per_epoch
    crit = build_criterion(cfg.method, k, total_steps, spec.ignore_index, seed=cfg.train.seed).to(ctx.device)
    opt = _optimizer(cfg, model)
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        opt, build_lr_lambda(cfg.optim.lr_schedule, total_steps, warmup, cfg.optim.poly_power)
    )
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.train.amp == "fp16")
    return Session(cfg, ctx, console, spec, size, train_ds, val_ds, threads, workers, model, teacher, crit, opt,
                   lr_sched, scaler, total_steps)


def resume_session(s: Session, run: RunDir) -> None:
    """Restore ``run``'s last checkpoint into ``s`` (weights, optimiser, schedules, criterion, scaler, RNG and
    progress), after checking it was written by the same config."""
    state = load_last(run.last, run.best, map_location=s.device)
    check_resumable(state.get("config", {}), s.cfg, run.last)
    changed = check_same_data(state.get("data"), data_identity({"train": s.train_ds, "val": s.val_ds}), run.last)
    if changed and s.ctx.is_main:
        s.console.print(f"[yellow]warning:[/yellow] {escape(changed)}", highlight=False)
    s.model.load_state_dict(state["model"])
    s.opt.load_state_dict(state["optimizer"])
    s.lr_sched.load_state_dict(state["lr_scheduler"])
    s.crit.load_state_dict(state["criterion"])
    s.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    s.start_epoch, s.step = state["epoch"], state["step"]
    s.best, s.best_epoch = state["best_metric"], state["best_epoch"]
    before = state.get("env", {}).get("cpu_threads")
    if s.cfg.train.threads is None and isinstance(before, int) and before != s.threads and s.device.type == "cpu":
        torch.set_num_threads(before)  # auto: keep the run's thread count, so the resumed run is bit-identical
        s.threads = before
    if s.ctx.is_main:
        s.console.print(f"[bold]resuming[/] {escape(str(run.root))} after epoch {s.start_epoch} "
                        f"({s.threads} CPU thread(s))")

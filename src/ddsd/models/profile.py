"""Parameter, multiply-accumulate and CPU-latency profiling of segmentation networks.

MACs are measured with :class:`torch.utils.flop_counter.FlopCounterMode` on one forward pass of a
``[1, C, H, W]`` input and reported as ``MACs = FLOPs / 2`` (the counter counts a multiply-add as two
FLOPs). It counts convolutions and matrix multiplications only (conv biases, BatchNorm, activations,
pooling and interpolation are not included), which is the usual convention for reporting MACs.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Iterable, Sequence

import torch
from rich.table import Table
from rich.text import Text
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .registry import create_model, entry_point_models, get_factory, list_models

__all__ = ["count_macs", "count_parameters", "cpu_latency_ms", "default_model_names", "model_source",
           "profile_models", "render_models_table"]

DEFAULT_MODELS: tuple[str, ...] = ("simple", "unet_small", "unet_teacher", "segformer_b0")


def default_model_names(everything: bool = False) -> list[str]:
    """The built-ins, ``segformer_b0`` and every installed plug-in (``everything``: also ``segformer_b1..b5`` and
    any other registered model)."""
    extra = [n for n in list_models() if n not in DEFAULT_MODELS and (everything or not n.startswith("segformer_"))]
    return [n for n in DEFAULT_MODELS if n in list_models()] + extra + sorted(entry_point_models())


def model_source(spec: str) -> str:
    """Where a spec's factory comes from: ``built-in``, ``hf (extra)``, ``plug-in (module:attr)`` or ``user code``."""
    if ":" in spec:
        return "user code"
    if spec.strip().lower().replace("-", "_") in list_models():
        return "hf (extra)" if getattr(get_factory(spec), "source", "") == "hf" else "built-in"
    ep = entry_point_models().get(spec.strip().lower().replace("-", "_"))
    return f"plug-in ({ep.value})" if ep is not None else "?"


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _first_param(model: nn.Module) -> torch.Tensor | None:
    return next(model.parameters(), None)


def count_macs(model: nn.Module, size: Sequence[int] = (360, 480), in_channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass on a ``[1, in_channels, H, W]`` input (``size=(H, W)``).

    Uses ``FlopCounterMode`` (MACs = FLOPs / 2; convs and matmuls only). The model is run in eval mode
    under ``no_grad`` on its own device/dtype, and its train/eval mode is restored afterwards.
    """
    h, w = (int(v) for v in size)
    p = _first_param(model)
    x = torch.zeros(
        1,
        in_channels,
        h,
        w,
        device=p.device if p is not None else "cpu",
        dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32,
    )
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def cpu_latency_ms(
    model: nn.Module,
    size: Sequence[int] = (360, 480),
    batch: int = 1,
    warmup: int = 3,
    iters: int = 10,
    threads: int | None = None,
    in_channels: int = 3,
) -> float:
    """Median wall-clock latency (ms) of an eval-mode forward on CPU for a ``[batch, C, H, W]`` input.

    The model is copied to CPU if it lives elsewhere (the original is left untouched); ``threads``
    temporarily sets ``torch.set_num_threads`` (restored afterwards). Runs under ``inference_mode``.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    h, w = (int(v) for v in size)
    p = _first_param(model)
    net = model if p is None or p.device.type == "cpu" else copy.deepcopy(model).cpu()
    x = torch.randn(batch, in_channels, h, w)
    was_training = net.training
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    net.eval()
    try:
        times: list[float] = []
        with torch.inference_mode():
            for _ in range(max(0, warmup)):
                net(x)
            for _ in range(iters):
                t0 = time.perf_counter()
                net(x)
                times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        net.train(was_training)
        if threads is not None:
            torch.set_num_threads(old_threads)
    return float(statistics.median(times))


def profile_models(
    names: Iterable[str] | None = None,
    num_classes: int = 2,
    size: Sequence[int] = (360, 480),
    latency: bool = True,
    batch: int = 1,
    threads: int | None = None,
    warmup: int = 3,
    iters: int = 10,
) -> list[dict]:
    """Profile models given by spec (registered name, plug-in or ``package.module:factory``); one row per model.

    Rows: ``{"name", "source", "params": int, "macs": int, "gmacs": float, "latency_ms": float | None}``
    (``latency_ms`` is ``None`` when ``latency=False``); a model that cannot be built or run (e.g. SegFormer without
    the ``hf`` extra, or below its 32x32 minimum input) gets ``{"name", "source", "error": str}``.
    ``names=None``: :func:`default_model_names`.
    """
    rows: list[dict] = []
    for name in default_model_names() if names is None else names:
        torch.manual_seed(0)
        source = "user code" if ":" in name else model_source(name)
        try:
            model = create_model(name, num_classes).eval()
            macs = count_macs(model, size)
            lat = (cpu_latency_ms(model, size, batch=batch, warmup=warmup, iters=iters, threads=threads)
                   if latency else None)
        except (ImportError, ValueError, RuntimeError) as exc:  # e.g. no hf extra, or an input too small
            rows.append({"name": name, "source": source, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append({"name": name, "source": source, "params": count_parameters(model), "macs": macs,
                     "gmacs": macs / 1e9, "latency_ms": lat})
    return rows


def render_models_table(rows: Sequence[dict], title: str | None = None) -> Table:
    """Rich table (Model, Source, Params, GMACs, CPU latency ms) of :func:`profile_models` rows; a row that could
    not be built shows its error."""
    table = Table(title=title)
    table.add_column("Model", style="bold")
    table.add_column("Source")
    table.add_column("Params", justify="right")
    table.add_column("GMACs", justify="right")
    table.add_column("CPU latency (ms)", justify="right")
    for row in rows:
        if "error" in row:
            table.add_row(str(row["name"]), str(row.get("source", "")), "-", "-", Text(str(row["error"]), style="red"))
            continue
        lat = row.get("latency_ms")
        table.add_row(
            str(row["name"]),
            str(row.get("source", "")),
            f"{int(row['params']):,}",
            f"{float(row['gmacs']):.3f}",
            "-" if lat is None else f"{float(lat):.1f}",
        )
    return table

"""``ddsd models``: parameters, MACs and CPU latency of the registered models (mounted by ``ddsd.cli``)."""

from __future__ import annotations

import re
from typing import Annotated

import torch
import typer
from rich.console import Console

from .profile import default_model_names, profile_models, render_models_table

__all__ = ["models_command", "parse_size"]

_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX×,]\s*(\d+)\s*$")


def parse_size(value: str) -> tuple[int, int]:
    """Parse ``"HxW"`` (e.g. ``"360x480"``) or a single ``"N"`` (square) into ``(H, W)``.

    Raises ``typer.BadParameter`` naming the value when it is malformed or not positive.
    """
    text = str(value).strip()
    m = _SIZE_RE.match(text)
    if m is not None:
        h, w = int(m.group(1)), int(m.group(2))
    elif text.isdigit():
        h = w = int(text)
    else:
        raise typer.BadParameter(f"invalid size {value!r}: expected HxW, e.g. 360x480", param_hint="--size")
    if h < 1 or w < 1:
        raise typer.BadParameter(
            f"invalid size {value!r}: expected HxW with height and width >= 1", param_hint="--size"
        )
    return h, w


def models_command(
    size: Annotated[str, typer.Option(help="Input size HxW used for MACs and latency.")] = "360x480",
    num_classes: Annotated[int, typer.Option(help="Number of output classes K.", min=1)] = 2,
    latency: Annotated[bool, typer.Option(help="Measure CPU latency (batch 1, median of 10 runs).")] = True,
    threads: Annotated[
        int, typer.Option(help="CPU threads for latency; 0 keeps torch's default.", min=0)
    ] = 0,
    models: Annotated[str | None, typer.Option(
        help="comma list of model specs (registered names, plug-ins, package.module:factory) or 'all'; default: "
             "the built-ins, segformer_b0 and the installed plug-ins")] = None,
) -> None:
    """Print a table of parameters, multiply-accumulates and CPU latency for each model (source: built-in, the hf
    extra, an installed ``ddsd.models`` plug-in, or user code)."""
    h, w = parse_size(size)
    names = None if models is None else (
        default_model_names(everything=True) if models.strip() == "all"
        else [m.strip() for m in models.split(",") if m.strip()])
    rows = profile_models(names, num_classes=num_classes, size=(h, w), latency=latency, threads=threads or None)
    n_threads = threads or torch.get_num_threads()
    title = f"Models at {h}x{w}, K={num_classes}" + (
        f" (CPU latency: batch 1, {n_threads} threads)" if latency else ""
    )
    Console().print(render_models_table(rows, title=title))

"""Export a trained student to ONNX or TorchScript, checked against PyTorch on export.

Every exported artefact maps an image batch ``image [B, 3, H, W]`` (float32) to ``logits [B, K, H, W]``: models
returning a dict (``"out"``), an object with ``.logits`` (Hugging Face) or lower-resolution logits (SegFormer, 1/4)
are exported through :class:`ddsd.models.outputs.LogitsModule` (main head, bilinear upsampling to the input
size inside the graph), the rule every other verb applies.
With ``dynamic=True`` the batch, height and width axes are dynamic; otherwise the artefact is only
guaranteed for the export shape ``[1, 3, H, W]``.

Python API::

    from ddsd.export import export_checkpoint

    check = export_checkpoint("runs/exp/best.pt", "onnx", "student.onnx", size=(360, 480), dynamic=True)
    print(check.max_abs_diff, check.argmax_agreement)

Command line (mounted by ``ddsd.cli`` as ``ddsd export``)::

    ddsd export --checkpoint runs/exp/best.pt --format onnx --out student.onnx --size 360x480 --dynamic

ONNX export and checking need the optional extra ``pip install 'ddsd[export]'`` (``onnx``, ``onnxruntime``);
both are imported lazily, so the rest of ddsd (and TorchScript export) works without them.

Files are written to a temporary file in the target folder and ``os.replace``-d into place, so a failed
export never leaves a half-written file. :func:`export_checkpoint` checks the new file before it replaces
``out``: a failed check deletes the new file and leaves any previous ``out`` untouched.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from torch import nn

from ._export_common import (
    _DYNAMIC_EXTRA,
    DEFAULT_ATOL,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_OPSET,
    DEFAULT_SIZE,
    FORMATS,
    INPUT_NAME,
    OUTPUT_NAME,
    ExportCheck,
    ExportCheckError,
    ExportError,
    Format,
    _check_format,
    _check_size,
    _eval_mode,
    _model_device,
    _require_onnx,
)
from ._export_verify import verify_export
from ._io import atomic_path
from .models.cli import parse_size as parse_cli_size
from .models.loading import load_model
from .models.outputs import LogitsModule

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_SIZE",
    "ExportCheck",
    "ExportCheckError",
    "ExportError",
    "Format",
    "export_checkpoint",
    "export_command",
    "export_model",
    "load_student",
    "parse_size",
    "verify_export",
]


# ---------------------------------------------------------------------------------------------- loading


def load_student(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the student stored in a training checkpoint.

    The checkpoint is a ``torch.save``-d dict ``{"model": state_dict, "config": {"model": {"name": str,
    "num_classes": int, "kwargs": dict (optional)}, "data": {"size": [H, W] | None, ...}, ...}, ...}``
    (as written by ``ddsd.engine.checkpoint.save_checkpoint``). ``module.``/``_orig_mod.`` key prefixes
    are removed and the weights are loaded strictly. The file is unpickled with ``weights_only=False``:
    only load checkpoints you trust.

    Returns:
        ``(model, config)``: the CPU model in eval mode (``[B, 3, H, W] -> [B, K, H, W]`` logits) and the
        checkpoint's config dict.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist (the message names the path).
        ValueError: the file is not readable as a checkpoint, lacks a required key (the message names the
            file and the key), names an unknown model, or its weights do not fit the configured model.
    """
    return load_model(checkpoint)


# ---------------------------------------------------------------------------------------------- export


def _trace_or_script(model: nn.Module, example: torch.Tensor, dynamic: bool) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` the model; fall back to ``torch.jit.script`` when tracing fails or, for a dynamic
    export, when the trace does not reproduce eager outputs at another batch/spatial size."""
    trace_error: str
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, (example,), check_trace=False)
        if not dynamic:
            return traced
        b, _, h, w = example.shape
        db, dh, dw = _DYNAMIC_EXTRA
        gen = torch.Generator(device=example.device).manual_seed(0)
        probe = torch.randn(b + db, 3, h + dh, w + dw, device=example.device, generator=gen)
        ref, got = model(probe), traced(probe)
        if ref.shape == got.shape and torch.allclose(ref, got, rtol=1e-4, atol=1e-5):
            return traced
        trace_error = "the trace is specialised to the export shape"
    except Exception as exc:  # any tracing failure -> try scripting
        trace_error = f"{type(exc).__name__}: {exc}"
    try:
        scripted = torch.jit.script(model)
        scripted(example)  # a forward that fails under tracing may fail here too
        return scripted
    except Exception as exc:
        raise ExportError(
            f"TorchScript export failed: tracing ({trace_error}) and scripting ({type(exc).__name__}: {exc})"
        ) from None


def _plain(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model`` itself when it returns ``[B, K, H, W]`` logits at the input size (so it can still be scripted),
    else wrapped in :class:`LogitsModule` (dict / ``.logits`` / low-resolution outputs)."""
    try:
        with _eval_mode(model), torch.no_grad():
            out = model(example)
    except Exception:  # the exporter runs it again and reports the failure as an ExportError
        return model
    plain = isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-2:] == example.shape[-2:]
    return model if plain or isinstance(model, LogitsModule) else LogitsModule(model)


def export_model(
    model: nn.Module,
    fmt: Format,
    out: str | Path,
    size: Sequence[int] = DEFAULT_SIZE,
    dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export ``model`` (``[B, 3, H, W] -> [B, K, H, W]`` logits) to ``out``; returns ``Path(out)``.

    * ``"onnx"``: ``torch.onnx.export`` (TorchScript-based exporter, ``dynamo=False``) at opset ``opset``
      with input ``image [B, 3, H, W]`` and output ``logits [B, K, H, W]``; with ``dynamic`` the axes
      ``batch``, ``height`` and ``width`` of both are dynamic. The graph is validated with
      ``onnx.checker``. Needs the ``ddsd[export]`` extra.
    * ``"torchscript"``: ``torch.jit.trace`` (``torch.jit.script`` if tracing fails, or, with ``dynamic``,
      if the trace is shape-specialised) saved with ``torch.jit.save``.

    The example input is ``[1, 3, H, W]`` with ``(H, W) = size`` on the model's device; the model is run
    in eval mode (its train/eval flags are restored afterwards). The file is written to a temporary file
    in ``out``'s folder and moved into place with ``os.replace`` only on success.

    Raises:
        ValueError: unknown ``fmt`` or bad ``size``.
        ImportError: ONNX requested without ``onnx``/``onnxruntime`` installed.
        ExportError: the exporter failed (nothing is written).
    """
    kind = _check_format(fmt)
    size = _check_size(size)
    out = Path(out)
    onnx = _require_onnx()[0] if kind == "onnx" else None
    device = _model_device(model)
    example = torch.randn(1, 3, *size, device=device, generator=torch.Generator(device=device).manual_seed(0))
    model = _plain(model, example)
    with _eval_mode(model), torch.no_grad(), atomic_path(out, suffix=out.suffix or ".tmp") as tmp:
        if kind == "onnx":
            axes = {0: "batch", 2: "height", 3: "width"}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(
                        model,
                        (example,),
                        str(tmp),
                        dynamo=False,
                        opset_version=opset,
                        input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME],
                        dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes} if dynamic else None,
                        do_constant_folding=True,
                    )
                onnx.checker.check_model(str(tmp))
            except Exception as exc:
                raise ExportError(f"ONNX export to {out} failed: {type(exc).__name__}: {exc}") from exc
        else:
            module = _trace_or_script(model, example, dynamic)
            try:
                torch.jit.save(module, str(tmp))
            except Exception as exc:
                raise ExportError(f"saving TorchScript to {out} failed: {type(exc).__name__}: {exc}") from exc
    return out


# ---------------------------------------------------------------------------------------------- checks


def _config_size(config: Mapping[str, Any]) -> tuple[int, int]:
    """``config["data"]["size"]`` as ``(H, W)`` (an int means a square), or :data:`DEFAULT_SIZE`."""
    data = config.get("data") if isinstance(config, Mapping) else None
    size = data.get("size") if isinstance(data, Mapping) else None
    if size is None:
        return DEFAULT_SIZE
    if isinstance(size, int):
        size = (size, size)
    return _check_size(size)


def export_checkpoint(
    checkpoint: str | Path,
    fmt: Format,
    out: str | Path,
    size: Sequence[int] | None = None,
    dynamic: bool = False,
    atol: float | None = None,
    opset: int = DEFAULT_OPSET,
) -> ExportCheck:
    """Load the student in ``checkpoint`` (:func:`load_student`), export it to ``out`` and check the export.

    ``size`` defaults to the checkpoint's ``config["data"]["size"]``, or ``(360, 480)`` when that is
    missing/None; ``atol`` defaults to :data:`DEFAULT_ATOL`. The export is written and checked under a
    temporary name in ``out``'s folder and only then moved onto ``out``, so a failed export or check leaves
    no new file and does not touch an existing ``out``.

    Returns:
        the :class:`ExportCheck` (with ``path == Path(out)``).

    Raises:
        FileNotFoundError / ValueError: see :func:`load_student`; ``ValueError`` also for a bad ``fmt``/``size``.
        ImportError: ONNX without the ``ddsd[export]`` extra.
        ExportError: the exporter failed.
        ExportCheckError: the exported file does not match PyTorch (see :func:`verify_export`).
    """
    kind = _check_format(fmt)
    out = Path(out)
    model, config = load_student(checkpoint)
    hw = _check_size(size) if size is not None else _config_size(config)
    if kind == "onnx":
        _require_onnx()
    tol = DEFAULT_ATOL if atol is None else float(atol)
    staged = out
    try:  # exported and checked under a temporary name; ``out`` only ever holds a verified export
        with atomic_path(out, suffix=".unverified") as staged:
            export_model(model, kind, staged, size=hw, dynamic=dynamic, opset=opset)
            check = verify_export(model, staged, kind, size=hw, dynamic=dynamic, atol=tol)
    except ExportCheckError as exc:
        raise ExportCheckError(str(exc).replace(str(staged), str(out))) from None
    return dataclasses.replace(check, path=out)


# ------------------------------------------------------------------------------------------------- CLI


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"HxW"`` -> ``(H, W)`` with the same rules as every other ``--size`` (``None`` stays ``None``)."""
    return None if text is None else parse_cli_size(text)


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def export_command(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", "-c", help="training checkpoint (.pt) holding the student")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="output file, e.g. student.onnx or student.pt")],
    format: Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript")] = "onnx",
    size: Annotated[
        str | None,
        typer.Option(
            "--size", help="export input size HxW, e.g. 360x480; default: the checkpoint's data.size, else 360x480"
        ),
    ] = None,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="dynamic batch, height and width axes")] = False,
) -> None:
    """Export a trained student to ONNX or TorchScript and check it against PyTorch.

    The exported file is run (onnxruntime for ONNX, torch.jit.load for TorchScript) on random inputs and
    compared with the PyTorch model; the max abs logit difference and the argmax agreement are printed.
    A failed check is an error: the file is deleted and the command exits with status 1.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    fmt = format.strip().lower()
    if fmt not in FORMATS:
        raise typer.BadParameter(f"expected one of {', '.join(FORMATS)}; got {format!r}", param_hint="'--format'")
    hw = parse_size(size)
    console, err = Console(), Console(stderr=True)
    try:
        check = export_checkpoint(checkpoint, fmt, out, size=hw, dynamic=dynamic)
    except (FileNotFoundError, ValueError, ImportError, ExportError, ExportCheckError) as exc:
        err.print(f"[bold red]export failed:[/bold red] {escape(str(exc))}")
        raise typer.Exit(1) from None

    table = Table(title=f"ddsd export: {escape(str(check.path))}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("format", check.fmt)
    table.add_row("input size", f"{check.size[0]}x{check.size[1]}" + (" (dynamic batch/H/W)" if check.dynamic else ""))
    table.add_row("checked shapes", ", ".join("x".join(map(str, s)) for s in check.shapes))
    table.add_row("max abs logit difference", f"{check.max_abs_diff:.3g} (atol {check.atol:.0e})")
    table.add_row("argmax agreement", f"{check.argmax_agreement:.5f}")
    table.add_row("file size", _human_bytes(check.file_size))
    console.print(table)
    console.print(f"[green]check passed[/green]: wrote {escape(str(check.path))}")

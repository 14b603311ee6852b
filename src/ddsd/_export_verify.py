"""Checking an exported artefact against the PyTorch model (part of :mod:`ddsd.export`): run the file
(onnxruntime / ``torch.jit.load``) on random inputs and compare logits and argmax; a failed check deletes the file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._export_common import (
    DEFAULT_ATOL,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_SIZE,
    ExportCheck,
    ExportCheckError,
    Format,
    _check_format,
    _check_size,
    _eval_mode,
    _inputs,
    _model_device,
    _require_onnx,
)
from .models.outputs import to_logits

__all__ = ["verify_export"]


def _runner(path: Path, fmt: str) -> Any:
    """A callable ``np.ndarray/torch.Tensor [B, 3, H, W] -> torch.Tensor [B, K, H, W]`` running the artefact."""
    if fmt == "onnx":
        _, ort = _require_onnx()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])

        return run_onnx
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run_ts(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x.cpu())

    return run_ts


def verify_export(
    model: nn.Module,
    path: str | Path,
    fmt: Format,
    size: Sequence[int] = DEFAULT_SIZE,
    dynamic: bool = False,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> ExportCheck:
    """Run the exported file at ``path`` and compare it with ``model`` (eval mode, no grad) on random inputs.

    Inputs (``torch.randn`` seeded with ``seed``): ``[1, 3, H, W]`` at the export size and, when
    ``dynamic``, also ``[2, 3, H + 8, W + 16]``. ONNX files run in onnxruntime
    (``CPUExecutionProvider``), TorchScript files through ``torch.jit.load`` on the CPU.

    Returns:
        an :class:`ExportCheck` with the max abs logit difference and the argmax agreement over all inputs.

    Raises:
        ExportCheckError: the file cannot be loaded or run, an output shape is not ``[B, K, H, W]``,
            ``max_abs_diff > atol``, or ``argmax_agreement < min_agreement``. The file at ``path`` is
            deleted first, so a bad export is never left behind.
        ImportError: an ONNX check without ``onnxruntime`` installed (the file is kept).
    """
    kind = _check_format(fmt)
    size = _check_size(size)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported file not found: {path}")
    if kind == "onnx":
        _require_onnx()

    def fail(message: str) -> ExportCheckError:
        path.unlink(missing_ok=True)
        return ExportCheckError(f"{kind} export {path} failed the check (the file was deleted): {message}")

    device = _model_device(model)
    xs = _inputs(size, dynamic, seed)
    max_diff, agree, total = 0.0, 0, 0
    try:
        run = _runner(path, kind)
    except Exception as exc:
        raise fail(f"cannot load it ({type(exc).__name__}: {exc})") from None
    with _eval_mode(model), torch.no_grad():
        for x in xs:
            ref = to_logits(model(x.to(device)), x.shape[-2:]).float().cpu()
            try:
                got = run(x).float()
            except Exception as exc:
                raise fail(f"running it on input {tuple(x.shape)} raised {type(exc).__name__}: {exc}") from None
            if got.shape != ref.shape:
                raise fail(f"output shape {tuple(got.shape)} != PyTorch {tuple(ref.shape)} for input {tuple(x.shape)}")
            max_diff = max(max_diff, float((got - ref).abs().max()) if ref.numel() else 0.0)
            if not torch.isfinite(got).all():
                max_diff = float("inf")
            agree += int((got.argmax(1) == ref.argmax(1)).sum())
            total += ref.shape[0] * ref.shape[2] * ref.shape[3]
    agreement = agree / total if total else 1.0
    if not max_diff <= atol:
        raise fail(f"max abs logit difference {max_diff:.3g} > atol {atol:.3g} (argmax agreement {agreement:.5f})")
    if agreement < min_agreement:
        raise fail(f"argmax agreement {agreement:.5f} < {min_agreement} (max abs logit difference {max_diff:.3g})")
    return ExportCheck(
        path=path,
        fmt=kind,
        size=size,
        dynamic=bool(dynamic),
        shapes=tuple((int(x.shape[0]), int(x.shape[1]), int(x.shape[2]), int(x.shape[3])) for x in xs),
        max_abs_diff=max_diff,
        argmax_agreement=agreement,
        atol=float(atol),
        file_size=path.stat().st_size,
    )

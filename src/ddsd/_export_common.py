"""Shared pieces of :mod:`ddsd.export` and :mod:`ddsd._export_verify`: formats, defaults, errors, the check
record and small helpers (optional-extra import, argument checks, eval mode, the check inputs)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

Format = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
DEFAULT_SIZE: tuple[int, int] = (360, 480)
DEFAULT_ATOL: float = 1e-3
DEFAULT_MIN_AGREEMENT: float = 0.999
DEFAULT_OPSET: int = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
_DYNAMIC_EXTRA: tuple[int, int, int] = (1, 8, 16)  # extra (batch, height, width) for the dynamic check
_EXTRA_HINT = "install the export extra: pip install 'ddsd[export]'"


class ExportError(RuntimeError):
    """The model could not be exported (the message says why); no output file was written."""


class ExportCheckError(RuntimeError):
    """The exported artefact does not reproduce the PyTorch outputs; the bad file has been deleted."""


@dataclass(frozen=True)
class ExportCheck:
    """Result of checking an exported artefact against the PyTorch model.

    Attributes:
        path: the exported file.
        fmt: ``"onnx"`` or ``"torchscript"``.
        size: export ``(H, W)``.
        dynamic: whether batch/H/W are dynamic axes.
        shapes: input shapes ``(B, 3, H, W)`` that were checked.
        max_abs_diff: max |exported - PyTorch| over all logits of all checked inputs.
        argmax_agreement: fraction of pixels (over all checked inputs) with the same argmax class.
        atol: tolerance on ``max_abs_diff`` that was applied.
        file_size: size of the exported file in bytes.
    """

    path: Path
    fmt: str
    size: tuple[int, int]
    dynamic: bool
    shapes: tuple[tuple[int, int, int, int], ...]
    max_abs_diff: float
    argmax_agreement: float
    atol: float
    file_size: int


def _require_onnx() -> tuple[Any, Any]:
    """Import ``(onnx, onnxruntime)`` or raise ``ImportError`` telling the user to install the extra."""
    missing = []
    onnx = ort = None
    try:
        import onnx
    except ImportError:
        missing.append("onnx")
    try:
        import onnxruntime as ort
    except ImportError:
        missing.append("onnxruntime")
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}, which are not installed; {_EXTRA_HINT}")
    return onnx, ort


def _check_format(fmt: str) -> str:
    key = str(fmt).strip().lower()
    if key not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return key


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be a pair (H, W) of positive integers, got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be a pair (H, W) of positive integers, got {size!r}")
    return h, w


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its previous train/eval flags afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags.items():
            m.training = flag


def _inputs(size: tuple[int, int], dynamic: bool, seed: int) -> list[torch.Tensor]:
    """Random ``[1, 3, H, W]`` (and, if dynamic, ``[2, 3, H + 8, W + 16]``) float32 inputs."""
    h, w = size
    shapes = [(1, 3, h, w)]
    if dynamic:
        db, dh, dw = _DYNAMIC_EXTRA
        shapes.append((1 + db, 3, h + dh, w + dw))
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen) for s in shapes]

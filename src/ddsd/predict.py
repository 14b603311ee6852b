"""Masks for new images from a trained checkpoint: the Python API behind ``ddsd predict``.

Preprocessing is the training one: images are read as ``uint8 [H, W, 3]`` in their displayed orientation (EXIF
rotation applied, so masks match what a viewer shows; grey replicated to 3 channels, alpha dropped, 16-bit grey
rescaled), resized bilinearly with Pillow to the training size (the checkpoint's
``data.size``, else the dataset's default size as in ``ddsd train``; no resize when neither exists) and
normalised with the ImageNet mean/std (:func:`ddsd.data.to_tensor`); the logits are resized back bilinearly
to the image's original size (as ``ddsd eval`` does) and the argmax gives the class ids.

Files written for an input ``<stem>.<ext>`` (in ``--out``):

- ``<stem>.png``: multi-class checkpoints: the class ids as a grey (mode ``L``) PNG, values ``0..K-1``;
  binary checkpoints (K = 2): the object mask, 255 where the argmax is the positive class, 0 elsewhere.
  The positive class is the training dataset's ``positive_class`` when ``config["data"]["name"]`` resolves
  through :func:`ddsd.data.load_spec` to a dataset with the checkpoint's K classes, else 1.
- ``<stem>_prob.png`` (``--probs``): binary: the object probability ``softmax[positive_class]`` scaled to
  0-255; multi-class: the confidence of the predicted class (maximum softmax probability) scaled to 0-255.
- ``<stem>_overlay.png`` (``--overlay``): the image blended 50/50 with a colour per class (the dataset's
  ``colors`` when it has them, else a fixed palette); binary: only object pixels are tinted.

Every file is written atomically (temporary file + ``os.replace``). Errors:

- before anything is written (:class:`PredictError`): an unreadable or incomplete checkpoint, a missing
  input path, a folder without images, two inputs with the same output name (stems compared
  case-insensitively, ``_prob``/``_overlay`` names included), an output that would replace an input;
- unreadable images (:class:`UnreadableImagesError`): the readable images are all predicted and written
  first, nothing is written for the bad ones, then one error lists every bad file (the CLI exits with 2).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from PIL import Image

from ddsd._io import atomic_write_bytes
from ddsd._predictor import (
    _OBJECT_COLOUR,
    IMAGE_SUFFIXES,
    PredictError,
    Predictor,
    UnreadableImagesError,
    _palette,
)
from ddsd.data.encodings import ReadError, read_image

__all__ = [
    "IMAGE_SUFFIXES",
    "PredictError",
    "Predictor",
    "UnreadableImagesError",
    "collect_inputs",
    "load_predictor",
    "predict_command",
    "predict_paths",
]


# ---------------------------------------------------------------------------------------------- loading


def load_predictor(checkpoint: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """Rebuild the student of a ``ddsd train`` checkpoint for inference.

    Reads ``state["model"]`` (state_dict; ``module.``/``_orig_mod.`` prefixes removed),
    ``state["config"]["model"]["name"]`` and ``["num_classes"]`` (required), ``state["config"]["data"]["size"]``
    (``[H, W]`` or an int for a square) and ``state["config"]["data"]["name"]`` (optional: positive class, class
    names and colours when it resolves through :func:`ddsd.data.load_spec` to a dataset with K classes).
    When ``data.size`` is None or absent the input size is the one training used: the dataset's own ``size``
    (procedural sets: 64x64); without one either (or an unresolvable dataset) images are not resized.
    The file is loaded with ``weights_only=True``.

    Raises:
        PredictError: the file is missing or unreadable, a key is missing or malformed, the model is unknown,
            the weights do not fit it, or ``device`` is not usable (the message names the file / key).
    """
    from ddsd.models.loading import load_model

    path = Path(checkpoint)
    try:
        model, config = load_model(path)
    except (FileNotFoundError, ValueError) as e:
        raise PredictError(str(e)) from None
    k = int(config["model"]["num_classes"])
    if k < 2:
        raise PredictError(f"checkpoint {path}: config['model']['num_classes'] must be >= 2, got {k!r}")
    data_cfg = config.get("data") or {}
    if not isinstance(data_cfg, Mapping):
        raise PredictError(f"checkpoint {path}: config['data'] must be a mapping, got {type(data_cfg).__name__}")
    size = _parse_config_size(data_cfg.get("size"), path)
    dataset = data_cfg.get("name")
    try:
        dev = torch.device(device)
        model = model.to(dev).eval()
    except (RuntimeError, AssertionError, ValueError) as e:
        raise PredictError(f"device {device!r} is not usable: {e}") from None

    positive, names, colors = 1, [f"class_{i}" for i in range(k)], _palette(k)
    saved = config.get("dataset")  # written by ddsd train: no need to re-resolve the dataset
    spec = _SavedSpec.from_config(saved, data_cfg) if isinstance(saved, Mapping) else _resolve_spec(dataset, k)
    if size is None and spec is not None:  # data.size None: training used the dataset's default size
        size = tuple(spec.size) if spec.size else ((64, 64) if spec.layout == "procedural" else None)
    if spec is not None:
        positive = spec.positive_class if spec.positive_class is not None else 1
        names = list(spec.class_names)
        for c, rgb in spec.colors.items():
            colors[c] = rgb
    if k == 2 and (spec is None or positive not in spec.colors):
        colors[positive] = _OBJECT_COLOUR
    return Predictor(model=model, num_classes=k, size=size, positive_class=positive, class_names=names,
                     colors=colors, device=dev, dataset=None if dataset is None else str(dataset),
                     model_name=str(config["model"]["name"]), checkpoint=path, pad=data_cfg.get("resize") == "pad")


def _parse_config_size(size: Any, path: Path) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    ok = (isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size))
    if not ok:
        raise PredictError(f"checkpoint {path}: config['data']['size'] must be [H, W] positive ints or None, "
                           f"got {size!r}")
    return int(size[0]), int(size[1])


@dataclass
class _SavedSpec:
    """The dataset facts a checkpoint stores (``config["dataset"]``), shaped like the DatasetSpec fields used here."""

    class_names: list[str]
    positive_class: int | None
    colors: dict[int, tuple[int, int, int]]
    size: tuple[int, int] | None
    layout: str = "saved"

    @classmethod
    def from_config(cls, saved: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> _SavedSpec:
        size = data_cfg.get("size")
        return cls(class_names=list(saved.get("class_names") or []), positive_class=saved.get("positive_class"),
                   colors={int(c): tuple(v) for c, v in (saved.get("colors") or {}).items()},
                   size=tuple(size) if size else None)


def _resolve_spec(dataset: Any, k: int) -> Any:
    """The training dataset's :class:`DatasetSpec` when it resolves and has ``k`` classes, else None."""
    if not dataset:
        return None
    from ddsd.data import load_spec

    try:
        spec = load_spec(str(dataset))
    except Exception:  # any failure (moved folder, bad YAML, ...) means: use the defaults
        return None
    return spec if spec.num_classes == k else None


# ---------------------------------------------------------------------------------------------- files


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files in the given order; a folder contributes its image files (``IMAGE_SUFFIXES``, any case), sorted,
    non-recursive, hidden files skipped. Raises :class:`PredictError` listing every missing path and empty
    folder, or when there is no input at all."""
    files: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir()
                           if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{p}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            problems.append(f"{p}: no such file or folder")
    if problems:
        raise PredictError("bad inputs (nothing written)", problems)
    if not files:
        raise PredictError("no input images given")
    return files


def _plan(files: list[Path], out: Path, save_probs: bool, overlay: bool) -> list[list[Path]]:
    """Output paths of each file; raises :class:`PredictError` on name clashes or outputs replacing inputs."""
    tags = ["", *(["_prob"] if save_probs else []), *(["_overlay"] if overlay else [])]
    plan = [[out / f"{f.stem}{tag}.png" for tag in tags] for f in files]
    owner: dict[str, Path] = {}
    problems: list[str] = []
    for f, targets in zip(files, plan, strict=True):
        for t in targets:
            key = t.name.casefold()
            if key in owner and owner[key] != f:
                problems.append(f"{f} and {owner[key]} would both write {t}")
            owner.setdefault(key, f)
    resolved_inputs = {f.resolve() for f in files}
    problems += [f"{t} would overwrite an input image" for targets in plan for t in targets
                 if t.resolve() in resolved_inputs]
    if problems:
        raise PredictError("output name clash (nothing written; rename the inputs or use another --out)", problems)
    return plan


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def predict_paths(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out: str | Path,
    save_probs: bool = False,
    overlay: bool = False,
) -> list[Path]:
    """Predict every input image (files or folders, see :func:`collect_inputs`) and write the PNGs to ``out``.

    Writes ``<out>/<stem>.png`` (+ ``<stem>_prob.png`` with ``save_probs``, ``<stem>_overlay.png`` with
    ``overlay``); see the module docstring for their content. Returns the written paths in input order.

    Raises:
        PredictError: before anything is written: missing inputs, empty folders, name clashes, ``out`` is a
            file.
        UnreadableImagesError: after every readable image was written: the images that could not be read or
            predicted (nothing written for them); ``.written`` holds the paths written.
    """
    out = Path(out)
    files = collect_inputs(inputs)
    if out.exists() and not out.is_dir():
        raise PredictError(f"--out {out} exists and is not a folder")
    plan = _plan(files, out, save_probs, overlay)
    written: list[Path] = []
    problems: list[str] = []
    done = 0
    for f, targets in zip(files, plan, strict=True):
        try:
            image = read_image(f)
        except ReadError as e:
            problems.append(str(e))
            continue
        try:
            ids, probs = predictor.predict(image)
        except RuntimeError as e:
            problems.append(f"{f}: prediction failed ({type(e).__name__}: {e})")
            continue
        arrays = [predictor.mask_png(ids)]
        if save_probs:
            arrays.append(predictor.prob_png(ids, probs))
        if overlay:
            arrays.append(predictor.overlay(image, ids))
        for target, array in zip(targets, arrays, strict=True):
            atomic_write_bytes(target, _png(array))
            written.append(target)
        done += 1
    if problems:
        raise UnreadableImagesError(problems, written, done)
    return written


# ---------------------------------------------------------------------------------------------- CLI


def predict_command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="a checkpoint written by ddsd train")],
    inputs: Annotated[
        list[Path],
        typer.Argument(help="image files and/or folders (their .png/.jpg/.jpeg/.bmp/.tif files, not recursive)",
                       show_default=False, metavar="INPUT"),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the masks (<stem>.png), created if needed")],
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N | mps")] = "cpu",
    probs: Annotated[
        bool, typer.Option("--probs", help="also write <stem>_prob.png: object probability (binary) or "
                           "confidence (multi-class), 0-255")
    ] = False,
    overlay: Annotated[
        bool, typer.Option("--overlay", help="also write <stem>_overlay.png: the image tinted per class")
    ] = False,
) -> None:
    """Predict masks for images with a trained checkpoint.

    Writes <stem>.png per image: class ids 0..K-1, or for binary checkpoints a 0/255 mask of the object class.

    Images are preprocessed as in training; masks have each image's own size.

    Bad inputs, clashing names or a bad checkpoint stop before anything is written (exit 2).

    Unreadable images are reported together after the readable ones are written (exit 2).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console, err = Console(), Console(stderr=True)
    try:
        predictor = load_predictor(checkpoint, device)
        written = predict_paths(predictor, inputs, out, save_probs=probs, overlay=overlay)
        failure: UnreadableImagesError | None = None
        done = len(written) // (1 + probs + overlay)
    except UnreadableImagesError as e:
        failure, written, done = e, e.written, e.done
    except PredictError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None

    table = Table(title="ddsd predict", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    kind = f"binary (0/255 mask of class {predictor.positive_class})" if predictor.is_binary else "class ids"
    table.add_row("checkpoint", escape(str(checkpoint)))
    table.add_row("model", f"{predictor.model_name}, {predictor.num_classes} classes, {kind}")
    table.add_row("input size", "original" if predictor.size is None else f"{predictor.size[0]}x{predictor.size[1]}")
    table.add_row("images", f"{done} predicted" + (f", {len(failure.errors)} failed" if failure else ""))
    table.add_row("output", f"{escape(str(out))} ({len(written)} files)")
    console.print(table)
    if failure is not None:
        err.print(f"[bold red]error:[/] {escape(str(failure))}", soft_wrap=True)
        raise typer.Exit(2)

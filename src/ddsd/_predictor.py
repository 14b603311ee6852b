"""The predictor of :mod:`ddsd.predict`: a loaded student with its preprocessing and output rules, the
palette and the errors (``ddsd.predict`` re-exports them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ddsd.data.errors import format_errors
from ddsd.data.sizing import fit, fit_box
from ddsd.data.transforms import to_tensor
from ddsd.models.outputs import to_logits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
OVERLAY_ALPHA = 0.5
_OBJECT_COLOUR = (255, 0, 0)  # binary overlay colour when the dataset defines none


class PredictError(ValueError):
    """Bad checkpoint or inputs; ``errors`` lists every problem (each naming the file or key)."""

    def __init__(self, heading: str, errors: Sequence[str] = ()) -> None:
        self.heading = heading
        self.errors: list[str] = list(errors)
        super().__init__(format_errors(heading, self.errors))


class UnreadableImagesError(PredictError):
    """Some inputs could not be read or predicted; the others were written (``written``)."""

    def __init__(self, errors: Sequence[str], written: Sequence[Path], done: int) -> None:
        super().__init__(f"{len(errors)} input(s) could not be predicted (nothing written for them)", errors)
        self.written: list[Path] = list(written)
        self.done = done


def _palette(k: int) -> np.ndarray:
    """The PASCAL VOC colour map: ``uint8 [k, 3]``, class 0 black, then distinct colours."""
    out = np.zeros((k, 3), dtype=np.uint8)
    for i in range(k):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


@dataclass
class Predictor:
    """A trained student ready for inference.

    ``model`` maps ``[1, 3, h, w]`` normalised images to ``[1, K, h, w]`` logits; ``size`` is the ``(H, W)``
    images are resized to first (None: the image's own size); ``colors`` is ``uint8 [K, 3]``.
    """

    model: nn.Module
    num_classes: int
    size: tuple[int, int] | None
    positive_class: int = 1
    class_names: list[str] = field(default_factory=list)
    colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.uint8))
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dataset: str | None = None
    model_name: str = ""
    checkpoint: Path | None = None
    pad: bool = False  # data.resize=pad: keep the aspect and pad to ``size`` (as in training)

    @property
    def is_binary(self) -> bool:
        """True for K = 2 (masks are written as 0/255 object masks)."""
        return self.num_classes == 2

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Segment one image.

        Args:
            image: ``uint8 [H, W, 3]`` RGB, or ``uint8 [H, W]`` grey (replicated to 3 channels);
                ``[H, W, 1]`` and ``[H, W, 4]`` (alpha dropped) are accepted too.

        Returns:
            ``(ids, probs)``: class ids ``uint8 [H, W]`` (argmax) and softmax probabilities
            ``float32 [K, H, W]``, both at the input's size.
        """
        rgb = _as_rgb(image)
        h, w = rgb.shape[:2]
        box = None
        if self.size is not None and (h, w) != tuple(self.size):
            rgb = np.asarray(fit(Image.fromarray(rgb), self.size, self.pad), dtype=np.uint8)
            box = fit_box((h, w), self.size, self.pad)
        x = to_tensor(rgb)[None].to(self.device)
        # any output convention (ddsd.models.outputs), upsampled to the input before the padding is cropped
        logits = to_logits(self.model(x), tuple(x.shape[-2:])).float()  # [1, K, h', w']
        if box is not None and self.pad:
            top, left, bh, bw = box
            logits = logits[..., top : top + bh, left : left + bw]
        if tuple(logits.shape[-2:]) != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        ids = logits[0].argmax(0).to(torch.uint8)
        probs = torch.softmax(logits[0], dim=0)
        return ids.cpu().numpy(), probs.cpu().numpy().astype(np.float32, copy=False)

    def mask_png(self, ids: np.ndarray) -> np.ndarray:
        """What ``<stem>.png`` holds: ``uint8 [H, W]``; binary: 0/255 object mask, else the class ids."""
        if self.is_binary:
            return np.where(ids == self.positive_class, 255, 0).astype(np.uint8)
        return ids.astype(np.uint8, copy=False)

    def prob_png(self, ids: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """What ``<stem>_prob.png`` holds: ``uint8 [H, W]``, object probability (binary) or confidence x 255."""
        p = probs[self.positive_class] if self.is_binary else probs.max(axis=0)
        return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)

    def overlay(self, image: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The image ``[H, W(, 3)]`` blended with the class colours: ``uint8 [H, W, 3]``."""
        rgb = _as_rgb(image).astype(np.float32)
        colour = self.colors[ids].astype(np.float32)
        tint = (ids == self.positive_class) if self.is_binary else np.ones(ids.shape, dtype=bool)
        blended = np.where(tint[..., None], (1 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * colour, rgb)
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"expected an image of shape [H, W, 3] or [H, W], got {list(np.shape(image))}")
    return np.ascontiguousarray(a)

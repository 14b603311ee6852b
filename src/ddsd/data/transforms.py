"""Tensor conversion, ImageNet normalisation and seeded training augmentation.

Augmentation = random scale in ``[0.75, 1.25]`` + crop (or pad) back to the input size, and a horizontal
flip with probability 0.5, done with one Pillow resize per array on the ``uint8`` data (bilinear for the
image, nearest for the mask; a crop is a resize of a source box). Padding is the ImageNet mean colour in
the image (0 after normalisation) and 255 (void) in the mask. The random draw comes only from
``numpy.random.default_rng([seed, epoch, index])``: reproducible, independent of global RNG state and of
the DataLoader worker that serves the sample. Normalisation is a lookup table in NumPy (no torch intra-op
threads in data loading).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ddsd.data.spec import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN_255 = np.array(IMAGENET_MEAN, dtype=np.float32) * 255.0
_STD_255 = np.array(IMAGENET_STD, dtype=np.float32) * 255.0
# LUT[v, c] = (v - mean_c) / std_c for every uint8 value v
_LUT = ((np.arange(256, dtype=np.float32)[:, None] - _MEAN_255) / _STD_255).T.copy()  # [3, 256]
_FILL = tuple(round(float(v)) for v in _MEAN_255)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> normalised ``float32 [3, H, W]`` (ImageNet mean/std)."""
    out = np.empty((3, *image.shape[:2]), dtype=np.float32)
    for c in range(3):
        np.take(_LUT[c], image[..., c], out=out[c])
    return torch.from_numpy(out)


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_tensor`: ``[..., 3, H, W]`` -> ``uint8`` values in ``[0, 255]``."""
    mean = torch.from_numpy(_MEAN_255).view(3, 1, 1).to(image)
    std = torch.from_numpy(_STD_255).view(3, 1, 1).to(image)
    return (image * std + mean).round().clamp(0, 255).to(torch.uint8)


def mask_to_tensor(ids: np.ndarray) -> torch.Tensor:
    """``uint8 [H, W]`` class ids -> ``int64 [H, W]``."""
    return torch.from_numpy(ids.astype(np.int64))


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` in ``epoch``."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, index])


def augment(
    image: np.ndarray, ids: np.ndarray, rng: np.random.Generator,
    scale: tuple[float, float] = (0.75, 1.25), flip: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Random scale + crop/pad to the same size + horizontal flip.

    ``image``: ``uint8 [H, W, 3]``, ``ids``: ``uint8 [H, W]`` (void 255); returns arrays of the same shapes.
    """
    h, w = ids.shape
    s = float(rng.uniform(*scale))
    do_flip = bool(flip and rng.random() < 0.5)
    img = Image.fromarray(np.ascontiguousarray(image))
    msk = Image.fromarray(np.ascontiguousarray(ids))
    if s >= 1.0:
        # crop: an (h, w) window at a uniform offset of the image scaled by s = a (h/s, w/s) source box
        oy, ox = float(rng.uniform(0, s * h - h)), float(rng.uniform(0, s * w - w))
        box = (ox / s, oy / s, min(w, (ox + w) / s), min(h, (oy + h) / s))
        img = img.resize((w, h), Image.Resampling.BILINEAR, box=box)
        msk = msk.resize((w, h), Image.Resampling.NEAREST, box=box)
    else:
        # pad: the scaled image at a uniform offset on a canvas of mean colour / void
        sh, sw = max(1, round(s * h)), max(1, round(s * w))
        py, px = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
        canvas_img = Image.new("RGB", (w, h), _FILL)
        canvas_img.paste(img.resize((sw, sh), Image.Resampling.BILINEAR), (px, py))
        canvas_msk = Image.new("L", (w, h), IGNORE_INDEX)
        canvas_msk.paste(msk.resize((sw, sh), Image.Resampling.NEAREST), (px, py))
        img, msk = canvas_img, canvas_msk
    if do_flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        msk = msk.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(img), np.asarray(msk)

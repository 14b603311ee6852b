"""The training size of a dataset and how images are brought to it (``data.resize``).

Policies (``data.resize``):

- ``auto`` (default): the size is ``data.size``, else the dataset's own ``size``, else one chosen from the
  training images (:func:`pick_size`); every image is resized to it (aspect not kept).
- ``fixed``: as ``auto``, but a size must be given (``data.size`` or the dataset's ``size``); nothing is chosen.
- ``pad``: the size is found as for ``auto``; each image is scaled to fit inside it with its aspect kept and
  centred on a canvas of the ImageNet mean colour (0 after normalisation), its mask padded with void (255).

Metrics are always computed at each mask's original resolution: the prediction is cropped to the image's box
(``pad``) and resized back.

Chosen size (:func:`pick_size`): when every training image has one size whose longer side is at most
``MAX_SIDE``, that size; otherwise the median image area and the median aspect ratio (W / H, EXIF rotation
applied) give (H, W), scaled down so that the longer side is at most ``MAX_SIDE``, each side rounded to a
multiple of ``MULTIPLE`` (at least ``MULTIPLE``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from ddsd.data.encodings import ReadError, Size, displayed_size
from ddsd.data.errors import DataError, ErrorCollector
from ddsd.data.spec import IGNORE_INDEX, DatasetSpec

Resize = Literal["auto", "fixed", "pad"]
RESIZE_POLICIES = ("auto", "fixed", "pad")
MAX_SIDE = 512
MULTIPLE = 32
IMAGE_FILL = (124, 116, 104)  # the ImageNet mean colour, 0 after normalisation


@dataclass(frozen=True)
class SizeChoice:
    """The training size ``(H, W)`` and where it came from (one line, for the log)."""

    size: Size
    reason: str
    picked: bool = False  # chosen from the images (not given by the config or the dataset)


def _round(v: float, multiple: int) -> int:
    return max(multiple, round(v / multiple) * multiple)


def pick_size(sizes: Sequence[Size], max_side: int = MAX_SIDE, multiple: int = MULTIPLE) -> tuple[Size, str]:
    """The training size for images of ``sizes`` ((H, W) each) and why, as one sentence (see module doc)."""
    if not sizes:
        raise DataError("cannot choose a training size: no training images")
    counts = Counter(sizes)
    (h0, w0), n0 = counts.most_common(1)[0]
    if len(counts) == 1 and max(h0, w0) <= max_side:
        return (h0, w0), f"all {n0} training images are {w0}x{h0} (WxH): kept"
    areas = sorted(h * w for h, w in sizes)
    aspects = sorted(w / h for h, w in sizes)
    area, aspect = _median(areas), _median(aspects)
    h, w = math.sqrt(area / aspect), math.sqrt(area * aspect)
    scale = min(1.0, max_side / max(h, w))
    size = (_round(h * scale, multiple), _round(w * scale, multiple))
    if max(size) > max_side:  # rounding up past the cap
        size = tuple(min(s, max_side // multiple * multiple) for s in size)  # type: ignore[assignment]
    what = f"{len(sizes)} training images of {len(counts)} sizes" if len(counts) > 1 else \
        f"all {n0} training images are {w0}x{h0} (WxH)"
    return size, (f"{what}: median area {math.sqrt(area):.0f}^2 px, median aspect W/H {aspect:.2f} -> "
                  f"{size[0]}x{size[1]} (HxW; multiple of {multiple}, longer side <= {max_side})")


def _median(values: list[float]) -> float:
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def training_sizes(spec: DatasetSpec, split: str = "train") -> list[Size]:
    """(H, W) as displayed of every image of ``split`` (headers only); :class:`DataError` on problems."""
    from ddsd.data.layouts import resolve_split

    errors = ErrorCollector()
    samples = resolve_split(spec, split, errors)
    sizes = []
    for s in samples:
        try:
            sizes.append(displayed_size(s.image))
        except ReadError as e:
            errors.add(str(e))
    errors.raise_if_any(f"dataset '{spec.name}' split '{split}'")
    return sizes


def resolve_size(spec: DatasetSpec, size: Sequence[int] | None, resize: str = "auto",
                 split: str = "train") -> SizeChoice:
    """The size training uses for ``spec`` under policy ``resize`` (``size``: ``data.size`` or None)."""
    if resize not in RESIZE_POLICIES:
        raise DataError(f"data.resize must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")
    if size is not None:
        return SizeChoice((int(size[0]), int(size[1])), "data.size")
    if spec.size is not None:
        return SizeChoice(tuple(spec.size), f"the size of dataset '{spec.name}'")  # type: ignore[arg-type]
    if spec.layout == "procedural":
        return SizeChoice((64, 64), "the procedural set's default")
    if resize == "fixed":
        raise DataError(f"data.resize=fixed needs a size: set data.size [H, W] (or --size HxW); dataset "
                        f"'{spec.name}' has none (or use data.resize=auto to choose one from the images)")
    chosen, why = pick_size(training_sizes(spec, split))
    return SizeChoice(chosen, f"chosen from the data: {why}; set data.size to choose another", picked=True)


def fit_box(original: Size, size: Size, pad: bool) -> tuple[int, int, int, int]:
    """``(top, left, h, w)``: where an image of ``original`` (H0, W0) lands in a ``size`` (H, W) frame
    (``pad``: scaled by min(H/H0, W/W0), centred; else the whole frame)."""
    if not pad:
        return 0, 0, size[0], size[1]
    s = min(size[0] / original[0], size[1] / original[1])
    h, w = max(1, min(size[0], round(original[0] * s))), max(1, min(size[1], round(original[1] * s)))
    return (size[0] - h) // 2, (size[1] - w) // 2, h, w


def fit(img: Image.Image, size: Size, pad: bool, mask: bool = False) -> Image.Image:
    """``img`` brought to ``size`` (H, W): resized (bilinear; masks nearest), and with ``pad`` placed in its
    :func:`fit_box` on a canvas of the mean colour (masks: void 255)."""
    top, left, h, w = fit_box((img.size[1], img.size[0]), size, pad)
    method = Image.Resampling.NEAREST if mask else Image.Resampling.BILINEAR
    if img.size != (w, h):
        img = img.resize((w, h), method)
    if (h, w) == tuple(size):
        return img
    canvas = Image.new(img.mode, (size[1], size[0]), IGNORE_INDEX if mask else IMAGE_FILL)
    canvas.paste(img, (left, top))
    return canvas

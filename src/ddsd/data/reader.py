"""Decoding whole image/mask pairs, one at a time or many in a thread pool.

Pillow releases the GIL while decoding, so a few threads speed up a first pass over a dataset
(validation, cache build) without extra processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from PIL import Image

from ddsd.data.encodings import (
    ReadError,
    decode_mask,
    exif_orientation,
    open_image,
    read_mask_array,
    resize_ids,
    to_rgb,
)
from ddsd.data.layouts import Sample
from ddsd.data.sizing import fit
from ddsd.data.spec import DatasetSpec

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class LoadedPair:
    """One decoded sample.

    ``image``: ``uint8 [H, W, 3]`` and ``ids``: ``uint8 [H, W]`` (void 255), resized to the requested size
    (None when the pair is unusable); ``original_size``: the mask file's (H0, W0); ``errors``: problems
    (each naming the file); ``inbetween``: binary-mask pixels with values strictly between 0 and 255.
    """

    sample: Sample
    image: np.ndarray | None
    ids: np.ndarray | None
    original_size: tuple[int, int] | None
    errors: list[str] = field(default_factory=list)
    inbetween: int = 0


def load_pair(sample: Sample, spec: DatasetSpec, size: tuple[int, int] | None = None,
              pad: bool = False) -> LoadedPair:
    """Read, check and decode one pair; images resized bilinearly, masks nearest, to ``size`` = (H, W)
    (``pad``: aspect kept, padded; see :func:`ddsd.data.sizing.fit`)."""
    errors: list[str] = []
    img = raw = None
    try:
        img = to_rgb(open_image(sample.image))
    except ReadError as e:
        errors.append(str(e))
    try:
        raw = read_mask_array(sample.mask, spec.encoding)
    except ReadError as e:
        errors.append(str(e))
    if img is None or raw is None:
        return LoadedPair(sample, None, None, None, errors)
    h0, w0 = raw.shape[:2]
    if img.size != (w0, h0):
        turned = exif_orientation(sample.image) in (5, 6, 7, 8)
        exif = (" after applying its EXIF rotation (stored as "
                f"{img.size[1]}x{img.size[0]}; the mask must be drawn on the image as displayed)") if turned else ""
        errors.append(f"{sample.image}: image is {img.size[0]}x{img.size[1]} (WxH){exif} but its mask "
                      f"{sample.mask} is {w0}x{h0}")
    dec = decode_mask(raw, spec, sample.mask)
    errors += dec.errors
    if errors:
        return LoadedPair(sample, None, None, (h0, w0), errors, dec.inbetween)
    ids = dec.ids
    if size is not None and (h0, w0) != tuple(size):
        img = fit(img, size, pad)
        ids = np.asarray(fit(Image.fromarray(ids), size, pad, mask=True)) if pad else resize_ids(ids, size)
    return LoadedPair(sample, np.asarray(img, dtype=np.uint8), ids, (h0, w0), [], dec.inbetween)


def default_workers() -> int:
    """Threads for decoding passes: ``DDSD_DATA_THREADS`` or min(4, CPU count)."""
    env = os.environ.get("DDSD_DATA_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(4, os.cpu_count() or 1))


def thread_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` in order, over ``workers`` threads (1: plain loop)."""
    workers = default_workers() if workers is None else workers
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items)

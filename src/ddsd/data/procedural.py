"""The built-in procedural dataset: no files, deterministic by seed, with hard pixels.

Each image has a textured background (class 0), one large region (ellipse or rotated rectangle, class 1),
3-6 small blobs of a few pixels (class 3, about half touching the large region) and thin structures drawn
on top: 1-3 line segments and 1-2 rings 1-2 px wide (class 2). Thin structures and blobs share one colour
family, so shape, not colour alone, tells them apart; their pixels and all region boundaries are the hard
pixels. The binary variant (K = 2) labels region, blobs and thin structures as the object (class 1).
Sample ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed, crc32(s), i])``.
"""

from __future__ import annotations

import zlib

import numpy as np

from ddsd.data.errors import DataError
from ddsd.data.spec import DatasetSpec

BACKGROUND, REGION, THIN, BLOB = 0, 1, 2, 3


def _segment_distance(yy: np.ndarray, xx: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Distance of pixel centres to the segment p-q (points as (y, x))."""
    d = q - p
    t = ((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / max(float(d @ d), 1e-9)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(yy - (p[0] + t * d[0]), xx - (p[1] + t * d[1]))


def generate_sample(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One procedural pair: image ``uint8 [H, W, 3]`` and 4-class mask ``uint8 [H, W]``."""
    h, w = size
    s = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    mask = np.zeros((h, w), dtype=np.uint8)

    # background: colour gradient plus low-frequency texture
    base = rng.uniform(70, 150, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * yy + np.sin(angle) * xx) / s - 0.5
    img = base + ramp[..., None] * rng.uniform(-40, 40, 3)
    for _ in range(2):
        f = rng.uniform(1.0, 3.0) * 2 * np.pi / s
        phase = rng.uniform(0, 2 * np.pi, 2)
        img += (rng.uniform(4, 10) * np.sin(f * yy + phase[0]) * np.cos(f * xx + phase[1]))[..., None]

    # large region: an ellipse or a rotated rectangle covering roughly 10-35 % of the image
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ay, ax = rng.uniform(0.18, 0.33) * h, rng.uniform(0.18, 0.33) * w
    theta = rng.uniform(0, np.pi)
    u = (yy - cy) * np.cos(theta) + (xx - cx) * np.sin(theta)
    v = -(yy - cy) * np.sin(theta) + (xx - cx) * np.cos(theta)
    if rng.random() < 0.5:
        region = (u / ay) ** 2 + (v / ax) ** 2 <= 1.0
    else:
        region = (np.abs(u) <= ay) & (np.abs(v) <= ax * 0.8)
    direction = rng.normal(size=3)
    region_colour = base + 55 * direction / np.linalg.norm(direction)
    img[region] = region_colour + rng.normal(0, 6, 3) * ramp[region][:, None]
    mask[region] = REGION

    # thin structures and blobs share a colour family that contrasts with the background
    fg = np.where(base > 110, rng.uniform(15, 55, 3), rng.uniform(190, 245, 3))

    # small blobs: radius 1.2-3 px (scaled with the image), about half next to the region
    ry, rx = np.nonzero(region)
    for _ in range(int(rng.integers(3, 7))):
        r = rng.uniform(1.2, 3.0) * max(1.0, s / 64)
        if ry.size and rng.random() < 0.5:
            j = int(rng.integers(ry.size))
            by, bx = ry[j] + rng.normal(0, r + 2), rx[j] + rng.normal(0, r + 2)
        else:
            by, bx = rng.uniform(0, h), rng.uniform(0, w)
        disc = np.hypot(yy - by, xx - bx) <= r
        img[disc] = fg + rng.normal(0, 12, 3)
        mask[disc] = BLOB

    # thin structures on top: line segments and rings, 1-2 px wide at any image size
    thin = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        p = rng.uniform(0, 1, 2) * (h, w)
        q = rng.uniform(0, 1, 2) * (h, w)
        thin |= _segment_distance(yy, xx, p, q) <= rng.uniform(0.55, 1.05)
    for _ in range(int(rng.integers(1, 3))):
        rr = rng.uniform(0.08, 0.22) * s
        oy, ox = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        thin |= np.abs(np.hypot(yy - oy, xx - ox) - rr) <= rng.uniform(0.55, 1.05)
    img[thin] = fg + rng.normal(0, 12, 3)
    mask[thin] = THIN

    img += rng.normal(0, 7, img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), mask


def split_length(spec: DatasetSpec, split: str) -> int:
    """Number of samples of ``split`` (``spec.counts``); unknown split names are an error."""
    if split not in spec.counts:
        raise DataError(f"procedural dataset '{spec.name}' has no split '{split}' "
                        f"(splits: {', '.join(spec.counts)})")
    return spec.counts[split]


def generate_split(spec: DatasetSpec, split: str, size: tuple[int, int] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """All samples of ``split``: images ``uint8 [N, H, W, 3]``, masks ``uint8 [N, H, W]`` (K classes)."""
    size = tuple(size or spec.size or (64, 64))
    n = split_length(spec, split)
    images = np.empty((n, *size, 3), dtype=np.uint8)
    masks = np.empty((n, *size), dtype=np.uint8)
    code = zlib.crc32(split.encode())
    for i in range(n):
        img, m = generate_sample(np.random.default_rng([spec.seed, code, i]), size)
        images[i] = img
        masks[i] = (m > 0).astype(np.uint8) if spec.num_classes == 2 else m
    return images, masks

"""Tiny on-disk datasets for the data tests (written into a temp dir by each test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0, 0, 0] * 251 + [224, 224, 192]
RGB_COLORS = {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 255, 0)}


def rand_image(rng: np.random.Generator, h: int, w: int, grey: bool = False) -> np.ndarray:
    shape = (h, w) if grey else (h, w, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def index_mask(rng: np.random.Generator, h: int, w: int, k: int, void: int | None = None) -> np.ndarray:
    """Class ids in 0..k-1 with a void band in the last row when ``void`` is given."""
    m = rng.integers(0, k, (h, w), dtype=np.uint8)
    m[0, 0] = k - 1  # every class value occurs somewhere across files
    if void is not None:
        m[-1, :] = void
    return m


def save(arr: np.ndarray, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def write_split(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{x}\n" for x in lines))


def make_folder_binary(root: Path, n: dict[str, int] | None = None, h: int = 12, w: int = 16,
                       grey_images: bool = False, seed: int = 0) -> Path:
    """``images/*.jpg|png masks/*.png train.txt ...`` with 0/255 masks (object = a rectangle)."""
    rng = np.random.default_rng(seed)
    n = n or {"train": 4, "val": 2, "test": 2}
    for split, count in n.items():
        stems = []
        for i in range(count):
            stem = f"{split}{i:02d}"
            stems.append(stem)
            ext = ".png" if grey_images else ".jpg"
            save(rand_image(rng, h, w, grey_images), root / "images" / f"{stem}{ext}")
            m = np.zeros((h, w), np.uint8)
            m[2:2 + 3 + i % 3, 3:10] = 255
            save(m, root / "masks" / f"{stem}.png")
        write_split(root / f"{split}.txt", stems)
    return root


def make_camvid(root: Path, n: dict[str, int] | None = None, h: int = 10, w: int = 14, k: int = 4,
                void: int = 4, pair_lists: bool = True) -> Path:
    """SegNet layout with class-index masks 0..k-1 and void value ``void``."""
    rng = np.random.default_rng(1)
    n = n or {"train": 3, "val": 2, "test": 2}
    for split, count in n.items():
        lines = []
        for i in range(count):
            stem = f"seq_{split}_{i:03d}"
            save(rand_image(rng, h, w), root / split / f"{stem}.png")
            save(index_mask(rng, h, w, k, void), root / f"{split}annot" / f"{stem}.png")
            lines.append(f"{split}/{stem}.png {split}annot/{stem}.png")
        if pair_lists:
            write_split(root / f"{split}.txt", lines)
    return root


def make_voc(root: Path, h: int = 10, w: int = 12) -> Path:
    """VOC layout: palette masks with classes 0..3 and void 255 borders; only some images have masks."""
    rng = np.random.default_rng(2)
    for split, stems in {"train": ["2007_000001", "2007_000002", "2007_000003"],
                         "val": ["2008_000001", "2008_000002"]}.items():
        for stem in stems:
            save(rand_image(rng, h, w), root / "JPEGImages" / f"{stem}.jpg")
            m = index_mask(rng, h, w, 4, 255)
            p = Image.fromarray(m).convert("P")  # the grey palette keeps the values as indices
            p.putpalette(VOC_PALETTE)
            (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
            p.save(root / "SegmentationClass" / f"{stem}.png")
        write_split(root / "ImageSets" / "Segmentation" / f"{split}.txt", stems)
    save(rand_image(rng, h, w), root / "JPEGImages" / "2009_000001.jpg")  # image without mask, unlisted
    return root


def make_rgb(root: Path, h: int = 8, w: int = 10, void_color: tuple[int, int, int] | None = (255, 255, 255)
             ) -> Path:
    """Folder layout with RGB colour masks (colours ``RGB_COLORS`` + optional void colour)."""
    rng = np.random.default_rng(3)
    for split, count in {"train": 3, "val": 1}.items():
        stems = []
        for i in range(count):
            stem = f"{split}_{i}"
            stems.append(stem)
            save(rand_image(rng, h, w), root / "images" / f"{stem}.png")
            ids = index_mask(rng, h, w, 3)
            rgb = np.zeros((h, w, 3), np.uint8)
            for c, col in RGB_COLORS.items():
                rgb[ids == c] = col
            if void_color is not None:
                rgb[-1, :] = void_color
            save(rgb, root / "masks" / f"{stem}.png")
        write_split(root / f"{split}.txt", stems)
    return root

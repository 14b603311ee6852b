"""On-disk cache of resized, decoded splits.

One folder per (dataset, split, size, key) holding ``images.npy`` (``uint8 [N, H, W, 3]``), ``masks.npy``
(``uint8 [N, H, W]``, class ids, void 255) and ``meta.json``. The key hashes every source file's path,
byte size and mtime (ns) together with everything that changes the decoded arrays (size, encoding, void,
colours, threshold, classes), so a changed file or parameter selects a new folder. Files are written to
temporary names and moved into place with ``os.replace``; ``meta.json`` goes last and marks the entry
complete. An unreadable entry is rebuilt with a warning. Only data that passed validation is cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ddsd._io import atomic_write, atomic_write_bytes
from ddsd.data.layouts import Sample
from ddsd.data.spec import DatasetSpec

CACHE_VERSION = 2  # 2: binary masks thresholded as value > threshold (pysodmetrics)


def default_cache_dir() -> Path:
    """``$DDSD_CACHE`` or ``~/.cache/ddsd``."""
    env = os.environ.get("DDSD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddsd"


def cache_key(spec: DatasetSpec, split: str, samples: Sequence[Sample], size: tuple[int, int],
              pad: bool = False) -> str:
    """Hex digest identifying the decoded arrays of ``samples`` at ``size``; stats every source file."""
    h = hashlib.sha256()
    params = {
        "version": CACHE_VERSION,
        "split": split,
        "size": list(size),
        "pad": pad,
        "encoding": spec.encoding,
        "void_value": spec.void_value,
        "colors": {str(k): list(v) for k, v in sorted(spec.colors.items())},
        "void_colors": [list(c) for c in spec.void_colors],
        "threshold": spec.binary_threshold,
        "classes": spec.class_names,
    }
    h.update(json.dumps(params, sort_keys=True).encode())
    for s in samples:
        for p in (s.image, s.mask):
            st = p.stat()
            h.update(f"\0{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


class SplitCache:
    """The cache entry of one split at one size."""

    def __init__(self, cache_dir: Path, name: str, split: str, size: tuple[int, int], key: str) -> None:
        self.prefix = f"{_safe(name)}-{_safe(split)}-{size[0]}x{size[1]}-"
        self.dir = Path(cache_dir) / f"{self.prefix}{key[:20]}"
        self.key = key
        self.size = size

    @property
    def images_path(self) -> Path:
        return self.dir / "images.npy"

    @property
    def masks_path(self) -> Path:
        return self.dir / "masks.npy"

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def load(self) -> dict | None:
        """The entry's metadata if it is complete and readable, else None (a bad entry is removed)."""
        if not self.meta_path.exists():
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
            if meta.get("key") != self.key:
                raise ValueError("key mismatch")
            n, (h, w) = meta["count"], self.size
            imgs = np.load(self.images_path, mmap_mode="r")
            masks = np.load(self.masks_path, mmap_mode="r")
            if imgs.shape != (n, h, w, 3) or masks.shape != (n, h, w) or imgs.dtype != np.uint8 \
                    or masks.dtype != np.uint8:
                raise ValueError(f"unexpected shapes {imgs.shape} / {masks.shape}")
            del imgs, masks
        except Exception as e:
            warnings.warn(f"unreadable data cache {self.dir} ({type(e).__name__}: {e}); rebuilding it",
                          RuntimeWarning, stacklevel=3)
            shutil.rmtree(self.dir, ignore_errors=True)
            return None
        return meta

    def save(self, images: np.ndarray, masks: np.ndarray, meta: dict) -> None:
        """Write the arrays and then ``meta.json``, each atomically; drop older entries of this prefix."""
        for arr, path in ((images, self.images_path), (masks, self.masks_path)):
            atomic_write(path, lambda f, a=arr: np.save(f, np.ascontiguousarray(a)))
        meta = {**meta, "key": self.key, "count": int(images.shape[0])}
        atomic_write_bytes(self.meta_path, json.dumps(meta).encode())
        for old in self.dir.parent.glob(self.prefix + "*"):
            if old != self.dir and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Memory-mapped ``(images [N, H, W, 3], masks [N, H, W])``."""
        return np.load(self.images_path, mmap_mode="r"), np.load(self.masks_path, mmap_mode="r")


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in s)

"""On-disk cache of resized, decoded splits.

One folder per (dataset root, split, size, key) holding ``images.npy`` (``uint8 [N, H, W, 3]``), ``masks.npy``
(``uint8 [N, H, W]``, class ids, void 255), ``meta.json`` and a ``lock`` file. The folder is named
``<name>-<root tag>-<split>-<H>x<W>-<key>``: the root tag hashes the resolved dataset root (two folders of one
name never share entries) and the key hashes every source file's resolved path, byte size and mtime (ns)
together with everything that changes the decoded arrays (size, padding, encoding, void, colours, threshold,
classes), so a changed file or parameter selects a new folder.

Integrity: ``meta.json`` stores a SHA-256 of each array; on load the shapes, both checksums and the mask value
range (class ids ``0..K-1`` or void 255) are verified, and a mismatch (a truncated, overwritten or zeroed file)
rebuilds the entry with a ``RuntimeWarning``.

Concurrency: files are written to temporary names and moved into place with ``os.replace``, ``meta.json``
last, under an exclusive ``build.lock`` (one writer per entry; temporary files left by an interrupted build are
removed then). A process using an entry holds a shared lock on its ``lock`` file for as long as the dataset
object lives; after a build, older entries of the same root, split and size are deleted only when their
exclusive lock can be taken (nobody is reading them). Entries of other roots are never touched. Without
``fcntl`` (Windows) no entry is ever deleted. Only data that passed validation is cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddsd._io import atomic_write, atomic_write_bytes, flocked
from ddsd.data.layouts import Sample
from ddsd.data.spec import IGNORE_INDEX, DatasetSpec

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; stale entries are then left in place
    fcntl = None  # type: ignore[assignment]

CACHE_VERSION = 3  # 3: checksums + mask range in meta.json, entries keyed by the resolved root


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
        "root": str(Path(spec.root).resolve()) if spec.root else None,
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


def content_digest(images_sha256: str, masks_sha256: str) -> str:
    """One SHA-256 for a split's decoded arrays, from their :func:`array_digest` values (the cache's checksums)."""
    return hashlib.sha256(f"{images_sha256}{masks_sha256}".encode()).hexdigest()


def array_digest(a: np.ndarray) -> str:
    """SHA-256 of an array's bytes (C order), read through a memory map without copying."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


def root_tag(root: Path | str | None) -> str:
    """Short hash of the resolved dataset root (entries of two folders with one name stay apart)."""
    return hashlib.sha256(str(Path(root).resolve() if root else "").encode()).hexdigest()[:10]


class SplitCache:
    """The cache entry of one split at one size (``num_classes``: K, for the mask range check)."""

    def __init__(self, cache_dir: Path, name: str, split: str, size: tuple[int, int], key: str,
                 root: Path | str | None = None, num_classes: int = IGNORE_INDEX) -> None:
        self.prefix = f"{_safe(name)}-{root_tag(root)}-{_safe(split)}-{size[0]}x{size[1]}-"
        self.dir = Path(cache_dir) / f"{self.prefix}{key[:20]}"
        self.key = key
        self.size = size
        self.num_classes = num_classes
        self._held: int | None = None  # fd of the shared lock held while the entry is in use

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers: the parent holds the lock
        return {**self.__dict__, "_held": None}

    def __del__(self) -> None:
        self.release()

    @property
    def images_path(self) -> Path:
        return self.dir / "images.npy"

    @property
    def masks_path(self) -> Path:
        return self.dir / "masks.npy"

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def hold(self) -> bool:
        """Take a shared lock on the entry (released by :meth:`release` or when this object goes away); False
        when the entry folder vanished meanwhile (deleted as stale by another process)."""
        if fcntl is None or self._held is not None:
            return True
        path = self.dir / "lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return False
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if not same:
            os.close(fd)
            return False
        self._held = fd
        return True

    def release(self) -> None:
        if self._held is not None:
            with contextlib.suppress(OSError):
                os.close(self._held)
            self._held = None

    def load(self) -> dict | None:
        """The entry's metadata if it is complete and intact (see module doc), else None (with a warning when
        the entry exists but fails a check; it is then rebuilt in place)."""
        if not self.meta_path.exists() or not self.hold():
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
            self._verify(meta)
        except Exception as e:
            self.release()
            warnings.warn(f"unreadable data cache {self.dir} ({type(e).__name__}: {e}); rebuilding it",
                          RuntimeWarning, stacklevel=3)
            return None
        return meta

    def _verify(self, meta: dict) -> None:
        if meta.get("key") != self.key:
            raise ValueError("key mismatch")
        n, (h, w) = meta["count"], self.size
        imgs = np.load(self.images_path, mmap_mode="r")
        masks = np.load(self.masks_path, mmap_mode="r")
        if imgs.shape != (n, h, w, 3) or masks.shape != (n, h, w) or imgs.dtype != np.uint8 \
                or masks.dtype != np.uint8:
            raise ValueError(f"unexpected shapes {imgs.shape} / {masks.shape}")
        sums = meta.get("checksums") or {}
        for what, arr in (("images", imgs), ("masks", masks)):
            if array_digest(arr) != sums.get(what):
                raise ValueError(f"{what}.npy does not match its checksum (the file was changed or damaged)")
        k = min(self.num_classes, IGNORE_INDEX)
        if not ((masks < k) | (masks == IGNORE_INDEX)).all():
            raise ValueError(f"masks.npy holds values outside the class ids 0..{k - 1} and void 255")

    def save(self, images: np.ndarray, masks: np.ndarray, meta: dict) -> dict:
        """Write the arrays and then ``meta.json`` (atomically, one writer at a time, stale temporary files of
        an interrupted build removed), hold the entry, and delete older entries of this prefix nobody uses.
        Returns the meta as written (with the key, count and checksums)."""
        for _ in range(3):  # a stale-entry sweep of another process may remove a fresh empty folder once
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.hold():
                break
        with flocked(self.dir / "build.lock"):
            for stale in self.dir.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
            for arr, path in ((images, self.images_path), (masks, self.masks_path)):
                atomic_write(path, lambda f, a=arr: np.save(f, np.ascontiguousarray(a)))
            sums = {"images": array_digest(images), "masks": array_digest(masks)}
            meta = {**meta, "key": self.key, "count": int(images.shape[0]), "checksums": sums}
            atomic_write_bytes(self.meta_path, json.dumps(meta).encode())
        self._drop_stale()
        return meta

    def _drop_stale(self) -> None:
        """Delete older entries of the same root, split and size whose exclusive lock is free."""
        if fcntl is None:
            return
        for old in self.dir.parent.glob(self.prefix + "*"):
            if old == self.dir or not old.is_dir():
                continue
            with flocked(old / "lock", wait=False) as (_, free):
                if not free:
                    continue  # another process reads it
                trash = old.parent / f".trash-{uuid.uuid4().hex}"
                with contextlib.suppress(OSError):
                    old.rename(trash)
                    shutil.rmtree(trash, ignore_errors=True)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Memory-mapped ``(images [N, H, W, 3], masks [N, H, W])``."""
        return np.load(self.images_path, mmap_mode="r"), np.load(self.masks_path, mmap_mode="r")


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in s)

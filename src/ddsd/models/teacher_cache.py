"""A content-addressed disk cache of a frozen teacher's logits.

A network teacher is fixed during distillation, so its logits are a pure function of the input image (and of
the output size and precision). :class:`CachedTeacher` keys every image of a batch by
``sha256(version, teacher fingerprint, image shape/dtype/bytes, output size, autocast dtype)``, loads the logits
of the images it has seen and runs the teacher only on the others. It pays off whenever the same image
reaches the teacher twice:

* training without augmentation (the teacher runs once per image instead of once per image per epoch);
* several runs with the same data seed (e.g. ``kd``, ``static`` and ``ddsd`` of one seed: ddsd's augmentation
  is a pure function of ``(seed, epoch, index)``, so they all feed the teacher the same images).

With random augmentation and a single run every lookup misses and the cache only costs disk: about
``K * H * W * 4`` bytes per image and epoch (ISBI at 256 x 256, K = 2, 20 images, 80 epochs: 0.84 GB per seed).
Entries are written atomically (:func:`ddsd._io.atomic_write`), so concurrent runs, DDP ranks or a crash never
leave a partial entry; an unreadable entry is recomputed and rewritten with a warning. Cached logits are the
ones the teacher produced the first time, so they match an uncached run up to the float rounding of running
the teacher on a different batch composition (per-image results of an eval-mode network do not depend on the
rest of the batch mathematically, only in the last bits).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
from torch import nn

from ddsd._io import atomic_write

__all__ = ["CachedTeacher", "file_fingerprint", "path_fingerprint"]

_VERSION = b"ddsd-teacher-cache-v1"


def file_fingerprint(path: str | Path, chunk: int = 1 << 20) -> str:
    """``sha256`` hex digest of a file's bytes (identifies a teacher checkpoint)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def path_fingerprint(path: str | Path, extra: str = "") -> str:
    """``sha256`` of ``extra`` and the bytes of a file, or of every file of a folder (relative names included, in
    sorted order): identifies a teacher given as a spec plus weights."""
    p = Path(path)
    h = hashlib.sha256(extra.encode())
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(f"|{f.relative_to(p) if p.is_dir() else f.name}|{file_fingerprint(f)}".encode())
    return h.hexdigest()


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type`` (``None`` when autocast is off); torch >= 2.1."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


class CachedTeacher(nn.Module):
    """Wrap a teacher ``forward(x, size=None) -> logits`` with a disk cache of per-image logits.

    Args:
        teacher: the frozen teacher (e.g. :class:`ddsd.models.FrozenTeacher`); called as
            ``teacher(x[miss], size=size)`` on the images not in the cache.
        cache_dir: folder of the cache (created if missing); entries live in ``<cache_dir>/<k[:2]>/<k>.pt``.
        fingerprint: a string that identifies the teacher's weights (:func:`file_fingerprint` of its
            checkpoint). Two different teachers must never share a fingerprint: it is part of every key.

    ``forward(x, size=None)``: ``x [B, C, H, W]`` -> logits ``[B, K, h, w]`` (``[B, K, *size]`` when ``size`` is
    given), no autograd history, on ``x``'s device. ``hits`` / ``misses`` count images since construction.
    Hashing reads the images on the host, so on a GPU each batch is copied to the CPU once.
    """

    def __init__(self, teacher: nn.Module, cache_dir: str | Path, fingerprint: str) -> None:
        super().__init__()
        if not fingerprint:
            raise ValueError("CachedTeacher needs a non-empty fingerprint identifying the teacher's weights")
        self.teacher = teacher
        self.cache_dir = Path(cache_dir)
        self.fingerprint = str(fingerprint)
        self.num_classes: int | None = getattr(teacher, "num_classes", None)
        self.hits = 0
        self.misses = 0
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create the teacher cache folder {self.cache_dir}: {e}") from e

    def key(self, image: torch.Tensor, size: tuple[int, int] | None) -> str:
        """Cache key of one image ``[C, H, W]`` for output ``size`` under the current autocast state."""
        h = hashlib.sha256(_VERSION)
        h.update(self.fingerprint.encode())
        img = image.detach().to("cpu").contiguous()
        h.update(f"{tuple(img.shape)}|{img.dtype}|{tuple(size) if size is not None else None}|".encode())
        dev = image.device.type
        h.update(f"{dev}|{_autocast_dtype(dev)}|".encode())
        h.update(img.view(torch.uint8).numpy().tobytes() if img.numel() else b"")
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.pt"

    def _load(self, path: Path) -> torch.Tensor | None:
        if not path.exists():
            return None
        try:
            t = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a foreign or damaged file: recompute and overwrite it
            warnings.warn(f"teacher cache entry {path} is unreadable ({type(e).__name__}: {e}); recomputing it",
                          stacklevel=3)
            return None
        return t if isinstance(t, torch.Tensor) else None

    def _save(self, path: Path, logits: torch.Tensor) -> None:
        t = logits.detach().to("cpu").clone()  # clone: a view would save the whole batch's storage
        atomic_write(path, lambda f: torch.save(t, f))

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """``x [B, C, H, W]`` -> teacher logits ``[B, K, h, w]`` (or ``[B, K, *size]``), cached per image."""
        size = tuple(int(s) for s in size) if size is not None else None  # type: ignore[assignment]
        keys = [self.key(img, size) for img in x]
        found: list[torch.Tensor | None] = [self._load(self._path(k)) for k in keys]
        miss = [i for i, t in enumerate(found) if t is None]
        if miss:
            fresh = self.teacher(x[miss] if len(miss) < len(keys) else x, size=size)
            for j, i in enumerate(miss):
                found[i] = fresh[j]
                self._save(self._path(keys[i]), fresh[j])
        self.hits += len(keys) - len(miss)
        self.misses += len(miss)
        with torch.no_grad():
            return torch.stack([t.to(x.device, non_blocking=True) for t in found])  # type: ignore[union-attr]

    def extra_repr(self) -> str:
        return f"cache_dir={str(self.cache_dir)!r}, fingerprint={self.fingerprint[:12]}"

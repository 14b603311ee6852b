"""``SegDataset`` (a torch Dataset) and :func:`build_dataset`.

With a size (argument or ``spec.size``) every pair is decoded, validated and resized once into the on-disk
cache (:mod:`ddsd.data.cache`) and read back memory-mapped; without one, pairs are decoded from the files at
their own sizes on each access. The procedural set is generated in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ddsd.data.cache import SplitCache, array_digest, cache_key, content_digest, default_cache_dir
from ddsd.data.encodings import read_mask
from ddsd.data.errors import DataError, ErrorCollector
from ddsd.data.layouts import Sample, resolve_split
from ddsd.data.procedural import generate_split
from ddsd.data.reader import LoadedPair, load_pair, thread_map
from ddsd.data.sizing import fit_box
from ddsd.data.spec import DatasetSpec, require_root
from ddsd.data.transforms import augment as augment_pair
from ddsd.data.transforms import mask_to_tensor, sample_rng, to_tensor


class SegDataset(Dataset):
    """Image/mask pairs of one split.

    ``ds[i]`` is a dict: ``image`` ``float32 [3, H, W]`` (ImageNet-normalised), ``mask`` ``int64 [H, W]``
    (class ids, void 255), ``index`` (int) and ``stem`` (str). With ``augment=True`` a random scale/crop and
    flip are applied, determined by ``(seed, epoch, index)``; call :meth:`set_epoch` each epoch (workers of a
    non-persistent DataLoader pick it up). Build it with :func:`build_dataset`. ``content_digest``: SHA-256 of
    the decoded image and mask arrays at the training size (None without a size), what a resumed run compares.
    """

    def __init__(self, spec: DatasetSpec, split: str, stems: list[str], *,
                 samples: list[Sample] | None = None,
                 arrays: tuple[np.ndarray, np.ndarray] | None = None,
                 cache: SplitCache | None = None,
                 original_sizes: list[tuple[int, int]] | None = None,
                 size: tuple[int, int] | None = None,
                 augment: bool = False, seed: int = 0, pad: bool = False,
                 content_digest: str | None = None) -> None:
        self.spec = spec
        self.content_digest = content_digest
        self.split = split
        self.stems = stems
        self.samples = samples
        self.size = size
        self.pad = pad
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._arrays = arrays
        self._cache = cache
        self._original_sizes = original_sizes

    # pickling for DataLoader workers: memory maps are reopened in the worker, not copied
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._cache is not None:
            state["_arrays"] = None
        return state

    def _get_arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self._arrays is None and self._cache is not None:
            self._arrays = self._cache.arrays()
        return self._arrays

    def __len__(self) -> int:
        return len(self.stems)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch``."""
        self.epoch = int(epoch)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image uint8 [H, W, 3], ids uint8 [H, W])`` before normalisation and augmentation."""
        arrays = self._get_arrays()
        if arrays is not None:
            return np.asarray(arrays[0][index]), np.asarray(arrays[1][index])
        assert self.samples is not None
        pair = load_pair(self.samples[index], self.spec, self.size, self.pad)
        if pair.errors:
            raise DataError(f"dataset '{self.spec.name}' split '{self.split}'", pair.errors)
        assert pair.image is not None and pair.ids is not None
        return pair.image, pair.ids

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, ids = self.raw(index)
        if self.augment:
            image, ids = augment_pair(image, ids, sample_rng(self.seed, self.epoch, index))
        return {"image": to_tensor(image), "mask": mask_to_tensor(ids), "index": index,
                "stem": self.stems[index]}

    def original_mask(self, index: int) -> np.ndarray:
        """Class ids ``uint8 [H0, W0]`` (void 255) at the mask file's size (procedural: generated size)."""
        if self.samples is None:
            arrays = self._get_arrays()
            assert arrays is not None
            return np.array(arrays[1][index])
        dec = read_mask(self.samples[index].mask, self.spec)
        if dec.errors:
            raise DataError(f"dataset '{self.spec.name}' split '{self.split}'", dec.errors)
        return dec.ids

    def original_size(self, index: int) -> tuple[int, int]:
        """(H0, W0) of the sample's mask file."""
        if self._original_sizes is not None:
            return self._original_sizes[index]
        return tuple(self.original_mask(index).shape)  # type: ignore[return-value]

    def content_box(self, index: int) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of the image inside the ``[H, W]`` sample (the whole sample unless ``pad``):
        predictions are cropped to it before they are resized to the original size."""
        if self.size is None:
            h, w = self.original_size(index)
            return 0, 0, h, w
        return fit_box(self.original_size(index), self.size, self.pad)

    def class_pixel_counts(self) -> np.ndarray:
        """``int64 [K]`` pixel count per class over the split (at the dataset's size; void excluded)."""
        k = self.spec.num_classes
        arrays = self._get_arrays()
        if arrays is not None:
            counts = np.zeros(256, dtype=np.int64)
            for m in arrays[1]:
                counts += np.bincount(np.asarray(m).ravel(), minlength=256)
            return counts[:k]
        return sum((np.bincount(self.raw(i)[1].ravel(), minlength=256)[:k] for i in range(len(self))),
                   start=np.zeros(k, dtype=np.int64))

    def __repr__(self) -> str:
        size = f"{self.size[0]}x{self.size[1]}{' padded' if self.pad else ''}" if self.size else "original size"
        return (f"SegDataset({self.spec.name!r}, split={self.split!r}, n={len(self)}, {size}, "
                f"K={self.spec.num_classes}, augment={self.augment})")


def _heading(spec: DatasetSpec, split: str) -> str:
    return f"dataset '{spec.name}' split '{split}'"


def build_dataset(spec: DatasetSpec | str, split: str, size: tuple[int, int] | None = None,
                  augment: bool = False, seed: int = 0, cache_dir: Path | str | None = None,
                  validate: bool = True, workers: int | None = None, resize: str = "auto") -> SegDataset:
    """The :class:`SegDataset` of ``split``.

    ``size`` = (H, W) (default ``spec.size``; None for both: original sizes, no cache). With a size the split
    is decoded, validated and resized once into ``cache_dir`` (default ``$DDSD_CACHE`` or ``~/.cache/ddsd``)
    and reused while the source files and parameters stay the same. ``resize``: ``auto``/``fixed`` stretch
    every image to the size, ``pad`` keeps its aspect and pads (:mod:`ddsd.data.sizing`); without a size a split
    of mixed image sizes is usable one sample at a time only. ``validate`` (without a size) decodes every pair up
    front. Raises :class:`DataError` listing every bad file (first 20 and a count).
    ``seed`` drives augmentation only; the procedural set's content follows ``spec.seed``.
    """
    if isinstance(spec, str):
        from ddsd.data.spec import load_spec

        spec = load_spec(spec)
    size = tuple(size) if size is not None else spec.size  # type: ignore[assignment]
    if spec.layout == "procedural":
        size = size or (64, 64)
        images, masks = generate_split(spec, split, size)
        stems = [f"{split}_{i:05d}" for i in range(len(images))]
        return SegDataset(spec, split, stems, arrays=(images, masks), size=size, augment=augment, seed=seed,
                          original_sizes=[size] * len(stems),
                          content_digest=content_digest(array_digest(images), array_digest(masks)))

    require_root(spec)
    errors = ErrorCollector()
    samples = resolve_split(spec, split, errors)
    stems = [s.stem for s in samples]
    if size is None:
        if validate:
            for p in thread_map(lambda s: load_pair(s, spec, (1, 1)), samples, workers):
                errors.extend(p.errors)
        errors.raise_if_any(_heading(spec, split))
        return SegDataset(spec, split, stems, samples=samples, size=None, augment=augment, seed=seed)

    if errors:  # structural problems: still decode what exists, to report every bad file at once
        for p in thread_map(lambda s: load_pair(s, spec, (1, 1)), samples, workers):
            errors.extend(p.errors)
        errors.raise_if_any(_heading(spec, split))

    pad = resize == "pad"
    cache = SplitCache(Path(cache_dir) if cache_dir is not None else default_cache_dir(), spec.name, split,
                       size, cache_key(spec, split, samples, size, pad), spec.root, spec.num_classes)
    meta = cache.load()
    if meta is None or meta.get("stems") != stems:
        meta = _build_cache(cache, spec, split, samples, size, workers, pad)
    original_sizes = [tuple(x) for x in meta["original_sizes"]]
    sums = meta.get("checksums") or {}
    return SegDataset(spec, split, stems, samples=samples, cache=cache, size=size, augment=augment,
                      seed=seed, original_sizes=original_sizes, pad=pad,  # type: ignore[arg-type]
                      content_digest=content_digest(sums["images"], sums["masks"]) if sums else None)


def _build_cache(cache: SplitCache, spec: DatasetSpec, split: str, samples: list[Sample],
                 size: tuple[int, int], workers: int | None, pad: bool = False) -> dict[str, Any]:
    n, (h, w) = len(samples), size
    images = np.empty((n, h, w, 3), dtype=np.uint8)
    masks = np.empty((n, h, w), dtype=np.uint8)
    errors = ErrorCollector()
    original_sizes: list[tuple[int, int] | None] = []
    inbetween_files = 0
    for i, pair in enumerate(thread_map(lambda s: load_pair(s, spec, size, pad), samples, workers)):
        pair: LoadedPair
        errors.extend(pair.errors)
        original_sizes.append(pair.original_size)
        inbetween_files += pair.inbetween > 0
        if not pair.errors:
            images[i], masks[i] = pair.image, pair.ids
    errors.raise_if_any(_heading(spec, split))
    meta = {"dataset": spec.name, "split": split, "size": list(size), "stems": [s.stem for s in samples],
            "original_sizes": [list(s) for s in original_sizes if s is not None],
            "inbetween_files": int(inbetween_files)}
    return cache.save(images, masks, meta)


def collate_keep(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Default-like collate: stacks ``image``/``mask``, keeps ``index`` as a tensor and ``stem`` as a list.

    Raises :class:`DataError` naming the samples when their sizes differ (a dataset without a size whose
    images differ in size: give it one)."""
    shapes = {tuple(b["image"].shape[-2:]) for b in batch}
    if len(shapes) > 1:
        shown = ", ".join(f"{b['stem']} {b['image'].shape[-1]}x{b['image'].shape[-2]}" for b in batch[:6])
        raise DataError(f"images of different sizes cannot form one batch ({shown} (WxH)): set data.size [H, W] "
                        "(or --size HxW), or leave it unset with data.resize auto/pad to have one chosen")
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "mask": torch.stack([b["mask"] for b in batch]),
        "index": torch.tensor([b["index"] for b in batch]),
        "stem": [b["stem"] for b in batch],
    }

"""Split lists for a folder dataset that has none (``ddsd data split ROOT``).

A user's folder is often just ``images/`` + ``masks/`` (or VOC's ``JPEGImages/`` + ``SegmentationClass/``
without ``ImageSets/``). Training needs ``train.txt`` / ``val.txt`` /
``test.txt``; this module partitions the stems that have both an image and a mask, reproducibly, and writes
those lists (``ImageSets/Segmentation/<split>.txt`` for VOC; atomically, never over existing lists unless
asked):

- **order**: the stems sorted by ``SHA-256("<seed>:<stem>")``: the same partition on every machine, Python
  and NumPy version, and a stem keeps its place in the order when other files are added;
- **counts**: ``n_test = round(test * n)`` and ``n_val = round(val * n)``, at least 1 each when the share is
  above 0; the first ``n_test`` stems of the order are test, the next ``n_val`` val, the rest train (>= 1);
- images without a mask and masks without an image are left out and named (not an error: unlabelled photos
  are common); a stem with several image (or mask) files is an error naming them, as training would refuse it.

Typical use::

    from ddsd.data.splits import plan_splits, write_splits
    plan = plan_splits("photos/", val=0.1, test=0.1, seed=0)   # nothing written yet
    write_splits(plan)                                          # photos/train.txt, val.txt, test.txt
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ddsd._io import atomic_write_bytes
from ddsd.data.detect import detect_layout
from ddsd.data.errors import DataError
from ddsd.data.layouts import index_folder
from ddsd.data.spec import DatasetSpec

SPLITS = ("train", "val", "test")


@dataclass
class SplitPlan:
    """What :func:`write_splits` writes: ``lists`` split -> stems (sorted), their list ``files``, the lists of
    the splits left empty (``stale``: removed on write) and the stems left out (``images_without_mask``,
    ``masks_without_image``), and each pair's files (``pairs``: stem -> (image, mask))."""

    root: Path
    seed: int
    shares: dict[str, float]
    lists: dict[str, list[str]]
    files: dict[str, Path]
    stale: list[Path] = field(default_factory=list)
    pairs: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    images_without_mask: list[str] = field(default_factory=list)
    masks_without_image: list[str] = field(default_factory=list)

    def line(self, stem: str) -> str:
        """A list line for ``stem``: the stem, or for a stem a reader would skip or trim (``#...``, edge
        spaces) the ``image<TAB>mask`` pair relative to the root."""
        if not stem.startswith("#") and stem == stem.strip():
            return stem
        return "\t".join(str(p.relative_to(self.root)) for p in self.pairs[stem])

    def header(self) -> str:
        """The comment line opening each list (the list readers skip ``#`` lines)."""
        n = sum(len(v) for v in self.lists.values())
        return (f"# written by `ddsd data split` (seed {self.seed}, val {self.shares['val']:g}, "
                f"test {self.shares['test']:g}; {n} image/mask pairs)")


def _order(stems: list[str], seed: int) -> list[str]:
    return sorted(stems, key=lambda s: (hashlib.sha256(f"{seed}:{s}".encode()).hexdigest(), s))


def _count(share: float, n: int) -> int:
    return max(1, round(share * n)) if share > 0 else 0


def _probe(root: Path, image_dir: str | None, mask_dir: str | None) -> DatasetSpec:
    """The folder (or VOC) layout of ``root``, for its folders and list paths; CamVid's splits are folders."""
    found = {"layout": "folder"} if image_dir and mask_dir else detect_layout(root)
    if found["layout"] == "camvid":
        raise DataError(f"{root}: detected as the camvid layout, whose splits are its own folders (train/ + "
                        "trainannot/ ...); `ddsd data split` writes lists for images/ + masks/ folders or VOC")
    return DatasetSpec(name=root.name, root=root, layout=found["layout"], class_names=["a", "b"],
                       image_dir=image_dir or found.get("image_dir"), mask_dir=mask_dir or found.get("mask_dir"))


def plan_splits(root: str | Path, val: float = 0.1, test: float = 0.1, seed: int = 0,
                image_dir: str | None = None, mask_dir: str | None = None) -> SplitPlan:
    """Partition the image/mask pairs under ``root`` into train / val / test (see the module docstring).

    ``image_dir`` / ``mask_dir`` (relative to ``root``) default to the detected folders. Raises
    :class:`DataError` for shares outside [0, 1) or summing to 1 or more, too few pairs for the requested
    splits, and stems with several image or mask files.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"dataset path '{root}' does not exist or is not a folder")
    for name, share in (("val", val), ("test", test)):
        if not 0 <= share < 1:
            raise DataError(f"--{name} {share:g}: a share of the pairs must lie in [0, 1)")
    if val + test >= 1:
        raise DataError(f"--val {val:g} + --test {test:g} leave nothing to train on: their sum must be below 1")
    probe = _probe(root, image_dir, mask_dir)
    images = index_folder(root / probe.image_dir_for("train"))
    masks = index_folder(root / probe.mask_dir_for("train"))
    several = [ps for ps in (*images.values(), *masks.values()) if len(ps) > 1]
    if several:
        shown = "; ".join(", ".join(p.name for p in ps) for ps in several[:5])
        raise DataError(f"{root}: {len(several)} stem(s) with several files in one folder ({shown}): keep one "
                        "file per stem, so each image has exactly one mask")
    paired = sorted(set(images) & set(masks))
    n_test, n_val = _count(test, len(paired)), _count(val, len(paired))
    if len(paired) - n_test - n_val < 1:
        raise DataError(f"{root}: {len(paired)} image/mask pair(s) under {probe.image_dir_for('train')}/ and "
                        f"{probe.mask_dir_for('train')}/ are too few for {n_val} val + {n_test} test + at "
                        "least 1 training pair")
    order = _order(paired, seed)
    lists = {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
             "train": sorted(order[n_test + n_val:])}
    lists = {s: lists[s] for s in SPLITS if lists[s]}
    return SplitPlan(root=root, seed=seed, shares={"val": val, "test": test}, lists=lists,
                     files={s: root / probe.split_file_for(s) for s in lists},
                     stale=[root / probe.split_file_for(s) for s in SPLITS if s not in lists],
                     pairs={x: (images[x][0], masks[x][0]) for x in paired},
                     images_without_mask=sorted(set(images) - set(masks)),
                     masks_without_image=sorted(set(masks) - set(images)))


def write_splits(plan: SplitPlan, overwrite: bool = False) -> list[Path]:
    """Write ``plan``'s lists (each atomically; a header comment, then one stem a line). Existing lists of the
    three splits are an error naming them unless ``overwrite``. Returns the files written."""
    existing = [p for p in plan.files.values() if p.exists()]
    existing += [p for p in plan.stale if p.exists()]
    if existing and not overwrite:
        names = ", ".join(str(p.relative_to(plan.root)) for p in existing)
        raise DataError(f"{plan.root} already has {names}: pass --overwrite (Python: write_splits(plan, "
                        "overwrite=True)) to replace them")
    for stale in plan.stale:  # a list of a split this plan leaves out would mix two partitions
        stale.unlink(missing_ok=True)
    for s, stems in plan.lists.items():
        lines = [plan.header(), *(plan.line(x) for x in stems)]
        atomic_write_bytes(plan.files[s], "".join(f"{x}\n" for x in lines).encode())
    return list(plan.files.values())

"""Readers of the on-disk layouts: which image file goes with which mask file in each split.

- ``folder``: ``images/<stem>.*`` + ``masks/<stem>.*`` and split lists ``<split>.txt`` (one stem a line);
- ``camvid`` (SegNet): ``<split>/`` + ``<split>annot/`` and ``<split>.txt`` holding
  ``<split>/<stem>.jpg <split>annot/<stem>.png`` pairs (without a list, the ``<split>/`` folder is the split);
- ``voc``: ``JPEGImages/`` + ``SegmentationClass/`` and ``ImageSets/Segmentation/<split>.txt``.

A line of any split list is either a stem (or file name) or a pair of paths relative to the root. Names with
spaces: a line that as a whole names an existing file or stem is one name; a line with a tab is split on tabs
only (``image<TAB>mask``); any other line is split on whitespace. Problems are collected (not raised) so one
pass reports every bad entry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ddsd.data.errors import ErrorCollector
from ddsd.data.spec import DatasetSpec

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


@dataclass(frozen=True)
class Sample:
    """One image/mask pair of a split."""

    stem: str
    image: Path
    mask: Path


def index_folder(folder: Path) -> dict[str, list[Path]]:
    """Map stem -> image-like files (by extension) in ``folder`` (not recursive). Empty if absent."""
    out: dict[str, list[Path]] = defaultdict(list)
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
                out[p.stem].append(p)
    return dict(out)


def read_split_list(path: Path, is_name: Callable[[str], bool] = lambda _: False) -> list[list[str]]:
    """Non-empty, non-comment lines of a split list as tokens: ``[line]`` when ``is_name(line)`` (a name that
    may hold spaces), the tab-separated fields when the line has a tab, else the whitespace-separated ones."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if is_name(line):
            lines.append([line])
        elif "\t" in line:
            lines.append([t.strip() for t in line.split("\t") if t.strip()])
        else:
            lines.append(line.split())
    return lines


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _resolve_listed(token: str, root: Path) -> Path:
    """A path from a pair line; absolute paths that do not exist (e.g. SegNet's ``/SegNet/CamVid/...``) are
    retried as ``root/<parent>/<name>``."""
    p = Path(token)
    if not p.is_absolute():
        return root / p
    if p.exists():
        return p
    return root / p.parent.name / p.name


def split_exists(spec: DatasetSpec, split: str) -> bool:
    """Whether ``split`` has a list file (or, for CamVid, an image folder)."""
    assert spec.root is not None
    if (spec.root / spec.split_file_for(split)).is_file():
        return True
    return spec.layout == "camvid" and (spec.root / spec.image_dir_for(split)).is_dir()


def _split_entries(spec: DatasetSpec, split: str, images: dict, masks: dict, errors: ErrorCollector):
    """The split's entries (token lists, one per listed line; one stem per file for a CamVid folder without a
    list) and whether they came from the folder; None (error reported) when there are none."""
    root = spec.root
    assert root is not None
    list_path = root / spec.split_file_for(split)
    if list_path.is_file():

        def is_name(line: str) -> bool:  # a stem, file name or root-relative path that holds spaces
            if not any(c.isspace() for c in line):
                return False
            name = Path(line)
            as_file = ("/" not in line and name.suffix.lower() in IMAGE_EXTS
                       and (name.stem in images or name.stem in masks))
            return line in images or line in masks or as_file or (root / line).is_file()

        entries = read_split_list(list_path, is_name)
        if not entries:
            errors.add(f"{list_path}: split list is empty")
            return None, False
        return entries, False
    if spec.layout == "camvid" and (root / spec.image_dir_for(split)).is_dir():
        return [[s] for s in sorted(set(images) | set(masks))], True
    hint = (f" (`ddsd data split {root} --overwrite` writes a new train/val/test partition)"
            if spec.layout in ("folder", "voc") else "")
    errors.add(f"{list_path}: split list of split '{split}' is missing{hint}")
    return None, False


def _listed_pair(tokens: list[str], root: Path, at: str, errors: ErrorCollector) -> Sample | None:
    """An 'image mask' line (``at``: list:line); None, with the missing file(s) reported, unless both exist."""
    image, mask = _resolve_listed(tokens[0], root), _resolve_listed(tokens[1], root)
    if not image.is_file():
        errors.add(f"{image}: image listed in {at} is missing"
                   + (f" (its mask {mask} exists)" if mask.is_file() else ""))
    if not mask.is_file():
        errors.add(f"{mask}: mask listed in {at} is missing" + (f" (for image {image})" if image.is_file() else ""))
    return Sample(image.stem, image, mask) if image.is_file() and mask.is_file() else None


def resolve_split(spec: DatasetSpec, split: str, errors: ErrorCollector) -> list[Sample]:
    """The samples of ``split`` whose image and mask files exist; problems go to ``errors``.

    Reported: missing/empty split list, missing image or mask folder, stems listed but absent, an image
    without a mask (and the reverse), a stem listed twice, several files with one stem.
    """
    root = spec.root
    assert root is not None, "procedural datasets have no files"
    image_dir = root / spec.image_dir_for(split)
    mask_dir = root / spec.mask_dir_for(split)
    list_path = root / spec.split_file_for(split)
    img_rel, mask_rel = _rel(image_dir, root) + "/", _rel(mask_dir, root) + "/"

    for d, what in ((image_dir, "image"), (mask_dir, "mask")):
        if not d.is_dir():
            errors.add(f"{d}: {what} folder of split '{split}' is missing")

    images = index_folder(image_dir)
    masks = index_folder(mask_dir)
    entries, from_folder = _split_entries(spec, split, images, masks, errors)
    if entries is None:
        return []
    where = f"{mask_dir}" if from_folder else f"{list_path}"

    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for lineno, tokens in enumerate(entries, start=1):
        if len(tokens) > 2:
            errors.add(f"{list_path}:{lineno}: expected 'stem' or 'image mask', got {' '.join(tokens)!r}")
            continue
        token = tokens[0]
        stem = _resolve_listed(token, root).stem if len(tokens) == 2 else token
        if len(tokens) == 1 and stem not in images and stem not in masks and Path(token).suffix.lower() in IMAGE_EXTS:
            stem = Path(token).stem  # a list of file names instead of stems
        pair = _listed_pair(tokens, root, f"{list_path}:{lineno}", errors) if len(tokens) == 2 else None
        if stem in seen:
            errors.add(f"{list_path}:{lineno}: '{stem}' is listed twice (first on line {seen[stem]})")
            continue
        seen[stem] = lineno
        if len(tokens) == 2:
            samples += [pair] if pair is not None else []
            continue
        imgs, msks = images.get(stem, []), masks.get(stem, [])
        if len(imgs) > 1:
            errors.add(f"{image_dir}: several images with stem '{stem}': {', '.join(p.name for p in imgs)}")
        if len(msks) > 1:
            errors.add(f"{mask_dir}: several masks with stem '{stem}': {', '.join(p.name for p in msks)}")
        if not imgs and not msks:
            errors.add(f"{where}: '{stem}' is listed in split '{split}' but absent: "
                       f"no image in {img_rel}, no mask in {mask_rel}")
        elif not msks:
            errors.add(f"{imgs[0]}: no mask for this image (expected {mask_rel}{stem}.png)")
        elif not imgs:
            errors.add(f"{msks[0]}: no image for this mask (expected {img_rel}{stem}.<ext>)")
        elif len(imgs) == 1 and len(msks) == 1:
            samples.append(Sample(stem, imgs[0], msks[0]))
    return samples


def unlisted_files(spec: DatasetSpec, listed: dict[str, set[Path]]) -> list[str]:
    """Image/mask files in the checked folders that no checked split uses (``listed``: folder -> used)."""
    out = []
    for folder, used in listed.items():
        for files in index_folder(folder).values():
            for p in files:
                if p not in used:
                    out.append(str(p))
    return out

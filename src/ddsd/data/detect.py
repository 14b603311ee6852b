"""Detecting a dataset's layout and mask encoding from its root folder alone.

Layout: ``JPEGImages/`` + ``SegmentationClass/`` -> VOC; ``train/`` + ``trainannot/`` -> CamVid (SegNet);
an image folder + a mask folder (``images/ masks/``, or one of a few common spellings) -> folder.
Encoding, from the masks' modes and values: colour masks -> ``rgb`` (colour map = colours found, sorted);
palette masks -> ``index``; grey masks with values {0, 255} (plus a small share of in-between values, as
in anti-aliased or JPEG-saved masks) -> ``binary``; other grey masks -> ``index`` with K = largest value + 1,
and 255 as void when it occurs above the other values. A ``class_dict.csv`` (``id,name,r,g,b[,ignore]``)
in the root supplies class names, colours and the void class.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddsd.data.encodings import ReadError, open_image, palette_as_binary, sixteen_to_eight
from ddsd.data.errors import DataError, ErrorCollector, name_list
from ddsd.data.layouts import index_folder, resolve_split, split_exists
from ddsd.data.reader import thread_map
from ddsd.data.spec import DatasetSpec, spec_from_dict

IMAGE_DIR_NAMES = ("images", "image", "imgs", "Images", "Imgs", "img", "JPEGImages")
MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "GT", "gt", "annotations", "Masks", "ground_truth")
COMMON_SPLITS = ("train", "val", "test", "trainval")
BINARY_MIN_EXTREME_SHARE = 0.9  # share of pixels at 0 or 255 for a grey mask set to count as binary


def detect_layout(root: Path) -> dict[str, Any]:
    """``{"layout": ..., ["image_dir", "mask_dir"]}`` for ``root``; :class:`DataError` if none fits."""
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        return {"layout": "voc"}
    if any((root / s).is_dir() and (root / f"{s}annot").is_dir() for s in COMMON_SPLITS):
        return {"layout": "camvid"}
    images = next((n for n in IMAGE_DIR_NAMES if (root / n).is_dir()), None)
    masks = next((n for n in MASK_DIR_NAMES if (root / n).is_dir()), None)
    if images and masks:
        out: dict[str, Any] = {"layout": "folder"}
        if images != "images":
            out["image_dir"] = images
        if masks != "masks":
            out["mask_dir"] = masks
        return out
    raise DataError(f"{root}: cannot detect the dataset layout: expected images/ + masks/ (+ train.txt ...), "
                    "train/ + trainannot/ (CamVid), or JPEGImages/ + SegmentationClass/ (VOC)")


def read_class_dict(path: Path) -> tuple[list[str], dict[int, tuple[int, int, int]], int | None]:
    """``class_dict.csv`` -> (class names without void, colours by class id, void id or None)."""
    names, colors, void = [], {}, None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        cid = int(row.get("id", i))
        if str(row.get("ignore", "0")).strip() in ("1", "true", "True"):
            void = cid
            continue
        names.append(row["name"])
        if all(c in row for c in "rgb"):
            colors[len(names) - 1] = (int(row["r"]), int(row["g"]), int(row["b"]))
    return names, colors, void


@dataclass
class MaskStats:
    """One mask file as detection sees it: ``kind`` 'rgb' | 'palette' | 'grey', its values -> pixel counts
    (colours packed as ints; palette: indices; 16-bit grey: after :func:`sixteen_to_eight`) and, for palette
    masks, the grey values they have when read through their palette in a binary set (None: not readable so)."""

    path: Path
    kind: str
    counts: dict[int, int]
    as_binary: dict[int, int] | None = None


def _counts(a: np.ndarray) -> dict[int, int]:
    v, c = np.unique(a, return_counts=True)
    return dict(zip(v.tolist(), c.tolist(), strict=True))


def _mask_stats(path: Path) -> MaskStats:
    """The :class:`MaskStats` of one mask (raises :class:`ReadError`)."""
    img = open_image(path)
    if img.mode in ("RGB", "RGBA"):
        a = np.asarray(img.convert("RGB"))
        if not ((a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()):
            code = (a[..., 0].astype(np.int64) << 16) | (a[..., 1].astype(np.int64) << 8) | a[..., 2]
            return MaskStats(path, "rgb", _counts(code))
        return MaskStats(path, "grey", _counts(a[..., 0]))
    if img.mode == "P":
        try:
            as_binary = _counts(palette_as_binary(img, path))
        except ReadError:
            as_binary = None
        return MaskStats(path, "palette", _counts(np.asarray(img)), as_binary)
    if img.mode == "1":
        return MaskStats(path, "grey", _counts(np.asarray(img, dtype=np.uint8) * 255))
    if img.mode in ("L", "I;16", "I;16B", "I;16L", "I"):
        return MaskStats(path, "grey", _counts(sixteen_to_eight(np.asarray(img))))
    return MaskStats(path, "grey", _counts(np.asarray(img.convert("L"))))


def _merge(dicts: list[dict[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for d in dicts:
        for v, c in d.items():
            out[v] = out.get(v, 0) + c
    return out


def _binary_like(counts: dict[int, int]) -> bool:
    """Values {0, 255}, or >= 90 % of pixels at 0/255 with stray values on both sides of 128 (soft edges)."""
    values = sorted(counts)
    if set(values) <= {0, 255}:
        return True
    between = [v for v in values if 0 < v < 255]
    extreme = counts.get(0, 0) + counts.get(255, 0)
    return (0 in counts and 255 in counts and extreme / sum(counts.values()) >= BINARY_MIN_EXTREME_SHARE
            and any(v < 128 for v in between) and any(v >= 128 for v in between))


def _mixed_notes(stats: list[MaskStats], majority: str, how: dict[str, str]) -> list[str]:
    """One note per minority kind, naming its files and how they are read."""
    notes = []
    for kind in ("rgb", "palette", "grey"):
        files = [f for f in stats if f.kind == kind]
        if kind != majority and files:
            notes.append(f"mixed mask kinds: {len(files)} {kind} mask(s) among mostly {majority} ones, "
                         f"{how.get(kind, 'read as ' + majority)}: {name_list([f.path.name for f in files])}")
    return notes


def _too_wide(stats: list[MaskStats], root: Path) -> None:
    """16-bit masks whose values do not fit 8 bits (and are not 0/65535-style) are named, not guessed."""
    wide = [f for f in stats if f.kind == "grey" and max(f.counts) > 255]
    if wide:
        shown = "; ".join(f"{f.path} (values up to {max(f.counts)})" for f in wide[:5])
        raise DataError(f"{root}: {len(wide)} 16-bit mask(s) with values above 255 that are not 0/65535 "
                        f"(or 8-bit values scaled by 257): {shown}; save them as 8-bit class ids or 0/255")


def detect_spec(root: Path | str, layout: str | None = None, encoding: str | None = None,
                void_value: int | None = None, name: str | None = None, **overrides: Any) -> DatasetSpec:
    """A :class:`DatasetSpec` for the dataset under ``root``, by inspection of its folders and masks.

    ``layout`` / ``encoding`` / ``void_value`` skip the corresponding detection; ``overrides`` set other
    fields. ``description`` says what was detected.
    """
    root = Path(root).expanduser().resolve()
    base: dict[str, Any] = {"layout": layout} if layout else detect_layout(root)
    base.update({k: v for k, v in overrides.items() if k in ("image_dir", "mask_dir", "split_files")})
    probe = DatasetSpec(name=name or root.name, root=root, class_names=["a", "b"], **base)
    splits = [s for s in COMMON_SPLITS if split_exists(probe, s)]
    if "splits" in overrides:
        splits = list(overrides["splits"])
    if not splits:
        hint = (f"; `ddsd data split {root}` writes a seeded 80/10/10 partition of the image/mask pairs"
                if probe.layout in ("folder", "voc") else "")
        raise DataError(f"{root}: no split lists found (expected e.g. "
                        f"{', '.join(probe.split_file_for(s) for s in ('train', 'val', 'test'))}){hint}")
    if "trainval" in splits and {"train", "val"} <= set(splits):
        splits.remove("trainval")

    mask_files: list[Path] = []
    ignore = ErrorCollector()  # structural problems are reported by the check, not here
    for s in splits:
        mask_files += [x.mask for x in resolve_split(probe, s, ignore)]
    if not mask_files:  # fall back to the mask folder(s) themselves
        for s in splits:
            mask_files += [p for ps in index_folder(root / probe.mask_dir_for(s)).values() for p in ps]
    if not mask_files:
        raise DataError(f"{root}: no mask files found to detect the encoding from")

    names: list[str] | None = None
    colors: dict[int, tuple[int, int, int]] = {}
    dict_void = None
    if (root / "class_dict.csv").is_file():
        try:
            names, colors, dict_void = read_class_dict(root / "class_dict.csv")
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{root / 'class_dict.csv'}: cannot read class names ({e})") from None

    def stats(p: Path) -> MaskStats | None:
        try:
            return _mask_stats(p)
        except ReadError:
            return None  # unreadable files are reported by the check

    found_stats = [st for st in thread_map(stats, sorted(set(mask_files))) if st is not None]
    if not found_stats:
        raise DataError(f"{root}: none of the {len(mask_files)} mask files could be read")
    spec: dict[str, Any] = {"name": name or root.name, "root": root, "splits": splits, **base}
    found, notes = _choose_encoding(spec, found_stats, encoding, void_value, names, colors, dict_void, root)
    kinds = Counter(f.kind for f in found_stats)
    mask_kind = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    spec["description"] = (f"auto-detected: layout {spec['layout']}, encoding {spec['encoding']} "
                           f"({mask_kind} masks, {found}), splits {', '.join(splits)}")
    spec.update({k: v for k, v in overrides.items() if k not in ("image_dir", "mask_dir", "split_files")})
    out = spec_from_dict(spec, f"dataset detected under {root}")
    out._notes = notes
    return out


def _choose_encoding(spec: dict[str, Any], stats: list[MaskStats], encoding: str | None, void_value: int | None,
                     names: list[str] | None, colors: dict[int, tuple[int, int, int]], dict_void: int | None,
                     root: Path) -> tuple[str, list[str]]:
    """Fill ``spec``'s encoding fields from the masks; returns (what was found, notes on mixed files).

    The kind of most files decides (rgb / palette / grey); files of another kind never change the others'
    meaning. With mostly grey masks, each grey file votes (palette files as read through their palette,
    :func:`palette_as_binary`): binary-like (values 0/255, or >= 90 % of pixels at 0/255 with soft values on both
    sides of 128) or not; more binary-like votes -> binary, and the odd files are named as problems by the check
    (e.g. a 0/1 mask) instead of turning every 255 into void."""
    kinds = Counter(f.kind for f in stats)
    majority = max(("grey", "palette", "rgb"), key=lambda k: (kinds.get(k, 0), k == "grey"))
    if encoding == "rgb" or (encoding is None and majority == "rgb"):
        counts = _merge([f.counts for f in stats if f.kind == "rgb"])
        values = sorted(counts)
        spec["encoding"] = "rgb"
        if not colors:
            colors = {i: ((v >> 16) & 255, (v >> 8) & 255, v & 255) for i, v in enumerate(values)}
            names = [f"color_{r}_{g}_{b}" for (r, g, b) in colors.values()]
        spec.update(colors=colors, class_names=names)
        if void_value is not None:
            spec["void_value"] = void_value
        return f"{len(values)} colours", _mixed_notes(stats, "rgb", {})
    _too_wide(stats, root)
    # one vote per grey file (palette files: as read through their palette); files that are all 0 don't vote
    voters = [f.counts if f.kind == "grey" else f.as_binary for f in stats
              if f.kind == "grey" or (f.kind == "palette" and f.as_binary is not None and majority == "grey")]
    votes = Counter("none" if set(c) <= {0} else "binary" if _binary_like(c) else "other"
                    for c in voters if c is not None)
    binary_counts = _merge([c for c in voters if c is not None])
    raw_values = set(_merge([f.counts for f in stats if f.kind != "rgb"]))
    binary_like = (majority == "grey" and votes["binary"] > votes["other"]) or raw_values <= {0, 255}
    if encoding == "binary" or (encoding is None and binary_like):
        spec["encoding"] = "binary"
        inbetween = sum(c for v, c in binary_counts.items() if v not in (0, 255))
        spec["class_names"] = names if names and len(names) == 2 else ["background", "object"]
        if void_value is not None:
            spec["void_value"] = void_value
        how = {"palette": "read through their palette (0/1 indices: 1 = object)", "rgb": "read as grey"}
        return ("values {0, 255}" + (f" + {inbetween} in-between pixels" if inbetween else ""),
                _mixed_notes(stats, "grey", how))
    counts = _merge([f.counts for f in stats if f.kind != "rgb"])
    values = sorted(counts)
    spec["encoding"] = "index"
    void = void_value if void_value is not None else dict_void
    if void is None and 255 in counts and len(values) > 1 and values[-2] < 254:
        void = 255
    classes = [v for v in values if v != void]
    k = max(classes) + 1 if classes else 2
    if names is None or len(names) < k:
        names = [f"class_{i}" for i in range(max(k, 2))]
    spec["class_names"] = names
    if void is not None:
        spec["void_value"] = void
    shown = ", ".join(str(v) for v in values[:16]) + (" ..." if len(values) > 16 else "")
    how = {"palette": "their indices read as class ids", "grey": "their values read as class ids"}
    return (f"values {{{shown}}}" + (f", void {void}" if void is not None else ""),
            _mixed_notes(stats, majority, how))


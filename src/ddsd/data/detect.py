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
from pathlib import Path
from typing import Any

import numpy as np

from ddsd.data.encodings import ReadError, open_image
from ddsd.data.errors import DataError, ErrorCollector
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


def _mask_stats(path: Path) -> tuple[str, dict[int, int]]:
    """(kind, value -> pixel count) of one mask; kind: 'rgb' | 'palette' | 'grey'; colours packed as ints."""
    img = open_image(path)
    if img.mode in ("RGB", "RGBA"):
        a = np.asarray(img.convert("RGB"))
        if not ((a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()):
            code = (a[..., 0].astype(np.int64) << 16) | (a[..., 1].astype(np.int64) << 8) | a[..., 2]
            v, c = np.unique(code, return_counts=True)
            return "rgb", dict(zip(v.tolist(), c.tolist(), strict=True))
        a = a[..., 0]
    elif img.mode == "1":
        a = np.asarray(img, dtype=np.uint8) * 255
    elif img.mode in ("L", "P", "I;16", "I"):
        a = np.asarray(img)
    else:
        a = np.asarray(img.convert("L"))
    v, c = np.unique(a, return_counts=True)
    return ("palette" if img.mode == "P" else "grey"), dict(zip(v.tolist(), c.tolist(), strict=True))


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
        raise DataError(f"{root}: no split lists found (expected e.g. "
                        f"{', '.join(probe.split_file_for(s) for s in ('train', 'val', 'test'))})")
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

    kinds: dict[str, int] = {}
    counts: dict[int, int] = {}

    def stats(p: Path) -> tuple[str, dict[int, int]] | None:
        try:
            return _mask_stats(p)
        except ReadError:
            return None  # unreadable files are reported by the check

    for res in thread_map(stats, sorted(set(mask_files))):
        if res is None:
            continue
        kinds[res[0]] = kinds.get(res[0], 0) + 1
        for v, c in res[1].items():
            counts[v] = counts.get(v, 0) + c
    if not counts:
        raise DataError(f"{root}: none of the {len(mask_files)} mask files could be read")

    spec: dict[str, Any] = {"name": name or root.name, "root": root, "splits": splits, **base}
    total = sum(counts.values())
    values = sorted(counts)
    found = ""
    if encoding == "rgb" or (encoding is None and "rgb" in kinds):
        spec["encoding"] = "rgb"
        if not colors:
            colors = {i: ((v >> 16) & 255, (v >> 8) & 255, v & 255) for i, v in enumerate(values)}
            names = [f"color_{r}_{g}_{b}" for (r, g, b) in colors.values()]
        spec["colors"] = colors
        found = f"{len(values)} colours"
    else:
        extreme = counts.get(0, 0) + counts.get(255, 0)
        between = [v for v in values if 0 < v < 255]
        # anti-aliased / JPEG-saved binary masks: mostly 0 and 255, stray values on both sides of 128
        binary_like = set(values) <= {0, 255} or (
            "palette" not in kinds and 0 in counts and 255 in counts
            and extreme / total >= BINARY_MIN_EXTREME_SHARE
            and any(v < 128 for v in between) and any(v >= 128 for v in between))
        if encoding == "binary" or (encoding is None and binary_like):
            spec["encoding"] = "binary"
            inbetween = total - extreme
            found = "values {0, 255}" + (f" + {inbetween} in-between pixels" if inbetween else "")
            names = names if names and len(names) == 2 else ["background", "object"]
        else:
            spec["encoding"] = "index"
            void = void_value if void_value is not None else dict_void
            if void is None and 255 in counts and len(values) > 1 and values[-2] < 254:
                void = 255
            classes = [v for v in values if v != void]
            k = max(classes) + 1 if classes else 2
            if names is None or len(names) < k:
                names = [f"class_{i}" for i in range(max(k, 2))]
            if void is not None:
                spec["void_value"] = void
            shown = ", ".join(str(v) for v in values[:16]) + (" ..." if len(values) > 16 else "")
            found = f"values {{{shown}}}" + (f", void {void}" if void is not None else "")
    if void_value is not None and spec["encoding"] != "index":
        spec["void_value"] = void_value
    spec["class_names"] = names
    mask_kind = "/".join(sorted(kinds))
    spec["description"] = (f"auto-detected: layout {spec['layout']}, encoding {spec['encoding']} "
                           f"({mask_kind} masks, {found}), splits {', '.join(splits)}")
    spec.update({k: v for k, v in overrides.items() if k not in ("image_dir", "mask_dir", "split_files")})
    return spec_from_dict(spec, f"dataset detected under {root}")


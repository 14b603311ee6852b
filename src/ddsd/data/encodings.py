"""Reading images and decoding masks into class ids.

Every file is opened through :func:`open_image`, which applies the EXIF orientation
(``ImageOps.exif_transpose``) so that pixels are in the displayed orientation, as image viewers and annotation
tools show them (masks too, when they carry the tag). Images come back as ``uint8 [H, W, 3]`` (grey replicated
to 3 channels, alpha dropped). Masks come back as ``uint8 [H, W]`` class ids ``0..K-1`` with void = 255, from
one of three encodings (see :class:`ddsd.data.spec.DatasetSpec`). Every problem is reported as text naming the
file and the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ddsd.data.spec import IGNORE_INDEX, DatasetSpec

Size = tuple[int, int]  # (H, W)


class ReadError(Exception):
    """A file could not be read as an image (message names the file)."""


@dataclass
class DecodedMask:
    """Class ids ``uint8 [H, W]`` (void 255), problems found, and pixels with in-between binary values."""

    ids: np.ndarray
    errors: list[str] = field(default_factory=list)
    inbetween: int = 0


EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 / 270 degrees


def open_image(path: Path) -> Image.Image:
    """Open and fully decode ``path`` (so truncated files fail here) in its displayed orientation (the EXIF
    orientation tag, if any, is applied and dropped); raises :class:`ReadError`."""
    try:
        img = Image.open(path)
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
    except FileNotFoundError:
        raise ReadError(f"{path}: file not found") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise ReadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return img


def exif_orientation(path: Path) -> int:
    """The EXIF orientation tag of ``path`` (1 = none; 2-8 = flipped / rotated), read from the header only."""
    try:
        with Image.open(path) as img:
            return int(img.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # unreadable files are reported where they are decoded
        return 1


def displayed_size(path: Path) -> Size:
    """(H, W) of ``path`` as displayed (EXIF rotation applied), from the header only; raises :class:`ReadError`."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            turned = int(img.getexif().get(EXIF_ORIENTATION, 1) or 1) in _SWAPS_AXES
    except FileNotFoundError:
        raise ReadError(f"{path}: file not found") from None
    except Exception as e:
        raise ReadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return (w, h) if turned else (h, w)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; 16/32-bit grey is rescaled to 8 bits by its maximum."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = a.max() if a.size and a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


def read_image(path: Path, size: Size | None = None) -> np.ndarray:
    """``uint8 [H, W, 3]``, resized bilinearly to ``size`` = (H, W) when given."""
    img = to_rgb(open_image(path))
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def read_mask_array(path: Path, encoding: str) -> np.ndarray:
    """Raw mask values: ``[H, W]`` (binary/index; int array) or ``[H, W, 3]`` uint8 (rgb).

    Palette PNGs give palette indices for ``index`` (VOC), their colours for ``rgb`` and
    :func:`palette_as_binary` for ``binary``; 16-bit grey masks go through :func:`sixteen_to_eight`; a 1-bit mask is
    0/255 for ``binary`` and 0/1 for ``index``. A colour mask given for ``binary`` is converted to grey; for
    ``index`` its three channels must be equal.
    """
    img = open_image(path)
    mode = img.mode
    if encoding == "rgb":
        if mode in ("RGB", "RGBA", "P", "PA", "L", "LA", "1"):
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
        return np.asarray(to_rgb(img), dtype=np.uint8)
    if mode in _SIXTEEN_BIT:
        return sixteen_to_eight(np.asarray(img))
    if mode == "1":
        a = np.asarray(img, dtype=np.uint8)
        return a * 255 if encoding == "binary" else a
    if mode == "P":
        return palette_as_binary(img, path) if encoding == "binary" else np.asarray(img, dtype=np.uint8)
    if mode == "L":
        return np.asarray(img)
    if mode in ("LA", "PA"):
        return np.asarray(img.convert("L") if mode == "LA" or encoding == "binary" else img.getchannel(0))
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if encoding == "binary":
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
        return rgb[..., 0]
    raise ReadError(f"{path}: colour ({mode}) mask, but the encoding is '{encoding}' "
                    "(use encoding: rgb with a colors map)")


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")


def sixteen_to_eight(a: np.ndarray) -> np.ndarray:
    """A 16/32-bit grey mask: values that are all multiples of 257 (0/65535 masks, 8-bit values scaled to 16)
    become 8-bit (``// 257``); values up to 255 are kept; others are returned as they are (and named by the
    decoder as values outside the classes)."""
    hi = int(a.max()) if a.size else 0
    if hi <= 255:
        return a.astype(np.uint8)
    if not (a % 257).any():
        return (a // 257).astype(np.uint8)
    return a.astype(np.int64)


def palette_as_binary(img: Image.Image, path: Path | str) -> np.ndarray:
    """A palette (mode P) mask of a binary set as grey 0..255, decided for this file alone.

    Through its palette (the grey value of each index's colour) when the colours used are grey and do not give
    0/1 only (a black/white palette gives 0/255); otherwise, when it uses indices 0 and 1 only, index 1 is the
    object (255) whatever its colour (VOC-style class-index masks). Any other palette mask raises
    :class:`ReadError` (its object pixels cannot be told apart)."""
    idx = np.asarray(img, dtype=np.uint8)
    used = np.unique(idx)
    pal = np.zeros((256, 3), dtype=np.uint8)
    raw = np.asarray(img.getpalette() or [], dtype=np.uint8).reshape(-1, 3)[:256]
    pal[: len(raw)] = raw
    colours = pal[used]
    grey = bool((colours[:, 0] == colours[:, 1]).all() and (colours[:, 0] == colours[:, 2]).all())
    if grey and not set(colours[:, 0].tolist()) <= {0, 1}:
        return pal[:, 0][idx]
    if set(used.tolist()) <= {0, 1}:
        return idx * np.uint8(255)
    if set(used.tolist()) <= {0, 255}:  # indices that are already 0/255
        return idx
    shown = ", ".join(f"{int(i)}: {tuple(int(c) for c in pal[i])}" for i in used[:6])
    raise ReadError(f"{path}: palette mask in a binary set with indices/colours {{{shown}}}: cannot tell the "
                    "object pixels (save it as a grey 0/255 mask, or as palette indices 0/1)")


def _value_list(values: np.ndarray, counts: np.ndarray, limit: int = 8) -> str:
    parts = [f"{int(v)} ({int(c)} px)" for v, c in zip(values[:limit], counts[:limit], strict=True)]
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(parts) + more


def decode_mask(raw: np.ndarray, spec: DatasetSpec, path: Path | str) -> DecodedMask:
    """Raw values (from :func:`read_mask_array`) -> class ids ``uint8 [H, W]`` with void 255."""
    k, void = spec.num_classes, spec.void_value
    if spec.encoding == "rgb":
        return _decode_rgb(raw, spec, path)
    values, counts = np.unique(raw, return_counts=True)
    if spec.encoding == "binary":
        thr = spec.binary_threshold
        ids = (raw > thr).astype(np.uint8)  # as pysodmetrics: gt > 128
        is_class = (values == 0) | (values == 255)
        is_void = values == void if void is not None else np.zeros_like(is_class)
        errors = []
        if void is not None:
            ids[raw == void] = IGNORE_INDEX
        inside = ~is_class & ~is_void
        non_void = values[~is_void]
        if non_void.size and non_void.max() == 1:
            errors.append(f"{path}: binary mask has values {{0, 1}} only (class index, not 0/255): re-save it "
                          "as 0/255, or use encoding: index if every mask is 0/1")
        elif (values > 255).any():
            bad = values > 255
            shown = _value_list(values[bad], counts[bad])
            errors.append(f"{path}: values above 255 in a binary mask: {shown}")
        return DecodedMask(ids, errors, int(counts[inside].sum()))
    # index
    known = (values >= 0) & (values < k)
    if void is not None:
        known |= values == void
    errors = []
    if not known.all():
        void_txt = f"void ({void})" if void is not None else "void (none configured)"
        errors.append(f"{path}: mask value(s) neither a class (0..{k - 1}) nor {void_txt}: "
                      f"{_value_list(values[~known], counts[~known])}")
    ids = np.full(raw.shape, IGNORE_INDEX, dtype=np.uint8)
    cls = (raw >= 0) & (raw < k)
    ids[cls] = raw[cls]
    return DecodedMask(ids, errors, 0)


def _decode_rgb(raw: np.ndarray, spec: DatasetSpec, path: Path | str) -> DecodedMask:
    code = (raw[..., 0].astype(np.int32) << 16) | (raw[..., 1].astype(np.int32) << 8) | raw[..., 2]
    values, inverse, counts = np.unique(code.ravel(), return_inverse=True, return_counts=True)
    table = {(r << 16) | (g << 8) | b: c for c, (r, g, b) in spec.colors.items()}
    table.update({(r << 16) | (g << 8) | b: IGNORE_INDEX for (r, g, b) in spec.void_colors})
    lut = np.array([table.get(int(v), -1) for v in values], dtype=np.int16)
    errors = []
    if (lut < 0).any():
        bad = np.flatnonzero(lut < 0)
        shown = [f"({v >> 16}, {(v >> 8) & 255}, {v & 255}) ({int(counts[i])} px)"
                 for i, v in ((i, int(values[i])) for i in bad[:8])]
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        errors.append(f"{path}: mask colour(s) not in the colour map: {', '.join(shown)}{more}")
        lut[bad] = IGNORE_INDEX
    ids = lut.astype(np.uint8)[inverse].reshape(code.shape)
    return DecodedMask(ids, errors, 0)


def resize_ids(ids: np.ndarray, size: Size | None) -> np.ndarray:
    """Nearest-neighbour resize of class ids ``uint8 [H0, W0]`` to ``size`` = (H, W)."""
    if size is None or ids.shape == tuple(size):
        return ids
    return np.asarray(Image.fromarray(ids).resize((size[1], size[0]), Image.Resampling.NEAREST))


def read_mask(path: Path, spec: DatasetSpec) -> DecodedMask:
    """Read and decode one mask file at its original size (raises :class:`ReadError`)."""
    return decode_mask(read_mask_array(path, spec.encoding), spec, path)

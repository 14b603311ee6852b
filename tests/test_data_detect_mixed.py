"""Mask detection never lets one file change the others' meaning: mixed kinds are reported file by file,
palette masks among grey ones are read through their palette, 16-bit masks are read as 8-bit (or named), and
``data check`` names masks that the chosen encoding turns mostly into void."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddsd.data import DataError, build_dataset, check_dataset, detect_spec, load_spec
from tests.data_helpers import VOC_PALETTE, make_camvid, make_folder_binary, save

PALETTES = {
    "black-white": [0, 0, 0, 255, 255, 255],
    "grey-ramp": None,  # Image.convert("P") of a grey image: index i has colour (i, i, i)
    "voc-colours": VOC_PALETTE,
}


def _palette_mask(values: np.ndarray, path: Path, palette: list[int] | None) -> None:
    img = Image.fromarray(values).convert("P")
    if palette is not None:
        img.putpalette(palette)
    img.save(path)
    assert Image.open(path).mode == "P"


@pytest.mark.parametrize("palette", sorted(PALETTES))
def test_one_palette_01_mask_keeps_the_binary_classes(tmp_path: Path, palette: str) -> None:
    root = make_folder_binary(tmp_path / "ds")
    m = np.zeros((12, 16), np.uint8)
    m[2:8, 3:10] = 1  # object = palette index 1
    _palette_mask(m, root / "masks" / "train01.png", PALETTES[palette])
    spec = detect_spec(root)
    assert spec.encoding == "binary" and spec.num_classes == 2, spec.description
    assert any("palette" in n and "train01.png" in n for n in spec.notes), spec.notes
    report = check_dataset(spec)
    assert report.ok, report.errors
    assert any("train01.png" in w for w in report.warnings)
    ds = build_dataset(spec, "train", cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(ds.original_mask(1), m)  # the palette mask: index 1 = object
    for i in (0, 2, 3):  # the grey 0/255 masks keep their object class (255 -> 1, never void)
        grey = np.asarray(Image.open(root / "masks" / f"train0{i}.png"))
        np.testing.assert_array_equal(ds.original_mask(i), grey // 255)
    assert report.summary["splits"]["train"]["void_share"] == 0


def test_palette_mask_that_cannot_be_read_as_binary_is_named(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    m = np.zeros((12, 16), np.uint8)
    m[2:5] = 2
    m[6:9] = 5
    _palette_mask(m, root / "masks" / "train02.png", VOC_PALETTE)
    spec = detect_spec(root)
    assert spec.encoding == "binary"
    report = check_dataset(spec)
    assert not report.ok and len(report.errors) == 1
    assert "train02.png" in report.errors[0] and "cannot tell the object pixels" in report.errors[0]


def test_sixteen_bit_masks_read_as_0_255(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    for p in sorted((root / "masks").iterdir()):
        a = np.asarray(Image.open(p)).astype(np.uint16) * 257  # 0/255 -> 0/65535
        Image.fromarray(a).save(p)
        assert Image.open(p).mode.startswith("I;16")
    spec = load_spec(str(root))
    assert spec.encoding == "binary" and spec.num_classes == 2
    assert check_dataset(spec).ok
    assert set(np.unique(build_dataset(spec, "val").original_mask(0)).tolist()) == {0, 1}


def test_sixteen_bit_values_that_are_not_8_bit_are_named(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    a = np.zeros((12, 16), np.uint16)
    a[3:6, 3:6] = 1000
    Image.fromarray(a).save(root / "masks" / "test01.png")
    with pytest.raises(DataError) as exc:
        load_spec(str(root))
    assert "test01.png" in str(exc.value) and "16-bit" in str(exc.value) and "1000" in str(exc.value)


def test_check_names_masks_turned_mostly_void(tmp_path: Path) -> None:
    root = make_camvid(tmp_path / "cv")
    save(np.full((10, 14), 4, np.uint8), root / "trainannot" / "seq_train_001.png")  # all void value 4
    spec = load_spec(str(root), void_value=4)
    report = check_dataset(spec, splits=["train"])
    assert report.ok
    hits = [w for w in report.warnings if "mostly void" in w]
    assert len(hits) == 1 and "seq_train_001.png (100%)" in hits[0] and "1 of 3 masks" in hits[0]


def test_colour_mask_among_grey_ones_is_named(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[2:6, 2:6] = (255, 255, 255)
    rgb[0, 0] = (255, 0, 0)
    save(rgb, root / "masks" / "val00.png")
    spec = detect_spec(root)
    assert spec.encoding == "binary"
    assert any("1 rgb mask(s)" in n and "val00.png" in n for n in spec.notes)


def test_one_grey_01_mask_is_named_not_turning_255_into_void(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    m = np.zeros((12, 16), np.uint8)
    m[2:8, 3:10] = 1
    save(m, root / "masks" / "train03.png")
    spec = detect_spec(root)
    assert spec.encoding == "binary"
    report = check_dataset(spec)
    assert not report.ok and len(report.errors) == 1
    assert "train03.png" in report.errors[0] and "{0, 1} only" in report.errors[0]

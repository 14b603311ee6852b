"""Layouts and mask encodings on tiny files: folder (binary), CamVid (index + void), VOC (palette), RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddsd.data import DatasetSpec, build_dataset, load_spec
from ddsd.data.encodings import decode_mask, read_mask
from ddsd.data.transforms import denormalize
from tests.data_helpers import RGB_COLORS, make_camvid, make_folder_binary, make_rgb, make_voc, save, write_split


def _spec(root: Path, **kw) -> DatasetSpec:
    return DatasetSpec(name=root.name, root=root, **kw)


def test_folder_binary_dataset(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    spec = _spec(root, layout="folder", encoding="binary", class_names=["bg", "obj"])
    assert spec.is_binary and spec.positive_class == 1 and spec.num_classes == 2
    ds = build_dataset(spec, "train", size=(8, 8), cache_dir=tmp_path / "cache")
    assert len(ds) == 4 and ds.stems == ["train00", "train01", "train02", "train03"]
    item = ds[1]
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (8, 8) and item["mask"].dtype == torch.int64
    assert set(item["mask"].unique().tolist()) <= {0, 1}
    assert item["index"] == 1 and item["stem"] == "train01"
    orig = ds.original_mask(1)
    assert orig.shape == (12, 16) and set(np.unique(orig).tolist()) == {0, 1}
    assert ds.original_size(1) == (12, 16)
    expected = np.asarray(Image.open(root / "masks" / "train01.png")) // 255
    np.testing.assert_array_equal(orig, expected)


def test_original_size_without_resize(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds", grey_images=True)
    ds = build_dataset(_spec(root, encoding="binary", class_names=["bg", "obj"]), "val")
    item = ds[0]
    assert item["image"].shape == (3, 12, 16)
    img = np.asarray(Image.open(root / "images" / "val00.png"))
    restored = denormalize(item["image"]).numpy()
    for c in range(3):  # grey replicated to 3 channels
        np.testing.assert_array_equal(restored[c], img)


def test_camvid_layout_index_void(tmp_path: Path) -> None:
    root = make_camvid(tmp_path / "cv")
    spec = _spec(root, layout="camvid", class_names=["a", "b", "c", "d"], void_value=4)
    ds = build_dataset(spec, "train", cache_dir=tmp_path / "cache")
    assert len(ds) == 3 and ds.stems[0] == "seq_train_000"
    raw = np.asarray(Image.open(root / "trainannot" / "seq_train_000.png"))
    mask = ds[0]["mask"].numpy()
    np.testing.assert_array_equal(mask[raw == 4], 255)
    np.testing.assert_array_equal(mask[raw < 4], raw[raw < 4])


def test_camvid_without_lists_uses_folders(tmp_path: Path) -> None:
    root = make_camvid(tmp_path / "cv", pair_lists=False)
    spec = _spec(root, layout="camvid", class_names=["a", "b", "c", "d"], void_value=4)
    assert len(build_dataset(spec, "val", validate=True)) == 2


def test_voc_palette_masks(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    spec = _spec(root, layout="voc", class_names=["bg", "x", "y", "z"], void_value=255)
    ds = build_dataset(spec, "val", size=(10, 12), cache_dir=tmp_path / "c")
    raw = np.asarray(Image.open(root / "SegmentationClass" / "2008_000002.png"))  # palette indices
    np.testing.assert_array_equal(ds[1]["mask"].numpy(), raw)
    assert (raw == 255).any()


def test_rgb_masks_with_colour_map(tmp_path: Path) -> None:
    root = make_rgb(tmp_path / "rgb")
    spec = _spec(root, encoding="rgb", class_names=["bg", "red", "green"],
                 colors={"bg": [0, 0, 0], "red": [255, 0, 0], 2: [0, 255, 0]}, void_colors=[[255, 255, 255]],
                 splits=["train", "val"])
    assert spec.colors == RGB_COLORS
    ds = build_dataset(spec, "train")
    rgb = np.asarray(Image.open(root / "masks" / "train_0.png"))
    mask = ds[0]["mask"].numpy()
    for c, col in RGB_COLORS.items():
        np.testing.assert_array_equal(mask[(rgb == col).all(-1)], c)
    assert (mask[-1] == 255).all()


def test_binary_threshold_and_one_bit_masks(tmp_path: Path) -> None:
    spec = _spec(tmp_path, encoding="binary", class_names=["bg", "obj"])
    raw = np.array([[0, 127, 128, 129, 255]], dtype=np.uint8)
    dec = decode_mask(raw, spec, "m.png")
    np.testing.assert_array_equal(dec.ids, [[0, 0, 0, 1, 1]])  # object = value > 128, as pysodmetrics
    assert dec.inbetween == 3 and not dec.errors
    one_bit = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")
    one_bit.save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png", spec).ids, [[0, 1], [1, 0]])
    index = _spec(tmp_path, encoding="index", class_names=["bg", "obj"])
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png", index).ids, [[0, 1], [1, 0]])


def test_binary_void_value(tmp_path: Path) -> None:
    spec = _spec(tmp_path, encoding="binary", class_names=["bg", "obj"], void_value=100)
    dec = decode_mask(np.array([[0, 100, 255, 200]], np.uint8), spec, "m.png")
    np.testing.assert_array_equal(dec.ids, [[0, 255, 1, 1]])
    assert dec.inbetween == 1


def test_isbi_polarity_positive_class_zero(tmp_path: Path) -> None:
    spec = _spec(tmp_path, encoding="binary", class_names=["membrane", "cell"], positive_class=0)
    assert spec.positive_class == 0 and spec.is_binary


def test_split_list_with_file_names_and_comments(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    write_split(root / "train.txt", ["# a comment", "train00.jpg", "", "train01"])
    ds = build_dataset(_spec(root, encoding="binary", class_names=["bg", "obj"]), "train")
    assert ds.stems == ["train00", "train01"]


def test_custom_dirs_and_split_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(2):
        save(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8), tmp_path / "Imgs" / f"a{i}.bmp")
        save(np.full((6, 6), 1, np.uint8), tmp_path / "GT" / f"a{i}.png")
    write_split(tmp_path / "lists" / "fold0.txt", ["a0", "a1"])
    spec = _spec(tmp_path, image_dir="Imgs", mask_dir="GT", split_files={"fold0": "lists/fold0.txt"},
                 splits=["fold0"], class_names=["x", "y"], encoding="index")
    assert (build_dataset(spec, "fold0")[1]["mask"] == 1).all()


def test_procedural_via_string_spec() -> None:
    ds = build_dataset("procedural", "val")
    assert len(ds) == 16 and ds[0]["image"].shape == (3, 64, 64)


@pytest.mark.parametrize("name", ["procedural", "procedural_binary"])
def test_load_spec_builtins(name: str) -> None:
    spec = load_spec(name)
    assert spec.layout == "procedural" and spec.root is None
    assert spec.num_classes == (2 if name.endswith("binary") else 4)


def test_split_list_names_with_spaces(tmp_path: Path) -> None:
    """One name per line when the whole line names a file or stem; tab-separated pairs; other lines split."""
    root = make_folder_binary(tmp_path / "ds")
    for old, new in (("train00", "my photo 1"), ("train01", "my photo 2"), ("train02", "a b")):
        (root / "images" / f"{old}.jpg").rename(root / "images" / f"{new}.jpg")
        (root / "masks" / f"{old}.png").rename(root / "masks" / f"{new}.png")
    write_split(root / "train.txt", ["my photo 1", "my photo 2.jpg", "images/a b.jpg\tmasks/a b.png", "train03"])
    ds = build_dataset(_spec(root, encoding="binary", class_names=["bg", "obj"]), "train")
    assert ds.stems == ["my photo 1", "my photo 2", "a b", "train03"]
    assert ds.samples[2].mask == root / "masks" / "a b.png"

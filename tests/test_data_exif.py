"""EXIF orientation: photos stored sideways with an orientation tag are read as displayed, in training data
(square and non-square) and in ``ddsd predict`` (the mask comes out in the displayed orientation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ddsd.data import DatasetSpec, build_dataset, check_dataset
from ddsd.data.encodings import open_image, read_image
from ddsd.predict import Predictor, predict_paths
from tests.data_helpers import save, write_split

ORIENTATION = 0x0112


def _displayed(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A black photo with a red block in its top-left quarter, and the 0/255 mask of the block."""
    img = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    img[1 : h // 2, 2 : w // 2, 0] = 255
    mask[1 : h // 2, 2 : w // 2] = 255
    return img, mask


def _save_sideways(img: np.ndarray, path: Path, orientation: int = 6) -> None:
    """Store ``img`` rotated so that a viewer applying the EXIF ``orientation`` shows ``img`` again."""
    inverse = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).transpose(inverse[orientation]).save(path, exif=exif)


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_open_image_applies_orientation(tmp_path: Path, orientation: int) -> None:
    img, _ = _displayed(10, 14)
    _save_sideways(img, tmp_path / "p.png", orientation)
    assert Image.open(tmp_path / "p.png").getexif()[ORIENTATION] == orientation
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "p.png")), img)


@pytest.mark.parametrize("hw", [(12, 20), (16, 16)], ids=["non-square", "square"])
@pytest.mark.parametrize("size", [None, (8, 8)], ids=["original", "cached"])
def test_rotated_photo_aligns_with_mask_in_training_data(tmp_path: Path, hw: tuple[int, int],
                                                         size: tuple[int, int] | None) -> None:
    root = tmp_path / "ds"
    for i in range(2):
        img, mask = _displayed(*hw)
        _save_sideways(img, root / "images" / f"p{i}.png", 6 if i == 0 else 8)
        save(mask, root / "masks" / f"p{i}.png")
    write_split(root / "train.txt", ["p0", "p1"])
    spec = DatasetSpec(name="exif", root=root, encoding="binary", class_names=["bg", "obj"], splits=["train"])
    assert check_dataset(spec).ok
    ds = build_dataset(spec, "train", size=size, cache_dir=tmp_path / "cache")
    for i in range(2):
        image, ids = ds.raw(i)
        assert ids.shape == (size or hw)
        red = image[..., 0] > 127
        if size is None:
            np.testing.assert_array_equal(red, ids == 1)
        else:  # resized: bilinear image vs nearest mask may differ on the block's edges only
            assert (red == (ids == 1)).mean() > 0.9
        assert ds.original_size(i) == hw


def test_size_mismatch_names_exif(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    img, mask = _displayed(12, 20)
    _save_sideways(img, root / "images" / "p.png")
    save(mask.T.copy(), root / "masks" / "p.png")  # drawn on the stored (sideways) pixels
    write_split(root / "train.txt", ["p"])
    report = check_dataset(DatasetSpec(name="e", root=root, encoding="binary", class_names=["bg", "obj"],
                                       splits=["train"]))
    assert not report.ok and "EXIF rotation" in report.errors[0] and "p.png" in report.errors[0]


class _RedIsObject(nn.Module):
    """Logits ``[N, 2, H, W]``: object where the (normalised) red channel is high."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x[:, :1]
        return torch.cat([-r, r], dim=1)


@pytest.mark.parametrize("hw", [(12, 20), (16, 16)], ids=["non-square", "square"])
def test_predict_mask_in_displayed_orientation(tmp_path: Path, hw: tuple[int, int]) -> None:
    img, mask = _displayed(*hw)
    _save_sideways(img, tmp_path / "in" / "photo.png")
    _save_sideways(img, tmp_path / "in" / "photo2.jpg", 8)
    np.testing.assert_array_equal(read_image(tmp_path / "in" / "photo.png"), img)
    predictor = Predictor(model=_RedIsObject(), num_classes=2, size=None,
                          colors=np.array([[0, 0, 0], [255, 0, 0]], np.uint8))
    written = predict_paths(predictor, [tmp_path / "in"], tmp_path / "out", overlay=True)
    assert len(written) == 4
    for stem in ("photo", "photo2"):
        out = np.asarray(Image.open(tmp_path / "out" / f"{stem}.png"))
        np.testing.assert_array_equal(out, mask)
        assert Image.open(tmp_path / "out" / f"{stem}_overlay.png").size == (hw[1], hw[0])

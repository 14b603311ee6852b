"""The built-in procedural set and the seeded augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ddsd.data import build_dataset, collate_keep, generate_split, load_spec
from ddsd.data.procedural import BLOB, REGION, THIN
from ddsd.data.transforms import augment, denormalize, sample_rng, to_tensor


def test_deterministic_and_seeded() -> None:
    spec = load_spec("procedural")
    a_img, a_mask = generate_split(spec, "val")
    b_img, b_mask = generate_split(spec, "val")
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    c_img, _ = generate_split(spec.model_copy(update={"seed": 1}), "val")
    assert not np.array_equal(a_img, c_img)
    t_img, _ = generate_split(spec, "test")
    assert not np.array_equal(a_img, t_img)


def test_lengths_classes_and_sizes() -> None:
    spec = load_spec("procedural")
    assert [len(build_dataset(spec, s)) for s in ("train", "val", "test")] == [64, 16, 16]
    _, masks = generate_split(spec, "train")
    share = np.bincount(masks.ravel(), minlength=4) / masks.size
    assert (share > 0.005).all() and share[0] > 0.5
    assert share[BLOB] < 0.05 and share[THIN] < 0.15  # small and thin classes are rare
    ds = build_dataset(spec, "val", size=(48, 80))
    assert ds[0]["image"].shape == (3, 48, 80) and ds.original_mask(0).shape == (48, 80)
    with pytest.raises(ValueError, match="no split 'extra'"):
        build_dataset(spec, "extra")


def _erode(m: np.ndarray) -> np.ndarray:
    """3x3 binary erosion of ``bool [N, H, W]`` (outside = False)."""
    p = np.pad(m, ((0, 0), (1, 1), (1, 1)))
    h, w = m.shape[1:]
    out = m.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out &= p[:, dy:dy + h, dx:dx + w]
    return out


def test_thin_structures_and_small_objects() -> None:
    _, masks = generate_split(load_spec("procedural"), "train")
    thin = masks == THIN
    assert thin.any(axis=(1, 2)).all()  # every image has thin structures
    # thin: a 3x3 erosion removes almost all of them; the large region mostly survives
    assert _erode(thin).sum() < 0.1 * thin.sum()
    region = masks == REGION
    assert _erode(region).sum() > 0.6 * region.sum()
    blobs = masks == BLOB
    assert blobs.any(axis=(1, 2)).mean() > 0.9
    # blobs touch the large region somewhere (small objects next to large regions)
    touching = _erode(~region)  # pixels whose 3x3 neighbourhood has no region pixel
    assert (blobs & ~touching).sum() > 0


def test_binary_variant() -> None:
    spec = load_spec("procedural_binary")
    assert spec.is_binary and spec.positive_class == 1
    ds = build_dataset(spec, "val")
    assert set(np.unique(ds.original_mask(3)).tolist()) == {0, 1}
    _, four = generate_split(load_spec("procedural"), "val")
    np.testing.assert_array_equal(ds.original_mask(3), (four[3] > 0).astype(np.uint8))


def test_augment_reproducible_and_varied() -> None:
    ds = build_dataset("procedural", "train", augment=True, seed=3)
    a, b = ds[5], ds[5]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    ds.set_epoch(1)
    c = ds[5]
    assert not torch.equal(a["image"], c["image"])
    other = build_dataset("procedural", "train", augment=True, seed=4)
    assert not torch.equal(other[5]["image"], a["image"])
    assert a["mask"].shape == (64, 64) and a["image"].shape == (3, 64, 64)
    assert set(a["mask"].unique().tolist()) <= {0, 1, 2, 3, 255}


def test_augment_geometry() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    ids = rng.integers(0, 4, (20, 30), dtype=np.uint8)
    saw_pad = False
    for i in range(30):
        out_img, out_ids = augment(img, ids, sample_rng(0, 0, i))
        assert out_img.shape == img.shape and out_ids.shape == ids.shape and out_ids.dtype == np.uint8
        assert set(np.unique(out_ids).tolist()) <= {0, 1, 2, 3, 255}
        saw_pad |= bool((out_ids == 255).any())
    assert saw_pad  # scales below 1 pad the mask with void
    # at scale 1 the result is the input or its mirror image, both seen over a few draws
    kinds = set()
    for i in range(10):
        out_img, out_ids = augment(img, ids, sample_rng(0, 0, i), scale=(1.0, 1.0))
        if np.array_equal(out_ids, ids) and np.array_equal(out_img, img):
            kinds.add("same")
        elif np.array_equal(out_ids, ids[:, ::-1]) and np.array_equal(out_img, img[:, ::-1]):
            kinds.add("flip")
        else:
            raise AssertionError("scale 1 must give the identity or the mirror image")
    assert kinds == {"same", "flip"}
    _, no_flip = augment(img, ids, sample_rng(0, 0, 0), scale=(1.0, 1.0), flip=False)
    np.testing.assert_array_equal(no_flip, ids)


def test_normalisation_roundtrip() -> None:
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = to_tensor(img)
    assert t.dtype == torch.float32 and t.shape == (3, 5, 7)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    ref = (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(t, ref)
    np.testing.assert_array_equal(denormalize(t).permute(1, 2, 0).numpy(), img)


def test_dataloader_workers_match_direct_indexing() -> None:
    ds = build_dataset("procedural_binary", "val", augment=True, seed=7)
    ds.set_epoch(2)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_keep)
    batches = list(loader)
    imgs = torch.cat([b["image"] for b in batches])
    direct = torch.stack([ds[i]["image"] for i in range(len(ds))])
    assert torch.equal(imgs, direct)
    assert batches[0]["stem"][0] == "val_00000" and batches[0]["index"].tolist() == [0, 1, 2, 3]

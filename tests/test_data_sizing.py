"""Training size from the data (``data.resize``): a folder of mixed-size photos trains with no size flag, the
choice is recorded in the run's config, evaluation stays at each mask's original resolution; pad keeps aspect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ddsd.config import RunConfig, apply_overrides
from ddsd.data import DataError, DatasetSpec, build_dataset, check_dataset, collate_keep
from ddsd.data.sizing import fit_box, pick_size, resolve_size
from tests.data_helpers import save, write_split

SIZES = [(40, 60), (60, 40), (48, 64), (36, 52), (40, 60)]  # (H, W) photos, portrait and landscape


def _mixed_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, idx in (("train", range(5)), ("val", range(3)), ("test", range(2))):
        stems = []
        for i in idx:
            h, w = SIZES[i]
            stem = f"{split}{i}"
            save(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), root / "images" / f"{stem}.jpg")
            m = np.zeros((h, w), np.uint8)
            m[h // 4 : h // 2, w // 4 : w // 2] = 255
            save(m, root / "masks" / f"{stem}.png")
            stems.append(stem)
        write_split(root / f"{split}.txt", stems)
    return root


def _spec(root: Path) -> DatasetSpec:
    return DatasetSpec(name="mixed", root=root, encoding="binary", class_names=["bg", "obj"])


def test_pick_size_rules() -> None:
    assert pick_size([(12, 16)] * 3)[0] == (12, 16)  # one size, small: kept
    assert pick_size([(3024, 4032)] * 2)[0] == (384, 512)  # phone photos: aspect kept, capped
    size, why = pick_size([(214, 320)] * 12 + [(320, 214)] * 8)  # SOD val: median aspect is landscape
    assert size == (224, 320) and "20 training images of 2 sizes" in why and "multiple of 32" in why
    assert all(s % 32 == 0 and s <= 512 for s in pick_size([(5000, 700), (4000, 900)])[0])


def test_resolve_size_policies(tmp_path: Path) -> None:
    spec = _spec(_mixed_folder(tmp_path / "ds"))
    assert resolve_size(spec, [32, 48]).size == (32, 48)
    choice = resolve_size(spec, None, "auto")
    assert choice.picked and choice.size == (32, 64) and "chosen from the data" in choice.reason
    assert resolve_size(spec, None, "pad").size == choice.size
    with pytest.raises(DataError, match=r"data\.resize=fixed needs a size"):
        resolve_size(spec, None, "fixed")
    assert resolve_size(spec.model_copy(update={"size": (8, 8)}), None, "fixed").size == (8, 8)


def test_mixed_sizes_never_reach_torch_stack(tmp_path: Path) -> None:
    ds = build_dataset(_spec(_mixed_folder(tmp_path / "ds")), "train")  # no size: original sizes
    with pytest.raises(DataError, match="images of different sizes cannot form one batch") as exc:
        collate_keep([ds[0], ds[1]])
    assert "train0 60x40" in str(exc.value) and "data.size" in str(exc.value)


def test_pad_keeps_aspect_and_pads_with_void(tmp_path: Path) -> None:
    ds = build_dataset(_spec(_mixed_folder(tmp_path / "ds")), "train", size=(32, 32), resize="pad",
                       cache_dir=tmp_path / "c")
    assert fit_box((40, 60), (32, 32), True) == (5, 0, 21, 32)
    _, ids = ds.raw(0)  # 60x40 (WxH) -> 32x21 centred, rows 0-4 and 26-31 padded
    assert ds.content_box(0) == (5, 0, 21, 32)
    assert (ids[:5] == 255).all() and (ids[26:] == 255).all() and (ids[5:26] != 255).all()
    np.testing.assert_allclose(ds[0]["image"][:, :5].numpy(), 0, atol=0.02)  # mean colour: ~0 once normalised
    assert ds.raw(1)[1].shape == (32, 32) and ds.content_box(1) == (0, 5, 32, 21)


@pytest.mark.parametrize("resize", ["auto", "pad"])
def test_mixed_size_folder_trains_without_a_size(tmp_path: Path, resize: str) -> None:
    from ddsd.engine import train
    from ddsd.engine.evaluate import evaluate

    root = _mixed_folder(tmp_path / "ds")
    out = tmp_path / f"run-{resize}"
    cfg = apply_overrides(RunConfig(), [
        f"out={json.dumps(str(out))}", f"data.name={json.dumps(str(root))}", f"data.resize={resize}",
        f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}", "train.epochs=1", "data.batch_size=2",
        "train.progress=false", "train.threads=1", "data.eval_splits=[test]", "method.name=ce"])
    assert cfg.data.size is None
    summary = train(cfg)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["size"] == [32, 64] and saved["data"]["resize"] == resize
    assert summary["test"]["num_images"] == 2
    # the score is at each mask's original resolution: the same as scoring by hand at that resolution
    from ddsd.models.loading import load_model

    model, _ = load_model(out / "checkpoints" / "best.pt")
    test = build_dataset(str(root), "test", (32, 64), resize=resize, cache_dir=tmp_path / "cache")
    seen: list[tuple[int, int]] = []
    real = test.original_mask

    def spy(i: int) -> np.ndarray:
        m = real(i)
        seen.append(m.shape)
        return m

    test.original_mask = spy  # type: ignore[method-assign]
    again = evaluate(model, test, "cpu", 2)
    assert sorted(seen) == sorted(SIZES[:2]) and again["fbeta_max"] == pytest.approx(summary["test"]["fbeta_max"])


def test_check_reports_sizes_and_training_size(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ddsd.data.cli import app

    root = _mixed_folder(tmp_path / "ds")
    report = check_dataset(_spec(root))
    t = report.summary["training_size"]
    assert t["size"] == [32, 64] and "chosen from the data" in t["reason"]
    assert report.summary["splits"]["train"]["size_range"] == {"width": [40, 60, 64], "height": [36, 40, 60]}
    res = CliRunner().invoke(app, ["check", str(root)])
    assert res.exit_code == 0, res.output
    assert "training size 32x64" in res.output and "chosen from the data" in res.output
    assert torch.is_tensor(build_dataset(_spec(root), "val", (64, 64), cache_dir=tmp_path / "c")[0]["image"])


def test_predict_pads_like_training(tmp_path: Path) -> None:
    """A checkpoint trained with data.resize=pad: predict letterboxes the image and crops the padding away."""
    from PIL import Image
    from torch import nn

    from ddsd.models import create_model
    from ddsd.predict import load_predictor

    class RedIsObject(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([-x[:, :1], x[:, :1]], dim=1)

    ckpt = tmp_path / "pad.pt"
    torch.save({"model": create_model("simple", 2).state_dict(),
                "config": {"model": {"name": "simple", "num_classes": 2},
                           "data": {"name": "no_such_dataset", "size": [32, 32], "resize": "pad"}}}, ckpt)
    predictor = load_predictor(ckpt)
    assert predictor.pad and predictor.size == (32, 32)
    predictor.model = RedIsObject()
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 30:, 0] = 255  # right quarter red; padding (mean colour) would read as red-ish if not cropped
    ids, _ = predictor.predict(img)
    assert ids.shape == (20, 40)
    np.testing.assert_array_equal(ids[:, 31:], 1)
    np.testing.assert_array_equal(ids[:, :29], 0)
    assert Image.fromarray(predictor.mask_png(ids)).size == (40, 20)

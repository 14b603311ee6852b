"""ddsd predict: masks from a checkpoint, same preprocessing as training, errors before writing, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from PIL import Image
from typer.testing import CliRunner

from ddsd.data.encodings import read_image
from ddsd.data.transforms import to_tensor
from ddsd.models import create_model
from ddsd.predict import (
    PredictError,
    UnreadableImagesError,
    collect_inputs,
    load_predictor,
    predict_command,
    predict_paths,
)


def _checkpoint(path: Path, k: int = 2, data: str = "procedural_binary", size: list[int] | None = None) -> Path:
    torch.manual_seed(0)
    m = create_model("simple", k)
    torch.save({"model": m.state_dict(),
                "config": {"model": {"name": "simple", "num_classes": k}, "data": {"name": data, "size": size}}}, path)
    return path


@pytest.fixture
def binary_ckpt(tmp_path: Path) -> Path:
    return _checkpoint(tmp_path / "binary.pt", 2, "procedural_binary", [32, 32])


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A folder with an RGB PNG (40x30), a grey PNG (37x53, odd) and a JPEG (24x24)."""
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(d / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (53, 37), dtype=np.uint8), mode="L").save(d / "grey.png")
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(d / "photo.jpg")
    (d / "notes.txt").write_text("not an image, and not picked up from a folder")
    return d


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("predict")(predict_command)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps "predict" as a sub-command name, as in the real CLI
        """Nothing."""

    return app


def test_binary_masks_have_input_size_and_binary_values(binary_ckpt: Path, images: Path, tmp_path: Path) -> None:
    predictor = load_predictor(binary_ckpt)
    assert predictor.is_binary and predictor.positive_class == 1 and predictor.size == (32, 32)
    out = tmp_path / "out"
    written = predict_paths(predictor, [images], out, save_probs=True, overlay=True)
    assert [p.name for p in written] == ["grey.png", "grey_prob.png", "grey_overlay.png",
                                         "photo.png", "photo_prob.png", "photo_overlay.png",
                                         "rgb.png", "rgb_prob.png", "rgb_overlay.png"]
    sizes = {"grey": (53, 37), "photo": (24, 24), "rgb": (30, 40)}
    for stem, hw in sizes.items():
        mask = Image.open(out / f"{stem}.png")
        assert mask.mode == "L" and mask.size == (hw[1], hw[0])
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
        prob = Image.open(out / f"{stem}_prob.png")
        assert prob.mode == "L" and prob.size == mask.size
        ov = Image.open(out / f"{stem}_overlay.png")
        assert ov.mode == "RGB" and ov.size == mask.size
        # the mask is the thresholded probability (K = 2: argmax == positive <=> p > 0.5)
        p, m = np.asarray(prob).astype(int), np.asarray(mask)
        assert ((p > 128) <= (m == 255)).all() and ((p < 127) <= (m == 0)).all()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_predict_matches_training_preprocessing(binary_ckpt: Path, images: Path) -> None:
    predictor = load_predictor(binary_ckpt)
    for name in ("grey.png", "rgb.png"):
        path = images / name
        ids, probs = predictor.predict(read_image(path))
        h, w = ids.shape
        assert ids.dtype == np.uint8 and probs.dtype == np.float32 and probs.shape == (2, h, w)
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
        # the training pipeline: read_image at the training size (Pillow bilinear), ImageNet normalisation
        model = create_model("simple", 2)
        model.load_state_dict(torch.load(binary_ckpt, weights_only=True)["model"])
        with torch.no_grad():
            z = model.eval()(to_tensor(read_image(path, (32, 32)))[None])
        z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
        np.testing.assert_array_equal(ids, z[0].argmax(0).numpy().astype(np.uint8))
        np.testing.assert_allclose(probs, torch.softmax(z[0], 0).numpy(), atol=1e-5)


def test_predict_accepts_grey_and_rejects_bad_arrays(binary_ckpt: Path) -> None:
    predictor = load_predictor(binary_ckpt)
    grey = np.random.default_rng(1).integers(0, 256, (37, 53), dtype=np.uint8)
    ids, probs = predictor.predict(grey)
    ids3, _ = predictor.predict(np.repeat(grey[..., None], 3, axis=2))
    assert ids.shape == (37, 53) and probs.shape == (2, 37, 53)
    np.testing.assert_array_equal(ids, ids3)
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(grey.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        predictor.predict(np.zeros((4, 4, 2), dtype=np.uint8))


def test_multiclass_class_ids_at_dataset_default_size(tmp_path: Path, images: Path) -> None:
    ckpt = _checkpoint(tmp_path / "mc.pt", 4, "procedural", None)
    predictor = load_predictor(ckpt)
    assert predictor.num_classes == 4 and predictor.size == (64, 64)  # data.size None: the dataset's size
    assert predictor.class_names == ["background", "region", "thin", "blob"]
    out = tmp_path / "mc"
    written = predict_paths(predictor, [images / "rgb.png", images / "photo.jpg"], out, save_probs=True, overlay=True)
    assert [p.name for p in written] == ["rgb.png", "rgb_prob.png", "rgb_overlay.png",
                                         "photo.png", "photo_prob.png", "photo_overlay.png"]
    assert np.asarray(Image.open(out / "photo_overlay.png")).shape == (24, 24, 3)
    ids = np.asarray(Image.open(out / "rgb.png"))
    assert ids.shape == (30, 40) and Image.open(out / "rgb.png").mode == "L"
    assert ids.max() < 4
    expected, _ = predictor.predict(read_image(images / "rgb.png"))
    np.testing.assert_array_equal(ids, expected)


def test_unknown_dataset_uses_defaults_and_original_size(tmp_path: Path) -> None:
    predictor = load_predictor(_checkpoint(tmp_path / "u.pt", 3, "no_such_dataset", None))
    assert predictor.size is None and predictor.class_names == ["class_0", "class_1", "class_2"]
    ids, probs = predictor.predict(np.full((20, 28, 3), 100, dtype=np.uint8))
    assert ids.shape == (20, 28) and probs.shape == (3, 20, 28) and ids.max() < 3


def test_cli_writes_masks_and_summary(binary_ckpt: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    res = CliRunner().invoke(_app(), ["predict", "--checkpoint", str(binary_ckpt), str(images / "rgb.png"),
                                      str(images / "grey.png"), "--out", str(out), "--overlay"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["grey.png", "grey_overlay.png", "rgb.png", "rgb_overlay.png"]
    assert "2 predicted" in res.output


def test_cli_needs_an_input(binary_ckpt: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(_app(), ["predict", "--checkpoint", str(binary_ckpt), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2


def test_missing_or_incomplete_checkpoint(tmp_path: Path, images: Path) -> None:
    out = tmp_path / "o"
    res = CliRunner().invoke(_app(), ["predict", "-c", str(tmp_path / "nope.pt"), str(images), "-o", str(out)])
    assert res.exit_code == 2 and "checkpoint not found" in res.output and "nope.pt" in res.output
    assert not out.exists()
    bad = tmp_path / "bad.pt"
    torch.save({"model": create_model("simple", 2).state_dict(), "config": {"model": {"name": "simple"}}}, bad)
    with pytest.raises(PredictError, match=r"bad\.pt is missing key config\['model'\]\['num_classes'\]"):
        load_predictor(bad)
    wrong = _checkpoint(tmp_path / "wrong.pt", 2)
    state = torch.load(wrong, weights_only=True)
    state["config"]["model"]["num_classes"] = 3
    torch.save(state, wrong)
    with pytest.raises(PredictError, match="weights do not match"):
        load_predictor(wrong)


def test_unreadable_image_reported_after_good_ones(binary_ckpt: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    notes = images / "notes.txt"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(UnreadableImagesError) as info:
        predict_paths(load_predictor(binary_ckpt), [images / "rgb.png", notes, broken], out)
    assert [p.name for p in info.value.written] == ["rgb.png"] and info.value.done == 1
    assert len(info.value.errors) == 2 and "notes.txt" in str(info.value) and "broken.png" in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == ["rgb.png"]
    res = CliRunner().invoke(_app(), ["predict", "-c", str(binary_ckpt), str(notes), str(images / "grey.png"),
                                      "-o", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "notes.txt" in res.output and "1 predicted, 1 failed" in res.output
    assert (tmp_path / "o2" / "grey.png").is_file()


def test_duplicate_stems_and_missing_inputs_fail_before_writing(binary_ckpt: Path, images: Path,
                                                                  tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(other / "rgb.jpg")
    out = tmp_path / "o"
    predictor = load_predictor(binary_ckpt)
    with pytest.raises(PredictError, match="would both write") as info:
        predict_paths(predictor, [images, other / "rgb.jpg"], out)
    assert "rgb.png" in str(info.value) and "rgb.jpg" in str(info.value)
    assert not out.exists()
    # "<a>_prob" of one input clashes with the mask of an input called "<a>_prob"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(other / "rgb_prob.png")
    with pytest.raises(PredictError, match="would both write"):
        predict_paths(predictor, [images / "rgb.png", other / "rgb_prob.png"], out, save_probs=True)
    predict_paths(predictor, [images / "rgb.png", other / "rgb_prob.png"], out)  # fine without --probs
    with pytest.raises(PredictError, match="would overwrite an input"):
        predict_paths(predictor, [images / "rgb.png"], images)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictError) as info:
        collect_inputs([tmp_path / "missing.png", tmp_path / "empty", images])
    assert "missing.png: no such file" in str(info.value) and "empty: folder holds no images" in str(info.value)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(other / "RGB.bmp")
    with pytest.raises(PredictError, match="would both write"):  # case-insensitive file systems
        predict_paths(predictor, [images / "rgb.png", other / "RGB.bmp"], tmp_path / "o4")
    res = CliRunner().invoke(_app(), ["predict", "-c", str(binary_ckpt), str(images), str(other / "rgb.jpg"),
                                      "-o", str(tmp_path / "o3")])
    assert res.exit_code == 2 and "would both write" in res.output
    assert not (tmp_path / "o3").exists()

"""Hugging Face SegFormer as student and teacher (extra ``hf``): presets, training, distillation, local weights
(save_pretrained folders and state-dict files), ONNX export, bf16 autocast, and the missing-extra message."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ddsd.cli import app
from ddsd.models import MissingExtraError, build_model, count_parameters, create_model, load_teacher, to_logits
from ddsd.models.loading import load_model
from ddsd.models.segformer import PRESETS

transformers = pytest.importorskip("transformers")

TINY = {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "decoder_hidden_size": 32,
        "num_attention_heads": [1, 1, 1, 1]}
TINY_YAML = "model.kwargs={hidden_sizes: [8, 16, 24, 32], depths: [1, 1, 1, 1], decoder_hidden_size: 32, " \
            "num_attention_heads: [1, 1, 1, 1]}"
COMMON = ["--size", "32x32", "--batch-size", "16", "--threads", "1", "--no-progress", "--set", "data.eval_splits=[]"]


def _train(*args: str) -> str:
    r = CliRunner().invoke(app, ["train", *args, *COMMON], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    """A tiny SegFormer trained one epoch on the built-in data (4 classes), in bf16 autocast (AMP as for built-ins)."""
    root = tmp_path_factory.mktemp("seg")
    _train("--method", "ce", "--data", "builtin", "--model", "segformer_b0", "--set", TINY_YAML, "--epochs", "1",
           "--amp", "bf16", "--out", str(root / "run"))
    return root


def test_presets_are_the_official_configs() -> None:
    wide = [64, 128, 320, 512]
    assert {k: (v["hidden_sizes"], v["depths"], v["decoder_hidden_size"]) for k, v in PRESETS.items()} == {
        "b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256), "b1": (wide, [2, 2, 2, 2], 256),
        "b2": (wide, [3, 4, 6, 3], 768), "b3": (wide, [3, 4, 18, 3], 768), "b4": (wide, [3, 8, 27, 3], 768),
        "b5": (wide, [3, 6, 40, 3], 768)}
    b0 = create_model("segformer_b0", 150)
    assert b0.config.num_attention_heads == [1, 2, 5, 8] and b0.config.sr_ratios == [8, 4, 2, 1]
    assert count_parameters(b0) == 3_752_694  # nvidia/segformer-b0-finetuned-ade-512-512: 3.75M
    out = b0(torch.randn(1, 3, 64, 96))
    assert out.logits.shape == (1, 150, 16, 24) and to_logits(out, (64, 96)).shape == (1, 150, 64, 96)
    with pytest.raises(ValueError, match=r"unknown SegFormer setting\(s\) 'hidden_size'"):
        create_model("segformer_b0", 2, hidden_size=[1])


def test_train_eval_and_checkpoint(seg_run: Path) -> None:
    model, cfg = load_model(seg_run / "run/checkpoints/best.pt")
    assert cfg["model"]["name"] == "segformer_b0" and cfg["model"]["kwargs"] == TINY
    assert type(model).__name__ == "SegformerForSemanticSegmentation"
    summary = json.loads((seg_run / "run/summary.json").read_text())
    assert 0.0 <= summary["miou"] <= 1.0


def test_distil_a_segformer_teacher_into_simple(seg_run: Path, tmp_path: Path) -> None:
    teacher = seg_run / "run/checkpoints/best.pt"
    t = load_teacher(teacher, autocast_dtype=torch.bfloat16)
    assert t(torch.randn(2, 3, 32, 32), size=(32, 32)).dtype == torch.float32
    _train("--method", "ddsd", "--data", "builtin", "--model", "simple", "--teacher", str(teacher), "--teacher-amp",
           "bf16", "--teacher-cache", str(tmp_path / "cache"), "--epochs", "1", "--out", str(tmp_path / "ddsd"))
    assert json.loads((tmp_path / "ddsd/summary.json").read_text())["model"] == "simple"


def test_save_pretrained_round_trip_and_spec_teacher(seg_run: Path, tmp_path: Path) -> None:
    model, _ = load_model(seg_run / "run/checkpoints/best.pt")
    model.save_pretrained(tmp_path / "hf")
    logs: list[str] = []
    again, kw = build_model("segformer_b0", 4, weights=tmp_path / "hf", log=logs.append)
    assert kw["hidden_sizes"] == TINY["hidden_sizes"]  # the architecture comes from config.json
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    # another class count: a new head, said in the log
    out = _train("--method", "ce", "--data", "procedural_binary", "--model", "segformer_b0", "--model-weights",
                 str(tmp_path / "hf"), "--epochs", "1", "--out", str(tmp_path / "bin"))
    assert "new head for 2 classes" in " ".join(out.split())
    saved = load_model(tmp_path / "bin/checkpoints/last.pt")[1]["model"]
    assert saved["kwargs"]["hidden_sizes"] == TINY["hidden_sizes"] and saved["weights"] == str(tmp_path / "hf")
    # a teacher given as spec + local weights
    _train("--method", "kd", "--data", "builtin", "--teacher", "segformer_b0", "--teacher-weights",
           str(tmp_path / "hf"), "--epochs", "1", "--out", str(tmp_path / "kd"))
    r = CliRunner().invoke(app, ["train", "--method", "kd", "--data", "procedural_binary", "--teacher", "segformer_b0",
                                 "--teacher-weights", str(tmp_path / "hf"), "--out", str(tmp_path / "bad"), *COMMON])
    assert r.exit_code == 2 and "another class count" in " ".join(r.output.split())


def test_state_dict_file_and_encoder_only_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = create_model("segformer_b0", 3, **TINY)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    logs: list[str] = []
    m, _ = build_model("segformer_b0", 5, TINY, weights=tmp_path / "w.pt", log=logs.append)
    assert any("new head for 5 classes" in line for line in logs)
    key = "segformer.encoder.patch_embeddings.0.proj.weight"
    sd = m.state_dict()
    key = key if key in sd else next(k for k in sd if k.endswith("proj.weight"))
    assert torch.equal(sd[key], src.state_dict()[key])
    enc = transformers.SegformerModel(transformers.SegformerConfig(**TINY))
    enc.save_pretrained(tmp_path / "mit")
    logs.clear()
    m, _ = build_model("segformer_b0", 2, weights=tmp_path / "mit", log=logs.append)
    assert any("missing" in line and "decode_head" in line for line in logs)
    with pytest.raises(ValueError, match="have other shapes"):
        build_model("segformer_b0", 2, {"hidden_sizes": [8, 16, 24, 40]}, weights=tmp_path / "mit")


def test_onnx_export_checked_in_onnxruntime(seg_run: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["export", "-c", str(seg_run / "run/checkpoints/best.pt"), "-o",
                                 str(tmp_path / "seg.onnx"), "--size", "40x56", "--dynamic"])
    assert r.exit_code == 0, r.output
    import onnxruntime as ort

    model, _ = load_model(seg_run / "run/checkpoints/best.pt")
    x = torch.randn(2, 3, 48, 72)
    sess = ort.InferenceSession(str(tmp_path / "seg.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = to_logits(model(x), (48, 72)).numpy()
    assert got.shape == (2, 4, 48, 72) and np.abs(got - ref).max() < 1e-4


def test_bf16_autocast_forward_on_cpu() -> None:
    model = create_model("segformer_b0", 3, **TINY).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        ref = to_logits(model(x), (32, 48))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = to_logits(model(x), (32, 48))
    assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()
    assert (low.float().argmax(1) == ref.argmax(1)).float().mean() > 0.9


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(MissingExtraError, match=r"ddsd\[hf\]"):
        create_model("segformer_b0", 2)
    r = CliRunner().invoke(app, ["models", "--size", "16x16", "--models", "simple,segformer_b1", "--no-latency"],
                           env={"COLUMNS": "250"})
    assert r.exit_code == 0 and "ddsd[hf]" in r.output

"""The user's own model through ``--model package.module:factory`` and ``ddsd.models`` plug-ins: trained, resumed,
evaluated, predicted, exported and used as a teacher, all from what the checkpoint records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ddsd.cli import app
from ddsd.engine import load_checkpoint
from ddsd.engine.rundir import read_metrics
from ddsd.models import ModelSpecError, build_model, create_model, entry_point_models, get_factory, to_logits
from tests.user_models import PLUGINS, SPEC, SRC, user_package_on_path

COMMON = ["--data", "builtin", "--size", "32x32", "--batch-size", "16", "--threads", "1", "--no-progress",
          "--set", "data.eval_splits=[]"]


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """A ``ce`` run of the user's model (dict output with an auxiliary head weighted 0.4, logits at 1/2)."""
    root = tmp_path_factory.mktemp("user")
    with user_package_on_path():
        r = CliRunner().invoke(app, ["train", "--method", "ce", "--model", SPEC, "--epochs", "1", "--out",
                                     str(root / "run"), "--set", "model.kwargs={width: 6}",
                                     "--set", "model.aux_weight=0.4", *COMMON])
        assert r.exit_code == 0, r.output
        yield root


def test_checkpoint_records_how_to_rebuild(user_run: Path) -> None:
    cfg = load_checkpoint(user_run / "run/checkpoints/last.pt")["config"]["model"]
    assert cfg["name"] == SPEC and cfg["kwargs"] == {"width": 6} and cfg["num_classes"] == 4
    assert cfg["in_channels"] == 3 and cfg["aux_weight"] == 0.4


def test_resume_eval_predict_export(user_run: Path, tmp_path: Path) -> None:
    run = user_run / "run"
    with user_package_on_path():
        runner = CliRunner()
        r = runner.invoke(app, ["train", "--method", "ce", "--model", SPEC, "--epochs", "2", "--out", str(run),
                                "--resume", "--set", "model.kwargs={width: 6}", "--set", "model.aux_weight=0.4",
                                *COMMON])
        assert r.exit_code == 0, r.output
        assert [int(row["epoch"]) for row in read_metrics(run / "metrics.csv")] == [1, 2]  # 1-based epochs
        r = runner.invoke(app, ["eval", "--checkpoint", str(run / "checkpoints/best.pt"), "--split", "val",
                                "--json", str(tmp_path / "m.json")])
        assert r.exit_code == 0, r.output
        summary = json.loads((run / "summary.json").read_text())
        assert json.loads((tmp_path / "m.json").read_text())["miou"] == pytest.approx(summary["best_val"]["miou"])
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)).save(tmp_path / "a.png")
        r = runner.invoke(app, ["predict", "-c", str(run / "checkpoints/best.pt"), str(tmp_path / "a.png"),
                                "-o", str(tmp_path / "pred")])
        assert r.exit_code == 0, r.output
        assert np.asarray(Image.open(tmp_path / "pred/a.png")).shape == (30, 41)  # low-res logits upsampled
        r = runner.invoke(app, ["export", "-c", str(run / "checkpoints/best.pt"), "-o", str(tmp_path / "u.onnx"),
                                "--dynamic"])
        assert r.exit_code == 0, r.output
        import onnxruntime as ort

        sess = ort.InferenceSession(str(tmp_path / "u.onnx"), providers=["CPUExecutionProvider"])
        assert sess.run(None, {"image": np.zeros((2, 3, 33, 47), np.float32)})[0].shape == (2, 4, 33, 47)


def test_user_model_as_teacher(user_run: Path) -> None:
    with user_package_on_path():
        r = CliRunner().invoke(app, ["train", "--method", "kd", "--epochs", "1", "--out", str(user_run / "kd"),
                                     "--teacher", str(user_run / "run/checkpoints/best.pt"), "--teacher-amp", "bf16",
                                     "--teacher-cache", str(user_run / "cache"), *COMMON])
        assert r.exit_code == 0, r.output
    assert any((user_run / "cache").rglob("*.pt"))


def test_missing_module_is_named(user_run: Path) -> None:
    """Without the user's package importable, eval says which module is missing, the spec and PYTHONPATH."""
    env = {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "ddsd", "eval", "--checkpoint",
                        str(user_run / "run/checkpoints/last.pt")], capture_output=True, text=True, env=env,
                       timeout=120, cwd=user_run)
    assert r.returncode == 2, r.stdout + r.stderr
    msg = " ".join((r.stdout + r.stderr).split())
    assert "ddsd_test_models" in msg and SPEC in msg and "PYTHONPATH" in msg


def test_spec_errors() -> None:
    with pytest.raises(ModelSpecError, match=r"unknown model 'nope'.*package\.module:factory"):
        get_factory("nope")
    with pytest.raises(ModelSpecError, match="no attribute 'missing'"):
        get_factory("ddsd.models.simple:missing")
    with pytest.raises(ModelSpecError, match=r"not an nn\.Module"):
        create_model("builtins:str", 2)
    with user_package_on_path():
        with pytest.raises(ValueError, match="unexpected keyword argument 'depth'"):
            create_model(SPEC, 2, depth=3)
        model, _ = build_model(SPEC, 3, {"output": "hf"})
        assert to_logits(model(torch.randn(1, 3, 9, 10)), (9, 10)).shape == (1, 3, 9, 10)


def test_entry_point_plugin_is_listed_and_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "ddsd_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ddsd-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[ddsd.models]\nTiny-FCN = {SPEC}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with user_package_on_path():
        assert "tiny_fcn" in entry_point_models()
        assert create_model("tiny-fcn", 3)(torch.randn(1, 3, 8, 8))["out"].shape == (1, 3, 4, 4)
        r = CliRunner().invoke(app, ["models", "--size", "16x16", "--models", "simple,tiny_fcn", "--no-latency"],
                               env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "tiny_fcn" in r.output and "plug-in" in r.output and "built-in" in r.output


def test_compare_grid_varies_the_student(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["compare", "--methods", "ce,kd", "--datasets", "builtin", "--seeds", "0",
                                 "--models", f"simple,{SPEC}", "--teacher", "t.pt", "--out", str(tmp_path / "c"),
                                 "--plan"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stdout.splitlines() if " train " in line]
    assert len(lines) == 4
    assert sum(f"model.name={SPEC}" in line for line in lines) == 2
    assert {Path(line.split("--out ")[1].split()[0]).parent.name for line in lines} == {
        "ce+simple", "kd+simple", "ce+tiny_fcn", "kd+tiny_fcn"}
    assert json.loads((tmp_path / "c/compare.json").read_text())["baseline"] == "ce+simple"
    assert PLUGINS.is_dir()

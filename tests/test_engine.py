import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ddsd.cli import app
from ddsd.config import ConfigError, RunConfig, apply_overrides, load_config
from ddsd.engine import CheckpointError, RunExistsError, load_checkpoint, save_checkpoint, train
from ddsd.engine.rundir import read_metrics
from ddsd.engine.trainer import build_lr_lambda


def tiny_cfg(out, method="ddsd", epochs=2, data="procedural_binary", **extra) -> RunConfig:
    overrides = [
        f"out={json.dumps(str(out))}", f"method.name={method}", f"train.epochs={epochs}", f"data.name={data}",
        "data.size=[32, 32]", "data.batch_size=16", "train.progress=false", "train.threads=1", "data.eval_splits=[]",
    ] + [f"{k}={json.dumps(v)}" for k, v in extra.items()]
    return apply_overrides(RunConfig(), overrides)


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("method", ["ce", "kd", "ls", "tfkd", "static", "ohem", "cwd", "ddsd"])
def test_every_method_trains_through_the_engine(tmp_path, method):
    summary = train(tiny_cfg(tmp_path / method, method, epochs=3))
    run = tmp_path / method
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.pt").is_file()
    assert (run / "checkpoints" / "best.pt").is_file()
    saved = json.loads((run / "summary.json").read_text())
    for key in ("fbeta_max", "mae", "s_measure", "iou", "boundary_iou", "wall_time_s", "best_val"):
        assert key in saved
    assert 0.0 <= summary["fbeta_max"] <= 1.0
    rows = read_metrics(run / "metrics.csv")
    assert len(rows) == 3 and {"train_loss", "rate", "val_fbeta_max", "train_kept_fraction"} <= set(rows[0])
    # the student learns: its cross-entropy on the training batches goes down
    assert float(rows[-1]["train_ce"]) < float(rows[0]["train_ce"])
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_multiclass_summary_keys_and_snapshots(tmp_path):
    summary = train(tiny_cfg(tmp_path / "mc", "ddsd", epochs=4, data="procedural", **{"train.snapshots": 3}))
    names = sorted(p.name for p in (tmp_path / "mc/snapshots").iterdir())
    assert names == ["epoch_001.npz", "epoch_002.npz", "epoch_004.npz"]  # epochs are 1-based everywhere
    from ddsd.engine.snapshots import load_snapshot

    snap = load_snapshot(tmp_path / "mc/snapshots/epoch_002.npz")
    assert int(snap["epoch"]) == 2
    assert snap["image"].shape == (3, 32, 32, 3) and snap["keep"].dtype == bool
    assert snap["difficulty"].shape == snap["mask"].shape == snap["pred"].shape == (3, 32, 32)
    valid = snap["mask"] != 255
    assert not (snap["keep"] & ~valid).any() and 0.0 <= float(snap["rate"]) < 1.0
    assert {"miou", "pixel_acc", "per_class_iou", "boundary_iou"} <= set(summary)
    assert isinstance(summary["per_class_iou"], dict)
    cfg = (tmp_path / "mc" / "config.yaml").read_text()
    assert "torch_version" in cfg and "git_commit" in cfg and "seed: 0" in cfg


def test_resume_gives_the_same_weights_and_metrics(tmp_path, monkeypatch):
    full = train(tiny_cfg(tmp_path / "full", epochs=3))
    import ddsd.engine.trainer as trainer

    calls = []
    real = trainer.evaluate

    def crash_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(tmp_path / "part", epochs=3))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "part/checkpoints/last.pt")["epoch"] == 1
    resumed = train(tiny_cfg(tmp_path / "part", epochs=3), resume=True)
    a, b = _weights(tmp_path / "full/checkpoints/last.pt"), _weights(tmp_path / "part/checkpoints/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["fbeta_max"] == full["fbeta_max"] and resumed["mae"] == full["mae"]
    rows_full = read_metrics(tmp_path / "full/metrics.csv")
    rows_part = read_metrics(tmp_path / "part/metrics.csv")
    assert [r["val_fbeta_max"] for r in rows_full] == [r["val_fbeta_max"] for r in rows_part]
    assert [r["rate"] for r in rows_full] == [r["rate"] for r in rows_part]


def test_existing_run_is_not_overwritten(tmp_path):
    train(tiny_cfg(tmp_path / "r", epochs=1))
    with pytest.raises(RunExistsError, match="finished run"):
        train(tiny_cfg(tmp_path / "r", epochs=1))


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch(tmp_path):
    """Kill the training process (SIGKILL) during epoch 2, resume: same final weights as a clean run."""
    # 6 epochs and a kill as soon as epoch 1's checkpoint exists: the kill lands mid-run however fast training is
    common = ["--data", "procedural_binary", "--size", "48x48", "--batch-size", "4", "--epochs", "6",
              "--threads", "1", "--no-progress", "--set", "data.eval_splits=[]"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    clean = subprocess.run([sys.executable, "-m", "ddsd", "train", "--out", str(tmp_path / "clean"), *common],
                           capture_output=True, text=True, env=env)
    assert clean.returncode == 0, clean.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "ddsd", "train", "--out", str(run), *common],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.05)  # now inside epoch 2
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(last)  # the last good checkpoint is loadable
    assert 1 <= state["epoch"] < 6
    r = subprocess.run([sys.executable, "-m", "ddsd", "train", "--out", str(run), "--resume", *common],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    a, b = _weights(tmp_path / "clean/checkpoints/last.pt"), _weights(last)
    assert all(torch.equal(a[k], b[k]) for k in a)
    s1 = json.loads((tmp_path / "clean/summary.json").read_text())
    s2 = json.loads((run / "summary.json").read_text())
    assert s1["fbeta_max"] == s2["fbeta_max"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"], "no temp file left behind"
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_network_teacher_and_eval_cli(tmp_path):
    train(tiny_cfg(tmp_path / "teacher", "ce", epochs=1))
    teacher = tmp_path / "teacher/checkpoints/best.pt"
    s = train(tiny_cfg(tmp_path / "student", "kd", epochs=1, teacher=str(teacher)))
    assert "fbeta_max" in s
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "student/checkpoints/best.pt"), "--split", "val",
                            "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["fbeta_max"] == pytest.approx(s["best_val"]["fbeta_max"], abs=1e-9)
    r = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "nope.pt")])
    assert r.exit_code == 2 and "not found" in r.output


def test_train_cli_and_config_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    r = runner.invoke(app, ["train", "--data", "procedural_binary", "--size", "32x32", "--epochs", "1",
                            "--out", str(out), "--no-progress", "--set", "data.eval_splits=[]", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert (out / "summary.json").is_file()
    r = runner.invoke(app, ["train", "--out", str(out), "--epochs", "1", "--no-progress"])
    assert r.exit_code == 2 and "finished run" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("method:\n  name: ddsd\n  r_maxx: 0.3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'method.r_maxx'.*"):
        load_config(bad)
    r = runner.invoke(app, ["train", "--config", str(bad)])
    assert r.exit_code == 2 and "r_maxx" in r.output and "bad.yaml" in r.output
    r = runner.invoke(app, ["train", "--method", "magic", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "magic" in r.output
    with pytest.raises(ConfigError, match="lr"):
        apply_overrides(RunConfig(), ["optim.lr=-1"])


def test_lr_lambda_shapes():
    f = build_lr_lambda("poly", 100, 10, 0.9)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(100) == pytest.approx(0.0)
    g = build_lr_lambda("cosine", 100, 0)
    assert g(50) == pytest.approx(0.5)
    assert build_lr_lambda("constant", 10, 0)(7) == 1.0


def test_shipped_configs_validate():
    root = Path(__file__).resolve().parents[1] / "configs"
    for path in root.rglob("*.yaml"):
        if path.parent.name != "data":
            load_config(path)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_on_cpu(tmp_path, amp):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(tiny_cfg(tmp_path / amp, "ddsd", epochs=1, **{"train.amp": amp}))
    assert 0.0 <= summary["fbeta_max"] <= 1.0 and summary["mae"] == summary["mae"]
    # fp16's scaler skips its first steps (inf gradients): torch's scheduler-order warning is not passed on
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]


def test_resume_refuses_other_settings_and_saves_resolved_config(tmp_path):
    train(tiny_cfg(tmp_path / "r", epochs=1, **{"data.size": None}))
    saved = load_checkpoint(tmp_path / "r/checkpoints/last.pt")["config"]
    assert saved["data"]["size"] == [64, 64]  # the dataset's default size, resolved and saved
    assert saved["dataset"]["positive_class"] == 1 and saved["dataset"]["class_names"][1] == "object"
    (tmp_path / "r/summary.json").unlink()
    with pytest.raises(ConfigError, match=r"method.r_max: 0.3 -> 0.5"):
        train(tiny_cfg(tmp_path / "r", epochs=2, **{"data.size": None, "method.r_max": 0.5}), resume=True)
    assert train(tiny_cfg(tmp_path / "r", epochs=2, **{"data.size": None}), resume=True)["epochs"] == 2


def test_teacher_only_for_methods_that_use_one_and_overwrite_safety(tmp_path):
    with pytest.raises(ValueError, match="does not use a network teacher"):
        train(tiny_cfg(tmp_path / "t", "ls", epochs=1, teacher=str(tmp_path / "x.pt")))
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "thesis.tex").write_text("do not delete")
    r = CliRunner().invoke(app, ["train", "--out", str(keep), "--overwrite", "--epochs", "1", "--no-progress"])
    assert r.exit_code == 2 and "refuses to delete" in r.output
    assert (keep / "thesis.tex").is_file()


def test_eval_reproduces_the_training_val_miou(tmp_path):
    s = train(tiny_cfg(tmp_path / "mc", "ddsd", epochs=1, data="builtin"))
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(tmp_path / "mc/checkpoints/best.pt"), "--split", "val",
                                 "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["miou"] == pytest.approx(s["best_val"]["miou"], abs=1e-12)
    assert m["per_class_iou"] == s["best_val"]["per_class_iou"]


def test_default_ddsd_rate_falls_on_the_builtin_data(tmp_path):
    """The quickstart's promise (README): with the default settings the dropout rate starts at r_max and falls
    as the student closes its accuracy gap (it must not sit at r_max, as the absolute rule did)."""
    from ddsd.engine.rundir import read_metrics

    cfg = apply_overrides(RunConfig(), [f"out={json.dumps(str(tmp_path / 'q'))}", "train.epochs=4",
                                        "train.progress=false", "train.threads=1", "data.eval_splits=[]"])
    train(cfg)
    rates = [float(row["rate"]) for row in read_metrics(tmp_path / "q" / "metrics.csv")]
    assert rates[0] <= cfg.method.r_max and rates[-1] < rates[0] - 0.02, rates


def test_epoch_stats_leave_out_non_finite_steps():
    """metrics.csv's train_* means: a step's NaN / inf value is left out of that statistic only; a statistic
    with no finite step is NaN (not 0)."""
    import math

    from ddsd.engine.epoch import EpochStats

    stats = EpochStats()
    assert stats.means() == {}
    names = ["loss", "rate", "ce"]
    stats.add(names, torch.tensor([1.0, 0.3, math.nan], dtype=torch.float64))
    stats.add(names, torch.tensor([math.inf, 0.1, math.nan], dtype=torch.float64))
    stats.add(names, torch.tensor([3.0, 0.2, math.nan], dtype=torch.float64))
    means = stats.means()
    assert stats.batches == 3 and list(means) == ["train_loss", "train_rate", "train_ce"]
    assert means["train_loss"] == 2.0 and abs(means["train_rate"] - 0.2) < 1e-12 and math.isnan(means["train_ce"])


def test_resume_refuses_a_changed_split_and_warns_on_edited_pixels(tmp_path):
    """A resumed run must train on the images it started with: files added to or removed from a split are
    refused (naming them); the same names with other pixels give a warning; the procedural set resumes."""
    import numpy as np
    from PIL import Image
    from rich.console import Console

    from tests.data_helpers import make_folder_binary

    root = make_folder_binary(tmp_path / "ds", n={"train": 4, "val": 2, "test": 2})
    cfg = tiny_cfg(tmp_path / "run", epochs=1, data=str(root), **{"data.batch_size": 2, "data.size": [12, 16],
                                                                   "data.cache_dir": str(tmp_path / "cache")})
    train(cfg)
    saved = load_checkpoint(tmp_path / "run/checkpoints/last.pt")["data"]
    assert saved["train"]["stems"] == [f"train{i:02d}" for i in range(4)] and len(saved["val"]["digest"]) == 64
    more = apply_overrides(cfg, ["train.epochs=2"])
    (root / "train.txt").write_text("train00\ntrain01\ntrain02\n")
    with pytest.raises(ConfigError, match=r"the train split is not the one .* \(4 -> 3 images: 1 removed "
                                          r"\(train03\)\); resuming would mix two datasets"):
        train(more, resume=True)
    (root / "train.txt").write_text("train00\ntrain01\ntrain02\ntrain03\n")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(root / "masks" / "val00.png")  # edited in place
    console = Console(record=True, width=200)
    assert train(more, resume=True, console=console)["epochs"] == 2
    assert "the val images have the same names but other decoded pixels" in console.export_text()
    train(tiny_cfg(tmp_path / "p", epochs=1))
    assert train(tiny_cfg(tmp_path / "p", epochs=2), resume=True)["epochs"] == 2
    from ddsd.engine.resume import check_same_data  # checkpoints written before the check resume as before

    assert check_same_data(None, {"train": {"stems": ["a"], "digest": None}}, tmp_path / "r/checkpoints/x.pt") is None

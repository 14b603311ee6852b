"""A user's run directory: resume from --out alone, config round-trip, --overwrite safety, locks, interruptions,
disk full, failed starts, messages (escaped, did-you-mean, one clear line), 1-based epochs, thread defaults."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ddsd._io import LockedError, exclusive_lock
from ddsd.cli import app
from ddsd.config import ConfigError, RunConfig, apply_overrides, load_config
from ddsd.engine import load_checkpoint, train
from ddsd.engine.interrupts import TrainingInterrupted
from ddsd.engine.rundir import read_metrics

runner = CliRunner()
FAST = ["--data", "procedural_binary", "--size", "32x32", "--batch-size", "16", "--threads", "1", "--no-progress",
        "--set", "data.eval_splits=[]"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _out(r) -> str:
    """The command's output with rich's line wrapping undone (it may break long paths anywhere: no spaces)."""
    return "".join(r.output.split())


def _has(r, *texts: str) -> bool:
    """Each of ``texts`` is in the output (spaces ignored, as rich wraps lines)."""
    return all("".join(t.split()) in _out(r) for t in texts)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddsd", *args], capture_output=True, text=True, env=ENV)


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _train_until_checkpoint(run: Path, *args: str) -> subprocess.Popen:
    """Start ``ddsd train`` in a subprocess and return once its first checkpoint exists (it is then in epoch 2)."""
    proc = subprocess.Popen([sys.executable, "-m", "ddsd", "train", "--out", str(run), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert last.exists(), proc.communicate()[1]
    return proc


# ---------------------------------------------------------------- resume from the run directory alone


@pytest.mark.slow
def test_resume_from_out_alone_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    common = [*FAST, "--epochs", "4", "--batch-size", "4"]
    clean = runner.invoke(app, ["train", "--out", str(tmp_path / "clean"), *common])
    assert clean.exit_code == 0, clean.output
    run = tmp_path / "killed"
    proc = _train_until_checkpoint(run, *common)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not (run / "summary.json").exists(), "killed before the end"
    r = _cli("train", "--out", str(run), "--resume")  # no other flag: the settings come from run/config.yaml
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    assert _same_weights(tmp_path / "clean/checkpoints/last.pt", run / "checkpoints/last.pt")
    assert _same_weights(tmp_path / "clean/checkpoints/best.pt", run / "checkpoints/best.pt")
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "clean", run))
    assert s1["best_val"] == s2["best_val"] and s1["best_epoch"] == s2["best_epoch"]
    m1, m2 = read_metrics(tmp_path / "clean/metrics.csv"), read_metrics(run / "metrics.csv")
    drop = ("train_time_s", "data_time_s", "epoch_time_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in m1] == \
           [{k: v for k, v in r.items() if k not in drop} for r in m2]
    assert [int(r["epoch"]) for r in m2] == [1, 2, 3, 4]


def test_a_runs_config_yaml_round_trips_through_config(tmp_path):
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "a"), "--epochs", "2", *FAST])
    assert r.exit_code == 0, r.output
    saved = tmp_path / "a" / "config.yaml"
    assert "run:" in saved.read_text() and "git_commit" in saved.read_text()  # the run's metadata is there
    cfg = load_config(saved)  # ... and ignored as a setting
    assert cfg.out == str(tmp_path / "a") and cfg.train.epochs == 2 and cfg.data.size == (32, 32)
    r = runner.invoke(app, ["train", "--config", str(saved), "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert _same_weights(tmp_path / "a/checkpoints/last.pt", tmp_path / "b/checkpoints/last.pt")
    again = load_config(tmp_path / "b" / "config.yaml").model_dump(exclude={"out"})
    again["train"]["progress"] = cfg.train.progress  # --progress is the command line's default
    assert again == cfg.model_dump(exclude={"out"})


def test_resume_refuses_changed_flags_listing_them_and_allows_more_epochs(tmp_path):
    run = tmp_path / "r"
    assert runner.invoke(app, ["train", "--out", str(run), "--epochs", "1", *FAST]).exit_code == 0
    (run / "summary.json").unlink()
    r = runner.invoke(app, ["train", "--out", str(run), "--resume", "--lr", "0.1", "--seed", "3"])
    assert r.exit_code == 2
    assert _has(r, "optim.lr: 0.003 -> 0.1") and _has(r, "train.seed: 0 -> 3")
    r = runner.invoke(app, ["train", "--out", str(run), "--resume", "--epochs", "2"])
    assert r.exit_code == 0, r.output
    assert [int(x["epoch"]) for x in read_metrics(run / "metrics.csv")] == [1, 2]


def test_unreadable_last_checkpoint_says_what_to_do_and_deletes_nothing(tmp_path):
    run = tmp_path / "r"
    assert runner.invoke(app, ["train", "--out", str(run), "--epochs", "1", *FAST]).exit_code == 0
    (run / "summary.json").unlink()
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # half-written
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    r = runner.invoke(app, ["train", "--out", str(run), "--resume", "--epochs", "2"])
    assert r.exit_code == 2
    assert _has(r, "is unreadable (half-written", "best.pt", "start again", "Nothing was deleted")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


# ---------------------------------------------------------------- --overwrite


def test_overwrite_deletes_only_a_runs_files(tmp_path, monkeypatch):
    folder = tmp_path / "work"
    assert runner.invoke(app, ["train", "--out", str(folder), "--epochs", "1", *FAST]).exit_code == 0
    for name in ("src", "data"):
        (folder / name).mkdir()
        (folder / name / "keep.txt").write_text("the user's")
    (folder / "notes.md").write_text("mine")
    r = runner.invoke(app, ["train", "--out", str(folder), "--overwrite", "--epochs", "1", *FAST])
    assert r.exit_code == 0, r.output
    assert (folder / "src/keep.txt").read_text() == "the user's" and (folder / "data/keep.txt").is_file()
    assert (folder / "notes.md").is_file() and (folder / "summary.json").is_file()

    # a folder that merely holds a config.yaml (and the user's files) is not a run: refused, untouched
    plain = tmp_path / "project"
    (plain / "src").mkdir(parents=True)
    (plain / "src" / "main.py").write_text("print()")
    (plain / "config.yaml").write_text("train:\n  epochs: 1\n")
    r = runner.invoke(app, ["train", "--out", str(plain), "--overwrite", "--epochs", "1", *FAST])
    assert r.exit_code == 2 and _has(r, "refuses to delete") and _has(r, "no run files")
    assert (plain / "src/main.py").is_file() and (plain / "config.yaml").is_file()

    # a repository root, the current folder and home are refused even when they hold a run
    (folder / ".git").mkdir()
    r = runner.invoke(app, ["train", "--out", str(folder), "--overwrite", "--epochs", "1", *FAST])
    assert r.exit_code == 2 and _has(r, "repository root")
    (folder / ".git").rmdir()
    monkeypatch.chdir(folder)
    r = runner.invoke(app, ["train", "--out", ".", "--overwrite", "--epochs", "1", *FAST])
    assert r.exit_code == 2 and _has(r, "current folder")
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", "--out", str(folder), "--overwrite", "--epochs", "1", *FAST])
    assert r.exit_code == 2 and _has(r, "home folder")
    assert (folder / "checkpoints/last.pt").is_file() and (folder / "src/keep.txt").is_file()


# ---------------------------------------------------------------- locks


def test_a_second_writer_is_refused_and_a_dead_writers_lock_does_not_block(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    with exclusive_lock(run / ".ddsd.lock", "x"):  # as if another train were writing it
        (run / "config.yaml").write_text("the other writer's")
        (run / "metrics.csv").write_text("epoch\n1\n")
        r = runner.invoke(app, ["train", "--out", str(run), "--epochs", "1", *FAST])
        assert (run / "config.yaml").read_text() == "the other writer's" and (run / "metrics.csv").is_file()
        assert r.exit_code == 2 and _has(r, f"run directory {run} is in use by another ddsd process")
        assert _has(r, f"pid {os.getpid()}")
        with pytest.raises(LockedError):
            train(apply_overrides(RunConfig(), [f"out={json.dumps(str(run))}"]))
    (run / "config.yaml").unlink()
    (run / "metrics.csv").unlink()
    # a lock file left by a process that died (flock is released with it) does not block
    code = f"import fcntl, os; fd = os.open({str(run / '.ddsd.lock')!r}, os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX)"
    subprocess.run([sys.executable, "-c", code + "; os.kill(os.getpid(), 9)"])
    r = runner.invoke(app, ["train", "--out", str(run), "--epochs", "1", *FAST])
    assert r.exit_code == 0, r.output


def test_a_second_compare_on_one_directory_is_refused(tmp_path):
    import typer

    from ddsd.compare.cli import compare_command

    capp = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    capp.command("compare")(compare_command)
    capp.command("noop")(lambda: None)
    out = tmp_path / "cmp"
    out.mkdir()
    with exclusive_lock(out / ".compare.lock", "x"):
        r = runner.invoke(capp, ["compare", "--methods", "ce", "--datasets", "procedural_binary", "--seeds", "0",
                                 "--epochs", "1", "--out", str(out), "--no-progress"])
    assert r.exit_code == 2 and _has(r, f"comparison directory {out} is in use")
    assert not (out / "runs").exists()


@pytest.mark.slow
def test_stopping_compare_stops_its_trainings(tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.Popen([sys.executable, "-m", "ddsd", "compare", "--methods", "ce", "--datasets",
                             "procedural_binary", "--seeds", "0", "--epochs", "200", "--size", "32x32",
                             "--no-progress", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    run = out / "runs/procedural_binary/ce/seed0"
    deadline = time.time() + 120
    while not (run / "checkpoints/last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    child = int((run / ".ddsd.lock").read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert not Path(f"/proc/{child}").exists(), "the training outlived its compare"
    assert "interrupted at epoch" in (run / "train.log").read_text()


def test_a_training_stops_when_its_parent_dies(tmp_path):
    """The child of a process that dies (even by SIGKILL) interrupts itself instead of writing on, orphaned."""
    flag, ready = tmp_path / "stopped", tmp_path / "ready"
    grandchild = ("import time\nfrom ddsd.engine.interrupts import sigterm_as_interrupt, watch_parent\n"
                  f"assert watch_parent(interval=0.05)\nopen({str(ready)!r}, 'w').close()\n"
                  "try:\n    with sigterm_as_interrupt():\n        time.sleep(60)\n"
                  f"except KeyboardInterrupt:\n    open({str(flag)!r}, 'w').write('ok')\n")
    parent = ("import os, pathlib, subprocess, sys, time\n"
              f"subprocess.Popen([sys.executable, '-c', {grandchild!r}], env={{**os.environ, "
              "'DDSD_PARENT_PID': str(os.getpid())})\n"
              f"while not pathlib.Path({str(ready)!r}).exists(): time.sleep(0.05)\nos.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", parent], env=ENV, timeout=120)
    deadline = time.time() + 20
    while not flag.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert flag.exists()


# ---------------------------------------------------------------- interruptions and disk full


def test_sigterm_says_where_it_stopped_and_how_to_continue(tmp_path):
    run = tmp_path / "r"
    proc = _train_until_checkpoint(run, *FAST, "--epochs", "200")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    text = " ".join(err.split())
    assert proc.returncode == 130, err
    state = load_checkpoint(run / "checkpoints/last.pt")  # intact
    assert f"interrupted at epoch {state['epoch'] + 1};" in text or f"interrupted after epoch {state['epoch']};" in text
    assert f"holds epoch {state['epoch']}, intact" in text
    assert f"continue with `ddsd train --out {run} --resume`" in text
    assert "Traceback" not in err


def test_interrupt_before_the_first_checkpoint_leaves_no_run_directory(tmp_path, monkeypatch):
    import ddsd.engine.trainer as trainer

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "evaluate", interrupted)
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--epochs", "3", *FAST])
    assert r.exit_code == 130
    assert _has(r, "interrupted at epoch 1; no epoch had finished") and _has(r, "start the run again")
    assert not (tmp_path / "r").exists()
    with pytest.raises(TrainingInterrupted):
        train(apply_overrides(RunConfig(), [f"out={json.dumps(str(tmp_path / 'x'))}", "train.epochs=1",
                                            "data.name=procedural_binary", "data.size=[32, 32]"]))


@pytest.mark.parametrize("target", ["last.pt", "metrics.csv", "summary.json"])
def test_disk_full_names_the_file_and_what_is_intact(tmp_path, monkeypatch, target):
    import ddsd._io as io_mod

    real = io_mod.atomic_write
    calls = {"n": 0}

    def full(path, write):
        if Path(path).name == target:
            calls["n"] += 1
            if target == "summary.json" or calls["n"] == 2:  # epoch 2's write
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, write)

    import ddsd.engine.checkpoint as ck

    monkeypatch.setattr(io_mod, "atomic_write", full)
    monkeypatch.setattr(ck, "atomic_write", full)
    run = tmp_path / "r"
    r = runner.invoke(app, ["train", "--out", str(run), "--epochs", "2", *FAST])
    assert r.exit_code == 1, r.output
    failed = run / "checkpoints" / target if target.endswith(".pt") else run / target
    saved = 2 if target == "summary.json" else 1
    assert _has(r, f"could not write {failed}: no space left on device;",
                f"{run / 'checkpoints' / 'last.pt'} holds epoch {saved}, intact",
                f"`ddsd train --out {run} --resume`")
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoints/last.pt")["epoch"] == saved
    r = runner.invoke(app, ["train", "--out", str(run), "--resume"])
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------- failed starts and clear messages


def test_a_failed_start_leaves_nothing_behind(tmp_path):
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), *FAST, "--batch-size", "1000"])
    assert r.exit_code == 2
    assert _has(r, "data.batch_size=1000 is larger than the train split") and _has(r, "--batch-size 64 or less")
    assert not (tmp_path / "r").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("x")
    r = runner.invoke(app, ["train", "--out", str(mine), *FAST, "--batch-size", "1000"])
    assert r.exit_code == 2 and sorted(p.name for p in mine.iterdir()) == ["notes.md"]
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--epochs", "1", *FAST])
    assert r.exit_code == 0, r.output


def test_config_key_typos_and_shapes_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method:\n  r_maxx: 0.3\n")
    r = runner.invoke(app, ["train", "--config", str(bad)])
    assert r.exit_code == 2 and _has(r, "unknown key 'method.r_maxx' (did you mean `r_max`?)")
    r = runner.invoke(app, ["train", "--set", "method.r_maxx=0.3"])
    assert r.exit_code == 2 and _has(r, "did you mean `r_max`?")
    r = runner.invoke(app, ["train", "--set", "epochs=3"])
    assert r.exit_code == 2 and _has(r, "did you mean `train.epochs`?")
    r = runner.invoke(app, ["train", "--set", "metod.r_max=0.3"])
    assert r.exit_code == 2 and _has(r, "unknown section 'metod' (did you mean `method`?)")
    r = runner.invoke(app, ["train", "--set", "data.size=[32]"])
    assert r.exit_code == 2 and _has(r, "data.size expects [H, W]") and _has(r, "got [32]")
    with pytest.raises(ConfigError, match=r"data.size expects \[H, W\].*got 32"):
        apply_overrides(RunConfig(), ["data.size=32"])


def test_brackets_in_paths_and_messages_are_printed_whole(tmp_path):
    out = tmp_path / "set[old]" / "run[1]"
    r = runner.invoke(app, ["train", "--out", str(out), "--epochs", "1", *FAST])
    assert r.exit_code == 0, r.output
    assert _has(r, f"run directory: {out}")
    missing = tmp_path / "set[old]" / "photos"
    r = runner.invoke(app, ["train", "--data", str(missing), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and _has(r, str(missing))
    r = runner.invoke(app, ["train", "--data", "oops [/bold] [red]"])  # markup-like: no MarkupError
    assert r.exit_code == 2 and _has(r, "oops [/bold] [red]") and "MarkupError" not in r.output
    r = runner.invoke(app, ["train", "--set", "data.name=[/bold] oops"])  # not YAML: named, not a raw error
    assert r.exit_code == 2 and _has(r, "override 'data.name=[/bold] oops': the value is not valid YAML")


def test_debug_shows_the_traceback_and_unexpected_errors_are_one_line(tmp_path, monkeypatch):
    r = runner.invoke(app, ["train", "--set", "data.size=[32]"])
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["--debug", "train", "--set", "data.size=[32]"])
    assert r.exit_code == 2 and "Traceback" in r.output and _has(r, "data.size expects")
    monkeypatch.delenv("DDSD_DEBUG")
    code = ("import sys, ddsd.cli as c\n"
            "def boom(*a, **k): raise ZeroDivisionError('[x] raw library error')\n"
            f"c.clear_run = boom\nsys.argv = ['ddsd', 'train', '--overwrite', '--out', {str(tmp_path)!r}]\n"
            "c.main()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert p.returncode == 1, p.stderr
    assert "error: ZeroDivisionError: [x] raw library error (run with --debug" in " ".join(p.stderr.split())
    assert "Traceback" not in p.stderr


def test_compare_refuses_a_missing_dataset_before_any_run(tmp_path):
    import typer

    from ddsd.compare.cli import compare_command

    capp = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    capp.command("compare")(compare_command)
    capp.command("noop")(lambda: None)
    out = tmp_path / "cmp"
    r = runner.invoke(capp, ["compare", "--methods", "ce", "--datasets", f"procedural_binary,{tmp_path}/nope",
                             "--seeds", "0", "--epochs", "1", "--out", str(out), "--no-progress"])
    assert r.exit_code == 2 and _has(r, "nope") and _has(r, "no run was started")
    assert not (out / "runs").exists()


# ---------------------------------------------------------------- output a user can read


def test_one_based_epochs_everywhere_and_readable_log(tmp_path):
    run = tmp_path / "r"
    r = runner.invoke(app, ["train", "--out", str(run), "--epochs", "2", *FAST])
    assert r.exit_code == 0, r.output
    assert [int(x["epoch"]) for x in read_metrics(run / "metrics.csv")] == [1, 2]
    summary = json.loads((run / "summary.json").read_text())
    assert 1 <= summary["best_epoch"] <= 2
    assert load_checkpoint(run / "checkpoints/best.pt")["best_epoch"] == summary["best_epoch"]
    assert _has(r, f"(best epoch {summary['best_epoch']})")
    lines = [ln for ln in r.output.splitlines() if " epoch " in ln and "/2" in ln]
    assert len(lines) == 2 and all("dropout rate" in ln for ln in lines)
    assert ".py:" not in r.output  # no source file:line on the log lines
    assert _has(r, "1 CPU thread(s)") and _has(r, "data-loader worker(s)")


def test_help_shows_every_options_default():
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    rows = [" ".join(ln.strip("│ ").split()) for ln in r.output.splitlines() if ln.strip("│ ").startswith("--")]
    for opt, default in [("--method", "ddsd"), ("--epochs", "20"), ("--batch-size", "8"), ("--lr", "0.003"),
                         ("--threads", "auto"), ("--workers", "auto"), ("--data ", "builtin"), ("--resume", "no")]:
        row = next(x for x in rows if x.startswith(opt))
        assert f"[default: ({default})]" in row or f"[default: {default}" in row, row


def test_thread_and_worker_defaults(monkeypatch):
    from ddsd.engine import resources

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(resources, "available_cores", lambda: 2)
    assert resources.resolve_threads(None)[0] == 1 and resources.resolve_workers(None, 1)[0] == 0
    assert resources.resolve_threads(3) == (3, "train.threads / --threads")
    monkeypatch.setattr(resources, "available_cores", lambda: 16)
    monkeypatch.setattr(resources.os, "getloadavg", lambda: (4.0, 0.0, 0.0))
    assert resources.resolve_threads(None)[0] == 8  # 12 idle cores, at most 8
    assert resources.resolve_threads(None, jobs=4)[0] == 3  # ddsd compare --jobs 4
    assert resources.resolve_workers(None, 8)[0] == 2
    monkeypatch.setattr(resources.os, "getloadavg", lambda: (10.0, 0.0, 0.0))
    assert resources.resolve_threads(None)[0] == 6 and resources.resolve_workers(None, 6)[0] == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert resources.resolve_threads(None) == (5, "OMP_NUM_THREADS")


def test_plots_read_one_based_and_older_zero_based_metrics_alike(tmp_path):
    from ddsd._io import write_csv
    from ddsd.compare.plots import _series

    for name, first in (("new", 1), ("old", 0)):
        (tmp_path / name).mkdir()
        write_csv(tmp_path / name / "metrics.csv", [{"epoch": first + i, "val_iou": 0.1 * (i + 1)} for i in range(3)])
    arr = _series([tmp_path / "new", tmp_path / "old"], "val_iou")
    assert arr.shape == (2, 3) and (arr[0] == arr[1]).all() and arr[0, 0] == pytest.approx(0.1)

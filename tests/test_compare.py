"""``ddsd compare`` / ``ddsd report``: statistics, grid planning, a tiny real grid, resume, collect, report."""

import base64
import csv
import io
import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
import typer
from PIL import Image
from scipy import stats as st
from typer.testing import CliRunner

from ddsd.compare.cli import compare_command, report_command
from ddsd.compare.grid import build_plan, parse_methods, parse_seeds, run_state
from ddsd.compare.stats import fmt_diff, mean_std, paired_diff

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("compare")(compare_command)
app.command("report")(report_command)
runner = CliRunner()


def _out(r) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(r.output.split())

TINY = ["--datasets", "procedural_binary", "--epochs", "1", "--size", "32x32", "--set", "data.batch_size=16",
        "--no-progress"]


# ---------------------------------------------------------------- statistics


def test_paired_ci_matches_scipy_on_known_numbers():
    a = {0: 0.80, 1: 0.82, 2: 0.85}
    b = {0: 0.78, 1: 0.80, 2: 0.81, 7: 0.5}  # seed 7 has no partner: not paired
    d = paired_diff(a, b)
    assert d.n == 3
    # by hand: d = [0.02, 0.02, 0.04], mean 0.026667, sd 0.011547, t(0.975, 2) = 4.302653
    assert d.mean == pytest.approx(0.0266667, abs=1e-6)
    assert d.low == pytest.approx(-0.0020183, abs=1e-6) and d.high == pytest.approx(0.0553516, abs=1e-6)
    ref = st.ttest_rel([0.80, 0.82, 0.85], [0.78, 0.80, 0.81]).confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    half = st.t.ppf(0.975, 2) * np.std([0.02, 0.02, 0.04], ddof=1) / math.sqrt(3)
    assert d.high - d.mean == pytest.approx(half, rel=1e-12)
    assert not d.significant


def test_paired_ci_random_against_scipy_and_n_below_two():
    rng = np.random.default_rng(0)
    for n in (2, 5, 10):
        a, b = rng.normal(0.7, 0.05, n), rng.normal(0.65, 0.05, n)
        d = paired_diff(dict(enumerate(a)), dict(enumerate(b)))
        ref = st.ttest_rel(a, b).confidence_interval(0.95)
        assert (d.low, d.high) == pytest.approx((ref.low, ref.high), rel=1e-10)
    one = paired_diff({0: 0.9}, {0: 0.8})
    assert one.n == 1 and not one.has_ci and fmt_diff(one) == "+0.1000 [n/a]"
    assert fmt_diff(paired_diff({0: 0.9}, {1: 0.8})) == "n/a"
    sig = paired_diff({0: 0.9, 1: 0.91, 2: 0.92}, {0: 0.8, 1: 0.8, 2: 0.81})
    assert sig.significant and fmt_diff(sig).endswith(" *")
    m, s = mean_std([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3) and s == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert math.isnan(mean_std([1.0])[1])


# ---------------------------------------------------------------- parsing and planning


def test_parse_seeds_and_methods_errors_name_the_value():
    assert parse_seeds("0-2,7, 3") == [0, 1, 2, 3, 7]
    with pytest.raises(ValueError, match=r"bad seed range '4-2'"):
        parse_seeds("4-2")
    with pytest.raises(ValueError, match=r"bad seed 'x'"):
        parse_seeds("0,x")
    with pytest.raises(ValueError, match=r"unknown method 'foo'.*ce, kd, ls, tfkd, static, ohem, cwd, ddsd"):
        parse_methods("ce,foo")
    with pytest.raises(ValueError, match=r"unknown key 'method.nope'"):
        parse_methods("ce", ["v=ddsd,method.nope=1"])
    with pytest.raises(ValueError, match="twice"):
        parse_methods("ce", ["ce=kd"])
    vs = parse_methods("ce,ddsd", ["ddsd_r03=ddsd,method.r_max=0.3,data.size=[32, 32]"])
    assert [v.label for v in vs] == ["ce", "ddsd", "ddsd_r03"]
    assert vs[2].overrides == ("method.r_max=0.3", "data.size=[32, 32]") and vs[2].is_ddsd


def test_plan_prints_one_train_command_per_run(tmp_path):
    cdir = tmp_path / "cfgs"
    cdir.mkdir()
    (cdir / "procedural.yaml").write_text("data:\n  name: procedural\n")
    r = runner.invoke(app, ["compare", "--methods", "ce,ddsd", "--variant", "d3=ddsd,method.r_max=0.3",
                            "--datasets", "procedural_binary,procedural", "--seeds", "0-1", "--config-dir", str(cdir),
                            "--teacher", "t/{dataset}.pt", "--set", "data.batch_size=4", "--out", str(tmp_path / "g"),
                            "--plan"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("ddsd train")]
    assert len(lines) == 2 * 3 * 2
    ddsd0 = next(ln for ln in lines if "/procedural/ddsd/seed0" in ln)
    assert "train.snapshots=4" in ddsd0 and "--teacher t/procedural.pt" in ddsd0 and "--config" in ddsd0
    assert "--resume" in ddsd0 and "--no-progress" in ddsd0
    assert not any("train.snapshots" in ln for ln in lines if "seed1" in ln or "/ce/" in ln)
    assert not any("--teacher" in ln for ln in lines if "/ce/" in ln)
    d3 = next(ln for ln in lines if "/procedural_binary/d3/seed1" in ln)
    assert d3.endswith("--set data.batch_size=4 --set method.r_max=0.3") and "--config" not in d3
    meta = json.loads((tmp_path / "g" / "compare.json").read_text())
    assert meta["methods"] == ["ce", "ddsd", "d3"] and meta["seeds"] == [0, 1]


def test_teacher_per_dataset_and_placeholder(tmp_path):
    vs = parse_methods("ce,kd,ddsd")
    plan = build_plan(vs, ["sod", "camvid"], [0], tmp_path, teachers=["t/{dataset}/best.pt", "camvid=cam.pt"])
    teacher = {(s.dataset, s.variant.label): s.teacher for s in plan}
    assert teacher["sod", "kd"] == "t/sod/best.pt" and teacher["camvid", "ddsd"] == "cam.pt"
    assert teacher["sod", "ce"] is None and teacher["camvid", "ce"] is None
    cached = build_plan(vs, ["sod"], [0], tmp_path, teachers=["t.pt"], teacher_cache=tmp_path / "c")
    argv = {s.variant.label: s.argv() for s in cached}
    assert argv["kd"][argv["kd"].index("--teacher-cache") + 1] == str(tmp_path / "c")
    assert "--teacher-cache" not in argv["ce"]  # only the runs that read a teacher get the cache
    with pytest.raises(ValueError, match="names dataset 'isbi'"):
        build_plan(vs, ["sod"], [0], tmp_path, teachers=["isbi=x.pt"])
    with pytest.raises(ValueError, match=r"unknown key 'train\.nope'"):
        build_plan(vs, ["sod"], [0], tmp_path, sets=["train.nope=1"])


def test_cli_errors_are_clear(tmp_path):
    r = runner.invoke(app, ["compare", "--collect", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "does not exist" in _out(r)
    r = runner.invoke(app, ["compare", "--methods", "ce,xx", "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "unknown method 'xx'" in _out(r)
    r = runner.invoke(app, ["compare", "--methods", "ce"])
    assert r.exit_code == 2 and "--out DIR is required" in _out(r)
    r = runner.invoke(app, ["compare", "--seeds", "3-1", "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "bad seed range '3-1'" in _out(r)
    r = runner.invoke(app, ["compare", "--size", "3x", "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "invalid size '3x'" in _out(r)


# ---------------------------------------------------------------- a real tiny grid


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    r = runner.invoke(app, ["compare", "--methods", "ce,ddsd", "--seeds", "0,1", *TINY, "--out", str(out),
                            "--jobs", "2"])
    assert r.exit_code == 0, r.output
    GRID_OUTPUT.append(r.output)
    return out


GRID_OUTPUT: list[str] = []


def _read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_compare_outputs_exist_and_parse(grid):
    rows = _read_csv(grid / "runs.csv")
    assert sorted((r["method"], int(r["seed"])) for r in rows) == [("ce", 0), ("ce", 1), ("ddsd", 0), ("ddsd", 1)]
    assert list(rows[0])[:4] == ["method", "dataset", "seed", "wall_time_s"]
    for r in rows:
        assert r["dataset"] == "procedural_binary" and float(r["wall_time_s"]) > 0
        assert 0 <= float(r["fbeta_max"]) <= 1 and 0 <= float(r["test_fbeta_max"]) <= 1 and r["test_mae"]
    table = (grid / "table.md").read_text()
    assert "## procedural_binary — test split, seeds 0, 1" in table
    assert "max F-beta ↑" in table and "MAE ↓" in table and "boundary IoU ↑" in table
    assert "Δ max F-beta vs ce (95% CI)" in table and "Δ max F-beta vs best other (95% CI)" in table
    assert "**" in table and "ddsd − ce" in table and "ddsd − best other" in table
    assert "command" in table and "seeds" in table and "machine" in table and "total wall time" in table
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", table)
    assert {"plots/procedural_binary_curves.png", "plots/procedural_binary_rate_capability.png",
            "plots/procedural_binary_ddsd_snapshots.png"} <= set(links)
    for link in links:
        with Image.open(grid / link) as im:
            assert im.format == "PNG" and im.size[0] > 100
    # snapshots only for the first seed's ddsd run
    assert (grid / "runs/procedural_binary/ddsd/seed0/snapshots").is_dir()
    assert not (grid / "runs/procedural_binary/ddsd/seed1/snapshots").exists()
    assert not (grid / "runs/procedural_binary/ce/seed0/snapshots").exists()
    assert "--threads 1" in (grid / "runs/procedural_binary/ce/seed0/train.log").read_text()
    # progress inside each run, not only when it ends
    assert "epoch 1/1 procedural_binary/ddsd/seed0" in " ".join(GRID_OUTPUT[0].split())


@pytest.mark.slow
def test_table_numbers_match_runs_csv(grid):
    rows = _read_csv(grid / "runs.csv")
    val = {(r["method"], int(r["seed"])): float(r["test_fbeta_max"]) for r in rows}
    d = paired_diff({s: val["ddsd", s] for s in (0, 1)}, {s: val["ce", s] for s in (0, 1)})
    table = (grid / "table.md").read_text()
    row = next(ln for ln in table.splitlines() if ln.startswith("| ddsd − ce |"))
    assert f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]" in row


@pytest.mark.slow
def test_resume_skips_finished_runs_and_reports_failures(grid):
    finished = grid / "runs/procedural_binary/ce/seed0"
    log_before = (finished / "train.log").read_text()
    mtime = (finished / "summary.json").stat().st_mtime_ns
    interrupted = grid / "runs/procedural_binary/ddsd/seed1"
    (interrupted / "summary.json").unlink()  # as if killed after its last checkpoint
    assert run_state(interrupted) == "resume"
    r = runner.invoke(app, ["compare", "--methods", "ce,ddsd", "--variant", "bad=ce,model.num_classes=3",
                            "--seeds", "0,1", *TINY, "--out", str(grid), "--jobs", "2"])
    assert r.exit_code == 1, r.output
    assert "3 already finished" in _out(r)
    assert "2 run(s) failed" in _out(r) and "procedural_binary/bad/seed0" in _out(r)
    assert str(grid / "runs/procedural_binary/bad/seed1/train.log") in r.output.replace("\n", "")
    assert "num_classes" in (grid / "runs/procedural_binary/bad/seed0/train.log").read_text()
    assert (finished / "train.log").read_text() == log_before
    assert (finished / "summary.json").stat().st_mtime_ns == mtime
    log = (interrupted / "train.log").read_text()
    assert run_state(interrupted) == "done" and "--resume" in log and "resuming" in log
    assert len(_read_csv(grid / "runs.csv")) == 4  # the failed variant has no rows


def _stable(table: str) -> list[str]:
    """table.md without the lines that change between builds (generation time, elapsed time)."""
    return [ln for ln in table.splitlines() if not ln.startswith(("- **generated**", "- **total wall"))]


@pytest.mark.slow
def test_collect_reproduces_the_table(grid):
    before = (grid / "table.md").read_text()
    (grid / "table.md").unlink()
    (grid / "runs.csv").unlink()
    shutil.rmtree(grid / "plots")
    r = runner.invoke(app, ["compare", "--collect", str(grid)])
    assert r.exit_code == 0, r.output
    after = (grid / "table.md").read_text()
    assert _stable(after) == _stable(before)
    assert len(_read_csv(grid / "runs.csv")) == 4 and (grid / "plots/procedural_binary_curves.png").is_file()


def _report(grid):
    r = runner.invoke(app, ["report", str(grid)])
    assert r.exit_code == 0, r.output
    return grid / "report.html"


@pytest.mark.slow
def test_report_is_self_contained(grid):
    html = _report(grid).read_text()
    assert "<table>" in html and "ddsd − ce" in html and "document.body.dataset.images" in html
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) >= 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        with Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) as im:
            im.load()
            assert im.format == "PNG"
    assert "plots/" not in re.sub(r"<code>.*?</code>", "", html)  # nothing refers to files next to it


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed")
def test_report_renders_in_headless_chromium(grid, tmp_path):
    path = _report(grid)
    r = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
         path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    m = re.search(r'<body[^>]*data-images="(\d+)/(\d+)"', r.stdout)
    assert m, f"no data-images attribute in the dumped DOM; stderr: {r.stderr[-2000:]}"
    loaded, total = int(m.group(1)), int(m.group(2))
    assert total >= 3 and loaded == total

"""scripts/results.py: the job lists and the paired tables behind docs/results (no training here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results():
    spec = importlib.util.spec_from_file_location("results_script", ROOT / "scripts" / "results.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["results_script"] = mod
    spec.loader.exec_module(mod)
    return mod


TUNED = {"isbi2012_membrane": {
    "ddsd": {"overrides": {"method.confidence": 0.99, "method.r_max": 0.3}},
    "kd": {"overrides": {"method.confidence": 0.7}},
    "static": {"overrides": {"method.rate": 0.4}},
}}


def _sets(cmd: list[str]) -> dict[str, str]:
    return dict(cmd[i + 1].split("=", 1) for i, c in enumerate(cmd) if c == "--set")


def _pins(pins: dict[str, object]) -> dict[str, str]:
    """The campaign defaults every command pins, as they appear on the command line."""
    return {k: str(v) for k, v in pins.items()}


def test_ablation_jobs_change_one_thing_and_skip_the_tuned_setting(results):
    jobs = results.ablation_jobs(["isbi2012_membrane"], [0, 1], TUNED)
    names = sorted({out.parent.name for _, out in jobs})
    assert "a=0.99" not in names  # the tuned setting itself: the grid's runs
    assert len(names) == len(results.ABLATIONS) - 1 and len(jobs) == 2 * len(names)
    by_name = {out.parent.name: _sets(cmd) for cmd, out in jobs}
    assert by_name["schedule=constant"] == {**_pins(results.ROUND1_PINS), "method.confidence": "0.99",
                                            "method.r_max": "0.3", "method.schedule": "constant", "method.rate": "0.3"}
    assert by_name["a=0.7"]["method.confidence"] == "0.7" and by_name["a=0.7"]["method.r_max"] == "0.3"
    assert all("train.snapshots=4" not in cmd for cmd, _ in jobs)


def test_teacher_jobs_drop_the_virtual_confidence_and_pass_the_teacher(results):
    first, second = results.teacher_jobs(["isbi2012_membrane"], [0], TUNED)
    assert _sets(first[0][0]) == {**_pins(results.ROUND1_PINS), "model.name": "unet_teacher",
                                  "train.channels_last": "true", "train.amp": "bf16"}
    assert "--method" in first[0][0]
    for cmd, _ in second:  # the tuned virtual confidence is not passed (only round 1's pinned default)
        assert _sets(cmd)["method.confidence"] == str(results.ROUND1_PINS["method.confidence"])
        assert cmd[cmd.index("--teacher") + 1].endswith("teacher/seed0/checkpoints/best.pt")
        assert cmd[cmd.index("--teacher-cache") + 1].endswith(".cache/teacher-logits/isbi2012_membrane")
    assert _sets(second[-1][0]) == {**_pins(results.ROUND1_PINS), "method.r_max": "0.3",
                                    "train.teacher_channels_last": "true", "train.teacher_amp": "bf16"}
    # method-major: every seed's first (cache-filling) run comes before any run that reuses its logits
    assert [out.parent.name for _, out in second] == ["kd", "static", "ddsd"]


def _fake_run(path: Path, fbeta: float, mae: float, rates: list[float]) -> None:
    path.mkdir(parents=True)
    summary = {"test": {"fbeta_max": fbeta, "mae": mae, "iou": 0.5, "boundary_iou": 0.4}, "wall_time_s": 60.0}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "metrics.csv").write_text("epoch,train_rate\n" + "".join(f"{i},{r}\n" for i, r in enumerate(rates)))


def test_paired_table_reports_paired_differences(results, tmp_path):
    for s, (fa, fb) in enumerate([(0.70, 0.72), (0.74, 0.75), (0.72, 0.75)]):
        _fake_run(tmp_path / "a" / f"seed{s}", fa, 0.1, [0.0])
        _fake_run(tmp_path / "b" / f"seed{s}", fb, 0.1, [0.3, 0.1])
    _fake_run(tmp_path / "b" / "seed9", 0.9, 0.1, [0.3, 0.1])  # no partner in "a": left out of the difference
    out = tmp_path / "table.md"
    results.paired_table("t", "cmd", {"sod": {"a": tmp_path / "a", "b": tmp_path / "b"}}, out)
    rows = {line.split("|")[1].strip(): line for line in out.read_text().splitlines() if line.startswith("| ")}
    # differences b - a over seeds 0-2: 0.02, 0.01, 0.03 -> mean 0.02, sd 0.01, t(0.975, 2) = 4.3027
    half = 4.302653 * 0.01 / 3 ** 0.5
    assert f"+0.0200 [{0.02 - half:+.4f}, {0.02 + half:+.4f}] |" in rows["b"]  # CI holds 0: no star
    assert "| 4 |" in rows["b"] and "0.30 → 0.10" in rows["b"]
    assert "| 3 |" in rows["a"] and rows["a"].rstrip().endswith("| — | — | — |")


def test_class_table_pairs_each_class_against_ce(results, tmp_path, monkeypatch):
    import results_round1_tables as tables

    monkeypatch.setattr(results, "RESULTS", tmp_path)
    for s, (pole_ce, pole_dd) in enumerate([(0.10, 0.12), (0.20, 0.21), (0.30, 0.33)]):
        for m, pole in (("ce", pole_ce), ("ddsd", pole_dd)):
            run = tmp_path / "grid/runs/camvid" / m / f"seed{s}"
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps({"test": {"per_class_iou": {"Sky": 0.9, "Pole": pole}}}))
    tables.class_table("camvid", ["ce", "ddsd"], tmp_path / "out.md")
    rows = {line.split("|")[1].strip(): line for line in (tmp_path / "out.md").read_text().splitlines()
            if line.startswith("| ")}
    half = 4.302653 * 0.01 / 3 ** 0.5  # differences 0.02, 0.01, 0.03
    assert f"| 0.2000 ± 0.1000 | +0.0200 [{0.02 - half:+.4f}, {0.02 + half:+.4f}] |" in rows["Pole"]
    assert "+0.0000" in rows["Sky"] and "(n = 3)" in rows["class"]
    with pytest.raises(SystemExit, match="no finished ce runs"):
        tables.class_table("camvid", ["ddsd"], tmp_path / "out.md")


# ---------------------------------------------------------------- round 2 (scripts/results_round2*.py)

@pytest.fixture()
def round2(results, tmp_path, monkeypatch):
    """results.py with RESULTS (and the configs it reads) under tmp_path; returns (results, run)."""
    monkeypatch.setattr(results, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(results, "EXTRA", [])
    import results_round2

    def run(capsys, *argv) -> tuple[int, list[list[str]]]:
        monkeypatch.setattr(sys, "argv", ["results.py", *argv])
        capsys.readouterr()
        rc = results.main()
        lines = capsys.readouterr().out.splitlines()
        return rc, [line.split() for line in lines if line.startswith("-m ddsd train")]

    return results, results_round2, run


def _fake_summary(out: Path, val: float, test: dict | None = None, env: str = "cpu", rates=(0.0,)) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summ = {"main_metric": "fbeta_max", "best_val": {"fbeta_max": val},
            "test": test or {"fbeta_max": val, "mae": 0.1, "iou": 0.5, "boundary_iou": 0.4}, "wall_time_s": 10.0}
    (out / "summary.json").write_text(json.dumps(summ))
    (out / "metrics.csv").write_text("epoch,train_rate\n" + "".join(f"{i},{r}\n" for i, r in enumerate(rates)))
    (out / "config.yaml").write_text(f"run:\n  device_name: {env}\n  machine: Linux-x\n  torch_version: 2.13.0\n"
                                     "  cpu_threads: 1\n  git_commit: 0123456789abcdef\n")


def test_round2_fair_tune_gives_every_kd_method_the_same_candidates(round2, capsys):
    _results, r2, run = round2
    rc, cmds = run(capsys, "fair-tune", "--plan", "--datasets", "sod")
    assert rc == 0 and len(cmds) == len(r2.KD_FAMILY) * len(r2.SHARED_CANDIDATES) == 15
    by_method: dict[str, list[dict]] = {}
    for cmd in cmds:
        by_method.setdefault(cmd[cmd.index("--method") + 1], []).append(_sets(cmd))
    assert set(by_method) == set(r2.KD_FAMILY)
    shared = {m: [{k: s[k] for k in r2.SHARED_KEYS} for s in sets] for m, sets in by_method.items()}
    assert all(v == shared["kd"] for v in shared.values())  # the same (a, T, w) candidates for all
    assert shared["kd"][1] == {"method.confidence": "0.99", "method.temperature": "4.0", "method.kd_weight": "0.5"}
    assert by_method["ddsd"][0]["method.r_max"] == "0.5" and by_method["ddsd"][0]["method.kd_norm"] == "kept"
    assert by_method["ddsd"][0]["method.difficulty"] == "one_sided_kl" == by_method["static"][0]["method.difficulty"]
    assert "method.difficulty" not in by_method["tfkd_reg"][0] and "method.rate" not in by_method["kd"][0]


def test_round2_phase_two_and_select_use_val_only(round2, capsys):
    results, r2, run = round2
    # phase 1 finished: the second shared candidate is best for ddsd (ties to the first for the others)
    for m in r2.KD_FAMILY:
        for i, c in enumerate(r2.SHARED_CANDIDATES):
            _fake_summary(r2.tune_run("sod", m, c), 0.7 + (0.01 if (m == "ddsd" and i == 1) else 0.0),
                          test={"fbeta_max": 0.99 if i == 2 else 0.1})  # test scores must not matter
    _rc, cmds = run(capsys, "fair-tune", "--plan", "--datasets", "sod")
    assert len(cmds) == 3 + 2  # ddsd's own settings (r_max x kd_norm, minus the phase-1 one) and static's rates
    phase2 = [_sets(c) for c in cmds]
    ddsd2 = [s for s in phase2 if "method.kd_norm" in s]
    # every round-2 command pins the defaults round 2 ran with (the library's defaults changed afterwards)
    assert all(_pins(results.ROUND2_PINS).items() <= {**s, "method.r_max": "0.5"}.items() for s in phase2)
    assert {(s["method.r_max"], s["method.kd_norm"]) for s in ddsd2} == {("0.3", "kept"), ("0.5", "valid"),
                                                                         ("0.3", "valid")}
    assert all(s["method.temperature"] == "4.0" and s["method.kd_weight"] == "0.5" for s in ddsd2)
    assert {s["method.rate"] for s in phase2 if "method.rate" in s} == {"0.1", "0.4"}
    run(capsys, "fair-select", "--datasets", "sod")
    tuned = json.loads((results.RESULTS / "round2/tuned.json").read_text())
    assert "ddsd" not in tuned["sod"] and tuned["sod"]["kd"]["overrides"] == {  # ddsd's phase 2 is unfinished
        "method.confidence": 0.99, "method.temperature": 1.0, "method.kd_weight": 1.0}
    best = r2.SHARED_CANDIDATES[1]
    for i, own in enumerate(r2.OWN_CANDIDATES["ddsd"][1:]):
        _fake_summary(r2.tune_run("sod", "ddsd", best, own), 0.72 if i == 1 else 0.69)
    for own in r2.OWN_CANDIDATES["static"][1:]:
        _fake_summary(r2.tune_run("sod", "static", r2.SHARED_CANDIDATES[0], own), 0.7)  # tie: the first (0.2)
    run(capsys, "fair-select", "--datasets", "sod")
    tuned = json.loads((results.RESULTS / "round2/tuned.json").read_text())["sod"]
    assert tuned["ddsd"]["overrides"] == {**r2.DROPOUT_FIXED, **best, "method.r_max": 0.5, "method.kd_norm": "valid"}
    assert tuned["ddsd"]["val"] == 0.72 and tuned["static"]["overrides"]["method.rate"] == 0.2
    assert tuned["ce"]["overrides"] == {}


TUNED2 = {"sod": {
    "ce": {"overrides": {}, "run": None},
    "kd": {"overrides": {"method.confidence": 0.99, "method.temperature": 1.0, "method.kd_weight": 1.0}},
    "tfkd": {"overrides": {"method.confidence": 0.99, "method.temperature": 4.0, "method.kd_weight": 0.5}},
    "ddsd": {"overrides": {"method.difficulty": "one_sided_kl", "method.tie_break": "random",
                           "method.selection": "hardest", "method.confidence": 0.99, "method.temperature": 4.0,
                           "method.kd_weight": 0.5, "method.r_max": 0.3, "method.kd_norm": "valid"}},
}}


def test_round2_own_controls_and_strength_plans(round2, capsys):
    results, _r2, run = round2
    (results.RESULTS / "round2").mkdir(parents=True)
    (results.RESULTS / "round2/tuned.json").write_text(json.dumps(TUNED2))
    _, own = run(capsys, "own", "--plan", "--datasets", "sod", "--seeds", "0-1")
    # ddsd's tuned (a, T, w) is tfkd's: that arm is the fair grid's ddsd; only ddsd@kd runs
    assert len(own) == 2 and all("/own/runs/sod/ddsd@kd/" in c[c.index("--out") + 1] for c in own)
    s = _sets(own[0])
    assert (s["method.temperature"], s["method.kd_weight"], s["method.r_max"]) == ("1.0", "1.0", "0.3")
    with pytest.raises(SystemExit, match="has no ddsd for isbi2012_membrane: run fair-tune and fair-select"):
        run(capsys, "controls", "--plan", "--datasets", "isbi2012_membrane")
    _, ctrl = run(capsys, "controls", "--plan", "--datasets", "sod", "--seeds", "0-4")
    assert len(ctrl) == 15 and {_sets(c)["method.selection"] for c in ctrl} == {"random", "easiest", "bernoulli"}
    assert all(_sets(c)["method.r_max"] == "0.3" and c[c.index("--method") + 1] == "ddsd" for c in ctrl)
    cfg = results.ROOT / "configs/results/sod.yaml"
    epochs = results.config_epochs("sod") if cfg.exists() else pytest.skip("configs/results/sod.yaml absent")
    _, st = run(capsys, "strength", "--plan", "--datasets", "sod", "--seeds", "0-1")
    teachers = [_sets(c) for c in st if "--teacher" not in c]
    assert [(t["model.name"], t["train.epochs"]) for t in teachers] == [
        ("unet_small", str(round(0.1 * epochs))), ("unet_small", str(round(0.3 * epochs))), ("unet_small", str(epochs))]
    students = [c for c in st if "--teacher" in c]
    assert len(students) == 3 * 2 * 2 and all("method.confidence" not in _sets(c) for c in students)
    ddsd = [_sets(c) for c in students if c[c.index("--method") + 1] == "ddsd"]
    assert all(s["method.selection"] == "bernoulli" and s["method.temperature"] == "4.0" for s in ddsd)  # defaults
    assert students[0][students[0].index("--teacher") + 1].endswith(
        "round2/strength/runs/sod/teachers/unet_small_short/seed0/checkpoints/best.pt")


def test_round2_tables_pair_by_seed_and_record_provenance(round2, capsys):
    results, _r2, run = round2
    (results.RESULTS / "round2").mkdir(parents=True)
    (results.RESULTS / "round2/tuned.json").write_text(json.dumps(TUNED2))
    grid = results.RESULTS / "round2/fair-grid/runs/sod"
    for s, (f_dd, f_kd) in enumerate([(0.72, 0.70), (0.76, 0.75), (0.78, 0.75)]):
        _fake_summary(grid / "ddsd" / f"seed{s}", f_dd, rates=(0.3, 0.1))
        _fake_summary(grid / "kd" / f"seed{s}", f_kd, env="cuda" if s == 2 else "cpu")
        _fake_summary(grid / "tfkd" / f"seed{s}", f_kd)
        _fake_summary(results.RESULTS / "round2/own/runs/sod/ddsd@kd" / f"seed{s}", f_kd + 0.01 * (s + 1))
        _fake_summary(results.RESULTS / "round2/controls/runs/sod/selection=random" / f"seed{s}", f_dd - 0.01)
    half = 4.302653 * 0.01 / 3 ** 0.5  # differences 0.02, 0.01, 0.03 (or 0.01, 0.02, 0.03): mean 0.02, sd 0.01
    ci = f"+0.0200 [{0.02 - half:+.4f}, {0.02 + half:+.4f}]"
    run(capsys, "own-table", "--datasets", "sod")
    table = (results.RESULTS / "round2/own/table.md").read_text()
    rows = {line.split("|")[1].strip().split(" (")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert ci in rows["ddsd@kd"] and "0.0000 ± 0.0000" not in rows["ddsd@kd"]
    assert "ddsd@tfkd (= the fair grid's ddsd, a=0.99, T=4.0" in table
    assert "Generated by `python scripts/results.py own-table --datasets sod`" in table
    assert "**seeds**: 0, 1, 2" in table and "cuda / Linux-x / torch 2.13.0 / 1 threads: 1" in table
    assert "sod: ddsd@kd" in table and "seed 2" in table  # the pair across machines is named
    assert "**code (git commit: runs)**: 0123456789: 12" in table
    csv_rows = list(__import__("csv").DictReader((results.RESULTS / "round2/own/runs.csv").open()))
    # kd, ddsd@kd, tfkd and the fair grid's ddsd (= ddsd@tfkd here), 3 seeds each
    assert len(csv_rows) == 12 and {r["round"] for r in csv_rows} == {"2"} and "test_fbeta_max" in csv_rows[0]
    run(capsys, "controls-table", "--datasets", "sod")
    ctl = (results.RESULTS / "round2/controls/table.md").read_text()
    assert "-0.0100 [-0.0100, -0.0100] *" in ctl and "0.30 → 0.10" in ctl
    run(capsys, "fair-table", "--datasets", "sod")
    fair = (results.RESULTS / "round2/fair-grid/table.md").read_text()
    assert "## sod — vs ce" in fair and "## sod — vs ddsd" in fair and "| tfkd (a=0.99" in fair
    assert "| ce |" not in fair and "| static" not in fair  # no grid runs: left out, not an empty row
    for s, (f_dd, f_kd) in enumerate([(0.72, 0.70), (0.76, 0.75), (0.78, 0.75)]):  # the virtual end: defaults
        _fake_summary(results.RESULTS / "round2/defaults/runs/sod/ddsd" / f"seed{s}", f_dd)
        _fake_summary(results.RESULTS / "round2/defaults/runs/sod/kd" / f"seed{s}", f_kd)
    run(capsys, "strength-table", "--datasets", "sod")
    st = (results.RESULTS / "round2/strength/table.md").read_text()
    virtual = next(line for line in st.splitlines() if line.startswith("| virtual"))
    assert "| 1.0000 |" in virtual and ci in virtual  # ddsd - kd at the virtual teacher: 0.02, 0.01, 0.03
    assert "| unet_small_mid | — | — | — |" in st
    run(capsys, "strength-plot", "--datasets", "sod")
    assert (results.RESULTS / "round2/strength/sod.png").stat().st_size > 1000


def test_round2_defaults_stage_writes_the_library_defaults_out(round2, capsys):
    """The 'defaults' arms spell out the library's current defaults, so they stay reproducible when they change."""
    _results, r2, run = round2
    from ddsd.config import MethodConfig

    _rc, cmds = run(capsys, "defaults", "--plan", "--datasets", "sod", "--seeds", "0-1")
    by_arm = {c[c.index("--out") + 1].split("/")[-2]: _sets(c) for c in cmds}
    assert [c[c.index("--method") + 1] for c in cmds[:2]] == ["kd", "ddsd"]  # seed-major pairs
    defaults = MethodConfig()
    for key, value in r2.DEFAULT_ARMS["ddsd"][1].items():
        assert by_arm["ddsd"][key] == str(value) and getattr(defaults, key.split(".")[1]) == value, key


def test_round2_reuses_the_defaults_stage_run_of_the_same_config(round2, monkeypatch):
    """kd at the library's (a, T, w) is the defaults stage's kd run: copied (named in reused_from.txt), not rerun;
    any other setting or method trains."""
    results, r2, _run = round2
    monkeypatch.setattr(results, "PLAN", False)  # an earlier --plan run leaves it set
    defaults = results.RESULTS / "round2/defaults/runs/sod"
    for s in (0, 1):
        _fake_summary(defaults / "kd" / f"seed{s}", 0.7 + s / 100)
        _fake_summary(defaults / "ddsd" / f"seed{s}", 0.6)
    first, _ = r2.tune_jobs(["sod"], ["kd", "ddsd"])
    done = {out for _, out in first if (out / "summary.json").exists()}
    assert done == {r2.tune_run("sod", "kd", r2.KD_DEFAULTS)}  # not ddsd: hardest + r_max 0.5 is not the default
    (src,) = done
    assert (src / "reused_from.txt").read_text().strip().endswith("round2/defaults/runs/sod/kd/seed0")
    tuned = {"sod": {"kd": {"overrides": dict(r2.KD_DEFAULTS), "run": str(src)},
                     "static": {"overrides": {**r2.KD_DEFAULTS, "method.rate": 0.2}, "run": None}}}
    jobs = r2.grid_jobs(["sod"], ["kd", "static"], [0, 1, 2], tuned)
    assert [out.parent.name for _, out in jobs] == ["kd", "static"] * 3  # seed-major
    finished = [(out.parent.name, out.name) for _, out in jobs if (out / "summary.json").exists()]
    assert finished == [("kd", "seed0"), ("kd", "seed1")]  # seed 2 has no defaults run: it trains
    assert json.loads((results.RESULTS / "round2/fair-grid/runs/sod/kd/seed1/summary.json").read_text())[
        "best_val"]["fbeta_max"] == 0.71


def test_round2_student_budgets_share_arms_and_keep_their_runs_apart(round2, capsys):
    """``student`` / ``student-full``: the same arms at 0.5 x and 1 x the dataset's epochs, in separate folders;
    the table shows a budget only when it has runs."""
    results, r2, run = round2
    plans = {}
    for stage in ("student", "student-full"):
        _rc, cmds = run(capsys, stage, "--plan", "--datasets", "sod", "--seeds", "0")
        plans[stage] = {c[c.index("--method") + 1]: (_sets(c), c[c.index("--out") + 1]) for c in cmds}
    epochs = results.config_epochs("sod")
    for m in ("ce", "kd", "ddsd"):
        half, full = plans["student"][m], plans["student-full"][m]
        assert half[0]["model.name"] == full[0]["model.name"] == "segformer_b0"
        assert (int(half[0]["train.epochs"]), int(full[0]["train.epochs"])) == (round(epochs / 2), epochs)
        assert {k: v for k, v in half[0].items() if k != "train.epochs"} == \
            {k: v for k, v in full[0].items() if k != "train.epochs"}
        assert "/student/runs/sod/" in half[1] and "/student-full/runs/sod/" in full[1]
    for s in (0, 1):
        for arm in r2.STUDENT_ARMS:
            _fake_summary(r2.root() / "student-full/runs/sod" / arm / f"seed{s}", 0.5 + s / 10)
    assert run(capsys, "student-table", "--datasets", "sod")[0] == 0
    table = (r2.root() / "student/table.md").read_text()
    assert f"## sod, {epochs} epochs (1 x) — ddsd vs kd" in table and "(0.5 x) — vs ce" not in table

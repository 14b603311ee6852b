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


def test_ablation_jobs_change_one_thing_and_skip_the_tuned_setting(results):
    jobs = results.ablation_jobs(["isbi2012_membrane"], [0, 1], TUNED)
    names = sorted({out.parent.name for _, out in jobs})
    assert "a=0.99" not in names  # the tuned setting itself: the grid's runs
    assert len(names) == len(results.ABLATIONS) - 1 and len(jobs) == 2 * len(names)
    by_name = {out.parent.name: _sets(cmd) for cmd, out in jobs}
    assert by_name["schedule=constant"] == {"method.confidence": "0.99", "method.r_max": "0.3",
                                            "method.schedule": "constant", "method.rate": "0.3"}
    assert by_name["a=0.7"]["method.confidence"] == "0.7" and by_name["a=0.7"]["method.r_max"] == "0.3"
    assert all("train.snapshots=4" not in cmd for cmd, _ in jobs)


def test_teacher_jobs_drop_the_virtual_confidence_and_pass_the_teacher(results):
    first, second = results.teacher_jobs(["isbi2012_membrane"], [0], TUNED)
    assert _sets(first[0][0]) == {"model.name": "unet_teacher", "train.channels_last": "true", "train.amp": "bf16"}
    assert "--method" in first[0][0]
    for cmd, _ in second:
        assert "method.confidence" not in _sets(cmd)
        assert cmd[cmd.index("--teacher") + 1].endswith("teacher/seed0/checkpoints/best.pt")
        assert cmd[cmd.index("--teacher-cache") + 1].endswith(".cache/teacher-logits/isbi2012_membrane")
    assert _sets(second[-1][0]) == {"method.r_max": "0.3", "train.teacher_channels_last": "true",
                                    "train.teacher_amp": "bf16"}
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
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    for s, (pole_ce, pole_dd) in enumerate([(0.10, 0.12), (0.20, 0.21), (0.30, 0.33)]):
        for m, pole in (("ce", pole_ce), ("ddsd", pole_dd)):
            run = tmp_path / "grid/runs/camvid" / m / f"seed{s}"
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps({"test": {"per_class_iou": {"Sky": 0.9, "Pole": pole}}}))
    results.class_table("camvid", ["ce", "ddsd"], tmp_path / "out.md")
    rows = {line.split("|")[1].strip(): line for line in (tmp_path / "out.md").read_text().splitlines()
            if line.startswith("| ")}
    half = 4.302653 * 0.01 / 3 ** 0.5  # differences 0.02, 0.01, 0.03
    assert f"| 0.2000 ± 0.1000 | +0.0200 [{0.02 - half:+.4f}, {0.02 + half:+.4f}] |" in rows["Pole"]
    assert "+0.0000" in rows["Sky"] and "(n = 3)" in rows["class"]
    with pytest.raises(SystemExit, match="no finished ce runs"):
        results.class_table("camvid", ["ddsd"], tmp_path / "out.md")

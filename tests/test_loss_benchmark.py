"""Smoke test: benchmarks/loss_overhead.py runs end to end on tiny inputs and prints the CE-relative table."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_loss_overhead_runs_and_prints_ratios():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/loss_overhead.py"), "--repeats", "2",
                        "--shapes", "2x3x16x16,1x2x16x16", "--no-compile"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for variant in ("ce", "kd-naive", "kd", "ddsd"):
        assert f"| 2x3x16x16 | {variant} |" in r.stdout and f"| 1x2x16x16 | {variant} |" in r.stdout


def test_loss_overhead_profile_reports_every_bernoulli_stage():
    cmd = [sys.executable, str(ROOT / "benchmarks/loss_overhead.py"), "--profile", "ddsd", "--repeats", "2",
           "--shapes", "2x2x32x32"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "| the whole step (sum of self times) |" in r.stdout
    for stage in ("priorities", "bins", "thresholds", "draws", "open_ranks"):
        assert f"| ddsd::bernoulli::{stage} |" in r.stdout, r.stdout

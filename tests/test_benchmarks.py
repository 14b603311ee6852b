"""Smoke test: the benchmark scripts run end to end on tiny inputs (their numbers are checked by reading them)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_teacher_speed_runs_and_prints_both_tables():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/teacher_speed.py"), "--model", "unet_small",
                        "--size", "32x48", "--batch", "2", "--repeats", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "| bf16 | channels-last |" in r.stdout and "| teacher cached (all hits) |" in r.stdout

"""benchmarks/bench_training.py (the training-iteration command of
benchmarks/RESULTS.md), tiny: both kinds of run go through MONAI's bundle
CLI and land in the table and the JSON rows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from gemini_semi_support import REPO, env

pytestmark = pytest.mark.slow


def test_bench_training_runs(tmp_path):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_training.py"), "--runs", "idle1", "busy2"]
    cmd += ["--iterations", "1", "2", "--roi", "16", "--channels", *["8"] * 9, "--deformer-channels", *["8"] * 5]
    cmd += ["--json", str(out)]
    got = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["run"] for r in rows] == ["idle1", "busy2"]
    assert "| 1 thread, idle | 1 |" in got.stdout and "| 2 threads, one core busy | 1 |" in got.stdout
    assert got.stdout.startswith("# ") and " cpu (" in got.stdout  # the header names the CPU


def test_bench_training_rejects_bad_iterations():
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_training.py"), "--iterations", "5", "5"]
    got = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert got.returncode == 2 and "--iterations needs 0 < FEW < MANY" in got.stderr

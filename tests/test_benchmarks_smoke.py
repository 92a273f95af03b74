"""Smoke run of the benchmark scripts: they execute end to end and print their ratio lines (no timings checked)."""

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_bench_image_tokens_smoke_runs_and_reports_ratios():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_image_tokens", "--smoke"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # one ratio per section: image-token phase, then any-res preprocessing
    assert result.stdout.count("ratio baseline/ours:") == 2
    assert "image-token phase, config tiny" in result.stdout
    assert "max abs diff baseline vs ours" in result.stdout
    assert "tensors equal" in result.stdout

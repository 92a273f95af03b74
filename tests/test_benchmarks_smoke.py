"""Smoke runs of the benchmark scripts: each executes end to end and prints its result lines (no timings checked)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _smoke(module: str, timeout: int = 300) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", module, "--smoke"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_bench_image_tokens_smoke_runs_and_reports_ratios():
    out = _smoke("benchmarks.bench_image_tokens")
    # image-token phase, t2i LLM stage, second question (TTFT), any-res preprocessing (batch, one by one)
    assert out.count("ratio baseline/ours:") == 5
    assert "image-token phase, config tiny" in out
    assert "max abs diff baseline vs ours" in out
    assert "first tokens equal cached vs uncached" in out
    assert "tensors equal" in out


def test_roofline_smoke_reports_fractions():
    out = _smoke("benchmarks.roofline")
    assert "GB/s" in out and "GFLOP/s" in out and out.count("tok/s") == 4  # decode with both caches
    assert "ours (in-place KV)" in out and "DynamicCache" in out


@pytest.mark.slow
def test_bench_memory_smoke_reports_p50_and_tool_overhead():
    out = _smoke("benchmarks.bench_memory")
    assert "memory recall p50" in out and "overhead per tool call: InlineToolNode" in out
    assert "overhead per tool call in the loop: InlineToolNode" in out
    assert "overhead per tool call in the loop" in out


@pytest.mark.slow
def test_bench_detokenizer_smoke_scores_each_setting():
    out = _smoke("benchmarks.bench_detokenizer", timeout=600)
    assert "| euler-4 |" in out and "| dpm-2 |" in out and "settings reaching euler-4" in out


def test_bench_engine_batching_smoke_batches_three_requests():
    out = _smoke("benchmarks.bench_engine_batching")
    assert "ratio serial/batched:" in out
    calls = float(out.split("de-tokenizer calls per round ")[1].split()[0])
    assert calls < 3  # 3 concurrent requests never need 3 de-tokenizer runs

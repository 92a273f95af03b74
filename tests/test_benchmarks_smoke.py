"""Smoke runs of the benchmark scripts: each executes end to end and prints its result lines (no timings checked)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from seedx_agent.cpu_linear import onednn_linear_available

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
    # Per linear kernel: image-token phase, t2i LLM stage, second question (TTFT); then any-res (batch, one by one).
    kernels = ("torch", "onednn") if onednn_linear_available() else ("torch",)
    assert out.count("ratio baseline/ours:") == 3 * len(kernels) + 2
    for kernel in kernels:
        assert f"image-token phase, config tiny, {kernel} linear" in out
        assert f"time to first token of a second question, config tiny, {kernel} linear" in out
    assert "max abs diff baseline vs ours" in out
    assert "first tokens equal cached vs uncached" in out
    assert "tensors equal" in out


def test_roofline_smoke_reports_fractions():
    out = _smoke("benchmarks.roofline")
    setups = 4 if onednn_linear_available() else 2  # transformers' and our decoding, per linear kernel
    assert "GB/s" in out and "GFLOP/s" in out and out.count("tok/s") == 2 * setups  # measured and bound per row
    assert "ours (in-place KV + lean step), torch linear" in out and "DynamicCache + forward" in out


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


def test_bench_data_parallel_smoke_runs_both_launches():
    out = _smoke("benchmarks.bench_data_parallel")
    assert "1 process x 2 threads" in out and "2 processes x 1 thread" in out
    assert "ratio ours/baseline (throughput):" in out

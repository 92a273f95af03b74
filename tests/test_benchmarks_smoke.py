"""Smoke runs of the benchmark scripts: each executes end to end and prints its result lines (no timings checked)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seedx_agent.speed.cpu_linear import onednn_linear_available

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run_module(module: str, *args: str, timeout: int = 300) -> str:
    """``python -m module args...`` from the repository root, offline; its stdout once it exited 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _smoke(module: str, timeout: int = 300) -> str:
    return _run_module(module, "--smoke", timeout=timeout)


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


# -- benchmarks/bench_end_to_end.py (issue 23) ---------------------------------------------------------------------
def _bench_end_to_end(tmp_path: Path, sections: str) -> tuple[dict, str]:
    out = tmp_path / "e2e.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_end_to_end",
        "--smoke",
        "--sections",
        sections,
        "--out",
        str(out),
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text()), result.stdout


def _check_machine(machine: dict) -> None:
    assert machine["cpu_model"] and machine["torch"] and machine["torch_threads"] == 1  # --smoke runs 1 thread
    assert isinstance(machine["cpu_flags"], list) and isinstance(machine["avx512"], bool)


def test_bench_end_to_end_smoke_writes_every_row(tmp_path):
    data, stdout = _bench_end_to_end(tmp_path, "e2e,score,followup")
    assert "CPU: " in stdout and "ratio official/ours (t2i):" in stdout and "ratio official/ours (edit):" in stdout
    _check_machine(data["machine"])
    e2e = data["e2e"]
    assert (e2e["steps"], e2e["fast_steps"], e2e["runs"]) == (2, 1, 1)
    for ability in ("t2i", "edit"):
        row = e2e[ability]
        for path in ("official", "ours", "ours_fast"):
            assert row[path]["median_s"] > 0 and row[path]["runs"] == 1
            assert row[path]["llm_median_s"] > 0 and row[path]["detokenizer_median_s"] > 0
        assert row["ratio_official_over_ours"] > 0 and row["ratio_official_over_ours_fast"] > 0
        # Same official placeholder mask on both paths: same tokens, features equal up to fp32 rounding.
        assert row["same_text_official_vs_ours"]
        assert row["max_abs_feature_diff_official_vs_ours"] < 1e-4
        assert 0 <= row["max_abs_pixel_diff_official_vs_ours"] <= 1
        assert 0 <= row["max_abs_pixel_diff_official_vs_ours_default_mask"] <= 255
        assert row["image_size"] == [32, 32]
    _check_machine(e2e["machine"])
    summary = data["score"]["summary"]
    assert summary["n"] == 2
    for arm, setting in (("official", "euler-2"), ("ours_fast", "dpm-1")):
        assert summary[arm]["setting"] == setting and 0 <= summary[arm]["all_ok"] <= 1
        low, high = summary[arm]["ci95"]
        assert 0 <= low <= summary[arm]["all_ok"] <= high <= 1 and summary[arm]["median_s_per_image"] > 0
    assert -1 <= summary["difference_ours_fast_minus_official"]["mean"] <= 1
    followup = data["followup"]["tiny-random"]
    assert followup["first_tokens_equal"] and followup["ratio"] > 0 and followup["cached"]["median_s"] > 0


@pytest.mark.slow
def test_bench_end_to_end_smoke_measures_memory_per_process(tmp_path):
    data, stdout = _bench_end_to_end(tmp_path, "memory")
    assert "peak resident memory" in stdout
    for path in ("official", "ours", "ours_fast"):
        row = data["memory"][path]
        assert row["path"] == path and row["threads"] == 1
        assert 0 < row["after_load_bytes"] <= row["run_peak_bytes"] < 64 * 2**30
        assert row["run_increment_bytes"] == row["run_peak_bytes"] - row["after_load_bytes"]


def test_bench_end_to_end_score_resumes_and_intervals(tmp_path):
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from types import SimpleNamespace

    from PIL import Image

    from benchmarks import bench_end_to_end as bench

    calls: list[tuple[str, int]] = []

    def t2i(arm, prompt, seed=0):
        calls.append((arm, seed))
        return SimpleNamespace(image=Image.new("RGB", (32, 32), "white"))

    paths = SimpleNamespace(steps=50, fast_steps=12, config=SimpleNamespace(name="fake"), t2i=t2i)
    out = tmp_path / "score.json"
    bench.bench_score(paths, bench.Results(out), n=2, seed=0)
    assert sorted(calls) == [("official", 0), ("official", 1), ("ours_fast", 0), ("ours_fast", 1)]
    calls.clear()
    section = bench.bench_score(paths, bench.Results(out), n=3, seed=0)  # resumed: only prompt 2 is new
    assert sorted(calls) == [("official", 2), ("ours_fast", 2)]
    assert section["summary"]["n"] == 3 and json.loads(out.read_text())["score"]["summary"]["n"] == 3
    calls.clear()
    paths.fast_steps = 10  # other settings: the stored rows do not apply
    bench.bench_score(paths, bench.Results(out), n=1, seed=0)
    assert sorted(calls) == [("official", 0), ("ours_fast", 0)]
    low, high = bench.wilson(180, 200)
    assert 0.85 < low < 0.9 < high < 0.94
    assert bench.wilson(0, 10)[0] == 0.0 and bench.wilson(10, 10)[1] == 1.0
    diff = bench.paired_difference([1, 1, 0, 0], [1, 0, 0, 1])
    assert diff["mean"] == 0.0 and diff["low"] < 0 < diff["high"]


# -- benchmarks/bench_serving.py (issue 25) ------------------------------------------------------------------------
def test_bench_serving_quick_single_server_writes_every_cell(tmp_path):
    """``--quick``: the single-process server on tiny-random, 1 and 2 clients, 4 chat requests each."""
    out = tmp_path / "serving.json"
    stdout = _run_module("benchmarks.bench_serving", "--quick", "--out", str(out), timeout=120)
    assert "CPU: " in stdout and "| single | 2 |" in stdout and "load average after" in stdout
    data = json.loads(out.read_text())
    assert data["model"] == "tiny-random" and data["concurrency"] == [1, 2] and list(data["servers"]) == ["single"]
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["torch"]
    single = data["servers"]["single"]
    assert single["server"]["env"]["OMP_NUM_THREADS"] == "1" and single["server"]["stop"]["left_in_session"] == []
    cells = single["results"]["chat"]
    for clients in ("1", "2"):
        row = cells[clients]
        assert row["concurrency"] == int(clients) and row["requests"] == row["completed"] == 4
        assert row["errors"] == 0 and row["requests_per_s"] > 0 and 0 < row["p50_ms"] <= row["p95_ms"]
    assert cells["warmup_errors"] == 0 and data["ray_cleanup"]["left_after_stop"] == []


# -- benchmarks/bench_shared_memory.py (issue 25) ------------------------------------------------------------------
def test_bench_shared_memory_smoke_times_both_modes_and_two_writers(tmp_path):
    """``--smoke``: 200 records on a real chroma server; both modes per operation, then 1 and 2 writer processes."""
    out = tmp_path / "shared.json"
    stdout = _run_module("benchmarks.bench_shared_memory", "--smoke", "--out", str(out), timeout=240)
    assert "| add (1 picture) |" in stdout and "2 processes / 1 process:" in stdout
    data = json.loads(out.read_text())
    assert set(data["per_call"]) == {
        "add (1 picture)",
        "search_text, unfiltered",
        "search_text, 1 % namespace",
        "search_image by id, 1 % namespace",
    }
    for modes in data["per_call"].values():
        assert set(modes) == {"single", "shared"}
        assert all(0 < mode["p50_ms"] <= mode["p95_ms"] for mode in modes.values())
    assert data["adds_per_s"]["1 process"] > 0 and data["adds_per_s"]["2 processes"] > 0

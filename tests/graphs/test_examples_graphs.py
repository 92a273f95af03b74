"""The agent example scripts run end to end in a subprocess on tiny-random and write what they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# ~1-2 min each on a busy 2-core machine (a fresh interpreter imports torch and builds the model): slow.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "extra", "expected_output", "expected_files"),
    [
        ("chat_agent.py", [], "lineage: img_", ["memory"]),
        ("refine.py", ["--rounds", "1"], "verified=False after 1 correction(s)", ["report.json", "00_generate.png"]),
        ("embed_seedx.py", [], "wrote ", ["generated.png", "edited.png"]),
    ],
)
def test_agent_example_runs(
    script: str, extra: list[str], expected_output: str, expected_files: list[str], tmp_path: Path
) -> None:
    command = [sys.executable, str(ROOT / "examples" / script), "--model", "tiny-random", "--steps", "1"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected_output in done.stdout
    for name in expected_files:
        assert (tmp_path / name).exists(), name
    if script == "refine.py":
        report = json.loads((tmp_path / "report.json").read_text())
        assert len(report["lineage"]) == 2 and len(report["verdicts"]) == 2

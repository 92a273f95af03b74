"""examples/story.py and examples/slides.py run end to end (tiny settings) in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pptx import Presentation

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / script),
            "--model",
            "tiny-random",
            "--num-inference-steps",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_story_example(tmp_path: Path) -> None:
    output = run("story.py", "--beats", "3", "--out", str(tmp_path))
    assert "beat   2 (" in output and "lineage of the last picture: " in output
    assert (tmp_path / "storyboard.html").read_text().count("<figure>") == 3
    assert (tmp_path / "manifest.json").is_file()


def test_slides_example(tmp_path: Path) -> None:
    output = run("slides.py", "--slides", "2", "--max-refine", "0", "--out", str(tmp_path))
    assert "deck:" in output
    assert len(Presentation(str(tmp_path / "deck.pptx")).slides) == 2
    assert (tmp_path / "slide_01.png").is_file()

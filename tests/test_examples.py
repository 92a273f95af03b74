"""Every example script and the README's main command run (the README test command is .ci/run)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_load_official_layout_example():
    done = subprocess.run([sys.executable, str(ROOT / "examples/load_official_layout.py")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "identical to the official one: True" in output and "detokenizer:2" in output


def test_cli_demo_writes_pngs_and_report(tmp_path):
    done = subprocess.run([sys.executable, "-m", "seedx_agent", "demo", "--out", str(tmp_path), "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"describe", "vqa", "ground", "generate_image", "edit_image"} <= set(report)
    assert report["model"] == "mini" and "note" not in report  # the bundled trained weights, not random ones
    for name in ("input.png", "generated.png", "edited.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert ci in readme  # .ci/run runs exactly the README's test command


def test_cli_errors_are_clean():
    done = subprocess.run([sys.executable, "-m", "seedx_agent", "info", "--model", "/nonexistent/ckpt"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    import re

    import PIL.Image

    from seedx_agent.model import SeedX

    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    model = SeedX.from_preset("tiny-random", variants=("seed-x-i", "seed-x-edit"))
    model.save_pretrained(tmp_path / "converted/seed-x")
    PIL.Image.new("RGB", (64, 48), "orange").save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert isinstance(namespace["model"], SeedX)

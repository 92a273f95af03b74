"""``scripts/learning_curves.py``: one run scores every eval point once, resumes, and plots and fits the arms."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from seedx_agent.training.loop import checkpoint_step


@pytest.fixture(scope="module")
def curves(load_script: Callable[[str], ModuleType]) -> ModuleType:
    return load_script("learning_curves")


def _tiny_arm(out: Path, *extra: str, arm: str = "tiny") -> list[str]:
    """The command line of a tiny-random arm on a random ViT, scored at steps 2 and 4."""
    return [
        arm,
        "--out",
        str(out),
        "--preset",
        "tiny-random",
        "--vit",
        "random",
        "--batch",
        "2",
        "--warmup",
        "2",
        "--first-eval",
        "2",
        "--max-steps",
        "4",
        "--eval-n",
        "3",
        "--threads",
        str(torch.get_num_threads()),
        *extra,
    ]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_eval_points_double_up_to_max_steps(curves: ModuleType) -> None:
    assert curves.eval_points(3200) == [100, 200, 400, 800, 1600, 3200]
    assert curves.eval_points(3000) == [100, 200, 400, 800, 1600, 3000]
    assert curves.eval_points(4, first=2) == [2, 4]
    assert curves.eval_points(50) == [50]


def test_arm_config_scales_the_llm(curves: ModuleType) -> None:
    config = curves.arm_config("mini", 128, 2)
    assert (config.llm.hidden_size, config.llm.num_layers, config.llm.intermediate_size) == (128, 2, 344)
    assert config.lvlm.input_resampler.embed_dim == config.lvlm.output_resampler.kv_dim == 128
    assert curves.arm_config("mini", None, None).llm.hidden_size == 256  # the bundle's geometry


def test_an_arm_scores_each_point_once_and_resumes(curves: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "arm"
    stage = out / curves.STAGE_DIR
    curves.main(_tiny_arm(out, "--max-minutes", "1e-7"))  # stops (checkpointed) after its first step
    assert checkpoint_step(stage) == 1
    assert not (out / curves.CSV_NAME).exists()

    curves.main(_tiny_arm(out))  # resumes at step 1 and scores steps 2 and 4
    rows = _rows(out / curves.CSV_NAME)
    assert [(r["arm"], int(r["step"]), int(r["examples_seen"])) for r in rows] == [("tiny", 2, 4), ("tiny", 4, 8)]
    assert list(rows[0]) == list(curves.COLUMNS)
    for row in rows:
        assert all(0.0 <= float(row[task]) <= 1.0 for task in ("caption", "vqa", "grounding"))
    assert 0 < float(rows[0]["cpu_minutes"]) < float(rows[1]["cpu_minutes"])
    assert checkpoint_step(stage) == 4

    csv_before = (out / curves.CSV_NAME).read_text()
    log_before = (stage / "log.jsonl").read_text()
    curves.main(_tiny_arm(out))  # everything done: no training, no new row
    assert (out / curves.CSV_NAME).read_text() == csv_before
    assert (stage / "log.jsonl").read_text() == log_before

    curves.main(_tiny_arm(out, "--max-steps", "8"))  # a longer run continues the same constant-lr run
    assert [int(r["step"]) for r in _rows(out / curves.CSV_NAME)] == [2, 4, 8]

    with pytest.raises(SystemExit, match="other settings"):
        curves.main(_tiny_arm(out, "--lr", "1e-3"))


def test_fit_predicts_the_minutes_to_the_bar(curves: ModuleType) -> None:
    minutes = [0.5, 1, 2, 4, 8, 16]
    fit = curves.fit_saturating(minutes, [0.98 - 0.6 * t**-0.5 for t in minutes])
    assert fit is not None
    assert fit.minutes_to(0.9) == pytest.approx((0.6 / 0.08) ** 2, rel=1e-3)
    flat = curves.fit_saturating(minutes, [0.8 - 0.5 * t**-0.7 for t in minutes])
    assert flat is not None and flat.minutes_to(0.9) is None
    assert curves.fit_saturating([1, 2, 4], [0.1, 0.2, 0.3]) is None  # three points: no fit
    # Near-zero noise (a de-tokenizer's first points) and falling points have no rising fit: no asymptote, no
    # prediction (an unconstrained fit gave an asymptote of -519 % on such points).
    assert curves.fit_saturating([2.0, 4.0, 6.8, 9.7], [0.03, 0.06, 0.0, 0.0]) is None
    assert curves.fit_saturating(minutes, [0.5 + 0.3 * t**-0.5 for t in minutes]) is None
    capped = curves.fit_saturating(minutes, [min(1.0, 1.2 - 0.5 * t**-0.3) for t in minutes])
    assert capped is not None and capped.a == 1.0


def test_plot_merges_the_arms_and_tables_the_prediction(
    curves: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    folders = []
    for arm, ceiling in (("rising", 0.98), ("stalling", 0.8)):
        folder = tmp_path / arm
        folder.mkdir()
        for step in (100, 200, 400, 800):
            minutes = step * 0.006
            accuracy = round(ceiling - 0.6 * minutes**-0.5, 4)
            row = {"arm": arm, "step": step, "examples_seen": 16 * step, "cpu_minutes": minutes}
            curves.append_row(folder / curves.CSV_NAME, {**row, "caption": 0.1, "vqa": accuracy, "grounding": 0.95})
        folders.append(str(folder))
    png, merged = tmp_path / "out" / "llm.png", tmp_path / "out" / "llm.csv"
    curves.main(["--plot", *folders, "--png", str(png), "--csv", str(merged)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["arm"] for r in _rows(merged)] == ["rising"] * 4 + ["stalling"] * 4
    table = capsys.readouterr().out
    rising, stalling = (line for line in table.splitlines() if line.startswith(("| rising", "| stalling")))
    assert "(" in rising.split("|")[6]  # a predicted time, e.g. "56 (0.9 h)"
    assert curves.NOT_REACHED in stalling.split("|")[6]
    assert "reached at" in rising.split("|")[9]  # grounding already at 95 %


def test_mixture_and_style_arms(curves: ModuleType, tmp_path: Path) -> None:
    """--mixture weights the tasks, --style picks the prompt style trained and scored; both define the arm."""
    assert curves.parse_mixture(None) is None
    assert curves.parse_mixture("vqa=3,grounding=3,caption=1") == {"vqa": 3.0, "grounding": 3.0, "caption": 1.0}
    for bad in ("vqa", "poetry=1", "vqa=0,grounding=0"):
        with pytest.raises(SystemExit, match="--mixture"):
            curves.parse_mixture(bad)
    out = tmp_path / "one_stage"
    curves.main(_tiny_arm(out, "--max-steps", "2", "--style", "seed-x-i", "--mixture", "vqa=1"))
    assert [int(r["step"]) for r in _rows(out / curves.CSV_NAME)] == [2]
    with pytest.raises(SystemExit, match="other settings"):
        curves.main(_tiny_arm(out, "--max-steps", "2", "--style", "seed-x", "--mixture", "vqa=1"))
    # an arm recorded before these settings existed resumes as the default style and mixture
    old = tmp_path / "old"
    curves.main(_tiny_arm(old, "--max-steps", "2"))
    settings = json.loads((old / curves.ARM_FILE).read_text())
    (old / curves.ARM_FILE).write_text(json.dumps({k: v for k, v in settings.items() if k not in ("style", "mixture")}))
    curves.main(_tiny_arm(old, "--max-steps", "4"))
    assert [int(r["step"]) for r in _rows(old / curves.CSV_NAME)] == [2, 4]

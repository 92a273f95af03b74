"""``scripts/detok_curves.py``: the de-tokenizer's arms score every eval point once, resume, and plot."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from seedx_agent.config import SeedXConfig
from seedx_agent.training.loop import checkpoint_step

SCORES = ("recon", "recon_shape", "recon_colour", "t2i", "t2i_shape", "t2i_colour", "t2i_position", "t2i_count")


@pytest.fixture(scope="module")
def curves(load_script: Callable[[str], ModuleType]) -> ModuleType:
    return load_script("detok_curves")


def _tiny_arm(out: Path, space: str, *extra: str) -> list[str]:
    """A tiny-random arm on a random ViT (and random LLM for text-to-image), scored at steps 2 and 4 on 2 samples
    per task with 2 sampler steps; the latent arm's VAE trains 2 steps first."""
    return [
        space,
        "--space",
        space,
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
        "2",
        "--sampler-steps",
        "2",
        "--vae-steps",
        "2",
        "--vae-batch",
        "2",
        "--threads",
        str(torch.get_num_threads()),
        *extra,
    ]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_arm_config_picks_the_diffusion_space(curves: ModuleType) -> None:
    assert curves.arm_config("mini", "pixel") == SeedXConfig.from_preset("mini")  # today's de-tokenizer, unchanged
    latent = curves.arm_config("mini", "latent", 0.5).detokenizer
    assert latent.vae is not None and latent.vae["scaling_factor"] == 0.5
    assert (latent.image_size, latent.latent_channels, latent.latent_size) == (64, 4, 16)
    assert latent.unet["in_channels"] == latent.unet["out_channels"] == 4
    pixel = SeedXConfig.from_preset("mini").detokenizer
    assert latent.perceiver == pixel.perceiver and latent.scheduler == pixel.scheduler
    assert latent.unet["block_out_channels"] == pixel.unet["block_out_channels"]


def test_pixel_arm_scores_each_point_once_and_resumes(curves: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "pixel"
    stage = out / curves.STAGE_DIR
    curves.main(_tiny_arm(out, "pixel", "--max-minutes", "1e-7"))  # stops (checkpointed) after its first step
    assert checkpoint_step(stage) == 1
    assert not (out / curves.CSV_NAME).exists()

    curves.main(_tiny_arm(out, "pixel"))  # resumes at step 1 and scores steps 2 and 4
    rows = _rows(out / curves.CSV_NAME)
    assert [(r["arm"], r["space"], int(r["step"]), int(r["examples_seen"])) for r in rows] == [
        ("pixel", "pixel", 2, 4),
        ("pixel", "pixel", 4, 8),
    ]
    assert list(rows[0]) == list(curves.COLUMNS)
    for row in rows:
        assert all(0.0 <= float(row[score]) <= 1.0 for score in SCORES)
        assert float(row["vae_cpu_minutes"]) == 0.0 and float(row["sample_s"]) > 0
    assert 0 < float(rows[0]["cpu_minutes"]) < float(rows[1]["cpu_minutes"])
    assert checkpoint_step(stage) == 4
    ceiling = json.loads((out / curves.CEILING_FILE).read_text())
    assert ceiling["render_recon"] == ceiling["render_t2i"] == 1.0  # clean 32x32 renders read back right

    csv_before = (out / curves.CSV_NAME).read_text()
    log_before = (stage / "log.jsonl").read_text()
    curves.main(_tiny_arm(out, "pixel"))  # everything done: no training, no new row
    assert (out / curves.CSV_NAME).read_text() == csv_before
    assert (stage / "log.jsonl").read_text() == log_before

    for other in (("--lr", "1e-3"), ("--space", "latent"), ("--sampler-steps", "3")):
        with pytest.raises(SystemExit, match="other settings"):
            curves.main(_tiny_arm(out, "pixel", *other))


def test_latent_arm_trains_its_vae_first_and_reuses_it(curves: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "latent"
    vae = out / curves.VAE_DIR
    curves.main(_tiny_arm(out, "latent", "--max-minutes", "1e-7", "--max-steps", "2"))  # VAE stops at its step 1
    assert checkpoint_step(vae) == 1
    assert checkpoint_step(out / curves.STAGE_DIR) is None

    curves.main(_tiny_arm(out, "latent", "--max-steps", "2"))  # VAE to step 2, then the de-tokenizer to step 2
    assert checkpoint_step(vae) == 2 and checkpoint_step(out / curves.STAGE_DIR) == 2
    scale = json.loads((vae / curves.SCALE_FILE).read_text())["scaling_factor"]
    assert scale > 0
    [row] = _rows(out / curves.CSV_NAME)
    assert (row["space"], int(row["step"])) == ("latent", 2)
    assert 0 < float(row["vae_cpu_minutes"]) < float(row["cpu_minutes"])
    assert set(json.loads((out / curves.CEILING_FILE).read_text())) == {
        "render_recon",
        "render_t2i",
        "vae_recon",
        "vae_t2i",
    }

    vae_log = (vae / "log.jsonl").read_text()
    curves.main(_tiny_arm(out, "latent"))  # continues the de-tokenizer to step 4; the VAE is reused as it is
    assert (vae / "log.jsonl").read_text() == vae_log
    rows = _rows(out / curves.CSV_NAME)
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert rows[1]["vae_cpu_minutes"] == rows[0]["vae_cpu_minutes"]
    with pytest.raises(SystemExit, match="other settings"):
        curves.main(_tiny_arm(out, "latent", "--vae-steps", "3"))


def test_plot_merges_the_arms_and_tables_the_prediction(
    curves: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    folders = []
    for arm, ceiling, rate in (("pixel", 0.98, 0.012), ("latent", 0.7, 0.005)):
        folder = tmp_path / arm
        folder.mkdir()
        for step in (50, 100, 200, 400):
            minutes = step * rate
            score = round(max(0.0, ceiling - 0.6 * minutes**-0.5), 4)
            row = {"arm": arm, "space": arm, "step": step, "examples_seen": 16 * step, "cpu_minutes": minutes}
            scores = {key: 0.5 for key in SCORES}
            curves.append_row(folder / curves.CSV_NAME, {**row, **scores, "recon": score, "t2i": 0.85})
        folders.append(str(folder))
    png, merged = tmp_path / "out" / "detok.png", tmp_path / "out" / "detok.csv"
    curves.main(["--plot", *folders, "--png", str(png), "--csv", str(merged)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["arm"] for r in _rows(merged)] == ["pixel"] * 4 + ["latent"] * 4
    table = capsys.readouterr().out
    pixel, latent = (line for line in table.splitlines() if line.startswith(("| pixel", "| latent")))
    assert "(" in pixel.split("|")[8]  # a predicted time for the reconstruction bar, e.g. "52 (0.9 h)"
    assert curves.NOT_REACHED in latent.split("|")[8]
    assert "reached at" in pixel.split("|")[11]  # text-to-image already at 85 % >= 80 %

"""The bundled miniature weights load from the package (no download) and are trained: on a fixed held-out
slice they score at least what `seedx-agent eval mini` measured on them, minus a margin.

The floors are NOT the issue's bars (on 50 held-out samples the bundled weights reach only the text-to-image
one; README, "The miniature SEED-X"); they pin the measured quality so a broken loader, config or prompt path
shows up as a drop.
An untrained mini answers VQA with 0 %, grounds nothing and reconstructs no shape.
"""

from __future__ import annotations

import pytest

from seedx_agent.miniature.eval_model import evaluate_model
from seedx_agent.model import SeedX
from seedx_agent.weights.loading import bundled_mini_path

# (task, metric) -> floor on the first N held-out samples (seed 0), one to two samples under what the bundled
# weights measured there: VQA 62.5 %, grounding hit 37.5 %, reconstruction 93.8 %, text-to-image 87.5 %,
# editing 50 % (all_ok: every attribute right). On 16 samples the comprehension-tuned bundle (2026-12-06) scores
# a sample or two under the previous one (68.8 / 43.8 / 93.8 / 93.8 / 50 %), and above it on 200 (README).
N = 16
FLOORS = {
    ("vqa", "accuracy"): 0.56,
    ("grounding", "hit"): 0.31,
    ("reconstruction", "all_ok"): 0.8,
    ("text_to_image", "all_ok"): 0.8,
    ("edit", "all_ok"): 0.37,
}


@pytest.fixture(scope="module")
def mini() -> SeedX:
    return SeedX.from_pretrained("mini")


def test_bundled_weights_load_without_download(mini: SeedX) -> None:
    assert (bundled_mini_path() / "manifest.json").is_file()
    assert mini.config.name == "mini"
    assert set(mini.variants) == {"seed-x-i", "seed-x-edit"}
    assert mini.config.detokenizer.scheduler["prediction_type"] == "v_prediction"


# ~190 s on the 2-core CI machine (80 model calls on the bundled weights): slow, run by .ci/run after the unit suite.
@pytest.mark.slow
def test_bundled_weights_score_above_their_measured_floors(mini: SeedX) -> None:
    tasks = sorted({task for task, _ in FLOORS})
    report = evaluate_model(mini, n=N, tasks=tasks, progress=False)
    scores = {key: report.mean(*key) for key in FLOORS}
    low = {key: (round(scores[key], 3), floor) for key, floor in FLOORS.items() if scores[key] < floor}
    assert not low, f"bundled miniature scored below its floors (score, floor): {low}"

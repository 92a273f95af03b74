"""The miniature's diagnostics: ridge probes read what is linearly there and nothing else, and the
de-tokenizer's per-band loss compares own and swapped features under the same noise."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from seedx_agent.config import SeedXConfig
from seedx_agent.errors import ConfigError
from seedx_agent.miniature import world
from seedx_agent.miniature.probes import (
    BandLoss,
    _ridge_accuracies,
    cell_probes,
    conditioning_use,
    ridge_probe,
    teacher_forced_exact,
)
from seedx_agent.miniature.world_data import WorldData, scene_targets
from seedx_agent.pipeline.components import build_components
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.training.recipes import lvlm_loss, vit_features
from seedx_agent.training.samples import IGNORE_INDEX, collate


def _labels(n: int, cells: int, classes: int, seed: int) -> torch.Tensor:
    return torch.randint(0, classes, (n, cells), generator=torch.Generator().manual_seed(seed))


def test_ridge_probe_reads_a_linear_code_and_not_noise() -> None:
    train_y, test_y = _labels(400, 9, 4, 0), _labels(200, 9, 4, 1)
    mixing = torch.randn(36, 50, generator=torch.Generator().manual_seed(2))

    def encode(labels: torch.Tensor) -> torch.Tensor:  # one-hot per cell, linearly mixed into 50 dims
        return torch.nn.functional.one_hot(labels, 4).float().flatten(1) @ mixing

    assert ridge_probe(encode(train_y), train_y, encode(test_y), test_y, l2=1e-3) == 1.0
    noise = torch.randn(600, 50, generator=torch.Generator().manual_seed(3))
    chance = ridge_probe(noise[:400], train_y, noise[400:], test_y)
    assert chance < 0.4  # 4 classes: chance is 0.25


def test_one_solve_for_several_label_sets_equals_separate_probes() -> None:
    x = torch.randn(300, 20, generator=torch.Generator().manual_seed(4))
    kinds, colours = (x[:, :9] > 0).long(), (x[:, 9:18] > 0.5).long() + (x[:, 9:18] > 1.0).long()
    labels = {"kind": kinds, "colour": colours}
    joint = _ridge_accuracies(
        x[:200], {k: v[:200] for k, v in labels.items()}, x[200:], {k: v[200:] for k, v in labels.items()}, 10.0
    )
    for key, y in labels.items():
        assert joint[key] == ridge_probe(x[:200], y[:200], x[200:], y[200:], l2=10.0)
    assert 0.5 < joint["kind"] < 1.0  # a least-squares read-out of sign thresholds: good, not exact


def test_ridge_probe_rejects_mismatched_shapes() -> None:
    x, y = torch.randn(10, 5), _labels(10, 9, 3, 0)
    with pytest.raises(ConfigError, match="equal dims"):
        ridge_probe(x, y, torch.randn(4, 6), y[:4])
    with pytest.raises(ConfigError, match="one row per feature row"):
        ridge_probe(x, y[:9], x, y)
    with pytest.raises(ConfigError, match="l2 must be positive"):
        ridge_probe(x, y, x, y, l2=0.0)


@pytest.fixture(scope="module")
def tiny():
    config = SeedXConfig.from_preset("tiny-random")
    tokenizer = SeedXTokenizer.tiny()
    parts = build_components(config, tokenizer=tokenizer, variants=("seed-x-i",), stages=(1,), seed=0)
    return parts, WorldData(config, tokenizer)


def test_cell_probes_read_the_labels_back(tiny) -> None:
    parts, data = tiny
    oracle = {  # the labels themselves are perfectly decodable; a constant is not
        "labels": lambda batch: torch.nn.functional.one_hot(scene_targets(batch.scenes)["colour"], 7).float(),
        "constant": lambda batch: torch.ones(len(batch.scenes), 3),
        "vit": lambda batch: vit_features(parts.vision, batch.vit_pixels),
    }
    result = cell_probes(oracle, data, train_batches=4, test_batches=2, batch_size=32)
    assert result["labels"]["colour"] == 1.0
    assert result["constant"]["colour"] < result["labels"]["colour"]
    assert set(result["vit"]) == {"kind", "colour"} and 0.0 <= result["vit"]["kind"] <= 1.0


def test_conditioning_use_same_noise_own_vs_swapped(tiny) -> None:
    parts, data = tiny
    detok = parts.detokenizers[1].train()
    bands = conditioning_use(detok, parts.vision, data, bands=((0, 500), (500, 1000)), n=4)
    assert [(b.low, b.high) for b in bands] == [(0, 500), (500, 1000)]
    assert all(isinstance(b, BandLoss) and b.own > 0 and b.other > 0 for b in bands)
    assert bands == conditioning_use(detok, parts.vision, data, bands=((0, 500), (500, 1000)), n=4)  # deterministic
    assert detok.training  # probed in eval mode, then left as it was found
    with pytest.raises(ConfigError, match="band"):
        conditioning_use(detok, parts.vision, data, bands=((10, 5),))
    with pytest.raises(ConfigError, match="at least 2"):
        conditioning_use(detok, parts.vision, data, n=1)


def test_training_loss_fixed_timesteps(tiny) -> None:
    parts, data = tiny
    detok = parts.detokenizers[1]
    batch = data.scenes(0, 2)
    features = vit_features(parts.vision, batch.vit_pixels)
    with torch.no_grad():
        fixed = [
            float(
                detok.training_loss(
                    batch.target_pixels, features, generator=torch.Generator().manual_seed(0), timesteps=torch.tensor(t)
                )
            )
            for t in ([5, 5], [5, 5], [995, 995])
        ]
    assert fixed[0] == fixed[1] and fixed[0] != fixed[2]
    for bad in (torch.tensor([1]), torch.tensor([0.5, 1.0]), torch.tensor([-1, 3]), torch.tensor([0, 1000])):
        with pytest.raises(ConfigError, match="timesteps must be"):
            detok.training_loss(batch.target_pixels, features, timesteps=bad)


# ~85 s (trains a tiny LVLM to memorise): slow, run by .ci/run after the unit suite.
@pytest.mark.slow
def test_teacher_forced_exact_counts_answers_whose_every_token_is_the_argmax(tiny) -> None:
    _, data = tiny
    tokenizer = data.tokenizer
    parts = build_components(data.config, tokenizer=tokenizer, variants=("seed-x-i",), stages=(1,), seed=1)
    lvlm, vision = parts.lvlms["seed-x-i"], parts.vision.eval()
    samples = world.make_dataset("heldout", 2, "vqa", 0, image_size=data.vit_size)
    examples = [data.example_of(s, style="seed-x-i") for s in samples]
    pad = tokenizer.pad_token_id
    batch = collate(examples, pad_token_id=pad)
    optimiser = torch.optim.Adam([p for p in lvlm.parameters() if p.requires_grad], lr=1e-2)
    lvlm.train()
    for _ in range(80):  # memorise the two answers
        optimiser.zero_grad()
        lvlm_loss(lvlm, vision, batch)["loss"].backward()
        optimiser.step()
    assert teacher_forced_exact(lvlm, vision, examples, pad_token_id=pad) == 1.0
    assert lvlm.training  # scored in eval mode, left in train mode

    # One labelled token changed: the memorised prediction no longer matches it, so that example fails.
    first = next(i for i, label in enumerate(examples[0].labels) if label != IGNORE_INDEX)
    labels = list(examples[0].labels)
    labels[first] = (labels[first] + 1) % data.config.llm.vocab_size
    altered = dataclasses.replace(examples[0], labels=labels)
    mixed = [examples[0], altered, examples[1]]
    assert teacher_forced_exact(lvlm, vision, mixed, pad_token_id=pad) == pytest.approx(2 / 3)
    assert teacher_forced_exact(lvlm, vision, mixed, pad_token_id=pad, batch_size=1) == pytest.approx(2 / 3)

    unlabelled = dataclasses.replace(examples[0], labels=[IGNORE_INDEX] * len(examples[0].labels))
    with pytest.raises(ConfigError, match="no labelled token"):
        teacher_forced_exact(lvlm, vision, [unlabelled])
    with pytest.raises(ConfigError, match="at least one"):
        teacher_forced_exact(lvlm, vision, [])
    with pytest.raises(ConfigError, match="batch_size"):
        teacher_forced_exact(lvlm, vision, examples, batch_size=0)

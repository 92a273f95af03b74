"""Diagnostics of a trained miniature: where does the scene get lost between the ViT and the pixels?

- ``cell_probes``: closed-form ridge-regression probes of per-cell kind and colour from any features of a
  scene batch (ViT tokens, the LLM's input-resampler tokens, the de-tokenizer's perceiver outputs). A
  stage that reads features the probe decodes at ~100% but still gets the scene wrong is the bottleneck.
- ``conditioning_use``: a de-tokenizer's denoising loss per timestep band with each image's own features
  and with another image's. At high noise the UNet can only draw from its conditioning, so the gap there
  says how much it uses it, and the remaining loss how far it is from drawing the scene exactly.
- ``teacher_forced_exact``: the share of examples whose every labelled token is the LLM's argmax under
  teacher forcing, which is exactly when greedy decoding returns the answer, at one forward per batch:
  a cheap held-out accuracy for comparing training runs before any assembly or decoding.

Ridge regression rather than SGD: a probe is one linear solve, exact and fast on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from seedx_agent.errors import ConfigError
from seedx_agent.miniature.world_data import SceneBatch, WorldData, scene_targets
from seedx_agent.pipeline.detokenizer import Detokenizer
from seedx_agent.pipeline.lvlm import SeedXLVLM
from seedx_agent.pipeline.vision import QwenViT, pool_tokens_4to1
from seedx_agent.training.recipes import lvlm_forward, vit_features
from seedx_agent.training.samples import IGNORE_INDEX, TrainingExample, collate

__all__ = ["BandLoss", "cell_probes", "conditioning_use", "ridge_probe", "teacher_forced_exact"]

PROBE_TARGETS = ("kind", "colour")  # per-cell labels of ``scene_targets`` (class 0 = empty cell)
DEFAULT_BANDS = ((0, 200), (200, 500), (500, 800), (800, 1000))
# Probe test batches come from steps far past any training run's, so the probe never saw them.
_PROBE_TEST_STEP = 10**6


def ridge_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *, l2: float = 10.0
) -> float:
    """Accuracy of a linear read-out of per-cell classes: features (n, dims), labels (n, cells) long.

    Features are standardised on the training rows; one ridge solve maps them to one-hot labels of every
    cell at once and each test cell takes its arg-max class. Returns the share of test cells right."""
    return _ridge_accuracies(train_x, {"y": train_y}, test_x, {"y": test_y}, l2)["y"]


def _ridge_accuracies(
    train_x: torch.Tensor,
    train_labels: Mapping[str, torch.Tensor],
    test_x: torch.Tensor,
    test_labels: Mapping[str, torch.Tensor],
    l2: float,
) -> dict[str, float]:
    """``ridge_probe`` for several label sets at once: their one-hots sit side by side in one solve."""
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ConfigError(
            f"features must be (n, dims) with equal dims, got {tuple(train_x.shape)} and {tuple(test_x.shape)}"
        )
    for name, train_y in train_labels.items():
        test_y = test_labels[name]
        if train_y.shape[0] != train_x.shape[0] or test_y.shape[0] != test_x.shape[0] or train_y.ndim != 2:
            raise ConfigError("labels must be (n, cells) with one row per feature row")
    if l2 <= 0:
        raise ConfigError(f"l2 must be positive, got {l2}")
    mean, std = train_x.double().mean(0), train_x.double().std(0) + 1e-6
    ones = torch.ones(1, dtype=torch.float64)

    def design(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(x.double() - mean) / std, ones.expand(len(x), 1)], dim=1)  # (n, dims + 1)

    a, b = design(train_x), design(test_x)
    shapes = {}  # name -> (cells, classes)
    onehots = []
    for name, train_y in train_labels.items():
        classes = int(max(train_y.max(), test_labels[name].max())) + 1
        shapes[name] = (train_y.shape[1], classes)
        onehots.append(torch.nn.functional.one_hot(train_y, classes).double().flatten(1))  # (n, cells * classes)
    weights = torch.linalg.solve(a.T @ a + l2 * torch.eye(a.shape[1], dtype=torch.float64), a.T @ torch.cat(onehots, 1))
    scores = b @ weights  # (n_test, sum of cells * classes)
    accuracies, offset = {}, 0
    for name, (cells, classes) in shapes.items():
        width = cells * classes
        predicted = scores[:, offset : offset + width].reshape(len(b), cells, classes).argmax(-1)
        accuracies[name] = float((predicted == test_labels[name]).double().mean())
        offset += width
    return accuracies


def cell_probes(
    features: Mapping[str, Callable[[SceneBatch], torch.Tensor]],
    data: WorldData,
    *,
    train_batches: int = 60,
    test_batches: int = 10,
    batch_size: int = 64,
    l2: float = 10.0,
) -> dict[str, dict[str, float]]:
    """Per-cell kind/colour probe accuracy of each named feature function (scene batch -> (n, ...)).

    e.g. ``{"vit": lambda b: vit_features(vision, b.vit_pixels)}``; features are flattened per scene."""
    if train_batches < 1 or test_batches < 1 or batch_size < 1:
        raise ConfigError("train_batches, test_batches and batch_size must be positive")

    def collect(first_step: int, batches: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        rows: dict[str, list[torch.Tensor]] = {name: [] for name in features}
        labels: dict[str, list[torch.Tensor]] = {key: [] for key in PROBE_TARGETS}
        for step in range(first_step, first_step + batches):
            batch = data.scenes(step, batch_size)
            with torch.no_grad():
                for name, fn in features.items():
                    rows[name].append(fn(batch).flatten(1).float().cpu())
            targets = scene_targets(batch.scenes)
            for key in PROBE_TARGETS:
                labels[key].append(targets[key])
        return {k: torch.cat(v) for k, v in rows.items()}, {k: torch.cat(v) for k, v in labels.items()}

    train_x, train_y = collect(0, train_batches)
    test_x, test_y = collect(_PROBE_TEST_STEP, test_batches)
    return {name: _ridge_accuracies(train_x[name], train_y, test_x[name], test_y, l2) for name in features}


@dataclass(frozen=True)
class BandLoss:
    """Denoising loss of one timestep band with the images' own features and with another image's."""

    low: int
    high: int
    own: float
    other: float


@torch.no_grad()
def conditioning_use(
    detok: Detokenizer,
    vision: QwenViT,
    data: WorldData,
    *,
    bands: Sequence[tuple[int, int]] = DEFAULT_BANDS,
    n: int = 48,
    pooled: bool = False,
    seed: int = 0,
) -> list[BandLoss]:
    """Stage-1 loss per timestep band on ``n`` fresh scenes, own vs. shifted-by-one features (same noise).

    ``pooled`` feeds the 4-to-1 pooled tokens (the LLM-output path) instead of the raw ViT tokens."""
    if detok.stage != 1:
        raise ConfigError(f"conditioning_use probes a stage-1 de-tokenizer, got stage {detok.stage}")
    if n < 2:
        raise ConfigError(f"n must be at least 2 (features are swapped between images), got {n}")
    steps = detok.noise_scheduler.config.num_train_timesteps
    for low, high in bands:
        if not 0 <= low < high <= steps:
            raise ConfigError(f"band ({low}, {high}) must satisfy 0 <= low < high <= {steps}")
    batch = data.scenes(_PROBE_TEST_STEP, n)
    features = vit_features(vision, batch.vit_pixels)
    if pooled:
        features = pool_tokens_4to1(features)
    other = features.roll(1, dims=0)
    was_training = detok.training
    detok.eval()
    results = []
    try:
        for low, high in bands:
            timesteps = torch.randint(low, high, (n,), generator=torch.Generator().manual_seed(seed))
            losses = [
                float(
                    detok.training_loss(
                        batch.target_pixels, f, generator=torch.Generator().manual_seed(seed), timesteps=timesteps
                    )
                )
                for f in (features, other)
            ]
            results.append(BandLoss(low, high, *losses))
    finally:
        detok.train(was_training)
    return results


@torch.no_grad()
def teacher_forced_exact(
    lvlm: SeedXLVLM,
    vision: QwenViT,
    examples: Sequence[TrainingExample],
    *,
    pad_token_id: int = 0,
    batch_size: int = 16,
) -> float:
    """Share of ``examples`` whose labelled tokens are all the argmax of the teacher-forced logits.

    A labelled token is the argmax given the true prefix; if all of them are, greedy decoding writes the
    answer token by token (and stops at the labelled EOS), so this equals greedy exact match. Examples
    without a labelled token are refused. Leaves the modules' train/eval mode as it was.
    """
    if not examples:
        raise ConfigError("teacher_forced_exact needs at least one example")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    unlabelled = [i for i, e in enumerate(examples) if all(label == IGNORE_INDEX for label in e.labels)]
    if unlabelled:
        raise ConfigError(f"examples {unlabelled[:5]} have no labelled token; nothing to score")
    modes = [(m, m.training) for m in (lvlm, vision)]
    for module, _ in modes:
        module.eval()
    try:
        right = 0
        for start in range(0, len(examples), batch_size):
            batch = collate(list(examples[start : start + batch_size]), pad_token_id=pad_token_id)
            logits = lvlm_forward(lvlm, vision, batch).logits[:, :-1]
            labels = batch.labels[:, 1:].to(logits.device)
            labelled = labels != IGNORE_INDEX
            wrong = (logits.argmax(-1) != labels) & labelled
            right += int((~wrong.any(dim=1)).sum())
    finally:
        for module, mode in modes:
            module.train(mode)
    return right / len(examples)

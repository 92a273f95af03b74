"""Training batches drawn from the miniature world, as pure functions of (seed, step).

Images are rendered at the ViT crop size for the LLM and ViT, and at the de-tokenizer's size for its
pixel targets (pixel exact, no resampling); stage-2 condition images go through the same
``pil_to_tensor`` resize that inference applies to a user's source image.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from seedx_agent.config import SeedXConfig
from seedx_agent.miniature import world
from seedx_agent.miniature.tool_dialogs import random_dialog
from seedx_agent.pipeline import prompts
from seedx_agent.pipeline.anyres import preprocess, vit_transform
from seedx_agent.pipeline.detokenizer import pil_to_tensor
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.pipeline.tokens import BOX_START
from seedx_agent.training.samples import (
    TrainingExample,
    _Builder,
    chat_example,
    comprehension_example,
    edit_example,
    generation_example,
)

__all__ = ["LVLM_TASK_WEIGHTS", "SceneBatch", "WorldData", "scene_targets"]

# Task mixture of the LLM stages (weights, not probabilities).
LVLM_TASK_WEIGHTS: dict[str, float] = {
    "caption": 0.15,
    "vqa": 0.3,
    "grounding": 0.2,
    "text_to_image": 0.2,
    "edit": 0.15,
}
KIND_CLASSES = ("none", *world.KINDS)
COLOUR_CLASSES = ("none", *world.COLOURS)
SIZE_CLASSES = ("none", *world.SIZES)


@dataclass
class SceneBatch:
    """Scenes rendered for the ViT (normalised) and as de-tokenizer targets ([-1, 1])."""

    scenes: list[world.Scene]
    vit_pixels: torch.Tensor  # (n, 3, S, S)
    target_pixels: torch.Tensor  # (n, 3, s, s)
    condition_pixels: torch.Tensor | None = None  # (n, 3, s, s) stage-2 source images
    source_vit_pixels: torch.Tensor | None = None


def scene_targets(scenes: Sequence[world.Scene]) -> dict[str, torch.Tensor]:
    """Per-cell class labels (kind, colour, size) plus background and title flags, for ViT pre-training."""
    kinds = torch.zeros(len(scenes), world.GRID * world.GRID, dtype=torch.long)
    colours = torch.zeros_like(kinds)
    sizes = torch.zeros_like(kinds)
    for i, scene in enumerate(scenes):
        for shape in scene.shapes:
            cell = shape.cell[0] * world.GRID + shape.cell[1]
            kinds[i, cell] = KIND_CLASSES.index(shape.kind)
            colours[i, cell] = COLOUR_CLASSES.index(shape.colour)
            sizes[i, cell] = SIZE_CLASSES.index(shape.size)
    background = torch.tensor([list(world.BACKGROUNDS).index(s.background) for s in scenes])
    title = torch.tensor([int(s.title is not None) for s in scenes])
    return {"kind": kinds, "colour": colours, "size": sizes, "background": background, "title": title}


class WorldData:
    """Every batch the miniature recipes need, deterministic in ``(seed, step)``."""

    def __init__(
        self, config: SeedXConfig, tokenizer: SeedXTokenizer, *, seed: int = 0, title_probability: float = 0.15
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.seed = seed
        self.title_probability = title_probability
        self.vit_size = config.vision.image_size
        self.target_size = config.detokenizer.image_size

    def _rng(self, stream: str, step: int) -> random.Random:
        # Training seeds stay inside the world's train split (disjoint from held-out seeds).
        index = (step * 7919 + sum(map(ord, stream))) % world.SEEDS_PER_RUN
        return random.Random(world.SPLITS["train"].sample_seed(index, self.seed) * 31 + len(stream))

    def _vit(self, scene: world.Scene) -> torch.Tensor:
        return vit_transform(world.render(scene, self.vit_size), self.config.vision)

    def _target(self, scene: world.Scene) -> torch.Tensor:
        pixels = np.asarray(world.render(scene, self.target_size), dtype=np.float32)
        return torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1.0

    def scenes(self, step: int, n: int) -> SceneBatch:
        """Random scenes (ViT pre-training, stage-1 de-tokenizer)."""
        rng = self._rng("scenes", step)
        scenes = [world.random_scene(rng, title_probability=self.title_probability) for _ in range(n)]
        return SceneBatch(
            scenes, torch.stack([self._vit(s) for s in scenes]), torch.stack([self._target(s) for s in scenes])
        )

    def edits(self, step: int, n: int) -> SceneBatch:
        """Edit pairs for the stage-2 de-tokenizer: target scenes plus their source images as conditions."""
        rng = self._rng("edits", step)
        samples = [world.edit(world.random_scene(rng), rng) for _ in range(n)]
        sources = [world.render(s.source, self.vit_size) for s in samples]
        return SceneBatch(
            [s.target for s in samples],
            torch.stack([self._vit(s.target) for s in samples]),
            torch.stack([self._target(s.target) for s in samples]),
            pil_to_tensor(sources, self.target_size),
            torch.stack([vit_transform(image, self.config.vision) for image in sources]),
        )

    # -- LLM stages -----------------------------------------------------------------------------
    def lvlm_examples(
        self, step: int, n: int, *, style: prompts.Style, weights: dict[str, float] | None = None
    ) -> list[TrainingExample]:
        """A mixed batch of captioning, VQA, grounding, text-to-image and edit examples in ``style``."""
        rng = self._rng(f"lvlm-{style}", step)
        mix = weights or LVLM_TASK_WEIGHTS
        tasks = rng.choices(list(mix), weights=list(mix.values()), k=n)
        return [self.example(task, rng, style=style) for task in tasks]

    def agent_examples(
        self,
        step: int,
        n_dialogs: int,
        n_tasks: int,
        *,
        task_every: int = 3,
        call_only: float = 0.6,
        scramble: float = 0.0,
    ) -> list[TrainingExample]:
        """Agent tuning: every ``task_every``-th step is the instruction-tuning mixture (``n_tasks`` examples,
        so the tasks are not forgotten), the other steps ``n_dialogs`` tool dialogs (``tool_dialogs``), a
        ``call_only`` share of them ending at the call (shorter, and the call is the planner's main job), a
        ``scramble`` share with scrambled free text (``tool_dialogs.scramble_free_text``: copy drills). The
        bundled miniature uses none: 0.4 over 900 steps did not teach the 4-layer LLM to copy (exact calls
        26 % vs 32 % without, README "miniature" section).
        Each batch is one kind, so short task examples are not padded to dialog length."""
        if step % task_every == task_every - 1:
            return self.lvlm_examples(step, n_tasks, style="seed-x-i")
        rng = self._rng("agent", step)
        return [
            chat_example(
                self.tokenizer,
                self.config,
                random_dialog(rng, scramble=scramble).conversation(through_answer=rng.random() >= call_only),
                max_length=self.config.llm.max_position_embeddings,
            )
            for _ in range(n_dialogs)
        ]

    def example(self, task: str, rng: random.Random, *, style: prompts.Style) -> TrainingExample:
        """One training example of ``task`` drawn from ``rng``."""
        sample = world.make_sample(task, rng, image_size=self.vit_size, title_probability=self.title_probability)
        return self.example_of(sample, style=style)

    def example_of(self, sample: world.Sample, *, style: prompts.Style) -> TrainingExample:
        """The LLM training example of one world sample (e.g. a held-out one, to score a run on)."""
        tok, cfg, size = self.tokenizer, self.config, self.vit_size
        if isinstance(sample, world.CaptionSample):
            question = world.CAPTION_QUESTION
            image = world.render(sample.scene, size)
            return comprehension_example(tok, cfg, [question, sample.caption], [image], style=style)
        if isinstance(sample, world.VQASample):
            image = world.render(sample.scene, size)
            return comprehension_example(tok, cfg, [sample.question, sample.answer], [image], style=style)
        if isinstance(sample, world.GroundingSample):
            return self._grounding(sample, style)
        if isinstance(sample, world.TextToImageSample):
            return generation_example(tok, cfg, sample.prompt, world.render(sample.scene, size), style=style)
        if isinstance(sample, world.EditSample):
            source, target = world.render(sample.source, size), world.render(sample.target, size)
            return edit_example(tok, cfg, source, sample.instruction, target)
        raise ValueError(f"{type(sample).__name__} has no LLM training example")

    def _grounding(self, sample: world.GroundingSample, style: prompts.Style) -> TrainingExample:
        """Grounding in the inference prompt of ``style``: the pre-trained prompt already ends with
        ``<box_start>``, so its answer continues from the first location token."""
        image = world.render(sample.scene, self.vit_size)
        crops = preprocess(image, self.config.vision, self.config.anyres.grids)
        prompt = prompts.grounding_prompt(style, crops.num_crops - 1, sample.phrase, self.config.lvlm.num_image_tokens)
        answer = sample.answer
        if style == "seed-x":
            answer = answer.removeprefix(BOX_START)
        builder = _Builder(self.tokenizer)
        builder.add_prompt(prompt)
        builder.add(self.tokenizer.encode(answer), labelled=True)
        builder.add_eos()
        n_crops = crops.num_crops
        return TrainingExample(
            builder.ids,
            builder.labels,
            builder.cmp,
            builder.gen,
            crops.pixel_values,
            crops.patch_positions,
            [True] * n_crops,
            [False] * n_crops,
        )

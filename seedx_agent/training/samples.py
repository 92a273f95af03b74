"""Training examples: token ids, labels and the four masks of reference §12.4, and their collation.

One ``TrainingExample`` is one sample before padding. Builders mirror the official data pipes:

* comprehension (LLaVA pipe): every crop is an LLM input; only assistant text (and EOS) is labelled;
* text-to-image (caption pipe in generation mode): the thumbnail's ViT features are the regression
  target; the caption is unlabelled (the 2024-06-21 fix), ``<img>`` and EOS are labelled, the
  placeholders and ``</img>`` are not;
* editing: the source crops are inputs, the target thumbnail is the regression target.

Prompts are rendered by ``seedx_agent.pipeline.prompts`` so training sees exactly the token sequences that
inference builds. Sequences are right-padded per batch (dynamic padding): with causal attention and
-100 labels on the padding this gives the same losses as the official fixed ``max_length`` padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import PIL.Image
import torch

from seedx_agent.config import SeedXConfig
from seedx_agent.errors import ConfigError, InvalidPromptError
from seedx_agent.pipeline import prompts
from seedx_agent.pipeline.anyres import AnyResCrops, preprocess
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.pipeline.tokens import BOI, EOI, image_token

__all__ = [
    "IGNORE_INDEX",
    "Batch",
    "TrainingExample",
    "chat_example",
    "collate",
    "comprehension_example",
    "edit_example",
    "generation_example",
]

IGNORE_INDEX = -100


@dataclass
class TrainingExample:
    """One sample: ids/labels/token masks plus its crops in prompt order and their crop masks."""

    input_ids: list[int]
    labels: list[int]
    ids_cmp_mask: list[bool]  # token positions that receive input image features
    ids_gen_mask: list[bool]  # placeholder positions of the image to generate
    pixel_values: torch.Tensor  # (crops, 3, S, S), normalised for the ViT
    patch_positions: torch.Tensor  # (crops, 2)
    embeds_cmp_mask: list[bool] = field(default_factory=list)  # crop i is an LLM input
    embeds_gen_mask: list[bool] = field(default_factory=list)  # crop i's pooled features are a target
    target_pixels: torch.Tensor | None = None  # optional (3, H, W) in [-1, 1] for de-tokenizer recipes

    def __post_init__(self) -> None:
        n = len(self.input_ids)
        if not (len(self.labels) == len(self.ids_cmp_mask) == len(self.ids_gen_mask) == n):
            raise ConfigError("input_ids, labels, ids_cmp_mask and ids_gen_mask must have the same length")
        crops = self.pixel_values.shape[0]
        if not (len(self.embeds_cmp_mask) == len(self.embeds_gen_mask) == self.patch_positions.shape[0] == crops):
            raise ConfigError("embeds_cmp_mask, embeds_gen_mask and patch_positions need one entry per crop")

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Batch:
    """Right-padded tensors for ``SeedXLVLM.forward`` plus the crops to run through the frozen ViT."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T)
    ids_cmp_mask: torch.Tensor  # (B, T) bool
    ids_gen_mask: torch.Tensor  # (B, T) bool
    pixel_values: torch.Tensor  # (crops, 3, S, S), crops of every sample in order
    patch_positions: torch.Tensor  # (crops, 2)
    embeds_cmp_mask: torch.Tensor  # (crops,) bool
    embeds_gen_mask: torch.Tensor  # (crops,) bool
    target_pixels: torch.Tensor | None = None  # (B, 3, H, W) when every example has one

    def to(self, device: torch.device | str) -> Batch:
        moved = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return Batch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})


def _encode(tokenizer: SeedXTokenizer, segments: Sequence[str]) -> tuple[list[int], list[bool]]:
    return tokenizer.encode_segments_with_mask(segments, add_bos=False)


def _answer_ids(tokenizer: SeedXTokenizer, text: str) -> list[int]:
    """Assistant text: special-token strings in it (``<box_start>``, ``<loc-5>``) are real tokens, as
    the official pipes tokenised responses with the plain tokenizer call."""
    return tokenizer.encode(text) if text else []


class _Builder:
    """Accumulates ids, labels and masks piece by piece."""

    def __init__(self, tokenizer: SeedXTokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = [tokenizer.bos_token_id]
        self.labels: list[int] = [IGNORE_INDEX]
        self.cmp: list[bool] = [False]
        self.gen: list[bool] = [False]

    def add(self, ids: Sequence[int], *, labelled: bool, cmp: Sequence[bool] | None = None) -> None:
        self.ids.extend(ids)
        self.labels.extend(ids if labelled else [IGNORE_INDEX] * len(ids))
        self.cmp.extend(cmp if cmp is not None else [False] * len(ids))
        self.gen.extend([False] * len(ids))

    def add_prompt(self, prompt: prompts.Prompt) -> None:
        ids, cmp = _encode(self.tokenizer, prompt.segments)
        self.add(ids, labelled=False, cmp=cmp)

    def add_output_image(self, num_image_tokens: int) -> None:
        """``<img>`` (labelled) + placeholders (gen mask, unlabelled) + ``</img>`` (unlabelled)."""
        tok = self.tokenizer
        self.add([tok.added_tokens[BOI]], labelled=True)
        placeholders = [tok.added_tokens[image_token(i)] for i in range(num_image_tokens)]
        self.ids.extend(placeholders)
        self.labels.extend([IGNORE_INDEX] * num_image_tokens)
        self.cmp.extend([False] * num_image_tokens)
        self.gen.extend([True] * num_image_tokens)
        self.add([tok.added_tokens[EOI]], labelled=False)

    def add_eos(self) -> None:
        self.add([self.tokenizer.eos_token_id], labelled=True)

    def check_length(self, max_length: int | None, what: str) -> None:
        if max_length is not None and len(self.ids) > max_length:
            raise InvalidPromptError(
                f"{what} sample has {len(self.ids)} tokens, more than max_length={max_length}; shorten it or "
                "raise max_length (the official pipes drop such samples)"
            )


def _crops(image: PIL.Image.Image, config: SeedXConfig, grids: Sequence[str]) -> AnyResCrops:
    return preprocess(image, config.vision, grids)


def comprehension_example(
    tokenizer: SeedXTokenizer,
    config: SeedXConfig,
    conversation: Sequence[str],
    images: Sequence[PIL.Image.Image] = (),
    *,
    style: prompts.Style = "seed-x-i",
    image_first: bool = True,
    max_length: int | None = None,
) -> TrainingExample:
    """LLaVA-style sample: ``conversation`` alternates user and assistant texts (user first).

    The images (any-res, every crop an input) go into the first user turn, before or after its text.
    Each user turn is rendered by ``prompts.chat_prompt`` rules; assistant texts are appended raw and
    labelled, and the final EOS is labelled.
    """
    if not conversation or len(conversation) % 2:
        raise InvalidPromptError("conversation must alternate user/assistant texts and end with an assistant text")
    crops = [_crops(image, config, config.anyres.grids) for image in images]
    n_tokens = config.lvlm.num_image_tokens
    builder = _Builder(tokenizer)
    for turn in range(0, len(conversation), 2):
        user, assistant = conversation[turn], conversation[turn + 1]
        if turn == 0:
            tiles = [c.num_crops - 1 for c in crops]
            prompt = prompts.comprehension_prompt(style, tiles, user, n_tokens, image_first=image_first)
        else:
            if style == "seed-x":
                raise ConfigError("the pre-training style has no multi-turn format; use style='seed-x-i'")
            prompt = prompts.Prompt().add_text("\n" + prompts.INST_OPEN)
            prompt.add_text(prompts._user_text(user, f"turn {turn} text")).add_text(prompts.INST_CLOSE)
        builder.add_prompt(prompt)
        builder.add(_answer_ids(tokenizer, (" " if style == "seed-x" else "") + assistant), labelled=True)
    builder.add_eos()
    builder.check_length(max_length, "comprehension")
    pixel_values, positions = _stack(crops, config)
    n_crops = pixel_values.shape[0]
    return TrainingExample(
        builder.ids,
        builder.labels,
        builder.cmp,
        builder.gen,
        pixel_values,
        positions,
        [True] * n_crops,
        [False] * n_crops,
    )


def chat_example(
    tokenizer: SeedXTokenizer,
    config: SeedXConfig,
    conversation: Sequence[str],
    *,
    max_length: int | None = None,
) -> TrainingExample:
    """The last assistant turn of a text-only chat, with every earlier turn as context in inference form.

    ``conversation`` alternates user and assistant texts and ends with the assistant text to learn. The
    context is ``prompts.chat_prompt`` over the earlier turns, encoded as ``SeedX.chat`` encodes a replayed
    conversation (one merged string); only the last answer and EOS are labelled. ``comprehension_example``
    instead encodes turn by turn as the official LLaVA pipe does, which tokenises replayed turns differently.
    """
    if len(conversation) < 2 or len(conversation) % 2:
        raise InvalidPromptError("conversation must alternate user/assistant texts and end with an assistant text")
    roles = ["user", "assistant"] * (len(conversation) // 2)
    turns = [prompts.Turn(role, text, ()) for role, text in zip(roles[:-1], conversation[:-1], strict=True)]
    builder = _Builder(tokenizer)
    ids, cmp = tokenizer.encode_segments_with_mask(
        prompts.chat_prompt("seed-x-i", turns, config.lvlm.num_image_tokens).segments
    )
    builder.add(ids, labelled=False, cmp=cmp)
    builder.add(_answer_ids(tokenizer, conversation[-1]), labelled=True)
    builder.add_eos()
    builder.check_length(max_length, "chat")
    pixel_values, positions = _stack([], config)
    return TrainingExample(builder.ids, builder.labels, builder.cmp, builder.gen, pixel_values, positions)


def generation_example(
    tokenizer: SeedXTokenizer,
    config: SeedXConfig,
    caption: str,
    image: PIL.Image.Image,
    *,
    style: prompts.Style = "seed-x-i",
    response: str = "",
    max_length: int | None = None,
    target_pixels: torch.Tensor | None = None,
) -> TrainingExample:
    """Text-to-image sample: caption prompt (unlabelled) -> optional response -> image block -> EOS.

    The image is any-res'ed with the 1x1 grid: crops [tile, thumbnail], neither an input; the thumbnail's
    pooled ViT features are the regression target (§12.4).
    """
    builder = _Builder(tokenizer)
    prompt = prompts.generation_prompt(style, caption)
    if style == "seed-x":  # pre-training: "{caption}" then the image block; <img> is the last prompt token
        prompt.segments.pop()  # the generation prompt ends with <img>, which the image block adds (labelled)
    builder.add_prompt(prompt)
    builder.add(_answer_ids(tokenizer, response), labelled=True)
    builder.add_output_image(config.lvlm.num_image_tokens)
    builder.add_eos()
    builder.check_length(max_length, "text-to-image")
    crops = _crops(image, config, ("1x1",))
    return TrainingExample(
        builder.ids,
        builder.labels,
        builder.cmp,
        builder.gen,
        crops.pixel_values,
        crops.patch_positions,
        [False] * crops.num_crops,
        [False] * (crops.num_crops - 1) + [True],
        target_pixels,
    )


def edit_example(
    tokenizer: SeedXTokenizer,
    config: SeedXConfig,
    source: PIL.Image.Image,
    instruction: str,
    target: PIL.Image.Image,
    *,
    response: str = "",
    image_first: bool = True,
    max_length: int | None = None,
    target_pixels: torch.Tensor | None = None,
) -> TrainingExample:
    """Edit triplet: ``[INST] <source>instruction [/INST]\\n`` + response + target image block + EOS."""
    source_crops = _crops(source, config, config.anyres.edit_grids)
    target_crops = _crops(target, config, ("1x1",))
    builder = _Builder(tokenizer)
    builder.add_prompt(
        prompts.edit_prompt(
            source_crops.num_crops - 1, instruction, config.lvlm.num_image_tokens, image_first=image_first
        )
    )
    builder.add(_answer_ids(tokenizer, response), labelled=True)
    builder.add_output_image(config.lvlm.num_image_tokens)
    builder.add_eos()
    builder.check_length(max_length, "edit")
    pixel_values = torch.cat([source_crops.pixel_values, target_crops.pixel_values])
    positions = torch.cat([source_crops.patch_positions, target_crops.patch_positions])
    n_src, n_tgt = source_crops.num_crops, target_crops.num_crops
    return TrainingExample(
        builder.ids,
        builder.labels,
        builder.cmp,
        builder.gen,
        pixel_values,
        positions,
        [True] * n_src + [False] * n_tgt,
        [False] * n_src + [False] * (n_tgt - 1) + [True],
        target_pixels,
    )


def _stack(crops: Sequence[AnyResCrops], config: SeedXConfig) -> tuple[torch.Tensor, torch.Tensor]:
    if not crops:
        size = config.vision.image_size
        return torch.zeros(0, 3, size, size), torch.zeros(0, 2)
    return torch.cat([c.pixel_values for c in crops]), torch.cat([c.patch_positions for c in crops])


def collate(examples: Sequence[TrainingExample], *, pad_token_id: int = 0) -> Batch:
    """Stack examples: token tensors right-padded to the longest (pad id, attention 0, label -100,
    masks False); crops and crop masks concatenated in sample order (the §5.5 order invariant)."""
    if not examples:
        raise ConfigError("cannot collate an empty list of examples")
    length = max(len(e) for e in examples)

    def pad(values: list, fill: object) -> list:
        return values + [fill] * (length - len(values))

    target_pixels = None
    if all(e.target_pixels is not None for e in examples):
        target_pixels = torch.stack([e.target_pixels for e in examples])  # type: ignore[misc]
    return Batch(
        input_ids=torch.tensor([pad(e.input_ids, pad_token_id) for e in examples]),
        attention_mask=torch.tensor([pad([1] * len(e), 0) for e in examples]),
        labels=torch.tensor([pad(e.labels, IGNORE_INDEX) for e in examples]),
        ids_cmp_mask=torch.tensor([pad(e.ids_cmp_mask, False) for e in examples]),
        ids_gen_mask=torch.tensor([pad(e.ids_gen_mask, False) for e in examples]),
        pixel_values=torch.cat([e.pixel_values for e in examples]),
        patch_positions=torch.cat([e.patch_positions for e in examples]),
        embeds_cmp_mask=torch.tensor([m for e in examples for m in e.embeds_cmp_mask], dtype=torch.bool),
        embeds_gen_mask=torch.tensor([m for e in examples for m in e.embeds_gen_mask], dtype=torch.bool),
        target_pixels=target_pixels,
    )

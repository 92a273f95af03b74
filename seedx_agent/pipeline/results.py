"""What the abilities return, and what they take: the result records of comprehension, grounding, generation and
chat, and the chat message type. Plain dataclasses, so callers can inspect and serialise them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import PIL.Image
import torch

from seedx_agent.pipeline.tokens import Box

__all__ = ["ChatMessage", "ChatResult", "ComprehendResult", "GeneratedImage", "GroundingResult", "ImageInput"]

ImageInput = str | Path | bytes | PIL.Image.Image | np.ndarray


@dataclass
class ComprehendResult:
    """Answer about images: display text (tags stripped), raw text and any boxes it contains."""

    text: str
    raw_text: str
    boxes: list[Box]
    token_ids: list[int]


@dataclass
class GroundingResult:
    """Boxes (pixel xyxy in the original image) for a phrase, with the model's text."""

    boxes: list[Box]
    text: str
    raw_text: str

    @property
    def box(self) -> Box | None:
        return self.boxes[0] if self.boxes else None


@dataclass
class GeneratedImage:
    """An image produced by generation or editing, with the features the LLM regressed."""

    image: PIL.Image.Image
    images: list[PIL.Image.Image]
    text: str
    raw_text: str
    features: torch.Tensor  # (num_images, num_image_tokens, vit_dim)
    seed: int | None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class ChatMessage:
    """One chat message; ``images`` only for user messages (any input ``load_image`` accepts)."""

    role: Literal["user", "assistant"]
    text: str = ""
    images: Sequence[ImageInput] = ()


@dataclass
class ChatResult:
    """A chat answer: display text, raw text, rendered images, boxes (on the first input image) and features."""

    text: str
    raw_text: str
    images: list[PIL.Image.Image]
    boxes: list[Box]
    features: torch.Tensor | None

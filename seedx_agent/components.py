"""The loaded parts of a SEED-X system, built from a config (random weights) or filled by a loader.

A ``SeedXComponents`` is what ``checkpoints.py`` reads and writes and what ``model.SeedX`` composes:
one tokenizer and ViT shared by every LLM variant, one LVLM per variant, and the de-tokenizer stages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from seedx_agent.config import VARIANTS, SeedXConfig
from seedx_agent.detokenizer import Detokenizer
from seedx_agent.errors import ConfigError
from seedx_agent.lvlm import SeedXLVLM
from seedx_agent.tokenizer import SeedXTokenizer
from seedx_agent.vision import QwenViT

__all__ = ["SeedXComponents", "build_components", "stage_for_variant"]


def stage_for_variant(variant: str) -> int:
    """SEED-X-Edit uses the stage-2 (condition image) de-tokenizer; the others stage 1 (§1, issue #2)."""
    return 2 if variant == "seed-x-edit" else 1


@dataclass
class SeedXComponents:
    config: SeedXConfig
    tokenizer: SeedXTokenizer
    vision: QwenViT
    lvlms: dict[str, SeedXLVLM] = field(default_factory=dict)
    detokenizers: dict[int, Detokenizer] = field(default_factory=dict)

    def modules(self) -> Iterator[tuple[str, torch.nn.Module]]:
        yield "vision", self.vision
        for variant, lvlm in self.lvlms.items():
            yield f"lvlm:{variant}", lvlm
        for stage, detok in self.detokenizers.items():
            yield f"detokenizer:{stage}", detok


def _check_variants(variants: Iterable[str]) -> tuple[str, ...]:
    variants = tuple(variants)
    if not variants:
        raise ConfigError("at least one variant is needed, e.g. variants=('seed-x-i',)")
    for variant in variants:
        if variant not in VARIANTS:
            raise ConfigError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    return variants


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_components(
    config: SeedXConfig,
    *,
    tokenizer: SeedXTokenizer,
    variants: Iterable[str] | None = None,
    stages: Iterable[int] | None = None,
    seed: int | None = 0,
    device: str | torch.device = "cpu",
) -> SeedXComponents:
    """Instantiate every requested part with (seeded) random weights.

    ``device="meta"`` builds the structure without allocating weights (for loaders and size checks).
    """
    variants = _check_variants(variants or (config.variant,))
    stages = tuple(stages) if stages is not None else tuple(sorted({stage_for_variant(v) for v in variants}))
    if tokenizer.vocab_size != config.llm.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the LLM vocabulary is {config.llm.vocab_size}"
        )
    with _seeded(seed), torch.device(device):
        vision = QwenViT(config.vision)
        lvlms = {v: SeedXLVLM(config.llm, config.lvlm) for v in variants}
        detoks = {}
        for stage in stages:
            if stage not in (1, 2):
                raise ConfigError(f"de-tokenizer stage must be 1 or 2, got {stage!r}")
            detoks[stage] = Detokenizer(config.detokenizer if stage == 1 else config.edit_detokenizer)
        if 1 in detoks and 2 in detoks and detoks[1].vae is not None and detoks[2].vae is not None:
            # The release ships one SDXL VAE for both stages; random builds share it the same way.
            detoks[2].vae.load_state_dict(detoks[1].vae.state_dict())
    parts = SeedXComponents(config, tokenizer, vision, lvlms, detoks)
    for _, module in parts.modules():
        module.eval()
    return parts

"""The loaded parts of a SEED-X system, built from a config (random weights) or filled by a loader.

A ``SeedXComponents`` is what ``seedx_agent.weights`` reads and writes and what ``model.SeedX`` composes:
one tokenizer and ViT shared by every LLM variant, one LVLM per variant, and the de-tokenizer stages.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from seedx_agent.config import VARIANTS, SeedXConfig
from seedx_agent.errors import ConfigError
from seedx_agent.pipeline.detokenizer import Detokenizer
from seedx_agent.pipeline.lvlm import SeedXLVLM
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.pipeline.vision import QwenViT

__all__ = ["SeedXComponents", "build_components", "import_diffusers_without_bitsandbytes", "stage_for_variant"]


class _DeferredModule(types.ModuleType):
    """Stands in for an optional module; the real one is imported when an attribute is first read."""

    def __getattr__(self, attribute: str) -> Any:
        """Import the real module (once the stand-in is out of ``sys.modules``) and read ``attribute`` from it."""
        if attribute.startswith("__"):  # import-system probes (__path__, ...): a plain, attribute-less module
            raise AttributeError(attribute)
        _DEFERRING.discard(self.__name__)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attribute)


class _DeferringFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """While installed, ``import bitsandbytes`` yields a ``_DeferredModule`` instead of running bitsandbytes."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        """A spec loaded by this finder for a deferred name; None (ask the next finder) otherwise."""
        return importlib.util.spec_from_loader(fullname, self) if fullname in _DEFERRING else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        """The stand-in module."""
        return _DeferredModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing runs: that is the point."""


_DEFERRING: set[str] = set()
# what seedx_agent.pipeline.detokenizer imports from diffusers
_DIFFUSERS_CLASSES = (
    "AutoencoderKL",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "UNet2DConditionModel",
)
_diffusers_ready = False
_diffusers_lock = threading.Lock()


def import_diffusers_without_bitsandbytes() -> None:
    """Import the diffusers classes the de-tokenizer uses without running ``import bitsandbytes``.

    diffusers (and peft, which diffusers imports) import bitsandbytes whenever it is installed, and
    bitsandbytes then probes the hub for kernels and logs warnings, even offline. The library needs it
    only for ``quantize_llm``. So during this one import every ``import bitsandbytes`` binds a stand-in
    that imports the real package on first attribute use: those libraries' own bitsandbytes paths keep
    working, and ``bitsandbytes`` is not in ``sys.modules`` afterwards.
    """
    global _diffusers_ready
    with _diffusers_lock:
        if _diffusers_ready:
            return
        defer = "bitsandbytes" not in sys.modules and importlib.util.find_spec("bitsandbytes") is not None
        finder = _DeferringFinder()
        if defer:
            _DEFERRING.add("bitsandbytes")
            sys.meta_path.insert(0, finder)
        try:
            import diffusers

            for name in _DIFFUSERS_CLASSES:
                getattr(diffusers, name)
        finally:
            if defer:
                sys.meta_path.remove(finder)
                _DEFERRING.discard("bitsandbytes")
                if isinstance(sys.modules.get("bitsandbytes"), _DeferredModule):
                    del sys.modules["bitsandbytes"]  # the stand-ins stay bound where they were imported
        _diffusers_ready = True


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


def _check_variants(variants: Iterable[str], *, allow_none: bool = False) -> tuple[str, ...]:
    variants = tuple(variants)
    if not variants and not allow_none:
        raise ConfigError(
            "at least one variant is needed, e.g. variants=('seed-x-i',) (or variants=() with stages= for "
            "de-tokenizers alone)"
        )
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
    ``variants=()`` with ``stages`` builds no LLM (a de-tokenizer-only process, e.g. a serving replica).
    """
    explicit_stages = stages is not None and bool(tuple(stages := tuple(stages)))
    chosen = tuple(variants) if variants is not None else (config.variant,)
    variants = _check_variants(chosen, allow_none=explicit_stages)
    stages = tuple(stages) if stages is not None else tuple(sorted({stage_for_variant(v) for v in variants}))
    if tokenizer.vocab_size != config.llm.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the LLM vocabulary is {config.llm.vocab_size}"
        )
    if stages:
        import_diffusers_without_bitsandbytes()  # the de-tokenizers' diffusers models come next
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

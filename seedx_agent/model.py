"""``SeedX``: the facade that composes the pipeline modules; it adds no model maths of its own.

Comprehension and grounding run the any-res ViT path into the LLM; generation decodes an image block
whose hidden states go through the output resampler into the stage-1 de-tokenizer; editing needs the
SEED-X-Edit LLM and the stage-2 de-tokenizer, and says so when they are not loaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch

from seedx_agent.config import VARIANTS, SeedXConfig
from seedx_agent.errors import CapabilityMissingError, ConfigError, InvalidPromptError
from seedx_agent.pipeline import prompts
from seedx_agent.pipeline import prompts as templates  # for methods whose argument is named prompts
from seedx_agent.pipeline.anyres import AnyResCrops, preprocess, preprocess_batch, vit_transform
from seedx_agent.pipeline.components import SeedXComponents, stage_for_variant
from seedx_agent.pipeline.decoding import DecodeOutput, GenerationOptions, LogitsProcessor
from seedx_agent.pipeline.images import (
    DEFAULT_MAX_PIXELS,
    as_image_list,
    check_image_source,
    is_image_source,
    load_image,
)
from seedx_agent.pipeline.llm_pass import prefill_and_decode
from seedx_agent.pipeline.lvlm import SeedXLVLM
from seedx_agent.pipeline.results import (
    ChatMessage,
    ChatResult,
    ComprehendResult,
    GeneratedImage,
    GroundingResult,
    ImageInput,
)
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.pipeline.tokens import TokenIds, parse_boxes, strip_tags
from seedx_agent.pipeline.vision import pool_tokens_4to1
from seedx_agent.speed.cpu_linear import (
    ONEDNN_MIN_WEIGHT_ELEMENTS,
    LinearKernel,
    linear_kernel_of,
    resolve_linear_kernel,
    use_linear_kernel,
)
from seedx_agent.speed.lean_step import fuse_qkv
from seedx_agent.speed.prefix_cache import PrefixKVCache, weights_version
from seedx_agent.weights.loading import load_parts

__all__ = [
    "ChatMessage",
    "ChatResult",
    "ComprehendResult",
    "GeneratedImage",
    "GroundingResult",
    "ImageInput",
    "SeedX",
]

logger = logging.getLogger(__name__)


def _render_aliases(
    num_inference_steps: int | None, steps: int | None, guidance_scale: float | None, guidance: float | None
) -> tuple[int | None, float | None]:
    """``steps``/``guidance`` are short names of diffusers' ``num_inference_steps``/``guidance_scale``."""
    for long, long_value, short, short_value in (
        ("num_inference_steps", num_inference_steps, "steps", steps),
        ("guidance_scale", guidance_scale, "guidance", guidance),
    ):
        if long_value is not None and short_value is not None:
            raise ConfigError(f"pass either {short}= or {long}= (the same setting), not both")
    return (
        num_inference_steps if num_inference_steps is not None else steps,
        guidance_scale if guidance_scale is not None else guidance,
    )


class SeedX:
    """A loaded SEED-X system: one ViT/tokenizer, one LLM per variant, de-tokenizer stages 1 and/or 2."""

    def __init__(self, parts: SeedXComponents) -> None:
        self.parts = parts
        self.config: SeedXConfig = parts.config
        self.tokenizer: SeedXTokenizer = parts.tokenizer
        self.ids = TokenIds.from_vocab(parts.tokenizer, parts.config.lvlm.num_image_tokens)
        self._negative_cache: dict[tuple[str, str, str], torch.Tensor] = {}
        # KV of prompts up to their last input image, reused across turns/questions (LRU by bytes; 0 = off),
        # keyed by the weights version of the ViT and the LLM, so changed weights never reuse a stale prefix.
        self.prefix_cache = PrefixKVCache()
        # Images with more pixels are refused (ImageTooLargeError); the library-wide default, also ImageMemory's.
        self.max_pixels: int = DEFAULT_MAX_PIXELS

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path_or_preset: str | Path | SeedXConfig = "mini",
        *,
        config: SeedXConfig | str | None = None,
        variants: Sequence[str] | None = None,
        variant: str | None = None,
        stages: Sequence[int] | None = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        device_map: dict[str, str] | None = None,
        seed: int = 0,
        tokenizer: SeedXTokenizer | None = None,
        allow_pickle: bool = False,
        vit_path: str | Path | None = None,
        sdxl_path: str | Path | None = None,
        quantize_llm: Literal[4, 8] | None = None,
        linear_kernel: LinearKernel = "auto",
        verify: bool = True,
        check_finite: bool = True,
    ) -> SeedX:
        """The one way to load: ``"mini"`` (the bundled trained miniature), a checkpoint folder (our safetensors
        layout or the official release), or random weights for a preset name / ``SeedXConfig`` (tests, sizing).

        ``variants`` picks LLMs (e.g. ``("seed-x-i", "seed-x-edit")`` for generation and editing; default: all in
        our layout, the geometry's own variant otherwise), ``variant`` is the one-LLM shorthand; ``stages`` the
        de-tokenizer stages. ``device``/``device_map`` (keys vision, llm, detokenizer) and ``dtype`` (default fp32
        on CPU, bf16 on CUDA) place the parts; ``quantize_llm`` (4 or 8) needs bitsandbytes; ``linear_kernel``:
        see ``set_linear_kernel``. Nothing is ever downloaded.

        ``config`` (a ``SeedXConfig`` or preset name) gives the official release its geometry (default
        ``seed-x-i``; the release's own config files are checked against it); with our layout, whose stored
        ``config.json`` is authoritative, a differing ``config`` raises ``ConfigError`` naming the fields.
        ``allow_pickle`` opts in to the release's ``.bin``/``.pt`` files (``torch.load(weights_only=True)``).
        ``verify`` (default on) checks every file read against ``manifest.json``'s size and sha256
        (``CorruptCheckpointError`` names the file; unchanged files are remembered per process, so a second load
        costs under 1 ms). ``check_finite`` (default on) refuses NaN/Inf weights (``NonFiniteWeightError``).
        ``seed`` and ``tokenizer`` apply to random weights only (full-size presets need the LLaMA-2 tokenizer).
        """
        resolve_linear_kernel(linear_kernel)  # a bad name fails before any weights are read
        if variant is not None:
            if variants is not None:
                raise ConfigError("pass either variant= (one LLM) or variants= (several), not both")
            variants = (variant,)
        parts = load_parts(
            path_or_preset,
            config=config,
            variants=variants,
            stages=stages,
            device=device,
            dtype=dtype,
            device_map=device_map,
            seed=seed,
            tokenizer=tokenizer,
            allow_pickle=allow_pickle,
            vit_path=vit_path,
            sdxl_path=sdxl_path,
            quantize_bits=quantize_llm,
            verify=verify,
            check_finite=check_finite,
        )
        model = cls(parts)
        model.set_linear_kernel(linear_kernel)
        return model

    def set_linear_kernel(
        self, kernel: LinearKernel = "auto", *, min_weight_elements: int = ONEDNN_MIN_WEIGHT_ELEMENTS
    ) -> int:
        """Run the large ``nn.Linear`` layers of every component through oneDNN on CPU (``"onednn"``, or
        ``"auto"``: when this torch build supports it) or through torch's ``F.linear`` (``"torch"``, the
        reference). Only CPU fp32 inference changes (1.2-1.4x on this kind of machine, fp32 rounding
        differences only); GPU, bf16 and training always use ``F.linear``. With oneDNN the LLMs' q/k/v
        weights also move into one buffer per layer (``decode_step.fuse_qkv``: views, no extra memory) so a
        decoding step reads them in one GEMV. Returns the layers switched."""
        switched = sum(
            use_linear_kernel(module, kernel, min_weight_elements=min_weight_elements)
            for _, module in self.parts.modules()
        )
        for lvlm in self.parts.lvlms.values():
            if linear_kernel_of(lvlm.backbone) == "onednn":
                fuse_qkv(lvlm.backbone)
        return switched

    def weights_version(self, variant: str | None = None) -> str:
        """Digest of the ViT's and one LLM's weights (default: all LLMs); changes on any in-place change.

        See ``kv_cache.weights_version``: identities, storage pointers, version counters, dtypes, devices,
        peft adapter state and (with ``prefix_cache.content_check``) an exact checksum of the bits.
        """
        lvlms = [self.parts.lvlms[variant]] if variant is not None else list(self.parts.lvlms.values())
        return weights_version([self.parts.vision, *lvlms], content=self.prefix_cache.content_check)

    def _vision_version(self) -> str:
        """Weights version of the ViT alone (keys the CFG negative)."""
        return weights_version([self.parts.vision], content=self.prefix_cache.content_check)

    def invalidate_caches(self) -> None:
        """Drop every cache derived from the weights (prefix KV, CFG negative); changes are also detected
        automatically at each lookup, so this is only needed to free their memory at once."""
        self.prefix_cache.clear()
        self._negative_cache.clear()

    def save_pretrained(self, folder: str | Path) -> None:
        """Write our safetensors layout; ``from_pretrained`` reads it back bit-exactly."""
        from seedx_agent.weights import save_components

        save_components(self.parts, Path(folder))

    # -- small accessors ---------------------------------------------------------------------------
    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(self.parts.lvlms)

    def _lvlm(self, variant: str | None, *, purpose: str, prefer: Sequence[str]) -> tuple[str, SeedXLVLM]:
        if variant is not None:
            if variant not in VARIANTS:
                raise ConfigError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
            if variant not in self.parts.lvlms:
                raise CapabilityMissingError(
                    f"{purpose} asked for the {variant!r} LLM but only {list(self.variants)} are loaded; "
                    f"load it with from_pretrained(..., variants=({variant!r}, ...))"
                )
            return variant, self.parts.lvlms[variant]
        for name in prefer:
            if name in self.parts.lvlms:
                return name, self.parts.lvlms[name]
        raise CapabilityMissingError(
            f"{purpose} needs one of the LLM variants {list(prefer)}; loaded: {list(self.variants)}"
        )

    # -- image encoding ----------------------------------------------------------------------------
    def _load(self, image: object, argument: str) -> PIL.Image.Image:
        """``load_image`` after the type check naming ``argument``, with this model's ``max_pixels``."""
        check_image_source(image, argument=argument)
        return load_image(image, max_pixels=self.max_pixels)  # type: ignore[arg-type]

    def _load_all(self, images: object, argument: str, *, allow_empty: bool = False) -> list[PIL.Image.Image]:
        """One image or a sequence of them (``argument[i]`` in messages), type-checked and loaded."""
        items = as_image_list(images, argument, allow_empty=allow_empty)
        if len(items) == 1 and is_image_source(images):
            return [self._load(items[0], argument)]
        for index, item in enumerate(items):  # type errors first, before any image is decoded
            check_image_source(item, argument=f"{argument}[{index}]")
        return [self._load(item, f"{argument}[{index}]") for index, item in enumerate(items)]

    def _crops(
        self, images: object, grids: Sequence[str], *, argument: str = "images", allow_empty: bool = False
    ) -> tuple[list[PIL.Image.Image], list[AnyResCrops]]:
        pil = self._load_all(images, argument, allow_empty=allow_empty)
        return pil, preprocess_batch(pil, self.config.vision, grids) if pil else []

    @torch.no_grad()
    def encode_crops(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ViT features of normalised crops (n, 3, S, S) -> (n, vit_tokens, vit_dim)."""
        vision = self.parts.vision
        param = next(vision.parameters())
        return vision(pixel_values.to(device=param.device, dtype=param.dtype))

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[ImageInput]) -> np.ndarray:
        """One L2-normalised vector per image (mean of the thumbnail's ViT tokens), for image search."""
        pil = self._load_all(images, "images")
        crops = [preprocess(image, self.config.vision, ("1x1",)) for image in pil]
        thumbs = torch.stack([c.pixel_values[-1] for c in crops])  # (n, 3, S, S) thumbnails
        features = self.encode_crops(thumbs).float().mean(dim=1)  # (n, vit_dim)
        return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()

    def negative_features(self, *, pooled: bool) -> torch.Tensor:
        """ViT features of the all-zero (normalised) image: the CFG negative of §9.2, cached."""
        param = next(self.parts.vision.parameters())
        key = (str(param.device), str(param.dtype), self._vision_version())
        if key not in self._negative_cache:
            self._negative_cache = {k: v for k, v in self._negative_cache.items() if k[2] == key[2]}
            size = self.config.vision.image_size
            zeros = torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)
            self._negative_cache[key] = self.encode_crops(zeros)  # (1, vit_tokens, vit_dim)
        raw = self._negative_cache[key]
        return pool_tokens_4to1(raw) if pooled else raw

    # -- the LLM pass ------------------------------------------------------------------------------
    @torch.no_grad()
    def _run_llm(
        self,
        lvlm: SeedXLVLM,
        prompt: prompts.Prompt,
        crops: Sequence[AnyResCrops],
        options: GenerationOptions,
        on_token: Callable[[int], None] | None = None,
        logits_processor: LogitsProcessor | None = None,
    ) -> DecodeOutput:
        input_ids, cmp_mask = self.tokenizer.encode_segments_with_mask(prompt.segments, add_bos=True)
        budget = self.config.llm.max_position_embeddings
        if len(input_ids) + options.max_new_tokens > budget:
            raise InvalidPromptError(
                f"prompt of {len(input_ids)} tokens plus max_new_tokens={options.max_new_tokens} exceeds the "
                f"context of {budget}; shorten the text, use fewer/smaller images or lower max_new_tokens"
            )
        return prefill_and_decode(
            lvlm,
            self.ids,
            input_ids,
            cmp_mask,
            crops,
            options,
            encode_crops=self.encode_crops,
            vision=self.parts.vision,
            prefix_cache=self.prefix_cache,
            on_token=on_token,
            logits_processor=logits_processor,
        )

    def _answer_text(self, token_ids: Sequence[int]) -> str:
        """The answer's text with its special tags; an image shows as ``<img> </img>`` (placeholders dropped)."""
        placeholders = set(self.ids.image)
        kept = [t for t in token_ids if t not in placeholders and t != self.ids.eos]
        return self.tokenizer.decode(kept)

    def _options(self, options: GenerationOptions | None, **overrides: Any) -> GenerationOptions:
        base = options or GenerationOptions(max_new_tokens=self.config.max_new_tokens)
        return base.model_copy(update=overrides) if overrides else base

    # -- public abilities --------------------------------------------------------------------------
    def comprehend(
        self,
        images: ImageInput | Sequence[ImageInput],
        question: prompts.Question,
        *,
        variant: str | None = None,
        options: GenerationOptions | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> ComprehendResult:
        """Answer ``question`` about one or more images (any-res with the 8 default grids).

        With one image, ``question`` may be a list mixing text and ``Box``es (pixel xyxy) to refer to
        regions, e.g. ``["What colour is ", Box(10, 10, 50, 40), "?"]``: each box is written as its
        ``<box_start><loc-..>x4<box_end>`` tokens (224 bins), the reverse of what ``ground`` reads.
        """
        name, lvlm = self._lvlm(variant, purpose="comprehension", prefer=("seed-x-i", "seed-x", "seed-x-edit"))
        pil, crops = self._crops(images, self.config.anyres.grids, argument="images")
        tiles = [c.num_crops - 1 for c in crops]
        prompt = prompts.comprehension_prompt(
            name,
            tiles,
            question,
            self.config.lvlm.num_image_tokens,  # type: ignore[arg-type]
            image_size=pil[0].size,  # boxes refer to it; the prompt refuses boxes with several images
        )
        out = self._run_llm(lvlm, prompt, crops, self._options(options), on_token)
        raw = self._answer_text(out.token_ids)
        boxes = parse_boxes(raw, pil[0].size) if len(pil) == 1 else []
        return ComprehendResult(strip_tags(raw), raw, boxes, out.token_ids)

    def ground(
        self,
        image: ImageInput,
        phrase: str,
        *,
        variant: str | None = None,
        options: GenerationOptions | None = None,
    ) -> GroundingResult:
        """Locate ``phrase``; boxes come back in pixel xyxy of the original image (§7.1)."""
        check_image_source(image, argument="image")
        name, lvlm = self._lvlm(variant, purpose="grounding", prefer=("seed-x-i", "seed-x"))
        pil, crops = self._crops(image, self.config.anyres.grids, argument="image")
        prompt = prompts.grounding_prompt(
            name,
            crops[0].num_crops - 1,
            phrase,
            self.config.lvlm.num_image_tokens,  # type: ignore[arg-type]
        )
        out = self._run_llm(lvlm, prompt, crops, self._options(options))
        raw = self._answer_text(out.token_ids)
        boxes = parse_boxes(raw, pil[0].size, label=phrase)
        return GroundingResult(boxes, strip_tags(raw), raw)

    def _render(
        self,
        stage: int,
        features: torch.Tensor,
        *,
        condition: PIL.Image.Image | None = None,
        seed: int | Sequence[int | None] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        size: int | None = None,
        scheduler: str = "euler",
        progress: bool = False,
    ) -> list[PIL.Image.Image]:
        detok = self.parts.detokenizers.get(stage)
        if detok is None:
            raise CapabilityMissingError(
                f"the stage-{stage} de-tokenizer is not loaded (loaded stages: {sorted(self.parts.detokenizers)}); "
                f"load it with from_pretrained(..., stages=({stage},))"
            )
        if isinstance(seed, Sequence):  # one seed per feature row (generate_images)
            generator: Any = [torch.Generator().manual_seed(s) if s is not None else None for s in seed]
        else:
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
        negative = self.negative_features(pooled=features.shape[1] != self.negative_features(pooled=False).shape[1])
        kwargs: dict[str, Any] = {}
        if stage == 2:
            kwargs = {
                "condition_images": [condition] if condition is not None else None,
                "image_guidance_scale": image_guidance_scale,
            }
        return detok.generate(
            features,
            negative,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            scheduler=scheduler,
            output_size=size,
            progress=progress,
            **kwargs,
        )

    @torch.no_grad()
    def _image_features(
        self, lvlm: SeedXLVLM, prompt: prompts.Prompt, crops: Sequence[AnyResCrops], options: GenerationOptions
    ) -> tuple[DecodeOutput, torch.Tensor, float]:
        """The LLM stage of an image answer: decode with a required image block, regress its features
        (n, tokens, vit_dim); also returns the decode output and the seconds it took."""
        start = time.perf_counter()
        out = self._run_llm(lvlm, prompt, crops, options.model_copy(update={"require_image": True}))
        seconds = time.perf_counter() - start
        if not out.image_hidden_states:
            raise CapabilityMissingError("the model produced no image block; raise max_new_tokens")
        return out, lvlm.regress_images(torch.stack(out.image_hidden_states)), seconds

    def _image_answer(
        self,
        lvlm: SeedXLVLM,
        prompt: prompts.Prompt,
        crops: Sequence[AnyResCrops],
        options: GenerationOptions,
        stage: int,
        *,
        seed: int | None,
        **render: Any,
    ) -> GeneratedImage:
        """Decode with a required image block, regress its features and render the first image."""
        out, features, llm_seconds = self._image_features(lvlm, prompt, crops, options)
        timings: dict[str, float] = {"llm_s": llm_seconds}
        start = time.perf_counter()
        pictures = self._render(stage, features[:1], seed=seed, **render)
        timings["detokenizer_s"] = time.perf_counter() - start
        raw = self._answer_text(out.token_ids)
        return GeneratedImage(pictures[0], pictures, strip_tags(raw), raw, features, seed, timings)

    def generate_image(
        self,
        prompt: str,
        *,
        seed: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        size: int | None = None,
        scheduler: str = "euler",
        variant: str | None = None,
        options: GenerationOptions | None = None,
        progress: bool = False,
        context: Sequence[ImageInput] = (),
    ) -> GeneratedImage:
        """Text-to-image: the LLM writes an image block; its features go to the stage-1 de-tokenizer.

        ``context`` images (e.g. earlier pictures of a story's characters) are read in the same turn before
        the request, so the new picture can keep their look (SEED-X-I: images in, image out). If the model
        would stop without opening an image, ``<img>`` is forced instead (documented deviation: the official
        script just returns no image).
        """
        return self.generate_images(
            [prompt],
            seeds=[seed],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            steps=steps,
            guidance=guidance,
            size=size,
            scheduler=scheduler,
            variant=variant,
            options=options,
            progress=progress,
            context=context,
        )[0]

    def generate_images(
        self,
        prompts: Sequence[str],
        *,
        seeds: Sequence[int | None] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        size: int | None = None,
        scheduler: str = "euler",
        variant: str | None = None,
        options: GenerationOptions | None = None,
        progress: bool = False,
        context: Sequence[ImageInput] = (),
    ) -> list[GeneratedImage]:
        """Text-to-image for several prompts (each read after the same ``context`` images): the LLM runs per
        prompt, the stage-1 de-tokenizer once for all.

        Result i matches ``generate_image(prompts[i], seed=seeds[i], ...)``: each row's initial noise comes
        from its own seeded generator; only float rounding of the batched UNet can differ. Used by
        ``SeedXEngine`` to serve concurrent requests together.
        """
        num_inference_steps, guidance_scale = _render_aliases(num_inference_steps, steps, guidance_scale, guidance)
        if isinstance(prompts, str) or not prompts:
            raise InvalidPromptError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        seed_list = list(seeds) if seeds is not None else [None] * len(prompts)
        if len(seed_list) != len(prompts):
            raise InvalidPromptError(
                f"{len(seed_list)} seeds for {len(prompts)} prompts; pass one seed (or None) per prompt"
            )
        name, lvlm = self._lvlm(variant, purpose="image generation", prefer=("seed-x-i", "seed-x"))
        _, crops = self._crops(context, self.config.anyres.grids, argument="context", allow_empty=True)
        tiles = [c.num_crops - 1 for c in crops]
        opts = options or GenerationOptions(max_new_tokens=self.config.max_new_tokens_image)
        answers = [
            self._image_features(
                lvlm,
                templates.generation_prompt(name, text, tiles, self.config.lvlm.num_image_tokens),  # type: ignore[arg-type]
                crops,
                opts,
            )
            for text in prompts
        ]
        start = time.perf_counter()
        pictures = self._render(
            stage_for_variant(name),
            torch.cat([features[:1] for _, features, _ in answers]),  # (batch, tokens, vit_dim): first images
            seed=seed_list,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            size=size,
            scheduler=scheduler,
            progress=progress,
        )
        render_seconds = time.perf_counter() - start
        results = []
        for index, (out, features, llm_seconds) in enumerate(answers):
            raw = self._answer_text(out.token_ids)
            timings = {"llm_s": llm_seconds, "detokenizer_s": render_seconds}
            if len(prompts) > 1:  # the de-tokenizer time is shared by the batch
                timings["batch_size"] = float(len(prompts))
            picture = pictures[index]
            results.append(
                GeneratedImage(picture, [picture], strip_tags(raw), raw, features, seed_list[index], timings)
            )
        return results

    def edit_image(
        self,
        image: ImageInput,
        instruction: str,
        *,
        seed: int | None = 42,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        image_guidance_scale: float | None = None,
        size: int | None = None,
        scheduler: str = "euler",
        options: GenerationOptions | None = None,
        progress: bool = False,
    ) -> GeneratedImage:
        """Edit ``image`` following ``instruction`` with SEED-X-Edit + the stage-2 de-tokenizer (§8.1 C)."""
        check_image_source(image, argument="image")
        num_inference_steps, guidance_scale = _render_aliases(num_inference_steps, steps, guidance_scale, guidance)
        missing = []
        if "seed-x-edit" not in self.parts.lvlms:
            missing.append("the 'seed-x-edit' LLM")
        if 2 not in self.parts.detokenizers:
            missing.append("the stage-2 de-tokenizer")
        if missing:
            raise CapabilityMissingError(
                "edit_image needs " + " and ".join(missing) + f" (loaded LLMs: {list(self.variants)}, "
                f"de-tokenizer stages: {sorted(self.parts.detokenizers)}); load with "
                "variants=('seed-x-i', 'seed-x-edit') so both stages are present"
            )
        lvlm = self.parts.lvlms["seed-x-edit"]
        pil, crops = self._crops(image, self.config.anyres.edit_grids, argument="image")
        prompt = prompts.edit_prompt(crops[0].num_crops - 1, instruction, self.config.lvlm.num_image_tokens)
        return self._image_answer(
            lvlm,
            prompt,
            crops,
            self._options(options),
            2,
            condition=pil[0],
            seed=seed,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            image_guidance_scale=image_guidance_scale,
            size=size,
            scheduler=scheduler,
            progress=progress,
        )

    def reconstruct(
        self,
        image: ImageInput,
        *,
        seed: int | None = 0,
        num_inference_steps: int | None = None,
        scheduler: str = "euler",
    ) -> PIL.Image.Image:
        """De-tokenizer alone: image -> ViT (raw tokens) -> stage-1 de-tokenizer (§8.1 D).

        The ViT sees the official reconstruction transform (``Resize((448, 448))`` bilinear, then the CLIP
        normalisation: ``anyres.vit_transform``), not the any-res thumbnail (PIL bicubic).
        """
        pixels = vit_transform(self._load(image, "image"), self.config.vision)[None]  # (1, 3, S, S)
        features = self.encode_crops(pixels)  # (1, vit_tokens, vit_dim)
        return self._render(
            1,
            features,
            seed=seed,
            num_inference_steps=num_inference_steps,
            scheduler=scheduler,
        )[0]

    @torch.no_grad()
    def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        variant: str | None = None,
        options: GenerationOptions | None = None,
        seed: int | None = None,
        num_inference_steps: int | None = None,
        render_images: bool = True,
        on_token: Callable[[int], None] | None = None,
        logits_processor: LogitsProcessor | None = None,
    ) -> ChatResult:
        """Multi-turn chat with interleaved outputs: text, boxes (on the first image) and images.

        ``logits_processor(generated_ids, logits)`` may restrict each next token (e.g.
        ``tool_protocol.CopyArguments``); it sees the ids generated so far and the (vocab,) logits."""
        name, lvlm = self._lvlm(variant, purpose="chat", prefer=("seed-x-i",))
        if not messages:
            raise InvalidPromptError("messages is empty; pass at least one user message")
        turns, all_images, all_crops = [], [], []
        for index, message in enumerate(messages):
            if not isinstance(message, ChatMessage):
                raise InvalidPromptError(f"message {index} is a {type(message).__name__}; use ChatMessage")
            if message.role == "assistant" and message.images:
                raise InvalidPromptError(f"message {index}: assistant messages cannot carry input images")
            images = () if message.images is None else message.images  # None: no images
            pil, crops = self._crops(
                images, self.config.anyres.grids, argument=f"messages[{index}].images", allow_empty=True
            )
            all_images += pil
            all_crops += crops
            turns.append(prompts.Turn(message.role, message.text, tuple(c.num_crops - 1 for c in crops)))
        prompt = prompts.chat_prompt(name, turns, self.config.lvlm.num_image_tokens)  # type: ignore[arg-type]
        out = self._run_llm(lvlm, prompt, all_crops, self._options(options), on_token, logits_processor)
        raw = self._answer_text(out.token_ids)
        boxes = parse_boxes(raw, all_images[0].size) if all_images else []
        features = lvlm.regress_images(torch.stack(out.image_hidden_states)) if out.image_hidden_states else None
        pictures: list[PIL.Image.Image] = []
        if features is not None and render_images:
            for i in range(features.shape[0]):
                pictures += self._render(
                    1,
                    features[i : i + 1],
                    seed=seed,
                    num_inference_steps=num_inference_steps,
                )
        return ChatResult(strip_tags(raw), raw, pictures, boxes, features)

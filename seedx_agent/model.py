"""``SeedX``: the facade that composes the pipeline modules; it adds no model maths of its own.

Comprehension and grounding run the any-res ViT path into the LLM; generation decodes an image block
whose hidden states go through the output resampler into the stage-1 de-tokenizer; editing needs the
SEED-X-Edit LLM and the stage-2 de-tokenizer, and says so when they are not loaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch

from seedx_agent import prompts
from seedx_agent.anyres import AnyResCrops, preprocess, preprocess_batch, vit_transform
from seedx_agent.components import SeedXComponents, build_components, stage_for_variant
from seedx_agent.config import PRESETS, VARIANTS, SeedXConfig, resolve_config
from seedx_agent.cpu_linear import (
    ONEDNN_MIN_WEIGHT_ELEMENTS,
    LinearKernel,
    linear_kernel_of,
    resolve_linear_kernel,
    use_linear_kernel,
)
from seedx_agent.decode_step import fuse_qkv
from seedx_agent.decoding import DecodeOutput, GenerationOptions, LogitsProcessor, decode
from seedx_agent.errors import CapabilityMissingError, CheckpointError, ConfigError, InvalidPromptError
from seedx_agent.images import DEFAULT_MAX_PIXELS, check_image_source, load_image
from seedx_agent.kv_cache import PrefixKVCache, crops_fingerprint, weights_version
from seedx_agent.lvlm import SeedXLVLM
from seedx_agent.tokenizer import SeedXTokenizer
from seedx_agent.tokens import Box, TokenIds, parse_boxes, strip_tags
from seedx_agent.vision import pool_tokens_4to1

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
    text: str
    raw_text: str
    images: list[PIL.Image.Image]
    boxes: list[Box]
    features: torch.Tensor | None


def _default_dtype(device_map: dict[str, str]) -> torch.dtype:
    """fp32 on CPU (as diffusers/transformers do), bf16 as soon as a component sits on CUDA."""
    return torch.bfloat16 if any(torch.device(d).type == "cuda" for d in device_map.values()) else torch.float32


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
    def from_preset(
        cls,
        name: str | SeedXConfig = "tiny-random",
        *,
        variants: Sequence[str] | None = None,
        seed: int = 0,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        device_map: dict[str, str] | None = None,
        tokenizer: SeedXTokenizer | None = None,
        linear_kernel: LinearKernel = "auto",
    ) -> SeedX:
        """Random (seeded) weights for a preset name or a ``SeedXConfig`` (a custom geometry), e.g. for tests or
        GPU sizing. Full-size presets are big and need ``tokenizer`` (the LLaMA-2 one is not bundled).
        ``linear_kernel``: see ``set_linear_kernel``."""
        from seedx_agent.checkpoints import place

        resolve_linear_kernel(linear_kernel)  # a bad name fails before any weights are built
        config = resolve_config(name)
        tokenizer = tokenizer or _tokenizer_for(config)
        variants = tuple(variants) if variants else (config.variant,)
        dmap = _device_map(device, device_map)
        parts = build_components(config, tokenizer=tokenizer, variants=variants, seed=seed)
        place(parts, device_map=dmap, dtype=dtype or _default_dtype(dmap))
        model = cls(parts)
        model.set_linear_kernel(linear_kernel)
        return model

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        variants: Sequence[str] | None = None,
        variant: str | None = None,
        stages: Sequence[int] | None = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        device_map: dict[str, str] | None = None,
        allow_pickle: bool = False,
        vit_path: str | Path | None = None,
        sdxl_path: str | Path | None = None,
        config: SeedXConfig | str | None = None,
        preset: str | None = None,
        quantize_llm: Literal[4, 8] | None = None,
        linear_kernel: LinearKernel = "auto",
        verify: bool = True,
        check_finite: bool = True,
    ) -> SeedX:
        """Load our safetensors layout (``config.json`` + ``manifest.json``) or the official release.

        ``variants`` picks LLMs (e.g. ``("seed-x-i", "seed-x-edit")`` for generation and editing),
        ``variant`` is the one-LLM shorthand (``variant="seed-x-edit"``); ``allow_pickle`` is needed for the
        official ``.bin``/``.pt`` files (loaded with ``torch.load(weights_only=True)``). ``linear_kernel``: see
        ``set_linear_kernel``. Nothing is ever downloaded.

        ``config`` (a ``SeedXConfig`` or a preset name; ``preset`` is the older name-only spelling) gives the
        geometry. The official release has no config of ours, so there it selects the geometry (default: the
        ``seed-x-i`` preset), which lets non-standard geometries load; the release's own config files are still
        checked against it. Our layout stores its ``config.json``, which stays authoritative: a ``config`` given
        with it must agree with it (``name``/``variant`` aside). Giving ``preset`` and a ``config`` that disagree, or a
        ``config`` that disagrees with the stored one, raises ``ConfigError`` naming the fields.

        ``verify`` (default on; our layout, the release has no checksums) checks each file read against the
        size and sha256 in ``manifest.json`` and raises ``CorruptCheckpointError`` naming the first file that
        differs; hashes of unchanged files are remembered for the process (keyed by path, inode, size, mtime
        and ctime), so loading again costs under 1 ms (25-55 ms for the 28 MB of the bundled ``mini`` the first
        time, on 2 busy CPU cores). ``verify=False`` skips it. ``check_finite`` (default on, both layouts)
        refuses NaN/Inf weights with ``NonFiniteWeightError`` naming the tensor (one pass over the exponent
        bits: 15-30 ms for ``mini``); ``check_finite=False`` skips it.
        """
        from seedx_agent import checkpoints

        resolve_linear_kernel(linear_kernel)  # a bad name fails before any weights are read
        if variant is not None:
            if variants is not None:
                raise ConfigError("pass either variant= (one LLM) or variants= (several), not both")
            variants = (variant,)
        if isinstance(path, str) and path == "mini":
            path = bundled_mini_path()
        elif isinstance(path, str) and path in PRESETS:
            raise ConfigError(f"{path!r} is a preset with random weights; use SeedX.from_preset({path!r})")
        root = Path(path)
        if not root.exists():
            raise CheckpointError(
                f"checkpoint folder {str(root)!r} does not exist; pass an existing folder or 'mini' (the bundled "
                "trained miniature); for random weights use SeedX.from_preset with one of "
                f"{', '.join(sorted(set(PRESETS) - {'mini'}))} (or 'mini' for the miniature's geometry)"
            )
        dmap = _device_map(device, device_map)
        if (root / "manifest.json").is_file():
            if config is not None or preset is not None:
                stored = SeedXConfig.load(root / "config.json")
                fields = stored.differences(resolve_config(config, preset=preset))
                if fields:
                    raise ConfigError(
                        f"the config given does not match {str(root / 'config.json')!r} (the geometry of these "
                        f"weights) on {', '.join(fields[:6])}; drop config=/preset= or pass the stored config"
                    )
            parts = checkpoints.load_components(
                root, variants=variants, stages=stages, verify=verify, check_finite=check_finite
            )
        else:
            layout = checkpoints.OfficialLayout.discover(root, vit_path=vit_path, sdxl_path=sdxl_path)
            geometry = resolve_config(config, preset=preset)
            chosen = tuple(variants) if variants else (geometry.variant,)
            parts = checkpoints.load_official(
                layout, geometry, variants=chosen, stages=stages, allow_pickle=allow_pickle, check_finite=check_finite
            )
        checkpoints.place(parts, device_map=dmap, dtype=dtype or _default_dtype(dmap))
        if quantize_llm is not None:
            for lvlm in parts.lvlms.values():
                checkpoints.quantize_llm(lvlm, bits=quantize_llm)
        model = cls(parts)
        model.set_linear_kernel(linear_kernel)
        return model

    @classmethod
    def load(
        cls,
        spec: str | Path = "mini",
        *,
        variants: Sequence[str] | None = None,
        device: str | None = None,
        linear_kernel: LinearKernel = "auto",
    ) -> SeedX:
        """One entry point for user-facing code: ``"mini"`` (the bundled trained miniature), a preset name
        (random weights, e.g. ``"tiny-random"``) or a checkpoint folder. Never downloads anything."""
        if isinstance(spec, str) and spec != "mini" and spec in PRESETS:
            return cls.from_preset(
                spec, variants=variants or ("seed-x-i", "seed-x-edit"), device=device, linear_kernel=linear_kernel
            )
        return cls.from_pretrained(spec, variants=variants, device=device, linear_kernel=linear_kernel)

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
        from seedx_agent.checkpoints import save_components

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
        items = _as_list(images, argument, allow_empty=allow_empty)
        if len(items) == 1 and _is_image_source(images):
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
        device = lvlm.device
        ids_tensor = torch.tensor([input_ids], device=device)
        mask_tensor = torch.tensor([cmp_mask], device=device)

        def embed_prompt() -> torch.Tensor:  # (1, seq, hidden) with the crops' features spliced in
            image_embeds = None
            if crops:
                pixel_values = torch.cat([c.pixel_values for c in crops])  # (total_crops, 3, S, S)
                positions = torch.cat([c.patch_positions for c in crops])  # (total_crops, 2)
                image_embeds = lvlm.embed_images(self.encode_crops(pixel_values), positions)
            return lvlm.inputs_embeds(ids_tensor, image_embeds, mask_tensor)

        if not crops or not any(cmp_mask):  # nothing to cache (a count mismatch raises in embed_prompt)
            embeds = embed_prompt()
            last_token = input_ids[-1]
            return decode(
                lvlm,
                self.ids,
                inputs_embeds=embeds,
                last_prompt_token=last_token,
                options=options,
                on_token=on_token,
                logits_processor=logits_processor,
            )
        # Split after the last image placeholder: that prefix's KV is what the prefix cache stores. The
        # uncached path splits at the same place, so both feed identical tensors and agree bit for bit.
        from seedx_agent.kv_layers import new_kv_cache

        split = max(i for i, flag in enumerate(cmp_mask) if flag) + 1
        cache_store = self.prefix_cache
        use_cache = options.prefix_cache and cache_store.active and split < len(input_ids)
        split = min(split, len(input_ids) - 1)  # decode needs at least one prompt token to run
        key = None
        kv = None
        if use_cache:
            identity = (id(lvlm), str(lvlm.device), str(lvlm.dtype))
            # The prefix went through the ViT and this LLM: a change to either makes its KV stale.
            version = weights_version([self.parts.vision, lvlm], content=cache_store.content_check)
            cache_store.sync_weights(identity, version)
            key = cache_store.make_key(identity, crops_fingerprint(crops), input_ids[:split], version)
            kv = cache_store.get(key)
        if kv is None:
            embeds = embed_prompt()
            kv = new_kv_cache(lvlm.llm.config)
            lvlm.backbone(inputs_embeds=embeds[:, :split], cache=kv, use_cache=True)
            if key is not None:
                cache_store.put(key, kv)
            rest = embeds[:, split:]
        else:  # the suffix holds no image placeholders: plain token embeddings
            rest = lvlm.inputs_embeds(ids_tensor[:, split:])
        return decode(
            lvlm,
            self.ids,
            inputs_embeds=rest,
            last_prompt_token=input_ids[-1],
            options=options,
            cache=kv,
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
        num_inference_steps, guidance_scale = _render_aliases(num_inference_steps, steps, guidance_scale, guidance)
        name, lvlm = self._lvlm(variant, purpose="generate_image", prefer=("seed-x-i", "seed-x"))
        _, crops = self._crops(context, self.config.anyres.grids, argument="context", allow_empty=True)
        text_prompt = prompts.generation_prompt(
            name,  # type: ignore[arg-type]
            prompt,
            [c.num_crops - 1 for c in crops],
            self.config.lvlm.num_image_tokens,
        )
        opts = options or GenerationOptions(max_new_tokens=self.config.max_new_tokens_image)
        return self._image_answer(
            lvlm,
            text_prompt,
            crops,
            opts,
            stage_for_variant(name),
            seed=seed,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            size=size,
            scheduler=scheduler,
            progress=progress,
        )

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
    ) -> list[GeneratedImage]:
        """Text-to-image for several prompts: the LLM runs per prompt, the stage-1 de-tokenizer once for all.

        Result i matches ``generate_image(prompts[i], seed=seeds[i], ...)``: each row's initial noise comes
        from its own seeded generator; only float rounding of the batched UNet can differ. Used by
        ``SeedXEngine`` to serve concurrent requests together.
        """
        num_inference_steps, guidance_scale = _render_aliases(num_inference_steps, steps, guidance_scale, guidance)
        from seedx_agent import prompts as templates  # the argument shadows the module name

        if isinstance(prompts, str) or not prompts:
            raise InvalidPromptError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        seed_list = list(seeds) if seeds is not None else [None] * len(prompts)
        if len(seed_list) != len(prompts):
            raise InvalidPromptError(
                f"{len(seed_list)} seeds for {len(prompts)} prompts; pass one seed (or None) per prompt"
            )
        name, lvlm = self._lvlm(variant, purpose="generate_images", prefer=("seed-x-i", "seed-x"))
        opts = options or GenerationOptions(max_new_tokens=self.config.max_new_tokens_image)
        outputs, features, llm_seconds = [], [], []
        for text in prompts:
            out, regressed, seconds = self._image_features(
                lvlm,
                templates.generation_prompt(name, text),  # type: ignore[arg-type]
                [],
                opts,
            )
            outputs.append(out)
            features.append(regressed)  # (n, tokens, vit_dim)
            llm_seconds.append(seconds)
        start = time.perf_counter()
        pictures = self._render(
            stage_for_variant(name),
            torch.cat([f[:1] for f in features]),  # (batch, tokens, vit_dim): each answer's first image
            seed=seed_list,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            size=size,
            scheduler=scheduler,
            progress=progress,
        )
        render_seconds = time.perf_counter() - start
        results = []
        for index, out in enumerate(outputs):
            raw = self._answer_text(out.token_ids)
            timings = {"llm_s": llm_seconds[index], "detokenizer_s": render_seconds, "batch_size": float(len(prompts))}
            results.append(
                GeneratedImage(
                    pictures[index], [pictures[index]], strip_tags(raw), raw, features[index], seed_list[index], timings
                )
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


def _is_image_source(value: object) -> bool:
    """Whether ``value`` is one image (not a sequence of them)."""
    return isinstance(value, (str, Path, bytes, bytearray, memoryview, PIL.Image.Image, np.ndarray))


def _as_list(images: object, argument: str = "images", *, allow_empty: bool = False) -> list[object]:
    """One image -> ``[image]``; a list/tuple -> a list; ``None`` or any other type -> ``InvalidImageError``."""
    if _is_image_source(images):
        return [images]
    if not isinstance(images, Sequence):
        check_image_source(images, argument=argument)  # raises, naming the argument and the accepted types
    result = list(images)  # type: ignore[call-overload]
    if not result and not allow_empty:
        raise InvalidPromptError(f"no image given in {argument}; pass at least one image")
    return result


def _device_map(device: str | None, device_map: dict[str, str] | None) -> dict[str, str]:
    if device_map is not None:
        unknown = set(device_map) - {"vision", "llm", "detokenizer"}
        if unknown:
            raise ConfigError(f"device_map keys must be 'vision', 'llm', 'detokenizer'; got {sorted(unknown)}")
        base = device or "cpu"
        return {k: device_map.get(k, base) for k in ("vision", "llm", "detokenizer")}
    return dict.fromkeys(("vision", "llm", "detokenizer"), device or "cpu")


MINI_WEIGHTS = Path(__file__).resolve().parent / "assets" / "mini"


def bundled_mini_path() -> Path:
    """Folder of the miniature's bundled weights (``SeedX.from_pretrained("mini")``)."""
    if not (MINI_WEIGHTS / "manifest.json").is_file():
        raise CheckpointError(
            f"the miniature's weights are not bundled in this install ({MINI_WEIGHTS} is missing); train them "
            "with `seedx-agent train mini` and load the output folder, or reinstall the package"
        )
    return MINI_WEIGHTS


def _tokenizer_for(config: SeedXConfig) -> SeedXTokenizer:
    if config.llm.vocab_size == SeedXTokenizer.tiny().vocab_size:
        return SeedXTokenizer.tiny()
    raise CheckpointError(
        f"preset {config.name!r} needs the LLaMA-2 tokenizer ({config.llm.vocab_size} tokens), which is not bundled; "
        "load a checkpoint folder with SeedX.from_pretrained(path) instead"
    )

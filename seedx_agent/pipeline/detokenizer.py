"""The de-tokenizer: ViT-like features -> image, through a perceiver and an SDXL-style UNet.

Stage 1 (text-to-image, reconstruction) conditions the UNet only on the perceiver's outputs; stage 2
(editing) also concatenates the latents of a condition image to the UNet input and uses a three-way
classifier-free guidance (reference §9, §10, §8.1 B.4/C.4/D). Submodule names match the official
``SDXLAdapter`` so the released files load without renaming: ``resampler.*``, ``unet.*`` (§13.4),
plus ``vae.*`` for the SDXL VAE, which the official code kept in the diffusers pipeline.

``vae=None`` in the config means diffusion directly on pixels in [-1, 1] (the CPU miniature).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from seedx_agent.config import DetokenizerConfig
from seedx_agent.errors import CapabilityMissingError, ConfigError, InvalidImageError
from seedx_agent.pipeline.resampler import PerceiverResampler

__all__ = [
    "SCHEDULERS",
    "Detokenizer",
    "classifier_free_guidance",
    "expand_conv_in",
    "make_scheduler",
    "pil_to_tensor",
    "tensor_to_pil",
    "three_way_guidance",
]

logger = logging.getLogger(__name__)

SCHEDULERS: tuple[str, ...] = ("euler", "dpm")


# -- guidance maths -------------------------------------------------------------------------------
def classifier_free_guidance(
    noise_cond: torch.Tensor, noise_uncond: torch.Tensor, guidance_scale: float
) -> torch.Tensor:
    """Standard eps-CFG (§9.2): ``e_u + g * (e_c - e_u)``."""
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


def three_way_guidance(
    noise_text_image: torch.Tensor,
    noise_image: torch.Tensor,
    noise_none: torch.Tensor,
    guidance_scale: float,
    image_guidance_scale: float,
) -> torch.Tensor:
    """Stage-2 CFG (§10): ``e(0,0) + g (e(c,I) - e(0,I)) + g_I (e(0,I) - e(0,0))``.

    ``noise_text_image`` = e(c, I), ``noise_image`` = e(negative, I), ``noise_none`` = e(negative, zeros).
    The official code applies it on the x0 scale; since the coefficients sum to 1 this is the same.
    """
    return (
        noise_none
        + guidance_scale * (noise_text_image - noise_image)
        + image_guidance_scale * (noise_image - noise_none)
    )


# -- schedulers -----------------------------------------------------------------------------------
def make_scheduler(name: str, scheduler_config: dict[str, Any]) -> Any:
    """A fresh sampling scheduler: ``euler`` (the official one) or ``dpm`` (DPM-Solver++ 2M, fewer steps).

    Both use the betas of ``scheduler_config`` (the SDXL-base scheduler config). ``dpm`` places its steps
    uniformly in log-SNR (``use_lu_lambdas``), which on the miniature kept Euler-50's reconstruction score
    at 12 steps where the config's timestep spacing lost half of it (benchmarks/RESULTS.md, round 3).
    Schedulers keep per-run state, so every generation builds its own.
    """
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    if name == "euler":
        return EulerDiscreteScheduler.from_config(scheduler_config)
    if name == "dpm":
        return DPMSolverMultistepScheduler.from_config(
            scheduler_config, algorithm_type="dpmsolver++", solver_order=2, use_lu_lambdas=True
        )
    raise ConfigError(f"unknown scheduler {name!r}; choose one of {list(SCHEDULERS)}")


# -- stage-2 surgery ------------------------------------------------------------------------------
def expand_conv_in(unet: Any) -> Any:
    """Double the UNet's input channels for stage 2 (§10): the extra channels carry the condition image.

    The new ``conv_in`` has zero weights except the first ``in_channels`` input channels, copied from
    the old one, so the UNet's output is unchanged while the extra channels are zero. The bias is
    copied here; the official code left it freshly initialised, which does not matter once the
    stage-2 checkpoint (which contains the trained ``conv_in``) is loaded. Modifies ``unet`` in place
    and returns it.
    """
    old = unet.conv_in
    old_in = old.in_channels
    new = nn.Conv2d(
        2 * old_in,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :old_in] = old.weight  # (out, in, kh, kw): only the noisy-latent channels
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=2 * old_in)
    return unet


# -- image <-> tensor -----------------------------------------------------------------------------
def pil_to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> (n, 3, size, size) in [-1, 1]; stretched to a square with bicubic (aspect not kept, §10)."""
    arrays = []
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise InvalidImageError(
                f"condition_images[{index}] is a {type(image).__name__}; pass PIL images or a (n, 3, H, W) tensor"
            )
        resized = image.convert("RGB").resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(resized, dtype=np.float32))
    stacked = torch.from_numpy(np.stack(arrays))  # (n, size, size, 3) in [0, 255]
    return stacked.permute(0, 3, 1, 2) / 127.5 - 1.0  # (n, 3, size, size) in [-1, 1]


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(n, 3, H, W) in [-1, 1] -> RGB PIL images (values outside the range are clamped)."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()  # (n, H, W, 3)
    return [Image.fromarray(array, mode="RGB") for array in pixels]


def _check_features(name: str, features: Any, input_dim: int) -> None:
    if not isinstance(features, torch.Tensor):
        raise InvalidImageError(f"{name} must be a tensor (batch, tokens, {input_dim}), got {type(features).__name__}")
    if features.ndim != 3 or features.shape[-1] != input_dim or features.shape[0] < 1 or features.shape[1] < 1:
        raise InvalidImageError(
            f"{name} must have shape (batch, tokens, {input_dim}), got {tuple(features.shape)}; "
            "pass ViT(-like) features of the de-tokenizer's perceiver input_dim"
        )


def _check_pixel_tensor(name: str, images: torch.Tensor, batch: int | None = None) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidImageError(f"{name} must have shape (n, 3, H, W), got {tuple(images.shape)}")
    if batch is not None and images.shape[0] != batch:
        raise InvalidImageError(f"{name} has {images.shape[0]} images but the features have batch {batch}")
    if not images.is_floating_point():
        raise InvalidImageError(f"{name} must be a float tensor in [-1, 1], got dtype {images.dtype}")
    low, high = float(images.min()), float(images.max())
    if low < -1.001 or high > 1.001:
        raise InvalidImageError(f"{name} must be scaled to [-1, 1], got values in [{low:.3f}, {high:.3f}]")


def _check_scale(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _per_row_generators(
    generator: torch.Generator | Sequence[torch.Generator | None] | None, batch: int
) -> list[torch.Generator | None] | None:
    """``None`` for a single (or no) generator; otherwise the validated per-row list."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    rows = list(generator)
    if len(rows) != batch or any(g is not None and not isinstance(g, torch.Generator) for g in rows):
        raise ConfigError(
            f"generator must be one torch.Generator or a list of {batch} (one per image, None allowed), got "
            f"{len(rows)} items of types {sorted({type(g).__name__ for g in rows})}"
        )
    return rows


class Detokenizer(nn.Module):
    """Perceiver resampler + SDXL-style UNet (+ VAE): turns 64 or 256 ViT-like tokens into an image.

    Stage 1 reconstructs/generates from features alone; stage 2 additionally sees a condition image
    through the extra UNet input channels (the editing de-tokenizer).
    """

    def __init__(self, config: DetokenizerConfig) -> None:
        super().__init__()
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        self.config = config
        self.resampler = PerceiverResampler(config.perceiver)
        self.unet = UNet2DConditionModel(**config.unet)
        self.vae = AutoencoderKL(**config.vae) if config.vae is not None else None
        if self.unet.config.out_channels != config.latent_channels:
            raise ConfigError(
                f"unet out_channels is {self.unet.config.out_channels} but the diffusion space has "
                f"{config.latent_channels} channels ({'VAE latents' if config.vae else 'pixels'})"
            )
        # Stateless for add_noise: shared by every training step.
        self.noise_scheduler = DDPMScheduler.from_config(config.scheduler)

    # -- properties -------------------------------------------------------------------------------
    @property
    def stage(self) -> int:
        return self.config.stage

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent cell along each side (8 for the SDXL VAE, 1 in pixel space)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor) if self.vae is not None else 1.0

    # -- conditioning -----------------------------------------------------------------------------
    def encode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Perceiver: features (batch, tokens, input_dim) -> SDXL conditioning.

        Returns prompt_embeds (batch, num_latents, cross_attention_dim) and pooled (batch, pooled_dim).
        """
        _check_features("features", features, self.config.perceiver.input_dim)
        param = next(self.resampler.parameters())
        return self.resampler(features.to(device=param.device, dtype=param.dtype))

    def _time_ids(self, height: int, width: int, batch: int) -> torch.Tensor:
        # SDXL micro-conditioning: [orig_h, orig_w, crop_top, crop_left, target_h, target_w] (§9.2).
        ids = torch.tensor([height, width, 0, 0, height, width], device=self.device, dtype=self.dtype)
        return ids.repeat(batch, 1)  # (batch, 6)

    @contextlib.contextmanager
    def _vae_fp32(self) -> Iterator[nn.Module]:
        """Run the VAE in fp32 (SDXL's VAE overflows in fp16), restoring its dtype afterwards."""
        assert self.vae is not None  # internal invariant, callers check pixel space first
        original = self.vae.dtype
        # nn.Module.to, not diffusers' override, which logs a warning on every dtype cast.
        if original != torch.float32:
            nn.Module.to(self.vae, torch.float32)
        try:
            yield self.vae
        finally:
            if original != torch.float32:
                nn.Module.to(self.vae, original)

    @torch.no_grad()
    def encode_condition(self, condition_images: Sequence[Image.Image] | torch.Tensor, size: int) -> torch.Tensor:
        """Condition images -> the stage-2 extra UNet channels (n, latent_channels, size/f, size/f), fp32.

        Images are stretched to ``size`` x ``size`` (bicubic), scaled to [-1, 1], VAE-encoded in fp32 and
        the posterior *mode* is kept, not multiplied by the scaling factor unless
        ``config.condition_latents_scaled`` (the official convention, issue #21). In pixel space the
        condition is the [-1, 1] image itself.
        """
        if isinstance(condition_images, Image.Image):
            condition_images = [condition_images]
        if isinstance(condition_images, torch.Tensor):
            _check_pixel_tensor("condition_images", condition_images)
            pixels = condition_images.float()
            if tuple(pixels.shape[-2:]) != (size, size):
                pixels = F.interpolate(
                    pixels, size=(size, size), mode="bicubic", align_corners=False, antialias=True
                ).clamp(-1, 1)
        elif isinstance(condition_images, Sequence) and len(condition_images) > 0:
            pixels = pil_to_tensor(condition_images, size)
        else:
            raise InvalidImageError(
                f"condition_images must be a non-empty list of PIL images or a (n, 3, H, W) tensor, "
                f"got {type(condition_images).__name__}"
            )
        return self._condition_from_pixels(pixels.to(self.device))

    def _condition_from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        # pixels: (n, 3, H, W) in [-1, 1] -> (n, latent_channels, H/f, W/f) fp32
        if self.vae is None:
            return pixels.float()
        with self._vae_fp32() as vae:
            latents = vae.encode(pixels.float()).latent_dist.mode()
        if self.config.condition_latents_scaled:
            latents = latents * self.scaling_factor
        return latents

    # -- sampling ---------------------------------------------------------------------------------
    def _check_generate_options(
        self, num_inference_steps: int, guidance_scale: float, image_guidance_scale: float, output_size: int
    ) -> None:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ConfigError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        _check_scale("guidance_scale", guidance_scale)
        _check_scale("image_guidance_scale", image_guidance_scale)
        factor = self.spatial_factor
        if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < factor:
            raise ConfigError(f"output_size must be a positive integer, got {output_size!r}")
        if output_size % factor:
            raise ConfigError(
                f"output_size {output_size} is not a multiple of the VAE's downsampling factor {factor}; "
                f"use e.g. {output_size // factor * factor}"
            )

    def _denoise(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: torch.Tensor,
        pooled: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:
        # model_input: (n, in_channels, h, w); returns the UNet prediction (n, latent_channels, h, w) in fp32
        prediction = self.unet(
            model_input.to(self.dtype),
            timestep,
            encoder_hidden_states=prompt_embeds.to(self.dtype),
            added_cond_kwargs={"text_embeds": pooled.to(self.dtype), "time_ids": time_ids},
            return_dict=False,
        )[0]
        return prediction.float()

    def _decode(self, latents: torch.Tensor) -> list[Image.Image]:
        # latents: (n, latent_channels, h, w) fp32 -> PIL images
        if self.vae is None:
            return tensor_to_pil(latents)
        with self._vae_fp32() as vae:
            pixels = vae.decode(latents.float() / self.scaling_factor, return_dict=False)[0]
        return tensor_to_pil(pixels)

    @torch.no_grad()
    def generate(
        self,
        image_features: torch.Tensor,
        negative_features: torch.Tensor,
        *,
        condition_images: Sequence[Image.Image] | torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
        scheduler: str = "euler",
        output_size: int | None = None,
        progress: bool = False,
    ) -> list[Image.Image]:
        """Sample one image per row of ``image_features`` (batch, tokens, input_dim).

        ``generator`` is one generator for the whole batch or, as in diffusers, a list with one per row:
        row i's initial noise is then drawn from its own generator (``None``: the global RNG) exactly as a
        batch-1 call with that generator draws it, so batching requests keeps each request's seed.

        ``negative_features`` (1 or batch, tokens', input_dim) are the zero-image ViT features of §9.2.
        Stage 1 uses eps-CFG when ``guidance_scale > 1``; stage 2 uses the three-way CFG when
        ``guidance_scale > 1`` and ``image_guidance_scale >= 1`` (conditional only otherwise), with
        ``condition_images`` (1 or batch of them; zeros when None). ``image_guidance_scale`` is used by
        stage 2 only. Defaults come from the config (50 Euler steps, 7.5, 1.5, config.image_size).
        """
        config = self.config
        steps = config.num_inference_steps if num_inference_steps is None else num_inference_steps
        g = config.guidance_scale if guidance_scale is None else guidance_scale
        g_image = config.image_guidance_scale if image_guidance_scale is None else image_guidance_scale
        size = config.image_size if output_size is None else output_size
        self._check_generate_options(steps, g, g_image, size)
        _check_features("image_features", image_features, config.perceiver.input_dim)
        _check_features("negative_features", negative_features, config.perceiver.input_dim)
        batch = image_features.shape[0]
        per_row = _per_row_generators(generator, batch)
        if negative_features.shape[0] not in (1, batch):
            raise InvalidImageError(
                f"negative_features has batch {negative_features.shape[0]}; it must be 1 or match "
                f"image_features' batch {batch}"
            )
        if condition_images is not None and self.stage == 1:
            raise CapabilityMissingError(
                "the stage-1 de-tokenizer takes no condition image; use the stage-2 (edit) de-tokenizer"
            )
        sampler = make_scheduler(scheduler, config.scheduler)
        device = self.device
        latent_size = size // self.spatial_factor

        prompt_embeds, pooled = self.encode(image_features)  # (B, L, cross), (B, pooled)
        negative_embeds, negative_pooled = self.encode(negative_features)  # (1 or B, L, cross), (1 or B, pooled)
        negative_embeds = negative_embeds.expand(batch, -1, -1)
        negative_pooled = negative_pooled.expand(batch, -1)

        condition = None
        if self.stage == 2:
            if condition_images is None:
                condition = torch.zeros(
                    batch, config.latent_channels, latent_size, latent_size, device=device, dtype=torch.float32
                )
            else:
                condition = self.encode_condition(condition_images, size)  # (1 or B, C, h, w)
                if condition.shape[0] not in (1, batch):
                    raise InvalidImageError(
                        f"{condition.shape[0]} condition images for a batch of {batch}; pass 1 or {batch}"
                    )
                condition = condition.expand(batch, -1, -1, -1)

        # Assemble the guidance batch: one UNet call per step.
        if self.stage == 1:
            use_cfg = g > 1
            branches = 2 if use_cfg else 1
            embeds = torch.cat([prompt_embeds, negative_embeds]) if use_cfg else prompt_embeds
            pooled_all = torch.cat([pooled, negative_pooled]) if use_cfg else pooled
            condition_all = None
        else:
            use_cfg = g > 1 and g_image >= 1
            branches = 3 if use_cfg else 1
            if use_cfg:
                # [text + image, negative + image, negative + no image] (§10)
                embeds = torch.cat([prompt_embeds, negative_embeds, negative_embeds])
                pooled_all = torch.cat([pooled, negative_pooled, negative_pooled])
                condition_all = torch.cat([condition, condition, torch.zeros_like(condition)])
            else:
                embeds, pooled_all, condition_all = prompt_embeds, pooled, condition
        time_ids = self._time_ids(size, size, branches * batch)

        sampler.set_timesteps(steps, device=device)
        shape = (batch, config.latent_channels, latent_size, latent_size)
        if per_row is None:
            noise_device = generator.device if generator is not None else torch.device("cpu")
            latents = torch.randn(shape, generator=generator, device=noise_device, dtype=torch.float32).to(device)
            step_generator = generator
        else:  # one (1, C, h, w) draw per row, as the batch-1 call draws it
            rows = [
                torch.randn(
                    (1, *shape[1:]),
                    generator=g,
                    device=g.device if g is not None else torch.device("cpu"),
                    dtype=torch.float32,
                )
                for g in per_row
            ]
            latents = torch.cat(rows).to(device)  # (B, C, h, w)
            # Schedulers draw step noise only for stochastic settings (s_churn > 0, SDE solvers); a list
            # with gaps cannot go to diffusers' randn_tensor, and the default settings never use it.
            step_generator = list(per_row) if all(g is not None for g in per_row) else None
        latents = latents * sampler.init_noise_sigma

        for timestep in tqdm(sampler.timesteps, disable=not progress, desc="denoising"):
            noisy = torch.cat([latents] * branches)  # (branches*B, C, h, w)
            model_input = sampler.scale_model_input(noisy, timestep)  # only the noisy half is scaled
            if condition_all is not None:
                model_input = torch.cat([model_input, condition_all], dim=1)  # (branches*B, 2C, h, w)
            prediction = self._denoise(model_input, timestep, embeds, pooled_all, time_ids)
            if branches == 2:
                cond, uncond = prediction.chunk(2)
                prediction = classifier_free_guidance(cond, uncond, g)
            elif branches == 3:
                text_image, image_only, none = prediction.chunk(3)
                prediction = three_way_guidance(text_image, image_only, none, g, g_image)
            latents = sampler.step(prediction, timestep, latents, generator=step_generator, return_dict=False)[0]
        return self._decode(latents)

    # -- training ---------------------------------------------------------------------------------
    def training_loss(
        self,
        target_images: torch.Tensor,
        features: torch.Tensor,
        *,
        condition_images: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        uncond_prob: float = 0.0,
        negative_features: torch.Tensor | None = None,
        condition_drop_prob: float = 0.0,
        time_ids: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stage-1/2 objective (§9.3): DDPM-noise the target latents, predict the noise, MSE.

        target_images (B, 3, H, W) and condition_images (B, 3, H, W) are in [-1, 1]; features
        (B, tokens, input_dim). Latents are ``vae`` posterior samples x scaling factor (pixels in pixel
        space); stage-2 condition latents are the unscaled posterior mode, as at inference.
        ``uncond_prob`` swaps a row's conditioning for ``negative_features`` (classifier-free training);
        ``condition_drop_prob`` zeroes a row's condition latents (the three-way CFG's no-image branch).
        ``time_ids`` (B, 6) default to [H, W, 0, 0, H, W]. ``timesteps`` (B,) fixes each row's noise level
        (diagnostics such as ``miniature.probes.conditioning_use``); by default they are uniform over the
        training steps. The VAE is not trained.
        """
        _check_features("features", features, self.config.perceiver.input_dim)
        batch = features.shape[0]
        _check_pixel_tensor("target_images", target_images, batch)
        height, width = target_images.shape[-2:]
        factor = self.spatial_factor
        if height % factor or width % factor:
            raise InvalidImageError(
                f"target_images are {height}x{width}; both sides must be multiples of the VAE factor {factor}"
            )
        for name, prob in (("uncond_prob", uncond_prob), ("condition_drop_prob", condition_drop_prob)):
            if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {prob!r}")
        if uncond_prob > 0 and negative_features is None:
            raise ConfigError("uncond_prob > 0 needs negative_features (the zero-image ViT features)")
        if condition_images is not None and self.stage == 1:
            raise CapabilityMissingError("the stage-1 de-tokenizer takes no condition image")
        if condition_drop_prob > 0 and self.stage == 1:
            raise ConfigError("condition_drop_prob applies to the stage-2 de-tokenizer only")

        device = self.device
        noise_device = generator.device if generator is not None else torch.device("cpu")
        pixels = target_images.to(device=device, dtype=torch.float32)
        with torch.no_grad():
            if self.vae is None:
                latents = pixels
            else:
                with self._vae_fp32() as vae:
                    latents = vae.encode(pixels).latent_dist.sample(generator) * self.scaling_factor
        latents = latents.float()  # (B, C, h, w)

        noise = torch.randn(latents.shape, generator=generator, device=noise_device).to(device)
        num_train_steps = self.noise_scheduler.config.num_train_timesteps
        if timesteps is None:
            timesteps = torch.randint(0, num_train_steps, (batch,), generator=generator, device=noise_device)
        elif (
            not isinstance(timesteps, torch.Tensor)
            or tuple(timesteps.shape) != (batch,)
            or timesteps.is_floating_point()
            or bool((timesteps < 0).any())
            or bool((timesteps >= num_train_steps).any())
        ):
            raise ConfigError(
                f"timesteps must be an integer tensor of shape ({batch},) with values in [0, {num_train_steps}), "
                f"got {timesteps!r}"
            )
        timesteps = timesteps.to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)

        prompt_embeds, pooled = self.encode(features)  # (B, L, cross), (B, pooled)
        if uncond_prob > 0:
            _check_features("negative_features", negative_features, self.config.perceiver.input_dim)
            if negative_features.shape[0] not in (1, batch):
                raise InvalidImageError(
                    f"negative_features has batch {negative_features.shape[0]}; it must be 1 or {batch}"
                )
            negative_embeds, negative_pooled = self.encode(negative_features)
            drop = (torch.rand(batch, generator=generator, device=noise_device) < uncond_prob).to(device)
            prompt_embeds = torch.where(drop[:, None, None], negative_embeds.expand_as(prompt_embeds), prompt_embeds)
            pooled = torch.where(drop[:, None], negative_pooled.expand_as(pooled), pooled)

        model_input = noisy
        if self.stage == 2:
            if condition_images is None:
                condition = torch.zeros_like(latents)
            else:
                _check_pixel_tensor("condition_images", condition_images, batch)
                if condition_images.shape[-2:] != target_images.shape[-2:]:
                    raise InvalidImageError(
                        f"condition_images are {tuple(condition_images.shape[-2:])} but target_images are "
                        f"{tuple(target_images.shape[-2:])}; resize them to the same size"
                    )
                with torch.no_grad():
                    condition = self._condition_from_pixels(condition_images.to(device=device, dtype=torch.float32))
            if condition_drop_prob > 0:
                keep = (torch.rand(batch, generator=generator, device=noise_device) >= condition_drop_prob).to(device)
                condition = condition * keep[:, None, None, None].to(condition.dtype)
            model_input = torch.cat([noisy, condition], dim=1)  # (B, 2C, h, w)

        if time_ids is None:
            time_ids = self._time_ids(int(height), int(width), batch)
        elif tuple(time_ids.shape) != (batch, 6):
            raise InvalidImageError(f"time_ids must have shape ({batch}, 6), got {tuple(time_ids.shape)}")
        prediction = self._denoise(model_input, timesteps, prompt_embeds, pooled, time_ids.to(device, self.dtype))

        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ConfigError(f"prediction_type {prediction_type!r} is not supported; use 'epsilon' or 'v_prediction'")
        return F.mse_loss(prediction, target.float())

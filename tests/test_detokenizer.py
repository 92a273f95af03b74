"""De-tokenizer: stage-1/2 sampling, guidance maths, condition latents, training loss, UNet surgery."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from seedx_agent.config import SDXL_UNET, DetokenizerConfig, SeedXConfig
from seedx_agent.errors import CapabilityMissingError, ConfigError, InvalidImageError
from seedx_agent.pipeline.detokenizer import (
    Detokenizer,
    classifier_free_guidance,
    expand_conv_in,
    three_way_guidance,
)

TINY = SeedXConfig.from_preset("tiny-random")
INPUT_DIM = TINY.detokenizer.perceiver.input_dim


def _pixel_config(config: DetokenizerConfig) -> DetokenizerConfig:
    """The tiny config diffusing directly on 16x16 pixels (vae=None, 3 or 6 input channels)."""
    unet = {**config.unet, "in_channels": 3 * config.stage, "out_channels": 3, "sample_size": 16}
    return DetokenizerConfig.model_validate({**config.model_dump(), "vae": None, "unet": unet, "image_size": 16})


def _build(config: DetokenizerConfig) -> Detokenizer:
    torch.manual_seed(0)
    return Detokenizer(config).eval()


@pytest.fixture(scope="module")
def detoks() -> dict[tuple[int, str], Detokenizer]:
    return {
        (1, "vae"): _build(TINY.detokenizer),
        (2, "vae"): _build(TINY.edit_detokenizer),
        (1, "pixel"): _build(_pixel_config(TINY.detokenizer)),
        (2, "pixel"): _build(_pixel_config(TINY.edit_detokenizer)),
    }


def _features(batch: int, tokens: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, tokens, INPUT_DIM, generator=torch.Generator().manual_seed(seed))


def _condition_image(seed: int = 3, size: int = 20) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size + 6, 3), dtype=np.uint8), mode="RGB")


def _arrays(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def _run(detok: Detokenizer, seed: int = 0, **kwargs) -> list[Image.Image]:
    kwargs.setdefault("num_inference_steps", 2)
    features = kwargs.pop("features", _features(2))
    negative = kwargs.pop("negative", _features(1, seed=9))
    return detok.generate(features, negative, generator=torch.Generator().manual_seed(seed), **kwargs)


# -- sampling ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["vae", "pixel"])
@pytest.mark.parametrize(("stage", "with_condition"), [(1, False), (2, False), (2, True)])
def test_generate_returns_pil_images(detoks, space: str, stage: int, with_condition: bool) -> None:
    detok = detoks[(stage, space)]
    condition = [_condition_image(), _condition_image(4)] if with_condition else None
    images = _run(detok, condition_images=condition)
    size = detok.config.image_size
    assert len(images) == 2
    for image in images:
        assert isinstance(image, Image.Image)
        assert image.mode == "RGB" and image.size == (size, size)


def test_output_size_sets_resolution_and_time_ids(detoks) -> None:
    detok = detoks[(1, "vae")]
    seen: list[dict] = []
    handle = detok.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        images = _run(detok, output_size=16, guidance_scale=7.5)
    finally:
        handle.remove()
    assert [image.size for image in images] == [(16, 16), (16, 16)]
    assert len(seen) == 2  # one batched UNet call per step, both CFG branches inside
    time_ids = seen[0]["added_cond_kwargs"]["time_ids"]
    assert time_ids.tolist() == [[16, 16, 0, 0, 16, 16]] * 4  # 2 branches x batch 2
    assert seen[0]["encoder_hidden_states"].shape == (4, 8, 40)
    assert seen[0]["added_cond_kwargs"]["text_embeds"].shape == (4, 24)


def test_same_seed_same_images_other_seed_different(detoks) -> None:
    detok = detoks[(1, "vae")]
    first, again, other = (_arrays(_run(detok, seed=s)) for s in (5, 5, 6))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("stage", [1, 2])
def test_guidance_one_is_the_conditional_only_run(detoks, stage: int) -> None:
    detok = detoks[(stage, "pixel")]
    features = _features(2)
    # With g = 1 the negative branch is not used at all: any negative gives identical pixels.
    plain = _arrays(_run(detok, features=features, negative=_features(1, seed=9), guidance_scale=1.0))
    other_negative = _arrays(_run(detok, features=features, negative=_features(1, seed=10), guidance_scale=1.0))
    assert np.array_equal(plain, other_negative)
    # With the negative equal to the positive, CFG at 7.5 collapses to the same conditional prediction.
    collapsed = _arrays(_run(detok, features=features, negative=features, guidance_scale=7.5))
    assert np.abs(plain - collapsed).max() <= 1
    # A real negative changes the result.
    guided = _arrays(_run(detok, features=features, guidance_scale=7.5))
    assert np.abs(plain - guided).max() > 1


def test_stage2_cfg_batch_layout_and_condition_channels(detoks) -> None:
    detok = detoks[(2, "pixel")]
    condition = [_condition_image()]
    seen: list[torch.Tensor] = []
    handle = detok.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        _run(detok, features=_features(1), condition_images=condition, guidance_scale=7.5, image_guidance_scale=1.5)
    finally:
        handle.remove()
    expected = detok.encode_condition(condition, 16)  # (1, 3, 16, 16)
    for model_input in seen:  # (3, 6, 16, 16): [text + image, negative + image, negative + zeros]
        assert model_input.shape == (3, 6, 16, 16)
        assert torch.equal(model_input[0, 3:], expected[0])
        assert torch.equal(model_input[1, 3:], expected[0])
        assert torch.count_nonzero(model_input[2, 3:]) == 0
        assert torch.equal(model_input[0, :3], model_input[2, :3])  # same noisy half in every branch
    # Image guidance below 1 switches CFG off: one conditional branch only.
    seen.clear()
    handle = detok.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        _run(detok, features=_features(1), condition_images=condition, guidance_scale=7.5, image_guidance_scale=0.5)
    finally:
        handle.remove()
    assert all(model_input.shape[0] == 1 for model_input in seen)


def test_stage2_without_condition_uses_zero_channels(detoks) -> None:
    detok = detoks[(2, "vae")]
    seen: list[torch.Tensor] = []
    handle = detok.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        _run(detok, features=_features(1))
    finally:
        handle.remove()
    assert seen and all(torch.count_nonzero(model_input[:, 4:]) == 0 for model_input in seen)


def test_guidance_combinations_on_known_tensors() -> None:
    text_image, image_only, none = torch.full((2,), 3.0), torch.full((2,), 2.0), torch.full((2,), 1.0)
    # 1 + 7.5 * (3 - 2) + 1.5 * (2 - 1) = 10
    assert torch.equal(three_way_guidance(text_image, image_only, none, 7.5, 1.5), torch.full((2,), 10.0))
    assert torch.equal(three_way_guidance(text_image, image_only, none, 1.0, 1.0), text_image)
    assert torch.equal(three_way_guidance(text_image, image_only, none, 0.0, 0.0), none)
    mixed = three_way_guidance(torch.tensor([4.0]), torch.tensor([1.0]), torch.tensor([-1.0]), 2.0, 3.0)
    assert mixed.item() == -1.0 + 2.0 * 3.0 + 3.0 * 2.0
    # standard CFG: 1 + 7.5 * (3 - 1) = 16
    assert torch.equal(classifier_free_guidance(text_image, none, 7.5), torch.full((2,), 16.0))
    assert torch.equal(classifier_free_guidance(text_image, none, 1.0), text_image)


def test_condition_latents_are_the_unscaled_posterior_mode(detoks) -> None:
    detok = detoks[(2, "vae")]
    image = _condition_image()
    latents = detok.encode_condition([image], 32)
    pixels = torch.from_numpy(np.asarray(image.resize((32, 32), Image.BICUBIC), dtype=np.float32))
    pixels = pixels.permute(2, 0, 1)[None] / 127.5 - 1.0  # (1, 3, 32, 32) in [-1, 1]
    with torch.no_grad():
        mode = detok.vae.encode(pixels).latent_dist.mode()
    assert latents.shape == (1, 4, 16, 16)
    torch.testing.assert_close(latents, mode)
    # A tensor condition of the right size takes the same path without resizing.
    torch.testing.assert_close(detok.encode_condition(pixels, 32), mode)

    scaled_config = DetokenizerConfig.model_validate(
        {**TINY.edit_detokenizer.model_dump(), "condition_latents_scaled": True}
    )
    scaled = Detokenizer(scaled_config).eval()
    scaled.load_state_dict(detok.state_dict())
    torch.testing.assert_close(scaled.encode_condition([image], 32), mode * detok.vae.config.scaling_factor)


def test_pixel_space_condition_is_the_image(detoks) -> None:
    detok = detoks[(2, "pixel")]
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(detok.encode_condition(pixels, 16), pixels)


def test_dpm_scheduler_with_few_steps(detoks) -> None:
    detok = detoks[(1, "vae")]
    dpm = _run(detok, scheduler="dpm", num_inference_steps=2)
    euler = _run(detok, scheduler="euler", num_inference_steps=2)
    assert len(dpm) == 2 and dpm[0].size == (32, 32)
    assert not np.array_equal(_arrays(dpm), _arrays(euler))


def test_progress_bar(detoks, capsys) -> None:
    _run(detoks[(1, "pixel")], progress=True)
    assert "denoising" in capsys.readouterr().err


# -- input validation -------------------------------------------------------------------------------
def test_unknown_scheduler_lists_choices(detoks) -> None:
    with pytest.raises(ConfigError, match=r"'ddim'.*euler.*dpm"):
        _run(detoks[(1, "pixel")], scheduler="ddim")


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"image_guidance_scale": float("nan")}, "image_guidance_scale"),
        ({"output_size": 15}, "output_size 15"),
    ],
)
def test_bad_options_raise_config_error(detoks, options: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _run(detoks[(1, "vae")], **options)


def test_bad_tensors_raise_typed_errors(detoks) -> None:
    detok = detoks[(2, "pixel")]
    with pytest.raises(InvalidImageError, match=r"image_features.*\(2, 4, 7\)"):
        _run(detok, features=torch.zeros(2, 4, 7))
    with pytest.raises(InvalidImageError, match="negative_features has batch 3"):
        _run(detok, negative=_features(3))
    with pytest.raises(InvalidImageError, match=r"\[-1, 1\]"):
        _run(detok, condition_images=torch.full((1, 3, 16, 16), 5.0))
    with pytest.raises(InvalidImageError, match="3 condition images for a batch of 2"):
        _run(detok, condition_images=[_condition_image()] * 3)
    with pytest.raises(CapabilityMissingError, match="stage-1"):
        _run(detoks[(1, "pixel")], condition_images=[_condition_image()])


# -- training objective -----------------------------------------------------------------------------
def test_training_loss_grads_and_decreases() -> None:
    detok = _build(_pixel_config(TINY.detokenizer)).train()
    targets = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    features = _features(2)
    loss = detok.training_loss(targets, features, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in detok.resampler.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)

    optimizer = torch.optim.Adam(detok.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = detok.training_loss(targets, features, generator=torch.Generator().manual_seed(0))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_training_loss_stage2_vae_and_unconditional_rows(detoks) -> None:
    detok = detoks[(2, "vae")]
    targets = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    condition = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    features, negative = _features(2), _features(1, seed=9)

    def loss(**kwargs) -> float:
        with torch.no_grad():
            return detok.training_loss(targets, generator=torch.Generator().manual_seed(0), **kwargs).item()

    with_condition = loss(features=features, condition_images=condition)
    assert np.isfinite(with_condition)
    # uncond_prob 1 replaces every row's conditioning by the negative: same as passing the negative.
    dropped = loss(features=features, condition_images=condition, uncond_prob=1.0, negative_features=negative)
    as_negative = loss(features=negative.expand(2, -1, -1), condition_images=condition)
    assert dropped == pytest.approx(as_negative, rel=1e-6)
    # condition_drop_prob 1 zeroes the condition latents: same as giving no condition image.
    no_image = loss(features=features, condition_images=condition, condition_drop_prob=1.0)
    assert no_image == pytest.approx(loss(features=features), rel=1e-6)
    assert no_image != pytest.approx(with_condition, rel=1e-6)
    with pytest.raises(ConfigError, match="negative_features"):
        loss(features=features, uncond_prob=0.5)
    with pytest.raises(InvalidImageError, match="target_images has 2 images but the features have batch 1"):
        loss(features=_features(1))


# -- structure --------------------------------------------------------------------------------------
def test_state_dict_prefixes(detoks) -> None:
    prefixes = {key.split(".")[0] for key in detoks[(2, "vae")].state_dict()}
    assert prefixes == {"resampler", "unet", "vae"}
    assert {key.split(".")[0] for key in detoks[(1, "pixel")].state_dict()} == {"resampler", "unet"}
    state = detoks[(2, "vae")].state_dict()
    assert state["unet.conv_in.weight"].shape[1] == 8
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight" in state


def test_expand_conv_in_keeps_outputs_for_zero_extra_channels(detoks) -> None:
    detok = _build(TINY.detokenizer)
    unet = detok.unet
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    kwargs = {
        "encoder_hidden_states": torch.randn(1, 8, 40),
        "added_cond_kwargs": {"text_embeds": torch.randn(1, 24), "time_ids": torch.tensor([[32, 32, 0, 0, 32, 32]])},
    }
    old_conv = unet.conv_in
    with torch.no_grad():
        before = unet(latents, 500, **kwargs).sample
        assert expand_conv_in(unet) is unet
        after = unet(torch.cat([latents, torch.zeros_like(latents)], dim=1), 500, **kwargs).sample
    assert unet.conv_in.weight.shape == (32, 8, 3, 3) and unet.config.in_channels == 8
    assert torch.equal(unet.conv_in.weight[:, :4], old_conv.weight)
    assert torch.count_nonzero(unet.conv_in.weight[:, 4:]) == 0
    assert torch.equal(unet.conv_in.bias, old_conv.bias)
    torch.testing.assert_close(after, before)
    # The expanded UNet loads into a stage-2 de-tokenizer.
    stage2 = Detokenizer(TINY.edit_detokenizer)
    stage2.unet.load_state_dict(unet.state_dict())


def test_official_sdxl_unet_on_meta_device() -> None:
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention import BasicTransformerBlock

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
    assert unet.conv_in.weight.is_meta
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    assert sum(isinstance(m, BasicTransformerBlock) for m in unet.modules()) == 70
    keys = unet.state_dict().keys()
    for attn in ("attn1", "attn2"):
        for proj in ("to_k", "to_v"):
            assert sum(key.endswith(f"{attn}.{proj}.weight") for key in keys) == 70
    assert unet.state_dict()["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape == (640, 2048)


def _oracle(detok: Detokenizer, x0: torch.Tensor):
    """A ``_denoise`` that knows the clean image: the exact eps or v of the scheduler's parameterisation."""
    alphas = detok.noise_scheduler.alphas_cumprod
    v_target = detok.noise_scheduler.config.prediction_type == "v_prediction"

    def denoise(model_input: torch.Tensor, timestep, *args, **kwargs) -> torch.Tensor:
        t = torch.as_tensor(timestep).flatten().long()
        a = alphas[t].view(-1, 1, 1, 1)
        x = model_input[:, :3]  # Euler hands over x / sqrt(sigma^2 + 1) = sqrt(a) x0 + sqrt(1 - a) eps
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0 if v_target else eps

    return denoise


@pytest.mark.parametrize("scheduler", ["euler", "dpm"])
@pytest.mark.parametrize("schedule", ["sdxl", "mini"])
def test_samplers_recover_the_image_from_an_exact_denoiser(scheduler: str, schedule: str) -> None:
    """Sampling maths end to end: with a perfect denoiser every scheduler lands on the clean image, for
    SDXL's epsilon schedule and for the miniature's linear v-prediction schedule."""
    config = _pixel_config(TINY.detokenizer)
    if schedule == "mini":
        config = config.model_copy(update={"scheduler": SeedXConfig.from_preset("mini").detokenizer.scheduler})
    detok = _build(config)
    x0 = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    detok._denoise = _oracle(detok, x0)
    image = _run(detok, features=_features(1), num_inference_steps=12, guidance_scale=1.0, scheduler=scheduler)[0]
    recovered = np.asarray(image, dtype=np.float32) / 127.5 - 1
    assert np.abs(recovered - x0[0].permute(1, 2, 0).numpy()).max() < 0.02


@pytest.mark.parametrize("schedule", ["sdxl", "mini"])
def test_training_target_matches_the_parameterisation(schedule: str) -> None:
    """The training loss is zero for the exact eps (SDXL) or v (miniature) prediction and not otherwise."""
    config = _pixel_config(TINY.detokenizer)
    if schedule == "mini":
        config = config.model_copy(update={"scheduler": SeedXConfig.from_preset("mini").detokenizer.scheduler})
    detok = _build(config)
    x0 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    exact = _oracle(detok, x0)
    detok._denoise = exact  # training feeds the DDPM x_t = sqrt(a) x0 + sqrt(1 - a) eps unscaled
    assert detok.training_loss(x0, _features(2), generator=torch.Generator().manual_seed(0)).item() < 1e-8
    detok._denoise = lambda model_input, timestep, *a, **k: exact(model_input, timestep) * 0.5
    assert detok.training_loss(x0, _features(2), generator=torch.Generator().manual_seed(0)).item() > 1e-3

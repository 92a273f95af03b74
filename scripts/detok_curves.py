"""Learning curves of the miniature's de-tokenizer: held-out reconstruction and text-to-image at log-spaced steps.

The same treatment as ``scripts/learning_curves.py`` (issue 22), for the stage-1 de-tokenizer: a fresh
de-tokenizer is trained (``detokenizer_stage1`` on world scenes, the bundled model's frozen ViT) with a
warm-up then a CONSTANT learning rate, so the model at step 320 is the one a 320-step run would have given
and one run serves every step count. Two arms, chosen by ``--space``:

* ``pixel``: today's de-tokenizer of the ``mini`` preset, diffusion on 32x32 pixels.
* ``latent``: a small VAE (diffusers ``AutoencoderKL``, 64x64 -> 4x16x16, 0.95 M parameters) is trained on
  world renders first (stage folder ``vae``, reused on every later call, as the ViT is trained before
  everything else), then the same perceiver and UNet (4 channels in and out) diffuse on its 16x16x4 latents,
  decoded to 64x64. Both arms use the miniature's pixel noise schedule (``MINI_PIXEL_SCHEDULE``: linear
  betas, trailing spacing, v-prediction), so the diffusion space is the only difference.

At every eval point (and at ``--max-steps``) it scores held-out scenes like ``seedx-agent eval mini``
(``score_reconstruction``, ``score_generation``), with a short sampler (DPM-Solver++ 10 steps by default):

* reconstruction: a held-out render -> frozen ViT (raw tokens) -> de-tokenizer -> image (``SeedX.reconstruct``);
* text-to-image: the held-out prompt -> the bundled mini LLM's regressed image features (computed once per
  arm and cached in ``OUT/t2i_features.safetensors``) -> de-tokenizer -> image (``SeedX.generate_image``).

Each point appends a row to ``OUT/curve.csv``; ``cpu_minutes`` counts the training CPU time of the arm
(the latent arm's VAE stage included; ``vae_cpu_minutes`` is that part), not the evals. It checkpoints every
two minutes and resumes when re-run with the same command::

    nohup nice -n 19 .venv/bin/python scripts/detok_curves.py pixel --space pixel \\
        --out ~/.cache/seedx-agent/runs/detok_curves/pixel --max-steps 800 --first-eval 50 --threads 1 &
    nohup nice -n 19 .venv/bin/python scripts/detok_curves.py latent --space latent \\
        --out ~/.cache/seedx-agent/runs/detok_curves/latent --max-steps 1600 --first-eval 50 --threads 1 &

Measured on one thread of a busy 2-core machine: the VAE stage (400 steps of batch 8) takes 4.0 CPU minutes
and its round trip scores 100 % on both held-out sets of 32 (``ceiling.json``); a de-tokenizer step of batch 16
takes 0.99 CPU s in pixel space, 0.47 s in latent space; sampling (DPM-10 with CFG) 0.45-0.65 s per image in
pixel space, 0.11-0.24 s in latent space (wall).

``--plot`` merges the arms' CSVs, draws both scores against examples seen and CPU minutes, and fits
``score = a - b * minutes ** -c`` to predict the CPU minutes to the evaluator's bars::

    .venv/bin/python scripts/detok_curves.py --plot RUN_DIR1 RUN_DIR2 \\
        --png benchmarks/curves/detok.png --csv benchmarks/curves/detok.csv
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curves import (
    ARM_FILE,
    CSV_NAME,
    _by_arm,
    _check_arm,
    _column,
    _read_progress,
    _write_progress,
    arm_parser,
    eval_points,
    load_vision,
    merge_arms,
    parse_arm_args,
    plot_curves,
    read_rows,
    time_to_bar,
    write_csv,
)
from learning_curves import NOT_REACHED as NOT_REACHED  # the table's wording, re-exported
from learning_curves import append_row as append_row_of

from seedx_agent.config import MINI_PIXEL_SCHEDULE, SeedXConfig
from seedx_agent.miniature import world
from seedx_agent.miniature.evaluate import DONE_BARS, score_generation, score_reconstruction
from seedx_agent.miniature.world_data import WorldData
from seedx_agent.pipeline.anyres import vit_transform
from seedx_agent.pipeline.components import build_components
from seedx_agent.pipeline.detokenizer import Detokenizer, tensor_to_pil
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.pipeline.vision import QwenViT, pool_tokens_4to1
from seedx_agent.training.loop import LoopConfig, LoopResult, checkpoint_step, run_loop
from seedx_agent.training.recipes import _load_module, detokenizer_stage1, vit_features

__all__ = ["ARM_FILE", "COLUMNS", "CSV_NAME", "arm_config", "eval_points", "main"]

STAGE_DIR = "detokenizer-1"
VAE_DIR = "vae"
SCALE_FILE = "latent_scale.json"
CEILING_FILE = "ceiling.json"
FEATURES_FILE = "t2i_features.safetensors"
SPACES = ("pixel", "latent")
LATENT_IMAGE_SIZE = 64  # the latent arm decodes to the world renders' (and the mini ViT's) size
EVAL_SEED = 0  # the held-out samples of ``seedx-agent eval mini --seed 0``
EVAL_CHUNK = 16  # images sampled together
COLUMNS = (
    "arm",
    "space",
    "step",
    "examples_seen",
    "cpu_minutes",
    "vae_cpu_minutes",
    "train_loss",
    "recon",
    "recon_shape",
    "recon_colour",
    "t2i",
    "t2i_shape",
    "t2i_colour",
    "t2i_position",
    "t2i_count",
    "sample_s",
)
# (CSV column, evaluator task): the evaluator's all_ok bars (reconstruction 90 %, text-to-image 80 %).
SCORED = (("recon", "reconstruction"), ("t2i", "text_to_image"))
BARS = {column: DONE_BARS[(task, "all_ok")] for column, task in SCORED}
# one curve.csv row of these COLUMNS (the LLM curves' writer, with this script's columns)
append_row = functools.partial(append_row_of, columns=COLUMNS)
# The small VAE of the field notes (0.95 M parameters, 1.15 s per batch-32 step on 2 threads): factor 4.
TINY_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "sample_size": LATENT_IMAGE_SIZE,
    "scaling_factor": 1.0,  # replaced by the trained VAE's (latent_scale.json)
}
# Settings that define the arm: re-running the same folder with other values would mix two runs.
_ARM_KEYS = (
    "preset",
    "space",
    "vit",
    "lr",
    "batch",
    "warmup",
    "grad_clip",
    "uncond_prob",
    "eval_n",
    "sampler",
    "sampler_steps",
    "t2i_features",
    "seed",
)
_VAE_KEYS = ("vae_steps", "vae_lr", "vae_batch", "vae_kl")


# ---------------------------------------------------------------------------------------------
# The arms
# ---------------------------------------------------------------------------------------------


def arm_config(preset: str, space: str, scaling_factor: float = 1.0) -> SeedXConfig:
    """The preset with its stage-1 de-tokenizer in ``space``: pixels at the preset's size (``mini``: exactly its
    de-tokenizer) or ``TINY_VAE`` latents decoded to 64x64 (``scaling_factor``: the trained VAE's). Perceiver,
    UNet blocks and guidance stay the preset's; the noise schedule is the miniature's pixel schedule in both."""
    if space not in SPACES:
        raise SystemExit(f"--space must be one of {SPACES}, got {space!r}")
    data = SeedXConfig.from_preset(preset).model_dump()
    detok = data["detokenizer"]
    unet = detok["unet"]
    detok["scheduler"] = dict(MINI_PIXEL_SCHEDULE)
    if space == "pixel":
        detok["vae"] = None
        unet["in_channels"] = unet["out_channels"] = 3
        unet["sample_size"] = detok["image_size"]
    else:
        detok["vae"] = {**TINY_VAE, "scaling_factor": scaling_factor}
        factor = 2 ** (len(TINY_VAE["block_out_channels"]) - 1)
        unet["in_channels"] = unet["out_channels"] = TINY_VAE["latent_channels"]
        unet["sample_size"] = LATENT_IMAGE_SIZE // factor
        detok["image_size"] = LATENT_IMAGE_SIZE
    return SeedXConfig.model_validate(data)


def build_vae() -> torch.nn.Module:
    """A fresh ``TINY_VAE`` (seeded by the caller)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**TINY_VAE)


def train_vae(
    vae: torch.nn.Module, data: WorldData, folder: Path, args: argparse.Namespace, budget: float | None
) -> LoopResult:
    """The VAE stage: MSE reconstruction of world renders at 64x64 plus ``--vae-kl`` x the KL, both per pixel
    (LDM's ratio is 1e-6; LDM's L1 + perceptual + GAN terms are left out: L1 alone kept every shape dark red
    for 300 steps, MSE drew the colours by step 150); warm-up then cosine. Resumes."""

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        pixels = data.scenes(step, args.vae_batch).target_pixels  # (B, 3, 64, 64) in [-1, 1]
        posterior = vae.encode(pixels).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec = F.mse_loss(recon, pixels)
        kl = posterior.kl().mean() / pixels[0].numel()
        return {"loss": rec + args.vae_kl * kl, "mse": rec.detach(), "kl": kl.detach()}

    vae.requires_grad_(True)
    loop = LoopConfig(
        steps=args.vae_steps,
        lr=args.vae_lr,
        warmup_steps=min(50, args.vae_steps // 10),
        seed=args.seed,
        max_minutes=budget,
    )
    return run_loop("vae", folder, {"vae": vae}, list(vae.parameters()), step_fn, loop, progress=False)


@torch.no_grad()
def latent_scale(vae: torch.nn.Module, data: WorldData, folder: Path) -> float:
    """1 / RMS of the trained VAE's latents on 64 training scenes (SD's recipe, with RMS instead of the std so
    that a non-zero latent mean is scaled too), stored in ``folder/latent_scale.json`` and read back later."""
    path = folder / SCALE_FILE
    if path.is_file():
        return float(json.loads(path.read_text())["scaling_factor"])
    vae.eval()
    pixels = data.scenes(10**6, 64).target_pixels
    latents = vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(0))
    scale = float(latents.pow(2).mean().rsqrt())
    path.write_text(json.dumps({"scaling_factor": scale, "latent_mean": float(latents.mean())}) + "\n")
    return scale


# ---------------------------------------------------------------------------------------------
# Held-out scoring
# ---------------------------------------------------------------------------------------------


@dataclass
class Heldout:
    """The held-out eval set: reconstruction scenes with their raw ViT features, text-to-image scenes with the
    pooled features the de-tokenizer gets (the LLM's regression, or the oracle's), and the CFG negatives."""

    recon_scenes: list[world.Scene]
    recon_features: torch.Tensor  # (n, vit_tokens, dim)
    t2i_samples: list[world.TextToImageSample]
    t2i_features: torch.Tensor  # (n, vit_tokens / 4, dim)
    negative_raw: torch.Tensor  # (1, vit_tokens, dim)
    negative_pooled: torch.Tensor  # (1, vit_tokens / 4, dim)


def llm_features(prompts: Sequence[str], preset: str, out: Path) -> torch.Tensor:
    """The seed-x-i LLM's regressed features (n, tokens, dim) for each prompt, as ``SeedX.generate_image``
    computes them (greedy, image block forced): the bundled mini LLM for ``mini``, seeded random weights for
    other presets (tests). Cached in ``out/t2i_features.safetensors``."""
    from safetensors.torch import load_file, save_file

    from seedx_agent.model import SeedX
    from seedx_agent.pipeline import prompts as templates
    from seedx_agent.pipeline.decoding import GenerationOptions

    path = out / FEATURES_FILE
    if path.is_file():
        features = load_file(str(path))["features"]
        if features.shape[0] == len(prompts):
            return features
    model = SeedX.from_pretrained(preset, variants=("seed-x-i",), stages=())
    lvlm = model.parts.lvlms["seed-x-i"]
    options = GenerationOptions(max_new_tokens=model.config.max_new_tokens_image)
    rows = []
    for text in prompts:
        prompt = templates.generation_prompt("seed-x-i", text, (), model.config.lvlm.num_image_tokens)
        _, features, _ = model._image_features(lvlm, prompt, [], options)  # the facade's own t2i LLM stage
        rows.append(features[:1].float())
    stacked = torch.cat(rows).contiguous()
    save_file({"features": stacked}, str(path))
    return stacked


@torch.no_grad()
def heldout_set(vision: QwenViT, config: SeedXConfig, args: argparse.Namespace, out: Path) -> Heldout:
    """Render ``--eval-n`` held-out scenes per task (seed 0 of the world's held-out split, as ``seedx-agent eval``)
    and compute the features each task feeds the de-tokenizer."""
    size = config.vision.image_size
    recon = world.make_dataset("heldout", args.eval_n, "caption", EVAL_SEED, image_size=size)
    t2i = world.make_dataset("heldout", args.eval_n, "text_to_image", EVAL_SEED, image_size=size)

    def encode(scenes: Sequence[world.Scene]) -> torch.Tensor:
        return vit_features(vision, torch.stack([vit_transform(world.render(s, size), config.vision) for s in scenes]))

    if args.t2i_features == "llm":
        t2i_features = llm_features([s.prompt for s in t2i], args.preset, out)  # type: ignore[attr-defined]
    else:  # the oracle: the target scene's own pooled ViT features, as a perfect LLM would regress them
        t2i_features = pool_tokens_4to1(encode([s.scene for s in t2i]))  # type: ignore[attr-defined]
    negative = vit_features(vision, torch.zeros(1, 3, size, size))
    return Heldout(
        [s.scene for s in recon],  # type: ignore[attr-defined]
        encode([s.scene for s in recon]),  # type: ignore[attr-defined]
        t2i,  # type: ignore[arg-type]
        t2i_features,
        negative,
        pool_tokens_4to1(negative),
    )


def _sample(detok: Detokenizer, features: torch.Tensor, negative: torch.Tensor, args: argparse.Namespace) -> list:
    """Images for every row of ``features``, row i seeded with i (the eval's seed = sample index)."""
    images = []
    for start in range(0, features.shape[0], EVAL_CHUNK):
        rows = features[start : start + EVAL_CHUNK]
        generators = [torch.Generator().manual_seed(start + i) for i in range(rows.shape[0])]
        images += detok.generate(
            rows, negative, num_inference_steps=args.sampler_steps, generator=generators, scheduler=args.sampler
        )
    return images


def _mean(values: Sequence[bool]) -> float:
    return round(sum(map(float, values)) / max(1, len(values)), 4)


def score_arm(detok: Detokenizer, heldout: Heldout, args: argparse.Namespace) -> dict[str, float]:
    """Reconstruction (shape + colour kept) and text-to-image (shape, colour, position, count and, where the
    prompt names them, sizes) on the held-out set, with the config's guidance and ``--sampler``."""
    detok.eval()
    started = time.perf_counter()
    recon_images = _sample(detok, heldout.recon_features, heldout.negative_raw, args)
    t2i_images = _sample(detok, heldout.t2i_features, heldout.negative_pooled, args)
    seconds = (time.perf_counter() - started) / (len(recon_images) + len(t2i_images))
    recon = [score_reconstruction(image, scene) for image, scene in zip(recon_images, heldout.recon_scenes)]
    t2i = [
        score_generation(image, sample.scene, check_size=sample.mentions_size)
        for image, sample in zip(t2i_images, heldout.t2i_samples)
    ]
    scores = {
        "recon": _mean([s["all_ok"] for s in recon]),
        "recon_shape": _mean([s["shape_ok"] for s in recon]),
        "recon_colour": _mean([s["colour_ok"] for s in recon]),
        "sample_s": round(seconds, 3),
    }
    for key in ("shape", "colour", "position", "count"):
        scores[f"t2i_{key}"] = _mean([s[f"{key}_ok"] for s in t2i])
    scores["t2i"] = _mean([s["all_ok"] for s in t2i])
    return scores


@torch.no_grad()
def ceiling(detok: Detokenizer, heldout: Heldout, out: Path) -> dict[str, float]:
    """What a perfect de-tokenizer of this arm would score: the clean render at its output size and, in latent
    space, the VAE's own round trip of the 64x64 render (posterior mode). Written to ``out/ceiling.json``."""
    path = out / CEILING_FILE
    if path.is_file():
        return json.loads(path.read_text())
    size = detok.config.image_size
    recon_scenes, t2i = heldout.recon_scenes, heldout.t2i_samples
    renders = {"render": ([world.render(s, size) for s in recon_scenes], [world.render(s.scene, size) for s in t2i])}
    if detok.vae is not None:
        detok.vae.eval()

        def round_trip(images: Sequence[Any]) -> list:
            pixels = torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32)) for i in images])
            pixels = pixels.permute(0, 3, 1, 2) / 127.5 - 1.0  # (n, 3, size, size) in [-1, 1]
            return tensor_to_pil(detok.vae.decode(detok.vae.encode(pixels).latent_dist.mode()).sample)

        renders["vae"] = (round_trip(renders["render"][0]), round_trip(renders["render"][1]))
    result = {}
    for name, (recon_images, t2i_images) in renders.items():
        result[f"{name}_recon"] = _mean(
            [score_reconstruction(i, s)["all_ok"] for i, s in zip(recon_images, recon_scenes)]
        )
        result[f"{name}_t2i"] = _mean(
            [score_generation(i, s.scene, check_size=s.mentions_size)["all_ok"] for i, s in zip(t2i_images, t2i)]
        )
    path.write_text(json.dumps(result) + "\n")
    return result


# ---------------------------------------------------------------------------------------------
# Training one arm
# ---------------------------------------------------------------------------------------------


def _arm_settings(args: argparse.Namespace) -> dict[str, object]:
    settings = {key: getattr(args, key) for key in _ARM_KEYS}
    for key in _VAE_KEYS:  # the VAE stage defines the latent arm only
        settings[key] = getattr(args, key) if args.space == "latent" else None
    return settings


def train_arm(args: argparse.Namespace) -> list[dict[str, str]]:
    """Train one arm to ``--max-steps`` (the latent arm's VAE first), scoring at every eval point not yet in the
    CSV; returns the CSV rows."""
    torch.set_num_threads(args.threads)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    _check_arm(out, _arm_settings(args))
    if args.t2i_features == "llm" and args.preset == "mini" and args.vit != "bundled":
        raise SystemExit("--t2i-features llm regresses onto the bundled ViT's features: use --vit bundled (or vit)")
    csv_path, stage = out / CSV_NAME, out / STAGE_DIR
    done = {int(row["step"]) for row in read_rows(csv_path)}
    started, segments = time.monotonic(), 0

    def budget() -> float | None:
        if args.max_minutes is None:
            return None
        return max(0.0, args.max_minutes - (time.monotonic() - started) / 60)

    tokenizer = SeedXTokenizer.tiny()
    data = WorldData(arm_config(args.preset, args.space), tokenizer, seed=args.seed)  # targets at the arm's size
    vae_cpu_s, scale = 0.0, 1.0
    if args.space == "latent":
        folder = out / VAE_DIR
        vae_step, vae_cpu_s = _read_progress(folder)
        torch.manual_seed(args.seed)
        vae = build_vae()
        if (checkpoint_step(folder) or 0) < args.vae_steps:
            segments += 1
            reached = checkpoint_step(folder) or 0
            cpu_before = time.process_time()
            result = train_vae(vae, data, folder, args, budget())
            trained = result.step - reached
            if trained > 0 and result.step > vae_step:
                vae_cpu_s += (time.process_time() - cpu_before) * (result.step - vae_step) / trained
                vae_step = result.step
                _write_progress(folder, vae_step, vae_cpu_s)
            print(json.dumps({"vae_step": result.step, **result.losses}), flush=True)
            if not result.finished:
                print(f"VAE stopped at step {result.step} (--max-minutes); re-run the same command", flush=True)
                return read_rows(csv_path)
        else:
            _load_module(vae, folder, "vae")
        scale = latent_scale(vae, data, folder)

    config = arm_config(args.preset, args.space, scale)
    parts = build_components(config, tokenizer=tokenizer, variants=(), stages=(1,), seed=args.seed)
    load_vision(parts.vision, args.vit)
    detok = parts.detokenizers[1]
    if args.space == "latent":
        detok.vae.load_state_dict(vae.state_dict())
    unet = sum(p.numel() for p in detok.unet.parameters()) / 1e6
    size, latent = config.detokenizer.image_size, config.detokenizer.latent_size
    print(
        f"arm {args.arm}: {args.space} space, {size}x{size} images, diffusion on {config.detokenizer.latent_channels}"
        f"x{latent}x{latent}, UNet {unet:.2f} M parameters, lr {args.lr}, batch {args.batch}",
        flush=True,
    )
    progress_step, cpu_s = _read_progress(out)
    heldout: Heldout | None = None
    for point in eval_points(args.max_steps, args.first_eval):
        if point in done:
            continue
        reached = checkpoint_step(stage) or 0
        if reached > point:
            print(f"step {point}: checkpoint is already at step {reached}, cannot score it; skipped", flush=True)
            continue
        left = budget()
        if left == 0 and segments:  # the first segment of a call always trains at least one step
            print(f"--max-minutes spent before step {point}; re-run the same command to resume", flush=True)
            return read_rows(csv_path)
        segments += 1
        loop = LoopConfig(
            steps=point,
            lr=args.lr,
            warmup_steps=args.warmup,
            min_lr_ratio=1.0,  # constant after warm-up: every eval point is a finished run of that length
            grad_clip=args.grad_clip,
            seed=args.seed,
            max_minutes=left,
        )
        cpu_before = time.process_time()
        result = detokenizer_stage1(
            detok, parts.vision, data, stage, loop, batch_size=args.batch, uncond_prob=args.uncond_prob, progress=False
        )
        trained = result.step - reached
        if trained > 0 and result.step > progress_step:
            # A run killed between checkpoints redoes some steps: count each step once, at this call's rate.
            cpu_s += (time.process_time() - cpu_before) * (result.step - progress_step) / trained
            progress_step = result.step
            _write_progress(out, progress_step, cpu_s)
        if not result.finished:
            print(f"stopped at step {result.step} (--max-minutes); re-run the same command to resume", flush=True)
            return read_rows(csv_path)
        if heldout is None:
            heldout = heldout_set(parts.vision, config, args, out)
            print(json.dumps({"ceiling": ceiling(detok, heldout, out)}), flush=True)
        scores = score_arm(detok, heldout, args)
        row = {
            "arm": args.arm,
            "space": args.space,
            "step": point,
            "examples_seen": point * args.batch,
            "cpu_minutes": round((cpu_s + vae_cpu_s) / 60, 4),
            "vae_cpu_minutes": round(vae_cpu_s / 60, 4),
            "train_loss": round(result.losses.get("loss", float("nan")), 5),
            **scores,
        }
        append_row(csv_path, row)
        done.add(point)
        print(json.dumps(row), flush=True)
    return read_rows(csv_path)


# ---------------------------------------------------------------------------------------------
# Merging, plotting and fitting
# ---------------------------------------------------------------------------------------------


def prediction_table(rows: Sequence[dict[str, str]]) -> str:
    """Markdown table: per arm, the last point, seconds per sampled image, and per score the fitted asymptote and
    the predicted CPU minutes to the evaluator's bar."""
    head = ["arm", "space", "steps", "CPU min", "s / image"]
    for column, _ in SCORED:
        head += [f"{column} last", f"{column} asymptote", f"CPU min to {BARS[column]:.0%} {column}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, points in _by_arm(rows).items():
        minutes = _column(points, "cpu_minutes")
        last = points[-1]
        cells = [arm, last.get("space", ""), last["step"], f"{minutes[-1]:.1f}", last.get("sample_s", "")]
        for column, _ in SCORED:
            scores = _column(points, column)
            cells += [f"{scores[-1]:.0%}", *time_to_bar(minutes, scores, BARS[column])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_mode(args: argparse.Namespace) -> str:
    """Merge the arms' CSVs, write the merged CSV and the PNG, and return the prediction table."""
    rows = merge_arms(args.plot)
    if args.csv:
        write_csv(rows, Path(args.csv), COLUMNS)
    if args.png:
        plot_curves(
            rows,
            Path(args.png),
            scores=SCORED,
            bars=BARS,
            ylabel="{task} all_ok (held-out)",
            title="Miniature de-tokenizer: held-out reconstruction and text-to-image",
        )
    table = prediction_table(rows)
    print(table)
    return table


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (one arm to train, or ``--plot`` folders to merge)."""
    parser = arm_parser(
        __doc__.split("\n")[0],
        out_help="folder of this arm (checkpoints, curve.csv); outside the work tree",
        max_steps=800,
        first_eval=50,
        eval_n=32,
    )
    parser.add_argument("--space", choices=SPACES, default="pixel", help="diffusion on 32x32 pixels or VAE latents")
    parser.add_argument("--uncond-prob", type=float, default=0.1, help="rows trained on the CFG negative")
    parser.add_argument("--sampler", default="dpm", choices=("dpm", "euler"), help="eval sampler")
    parser.add_argument("--sampler-steps", type=int, default=10, help="eval sampler steps (x2 UNet calls with CFG)")
    parser.add_argument(
        "--t2i-features",
        default="llm",
        choices=("llm", "vit"),
        help="text-to-image input: the LLM's regressed features (bundled mini LLM on 'mini'), or the target "
        "scene's pooled ViT features (an oracle LLM)",
    )
    parser.add_argument("--vae-steps", type=int, default=400, help="latent: steps of the VAE stage")
    parser.add_argument("--vae-lr", type=float, default=2e-3, help="latent: VAE peak learning rate (cosine)")
    parser.add_argument("--vae-batch", type=int, default=8, help="latent: VAE batch")
    parser.add_argument("--vae-kl", type=float, default=1e-6, help="latent: KL weight per pixel (LDM: 1e-6)")
    return parse_arm_args(
        parser, argv, "train an arm with ARM_NAME --space SPACE --out DIR, or merge arms with --plot DIR ..."
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Train one arm (resuming), or with ``--plot`` merge, draw and fit several."""
    args = parse_args(argv)
    if args.plot is not None:
        plot_mode(args)
    else:
        train_arm(args)


if __name__ == "__main__":
    main()

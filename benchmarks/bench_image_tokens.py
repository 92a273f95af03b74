"""Benchmark: image-token phase, t2i LLM stage, cached second question, any-res, against the official algorithm.

Section 1 times the official way of producing an image's LLM features (HF ``generate`` with a logits
processor forcing ``<img_00000>`` .. ``</img>`` one decoding step each, every layer's hidden states kept,
reference §6.1/§6.2) against ``seedx_agent.pipeline.decoding.decode`` (the placeholders fed in one forward pass),
on the same weights in the same process, alternating runs. Section 2 times ``seedx_agent.pipeline.anyres.preprocess``
against the same algorithm written naively (per-crop resize / ToTensor / Normalize in a Python loop).
Section 1b times the whole LLM stage of a text-to-image turn (prompt text -> regressed ViT features).
Section 3 times the first token of a second question about an image: re-encoding it (ViT + full prefill,
``prefix_cache=False``) against the prefix KV cache (``seedx_agent.speed.prefix_cache``); answers must be equal.

Run from the repository root: ``python -m benchmarks.bench_image_tokens --config tiny --runs 5``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import PIL.Image
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from seedx_agent.config import AnyResConfig, LLMConfig, LVLMConfig, QwenResamplerConfig, SeedXConfig, VisionConfig
from seedx_agent.model import SeedX
from seedx_agent.pipeline import prompts
from seedx_agent.pipeline.anyres import parse_grids, preprocess, preprocess_batch, select_grid
from seedx_agent.pipeline.components import build_components
from seedx_agent.pipeline.decoding import ComparisonSwitches, GenerationOptions, decode
from seedx_agent.pipeline.lvlm import SeedXLVLM
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.pipeline.tokens import BOI, TokenIds
from seedx_agent.speed.cpu_linear import onednn_linear_available, use_linear_kernel

logger = logging.getLogger("benchmarks.bench_image_tokens")

CAPTION = "a red circle on a blue square"
TOLERANCE = 1e-4  # fp32 max abs difference allowed between the two paths' image hidden states


# -- model configurations ----------------------------------------------------------------------------------
def build_config(name: str, vocab_size: int) -> SeedXConfig:
    """``tiny``: the test preset. ``mid``: 8 layers x hidden 1024 (LLM weights ~0.4 GB fp32), 64 image tokens."""
    if name == "tiny":
        return SeedXConfig.from_preset("tiny-random")
    if name != "mid":
        raise ValueError(f"unknown config {name!r}; choose 'tiny' or 'mid'")
    tiny = SeedXConfig.from_preset("tiny-random")
    hidden, vit_dim, num_image_tokens = 1024, tiny.vision.output_dim, 64
    vision = tiny.vision.model_copy(update={"pool_grid": 16})  # 256 pooled tokens = 4 x 64 image tokens
    llm = LLMConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_layers=8,
        num_heads=16,
        num_kv_heads=16,
        intermediate_size=2816,
        max_position_embeddings=2048,
    )
    lvlm = LVLMConfig(
        num_image_tokens=num_image_tokens,
        input_resampler=QwenResamplerConfig(grid=8, embed_dim=hidden, num_heads=16, kv_dim=vit_dim),
        output_resampler=QwenResamplerConfig(grid=8, embed_dim=vit_dim, num_heads=4, kv_dim=hidden),
    )
    # Validate the whole family (resampler dims vs ViT/LLM, 4-to-1 pooling) through the top-level config.
    return SeedXConfig.model_validate(
        {
            **tiny.model_dump(),
            "name": "mid",
            "vision": vision.model_dump(),
            "llm": llm.model_dump(),
            "lvlm": lvlm.model_dump(),
        }
    )


# -- baseline: the official forcing processor ----------------------------------------------------------------
class OfficialImageForcing(LogitsProcessor):
    """The official rule (§6.1): after ``<img>`` or a placeholder, force its successor with max + 10;
    otherwise set the placeholders' and ``</img>``'s logits to 0.0 (not -inf)."""

    def __init__(self, ids: TokenIds) -> None:
        sequence = [ids.boi, *ids.image, ids.eoi]
        self.successor = dict(itertools.pairwise(sequence))
        self.suppressed = [*ids.image, ids.eoi]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        for row in range(scores.shape[0]):
            last = int(input_ids[row, -1]) if input_ids.shape[1] else None
            if last in self.successor:
                scores[row, self.successor[last]] = scores[row].max() + 10.0
            else:
                scores[row, self.suppressed] = 0.0
        return scores


@torch.no_grad()
def baseline_image_states(lvlm: SeedXLVLM, ids: TokenIds, prompt_ids: list[int]) -> torch.Tensor:
    """Official inference: generate N+2 tokens step by step keeping all hidden states, then take the final-layer
    states whose inputs were the N placeholders (§6.2). Returns (N, hidden)."""
    num_image_tokens = len(ids.image)
    input_ids = torch.tensor([prompt_ids])  # (1, prompt)
    output = lvlm.llm.generate(
        input_ids=input_ids,  # the official code passes the ids too, so the processor sees the prompt's <img>
        inputs_embeds=lvlm.inputs_embeds(input_ids),
        max_new_tokens=num_image_tokens + 2,
        logits_processor=LogitsProcessorList([OfficialImageForcing(ids)]),
        output_hidden_states=True,
        return_dict_in_generate=True,
        do_sample=False,
    )
    # output.hidden_states: one tuple per step, each (layers+1) x (1, n, hidden); step 0 is the prompt.
    final = torch.cat([step[-1][0] for step in output.hidden_states], dim=0)[len(prompt_ids) :]  # (generated, h)
    generated = output.sequences[0, -len(output.hidden_states) :].tolist()
    end = generated.index(ids.eoi)  # the first </img>: its input states e-N .. e-1 are the image features
    return final[end - num_image_tokens : end]


@torch.no_grad()
def ours_image_states(lvlm: SeedXLVLM, ids: TokenIds, prompt_ids: list[int]) -> torch.Tensor:
    """Our decoder with the same budget: the whole image block in one forward pass. Returns (N, hidden)."""
    input_ids = torch.tensor([prompt_ids])  # (1, prompt)
    options = GenerationOptions(
        max_new_tokens=len(ids.image) + 2, compare=ComparisonSwitches(placeholder_mask="official_zero")
    )
    out = decode(
        lvlm, ids, inputs_embeds=lvlm.inputs_embeds(input_ids), last_prompt_token=prompt_ids[-1], options=options
    )
    return out.image_hidden_states[0]


def baseline_t2i_stage(model: SeedX, caption: str) -> torch.Tensor:
    """Official t2i LLM stage: tokenize ``caption<img>``, generate with forcing, regress. (1, N, vit_dim)."""
    lvlm = model.parts.lvlms["seed-x"]
    prompt_ids = model.tokenizer.encode(caption + BOI, add_bos=True)
    return lvlm.regress_images(baseline_image_states(lvlm, model.ids, prompt_ids)[None])


@torch.no_grad()
def ours_t2i_stage(model: SeedX, caption: str) -> torch.Tensor:
    """Our t2i LLM stage through the facade's own path (``_run_llm`` + ``regress_images``). (1, N, vit_dim)."""
    lvlm = model.parts.lvlms["seed-x"]
    options = GenerationOptions(
        max_new_tokens=model.config.lvlm.num_image_tokens + 2,
        compare=ComparisonSwitches(placeholder_mask="official_zero"),
    )
    out = model._run_llm(lvlm, prompts.generation_prompt("seed-x", caption), [], options)
    return lvlm.regress_images(torch.stack(out.image_hidden_states))


def build_model(config_name: str) -> SeedX:
    """A ``SeedX`` (pre-trained and instruct LLMs, seeded random weights) for ``config_name``."""
    tokenizer = SeedXTokenizer.tiny()
    config = build_config(config_name, vocab_size=len(tokenizer))
    parts = build_components(config, tokenizer=tokenizer, variants=("seed-x", "seed-x-i"), stages=(1,), seed=0)
    for module in (parts.vision, *parts.lvlms.values()):
        module.eval()
    return SeedX(parts)


def bench_t2i_stage(model: SeedX, config_name: str, runs: int, kernel: str = "torch") -> float:
    """Section 1b: prompt text -> regressed features, both paths; features must agree in fp32."""
    base, ours = baseline_t2i_stage(model, CAPTION), ours_t2i_stage(model, CAPTION)
    max_diff = float((base - ours).abs().max())
    print(f"\nt2i LLM stage: regressed features {tuple(ours.shape)}: max abs diff baseline vs ours = {max_diff:.3e}")
    if not max_diff < TOLERANCE:
        raise RuntimeError(f"regressed features differ by {max_diff:.3e} >= {TOLERANCE}")
    times = time_alternating(
        {"baseline": lambda: baseline_t2i_stage(model, CAPTION), "ours": lambda: ours_t2i_stage(model, CAPTION)}, runs
    )
    return report(f"whole LLM stage of a t2i turn, config {config_name}, {kernel} linear", times)


# -- second question about the same image: time to first token --------------------------------------------------
def time_to_first_token(model: SeedX, image: PIL.Image.Image, question: str, *, cached: bool) -> tuple[float, int]:
    """Seconds from the call to the first generated token, and that token (greedy)."""
    start = time.perf_counter()
    first: list[float] = []
    options = GenerationOptions(max_new_tokens=1, prefix_cache=cached)
    result = model.comprehend(image, question, options=options, on_token=lambda _: first.append(time.perf_counter()))
    return first[0] - start, result.token_ids[0]


def bench_second_question(model: SeedX, config_name: str, runs: int, image_side: int, kernel: str = "torch") -> float:
    """Section 3: first token of follow-up questions, re-encoding vs the prefix KV cache; answers equal."""
    image = make_images(1, seed=1)[0].resize((image_side * 2, image_side))  # a 2x1 grid: 3 crops
    questions = [f"Question {i}: what is in the picture?" for i in range(runs + 1)]
    model.prefix_cache.clear()
    time_to_first_token(model, image, "First question about it.", cached=True)  # fills the cache
    for question in questions[:2]:
        if (
            time_to_first_token(model, image, question, cached=True)[1]
            != time_to_first_token(model, image, question, cached=False)[1]
        ):
            raise RuntimeError("the cached and uncached first tokens differ")
    crops = preprocess(image, model.config.vision, model.config.anyres.grids).num_crops
    print(
        f"\nsecond question: {image.size} image, {crops} crops x {model.config.lvlm.num_image_tokens} image tokens; "
        "first tokens equal cached vs uncached"
    )
    ttft: dict[str, list[float]] = {"baseline": [], "ours": []}  # alternating, a new question every run
    for index in range(runs):
        for name, cached in (("baseline", False), ("ours", True)):
            ttft[name].append(time_to_first_token(model, image, questions[index], cached=cached)[0])
    print(f"prefix cache: {model.prefix_cache.stats}")
    return report(f"time to first token of a second question, config {config_name}, {kernel} linear", ttft)


# -- timing helpers -------------------------------------------------------------------------------------------
def time_alternating(funcs: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """Call each function ``runs`` times, alternating, after one untimed warm-up each; seconds per call."""
    for func in funcs.values():
        func()
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(runs):
        for name, func in funcs.items():
            start = time.perf_counter()
            func()
            times[name].append(time.perf_counter() - start)
    return times


def report(section: str, times: dict[str, list[float]]) -> float:
    """Print the median table of one section and return the ratio baseline/ours."""
    base, ours = statistics.median(times["baseline"]), statistics.median(times["ours"])
    ratio = base / ours
    runs = len(times["ours"])
    print(f"\n## {section}  (median of {runs} alternating runs)")
    print("| path | median ms | min ms |")
    print("|---|---:|---:|")
    for name in ("baseline", "ours"):
        print(f"| {name} | {statistics.median(times[name]) * 1e3:.2f} | {min(times[name]) * 1e3:.2f} |")
    print(f"ratio baseline/ours: {ratio:.2f}x (medians); {min(times['baseline']) / min(times['ours']):.2f}x (minimums)")
    return ratio


def bench_image_tokens(config_name: str, runs: int, kernel: str = "torch") -> float:
    """Section 1: both paths on one model (both with ``kernel``'s linears); the image states must agree in fp32."""
    tokenizer = SeedXTokenizer.tiny()
    config = build_config(config_name, vocab_size=len(tokenizer))
    if config.llm.vocab_size != len(tokenizer):
        raise ValueError(f"vocab_size {config.llm.vocab_size} != tokenizer size {len(tokenizer)}")
    torch.manual_seed(0)
    lvlm = SeedXLVLM(config.llm, config.lvlm).eval()
    use_linear_kernel(lvlm, kernel)
    ids = TokenIds.from_vocab(tokenizer, config.lvlm.num_image_tokens)
    prompt_ids = tokenizer.encode(CAPTION + BOI, add_bos=True)
    if prompt_ids[-1] != ids.boi:
        raise RuntimeError("the text-to-image prompt must end with the <img> token")
    llm_params = sum(p.numel() for p in lvlm.llm.parameters())

    baseline_states = baseline_image_states(lvlm, ids, prompt_ids)
    our_states = ours_image_states(lvlm, ids, prompt_ids)
    max_diff = float((baseline_states - our_states).abs().max())
    print(
        f"config {config_name}: LLM {config.llm.num_layers} layers x hidden {config.llm.hidden_size}, "
        f"{llm_params / 1e6:.1f}M params ({llm_params * 4 / 2**20:.0f} MiB fp32), "
        f"{config.lvlm.num_image_tokens} image tokens, prompt {len(prompt_ids)} tokens"
    )
    print(f"image hidden states {tuple(our_states.shape)}: max abs diff baseline vs ours = {max_diff:.3e}")
    if not max_diff < TOLERANCE:
        raise RuntimeError(f"image hidden states differ by {max_diff:.3e} >= {TOLERANCE}")

    times = time_alternating(
        {
            "baseline": lambda: baseline_image_states(lvlm, ids, prompt_ids),
            "ours": lambda: ours_image_states(lvlm, ids, prompt_ids),
        },
        runs,
    )
    return report(f"image-token phase, config {config_name}, {kernel} linear", times)


# -- any-res preprocessing -------------------------------------------------------------------------------------
def naive_preprocess(image: PIL.Image.Image, vision: VisionConfig, grids: Sequence[str]) -> torch.Tensor:
    """The official per-crop pipeline: stretch to the grid, crop tiles, thumbnail, then for every crop in a
    Python loop Resize((S, S)) + ToTensor + Normalize. Returns (k+1, 3, S, S)."""
    side = vision.image_size
    grid_w, grid_h = select_grid(image.size, parse_grids(grids, side))
    resized = image.resize((grid_w, grid_h), Image.Resampling.BICUBIC)
    crops = [
        resized.crop((col * side, row * side, (col + 1) * side, (row + 1) * side))
        for row in range(grid_h // side)
        for col in range(grid_w // side)
    ]
    crops.append(image.resize((side, side), Image.Resampling.BICUBIC))
    mean = torch.tensor(vision.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(vision.std, dtype=torch.float32).view(3, 1, 1)
    tensors = []
    for crop in crops:
        if crop.size != (side, side):
            crop = crop.resize((side, side), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.array(crop, dtype=np.uint8)).permute(2, 0, 1).contiguous()  # (3, S, S)
        tensors.append(pixels.float().div(255).sub(mean).div(std))
    return torch.stack(tensors)  # (k+1, 3, S, S)


def make_images(count: int, seed: int = 0) -> list[PIL.Image.Image]:
    """``count`` random RGB images of mixed sizes and aspect ratios (fixed seed)."""
    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (480, 640), (1024, 1024), (1600, 400), (300, 900), (800, 600), (1280, 720), (224, 224)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in (sizes[i % len(sizes)] for i in range(count))
    ]


def bench_anyres(vision: VisionConfig, runs: int, num_images: int = 8) -> float:
    """Section 2: the naive per-crop loop vs ``preprocess_batch`` (all images of a request at once, over the
    cores) and vs ``preprocess`` one image at a time, on mixed-size images; tensors must be equal."""
    grids = AnyResConfig().grids
    images = make_images(num_images)
    crops = 0
    batch = preprocess_batch(images, vision, grids)
    for image, batched in zip(images, batch):
        naive = naive_preprocess(image, vision, grids)
        single = preprocess(image, vision, grids).pixel_values
        if not (torch.equal(batched.pixel_values, naive) and torch.equal(single, naive)):
            raise RuntimeError(f"preprocess differs from the naive pipeline for a {image.size} image")
        crops += naive.shape[0]
    print(
        f"\nany-res: {num_images} images, {crops} crops of {vision.image_size}px, grids {list(grids)}, "
        f"{os.cpu_count()} CPUs: tensors equal (torch.equal)"
    )
    times = time_alternating(
        {
            "baseline": lambda: [naive_preprocess(image, vision, grids) for image in images],
            "batch": lambda: preprocess_batch(images, vision, grids),
            "single": lambda: [preprocess(image, vision, grids) for image in images],
        },
        runs,
    )
    baseline = times["baseline"]
    ratio = report(
        f"any-res preprocessing of {num_images} images as one batch, S={vision.image_size}",
        {"baseline": baseline, "ours": times["batch"]},
    )
    report(
        f"any-res preprocessing of the same {num_images} images one call each, S={vision.image_size}",
        {"baseline": baseline, "ours": times["single"]},
    )
    return ratio


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags and run both sections; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("tiny", "mid"), default="tiny")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per path (alternating)")
    parser.add_argument("--smoke", action="store_true", help="1 run each, tiny config and tiny images (CI)")
    parser.add_argument(
        "--linear-kernel",
        choices=("torch", "onednn", "both"),
        default="both",
        help="linears of both paths: torch's F.linear (MKL), oneDNN (seedx_agent.speed.cpu_linear), or each in turn",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    logging.basicConfig(level=logging.WARNING)
    torch.set_grad_enabled(False)
    config_name, runs = ("tiny", 1) if args.smoke else (args.config, args.runs)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}")
    kernels = ("torch", "onednn") if args.linear_kernel == "both" else (args.linear_kernel,)
    if not onednn_linear_available():
        print("this torch build has no oneDNN linear: torch kernels only")
        kernels = ("torch",)
    # Small layers keep F.linear under "onednn" (ONEDNN_MIN_WEIGHT_ELEMENTS); the tiny config has none above it.
    for kernel in kernels:
        bench_image_tokens(config_name, runs, kernel)
    model = build_model(config_name)
    for kernel in kernels:
        model.set_linear_kernel(kernel)
        bench_t2i_stage(model, config_name, runs, kernel)
        bench_second_question(model, config_name, runs, image_side=model.config.vision.image_size, kernel=kernel)
    # Any-res at the official 448 px unless smoke (then the tiny 56 px vision config).
    vision = SeedXConfig.from_preset("tiny-random").vision if args.smoke else VisionConfig()
    bench_anyres(vision, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

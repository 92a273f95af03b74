"""GPU check: does this machine run SEED-X, and how fast? One command, a JSON report and a Markdown table.

For each configuration (``--dtype`` x ``--quant``) the script builds the real-size stacks of a preset (random
weights unless ``--checkpoint`` names a converted or official folder), one stack at a time so that one GPU
holds them: **SEED-X-I** (ViT, LLM, stage-1 de-tokenizer) for comprehension, grounding and text-to-image, and
**SEED-X-Edit** (ViT, LLM, stage-2 de-tokenizer) for editing. It measures:

* load time and peak memory per device of each stack (``torch.cuda.max_memory_allocated`` on CUDA, reset per
  stack, during loading and while running; the process's peak RSS on CPU, which cannot be reset);
* comprehension of a 1000x600 image (any-res, the preset's grids): time to first token, decode tokens/s and
  the device's bound for it (measured copy bandwidth / bytes of the LLM's non-embedding weights, as
  ``benchmarks.roofline``);
* one grounding, one text-to-image and one edit (the de-tokenizer's own size: 1024x1024 for real presets);
* the image block of a text-to-image turn: the official algorithm (HF ``generate`` with the forcing
  processor, one step per placeholder, ``benchmarks.bench_image_tokens.baseline_image_states``) against ours
  (one forward pass, ``ours_image_states``) on the same weights, outputs compared (max abs diff, tolerance);
* the de-tokenizer time of Euler with ``--steps`` (50, the official sampler) against DPM-Solver++ with
  ``--fast-steps`` (12, ``make_scheduler("dpm")``);
* the whole-request time of each ability (first call "cold", then the median of ``--runs`` calls).

A configuration that cannot run here is skipped with its reason (bitsandbytes missing, no CUDA device); one
that fails (e.g. out of memory) is recorded with its error and the next one runs.

GPU (from the repository root):
``python -m benchmarks.gpu_check --preset seed-x-i --device cuda --dtype bf16 --quant none,8,4 --out gpu-check``
CPU smoke run (seconds; tests/test_gpu_check.py):
``python -m benchmarks.gpu_check --preset tiny-random --device cpu --dtype fp32 --steps 2 --fast-steps 1 --out /tmp/x``
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_image_tokens import (
    CAPTION,
    TOLERANCE,
    baseline_image_states,
    make_images,
    ours_image_states,
    time_alternating,
)
from benchmarks.roofline import best_seconds, measure_bandwidth
from seedx_agent import weights as checkpoints
from seedx_agent.config import PRESETS, SeedXConfig
from seedx_agent.model import SeedX
from seedx_agent.pipeline.anyres import preprocess
from seedx_agent.pipeline.components import build_components
from seedx_agent.pipeline.decoding import GenerationOptions
from seedx_agent.pipeline.lvlm import SeedXLVLM
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.pipeline.tokens import BOI
from seedx_agent.weights.loading import bundled_mini_path

logger = logging.getLogger("benchmarks.gpu_check")

SCHEMA_VERSION = 1
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
QUANTS = {"none": None, "8": 8, "4": 4}
ABILITIES = ("comprehension", "grounding", "t2i", "edit", "image_block", "detokenizer")
COMPREHENSION_SIZE = (1000, 600)  # (width, height), reference §3's worked example: a 2x1 grid
QUESTION = "Describe this image in detail."
PHRASE = "the red circle"
INSTRUCTION = "Make the sky purple."
# Max abs difference allowed between the official and our image block, relative to the largest |value|,
# when the LLM computes in 16 bits or is quantised (fp32 uses bench_image_tokens.TOLERANCE, absolute).
REDUCED_PRECISION_RTOL = 5e-2
MAIN_STACK, EDIT_STACK = ("seed-x-i", 1), ("seed-x-edit", 2)


# -- environment --------------------------------------------------------------------------------------------
def sync_all() -> None:
    """Wait for queued CUDA work on every GPU, so wall-clock timings cover it."""
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


def canonical_device(name: str) -> str:
    """``cuda`` -> ``cuda:0`` (the current device); ``cpu`` stays."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def environment() -> dict[str, Any]:
    try:
        import bitsandbytes

        bnb: str | None = bitsandbytes.__version__
    except ImportError:
        bnb = None
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"index": index, "name": props.name, "memory_bytes": int(props.total_memory)})
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bitsandbytes": bnb,
        "gpus": gpus,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }


def measure_device_bandwidth(device: str, megabytes: int, runs: int) -> float:
    """Copy bandwidth in GB/s (read + write bytes), best of ``runs``: roofline's measure on CPU; on CUDA the
    same copy timed with a synchronisation (kernels are asynchronous)."""
    if torch.device(device).type == "cpu":
        return measure_bandwidth(megabytes, runs)["copy"]
    numel = megabytes * 2**20 // 4
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)

    def copy() -> None:
        dst.copy_(src)
        torch.cuda.synchronize(device)

    return 2 * numel * 4 / best_seconds(copy, runs) / 1e9


def process_peak_rss_bytes() -> int:
    """This process's peak resident set since it started (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_memory(devices: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Peak bytes per device since the last ``reset_peaks``."""
    result: dict[str, dict[str, Any]] = {}
    for device in devices:
        if torch.device(device).type == "cuda":
            result[device] = {"peak_bytes": int(torch.cuda.max_memory_allocated(device)), "kind": "cuda_allocated"}
        else:
            result[device] = {"peak_bytes": process_peak_rss_bytes(), "kind": "process_rss_peak"}
    return result


def reset_peaks(devices: Sequence[str]) -> None:
    for device in devices:
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- building the stacks ------------------------------------------------------------------------------------
def stand_in_tokenizer(vocab_size: int) -> SeedXTokenizer:
    """A tokenizer with ``vocab_size`` ids for random-weight real presets (the LLaMA-2 one is not bundled):
    the bundled tiny SentencePiece model padded with never-produced (UNUSED) pieces to ``vocab_size`` - 330,
    then the SEED-X added tokens, so every special id sits where the real vocabulary has it. Text splits into
    more pieces than with LLaMA-2's model; the image tokens, which dominate the prompts here, are the same."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    tiny = SeedXTokenizer.tiny()
    if vocab_size == tiny.vocab_size:
        return tiny
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tiny.sp.serialized_model_proto())
    base, target = len(proto.pieces), vocab_size - len(tiny.added_tokens)
    if target < base:
        raise ValueError(f"vocabulary {vocab_size} is smaller than the bundled tokenizer's {tiny.vocab_size}")
    for index in range(base, target):
        piece = proto.pieces.add()
        piece.piece, piece.score = f"<unused_{index:05d}>", 0.0
        piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.UNUSED
    model = spm.SentencePieceProcessor()
    model.LoadFromSerializedProto(proto.SerializeToString())
    return SeedXTokenizer(model, {token: i - base + target for token, i in tiny.added_tokens.items()})


def stack_parameter_bytes(config: SeedXConfig, tokenizer: SeedXTokenizer, variant: str, stage: int) -> int:
    """fp32 bytes of one stack's weights, from a meta-device build (nothing allocated)."""
    parts = build_components(config, tokenizer=tokenizer, variants=(variant,), stages=(stage,), device="meta")
    return sum(p.numel() * 4 for _, module in parts.modules() for p in module.parameters())


def choose_build_device(requested: str, device_map: dict[str, str], fp32_bytes: Callable[[], int]) -> str:
    """Where random weights are initialised before ``checkpoints.place`` moves and casts them. ``auto``: on the
    target GPU when every component goes to that one GPU and the fp32 stack fits in its free memory (seconds
    instead of minutes of CPU initialisation), else on the CPU (as ``SeedX.from_pretrained`` does for a preset)."""
    if requested != "auto":
        return requested
    targets = set(device_map.values())
    if len(targets) != 1:
        return "cpu"
    (target,) = targets
    if torch.device(target).type != "cuda":
        return "cpu"
    free, _ = torch.cuda.mem_get_info(torch.device(target))
    return target if fp32_bytes() * 1.05 < free else "cpu"


def run_config(args: argparse.Namespace) -> SeedXConfig:
    """The geometry measured: the preset's (default seed-x-i); with a checkpoint in our layout, its config.json."""
    if args.checkpoint:
        root = bundled_mini_path() if args.checkpoint == "mini" else Path(args.checkpoint)
        if (root / "manifest.json").is_file() and (root / "config.json").is_file():
            return SeedXConfig.load(root / "config.json")
    return SeedXConfig.from_preset(args.preset or "seed-x-i")


def load_stack(
    args: argparse.Namespace,
    config: SeedXConfig,
    tokenizer: SeedXTokenizer | None,
    variant: str,
    stage: int,
    device_map: dict[str, str],
    dtype: torch.dtype,
    bits: int | None,
) -> tuple[SeedX, dict[str, Any]]:
    """One stack (ViT + one LLM + one de-tokenizer stage) through the library's loaders; info for the report,
    with ``load_s`` (the sizing that picks the build device is not counted)."""
    info: dict[str, Any] = {"variant": variant, "detokenizer_stage": stage}
    if args.checkpoint:
        sync_all()
        start = time.perf_counter()
        geometry = {"preset": args.preset} if args.preset else {}  # else the checkpoint's own (or seed-x-i)
        model = SeedX.from_pretrained(
            args.checkpoint,
            variants=(variant,),
            stages=(stage,),
            device_map=device_map,
            dtype=dtype,
            quantize_llm=bits,
            allow_pickle=args.allow_pickle,
            **geometry,
        )
        sync_all()
        info["weights"] = f"checkpoint {args.checkpoint}"
        info["load_s"] = time.perf_counter() - start
        return model, info
    assert tokenizer is not None
    build_device = choose_build_device(
        args.build_device, device_map, lambda: stack_parameter_bytes(config, tokenizer, variant, stage)
    )
    sync_all()
    start = time.perf_counter()
    info["weights"] = "random (seed 0)"
    info["build_device"] = build_device
    model = None
    if build_device != "cpu":  # the body of SeedX.from_pretrained for a preset, with the weights initialised on the GPU
        try:
            parts = build_components(config, tokenizer=tokenizer, variants=(variant,), seed=0, device=build_device)
            checkpoints.place(parts, device_map=device_map, dtype=dtype)
            model = SeedX(parts)
            model.set_linear_kernel("auto")
        except Exception as exc:  # e.g. a module that cannot be built on the GPU: fall back to the CPU
            info["build_fallback"] = f"{type(exc).__name__}: {exc}"[:300]
            info["build_device"] = "cpu"
            logger.warning("building on %s failed (%s); building on the CPU", build_device, exc)
            parts = model = None
            free_memory()
    if model is None:
        model = SeedX.from_pretrained(
            config.name, variants=(variant,), device_map=device_map, dtype=dtype, tokenizer=tokenizer
        )
    if bits is not None:  # as SeedX.from_pretrained(quantize_llm=bits) does after placing
        for lvlm in model.parts.lvlms.values():
            checkpoints.quantize_llm(lvlm, bits=bits)
    sync_all()
    info["load_s"] = time.perf_counter() - start
    return model, info


def llm_weight_bytes(lvlm: SeedXLVLM) -> int:
    """Bytes of the LLM weights read once per decoded token: all but the input embedding (quantised layers
    count their packed storage)."""
    embedding = lvlm.llm.get_input_embeddings().weight
    return sum(p.numel() * p.element_size() for p in lvlm.llm.parameters() if p is not embedding)


def component_parameters(model: SeedX) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters()) for name, module in model.parts.modules()}


# -- measurements -------------------------------------------------------------------------------------------
def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    sync_all()
    start = time.perf_counter()
    result = func()
    sync_all()
    return time.perf_counter() - start, result


def cold_and_warm(func: Callable[[], Any], runs: int) -> tuple[dict[str, Any], list[Any]]:
    """The first call (cold: kernel selection, caches) and ``runs`` more; times and every call's result."""
    cold, first = timed(func)
    warm, results = [], [first]
    for _ in range(runs):
        seconds, result = timed(func)
        warm.append(seconds)
        results.append(result)
    return {"cold_request_s": cold, "request_s": statistics.median(warm), "request_runs_s": warm}, results


class _TokenClock:
    """``on_token`` callback recording when each token arrives."""

    def __init__(self) -> None:
        self.start = 0.0
        self.times: list[float] = []
        self.tokens: list[int] = []

    def begin(self) -> None:
        self.start, self.times, self.tokens = time.perf_counter(), [], []

    def __call__(self, token: int) -> None:
        self.times.append(time.perf_counter())
        self.tokens.append(token)


def measure_comprehension(model: SeedX, image: Any, args: argparse.Namespace, bound: float) -> dict[str, Any]:
    """Whole request, time to first token and decode tokens/s (text tokens after the first) of ``comprehend``."""
    crops = preprocess(image, model.config.vision, model.config.anyres.grids)
    options = GenerationOptions(max_new_tokens=args.max_new_tokens, prefix_cache=False)
    clock = _TokenClock()
    block = set(model.ids.image) | {model.ids.eoi}
    samples: list[dict[str, float | int]] = []

    def request() -> Any:
        clock.begin()
        result = model.comprehend(image, QUESTION, options=options, on_token=clock)
        text = [t for t, token in zip(clock.times, clock.tokens) if token not in block]
        sample: dict[str, float | int] = {"ttft_s": clock.times[0] - clock.start, "new_tokens": len(clock.tokens)}
        if len(text) >= 2:  # an image block arrives all at once: its tokens are not decode steps
            sample["decode_tokens_per_s"] = (len(text) - 1) / (text[-1] - text[0])
        samples.append(sample)
        return result

    times, results = cold_and_warm(request, args.runs)
    warm = samples[1:]
    rates = [s["decode_tokens_per_s"] for s in warm if "decode_tokens_per_s" in s]
    rate = statistics.median(rates) if rates else None
    return {
        **times,
        "image_size": list(image.size),
        "grid": f"{crops.grid[0]}x{crops.grid[1]}",
        "crops": crops.num_crops,
        "image_tokens": crops.num_crops * (model.config.lvlm.num_image_tokens + 2),
        "max_new_tokens": args.max_new_tokens,
        "new_tokens": int(warm[-1]["new_tokens"]),
        "image_blocks": sum(1 for t in results[-1].token_ids if t == model.ids.eoi),
        "ttft_s": statistics.median(float(s["ttft_s"]) for s in warm),
        "cold_ttft_s": float(samples[0]["ttft_s"]),
        "decode_tokens_per_s": rate,
        "bound_tokens_per_s": bound,
        "fraction_of_bound": rate / bound if rate is not None else None,
        "answer": results[-1].text[:200],
    }


def measure_grounding(model: SeedX, image: Any, args: argparse.Namespace) -> dict[str, Any]:
    options = GenerationOptions(max_new_tokens=args.max_new_tokens, prefix_cache=False)
    times, results = cold_and_warm(lambda: model.ground(image, PHRASE, options=options), args.runs)
    return {**times, "max_new_tokens": args.max_new_tokens, "boxes": len(results[-1].boxes)}


def image_budget(config: SeedXConfig, args: argparse.Namespace) -> int:
    """Token budget of a t2i / edit answer: ``--image-max-new-tokens``, else the preset's with a checkpoint; with
    random weights the image block plus 4 tokens (``require_image`` opens the image when only the block still
    fits; a random LLM would otherwise write up to the whole budget of noise first, a trained one does not)."""
    if args.image_max_new_tokens:
        return args.image_max_new_tokens
    if args.checkpoint:
        return config.max_new_tokens_image
    return min(config.max_new_tokens_image, config.lvlm.num_image_tokens + 6)


def _image_options(model: SeedX, args: argparse.Namespace) -> GenerationOptions:
    return GenerationOptions(max_new_tokens=image_budget(model.config, args), prefix_cache=False)


def _image_result(times: dict[str, Any], results: list[Any], size: int) -> dict[str, Any]:
    warm = results[1:]
    return {
        **times,
        "llm_s": statistics.median(r.timings["llm_s"] for r in warm),
        "detokenizer_s": statistics.median(r.timings["detokenizer_s"] for r in warm),
        "output_size": list(warm[-1].image.size),
        "requested_size": size,
    }


def measure_t2i(model: SeedX, args: argparse.Namespace, size: int, scheduler: str, steps: int) -> dict[str, Any]:
    options = _image_options(model, args)

    def request() -> Any:
        return model.generate_image(CAPTION, seed=0, steps=steps, scheduler=scheduler, size=size, options=options)

    times, results = cold_and_warm(request, args.runs)
    return {**_image_result(times, results, size), "scheduler": scheduler, "steps": steps}


def measure_edit(model: SeedX, image: Any, args: argparse.Namespace, size: int) -> dict[str, Any]:
    options = _image_options(model, args)

    def request() -> Any:
        return model.edit_image(image, INSTRUCTION, seed=0, steps=args.steps, size=size, options=options)

    times, results = cold_and_warm(request, args.runs)
    return {**_image_result(times, results, size), "scheduler": "euler", "steps": args.steps}


class _OnDevice:
    """An LVLM seen by ``bench_image_tokens``' helpers, which build their id tensors on the CPU: ids move to the
    LVLM's device on the way in; everything else is the LVLM itself (no per-operation hooks, so the timings
    are those of the wrapped model)."""

    class _LLM:
        def __init__(self, llm: torch.nn.Module, device: torch.device) -> None:
            self._llm, self._device = llm, device

        def generate(self, *, input_ids: torch.Tensor, **kwargs: Any) -> Any:
            return self._llm.generate(input_ids=input_ids.to(self._device), **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._llm, name)

    def __init__(self, lvlm: SeedXLVLM) -> None:
        self._lvlm = lvlm
        self.llm = self._LLM(lvlm.llm, lvlm.device)

    def inputs_embeds(self, input_ids: torch.Tensor, *rest: Any) -> torch.Tensor:
        return self._lvlm.inputs_embeds(input_ids.to(self._lvlm.device), *rest)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lvlm, name)


def measure_image_block(model: SeedX, variant: str, runs: int, reduced_precision: bool) -> dict[str, Any]:
    """Official (one step per placeholder, all hidden states kept) vs ours (one forward), same weights."""
    lvlm = _OnDevice(model.parts.lvlms[variant])
    prompt_ids = model.tokenizer.encode(CAPTION + BOI, add_bos=True)
    official = baseline_image_states(lvlm, model.ids, prompt_ids).float()  # type: ignore[arg-type]
    ours = ours_image_states(lvlm, model.ids, prompt_ids).float()  # type: ignore[arg-type]
    max_diff = float((official - ours).abs().max())
    scale = float(official.abs().max())
    tolerance = REDUCED_PRECISION_RTOL * scale if reduced_precision else TOLERANCE
    cosine = float(torch.nn.functional.cosine_similarity(official.flatten(), ours.flatten(), dim=0))

    def synced(func: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            result = func(lvlm, model.ids, prompt_ids)
            sync_all()
            return result

        return call

    times = time_alternating({"baseline": synced(baseline_image_states), "ours": synced(ours_image_states)}, runs)
    official_s, ours_s = statistics.median(times["baseline"]), statistics.median(times["ours"])
    return {
        "num_image_tokens": len(model.ids.image),
        "prompt_tokens": len(prompt_ids),
        "runs": runs,
        "official_s": official_s,
        "ours_s": ours_s,
        "speedup": official_s / ours_s,
        "max_abs_diff": max_diff,
        "max_abs_value": scale,
        "cosine": cosine,
        "tolerance": tolerance,
        "equal": max_diff <= tolerance,
    }


# -- one configuration ----------------------------------------------------------------------------------------
def quant_skip_reason(bits: int | None, device_map: dict[str, str]) -> str | None:
    """Why a quantised configuration cannot run here, or None. An LLM mapped to the CPU is fine when a GPU is
    visible: ``quantize_llm`` moves it there layer by layer (the way to fit a GPU smaller than the bf16 LLM)."""
    if bits is None:
        return None
    if not torch.cuda.is_available():
        return f"{bits}-bit quantisation (bitsandbytes) needs a CUDA GPU; torch sees none"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "bitsandbytes is not installed (pip install 'seedx-agent[quant]')"
    return None


def run_configuration(
    args: argparse.Namespace,
    config: SeedXConfig,
    tokenizer: SeedXTokenizer | None,
    device_map: dict[str, str],
    dtype_name: str,
    bits: int | None,
    bandwidth: dict[str, float],
) -> dict[str, Any]:
    devices = sorted(set(device_map.values()))
    abilities = set(args.abilities)
    size = config.detokenizer.image_size
    image = make_images(1, seed=1)[0].resize(COMPREHENSION_SIZE)
    edit_source = make_images(1, seed=2)[0].resize((config.edit_detokenizer.image_size,) * 2)
    reduced = DTYPES[dtype_name] != torch.float32 or bits is not None
    record: dict[str, Any] = {"stacks": {}}
    stacks = []
    if abilities - {"edit"}:
        stacks.append(MAIN_STACK)
    if "edit" in abilities:
        stacks.append(EDIT_STACK)
    for variant, stage in stacks:
        free_memory()
        reset_peaks(devices)
        model, info = load_stack(args, config, tokenizer, variant, stage, device_map, DTYPES[dtype_name], bits)
        stack: dict[str, Any] = {**info, "load_peak_memory": peak_memory(devices)}
        stack["host_rss_peak_bytes"] = process_peak_rss_bytes()  # since the process started
        lvlm = model.parts.lvlms[variant]
        stack["parameters"] = component_parameters(model)
        stack["llm_weight_bytes"] = llm_weight_bytes(lvlm)
        stack["llm_dtype"] = str(lvlm.dtype).removeprefix("torch.")
        record["stacks"][variant] = stack
        reset_peaks(devices)
        llm_device = canonical_device(str(lvlm.device))  # a quantised LLM moved to the GPU
        if llm_device not in bandwidth:
            bandwidth[llm_device] = measure_device_bandwidth(llm_device, args.bandwidth_mb or 1024, 3)
        stack["llm_device"] = llm_device
        bound = bandwidth[llm_device] * 1e9 / stack["llm_weight_bytes"]
        if variant == MAIN_STACK[0]:
            if "comprehension" in abilities:
                record["comprehension"] = measure_comprehension(model, image, args, bound)
            if "grounding" in abilities:
                record["grounding"] = measure_grounding(model, image, args)
            if "t2i" in abilities or "detokenizer" in abilities:
                record["t2i"] = measure_t2i(model, args, size, "euler", args.steps)
            if "detokenizer" in abilities:
                fast = measure_t2i(model, args, size, args.fast_scheduler, args.fast_steps)
                euler_s, fast_s = record["t2i"]["detokenizer_s"], fast["detokenizer_s"]
                record["detokenizer"] = {
                    "euler": {"steps": args.steps, "seconds": euler_s},
                    args.fast_scheduler: {"steps": args.fast_steps, "seconds": fast_s},
                    "speedup": euler_s / fast_s,
                    "size": size,
                }
            if "image_block" in abilities:
                record["image_block"] = measure_image_block(model, variant, args.block_runs, reduced)
        else:
            record["edit"] = measure_edit(model, edit_source, args, config.edit_detokenizer.image_size)
        stack["run_peak_memory"] = peak_memory(devices)
        del model, lvlm
        free_memory()
    return record


# -- report -------------------------------------------------------------------------------------------------
def _fmt(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value * scale:.{digits}f}"


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f}"


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    gpus = ", ".join(f"{g['name']} ({_gib(g['memory_bytes'])} GiB)" for g in env["gpus"]) or "none"
    bandwidth = ", ".join(f"{d} {bw:.1f} GB/s" for d, bw in report["bandwidth_gbps"].items())
    lines = [
        f"## GPU check: preset {report['preset']}, {report['weights']}",
        "",
        f"torch {env['torch']} (CUDA {env['cuda']}), bitsandbytes {env['bitsandbytes']}, GPUs: {gpus}; "
        f"{env['cpu_count']} CPUs. Device map {report['device_map']}. Copy bandwidth: {bandwidth}. "
        f"Requests: median of {report['runs']} after a cold call; de-tokenizer at {report['image_size']} px.",
        "",
        "| config | load s (I / Edit) | peak GiB per device, run (I / Edit) | TTFT ms | decode tok/s (bound, fraction) "
        "| grounding s | t2i s (LLM / de-tok) | edit s | image block official / ours ms (x, max diff, equal) "
        f"| de-tok euler-{report['steps']} / {report['fast_scheduler']}-{report['fast_steps']} s (x) |",
        "|---|---|---|---:|---|---:|---|---:|---|---|",
    ]
    for row in report["configurations"]:
        if row["status"] != "ok":
            lines.append(f"| {row['name']} | {row['status']}: {row.get('reason') or row.get('error')} |" + " |" * 8)
            continue
        stacks = row["stacks"]
        load = " / ".join(_fmt(s["load_s"]) for s in stacks.values())
        peaks = " / ".join(
            ", ".join(f"{d} {_gib(p['peak_bytes'])}" for d, p in s["run_peak_memory"].items()) for s in stacks.values()
        )
        comp, ground, t2i = row.get("comprehension"), row.get("grounding"), row.get("t2i")
        edit, block, detok = row.get("edit"), row.get("image_block"), row.get("detokenizer")
        cells = [
            row["name"],
            load,
            peaks,
            _fmt(comp and comp["ttft_s"], 1e3, 1),
            (
                f"{_fmt(comp['decode_tokens_per_s'], 1, 1)} ({_fmt(comp['bound_tokens_per_s'], 1, 1)}, "
                f"{_fmt(comp['fraction_of_bound'])})"
                if comp
                else "-"
            ),
            _fmt(ground and ground["request_s"]),
            f"{_fmt(t2i['request_s'])} ({_fmt(t2i['llm_s'])} / {_fmt(t2i['detokenizer_s'])})" if t2i else "-",
            _fmt(edit and edit["request_s"]),
            (
                f"{_fmt(block['official_s'], 1e3, 1)} / {_fmt(block['ours_s'], 1e3, 1)} ({block['speedup']:.2f}x, "
                f"{block['max_abs_diff']:.2e}, {'yes' if block['equal'] else 'NO'})"
                if block
                else "-"
            ),
            (
                f"{_fmt(detok['euler']['seconds'])} / {_fmt(detok[report['fast_scheduler']]['seconds'])} "
                f"({detok['speedup']:.2f}x)"
                if detok
                else "-"
            ),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- command line -------------------------------------------------------------------------------------------
def _comma_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        bad = [item for item in items if item not in allowed]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"choose from {list(allowed)} (comma separated), got {text!r}")
        return items

    return parse


def _device_map_arg(text: str) -> dict[str, str]:
    result = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in ("vision", "llm", "detokenizer") or not value.strip():
            raise argparse.ArgumentTypeError(
                f"expected e.g. 'vision=cuda:0,llm=cuda:1,detokenizer=cuda:0', got {text!r}"
            )
        result[key.strip()] = value.strip()
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="geometry (default seed-x-i; with --checkpoint: the checkpoint's)"
    )
    parser.add_argument("--checkpoint", help="converted (manifest.json) or official folder; random weights if unset")
    parser.add_argument("--allow-pickle", action="store_true", help="needed for the official .bin/.pt files")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--device-map", type=_device_map_arg, help="per component, e.g. vision=cpu,llm=cuda:0")
    parser.add_argument("--dtype", type=_comma_list(tuple(DTYPES)), help="bf16, fp16, fp32 (comma list)")
    parser.add_argument("--quant", type=_comma_list(tuple(QUANTS)), default=["none"], help="LLM: none,8,4")
    parser.add_argument("--abilities", type=_comma_list(ABILITIES), default=list(ABILITIES))
    parser.add_argument("--steps", type=int, default=50, help="Euler steps (t2i, edit, de-tokenizer comparison)")
    parser.add_argument("--fast-steps", type=int, default=12, help="steps of the fewer-step sampler")
    parser.add_argument("--fast-scheduler", default="dpm", help="the fewer-step sampler (make_scheduler name)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="comprehension / grounding budget")
    parser.add_argument("--image-max-new-tokens", type=int, help="t2i / edit budget (default: the preset's)")
    parser.add_argument("--runs", type=int, default=1, help="timed requests per ability after the cold one")
    parser.add_argument("--block-runs", type=int, default=3, help="alternating runs of the image-block comparison")
    parser.add_argument("--bandwidth-mb", type=int, help="bandwidth test tensor (default 1024 CUDA, 512 CPU)")
    parser.add_argument("--build-device", default="auto", help="where random weights are initialised: auto|cpu|cuda:N")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    args = parser.parse_args(argv)
    for name in ("steps", "fast_steps", "max_new_tokens", "runs", "block_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device (is this a CPU-only torch build?)")
    if args.dtype is None:
        args.dtype = ["bf16"] if torch.device(args.device).type == "cuda" else ["fp32"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every configuration, write ``gpu_check.json`` and ``gpu_check.md`` under ``--out``; exit status 0 when
    every configuration ran or was skipped for a recorded reason, 1 when one failed or its outputs differed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = run_config(args)
    tokenizer = None if args.checkpoint else stand_in_tokenizer(config.llm.vocab_size)
    device_map = {
        k: canonical_device(v)
        for k, v in {**dict.fromkeys(("vision", "llm", "detokenizer"), args.device), **(args.device_map or {})}.items()
    }
    devices = sorted(set(device_map.values()))
    report: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "command": "python -m benchmarks.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": environment(),
        "preset": config.name,
        "weights": f"checkpoint {args.checkpoint}" if args.checkpoint else "random weights (seed 0)",
        "device_map": device_map,
        "steps": args.steps,
        "fast_steps": args.fast_steps,
        "fast_scheduler": args.fast_scheduler,
        "runs": args.runs,
        "image_size": config.detokenizer.image_size,
        "image_max_new_tokens": image_budget(config, args),
        "max_new_tokens": args.max_new_tokens,
        "abilities": args.abilities,
    }
    with torch.no_grad():
        report["bandwidth_gbps"] = {
            d: measure_device_bandwidth(d, args.bandwidth_mb or (1024 if d.startswith("cuda") else 512), 3)
            for d in devices
        }
        free_memory()  # the bandwidth tensors
        report["configurations"] = []
        for dtype_name in args.dtype:
            for quant in args.quant:
                bits = QUANTS[quant]
                row: dict[str, Any] = {"name": f"{dtype_name}/{'no quant' if bits is None else f'{bits}-bit LLM'}"}
                row.update(dtype=dtype_name, quant=quant)
                reason = quant_skip_reason(bits, device_map)
                if reason:
                    row.update(status="skipped", reason=reason)
                else:
                    start = time.perf_counter()
                    try:
                        row.update(
                            run_configuration(
                                args, config, tokenizer, device_map, dtype_name, bits, report["bandwidth_gbps"]
                            )
                        )
                        row["status"] = "ok"
                    except Exception as exc:  # recorded; the next configuration still runs
                        row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500])
                        row["traceback"] = traceback.format_exc()[-3000:]
                        logger.error("configuration %s failed: %s", row["name"], row["error"])
                    row["total_s"] = time.perf_counter() - start
                    free_memory()
                report["configurations"].append(row)
                print(f"{row['name']}: {row['status']} {row.get('reason') or row.get('error') or ''}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "gpu_check.md").write_text(table)
    print(table)
    failed = [r for r in report["configurations"] if r["status"] == "error"]
    unequal = [r for r in report["configurations"] if r.get("image_block") and not r["image_block"]["equal"]]
    return 1 if failed or unequal else 0


if __name__ == "__main__":
    sys.exit(main())

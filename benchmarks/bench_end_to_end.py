"""Benchmark: whole ``generate_image`` / ``edit_image`` requests, the official algorithm against ours (issue 23).

Sections (``--sections``, any of ``e2e,memory,score,followup``; all by default):

- ``e2e``: one whole text-to-image and one whole edit on the same weights, medians of alternating runs after one
  untimed warm-up each. *official*: the official decoding (``ComparisonSwitches.official()``: placeholder logits
  0.0, one forward per placeholder, transformers' ``LlamaModel.forward`` for one-token steps; no prefix cache),
  torch's ``F.linear``, Euler with ``--steps`` (50, the official de-tokenizer default). *ours*: our fast paths
  (one-forward image block, lean one-token steps, prefix KV cache cleared before every call so each request is
  cold, ``linear_kernel="auto"``) with the official placeholder mask, so both paths decode the same tokens; same
  sampler and steps. *ours-fast*: ours with DPM-Solver++ (``make_scheduler("dpm")``) and ``--fast-steps``. Same
  seed for all. Reported: the official and our pixels compared (max abs difference, uint8), also for ours with
  the library's default options (placeholder logits -inf), and the LLM / de-tokenizer split of each request.
- ``memory``: peak resident set of each path, each in a fresh subprocess (one model load, then one t2i and one
  edit). The peak is reset after the load (``/proc/self/clear_refs``), so ``run_peak`` is the request's own peak.
- ``score``: text-to-image on ``--n`` held-out prompts of the miniature world, scored as ``seedx-agent eval``
  scores ``text_to_image`` (``score_generation``, seed = sample index), the official path with Euler-``--steps``
  against ours-fast; the arms alternate per prompt. ``all_ok`` with a 95 % Wilson interval per arm, the paired
  difference with a 95 % interval, and seconds per image. Resumable: rows are written to ``--out`` as they
  finish, and a rerun with the same ``--out`` and settings skips the prompts already scored.
- ``followup``: time to the first token of a second question about the same image, re-encoding it (ViT + full
  prefill, ``prefix_cache=False``) against the prefix KV cache; first tokens must be equal. On the loaded model
  (``--followup-configs model``) and/or the random-weight 8 x 1024 ``mid`` config of ``bench_image_tokens``.

Every result carries the CPU (model name, AVX2 / AVX-512 / AMX flags), torch version, thread count and load.

Run from the repository root::

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.bench_end_to_end --model mini --sections memory,e2e,followup \\
        --followup-configs model,mid --runs 5 --threads 1 --out e2e.json
    HF_HUB_OFFLINE=1 nohup nice -n 19 .venv/bin/python -m benchmarks.bench_end_to_end --sections score \\
        --n 200 --threads 1 --out score.json &
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seedx_agent import GenerationOptions, SeedX
from seedx_agent.miniature import world
from seedx_agent.miniature.evaluate import score_generation

logger = logging.getLogger("benchmarks.bench_end_to_end")

REPO_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("e2e", "memory", "score", "followup")
PATHS = ("official", "ours", "ours_fast")
INPUT_SIZE = 64  # world renders given to the model, as seedx_agent.miniature.eval_model
MEMORY_MARK = "MEMORY_JSON "


# -- machine ----------------------------------------------------------------------------------------------------
def cpu_info() -> dict[str, Any]:
    """CPU model, vector/matrix flags, torch build and threads, load: printed and stored with every result."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("unknown", "x86_64", ""):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    wanted = sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx")))
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        capability = None
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpu_flags": wanted,
        "avx2": "avx2" in flags,
        "avx512": any(f.startswith("avx512") for f in flags),
        "amx": any(f.startswith("amx") for f in flags),
        "torch": torch.__version__,
        "torch_cpu_capability": capability,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(info: dict[str, Any]) -> str:
    flags = " ".join(info["cpu_flags"]) or "no AVX2/AVX-512/AMX"
    load = ", ".join(f"{x:.2f}" for x in info["load_average"])
    return (
        f"CPU: {info['cpu_model']}, {info['cpu_count']} CPUs, flags: {flags}; torch {info['torch']} "
        f"(capability {info['torch_cpu_capability']}), {info['torch_threads']} threads; load average {load}"
    )


# -- results file -----------------------------------------------------------------------------------------------
class Results:
    """The JSON results, rewritten atomically after every update (so a killed run keeps what it measured)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        if path is not None and path.is_file():
            self.data = json.loads(path.read_text())

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


# -- the paths ---------------------------------------------------------------------------------------------------
def load_model(spec: str, linear_kernel: str) -> SeedX:
    """``spec`` with both LLMs (t2i and edit) and both de-tokenizer stages, across the loader's API versions."""
    loader = getattr(SeedX, "load", None)
    if loader is not None:
        return loader(spec, linear_kernel=linear_kernel)
    variants = None if spec == "mini" or Path(spec).exists() else ("seed-x-i", "seed-x-edit")  # random presets
    return SeedX.from_pretrained(spec, variants=variants, linear_kernel=linear_kernel)


def _options(max_new_tokens: int, official: bool) -> GenerationOptions:
    """Official: every comparison switch on the official code's behaviour, no prefix cache. Ours: the official
    placeholder mask (so both decode the same tokens) with our fast paths (one-forward image block, lean
    one-token steps, prefix KV cache)."""
    fields = GenerationOptions.model_fields
    if "compare" in fields:  # the switches grouped in ComparisonSwitches (current API)
        switches_type: Any = fields["compare"].annotation
        switches = switches_type.official() if official else switches_type(placeholder_mask="official_zero")
        return GenerationOptions(max_new_tokens=max_new_tokens, prefix_cache=not official, compare=switches)
    flat: dict[str, Any] = {"placeholder_mask": "official_zero"}  # the earlier flat spelling
    if official:
        flat.update(image_block_mode="per_token", decode_step="transformers", prefix_cache=False)
    return GenerationOptions(max_new_tokens=max_new_tokens, **flat)


class Paths:
    """The models and request functions of the three paths (official, ours, ours_fast)."""

    def __init__(self, spec: str, steps: int, fast_steps: int, paths: Sequence[str] = PATHS) -> None:
        self.steps, self.fast_steps = steps, fast_steps
        self.models: dict[str, SeedX] = {}
        self.switched: dict[str, int] = {}
        if "official" in paths:
            self.models["official"] = load_model(spec, "torch")
            self.switched["official"] = 0
        if any(p in paths for p in ("ours", "ours_fast")):
            ours = load_model(spec, "torch")
            self.switched["ours"] = ours.set_linear_kernel("auto")  # the default of SeedX.from_pretrained
            self.models["ours"] = self.models["ours_fast"] = ours
        any_model = next(iter(self.models.values()))
        self.config = any_model.config
        self.t2i_sample = world.make_dataset("heldout", 1, "text_to_image", 0, image_size=INPUT_SIZE)[0]
        edit = world.make_dataset("heldout", 1, "edit", 0, image_size=INPUT_SIZE)[0]
        self.edit_source = world.render(edit.source, INPUT_SIZE)
        self.edit_instruction = edit.instruction

    def sampler(self, path: str) -> dict[str, Any]:
        if path == "ours_fast":
            return {"scheduler": "dpm", "num_inference_steps": self.fast_steps}
        return {"scheduler": "euler", "num_inference_steps": self.steps}

    def _request_options(self, path: str, max_new_tokens: int, default_options: bool) -> GenerationOptions | None:
        if path == "official":
            return _options(max_new_tokens, official=True)
        self.models[path].prefix_cache.clear()  # a cold request: no KV of this image from an earlier run
        return None if default_options else _options(max_new_tokens, official=False)

    def t2i(self, path: str, prompt: str | None = None, seed: int = 0, *, default_options: bool = False) -> Any:
        """One whole text-to-image request. ``default_options``: ours with the library's default options
        (placeholder mask -inf instead of the official 0.0), for the pixel comparison only."""
        options = self._request_options(path, self.config.max_new_tokens_image, default_options)
        return self.models[path].generate_image(
            prompt or self.t2i_sample.prompt, seed=seed, options=options, **self.sampler(path)
        )

    def edit(self, path: str, seed: int = 0, *, default_options: bool = False) -> Any:
        """One whole edit request (``default_options`` as in ``t2i``)."""
        options = self._request_options(path, self.config.max_new_tokens, default_options)
        return self.models[path].edit_image(
            self.edit_source, self.edit_instruction, seed=seed, options=options, **self.sampler(path)
        )


def pixel_diff(a: Any, b: Any) -> int:
    """Max abs difference of two PIL images in uint8 levels (-1 when their sizes differ)."""
    x, y = np.asarray(a.convert("RGB"), dtype=np.int16), np.asarray(b.convert("RGB"), dtype=np.int16)
    return -1 if x.shape != y.shape else int(np.abs(x - y).max())


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median_s": statistics.median(values), "min_s": min(values), "runs": len(values)}


# -- section e2e ------------------------------------------------------------------------------------------------
def bench_e2e(paths: Paths, runs: int) -> dict[str, Any]:
    """Whole t2i and edit requests, the three paths alternating; pixels of official vs ours compared."""
    result: dict[str, Any] = {"steps": paths.steps, "fast_steps": paths.fast_steps, "runs": runs}
    result["linear_layers_switched_to_onednn"] = paths.switched.get("ours", 0)
    for ability in ("t2i", "edit"):
        call: Callable[[str], Any] = paths.t2i if ability == "t2i" else paths.edit
        outs = {path: call(path) for path in PATHS}  # warm-up, untimed; also the compared outputs
        row: dict[str, Any] = {
            "max_abs_pixel_diff_official_vs_ours": pixel_diff(outs["official"].image, outs["ours"].image),
            "max_abs_feature_diff_official_vs_ours": float(
                (outs["official"].features - outs["ours"].features).abs().max()
            ),
            "same_text_official_vs_ours": outs["official"].raw_text == outs["ours"].raw_text,
            "max_abs_pixel_diff_official_vs_ours_default_mask": pixel_diff(
                outs["official"].image, call("ours", default_options=True).image
            ),
            "image_size": list(outs["ours"].image.size),
        }
        times: dict[str, list[float]] = {p: [] for p in PATHS}
        parts: dict[str, dict[str, list[float]]] = {p: {"llm_s": [], "detokenizer_s": []} for p in PATHS}
        for run in range(runs):
            order = PATHS if run % 2 == 0 else PATHS[::-1]
            for path in order:
                start = time.perf_counter()
                out = call(path)
                times[path].append(time.perf_counter() - start)
                for key in parts[path]:
                    parts[path][key].append(out.timings.get(key, float("nan")))
        for path in PATHS:
            row[path] = {
                **summary(times[path]),
                "llm_median_s": statistics.median(parts[path]["llm_s"]),
                "detokenizer_median_s": statistics.median(parts[path]["detokenizer_s"]),
                "times_s": times[path],
            }
        row["ratio_official_over_ours"] = row["official"]["median_s"] / row["ours"]["median_s"]
        row["ratio_official_over_ours_fast"] = row["official"]["median_s"] / row["ours_fast"]["median_s"]
        row["llm_ratio_official_over_ours"] = row["official"]["llm_median_s"] / row["ours"]["llm_median_s"]
        result[ability] = row
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def print_e2e(result: dict[str, Any]) -> None:
    steps, fast = result["steps"], result["fast_steps"]
    print(f"\n## whole requests, official (Euler-{steps}) vs ours (Euler-{steps}) vs ours-fast (DPM-{fast})")
    print(
        f"(median of {result['runs']} alternating runs; "
        f"oneDNN layers in ours: {result['linear_layers_switched_to_onednn']})"
    )
    print(
        "| request | official s | ours s | ours-fast s | official/ours | official/ours-fast | LLM official/ours "
        "| max abs pixel diff official vs ours |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for ability in ("t2i", "edit"):
        row = result[ability]
        print(
            f"| {ability} | {row['official']['median_s']:.3f} | {row['ours']['median_s']:.3f} "
            f"| {row['ours_fast']['median_s']:.3f} | {row['ratio_official_over_ours']:.2f}x "
            f"| {row['ratio_official_over_ours_fast']:.2f}x | {row['llm_ratio_official_over_ours']:.2f}x "
            f"| {row['max_abs_pixel_diff_official_vs_ours']} |"
        )
        print(f"ratio official/ours ({ability}): {row['ratio_official_over_ours']:.2f}x")


# -- section memory ---------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets the peak RSS (VmHWM, and ru_maxrss with it) to the current RSS
        return True
    except OSError:
        return False


def memory_child(args: argparse.Namespace) -> int:
    """In a fresh process: load the path's model, then one t2i and one edit; print the RSS figures as JSON."""
    import resource

    path = args.memory_child
    torch.set_grad_enabled(False)
    paths = Paths(args.model, args.steps, args.fast_steps, paths=(path,))
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    after_load = _status_kib("VmRSS") * 1024
    reset = _reset_peak()
    paths.t2i(path)
    paths.edit(path)
    run_peak = _status_kib("VmHWM") * 1024 if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record = {
        "path": path,
        "load_peak_bytes": load_peak,
        "after_load_bytes": after_load,
        "run_peak_bytes": run_peak,
        "run_increment_bytes": run_peak - after_load,
        "peak_reset_after_load": reset,
        "threads": torch.get_num_threads(),
    }
    print(MEMORY_MARK + json.dumps(record))
    return 0


def start_memory_children(args: argparse.Namespace) -> dict[str, subprocess.Popen[str]]:
    """One fresh subprocess per path, started together (peaks are per process, so overlap does not mix them)."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    children = {}
    for path in PATHS:
        command = [
            *(sys.executable, "-m", "benchmarks.bench_end_to_end", "--memory-child", path, "--model", args.model),
            *("--steps", str(args.steps), "--fast-steps", str(args.fast_steps)),
            *("--threads", str(torch.get_num_threads())),
        ]
        children[path] = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return children


def collect_memory_children(children: dict[str, subprocess.Popen[str]]) -> dict[str, Any]:
    """Wait for ``start_memory_children``'s processes and read their JSON lines."""
    result: dict[str, Any] = {"method": "peak RSS of a fresh process per path (VmHWM reset after the load)"}
    for path, child in children.items():
        stdout, stderr = child.communicate(timeout=3600)
        if child.returncode != 0:
            raise RuntimeError(f"memory child {path} failed: {stderr[-2000:]}")
        line = next(x for x in stdout.splitlines() if x.startswith(MEMORY_MARK))
        result[path] = json.loads(line[len(MEMORY_MARK) :])
    return result


def print_memory(result: dict[str, Any]) -> None:
    mib = 2**20
    print("\n## peak resident memory, one fresh process per path (MiB)")
    print("| path | load peak | after load | request peak (t2i + edit) | request increment |")
    print("|---|---:|---:|---:|---:|")
    for path in PATHS:
        row = result[path]
        print(
            f"| {path} | {row['load_peak_bytes'] / mib:.1f} | {row['after_load_bytes'] / mib:.1f} "
            f"| {row['run_peak_bytes'] / mib:.1f} | {row['run_increment_bytes'] / mib:.1f} |"
        )


# -- section score ----------------------------------------------------------------------------------------------
def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_difference(a: Sequence[float], b: Sequence[float], z: float = 1.96) -> dict[str, float]:
    """Mean of b - a over paired samples with a normal 95 % interval."""
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = statistics.fmean(diffs) if n else 0.0
    sd = statistics.stdev(diffs) if n > 1 else 0.0
    half = z * sd / math.sqrt(n) if n else 0.0
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def bench_score(paths: Paths, results: Results, n: int, seed: int) -> dict[str, Any]:
    """Score t2i on ``n`` held-out prompts, the official path (Euler) vs ours-fast (DPM); resumable."""
    arms = {"official": f"euler-{paths.steps}", "ours_fast": f"dpm-{paths.fast_steps}"}
    config = {"model": paths.config.name, "seed": seed, "arms": arms, "scorer": "score_generation all_ok"}
    section = results.data.get("score")
    if not section or section.get("config") != config:
        section = {"config": config, "rows": {arm: {} for arm in arms}}
    results.data["score"] = section
    samples = world.make_dataset("heldout", n, "text_to_image", seed, image_size=INPUT_SIZE)
    for index, sample in enumerate(samples):
        order = list(arms) if index % 2 == 0 else list(arms)[::-1]
        for arm in order:
            if str(index) in section["rows"][arm]:
                continue
            start = time.perf_counter()
            out = paths.t2i(arm, sample.prompt, seed=index)
            seconds = time.perf_counter() - start
            scores = score_generation(out.image, sample.scene, check_size=sample.mentions_size)
            section["rows"][arm][str(index)] = {**{k: bool(v) for k, v in scores.items()}, "seconds": seconds}
        section["summary"] = score_summary(section, n)
        results.save()
        if (index + 1) % 10 == 0:
            logger.warning("score: %d / %d prompts done", index + 1, n)
    section["summary"] = score_summary(section, n)
    results.save()
    return section


def score_summary(section: dict[str, Any], n: int) -> dict[str, Any]:
    rows = section["rows"]
    done = sorted(set.intersection(*(set(r) for r in rows.values())), key=int)
    done = [i for i in done if int(i) < n]
    out: dict[str, Any] = {"n": len(done)}
    for arm, label in section["config"]["arms"].items():
        ok = [float(rows[arm][i]["all_ok"]) for i in done]
        seconds = [rows[arm][i]["seconds"] for i in done]
        low, high = wilson(int(sum(ok)), len(ok))
        out[arm] = {
            "setting": label,
            "all_ok": statistics.fmean(ok) if ok else float("nan"),
            "ci95": [low, high],
            "median_s_per_image": statistics.median(seconds) if seconds else float("nan"),
            "mean_s_per_image": statistics.fmean(seconds) if seconds else float("nan"),
        }
    if done:
        out["difference_ours_fast_minus_official"] = paired_difference(
            [float(rows["official"][i]["all_ok"]) for i in done], [float(rows["ours_fast"][i]["all_ok"]) for i in done]
        )
        out["time_ratio_official_over_ours_fast"] = (
            out["official"]["median_s_per_image"] / out["ours_fast"]["median_s_per_image"]
        )
    return out


def print_score(section: dict[str, Any]) -> None:
    s = section["summary"]
    print(f"\n## text-to-image score (all_ok, score_generation) on {s['n']} held-out prompts")
    print("| arm | setting | all_ok | 95 % interval | median s / image |")
    print("|---|---|---:|---|---:|")
    for arm in section["config"]["arms"]:
        row = s[arm]
        print(
            f"| {arm} | {row['setting']} | {row['all_ok']:.3f} | [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] "
            f"| {row['median_s_per_image']:.3f} |"
        )
    if s["n"]:
        d = s["difference_ours_fast_minus_official"]
        print(
            f"paired difference ours-fast - official: {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]; "
            f"time ratio official/ours-fast: {s['time_ratio_official_over_ours_fast']:.2f}x"
        )


# -- section followup -------------------------------------------------------------------------------------------
def time_to_first_token(model: SeedX, image: Any, question: str, *, cached: bool) -> tuple[float, int]:
    """Seconds from the call to the first generated token, and that token (greedy)."""
    first: list[float] = []
    options = GenerationOptions(max_new_tokens=1, prefix_cache=cached)
    start = time.perf_counter()
    result = model.comprehend(image, question, options=options, on_token=lambda _: first.append(time.perf_counter()))
    return first[0] - start, result.token_ids[0]


def bench_followup(model: SeedX, name: str, runs: int, image: Any) -> dict[str, Any]:
    """Second question's TTFT, re-encoding (baseline) vs prefix-cached (ours), alternating, a new question a run."""
    questions = [f"Question {i}: what is in the picture?" for i in range(runs + 2)]
    model.prefix_cache.clear()
    time_to_first_token(model, image, "First question about it.", cached=True)  # fills the cache
    equal = all(
        time_to_first_token(model, image, q, cached=True)[1] == time_to_first_token(model, image, q, cached=False)[1]
        for q in questions[-2:]
    )
    ttft: dict[str, list[float]] = {"reencode": [], "cached": []}
    for index in range(runs):
        for key, cached in (("reencode", False), ("cached", True)):
            ttft[key].append(time_to_first_token(model, image, questions[index], cached=cached)[0])
    return {
        "config": name,
        "image_size": list(image.size),
        "num_image_tokens": model.config.lvlm.num_image_tokens,
        "first_tokens_equal": equal,
        "reencode": summary(ttft["reencode"]),
        "cached": summary(ttft["cached"]),
        "ratio": statistics.median(ttft["reencode"]) / statistics.median(ttft["cached"]),
        "ratio_minimums": min(ttft["reencode"]) / min(ttft["cached"]),
    }


def followup_model(name: str, loaded: SeedX) -> tuple[SeedX, Any]:
    """The model and image for a follow-up config: ``model`` (the loaded one) or ``mid`` (bench_image_tokens)."""
    if name == "model":
        model = loaded
        scene = world.make_dataset("heldout", 1, "caption", 0, image_size=INPUT_SIZE)[0].scene
        side = model.config.vision.image_size
        image = world.render(scene, side).resize((2 * side, side))  # a 2x1 grid: 3 crops
        return model, image
    from benchmarks.bench_image_tokens import build_model, make_images  # internal imports; mid only

    model = build_model(name)
    model.set_linear_kernel("auto")
    side = model.config.vision.image_size
    return model, make_images(1, seed=1)[0].resize((2 * side, side))


def print_followup(rows: dict[str, Any]) -> None:
    print("\n## second question, time to first token: re-encoding vs prefix cache (medians of alternating runs)")
    print("| config | image | re-encode ms | cached ms | ratio (medians) | ratio (minimums) | first tokens equal |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['image_size'][0]}x{row['image_size'][1]} | {row['reencode']['median_s'] * 1e3:.2f} "
            f"| {row['cached']['median_s'] * 1e3:.2f} | {row['ratio']:.2f}x | {row['ratio_minimums']:.2f}x "
            f"| {row['first_tokens_equal']} |"
        )


# -- main -------------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini", help="'mini', a preset such as 'tiny-random', or a folder")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--runs", type=int, default=5, help="timed alternating runs per path (e2e, followup)")
    parser.add_argument("--steps", type=int, default=50, help="Euler steps of the official sampler and of ours")
    parser.add_argument("--fast-steps", type=int, default=12, help="DPM-Solver++ steps of ours-fast")
    parser.add_argument("--n", type=int, default=200, help="held-out prompts per arm (score)")
    parser.add_argument("--seed", type=int, default=0, help="held-out sample set (score)")
    parser.add_argument("--followup-configs", default="model", help="comma list of 'model' (the loaded one), 'mid'")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results, written as they come; resumable")
    parser.add_argument("--smoke", action="store_true", help="tiny-random, 1 run, 2/1 steps, n=2, 1 thread (CI)")
    parser.add_argument("--memory-child", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.runs, args.steps, args.fast_steps, args.n = "tiny-random", 1, 2, 1, 2
        args.threads = args.threads or 1
    for flag in ("runs", "steps", "fast_steps", "n"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections, print their tables and write ``--out``; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.memory_child:
        return memory_child(args)
    results = Results(args.out)
    info = cpu_info()
    print(machine_line(info) + f"; model {args.model}")
    results.data["machine"] = info
    results.data["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results.save()
    children = None
    if "memory" in args.sections:
        # Measured first, while nothing else of ours runs; in smoke runs alongside the rest (they only need RSS).
        before = cpu_info()
        children = start_memory_children(args)
        if not args.smoke:
            results.data["memory"] = {**collect_memory_children(children), "machine": before}
            results.save()
            print_memory(results.data["memory"])
    paths = Paths(args.model, args.steps, args.fast_steps) if set(args.sections) - {"memory"} else None
    if "e2e" in args.sections:
        before = cpu_info()  # bench_e2e records the load average after it
        results.data["e2e"] = {**bench_e2e(paths, args.runs), "machine": before}
        results.save()
        print_e2e(results.data["e2e"])
    if "score" in args.sections:
        before = cpu_info()
        section = bench_score(paths, results, args.n, args.seed)
        section["machine"] = {**before, "load_average_after": cpu_info()["load_average"]}
        results.save()
        print_score(section)
    if "followup" in args.sections:
        rows = results.data.setdefault("followup", {})
        for name in [c for c in args.followup_configs.split(",") if c]:
            model, image = followup_model(name, paths.models["ours"])
            label = args.model if name == "model" else name
            before = cpu_info()
            rows[label] = {**bench_followup(model, label, args.runs, image), "machine": before}
            results.save()
        print_followup(rows)
    if children is not None and args.smoke:
        results.data["memory"] = {**collect_memory_children(children), "machine": cpu_info()}
        results.save()
        print_memory(results.data["memory"])
    print("\n" + machine_line(cpu_info()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

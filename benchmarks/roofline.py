"""Roofline: this machine's memory bandwidth and fp32 GEMM throughput, and how close LLM decoding gets.

Measures (best of ``--runs``): bandwidth of a large tensor copy (read + write bytes) and sum (read
bytes); fp32 GEMM GFLOP/s with MKL and with oneDNN. Then, for a mid-size LLaMA (random weights, fp32),
decode tokens/s against the bandwidth bound (every non-embedding weight byte read once per token):
transformers' decoding (``DynamicCache`` + ``forward``) and ours (in-place KV cache and lean one-token
step, ``seedx_agent.speed.growing_kv`` and ``seedx_agent.speed.lean_step``, as ``decoding.decode`` runs), with torch's
``F.linear`` (MKL) and with oneDNN linears (``seedx_agent.speed.cpu_linear``); and prefill FLOP/s against the
GEMM peak (the faster kernel; 2 x non-embedding params FLOPs per token, attention ignored).

Run from the repository root: ``python -m benchmarks.roofline --layers 8 --hidden 1024``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def best_seconds(func: Callable[[], object], runs: int) -> float:
    """Fastest of ``runs`` calls after one warm-up."""
    func()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidth(megabytes: int, runs: int) -> dict[str, float]:
    """GB/s of ``dst.copy_(src)`` (2 x bytes moved) and ``src.sum()`` (1 x bytes)."""
    numel = megabytes * 2**20 // 4
    src, dst = torch.rand(numel), torch.empty(numel)
    nbytes = numel * 4
    copy_s = best_seconds(lambda: dst.copy_(src), runs)
    sum_s = best_seconds(lambda: src.sum(), runs)
    return {"copy": 2 * nbytes / copy_s / 1e9, "sum": nbytes / sum_s / 1e9}


def measure_gemm(size: int, runs: int) -> dict[str, float]:
    """GFLOP/s of an fp32 (size x size) @ (size x size) matmul with torch's BLAS and with oneDNN."""
    from seedx_agent.speed.cpu_linear import onednn_linear_available

    a, b = torch.rand(size, size), torch.rand(size, size)
    result = {"torch": 2 * size**3 / best_seconds(lambda: a @ b, runs) / 1e9}
    if onednn_linear_available():
        weight = b.t().contiguous()  # linear computes a @ weight.T == a @ b
        linear = torch.ops.mkldnn._linear_pointwise
        result["onednn"] = 2 * size**3 / best_seconds(lambda: linear(a, weight, None, "none", [], ""), runs) / 1e9
    return result


@torch.no_grad()
def measure_llm(
    layers: int, hidden: int, prompt: int, steps: int, runs: int, vocab: int = 32000
) -> dict[str, Any]:
    """Decode tokens/s and prefill GFLOP/s of a random fp32 LLaMA (LLaMA-2 vocab and MLP ratio), per setup:
    transformers' decoding (concatenating ``DynamicCache``, ``forward`` per token) or ours (in-place
    ``new_kv_cache`` and ``decode_step.LeanStep``, as ``decoding.decode`` runs), with torch's or oneDNN's
    linears. Setups alternate within each run so they see the same machine state."""
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from seedx_agent.speed.cpu_linear import onednn_linear_available, use_linear_kernel
    from seedx_agent.speed.growing_kv import new_kv_cache
    from seedx_agent.speed.lean_step import LeanStep, fuse_qkv

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3 / 64 + 1) * 64,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=prompt + steps + 8,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    weights = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    ids = torch.randint(0, config.vocab_size, (1, prompt))
    caches = {"DynamicCache": lambda: DynamicCache(config=config), "in-place KV": lambda: new_kv_cache(config)}
    kernels = ("torch", "onednn") if onednn_linear_available() else ("torch",)
    # (label, cache, one-token step, linear kernel); the first is transformers' default decoding.
    setups = [("DynamicCache + forward", "DynamicCache", "forward", "torch")]
    setups += [(f"ours (in-place KV + lean step), {k} linear", "in-place KV", "lean", k) for k in kernels]
    if "onednn" in kernels:
        setups.insert(1, ("DynamicCache + forward, onednn linear", "DynamicCache", "forward", "onednn"))

    def prefill(cache_name: str = "DynamicCache") -> object:
        cache = caches[cache_name]()
        model(input_ids=ids, cache=cache, use_cache=True)
        return cache

    def decode_seconds(cache_name: str, step: str) -> float:
        """Per-token seconds of ``steps`` greedy steps after an (untimed) prefill into a fresh cache."""
        cache, token = prefill(cache_name), ids[:, -1:]
        start = time.perf_counter()
        stepper = LeanStep(model.model) if step == "lean" else None  # built per reply, as decode() does
        for _ in range(steps):
            if stepper is not None:
                hidden = stepper(model.model.embed_tokens(token), cache)
                token = model.lm_head(hidden).argmax(-1)
            else:
                token = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        return (time.perf_counter() - start) / steps

    if "onednn" in kernels:
        fuse_qkv(model.model)  # views into one buffer per layer: F.linear reads the same weights as before
    prefill_s = {}
    for kernel in kernels:
        use_linear_kernel(model, kernel)
        prefill_s[kernel] = best_seconds(prefill, runs)
    best = {label: float("inf") for label, *_ in setups}
    for round_ in range(runs + 1):  # round 0 is the warm-up
        for label, cache_name, step, kernel in setups:
            use_linear_kernel(model, kernel)
            seconds = decode_seconds(cache_name, step)
            if round_:
                best[label] = min(best[label], seconds)
    use_linear_kernel(model, "torch")
    return {
        "weights": float(weights),  # non-embedding parameters
        "decode_tokens_per_s": {label: 1 / seconds for label, seconds in best.items()},
        "prefill_gflops": {kernel: 2 * weights * prompt / seconds / 1e9 for kernel, seconds in prefill_s.items()},
        "prefill_ms": {kernel: seconds * 1e3 for kernel, seconds in prefill_s.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, measure, and print the roofline table; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--prompt", type=int, default=256, help="prefill tokens")
    parser.add_argument("--steps", type=int, default=32, help="decoding steps timed")
    parser.add_argument("--megabytes", type=int, default=512, help="size of the bandwidth test tensor")
    parser.add_argument("--gemm", type=int, default=2048, help="GEMM side")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 run (CI)")
    args = parser.parse_args(argv)
    if min(args.layers, args.hidden, args.prompt, args.steps, args.megabytes, args.gemm, args.runs) < 1:
        parser.error("every size and --runs must be at least 1")
    if args.hidden % 64:
        parser.error(f"--hidden must be a multiple of 64 (head size), got {args.hidden}")
    torch.set_grad_enabled(False)
    if args.smoke:
        args.layers, args.hidden, args.prompt, args.steps = 2, 128, 16, 4
        args.megabytes, args.gemm, args.runs = 16, 256, 1
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}")
    bandwidth = measure_bandwidth(args.megabytes, args.runs)
    gemm = measure_gemm(args.gemm, args.runs)
    peak = max(gemm.values())
    llm = measure_llm(args.layers, args.hidden, args.prompt, args.steps, args.runs, vocab=1000 if args.smoke else 32000)
    weights = llm["weights"]
    weight_bytes = weights * 4
    bound = bandwidth["copy"] * 1e9 / weight_bytes
    print("\n## roofline")
    print("| quantity | measured | bound | fraction of bound |")
    print("|---|---:|---:|---:|")
    print(f"| memory bandwidth, copy ({args.megabytes} MiB fp32) | {bandwidth['copy']:.1f} GB/s | | |")
    print(f"| memory bandwidth, sum | {bandwidth['sum']:.1f} GB/s | | |")
    for kernel, gflops in gemm.items():
        print(f"| fp32 GEMM {args.gemm}^3, {kernel} | {gflops:.1f} GFLOP/s | | |")
    model = f"{args.layers} layers x {args.hidden} ({weights / 1e6:.1f}M non-embedding params, "
    model += f"{weight_bytes / 2**20:.0f} MiB), {args.prompt}-token prompt"
    for setup, tokens_per_s in llm["decode_tokens_per_s"].items():
        print(
            f"| decode, {model}, {setup} | {tokens_per_s:.1f} tok/s | {bound:.1f} tok/s "
            f"(copy bandwidth / weight bytes) | {tokens_per_s / bound:.2f} |"
        )
    for kernel, gflops in llm["prefill_gflops"].items():
        print(
            f"| prefill, {args.prompt} tokens, {kernel} linear ({llm['prefill_ms'][kernel]:.0f} ms) | "
            f"{gflops:.1f} GFLOP/s | {peak:.1f} GFLOP/s (best GEMM) | {gflops / peak:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

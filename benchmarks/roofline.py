"""Roofline: this machine's memory bandwidth and fp32 GEMM throughput, and how close LLM decoding gets.

Measures (best of ``--runs``): bandwidth of a large tensor copy (read + write bytes) and sum (read
bytes); fp32 GEMM GFLOP/s. Then, for a mid-size LLaMA (random weights, fp32), decode tokens/s against
the bandwidth bound (every non-embedding weight byte read once per token), with our in-place KV cache
(``seedx_agent.kv_layers``, what ``decoding.decode`` uses) and with transformers' ``DynamicCache``, and
prefill FLOP/s against the GEMM peak (2 x non-embedding params FLOPs per token, attention ignored).

Run from the repository root: ``python -m benchmarks.roofline --layers 8 --hidden 1024``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

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


def measure_gemm(size: int, runs: int) -> float:
    """GFLOP/s of an fp32 (size x size) @ (size x size) matmul."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    return 2 * size**3 / best_seconds(lambda: a @ b, runs) / 1e9


@torch.no_grad()
def measure_llm(layers: int, hidden: int, prompt: int, steps: int, runs: int, vocab: int = 32000) -> dict[str, float]:
    """Decode tokens/s (with transformers' concatenating ``DynamicCache`` and with our in-place
    ``new_kv_cache``, alternating) and prefill FLOP/s of a random fp32 LLaMA (LLaMA-2 vocab and MLP ratio)."""
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from seedx_agent.kv_layers import new_kv_cache

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
    factories = {"DynamicCache": lambda: DynamicCache(config=config), "ours": lambda: new_kv_cache(config)}

    def prefill(factory: Callable[[], object] = factories["DynamicCache"]) -> object:
        cache = factory()
        model(input_ids=ids, cache=cache, use_cache=True)
        return cache

    def decode_seconds(factory: Callable[[], object]) -> float:
        """Per-token seconds of ``steps`` greedy steps after an (untimed) prefill into a fresh cache."""
        cache, token = prefill(factory), ids[:, -1:]
        start = time.perf_counter()
        for _ in range(steps):
            token = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        return (time.perf_counter() - start) / steps

    prefill_s = best_seconds(prefill, runs)
    best = {name: float("inf") for name in factories}
    for factory in factories.values():  # warm-up
        decode_seconds(factory)
    for _ in range(runs):
        for name, factory in factories.items():
            best[name] = min(best[name], decode_seconds(factory))
    return {
        "weights": float(weights),
        "decode_tokens_per_s": 1 / best["ours"],
        "decode_tokens_per_s_dynamic": 1 / best["DynamicCache"],
        "prefill_gflops": 2 * weights * prompt / prefill_s / 1e9,
        "prefill_s": prefill_s,
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
    llm = measure_llm(args.layers, args.hidden, args.prompt, args.steps, args.runs, vocab=1000 if args.smoke else 32000)
    weight_bytes = llm["weights"] * 4
    bound = bandwidth["copy"] * 1e9 / weight_bytes
    print("\n## roofline")
    print("| quantity | measured | bound | fraction of bound |")
    print("|---|---:|---:|---:|")
    print(f"| memory bandwidth, copy ({args.megabytes} MiB fp32) | {bandwidth['copy']:.1f} GB/s | | |")
    print(f"| memory bandwidth, sum | {bandwidth['sum']:.1f} GB/s | | |")
    print(f"| fp32 GEMM {args.gemm}^3 | {gemm:.1f} GFLOP/s | | |")
    model = f"{args.layers} layers x {args.hidden} ({llm['weights'] / 1e6:.1f}M non-embedding params, "
    model += f"{weight_bytes / 2**20:.0f} MiB), {args.prompt}-token prompt"
    for label, key in (("ours (in-place KV)", "decode_tokens_per_s"), ("DynamicCache", "decode_tokens_per_s_dynamic")):
        print(
            f"| decode, {model}, {label} | {llm[key]:.1f} tok/s | {bound:.1f} tok/s "
            f"(copy bandwidth / weight bytes) | {llm[key] / bound:.2f} |"
        )
    print(
        f"| prefill, {args.prompt} tokens ({llm['prefill_s'] * 1e3:.0f} ms) | {llm['prefill_gflops']:.1f} GFLOP/s "
        f"| {gemm:.1f} GFLOP/s (GEMM) | {llm['prefill_gflops'] / gemm:.2f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Opt-in fast paths for CPU inference, pure torch and independent of the pipeline.

``prefix_cache`` (KV of a conversation's prefix, reused across turns), ``growing_kv`` (an in-place KV cache),
``lean_step`` (a one-token decode step without transformers' generic forward) and ``cpu_linear`` (the linear
kernel choice). ``GenerationOptions`` and ``SeedX.from_pretrained(linear_kernel=...)`` switch them; the
official behaviour stays reachable by turning them off.
"""

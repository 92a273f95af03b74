"""oneDNN matrix multiplies for the large ``nn.Linear`` layers of CPU inference.

On this kind of machine (2 AVX2 cores, MKL as torch's BLAS) ``F.linear`` streams a decode step's weight
matrices at about 13.5 GB/s: MKL's GEMV hardly uses the second core. oneDNN's inner-product primitive, which
torch ships as ``torch.ops.mkldnn._linear_pointwise`` and reads the ordinary dense weight in place (no copy,
no packing), reaches 18-20 GB/s for one token and 1.2-1.4x MKL's GEMM throughput for prompt-sized blocks
(benchmarks/roofline.py, ``--kernels``). It costs about 50 us per call in primitive lookup, so it only pays
for weights of about a million elements and up, and it loses to MKL with a single thread.

Which kernel is faster depends on the CPU: on a 2-core AVX-512/AMX Xeon oneDNN decoded 12 % slower than MKL.
So ``"auto"`` measures, once per process and weight shape, both kernels on the component's largest eligible
weight (one token and a 16-token block, alternating runs) and keeps the faster (``choose_linear_kernel``;
``linear_kernel_measurements()`` reports what was measured). ``"onednn"``/``"torch"`` force one.

``use_linear_kernel(module, "onednn")`` turns every plain ``nn.Linear`` of at least
``ONEDNN_MIN_WEIGHT_ELEMENTS`` weights into a ``OneDNNLinear``: same parameters, same state-dict keys, same
hooks. Its forward uses oneDNN only where that is both correct and faster (CPU, fp32, contiguous weight, no
autograd graph needed, two or more threads) and calls ``F.linear`` otherwise, so training, GPU placement
and bf16 behave exactly as before. ``"torch"`` turns them back. Results differ from MKL's by fp32 rounding
(summation order), not more; tests/test_cpu_linear.py pins that.
"""

from __future__ import annotations

import functools
import logging
import statistics
import threading
import time
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from seedx_agent.errors import ConfigError

__all__ = [
    "LINEAR_KERNELS",
    "ONEDNN_MIN_WEIGHT_ELEMENTS",
    "LinearKernel",
    "OneDNNLinear",
    "choose_linear_kernel",
    "linear_kernel_measurements",
    "linear_kernel_of",
    "measure_linear_kernels",
    "onednn_linear",
    "onednn_linear_available",
    "resolve_linear_kernel",
    "use_linear_kernel",
]

LinearKernel = Literal["auto", "onednn", "torch"]
LINEAR_KERNELS: tuple[str, ...] = get_args(LinearKernel)
# Below ~1M weights the ~50 us per-call overhead outweighs the better streaming (measured on 2 cores).
ONEDNN_MIN_WEIGHT_ELEMENTS = 1 << 20

logger = logging.getLogger(__name__)
# (out_features, in_features, threads) -> (choice, {kernel: median seconds of one 1-token + one 16-token product})
_MEASURED: dict[tuple[int, int, int], tuple[Literal["onednn", "torch"], dict[str, float]]] = {}
_MEASURED_LOCK = threading.Lock()


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's linear op and it agrees with ``F.linear`` on a probe."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        op = torch.ops.mkldnn._linear_pointwise
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(3, 2, 64, generator=generator)  # (batch, seq, in): the shapes the LLM passes
        weight = torch.randn(48, 64, generator=generator)
        bias = torch.randn(48, generator=generator)
        with torch.no_grad():
            got = op(x, weight, bias, "none", [], "")
        return got.shape == (3, 2, 48) and torch.allclose(got, F.linear(x, weight, bias), rtol=1e-4, atol=1e-4)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def onednn_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` computed by oneDNN where that is valid and faster (CPU, fp32, contiguous weight, no autograd
    graph needed, two or more threads), by ``F.linear`` everywhere else."""
    if (
        input.device.type == "cpu"
        and weight.device.type == "cpu"
        and input.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.is_contiguous()
        and not (torch.is_grad_enabled() and (weight.requires_grad or input.requires_grad))
        and torch.get_num_threads() > 1
    ):
        return torch.ops.mkldnn._linear_pointwise(input, weight, bias, "none", [], "")
    return F.linear(input, weight, bias)


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` whose inference forward on CPU fp32 runs oneDNN's inner product (module docstring)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return onednn_linear(input, self.weight, self.bias)


def measure_linear_kernels(weight: torch.Tensor, *, repeats: int = 7) -> dict[str, float]:
    """Median seconds of one 1-token plus one 16-token product with ``weight`` (CPU fp32), per kernel; the two
    kernels alternate so a busy machine slows both alike."""
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, rows, weight.shape[1], generator=generator) for rows in (1, 16)]
    kernels = {"torch": F.linear, "onednn": torch.ops.mkldnn._linear_pointwise}
    times: dict[str, list[float]] = {name: [] for name in kernels}
    with torch.no_grad():
        for run in range(repeats + 1):
            for name, kernel in kernels.items():
                start = time.perf_counter()
                for x in inputs:
                    kernel(x, weight, None, "none", [], "") if name == "onednn" else kernel(x, weight)
                if run:  # the first run warms both up (primitive creation, page faults)
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def choose_linear_kernel(weight: torch.Tensor) -> Literal["onednn", "torch"]:
    """The faster kernel for products with ``weight`` here, measured once per shape and thread count."""
    if (
        not onednn_linear_available()
        or weight.device.type != "cpu"
        or weight.dtype != torch.float32
        or torch.get_num_threads() < 2  # oneDNN is never used then (onednn_linear falls back)
    ):
        return "torch"
    key = (int(weight.shape[0]), int(weight.shape[1]), torch.get_num_threads())
    with _MEASURED_LOCK:
        if key not in _MEASURED:
            seconds = measure_linear_kernels(weight.detach().contiguous())
            choice: Literal["onednn", "torch"] = "onednn" if seconds["onednn"] < seconds["torch"] else "torch"
            _MEASURED[key] = (choice, seconds)
            logger.info(
                "linear kernel for %dx%d weights on %d threads: oneDNN %.3f ms, torch %.3f ms -> %s",
                key[0], key[1], key[2], 1e3 * seconds["onednn"], 1e3 * seconds["torch"], choice,
            )  # fmt: skip
        return _MEASURED[key][0]


def linear_kernel_measurements() -> dict[tuple[int, int, int], tuple[str, dict[str, float]]]:
    """What ``"auto"`` measured in this process: (out, in, threads) -> (choice, median seconds per kernel)."""
    with _MEASURED_LOCK:
        return dict(_MEASURED)


def resolve_linear_kernel(kernel: str) -> Literal["onednn", "torch"]:
    """The kernel ``kernel`` means here (``"auto"`` -> ``"onednn"`` where supported); ConfigError if unknown."""
    if kernel not in LINEAR_KERNELS:
        raise ConfigError(f"linear_kernel must be one of {', '.join(LINEAR_KERNELS)}; got {kernel!r}")
    if kernel == "torch":
        return "torch"
    if not onednn_linear_available():
        if kernel == "onednn":
            raise ConfigError(
                "linear_kernel='onednn' needs a torch build with oneDNN (torch.backends.mkldnn) whose "
                "mkldnn._linear_pointwise op works here; use linear_kernel='auto' or 'torch'"
            )
        return "torch"
    return "onednn"


def use_linear_kernel(
    module: nn.Module, kernel: LinearKernel = "auto", *, min_weight_elements: int = ONEDNN_MIN_WEIGHT_ELEMENTS
) -> int:
    """Switch ``module``'s large plain ``nn.Linear`` layers to oneDNN (``"onednn"``; ``"auto"`` = oneDNN when
    this build supports it and it measured faster here on the largest such layer) or back to ``F.linear``
    (``"torch"``). Returns how many layers now use oneDNN.

    Only exact ``nn.Linear`` instances are touched (quantised and LoRA layers keep their class; a LoRA's base
    layer is a plain ``nn.Linear`` and is switched). Parameters, buffers and hooks are kept as they are.
    """
    if min_weight_elements < 0:
        raise ConfigError(f"min_weight_elements must be >= 0; got {min_weight_elements}")
    target = resolve_linear_kernel(kernel)
    if kernel == "auto" and target == "onednn":  # measure on the largest layer that would switch
        eligible = [
            layer.weight
            for layer in module.modules()
            if type(layer) in (nn.Linear, OneDNNLinear) and layer.weight.numel() >= min_weight_elements
        ]
        if eligible:
            target = choose_linear_kernel(max(eligible, key=lambda weight: weight.numel()))
    switched = 0
    for layer in module.modules():
        if type(layer) is OneDNNLinear and (target == "torch" or layer.weight.numel() < min_weight_elements):
            layer.__class__ = nn.Linear
        elif type(layer) is nn.Linear and target == "onednn" and layer.weight.numel() >= min_weight_elements:
            layer.__class__ = OneDNNLinear
        switched += type(layer) is OneDNNLinear
    return switched


def linear_kernel_of(module: nn.Module) -> Literal["onednn", "torch"]:
    """``"onednn"`` when any layer of ``module`` uses ``OneDNNLinear``, else ``"torch"``."""
    return "onednn" if any(type(layer) is OneDNNLinear for layer in module.modules()) else "torch"

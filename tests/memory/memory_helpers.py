"""Shared by the memory tests and their subprocess worker: a tiny deterministic image embedder and images."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

EMBED_DIM = 3 * 8 + 8 * 8  # colour histogram (8 bins per channel) + 8x8 grey thumbnail


def tiny_image_embedder(images: list[Image.Image]) -> np.ndarray:
    """(n, 88) L2-normalised features: per-channel colour histograms plus an 8x8 grey thumbnail."""
    rows = []
    for image in images:
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (height, width, 3)
        histograms = [np.bincount(pixels[..., channel].ravel() // 32, minlength=8) for channel in range(3)]
        histogram = np.concatenate(histograms).astype(np.float64) / pixels[..., 0].size  # (24,)
        thumbnail = np.asarray(image.convert("L").resize((8, 8), Image.BILINEAR), dtype=np.float64).ravel() / 255
        row = np.concatenate([histogram, thumbnail])  # (88,)
        rows.append(row / max(np.linalg.norm(row), 1e-12))
    return np.stack(rows).astype(np.float32)


def solid_image(colour: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> Image.Image:
    """A single-colour RGB image."""
    return Image.new("RGB", size, colour)


def noise_image(seed: int, size: tuple[int, int] = (20, 12)) -> Image.Image:
    """A random RGB image fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_worker(mode: str, root: Path, *extra: str) -> subprocess.Popen[str]:
    """Start ``memory_worker.py MODE ROOT [EXTRA...]`` with piped stdin/stdout (text mode)."""
    environment = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("memory_worker.py")), mode, str(root), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )

"""Any-resolution encoding: grid choice, tiling, thumbnail, patch positions, ViT normalisation (§3, §2).

An image becomes k = cols*rows tiles of S x S (S = ``VisionConfig.image_size``, 448 for SEED-X) cut in
row-major order from the image stretched to the chosen grid, plus one global thumbnail (the whole image
stretched to S x S) appended last. Aspect ratio is not preserved, as in the official code: a 20000x50
banner is squeezed into its grid like any other image.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np
import PIL.Image
import torch
from PIL import Image

from seedx_agent.config import VisionConfig
from seedx_agent.errors import ConfigError, InvalidImageError
from seedx_agent.pipeline.images import to_rgb

__all__ = [
    "THUMBNAIL_POSITION",
    "AnyResCrops",
    "crop_image",
    "parse_grids",
    "preprocess",
    "preprocess_batch",
    "select_grid",
    "select_grid_aspect",
    "select_grid_max_resolution",
    "vit_transform",
]

Size = tuple[int, int]  # (width, height) in pixels
THUMBNAIL_POSITION = (0.5, 0.5)  # (x, y) patch position of every image's thumbnail crop


@dataclass(frozen=True)
class AnyResCrops:
    """One image's crops ready for the ViT: k tiles then the thumbnail, with their relative positions."""

    pixel_values: torch.Tensor  # (k+1, 3, S, S), normalised with the CLIP statistics
    patch_positions: torch.Tensor  # (k+1, 2) float32 (x, y) in (0, 1); thumbnail (0.5, 0.5)
    grid: tuple[int, int]  # (cols, rows) of the tiling
    image_size: tuple[int, int]  # (width, height) of the original image (box coordinates refer to it)
    # The uint8 crops (k+1, S, S, 3) behind ``pixel_values``, kept for ``content_hash`` (a quarter of the bytes).
    uint8_crops: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def num_crops(self) -> int:
        """Tiles plus the thumbnail (cols*rows + 1)."""
        return int(self.pixel_values.shape[0])

    @cached_property
    def content_hash(self) -> str | None:
        """blake2b of the uint8 crops and the grid: identical model inputs <=> identical hash (the prefix KV
        cache key). Computed on first use only, since most callers never need it; None without ``uint8_crops``."""
        if self.uint8_crops is None:
            return None
        digest = hashlib.blake2b(np.ascontiguousarray(self.uint8_crops).data, digest_size=20)
        digest.update(f"{self.grid[0]}x{self.grid[1]}".encode())
        return digest.hexdigest()


def parse_grids(grids: Sequence[str], base: int) -> list[Size]:
    """Grid strings "AxB" -> candidate pixel sizes (A*base, B*base) as (width, height), in list order."""
    if isinstance(grids, str):
        raise ConfigError(f"grids must be a sequence of 'AxB' strings, got the single string {grids!r}; wrap it")
    if not grids:
        raise ConfigError("grids is empty; pass at least one 'AxB' grid such as '1x1'")
    sizes = []
    for grid in grids:
        parts = grid.split("x") if isinstance(grid, str) else []
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ConfigError(f"grid {grid!r} is not of the form 'AxB' with positive integers (e.g. '2x1')")
        sizes.append((int(parts[0]) * base, int(parts[1]) * base))
    return sizes


def _check_inputs(size: Size, candidates: Sequence[Size]) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InvalidImageError(f"image size {width}x{height} is empty; both sides must be at least 1 pixel")
    if not candidates:
        raise ConfigError("no grid candidates given; pass at least one (width, height)")


def select_grid_max_resolution(size: Size, candidates: Sequence[Size]) -> Size:
    """Rule 1 (LLaVA-NeXT): the candidate keeping the most original pixels after an aspect-preserving fit.

    Ties on that effective resolution go to the smaller waste (W*H - effective), then to the earlier
    candidate. Float and truncation arithmetic follow the official code exactly.
    """
    _check_inputs(size, candidates)
    width, height = size
    best: Size | None = None
    max_effective, min_wasted = 0, math.inf
    for cand_w, cand_h in candidates:
        scale = min(cand_w / width, cand_h / height)
        fitted_w, fitted_h = int(width * scale), int(height * scale)
        effective = min(fitted_w * fitted_h, width * height)
        wasted = cand_w * cand_h - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            best, max_effective, min_wasted = (cand_w, cand_h), effective, wasted
    assert best is not None  # the first candidate always wins against min_wasted = inf
    return best


def select_grid_aspect(size: Size, candidates: Sequence[Size]) -> Size:
    """Rule 2: the candidate with the closest aspect ratio (h/w), then the closest area, then the earlier."""
    _check_inputs(size, candidates)
    width, height = size
    image_ratio, image_area = height / width, width * height
    best: Size | None = None
    min_aspect_penalty, min_area_penalty = math.inf, math.inf
    for cand_w, cand_h in candidates:
        ratio, area = cand_h / cand_w, cand_w * cand_h
        aspect_penalty = max(ratio, image_ratio) / min(ratio, image_ratio)
        area_penalty = max(area, image_area) / min(area, image_area)
        if aspect_penalty < min_aspect_penalty or (
            aspect_penalty == min_aspect_penalty and area_penalty < min_area_penalty
        ):
            best, min_aspect_penalty, min_area_penalty = (cand_w, cand_h), aspect_penalty, area_penalty
    assert best is not None
    return best


def select_grid(size: Size, candidates: Sequence[Size]) -> Size:
    """SEED-X's choice: the smaller-area result of rules 1 and 2 (rule 1 when the areas are equal)."""
    by_resolution = select_grid_max_resolution(size, candidates)
    by_aspect = select_grid_aspect(size, candidates)
    if by_resolution[0] * by_resolution[1] > by_aspect[0] * by_aspect[1]:
        return by_aspect
    return by_resolution


def crop_image(
    image: PIL.Image.Image, config: VisionConfig, grids: Sequence[str]
) -> tuple[list[PIL.Image.Image], list[tuple[float, float]], tuple[int, int]]:
    """Tile ``image`` on its selected grid; returns (crops, positions, (cols, rows)).

    Crops are the row-major S x S tiles of the image stretched (PIL bicubic) to the grid size, then the
    thumbnail (the original stretched to S x S). Tile (row i, column j) sits at ((j+.5)/cols, (i+.5)/rows);
    the thumbnail at (0.5, 0.5).
    """
    side = config.image_size
    grid_w, grid_h = select_grid(image.size, parse_grids(grids, side))
    cols, rows = grid_w // side, grid_h // side
    resized = image.resize((grid_w, grid_h), Image.Resampling.BICUBIC)
    crops: list[PIL.Image.Image] = []
    positions: list[tuple[float, float]] = []
    for row in range(rows):
        for col in range(cols):
            crops.append(resized.crop((col * side, row * side, (col + 1) * side, (row + 1) * side)))
            positions.append(((col + 0.5) / cols, (row + 0.5) / rows))
    crops.append(image.resize((side, side), Image.Resampling.BICUBIC))
    positions.append(THUMBNAIL_POSITION)
    return crops, positions, (cols, rows)


@lru_cache(maxsize=8)
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: every uint8 value through ToTensor (/255) and Normalize, with torch's own fp32 ops."""
    values = torch.arange(256, dtype=torch.float32).div(255).view(1, 256)  # exactly ToTensor's values
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1)
    table = values.sub(mean_t).div(std_t).numpy()  # (3, 256)
    table.setflags(write=False)
    return table


def _normalise(pixels: np.ndarray, config: VisionConfig) -> torch.Tensor:
    """uint8 (n, S, S, 3) -> float32 (n, 3, S, S): ToTensor (/255) then Normalize ((x - mean) / std).

    A uint8 has 256 values, so the result is a table look-up of the same fp32 operations, bit-identical
    to computing them per pixel; done one crop plane at a time so it stays in cache (a batched float
    pass over every crop is memory-bound and was slower than the per-crop loop).
    """
    table = _normalise_table(tuple(config.mean), tuple(config.std))
    count, height, width, _ = pixels.shape
    out = np.empty((count, 3, height, width), dtype=np.float32)  # (n, 3, S, S)
    for index in range(count):
        for channel in range(3):
            np.take(table[channel], pixels[index, :, :, channel], out=out[index, channel])
    return torch.from_numpy(out)


def _resized_pixels(image: PIL.Image.Image, side: int) -> np.ndarray:
    # torchvision Resize((S, S)) on a PIL image: bilinear, and a no-op copy when the size already matches.
    if image.size != (side, side):
        image = image.resize((side, side), Image.Resampling.BILINEAR)
    return np.array(image, dtype=np.uint8)  # (S, S, 3), a writable copy (torch.from_numpy needs one)


def vit_transform(image: PIL.Image.Image, config: VisionConfig) -> torch.Tensor:
    """One RGB image -> (3, S, S): stretch to S x S (bilinear), scale to [0, 1], normalise (§2)."""
    rgb = image if image.mode == "RGB" else to_rgb(image, apply_exif_orientation=False)
    return _normalise(_resized_pixels(rgb, config.image_size)[None], config)[0]


# Below this many source pixels a resize takes well under a millisecond and a thread hand-off costs more.
_THREAD_MIN_PIXELS = 256 * 256
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _worth_a_thread(size: Size) -> bool:
    return size[0] * size[1] >= _THREAD_MIN_PIXELS and (os.cpu_count() or 1) > 1


def _pool() -> ThreadPoolExecutor:
    """One process-wide pool for preprocessing (threads, not processes: PIL resizes release the GIL)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="seedx-anyres")
        return _POOL


def _as_rgb(image: PIL.Image.Image, caller: str) -> PIL.Image.Image:
    if not isinstance(image, PIL.Image.Image):
        raise InvalidImageError(
            f"{caller} expects a PIL image, got {type(image).__name__}; "
            "read it with seedx_agent.pipeline.images.load_image"
        )
    # Orientation is load_image's job; here only the mode is normalised so sizes stay the caller's.
    return image if image.mode == "RGB" else to_rgb(image, apply_exif_orientation=False)


def _resize(image: PIL.Image.Image, size: Size) -> PIL.Image.Image:
    return image.resize(size, Image.Resampling.BICUBIC)


def _assemble(
    rgb: PIL.Image.Image, resized: PIL.Image.Image, thumbnail: PIL.Image.Image, config: VisionConfig
) -> AnyResCrops:
    """The crops of one image from its grid resize and its thumbnail: tiles, normalisation, positions."""
    side = config.image_size
    cols, rows = resized.width // side, resized.height // side
    # Tiles sit on whole pixels of the resized image, so slicing its array equals PIL's crop; each tile is
    # already S x S, where torchvision's Resize((S, S)) is a no-op copy.
    grid_pixels = np.asarray(resized)  # (rows*S, cols*S, 3) uint8
    pixels = np.empty((rows * cols + 1, side, side, 3), dtype=np.uint8)  # (k+1, S, S, 3)
    pixels[:-1] = grid_pixels.reshape(rows, side, cols, side, 3).transpose(0, 2, 1, 3, 4).reshape(-1, side, side, 3)
    pixels[-1] = np.asarray(thumbnail)
    positions = [((col + 0.5) / cols, (row + 0.5) / rows) for row in range(rows) for col in range(cols)]
    positions.append(THUMBNAIL_POSITION)
    return AnyResCrops(
        pixel_values=_normalise(pixels, config),
        patch_positions=torch.tensor(positions, dtype=torch.float32),  # (k+1, 2)
        grid=(cols, rows),
        image_size=rgb.size,
        uint8_crops=pixels,
    )


def preprocess_batch(
    images: Sequence[PIL.Image.Image], config: VisionConfig, grids: Sequence[str]
) -> list[AnyResCrops]:
    """``preprocess`` of several images at once, spread over the CPU cores; results equal (tensor for
    tensor) the one-by-one calls and keep the input order.

    Every bicubic resize (each image's grid and thumbnail) is its own pool task, the most pixels first so
    the cores finish together; each image's tiling and normalisation is queued after all of them.
    """
    rgbs = [_as_rgb(image, f"preprocess_batch (at index {index})") for index, image in enumerate(images)]
    if len(rgbs) < 2 or (os.cpu_count() or 1) < 2 or not any(_worth_a_thread(im.size) for im in rgbs):
        return [preprocess(image, config, grids) for image in rgbs]
    side = config.image_size
    candidates = parse_grids(grids, side)
    grid_sizes = [select_grid(rgb.size, candidates) for rgb in rgbs]
    # (image index, 0: grid / 1: thumbnail, size); a 1x1 grid's resize is also its thumbnail
    resizes = [(index, 0, size) for index, size in enumerate(grid_sizes)]
    resizes += [(index, 1, (side, side)) for index, size in enumerate(grid_sizes) if size != (side, side)]
    pixels_in = [rgb.width * rgb.height for rgb in rgbs]
    resizes.sort(key=lambda item: -(pixels_in[item[0]] + item[2][0] * item[2][1]))
    pool = _pool()
    jobs = {(index, which): pool.submit(_resize, rgbs[index], size) for index, which, size in resizes}

    def assemble(index: int) -> AnyResCrops:
        # The pool is FIFO and these run after every resize was submitted, so a worker here only waits
        # on resizes already taken by workers: no deadlock, even with the pool saturated.
        resized = jobs[(index, 0)].result()
        thumbnail = jobs[(index, 1)].result() if (index, 1) in jobs else resized
        return _assemble(rgbs[index], resized, thumbnail, config)

    assembled = [pool.submit(assemble, index) for index in range(len(rgbs))]
    return [job.result() for job in assembled]


def preprocess(
    image: PIL.Image.Image, config: VisionConfig, grids: Sequence[str], *, parallel: bool = True
) -> AnyResCrops:
    """Any-res the image and normalise every crop for the ViT (reference §3 + §2).

    ``parallel`` lets a large image's thumbnail resize run on a pool thread beside the grid resize.
    """
    rgb = _as_rgb(image, "preprocess")
    side = config.image_size
    grid_w, grid_h = select_grid(rgb.size, parse_grids(grids, side))
    # The thumbnail is the same PIL call as the grid resize when the grid is 1x1: reuse it. Otherwise the two
    # bicubic resizes (nearly all of the time) are independent and PIL releases the GIL while resampling,
    # so a large image's thumbnail is drawn on a pool thread while this thread draws the grid.
    one_tile = (grid_w, grid_h) == (side, side)
    thumbnail_job: Future[PIL.Image.Image] | None = None
    if not one_tile and parallel and _worth_a_thread(rgb.size):
        thumbnail_job = _pool().submit(_resize, rgb, (side, side))
    resized = _resize(rgb, (grid_w, grid_h))
    if one_tile:
        thumbnail = resized
    elif thumbnail_job is not None:
        thumbnail = thumbnail_job.result()
    else:
        thumbnail = _resize(rgb, (side, side))
    return _assemble(rgb, resized, thumbnail, config)

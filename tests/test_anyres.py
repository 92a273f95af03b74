"""Any-res encoding (§3): both grid rules and their tie-breaks, tiling, positions, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from seedx_agent.config import CLIP_MEAN, CLIP_STD, AnyResConfig, SeedXConfig, VisionConfig
from seedx_agent.errors import ConfigError, InvalidImageError
from seedx_agent.pipeline.anyres import (
    AnyResCrops,
    crop_image,
    parse_grids,
    preprocess,
    preprocess_batch,
    select_grid,
    select_grid_aspect,
    select_grid_max_resolution,
    vit_transform,
)

OFFICIAL_GRIDS = AnyResConfig().grids
OFFICIAL = VisionConfig()  # S = 448
TINY = SeedXConfig.from_preset("tiny-random").vision  # S = 56
CANDIDATES = parse_grids(OFFICIAL_GRIDS, 448)


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


# -- grid strings ----------------------------------------------------------------------------------


def test_parse_grids_official_list() -> None:
    assert CANDIDATES == [
        (448, 448), (448, 896), (448, 1344), (896, 448), (1344, 448), (448, 1792), (1792, 448), (896, 896),
    ]  # fmt: skip
    assert parse_grids(["3x2"], 56) == [(168, 112)]  # "AxB" -> width A*base, height B*base


@pytest.mark.parametrize("bad", [["2by1"], ["0x1"], ["1x"], ["1x2x3"], [], "1x1"])
def test_parse_grids_rejects_malformed(bad: object) -> None:
    with pytest.raises(ConfigError, match="grid"):
        parse_grids(bad, 448)  # type: ignore[arg-type]


# -- rule 1: max effective resolution ---------------------------------------------------------------


def test_rule1_worked_example() -> None:
    # 1000x600 fits (896, 896) as 896x537 = 481,152 pixels, more than any other candidate.
    assert select_grid_max_resolution((1000, 600), CANDIDATES) == (896, 896)


def test_rule1_equal_effective_resolution_prefers_less_waste() -> None:
    # 448x448 keeps all 200,704 pixels in each; waste 602,112 / 200,704 / 0.
    assert select_grid_max_resolution((448, 448), [(896, 896), (448, 896), (448, 448)]) == (448, 448)


def test_rule1_full_tie_prefers_earlier_candidate() -> None:
    # A 100x100 image: same effective (10,000) and same waste in both -> list order decides.
    assert select_grid_max_resolution((100, 100), [(896, 448), (448, 896)]) == (896, 448)
    assert select_grid_max_resolution((100, 100), [(448, 896), (896, 448)]) == (448, 896)


def test_rule1_all_effective_zero_takes_least_waste() -> None:
    # 20000x1: every fit truncates the height to 0 pixels -> effective 0 everywhere -> least waste.
    assert select_grid_max_resolution((20000, 1), [(896, 896), (1792, 448), (448, 448)]) == (448, 448)


# -- rule 2: aspect ratio first ---------------------------------------------------------------------


def test_rule2_worked_example() -> None:
    # h/w = 0.6; (896, 448) has ratio 0.5 -> penalty 1.2, the smallest.
    assert select_grid_aspect((1000, 600), CANDIDATES) == (896, 448)


def test_rule2_equal_aspect_prefers_closer_area() -> None:
    # Both squares have aspect penalty 1; area penalties 250000/200704 vs 802816/250000.
    assert select_grid_aspect((500, 500), [(896, 896), (448, 448)]) == (448, 448)
    assert select_grid_aspect((1000, 1000), [(448, 448), (896, 896)]) == (896, 896)


def test_rule2_full_tie_prefers_earlier_candidate() -> None:
    # Square image: ratios 0.5 and 2 both give penalty 2; equal areas -> list order decides.
    assert select_grid_aspect((600, 600), [(896, 448), (448, 896)]) == (896, 448)
    assert select_grid_aspect((600, 600), [(448, 896), (896, 448)]) == (448, 896)


# -- combination ------------------------------------------------------------------------------------


def test_combination_takes_rule2_when_rule1_is_larger() -> None:
    assert select_grid((1000, 600), CANDIDATES) == (896, 448)
    # 323x456: rule 1 -> (448, 896); rule 2 -> (448, 448) (penalty 1.4118 beats 1.4167) -> smaller wins.
    assert select_grid_max_resolution((323, 456), CANDIDATES) == (448, 896)
    assert select_grid_aspect((323, 456), CANDIDATES) == (448, 448)
    assert select_grid((323, 456), CANDIDATES) == (448, 448)


def test_combination_takes_rule1_when_it_is_smaller() -> None:
    # 1x14: rule 2 wants the tall (448, 1792); rule 1 keeps the single tile (448, 448).
    assert select_grid_aspect((1, 14), CANDIDATES) == (448, 1792)
    assert select_grid((1, 14), CANDIDATES) == (448, 448)


def test_combination_equal_areas_takes_rule1() -> None:
    candidates = [(1344, 448), (896, 672), (672, 896), (448, 1344)]  # all 602,112 pixels
    assert select_grid_max_resolution((100, 100), candidates) == (1344, 448)  # full tie -> first
    assert select_grid_aspect((100, 100), candidates) == (896, 672)  # closest to square
    assert select_grid((100, 100), candidates) == (1344, 448)


def test_select_grid_rejects_empty_inputs() -> None:
    with pytest.raises(InvalidImageError, match="0x5"):
        select_grid((0, 5), CANDIDATES)
    with pytest.raises(ConfigError, match="candidates"):
        select_grid((5, 5), [])


# -- tiling -----------------------------------------------------------------------------------------


def test_worked_example_crops_and_positions() -> None:
    image = _image(1000, 600)
    crops, positions, grid = crop_image(image, OFFICIAL, OFFICIAL_GRIDS)
    assert grid == (2, 1)
    assert positions == [(0.25, 0.5), (0.75, 0.5), (0.5, 0.5)]
    assert [c.size for c in crops] == [(448, 448)] * 3
    resized = np.asarray(image.resize((896, 448), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(np.asarray(crops[0]), resized[:, :448])
    np.testing.assert_array_equal(np.asarray(crops[1]), resized[:, 448:])
    np.testing.assert_array_equal(np.asarray(crops[2]), np.asarray(image.resize((448, 448), Image.Resampling.BICUBIC)))


def _check_tiling(width: int, height: int, config: VisionConfig, seed: int = 0) -> None:
    side = config.image_size
    image = _image(width, height, seed)
    crops, positions, (cols, rows) = crop_image(image, config, OFFICIAL_GRIDS)
    assert (cols * side, rows * side) in parse_grids(OFFICIAL_GRIDS, side)
    assert len(crops) == len(positions) == cols * rows + 1
    assert all(c.size == (side, side) and c.mode == "RGB" for c in crops)
    assert all(0 < x < 1 and 0 < y < 1 for x, y in positions)
    assert positions[-1] == (0.5, 0.5)
    # Reassembling the tiles row-major gives exactly the image stretched (bicubic) to the grid.
    canvas = np.zeros((rows * side, cols * side, 3), dtype=np.uint8)
    for index, crop in enumerate(crops[:-1]):
        row, col = divmod(index, cols)
        canvas[row * side : (row + 1) * side, col * side : (col + 1) * side] = np.asarray(crop)
        assert positions[index] == ((col + 0.5) / cols, (row + 0.5) / rows)
    resized = image.resize((cols * side, rows * side), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(canvas, np.asarray(resized))


@pytest.mark.parametrize(
    "size", [(1, 1), (20000, 50), (50, 20000), (448, 448), (1000, 600), (600, 1000), (3000, 1000), (900, 901)]
)
def test_tiling_official_size(size: tuple[int, int]) -> None:
    _check_tiling(*size, OFFICIAL)


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 400), height=st.integers(1, 400), seed=st.integers(0, 3))
def test_tiling_tiny_preset_many_sizes(width: int, height: int, seed: int) -> None:
    _check_tiling(width, height, TINY, seed)


def test_extreme_aspect_is_stretched_into_the_widest_grid() -> None:
    crops, positions, grid = crop_image(_image(20000, 50), OFFICIAL, OFFICIAL_GRIDS)
    assert grid == (4, 1) and len(crops) == 5
    assert positions == [(0.125, 0.5), (0.375, 0.5), (0.625, 0.5), (0.875, 0.5), (0.5, 0.5)]


# -- normalisation and the full step -----------------------------------------------------------------


def test_vit_transform_values_on_a_flat_colour() -> None:
    image = Image.new("RGB", (70, 30), (255, 0, 128))  # resized to 56x56: a flat colour stays flat
    out = vit_transform(image, TINY)
    assert out.shape == (3, 56, 56) and out.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), CLIP_MEAN, CLIP_STD)]
    torch.testing.assert_close(out[:, 0, 0], torch.tensor(expected), rtol=0, atol=1e-6)
    assert torch.equal(out, out[:, :1, :1].expand(3, 56, 56))


def test_vit_transform_is_resize_to_tensor_normalize() -> None:
    # torchvision Resize((S, S)) (bilinear on PIL) + ToTensor + Normalize, written out.
    image = _image(90, 40, seed=3)
    resized = np.asarray(image.resize((56, 56), Image.Resampling.BILINEAR), dtype=np.float32)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    expected = (torch.from_numpy(resized).permute(2, 0, 1) / 255 - mean) / std
    torch.testing.assert_close(vit_transform(image, TINY), expected, rtol=0, atol=1e-6)
    # Already S x S: no resampling at all.
    exact = _image(56, 56, seed=4)
    direct = (torch.from_numpy(np.asarray(exact, dtype=np.float32)).permute(2, 0, 1) / 255 - mean) / std
    torch.testing.assert_close(vit_transform(exact, TINY), direct, rtol=0, atol=1e-6)


def test_preprocess_worked_example() -> None:
    image = _image(1000, 600)
    result = preprocess(image, OFFICIAL, OFFICIAL_GRIDS)
    assert isinstance(result, AnyResCrops)
    assert result.pixel_values.shape == (3, 3, 448, 448) and result.pixel_values.dtype == torch.float32
    assert result.num_crops == 3
    assert result.grid == (2, 1)
    assert result.image_size == (1000, 600)
    assert result.patch_positions.dtype == torch.float32
    assert result.patch_positions.tolist() == [[0.25, 0.5], [0.75, 0.5], [0.5, 0.5]]
    crops, _, _ = crop_image(image, OFFICIAL, OFFICIAL_GRIDS)
    for index, crop in enumerate(crops):
        torch.testing.assert_close(result.pixel_values[index], vit_transform(crop, OFFICIAL), rtol=0, atol=0)


def test_preprocess_single_grid_gives_tile_and_thumbnail() -> None:
    result = preprocess(_image(30, 80), TINY, ("1x1",))
    assert result.num_crops == 2 and result.grid == (1, 1)
    assert result.patch_positions.tolist() == [[0.5, 0.5], [0.5, 0.5]]
    # Tile = image stretched to the 1x1 grid, thumbnail = the same stretch: identical crops.
    torch.testing.assert_close(result.pixel_values[0], result.pixel_values[1], rtol=0, atol=0)


def test_preprocess_converts_modes_without_reorienting() -> None:
    gray = Image.new("L", (60, 20), 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90" orientation: load_image's job, not preprocess's
    gray.info["exif"] = exif.tobytes()
    result = preprocess(gray, TINY, OFFICIAL_GRIDS)
    assert result.image_size == (60, 20)
    assert gray.mode == "L"  # caller's image untouched
    expected = [(200 / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]
    torch.testing.assert_close(result.pixel_values[0, :, 0, 0], torch.tensor(expected), rtol=0, atol=1e-6)


def test_preprocess_rejects_non_images() -> None:
    with pytest.raises(InvalidImageError, match="load_image"):
        preprocess(np.zeros((4, 4, 3), dtype=np.uint8), TINY, OFFICIAL_GRIDS)  # type: ignore[arg-type]


def test_preprocess_batch_equals_one_by_one_and_keeps_order() -> None:
    """The threaded batch path (and the threaded thumbnail of large images) gives the serial tensors."""
    images = [
        _image(w, h, seed=i) for i, (w, h) in enumerate([(1000, 600), (300, 900), (448, 448), (1600, 400), (20, 30)])
    ]
    batch = preprocess_batch(images, OFFICIAL, OFFICIAL_GRIDS)
    assert len(batch) == len(images)
    for image, got in zip(images, batch):
        serial = preprocess(image, OFFICIAL, OFFICIAL_GRIDS, parallel=False)
        assert torch.equal(got.pixel_values, serial.pixel_values)
        assert torch.equal(got.patch_positions, serial.patch_positions)
        assert (got.grid, got.image_size, got.content_hash) == (serial.grid, serial.image_size, serial.content_hash)
        threaded = preprocess(image, OFFICIAL, OFFICIAL_GRIDS)  # thumbnail on a pool thread when large
        assert torch.equal(threaded.pixel_values, serial.pixel_values)
    assert preprocess_batch([], OFFICIAL, OFFICIAL_GRIDS) == []


def test_preprocess_batch_rejects_non_images_by_index() -> None:
    with pytest.raises(InvalidImageError, match="index 1"):
        preprocess_batch([_image(8, 8), "photo.jpg"], TINY, OFFICIAL_GRIDS)  # type: ignore[list-item]

"""Property tests (hypothesis) of the box codec, any-res selection, prompt rendering and memory ids."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from seedx_agent.memory import InvalidImageIdError, validate_image_id
from seedx_agent.memory.records import new_image_id

from seedx_agent.config import SeedXConfig
from seedx_agent.pipeline import prompts
from seedx_agent.pipeline.anyres import parse_grids, preprocess
from seedx_agent.pipeline.lvlm import scatter_image_embeds
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.pipeline.tokens import NUM_LOC_BINS, TokenIds, decode_box, encode_box, parse_boxes

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOKENIZER = SeedXTokenizer.tiny()


@st.composite
def boxes_in_images(draw: st.DrawFn) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
    width, height = draw(st.integers(1, 4000)), draw(st.integers(1, 4000))
    x1 = draw(st.floats(0, width, exclude_max=True, allow_nan=False))
    y1 = draw(st.floats(0, height, exclude_max=True, allow_nan=False))
    x2 = draw(st.floats(x1, width, exclude_min=True, allow_nan=False))
    y2 = draw(st.floats(y1, height, exclude_min=True, allow_nan=False))
    return (x1, y1, x2, y2), (width, height)


@FAST
@given(boxes_in_images())
def test_box_round_trip_is_within_one_bin(case: tuple[tuple[float, ...], tuple[int, int]]) -> None:
    box, (width, height) = case
    (decoded,) = parse_boxes(encode_box(box, (width, height)), (width, height))
    for got, want, side in zip(decoded.as_tuple(), box, (width, height, width, height), strict=True):
        assert abs(got - want) <= side / NUM_LOC_BINS + 1e-6, (box, decoded)


@FAST
@given(st.tuples(*[st.integers(0, NUM_LOC_BINS - 1)] * 4), st.integers(224, 4000), st.integers(224, 4000))
def test_bins_round_trip_within_one_bin_when_the_box_fits(bins: tuple[int, ...], width: int, height: int) -> None:
    xc, yc, w, h = bins
    if w < 1 or h < 1 or xc * 2 < w or yc * 2 < h or xc * 2 + w > 2 * NUM_LOC_BINS or yc * 2 + h > 2 * NUM_LOC_BINS:
        return  # degenerate or clipped boxes cannot come back unchanged
    decoded = decode_box(bins, (width, height))
    again = [int(v) for v in re.findall(r"<loc-(\d+)>", encode_box(decoded, (width, height)))]
    assert all(abs(a - b) <= 1 for a, b in zip(again, bins, strict=True)), (bins, again)


SEEDX = SeedXConfig.from_preset("seed-x-i")
GRID_SIZES = set(parse_grids(SEEDX.anyres.grids, SEEDX.vision.image_size))


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 2400), st.integers(1, 2400))
def test_anyres_crops_are_full_tiles_with_inner_positions(width: int, height: int) -> None:
    side = SEEDX.vision.image_size  # 448 for the real SEED-X config
    crops = preprocess(Image.new("RGB", (width, height), (9, 99, 199)), SEEDX.vision, SEEDX.anyres.grids)
    cols, rows = crops.grid
    assert (cols * side, rows * side) in GRID_SIZES
    assert crops.pixel_values.shape == (cols * rows + 1, 3, side, side)
    assert crops.patch_positions.shape == (cols * rows + 1, 2)
    assert bool(((crops.patch_positions > 0) & (crops.patch_positions < 1)).all())
    assert len({tuple(p) for p in crops.patch_positions[:-1].tolist()}) == cols * rows  # distinct tile centres
    assert crops.patch_positions[-1].tolist() == [0.5, 0.5]


TEXT = (
    st.lists(st.sampled_from([*"ab <>/_-09imglocpatch[]", "<img>", "</img>", "<loc-5>", "<box_start>"]), max_size=30)
    .map("".join)
    .filter(str.strip)
)


@FAST
@given(st.lists(st.integers(0, 4), min_size=1, max_size=3), TEXT, st.integers(1, 8))
def test_prompt_image_slots_always_match_the_features(tiles: list[int], question: str, tokens: int) -> None:
    prompt = prompts.comprehension_prompt("seed-x-i", tiles, question, tokens)
    token_ids, mask = TOKENIZER.encode_segments_with_mask(prompt.segments, add_bos=True)
    special = TokenIds.from_vocab(TOKENIZER, tokens)
    crops = sum(t + 1 for t in tiles)
    assert prompt.num_input_crops == crops
    assert sum(mask) == crops * tokens
    assert token_ids.count(special.boi) == len(tiles) and token_ids.count(special.bop) == sum(tiles)
    assert not set(special.loc) & set(token_ids)
    # The splice accepts exactly this many feature vectors (and would refuse one more).
    embeds = torch.zeros(1, len(token_ids), 3)
    features = torch.ones(crops, tokens, 3)
    spliced = scatter_image_embeds(embeds, torch.tensor([mask]), features)
    assert int(spliced.sum()) == crops * tokens * 3


@FAST
@given(st.text(max_size=60))
def test_only_id_shaped_strings_are_ids(text: str) -> None:
    try:
        assert validate_image_id(text) == text
    except InvalidImageIdError as error:
        assert error.image_id == text
        return
    assert re.fullmatch(r"img_[0-9a-f]{16}", text) and "/" not in text and "." not in text


def test_issued_ids_are_valid_unique_and_never_paths() -> None:
    issued = [new_image_id() for _ in range(500)]
    assert len(set(issued)) == len(issued)
    for image_id in issued:
        assert validate_image_id(image_id) == image_id
        assert not any(char in image_id for char in "/\\.:")


@pytest.mark.parametrize("suffix", ["/..", "\n", " ", "\x00"])
def test_a_valid_id_with_any_suffix_is_refused(suffix: str) -> None:
    with pytest.raises(InvalidImageIdError):
        validate_image_id(new_image_id() + suffix)

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedx_agent.errors import InvalidBoxError
from seedx_agent.pipeline.tokens import (
    ADDED_TOKENS,
    Box,
    decode_box,
    encode_box,
    image_block,
    parse_boxes,
    patch_block,
    strip_tags,
)


def test_added_tokens_layout():
    assert len(ADDED_TOKENS) == len(set(ADDED_TOKENS)) == 330
    assert ADDED_TOKENS[0] == "<img_00000>" and ADDED_TOKENS[99] == "<img_00099>"
    assert ADDED_TOKENS[100:104] == ("<img>", "</img>", "<patch>", "</patch>")
    assert ADDED_TOKENS[104] == "<loc-0>" and ADDED_TOKENS[327] == "<loc-223>"
    assert image_block(2) == "<img><img_00000><img_00001></img>"
    assert patch_block(1) == "<patch><img_00000></patch>"


def test_encode_is_center_size_in_224_bins():
    # A box covering the left half of a 448x224 image: centre (0.25, 0.5), size (0.5, 1.0).
    assert encode_box((0, 0, 224, 224), (448, 224)) == "<box_start><loc-56><loc-112><loc-112><loc-223><box_end>"


def test_decode_matches_official_formula():
    box = decode_box([112, 112, 56, 112], (1000, 500))
    assert box.as_tuple() == pytest.approx((375.0, 125.0, 625.0, 375.0))


def test_parse_boxes_with_and_without_box_start():
    text = (
        "It is here <box_start><loc-112><loc-112><loc-56><loc-112><box_end> and <loc-10><loc-10><loc-4><loc-4><box_end>"
    )
    boxes = parse_boxes(text, (224, 224), label="x")
    assert len(boxes) == 2 and boxes[0].label == "x"
    assert boxes[1].as_tuple() == pytest.approx((8.0, 8.0, 12.0, 12.0))
    assert parse_boxes("<loc-300><loc-1><loc-1><loc-1><box_end>", (10, 10)) == []


@settings(max_examples=300, deadline=None)
@given(
    w=st.integers(1, 5000),
    h=st.integers(1, 5000),
    fx=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    fy=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_round_trip_within_one_bin(w, h, fx, fy):
    x1, x2 = sorted(v * w for v in fx)
    y1, y2 = sorted(v * h for v in fy)
    if x2 - x1 < 1e-6 * w or y2 - y1 < 1e-6 * h:
        return
    text = encode_box((x1, y1, x2, y2), (w, h))
    (box,) = parse_boxes(text, (w, h))
    bin_w, bin_h = w / 224, h / 224
    for got, want, unit in zip(box.as_tuple(), (x1, y1, x2, y2), (bin_w, bin_h, bin_w, bin_h)):
        assert abs(got - want) <= unit + 1e-6


@pytest.mark.parametrize(
    "box, match",
    [
        ((10, 10, 5, 20), "inverted"),
        ((0, 0, 200, 20), "outside"),
        ((-1, 0, 5, 5), "outside"),
        ((1, 2, 3), "4 numbers"),
        ((float("nan"), 0, 1, 1), "NaN"),
    ],
)
def test_bad_boxes_are_rejected(box, match):
    with pytest.raises(InvalidBoxError, match=match):
        encode_box(box, (100, 100))


def test_bad_bins_and_sizes():
    with pytest.raises(InvalidBoxError, match="bins"):
        decode_box([1, 2, 3, 224], (10, 10))
    with pytest.raises(InvalidBoxError, match="image_size"):
        encode_box((0, 0, 1, 1), (0, 10))


def test_iou_and_strip_tags():
    assert Box(0, 0, 2, 2).iou(Box(1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert strip_tags("Here <img><img_00003></img> is <box_start><loc-1><box_end> it</s>") == "Here is it"

"""The miniature evaluator: exact readback of renders, graceful degradation, and every scorer."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from seedx_agent.errors import ConfigError, InvalidBoxError, InvalidImageError
from seedx_agent.miniature.evaluate import (
    DONE_BARS,
    UNKNOWN_KIND,
    Report,
    analyse_image,
    normalise_text,
    score_box,
    score_edit,
    score_generation,
    score_grounding,
    score_reconstruction,
    score_text,
)
from seedx_agent.miniature.world import (
    COLOURS,
    PALETTE,
    Scene,
    Shape,
    Title,
    edit,
    object_box,
    random_scene,
    render,
)
from seedx_agent.pipeline.tokens import Box


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    rng = random.Random(2024)
    return [random_scene(rng) for _ in range(200)]


def _blur(image: Image.Image) -> Image.Image:
    """3x3 box blur with edge replication."""
    pixels = np.asarray(image, dtype=np.float64)
    padded = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = pixels.shape[:2]
    blurred = sum(padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)) / 9
    return Image.fromarray(np.clip(np.rint(blurred), 0, 255).astype(np.uint8))


def _noise(image: Image.Image, generator: np.random.Generator, sigma: float = 20.0) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    noisy = pixels + generator.normal(0.0, sigma, pixels.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# Reading images back
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_clean_renders_are_read_back_exactly(scenes: list[Scene], size: int) -> None:
    for scene in scenes:
        detections = analyse_image(render(scene, size))
        assert len(detections) == len(scene.shapes)
        for shape in scene.shapes:
            (found,) = [d for d in detections if d.cell == shape.cell]
            assert (found.kind, found.colour, found.size) == (shape.kind, shape.colour, shape.size)
            assert found.box == object_box(shape, size)
            assert found.fit_error == pytest.approx(0.0, abs=1e-9)
        assert score_generation(render(scene, size), scene)["all_ok"]


@pytest.mark.parametrize(
    ("size", "degrade"),
    [(32, "noise"), (64, "noise"), (32, "blur"), (64, "blur"), (64, "blur+noise")],
)
def test_degraded_renders_still_score_at_least_95_percent(scenes: list[Scene], size: int, degrade: str) -> None:
    generator = np.random.default_rng(size)
    subset = scenes[:100]
    passed = 0
    for scene in subset:
        image = render(scene, size)
        if "blur" in degrade:
            image = _blur(image)
        if "noise" in degrade:
            image = _noise(image, generator)
        passed += score_generation(image, scene)["all_ok"]
    assert passed / len(subset) >= 0.95


def test_titles_and_black_backgrounds_are_read_back() -> None:
    rng = random.Random(9)
    for _ in range(40):
        scene = random_scene(rng, title_probability=1.0, backgrounds=("white", "black"))
        assert scene.title is not None
        for size in (32, 64):
            assert score_generation(render(scene, size), scene)["all_ok"], scene


def test_blobs_that_are_no_shape_are_unknown() -> None:
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse([5, 20, 40, 30], fill=PALETTE["red"])  # a 3.5:1 ellipse
    draw.rectangle([45, 45, 60, 48], fill=PALETTE["blue"])  # a thin bar
    draw.point([(2, 2), (3, 2)], fill=PALETTE["green"])  # a speck
    draw.rectangle([40, 4, 60, 18], fill=PALETTE["yellow"])  # a 3:2 rectangle is no square
    detections = analyse_image(image)
    assert sorted(d.colour for d in detections) == ["blue", "red", "yellow"]
    assert all(d.kind == UNKNOWN_KIND for d in detections)


def test_background_is_found_when_a_shape_covers_much_of_the_border() -> None:
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).polygon([(0, 63), (63, 63), (0, 0)], fill=PALETTE["red"])
    (found,) = analyse_image(image)
    assert found.colour == "red" and found.area > 2000


def test_analyse_image_rejects_bad_inputs() -> None:
    with pytest.raises(InvalidImageError, match="PIL"):
        analyse_image(np.zeros((32, 32, 3)))  # type: ignore[arg-type]
    with pytest.raises(InvalidImageError, match="resize"):
        analyse_image(Image.new("RGB", (16, 16)))


def test_analyse_image_accepts_other_modes_and_reports_fill() -> None:
    scene = Scene(shapes=(Shape("triangle", "green", "large", (1, 1)),))
    rgba = render(scene, 64).convert("RGBA")
    (found,) = analyse_image(rgba)
    assert found.kind == "triangle" and found.position == "center"
    assert 0.45 < found.fill < 0.6


# ---------------------------------------------------------------------------------------------
# Generation, edit and reconstruction scores
# ---------------------------------------------------------------------------------------------

SCENE = Scene(
    shapes=(
        Shape("circle", "red", "large", (0, 0)),
        Shape("square", "blue", "small", (1, 1)),
        Shape("triangle", "yellow", "large", (2, 2)),
    )
)


def test_wrong_images_fail_generation() -> None:
    red, blue, yellow = SCENE.shapes
    recoloured = SCENE.replace_shape(0, replace(red, colour="green"))
    scores = score_generation(render(recoloured, 32), SCENE)
    assert not scores["colour_ok"] and not scores["all_ok"]
    assert scores["shape_ok"] and scores["position_ok"] and scores["count_ok"]

    moved = SCENE.replace_shape(1, replace(blue, cell=(2, 0)))
    scores = score_generation(render(moved, 32), SCENE)
    assert not scores["position_ok"] and not scores["all_ok"] and scores["colour_ok"] and scores["shape_ok"]

    reshaped = SCENE.replace_shape(2, replace(yellow, kind="square"))
    scores = score_generation(render(reshaped, 64), SCENE)
    assert not scores["shape_ok"] and not scores["all_ok"] and scores["colour_ok"]

    resized = SCENE.replace_shape(0, replace(red, size="small"))
    scores = score_generation(render(resized, 64), SCENE)
    assert not scores["size_ok"] and not scores["all_ok"]
    assert score_generation(render(resized, 64), SCENE, check_size=False)["all_ok"]

    scores = score_generation(render(SCENE.remove_shape(1), 64), SCENE)
    assert not scores["count_ok"] and not scores["all_ok"]
    extra = Scene(shapes=SCENE.shapes[:2])
    scores = score_generation(render(SCENE, 64), extra)
    assert scores["shape_ok"] and not scores["count_ok"] and not scores["all_ok"]

    blank = Image.new("RGB", (32, 32), "white")
    assert score_generation(blank, SCENE) == dict.fromkeys(
        ("shape_ok", "colour_ok", "position_ok", "size_ok", "count_ok", "all_ok"), False
    )


@pytest.mark.parametrize("op", ["recolour", "move", "add", "remove", "resize"])
def test_edit_scoring(op: str) -> None:
    rng = random.Random(11)
    source = Scene(shapes=SCENE.shapes[:2])
    sample = edit(source, rng, op=op)
    assert score_edit(render(sample.target, 64), source, sample.target)["all_ok"]

    unchanged = score_edit(render(source, 64), source, sample.target)
    assert not unchanged["target_ok"] and not unchanged["all_ok"]

    # the edit landed but an object it did not name changed colour
    target = sample.target
    untouched = next(i for i, s in enumerate(target.shapes) if s in source.shapes)
    shape = target.shapes[untouched]
    new_colour = next(c for c in COLOURS if c not in {s.colour for s in target.shapes})
    spoiled = target.replace_shape(untouched, replace(shape, colour=new_colour))
    scores = score_edit(render(spoiled, 64), source, target)
    assert scores["target_ok"] and not scores["untouched_ok"] and not scores["all_ok"]


def test_edit_scoring_sees_a_moved_untouched_object_and_extra_shapes() -> None:
    source = Scene(shapes=SCENE.shapes[:2])
    target = source.replace_shape(0, replace(source.shapes[0], colour="purple"))
    drifted = target.replace_shape(1, replace(target.shapes[1], cell=(2, 1)))
    scores = score_edit(render(drifted, 32), source, target)
    assert scores["target_ok"] and not scores["untouched_ok"]
    cluttered = target.add_shape(Shape("circle", "green", "small", (2, 2)))
    scores = score_edit(render(cluttered, 32), source, target)
    assert scores["target_ok"] and scores["untouched_ok"] and not scores["count_ok"] and not scores["all_ok"]


def test_reconstruction_needs_shape_and_colour_not_position() -> None:
    moved = SCENE.replace_shape(0, replace(SCENE.shapes[0], cell=(1, 0)))
    assert score_reconstruction(render(moved, 32), SCENE) == {"shape_ok": True, "colour_ok": True, "all_ok": True}
    recoloured = SCENE.replace_shape(1, replace(SCENE.shapes[1], colour="orange"))
    scores = score_reconstruction(render(recoloured, 32), SCENE)
    assert scores == {"shape_ok": True, "colour_ok": False, "all_ok": False}


# ---------------------------------------------------------------------------------------------
# Text and boxes
# ---------------------------------------------------------------------------------------------


def test_score_text_normalises_case_punctuation_spaces_and_tags() -> None:
    assert score_text("Red.", "red") == 1.0
    assert score_text("  top   left ", "top left") == 1.0
    assert score_text("red</s>", "red") == 1.0
    assert score_text("red", "blue") == 0.0
    assert score_text("a red circle", "red circle") == 0.0  # articles count: the captions are canonical
    assert normalise_text("What colour is the CIRCLE?") == "what colour is the circle"


def test_score_box_is_iou_on_hand_made_boxes() -> None:
    assert score_box((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert score_box((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert score_box((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert score_box(Box(0, 0, 4, 4), Box(1, 1, 3, 3)) == pytest.approx(4 / 16)
    assert score_box(None, (0, 0, 10, 10)) == 0.0
    with pytest.raises(InvalidBoxError, match="4 numbers"):
        score_box((0, 0, 10), (0, 0, 10, 10))


def test_score_grounding_hit_needs_iou_above_one_half() -> None:
    assert score_grounding((0, 0, 10, 10), (0, 0, 10, 10)) == {"iou": 1.0, "hit": True}
    exactly_half = score_grounding((0, 0, 10, 10), (0, 0, 10, 20))
    assert exactly_half == {"iou": 0.5, "hit": False}
    assert score_grounding((0, 0, 10, 10), (0, 0, 10, 19))["hit"]


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def test_report_aggregates_and_prints_an_aligned_table() -> None:
    report = Report()
    for ok in (True, True, False, True):
        report.add_scores("text_to_image", {"all_ok": ok, "shape_ok": True})
    for iou in (0.9, 0.4):
        report.add_scores("grounding", score_grounding((0, 0, 10, 10), (0, 0, 10, 10 / iou)))
    assert report.mean("text_to_image", "all_ok") == 0.75
    assert report.mean("grounding", "iou") == pytest.approx(0.65)
    assert report.mean("grounding", "hit") == 0.5
    assert report.to_dict()["text_to_image"] == {"all_ok": 0.75, "shape_ok": 1.0}
    assert not report.passed()  # 75% < 80% and 50% < 90%

    table = report.format_table()
    lines = table.splitlines()
    assert lines[0].split() == ["task", "metric", "n", "value", "bar", "status"]
    assert set(lines[1]) <= {"-", " "}
    rows = {tuple(line.split()[:2]): line for line in lines[2:]}
    assert rows[("text_to_image", "all_ok")].split()[2:] == ["4", "75.0%", ">=", "80%", "FAIL"]
    assert rows[("text_to_image", "shape_ok")].split()[2:] == ["4", "100.0%"]
    assert rows[("grounding", "iou")].split()[2:] == ["2", "0.650"]
    value_column = lines[0].index("value") + len("value")
    for line in lines[2:]:
        assert line[:value_column].endswith(("%", "0", "5"))  # values right-aligned in one column


def test_report_pass_and_errors() -> None:
    report = Report(bars={("edit", "all_ok"): 0.8})
    assert not report.passed()  # no bar checked yet
    for ok in (True,) * 4 + (False,):
        report.add("edit", "all_ok", ok)
    assert report.passed()
    assert "PASS" in report.format_table()
    with pytest.raises(KeyError, match="caption/accuracy"):
        report.mean("caption", "accuracy")
    with pytest.raises(ConfigError, match="non-finite"):
        report.add("edit", "all_ok", float("nan"))
    assert DONE_BARS[("caption", "accuracy")] == 0.9 and DONE_BARS[("text_to_image", "all_ok")] == 0.8


def test_title_band_never_counts_as_a_shape() -> None:
    scene = Scene(shapes=(Shape("square", "purple", "large", (1, 2)),), title=Title(colour="gray", text="notes"))
    (found,) = analyse_image(render(scene, 64))
    assert (found.kind, found.colour, found.cell) == ("square", "purple", (1, 2))

"""The miniature world: determinism, disjoint splits, exact rendering, and every task's texts."""

from __future__ import annotations

import random
import re
from dataclasses import replace

import numpy as np
import pytest

from seedx_agent.errors import ConfigError
from seedx_agent.miniature.world import (
    BACKGROUNDS,
    BAND_COLOURS,
    COLOURS,
    EDIT_OPS,
    KINDS,
    PALETTE,
    POSITION_PHRASES,
    POSITIONS,
    SPLITS,
    TASKS,
    TITLE_TEXT_COLOUR,
    VOCABULARY,
    EditSample,
    GroundingSample,
    Scene,
    Shape,
    StorySample,
    TextToImageSample,
    Title,
    VQASample,
    caption,
    cell_of_position,
    describe,
    edit,
    grounding,
    make_dataset,
    object_box,
    random_scene,
    referring_phrase,
    render,
    shape_extent,
    shape_mask,
    story,
    text_to_image,
    text_words,
    vqa,
)
from seedx_agent.pipeline.tokens import parse_boxes

BOX_TEXT = re.compile(r"^<box_start>(<loc-\d+>){4}<box_end>$")


def _scene_of(*shapes: Shape, **kwargs: object) -> Scene:
    return Scene(shapes=shapes, **kwargs)


def _first_scene(sample: object) -> Scene:
    if isinstance(sample, StorySample):
        return sample.scenes[0]
    if isinstance(sample, EditSample):
        return sample.source
    return sample.scene


RED_CIRCLE = Shape("circle", "red", "large", (0, 0))
BLUE_SQUARE = Shape("square", "blue", "small", (1, 1))


# ---------------------------------------------------------------------------------------------
# Determinism and splits
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_gives_identical_samples_and_renders(task: str) -> None:
    first = make_dataset("train", 12, task, seed=3)
    second = make_dataset("train", 12, task, seed=3)
    assert first == second
    for one, other in zip(first, second):
        assert render(_first_scene(one), 32).tobytes() == render(_first_scene(other), 32).tobytes()
    # a different seed, or the other split, gives different samples
    assert make_dataset("train", 12, task, seed=4) != first
    assert make_dataset("heldout", 12, task, seed=3) != first


def test_renders_of_a_dataset_are_byte_identical_across_calls() -> None:
    scenes = [sample.scene for sample in make_dataset("heldout", 20, "caption", seed=0)]
    again = [sample.scene for sample in make_dataset("heldout", 20, "caption", seed=0)]
    assert [render(s, 64).tobytes() for s in scenes] == [render(s, 64).tobytes() for s in again]


def test_splits_use_disjoint_seed_ranges() -> None:
    train, heldout = SPLITS["train"], SPLITS["heldout"]
    assert train.seed_range().stop <= heldout.seed_range().start
    assert train.sample_seed(999_999, seed=999) < heldout.sample_seed(0, seed=0) == 10**9
    first_train = {train.sample_seed(i, seed) for seed in range(3) for i in range(1000)}
    first_heldout = {heldout.sample_seed(i, seed) for seed in range(3) for i in range(1000)}
    assert not first_train & first_heldout
    assert len(first_train) == 3000  # (seed, index) -> seed is one-to-one


@pytest.mark.parametrize(("seed", "index", "word"), [(1000, 0, "seed"), (-1, 0, "seed"), (0, 10**6, "index")])
def test_out_of_range_seeds_are_rejected(seed: int, index: int, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        SPLITS["train"].sample_seed(index, seed)


def test_make_dataset_rejects_unknown_split_and_task() -> None:
    with pytest.raises(ConfigError, match="split"):
        make_dataset("test", 2, "caption")
    with pytest.raises(ConfigError, match="task"):
        make_dataset("train", 2, "segmentation")
    with pytest.raises(ConfigError, match="n must be"):
        make_dataset("train", -1, "caption")


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_every_text_uses_only_vocabulary_words(task: str) -> None:
    vocabulary = set(VOCABULARY)
    samples = make_dataset("train", 150, task, seed=0, title_probability=0.3)
    used: set[str] = set()
    for sample in samples:
        for text in sample.texts():
            words = text_words(text)
            assert words and set(words) <= vocabulary, text
            assert " ".join(words).replace(" ?", "?") == text  # nothing outside the word pattern
            used |= set(words)
        if isinstance(sample, GroundingSample):
            assert BOX_TEXT.match(sample.answer)
    assert len(used) > 10


def test_vocabulary_is_small_sorted_and_unique() -> None:
    assert list(VOCABULARY) == sorted(set(VOCABULARY))
    assert len(VOCABULARY) < 120
    assert {"circle", "squares", "orange", "large", "left", "center", "?", "three", "shrinks"} <= set(VOCABULARY)


# ---------------------------------------------------------------------------------------------
# Scene model
# ---------------------------------------------------------------------------------------------


def test_shape_and_scene_validate_their_fields() -> None:
    with pytest.raises(ConfigError, match="colour"):
        Shape("circle", "pink", "large", (0, 0))
    with pytest.raises(ConfigError, match="kind"):
        Shape("star", "red", "large", (0, 0))
    with pytest.raises(ConfigError, match="cell"):
        Shape("circle", "red", "large", (3, 0))
    with pytest.raises(ConfigError, match="distinct cells"):
        _scene_of(RED_CIRCLE, replace(BLUE_SQUARE, cell=(0, 0)))
    with pytest.raises(ConfigError, match="at most 3"):
        _scene_of(*(Shape("circle", "red", "small", (1, col)) for col in range(3)), RED_CIRCLE)
    with pytest.raises(ConfigError, match="row 0"):
        _scene_of(RED_CIRCLE, title=Title())
    with pytest.raises(ConfigError, match="silver"):
        _scene_of(BLUE_SQUARE, background="black", title=Title(colour="gray"))
    with pytest.raises(ConfigError, match="character"):
        _scene_of(RED_CIRCLE, character=1)


def test_positions_and_cells_round_trip() -> None:
    for index, position in enumerate(POSITIONS):
        cell = cell_of_position(position)
        assert cell == (index // 3, index % 3)
        assert Shape("circle", "red", "small", cell).position == position
    assert set(POSITION_PHRASES) == set(POSITIONS)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 45, 64])
def test_render_draws_exact_colours_inside_object_boxes(size: int) -> None:
    rng = random.Random(size)
    for _ in range(30):
        scene = random_scene(rng)
        pixels = np.asarray(render(scene, size))
        assert pixels.shape == (size, size, 3)
        colours = {tuple(c) for c in pixels.reshape(-1, 3).tolist()}
        assert colours == {BACKGROUNDS["white"]} | {PALETTE[s.colour] for s in scene.shapes}
        for shape in scene.shapes:
            x1, y1, x2, y2 = object_box(shape, size)
            assert x2 - x1 == y2 - y1 == shape_extent(shape.size, size)
            is_colour = np.all(pixels == PALETTE[shape.colour], axis=-1)
            region = is_colour[y1:y2, x1:x2]
            np.testing.assert_array_equal(region, shape_mask(shape.kind, x2 - x1))


def test_shapes_keep_a_gap_between_neighbouring_cells() -> None:
    for size in (32, 45, 64, 100):
        boxes = [object_box(Shape("square", "red", "large", (1, col)), size) for col in range(3)]
        assert boxes[0][0] >= 0 and boxes[2][2] <= size
        assert boxes[1][0] - boxes[0][2] >= 2 and boxes[2][0] - boxes[1][2] >= 2


def test_object_box_example_and_extents() -> None:
    assert shape_extent("large", 32) == 8 and shape_extent("small", 32) == 5
    assert shape_extent("large", 64) == 16 and shape_extent("small", 64) == 11
    assert object_box(RED_CIRCLE, 64) == (3, 3, 19, 19)
    assert object_box(BLUE_SQUARE, 64) == (27, 27, 38, 38)
    with pytest.raises(ConfigError, match="image size"):
        object_box(RED_CIRCLE, 8)


@pytest.mark.parametrize("kind", KINDS)
def test_shape_masks_are_symmetric_with_the_expected_fill(kind: str) -> None:
    ideal = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[kind]
    for extent in (5, 8, 11, 16, 40):
        mask = shape_mask(kind, extent)
        np.testing.assert_array_equal(mask, mask[:, ::-1])
        assert abs(mask.mean() - ideal) < 0.1
        if kind != "triangle":
            np.testing.assert_array_equal(mask, mask.T)
    triangle = shape_mask("triangle", 11)
    assert triangle[0].sum() == 1 and triangle[-1].sum() == 11  # apex up, full base


def test_title_band_is_drawn_above_the_shapes() -> None:
    scene = _scene_of(BLUE_SQUARE, title=Title(colour="gray", text="plan"))
    pixels = np.asarray(render(scene, 64))
    band = pixels[:16].reshape(-1, 3)
    assert {tuple(c) for c in band.tolist()} == {BAND_COLOURS["gray"], TITLE_TEXT_COLOUR}
    assert np.all(pixels[16:21] == 255)
    assert describe(scene) == "a slide with a gray title bar showing a small blue square in the center"


def test_black_background_renders_and_is_captioned() -> None:
    scene = _scene_of(RED_CIRCLE, background="black")
    pixels = np.asarray(render(scene, 32))
    assert tuple(pixels[31, 31]) == (0, 0, 0)
    assert describe(scene) == "a large red circle at the top left on a black background"


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


def test_caption_is_canonical() -> None:
    scene = _scene_of(BLUE_SQUARE, RED_CIRCLE)
    sample = caption(scene)
    assert sample.caption == "a large red circle at the top left and a small blue square in the center"
    assert describe(Scene()) == "an empty picture"
    assert Shape("circle", "orange", "small", (0, 0)).phrase(with_size=False) == "an orange circle"


def test_referring_phrase_adds_detail_only_when_needed() -> None:
    twins = _scene_of(
        Shape("circle", "red", "large", (0, 0)),
        Shape("circle", "red", "small", (0, 1)),
        Shape("circle", "red", "small", (2, 2)),
    )
    assert referring_phrase(twins, 0) == "the large red circle"
    assert referring_phrase(twins, 2) == "the small red circle at the bottom right"
    assert referring_phrase(_scene_of(RED_CIRCLE, BLUE_SQUARE), 1) == "the blue square"


def _shapes_named(scene: Scene, phrase: str) -> list[int]:
    words = phrase.removeprefix("the ").split()
    words = [w for w in words if w != "shape"]
    return [
        i
        for i, shape in enumerate(scene.shapes)
        if all(w in (shape.kind, shape.colour, shape.size) for w in words[:3])
        and (len(words) <= 3 or POSITION_PHRASES[shape.position] == " ".join(words[3:]))
    ]


def test_vqa_answers_are_correct() -> None:
    rng = random.Random(0)
    categories = set()
    numbers = ("zero", "one", "two", "three")
    for _ in range(300):
        scene = random_scene(rng)
        sample = vqa(scene, rng)
        assert isinstance(sample, VQASample)
        categories.add(sample.category)
        question = sample.question
        if sample.category == "count":
            if question == "how many shapes are there?":
                expected = len(scene.shapes)
            else:
                word = question.split()[2]
                expected = sum(word in (s.colour, s.kind + "s") for s in scene.shapes)
            assert sample.answer == numbers[expected]
        elif sample.category in ("position", "size"):
            phrase = re.match(r"(?:where is|what size is) (the .+)\?", question).group(1)
            (index,) = _shapes_named(scene, phrase)
            expected = scene.shapes[index].position if sample.category == "position" else scene.shapes[index].size
            assert sample.answer == expected
        else:
            located = [s for s in scene.shapes if question.endswith(POSITION_PHRASES[s.position] + "?")]
            named = [s for s in scene.shapes if f" {s.kind}?" in question or f" {s.colour}?" in question]
            (shape,) = located or named
            assert sample.answer == (shape.colour if sample.category == "colour" else shape.kind)
    assert categories == {"colour", "shape", "count", "position", "size"}


def test_grounding_phrase_is_unique_and_box_matches() -> None:
    rng = random.Random(1)
    for _ in range(100):
        scene = random_scene(rng)
        sample = grounding(scene, rng, image_size=64)
        assert _shapes_named(scene, sample.phrase) == [sample.target]
        assert sample.box == object_box(scene.shapes[sample.target], 64)
        (decoded,) = parse_boxes(sample.answer, (64, 64))
        assert all(abs(a - b) <= 0.3 for a, b in zip(decoded.as_tuple(), sample.box))
    with pytest.raises(ConfigError, match="at least one shape"):
        grounding(Scene(), rng)


def test_text_to_image_prompts_name_what_the_scene_shows() -> None:
    rng = random.Random(2)
    counts = set()
    for _ in range(100):
        sample = text_to_image(rng)
        assert isinstance(sample, TextToImageSample)
        counts.add(len(sample.scene.shapes))
        for shape in sample.scene.shapes:
            phrase = f"{shape.phrase(with_size=sample.mentions_size)} {POSITION_PHRASES[shape.position]}"
            assert phrase in sample.prompt
            if not sample.mentions_size:
                assert shape.size == "large"
    assert counts == {1, 2}


@pytest.mark.parametrize("op", EDIT_OPS)
def test_edit_changes_only_the_named_object(op: str) -> None:
    rng = random.Random(EDIT_OPS.index(op))
    for _ in range(40):
        source = random_scene(rng, min_shapes=2, max_shapes=2)
        sample = edit(source, rng, op=op)
        assert isinstance(sample, EditSample) and sample.op == op and sample.source == source
        target = sample.target
        if op == "add":
            assert target.shapes[:-1] == source.shapes
            new = target.shapes[-1]
            assert sample.instruction == f"add {new.phrase()} {POSITION_PHRASES[new.position]}"
            continue
        if op == "remove":
            assert len(target.shapes) == 1
            (gone,) = [s for s in source.shapes if s not in target.shapes]
            assert sample.instruction == f"remove {referring_phrase(source, source.shapes.index(gone))}"
            continue
        changed = [i for i in range(2) if source.shapes[i] != target.shapes[i]]
        assert len(changed) == 1
        before, after = source.shapes[changed[0]], target.shapes[changed[0]]
        differing = [f for f in ("kind", "colour", "size", "cell") if getattr(before, f) != getattr(after, f)]
        assert differing == {"recolour": ["colour"], "resize": ["size"], "move": ["cell"]}[op]
        phrase = referring_phrase(source, changed[0])
        expected = {
            "recolour": f"make {phrase} {after.colour}",
            "resize": f"make {phrase} {after.size}",
            "move": f"move {phrase} to the {after.position}",
        }[op]
        assert sample.instruction == expected


def test_edit_refuses_impossible_ops() -> None:
    rng = random.Random(0)
    full = _scene_of(*(Shape("circle", c, "small", (1, col)) for col, c in enumerate(COLOURS[:3])))
    with pytest.raises(ConfigError, match="possible ops here"):
        edit(full, rng, op="add")
    with pytest.raises(ConfigError, match="possible ops here"):
        edit(_scene_of(RED_CIRCLE), rng, op="remove")
    with pytest.raises(ConfigError, match="op must be one of"):
        edit(full, rng, op="rotate")


def test_edit_respects_the_title_band() -> None:
    rng = random.Random(5)
    scene = _scene_of(BLUE_SQUARE, title=Title())
    for _ in range(30):
        sample = edit(scene, rng, op=rng.choice(("move", "add")))
        assert all(shape.cell[0] > 0 for shape in sample.target.shapes)


def test_story_keeps_its_hero() -> None:
    rng = random.Random(7)
    sentence_kinds = set()
    for _ in range(40):
        sample = story(rng, 6)
        assert len(sample.scenes) == len(sample.sentences) == 6
        hero = sample.hero
        assert sample.sentences[0] == f"there is {hero.phrase()} {POSITION_PHRASES[hero.position]}"
        for previous, scene, sentence in zip(sample.scenes, sample.scenes[1:], sample.sentences[1:]):
            assert scene.character == 0
            assert (scene.shapes[0].kind, scene.shapes[0].colour) == (hero.kind, hero.colour)
            pairs = [(s.colour, s.kind) for s in scene.shapes]
            assert len(set(pairs)) == len(pairs)  # "the red circle" stays unique
            assert scene != previous
            sentence_kinds |= set(sentence.split())
    assert {"moves", "meets", "leaves", "grows", "shrinks"} <= sentence_kinds
    with pytest.raises(ConfigError, match="steps"):
        story(rng, 0)

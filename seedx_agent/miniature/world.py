"""The procedural world the miniature SEED-X is trained and evaluated on.

A scene holds up to three flat shapes (circle, square, triangle; six colours; small or large) on a 3x3
grid, optionally under a title band. Rendering is pixel exact (no anti-aliasing) so that
``evaluate.py`` can read images back; every task (captions, VQA, grounding, text-to-image, edits,
stories) is sampled from a seeded ``random.Random`` and uses only the words in ``VOCABULARY``.

Splits: sample ``i`` of ``make_dataset(split, n, task, seed)`` is drawn from the integer seed
``split.offset + seed * 10**6 + i``. The train offset is 0 and the held-out offset 10**9, and
``seed < 1000`` and ``i < 10**6`` are enforced, so the two splits never share a seed. (The world is
small, so a held-out *scene* can coincide with a train scene by chance; what is held out is the
seed, as in any procedurally generated benchmark.)
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from seedx_agent.errors import ConfigError
from seedx_agent.pipeline.tokens import encode_box
from seedx_agent.protocol.tool_calls import DESCRIBE_QUESTION

__all__ = [
    "BACKGROUNDS",
    "BAND_COLOURS",
    "BAND_COLOURS_FOR_BACKGROUND",
    "CAPTION_QUESTION",
    "COLOURS",
    "DEFAULT_IMAGE_SIZE",
    "EDIT_OPS",
    "GRID",
    "KINDS",
    "MAX_SHAPES",
    "MIN_IMAGE_SIZE",
    "NUMBER_WORDS",
    "PALETTE",
    "POSITIONS",
    "POSITION_PHRASES",
    "SIZES",
    "SIZE_SCALE",
    "SPLITS",
    "TASKS",
    "TITLE_WORDS",
    "VOCABULARY",
    "CaptionSample",
    "EditSample",
    "GroundingSample",
    "Sample",
    "Scene",
    "Shape",
    "StorySample",
    "TextToImageSample",
    "Title",
    "VQASample",
    "WorldSplit",
    "caption",
    "cell_of_position",
    "describe",
    "edit",
    "grounding",
    "make_dataset",
    "make_sample",
    "object_box",
    "random_scene",
    "random_shape",
    "referring_phrase",
    "render",
    "shape_extent",
    "shape_mask",
    "story",
    "text_to_image",
    "text_words",
    "vqa",
]

# ---------------------------------------------------------------------------------------------
# The world's constants
# ---------------------------------------------------------------------------------------------

KINDS: tuple[str, ...] = ("circle", "square", "triangle")
# Saturated colours far apart in RGB (closest pair, orange/yellow, is 110 apart) and far from
# white, black and the gray title band, so a pixel's colour survives blur and noise.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 20, 20),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 0),
    "purple": (140, 40, 180),
    "orange": (250, 120, 0),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SIZES: tuple[str, ...] = ("small", "large")
# Side of a shape's box as a fraction of a cell's side. 0.75 keeps at least 2 px between large
# shapes in neighbouring cells at 32 px, so they never touch even after a 3x3 blur.
SIZE_SCALE: dict[str, float] = {"small": 0.5, "large": 0.75}
GRID = 3
MAX_SHAPES = 3
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
POSITION_PHRASES: dict[str, str] = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}
# Band colours stay >= 100 RGB units off every background->palette line, so no band pixel reads as
# a shape; which bands suit which background is fixed by BAND_COLOURS_FOR_BACKGROUND.
BAND_COLOURS: dict[str, tuple[int, int, int]] = {"gray": (56, 56, 56), "black": (24, 24, 24), "silver": (200, 200, 200)}
BAND_COLOURS_FOR_BACKGROUND: dict[str, tuple[str, ...]] = {"white": ("gray", "black"), "black": ("silver",)}
TITLE_TEXT_COLOUR = (255, 255, 255)
TITLE_BAND_FRACTION = 0.25  # the band covers the top quarter; titled scenes keep row 0 free
# Title text is decoration: at 32-64 px it is too small to read, so no task asks about it.
TITLE_WORDS: tuple[str, ...] = ("shapes", "colours", "plan", "ideas", "notes", "summary")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")
EDIT_OPS: tuple[str, ...] = ("recolour", "move", "add", "remove", "resize")
TASKS: tuple[str, ...] = ("caption", "vqa", "grounding", "text_to_image", "edit", "story")
MIN_IMAGE_SIZE = 24
MAX_IMAGE_SIZE = 2048
# Pixel size used for grounding boxes when none is given. Boxes are encoded relative to the image
# (reference §7.1), so the location bins barely depend on it.
DEFAULT_IMAGE_SIZE = 64
MAX_STORY_STEPS = 8
# The question a captioning sample is asked with (training and evaluation share it; the tool protocol's own).
CAPTION_QUESTION = DESCRIBE_QUESTION

_PLURALS = {kind: kind + "s" for kind in KINDS}

# Every word any template below can produce; the miniature tokenizer is trained on this list.
# Texts are split into words by ``text_words`` (letters runs and "?").
VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        {
            *KINDS,
            *_PLURALS.values(),
            *COLOURS,
            *SIZES,
            *(word for position in POSITIONS for word in position.split()),
            *(word for phrase in POSITION_PHRASES.values() for word in phrase.split()),
            *BACKGROUNDS,
            *BAND_COLOURS,
            *TITLE_WORDS,
            *NUMBER_WORDS,
            *"a an and the empty picture slide with title bar showing background on".split(),  # captions, prompts
            *"what colour shape shapes is where how many are there size ?".split(),  # questions
            *"make move to add remove".split(),  # edits
            *"moves meets leaves grows shrinks".split(),  # stories
        }
    )
)

_WORD_RE = re.compile(r"[a-z]+|\?")


def text_words(text: str) -> list[str]:
    """Split a world text into the words of ``VOCABULARY`` (lower-case letter runs and ``?``)."""
    return _WORD_RE.findall(text.lower())


# ---------------------------------------------------------------------------------------------
# Scene model
# ---------------------------------------------------------------------------------------------


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class Shape:
    """One flat shape: its kind, colour, size and (row, col) cell of the 3x3 grid."""

    kind: str
    colour: str
    size: str
    cell: tuple[int, int]

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        _check_choice("colour", self.colour, COLOURS)
        _check_choice("size", self.size, SIZES)
        cell = tuple(self.cell)
        is_index = [isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in cell]
        if len(cell) != 2 or not all(is_index) or not all(0 <= v < GRID for v in cell):
            raise ConfigError(f"cell must be (row, col) with integers in [0, {GRID - 1}], got {self.cell!r}")
        object.__setattr__(self, "cell", (int(cell[0]), int(cell[1])))

    @property
    def position(self) -> str:
        """The cell's name, e.g. ``"top left"``."""
        return POSITIONS[self.cell[0] * GRID + self.cell[1]]

    def phrase(self, *, with_size: bool = True) -> str:
        """Indefinite noun phrase, e.g. ``"a large red circle"`` (``"an orange circle"`` without size)."""
        words = [self.size] if with_size else []
        words += [self.colour, self.kind]
        return _with_article(" ".join(words))


def _with_article(noun_phrase: str) -> str:
    return ("an " if noun_phrase[0] in "aeiou" else "a ") + noun_phrase


def cell_of_position(position: str) -> tuple[int, int]:
    """``"top left"`` -> ``(0, 0)``; the inverse of ``Shape.position``."""
    _check_choice("position", position, POSITIONS)
    index = POSITIONS.index(position)
    return (index // GRID, index % GRID)


@dataclass(frozen=True)
class Title:
    """A slide-like title band across the top of the image, with optional (decorative) text."""

    colour: str = "gray"
    text: str | None = None

    def __post_init__(self) -> None:
        _check_choice("title colour", self.colour, BAND_COLOURS)
        if self.text is not None and not self.text.strip():
            raise ConfigError("title text must be None or a non-empty string, got an empty string")


@dataclass(frozen=True)
class Scene:
    """Up to three shapes at distinct cells on a plain background, optionally under a title band.

    ``character`` is the index of the story's hero in ``shapes`` (None outside stories). A titled
    scene keeps the top row free because the band covers it.
    """

    shapes: tuple[Shape, ...] = ()
    background: str = "white"
    title: Title | None = None
    character: int | None = None

    def __post_init__(self) -> None:
        shapes = tuple(self.shapes)
        object.__setattr__(self, "shapes", shapes)
        if len(shapes) > MAX_SHAPES:
            raise ConfigError(f"a scene holds at most {MAX_SHAPES} shapes, got {len(shapes)}")
        if not all(isinstance(shape, Shape) for shape in shapes):
            raise ConfigError("scene shapes must be Shape instances")
        cells = [shape.cell for shape in shapes]
        if len(set(cells)) != len(cells):
            raise ConfigError(f"scene shapes must occupy distinct cells, got cells {cells}")
        _check_choice("background", self.background, BACKGROUNDS)
        if self.title is not None:
            allowed = BAND_COLOURS_FOR_BACKGROUND[self.background]
            if self.title.colour not in allowed:
                raise ConfigError(
                    f"title band colour {self.title.colour!r} cannot be told from shapes on a {self.background} "
                    f"background; use one of {list(allowed)}"
                )
            if any(row == 0 for row, _ in cells):
                raise ConfigError(f"a titled scene keeps row 0 free for the band, got cells {cells}")
        if self.character is not None and not 0 <= self.character < len(shapes):
            raise ConfigError(f"character index {self.character} is not a shape index (scene has {len(shapes)})")

    def free_cells(self) -> list[tuple[int, int]]:
        """Cells a new or moved shape may take (row 0 is reserved under a title band)."""
        taken = {shape.cell for shape in self.shapes}
        first_row = 1 if self.title is not None else 0
        return [(row, col) for row in range(first_row, GRID) for col in range(GRID) if (row, col) not in taken]

    def replace_shape(self, index: int, shape: Shape) -> Scene:
        """A copy with ``shapes[index]`` replaced; everything else unchanged."""
        shapes = list(self.shapes)
        shapes[index] = shape
        return replace(self, shapes=tuple(shapes))

    def add_shape(self, shape: Shape) -> Scene:
        """A copy with ``shape`` appended."""
        return replace(self, shapes=(*self.shapes, shape))

    def remove_shape(self, index: int) -> Scene:
        """A copy without ``shapes[index]`` (the hero index is shifted or dropped accordingly)."""
        character = self.character
        if character is not None:
            character = None if character == index else character - (character > index)
        return replace(self, shapes=self.shapes[:index] + self.shapes[index + 1 :], character=character)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _check_image_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"image size must be an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {size!r}")
    return size


def shape_extent(size_name: str, image_size: int) -> int:
    """Side in pixels of a shape's box. The same for every cell, so a shape looks identical anywhere."""
    _check_choice("size", size_name, SIZES)
    return max(2, _round_half_up(SIZE_SCALE[size_name] * image_size / GRID))


def shape_mask(kind: str, extent: int) -> np.ndarray:
    """Boolean (extent, extent) mask of a shape filling its box, sampled at pixel centres.

    Circle: inscribed disc; square: the whole box; triangle: apex at the top centre, base along the
    bottom edge. Left-right symmetric at every size (unlike polygon rasterisers).
    """
    _check_choice("kind", kind, KINDS)
    coords = (np.arange(extent) + 0.5) / extent - 0.5  # pixel centres in (-0.5, 0.5)
    u = coords[None, :]  # (1, extent) horizontal
    v = coords[:, None]  # (extent, 1) vertical, downwards
    eps = 1e-9  # keep pixels lying exactly on the boundary
    if kind == "square":
        return np.ones((extent, extent), dtype=bool)
    if kind == "circle":
        return u * u + v * v <= 0.25 + eps
    return np.abs(u) <= (v + 0.5) / 2 + eps


def object_box(shape: Shape, size: int) -> tuple[int, int, int, int]:
    """Pixel box ``(x1, y1, x2, y2)`` (x2, y2 exclusive) of ``shape`` in a ``size`` x ``size`` render."""
    _check_image_size(size)
    extent = shape_extent(shape.size, size)
    cell_side = size / GRID
    row, col = shape.cell
    x1 = _round_half_up((col + 0.5) * cell_side - extent / 2)
    y1 = _round_half_up((row + 0.5) * cell_side - extent / 2)
    return (x1, y1, x1 + extent, y1 + extent)


def _title_band_height(size: int) -> int:
    return _round_half_up(size * TITLE_BAND_FRACTION)


def _draw_title(title: Title, size: int) -> Image.Image:
    height = _title_band_height(size)
    band = Image.new("RGB", (size, height), BAND_COLOURS[title.colour])
    if title.text is not None and height >= 8:
        draw = ImageDraw.Draw(band)
        draw.fontmode = "1"  # no anti-aliasing: every pixel is band or text colour
        if features.check("freetype2"):
            font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=max(6, height * 2 // 3))
        else:
            font = ImageFont.load_default()
        left, top, _, bottom = draw.textbbox((0, 0), title.text, font=font)
        draw.text(
            (max(1, height // 4) - left, (height - (bottom - top)) // 2 - top),
            title.text,
            fill=TITLE_TEXT_COLOUR,
            font=font,
        )
    return band


def render(scene: Scene, size: int) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image; shapes are filled with their exact palette colour."""
    _check_image_size(size)
    pixels = np.empty((size, size, 3), dtype=np.uint8)  # (height, width, rgb)
    pixels[:] = BACKGROUNDS[scene.background]
    if scene.title is not None:
        band = np.asarray(_draw_title(scene.title, size))
        pixels[: band.shape[0]] = band
    for shape in scene.shapes:
        x1, y1, x2, y2 = object_box(shape, size)
        region = pixels[y1:y2, x1:x2]  # a view: writing into it draws on the image
        region[shape_mask(shape.kind, x2 - x1)] = PALETTE[shape.colour]
    return Image.fromarray(pixels, mode="RGB")


# ---------------------------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------------------------


def _join(parts: Sequence[str]) -> str:
    return " and ".join(parts)


def _object_phrase(shape: Shape, *, with_size: bool = True) -> str:
    return f"{shape.phrase(with_size=with_size)} {POSITION_PHRASES[shape.position]}"


def _reading_order(scene: Scene) -> list[Shape]:
    return sorted(scene.shapes, key=lambda shape: shape.cell)


def describe(scene: Scene) -> str:
    """Deterministic canonical caption, shapes in reading order.

    e.g. ``"a large red circle at the top left and a small blue square in the center"``.
    """
    objects = _join([_object_phrase(shape) for shape in _reading_order(scene)]) or "an empty picture"
    text = objects
    if scene.title is not None:
        text = f"a slide with a {scene.title.colour} title bar showing {objects}"
    if scene.background != "white":
        text += f" on a {scene.background} background"
    return text


def _unique(scene: Scene, index: int, attributes: Sequence[str]) -> bool:
    target = scene.shapes[index]
    return sum(all(getattr(s, a) == getattr(target, a) for a in attributes) for s in scene.shapes) == 1


def referring_phrase(scene: Scene, index: int) -> str:
    """Canonical definite phrase picking out ``scene.shapes[index]``: ``"the red circle"``.

    Adds the size, then the position, only when needed to make the phrase unique in the scene.
    """
    shape = scene.shapes[index]
    if _unique(scene, index, ("colour", "kind")):
        return f"the {shape.colour} {shape.kind}"
    if _unique(scene, index, ("size", "colour", "kind")):
        return f"the {shape.size} {shape.colour} {shape.kind}"
    return f"the {shape.size} {shape.colour} {shape.kind} {POSITION_PHRASES[shape.position]}"


def _referring_options(scene: Scene, index: int) -> list[str]:
    """Every unique phrase for grounding, from "the circle" to "the small red circle"."""
    shape = scene.shapes[index]
    forms = {
        ("kind",): f"the {shape.kind}",
        ("colour",): f"the {shape.colour} shape",
        ("colour", "kind"): f"the {shape.colour} {shape.kind}",
        ("size", "colour", "kind"): f"the {shape.size} {shape.colour} {shape.kind}",
    }
    options = [phrase for attributes, phrase in forms.items() if _unique(scene, index, attributes)]
    return options or [referring_phrase(scene, index)]


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionSample:
    """A scene and its canonical caption."""

    scene: Scene
    caption: str

    def texts(self) -> tuple[str, ...]:
        return (self.caption,)


@dataclass(frozen=True)
class VQASample:
    """A question about a scene with a short canonical answer; ``category`` names what is asked."""

    scene: Scene
    question: str
    answer: str
    category: Literal["colour", "shape", "count", "position", "size"]

    def texts(self) -> tuple[str, ...]:
        return (self.question, self.answer)


@dataclass(frozen=True)
class GroundingSample:
    """A referring phrase, the index of the shape it names, and that shape's box.

    ``box`` is in pixels of an ``image_size`` render; ``answer`` is its box-token string.
    """

    scene: Scene
    phrase: str
    target: int
    box: tuple[int, int, int, int]
    image_size: int
    answer: str

    def texts(self) -> tuple[str, ...]:
        return (self.phrase,)


@dataclass(frozen=True)
class TextToImageSample:
    """A prompt and the scene it asks for; a prompt that omits sizes asks for large shapes."""

    prompt: str
    scene: Scene
    mentions_size: bool

    def texts(self) -> tuple[str, ...]:
        return (self.prompt,)


@dataclass(frozen=True)
class EditSample:
    """An instruction turning ``source`` into ``target``; nothing the instruction does not name changes."""

    source: Scene
    target: Scene
    instruction: str
    op: Literal["recolour", "move", "add", "remove", "resize"]

    def texts(self) -> tuple[str, ...]:
        return (self.instruction,)


@dataclass(frozen=True)
class StorySample:
    """A sequence of scenes, one sentence each, around a hero of fixed kind and colour."""

    scenes: tuple[Scene, ...]
    sentences: tuple[str, ...]
    hero: Shape

    def texts(self) -> tuple[str, ...]:
        return self.sentences


Sample = CaptionSample | VQASample | GroundingSample | TextToImageSample | EditSample | StorySample


def random_shape(rng: random.Random, cell: tuple[int, int]) -> Shape:
    """A shape with uniformly drawn kind, colour and size at ``cell``."""
    return Shape(rng.choice(KINDS), rng.choice(COLOURS), rng.choice(SIZES), cell)


def random_scene(
    rng: random.Random,
    *,
    min_shapes: int = 1,
    max_shapes: int = MAX_SHAPES,
    title_probability: float = 0.0,
    backgrounds: Sequence[str] = ("white",),
) -> Scene:
    """A scene with a uniform number of shapes in [min_shapes, max_shapes] at distinct random cells."""
    if not 0 <= min_shapes <= max_shapes <= MAX_SHAPES:
        raise ConfigError(
            f"need 0 <= min_shapes <= max_shapes <= {MAX_SHAPES}, got min_shapes={min_shapes}, max_shapes={max_shapes}"
        )
    if not 0.0 <= title_probability <= 1.0:
        raise ConfigError(f"title_probability must be in [0, 1], got {title_probability}")
    for background in backgrounds:
        _check_choice("background", background, BACKGROUNDS)
    background = rng.choice(tuple(backgrounds))
    title = None
    if rng.random() < title_probability:
        band_colours = BAND_COLOURS_FOR_BACKGROUND[background]
        text = rng.choice((None, *TITLE_WORDS))
        title = Title(colour=rng.choice(band_colours), text=text)
    first_row = 1 if title is not None else 0
    cells = [(row, col) for row in range(first_row, GRID) for col in range(GRID)]
    count = rng.randint(min_shapes, max_shapes)
    shapes = tuple(random_shape(rng, cell) for cell in rng.sample(cells, count))
    return Scene(shapes=shapes, background=background, title=title)


def caption(scene: Scene) -> CaptionSample:
    """The captioning sample of ``scene`` (see ``describe`` for the text)."""
    return CaptionSample(scene=scene, caption=describe(scene))


def vqa(scene: Scene, rng: random.Random) -> VQASample:
    """One question about colour, shape, count, position or size, with its canonical short answer."""
    if not scene.shapes:
        return VQASample(scene, "how many shapes are there?", NUMBER_WORDS[0], "count")
    category = rng.choice(("colour", "shape", "count", "position", "size"))
    index = rng.randrange(len(scene.shapes))
    shape = scene.shapes[index]
    if category == "colour":
        if _unique(scene, index, ("kind",)) and rng.random() < 0.5:
            question = f"what colour is the {shape.kind}?"
        else:
            question = f"what colour is the shape {POSITION_PHRASES[shape.position]}?"
        return VQASample(scene, question, shape.colour, "colour")
    if category == "shape":
        if _unique(scene, index, ("colour",)) and rng.random() < 0.5:
            question = f"what shape is {shape.colour}?"
        else:
            question = f"what shape is {POSITION_PHRASES[shape.position]}?"
        return VQASample(scene, question, shape.kind, "shape")
    if category == "count":
        form = rng.choice(("all", "colour", "kind"))
        if form == "all":
            question, count = "how many shapes are there?", len(scene.shapes)
        elif form == "colour":  # half the time a colour that is present, so "zero" does not dominate
            colour = shape.colour if rng.random() < 0.5 else rng.choice(COLOURS)
            question = f"how many {colour} shapes are there?"
            count = sum(s.colour == colour for s in scene.shapes)
        else:
            kind = shape.kind if rng.random() < 0.5 else rng.choice(KINDS)
            question = f"how many {_PLURALS[kind]} are there?"
            count = sum(s.kind == kind for s in scene.shapes)
        return VQASample(scene, question, NUMBER_WORDS[count], "count")
    # position and size questions must name the shape without giving its position away
    candidates = [i for i in range(len(scene.shapes)) if _unique(scene, i, ("size", "colour", "kind"))]
    if not candidates:  # every shape needs its position to be named: ask its colour instead
        return VQASample(scene, f"what colour is the shape {POSITION_PHRASES[shape.position]}?", shape.colour, "colour")
    index = rng.choice(candidates)
    shape = scene.shapes[index]
    phrase = referring_phrase(scene, index)
    if category == "position":
        return VQASample(scene, f"where is {phrase}?", shape.position, "position")
    return VQASample(scene, f"what size is {phrase}?", shape.size, "size")


def grounding(scene: Scene, rng: random.Random, *, image_size: int = DEFAULT_IMAGE_SIZE) -> GroundingSample:
    """A phrase that is unique in ``scene`` and the box (pixels at ``image_size``) of the shape it names."""
    if not scene.shapes:
        raise ConfigError("grounding needs a scene with at least one shape, got an empty scene")
    index = rng.randrange(len(scene.shapes))
    phrase = rng.choice(_referring_options(scene, index))
    box = object_box(scene.shapes[index], image_size)
    return GroundingSample(scene, phrase, index, box, image_size, encode_box(box, (image_size, image_size)))


def text_to_image(rng: random.Random, *, two_object_probability: float = 0.3) -> TextToImageSample:
    """A prompt naming shape, colour and position of one (or two) objects, and the scene it asks for.

    Half the prompts leave the size out; their target shapes are then large.
    """
    if not 0.0 <= two_object_probability <= 1.0:
        raise ConfigError(f"two_object_probability must be in [0, 1], got {two_object_probability}")
    count = 2 if rng.random() < two_object_probability else 1
    mentions_size = rng.random() < 0.5
    cells = rng.sample([(row, col) for row in range(GRID) for col in range(GRID)], count)
    shapes = [random_shape(rng, cell) for cell in sorted(cells)]
    if not mentions_size:
        shapes = [replace(shape, size="large") for shape in shapes]
    prompt = _join([_object_phrase(shape, with_size=mentions_size) for shape in shapes])
    return TextToImageSample(prompt=prompt, scene=Scene(shapes=tuple(shapes)), mentions_size=mentions_size)


def _feasible_ops(scene: Scene) -> list[str]:
    has_room = bool(scene.free_cells())
    ops = []
    if scene.shapes:
        ops += ["recolour", "resize"]
        if has_room:
            ops.append("move")
    if has_room and len(scene.shapes) < MAX_SHAPES:
        ops.append("add")
    if len(scene.shapes) >= 2:
        ops.append("remove")
    return [op for op in EDIT_OPS if op in ops]


def edit(scene: Scene, rng: random.Random, *, op: str | None = None) -> EditSample:
    """An edit instruction on ``scene`` and the resulting scene; ``op`` is drawn among feasible ones if None.

    recolour / move / resize change one named shape, add appends one shape at a free cell, remove
    deletes one (only from scenes with two or more shapes, so the target is never empty).
    """
    feasible = _feasible_ops(scene)
    if op is None:
        if not feasible:
            raise ConfigError("no edit is possible on this scene; give it at least one shape")
        op = rng.choice(feasible)
    _check_choice("op", op, EDIT_OPS)
    if op not in feasible:
        raise ConfigError(
            f"edit op {op!r} is not possible on a scene with {len(scene.shapes)} shape(s); "
            f"possible ops here: {feasible}"
        )
    if op == "add":
        new_shape = random_shape(rng, rng.choice(scene.free_cells()))
        instruction = f"add {_object_phrase(new_shape)}"
        return EditSample(scene, scene.add_shape(new_shape), instruction, "add")
    index = rng.randrange(len(scene.shapes))
    shape = scene.shapes[index]
    phrase = referring_phrase(scene, index)
    if op == "remove":
        return EditSample(scene, scene.remove_shape(index), f"remove {phrase}", "remove")
    if op == "recolour":
        colour = rng.choice([c for c in COLOURS if c != shape.colour])
        return EditSample(
            scene, scene.replace_shape(index, replace(shape, colour=colour)), f"make {phrase} {colour}", "recolour"
        )
    if op == "resize":
        size = "small" if shape.size == "large" else "large"
        return EditSample(
            scene, scene.replace_shape(index, replace(shape, size=size)), f"make {phrase} {size}", "resize"
        )
    cell = rng.choice(scene.free_cells())
    moved = replace(shape, cell=cell)
    return EditSample(scene, scene.replace_shape(index, moved), f"move {phrase} to the {moved.position}", "move")


def _neighbour_cells(cell: tuple[int, int]) -> list[tuple[int, int]]:
    row, col = cell
    steps = ((-1, 0), (1, 0), (0, -1), (0, 1))
    return [(row + dr, col + dc) for dr, dc in steps if 0 <= row + dr < GRID and 0 <= col + dc < GRID]


def story(rng: random.Random, steps: int = 4) -> StorySample:
    """``steps`` scenes with one sentence each: a hero shape moves, grows or shrinks, and meets other shapes.

    The hero is ``shapes[0]`` of every scene (``character == 0``) and keeps its kind and colour; other
    shapes differ from it and from each other in colour or kind, so "the red circle" is always unique.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STORY_STEPS:
        raise ConfigError(f"steps must be an integer in [1, {MAX_STORY_STEPS}], got {steps!r}")
    all_cells = [(row, col) for row in range(GRID) for col in range(GRID)]
    hero = random_shape(rng, rng.choice(all_cells))
    scene = Scene(shapes=(hero,), character=0)
    scenes, sentences = [scene], [f"there is {_object_phrase(hero)}"]
    hero_name = f"the {hero.colour} {hero.kind}"
    while len(scenes) < steps:
        current = scene.shapes[0]
        free = scene.free_cells()
        meet_cells = [cell for cell in _neighbour_cells(current.cell) if cell in free]
        actions = ["move", "resize"]
        if meet_cells and len(scene.shapes) < MAX_SHAPES:
            actions.append("meet")
        if len(scene.shapes) > 1:
            actions.append("leave")
        action = rng.choice(actions)
        if action == "move":
            moved = replace(current, cell=rng.choice(free))
            scene = scene.replace_shape(0, moved)
            sentence = f"{hero_name} moves to the {moved.position}"
        elif action == "resize":
            grows = current.size == "small"
            scene = scene.replace_shape(0, replace(current, size="large" if grows else "small"))
            sentence = f"{hero_name} {'grows' if grows else 'shrinks'}"
        elif action == "meet":
            taken = {(s.colour, s.kind) for s in scene.shapes}
            options = [(c, k) for c in COLOURS for k in KINDS if (c, k) not in taken]
            colour, kind = rng.choice(options)
            friend = Shape(kind, colour, rng.choice(SIZES), rng.choice(meet_cells))
            scene = scene.add_shape(friend)
            sentence = f"{hero_name} meets {_object_phrase(friend)}"
        else:
            index = rng.randrange(1, len(scene.shapes))
            leaving = scene.shapes[index]
            scene = scene.remove_shape(index)
            sentence = f"the {leaving.colour} {leaving.kind} leaves"
        scenes.append(scene)
        sentences.append(sentence)
    return StorySample(scenes=tuple(scenes), sentences=tuple(sentences), hero=hero)


# ---------------------------------------------------------------------------------------------
# Splits and datasets
# ---------------------------------------------------------------------------------------------

SEEDS_PER_RUN = 10**6  # samples one (split, seed) pair can hold
MAX_RUN_SEED = 1000  # seeds per split; 1000 * 10**6 = 10**9 = the held-out offset


@dataclass(frozen=True)
class WorldSplit:
    """A split of the world: a disjoint range of integer sample seeds ``[offset, offset + 10**9)``."""

    name: str
    offset: int

    def sample_seed(self, index: int, seed: int = 0) -> int:
        """The integer seed of sample ``index`` of run ``seed``; unique across splits, runs and indices."""
        if not 0 <= seed < MAX_RUN_SEED:
            raise ConfigError(f"seed must be in [0, {MAX_RUN_SEED}), got {seed}")
        if not 0 <= index < SEEDS_PER_RUN:
            raise ConfigError(f"sample index must be in [0, {SEEDS_PER_RUN}), got {index}")
        return self.offset + seed * SEEDS_PER_RUN + index

    def seed_range(self) -> range:
        """Every sample seed this split can use."""
        return range(self.offset, self.offset + MAX_RUN_SEED * SEEDS_PER_RUN)


SPLITS: dict[str, WorldSplit] = {
    "train": WorldSplit("train", 0),
    "heldout": WorldSplit("heldout", MAX_RUN_SEED * SEEDS_PER_RUN),
}


def make_sample(
    task: str,
    rng: random.Random,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    story_steps: int = 4,
    title_probability: float = 0.0,
) -> Sample:
    """One sample of ``task`` drawn from ``rng``."""
    _check_choice("task", task, TASKS)
    if task == "text_to_image":
        return text_to_image(rng)
    if task == "story":
        return story(rng, story_steps)
    if task == "edit":
        return edit(random_scene(rng, title_probability=title_probability), rng)
    scene = random_scene(rng, title_probability=title_probability)
    if task == "caption":
        return caption(scene)
    if task == "vqa":
        return vqa(scene, rng)
    return grounding(scene, rng, image_size=image_size)


def make_dataset(
    split: str,
    n: int,
    task: str,
    seed: int = 0,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    story_steps: int = 4,
    title_probability: float = 0.0,
) -> list[Sample]:
    """``n`` samples of ``task`` from ``split`` ("train" or "heldout"), identical for identical arguments.

    Sample ``i`` uses ``random.Random(sample_seed * len(TASKS) + task_index)``, so tasks draw
    independent streams and the splits' seed ranges stay disjoint.
    """
    _check_choice("split", split, tuple(SPLITS))
    _check_choice("task", task, TASKS)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= SEEDS_PER_RUN:
        raise ConfigError(f"n must be an integer in [0, {SEEDS_PER_RUN}], got {n!r}")
    world_split = SPLITS[split]
    task_index = TASKS.index(task)
    samples = []
    for index in range(n):
        rng = random.Random(world_split.sample_seed(index, seed) * len(TASKS) + task_index)
        samples.append(
            make_sample(task, rng, image_size=image_size, story_steps=story_steps, title_probability=title_probability)
        )
    return samples

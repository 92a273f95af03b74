"""``seedx_agent.graphs.deck``: a deck written from small generated pictures, reopened with python-pptx and checked
for titles, bullets, notes, fitting text, undistorted pictures, same-geometry previews with real bullet dots, and
all-or-nothing writes."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

pytest.importorskip("pptx")
from pptx import Presentation
from pptx.enum.shapes import MSO_SHAPE_TYPE
from pptx.oxml.ns import qn
from seedx_agent.graphs import deck
from seedx_agent.graphs.deck import DeckFiles, DeckSlide, write_deck

from seedx_agent.errors import ConfigError, DependencyMissingError

EMU_PER_PT = 12700
LONG = (
    "a long bullet that keeps describing the shapes in the picture, where each one sits and how the last "
    "edit moved the blue square from the left side over to the right side of the scene"
)


def checkerboard(path: Path, width: int, height: int) -> Path:
    """A two-colour checkerboard of 1-pixel cells: any smoothing when upscaled makes in-between colours."""
    cells = (np.indices((height, width)).sum(axis=0) % 2).astype(bool)
    pixels = np.where(cells[..., None], np.array([255, 0, 0], np.uint8), np.array([0, 0, 255], np.uint8))
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path)
    return path


@pytest.fixture
def slides(tmp_path: Path) -> list[DeckSlide]:
    square = checkerboard(tmp_path / "square.png", 32, 32)
    wide = checkerboard(tmp_path / "wide.png", 64, 40)
    return [
        DeckSlide(
            title="Shapes and colours",
            bullets=["a red circle at the top left"],
            layout="title",
            picture=square,
            notes="generated: seed 0, prompt 'a red circle'",
        ),
        DeckSlide(
            title="Shapes and colours: moved",
            bullets=["move the blue square to the right", "a red circle at the top left"],
            layout="picture_right",
            picture=wide,
            notes="edited from image abc123",
        ),
        DeckSlide(title="Many words", bullets=[LONG, LONG, LONG], layout="picture_left", picture=square),
    ]


def pt(emu: int) -> float:
    return emu / EMU_PER_PT


def rect(shape: object) -> tuple[float, float, float, float]:
    return (shape.left, shape.top, shape.left + shape.width, shape.top + shape.height)  # type: ignore[attr-defined]


def overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def text_boxes(page: object) -> list[object]:
    return [s for s in page.shapes if s.shape_type == MSO_SHAPE_TYPE.TEXT_BOX]  # type: ignore[attr-defined]


def pictures(page: object) -> list[object]:
    return [s for s in page.shapes if s.shape_type == MSO_SHAPE_TYPE.PICTURE]  # type: ignore[attr-defined]


def font_size(shape: object) -> float:
    sizes = {run.font.size.pt for p in shape.text_frame.paragraphs for run in p.runs}  # type: ignore[attr-defined]
    assert len(sizes) == 1, sizes
    return sizes.pop()


def test_deck_round_trip(slides: list[DeckSlide], tmp_path: Path) -> None:
    files = write_deck(slides, tmp_path / "out", deck_title="A test deck")
    assert isinstance(files, DeckFiles)
    assert files.pptx == tmp_path / "out" / "deck.pptx"
    presentation = Presentation(str(files.pptx))
    assert presentation.slide_width * 9 == presentation.slide_height * 16  # 16:9
    assert presentation.core_properties.title == "A test deck"
    assert len(presentation.slides) == len(slides) == len(files.previews)
    for slide, page in zip(slides, presentation.slides):
        assert page.shapes.title.text == slide.title
        (box,) = text_boxes(page)
        texts = [p.text for p in box.text_frame.paragraphs]
        assert texts == slide.bullets
        assert all(p._p.pPr.find(qn("a:buChar")) is not None for p in box.text_frame.paragraphs)
        if slide.notes:
            assert page.notes_slide.notes_text_frame.text == slide.notes
        (picture,) = pictures(page)
        with Image.open(slide.picture) as source:
            assert picture.width / picture.height == pytest.approx(source.width / source.height, rel=1e-4)
        assert 0 <= picture.left and 0 <= picture.top
        assert picture.left + picture.width <= presentation.slide_width
        assert picture.top + picture.height <= presentation.slide_height
        assert not overlaps(rect(picture), rect(box))
        assert not overlaps(rect(picture), rect(page.shapes.title))
    for path in files.previews:
        with Image.open(path) as preview:
            assert preview.size == (960, 540)
    assert [path.name for path in files.previews] == ["slide_00.png", "slide_01.png", "slide_02.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "square.png", "wide.png"]  # no temp folder left


def test_text_fits_its_box_and_long_bullets_shrink(slides: list[DeckSlide], tmp_path: Path) -> None:
    presentation = Presentation(str(write_deck(slides, tmp_path / "out").pptx))
    body_sizes = []
    for page in presentation.slides:
        for shape, bullet in [(page.shapes.title, False), *((box, True) for box in text_boxes(page))]:
            size = font_size(shape)
            paragraphs = [p.text for p in shape.text_frame.paragraphs]
            height = deck.text_height(paragraphs, size, pt(shape.width), bullet=bullet)
            assert height <= pt(shape.height) + 1e-6, (paragraphs, size)
            if bullet:
                assert 12 <= size <= 24
                body_sizes.append(size)
    assert body_sizes[0] == body_sizes[1] == 24  # short bullets keep the largest size
    assert body_sizes[2] < 24  # three long bullets shrink


def test_overflowing_text_is_truncated_with_an_ellipsis(tmp_path: Path) -> None:
    picture = checkerboard(tmp_path / "p.png", 32, 32)
    words = " ".join(f"word{i}" for i in range(600))
    slide = DeckSlide(title="Too much", bullets=[words, "never shown"], layout="picture_right", picture=picture)
    page = Presentation(str(write_deck([slide], tmp_path / "out").pptx)).slides[0]
    (box,) = text_boxes(page)
    texts = [p.text for p in box.text_frame.paragraphs]
    assert font_size(box) == 12
    assert texts[-1].endswith("…") and "never shown" not in texts
    assert deck.text_height(texts, 12, pt(box.width), bullet=True) <= pt(box.height)


def test_small_pictures_are_upscaled_without_blur(slides: list[DeckSlide], tmp_path: Path) -> None:
    files = write_deck(slides[:1], tmp_path / "out")
    (picture,) = pictures(Presentation(str(files.pptx)).slides[0])
    with Image.open(io.BytesIO(picture.image.blob)) as embedded:
        assert embedded.width > 32 and embedded.width % 32 == 0  # integer nearest-neighbour factor
        assert sorted(c for _, c in embedded.convert("RGB").getcolors()) == [(0, 0, 255), (255, 0, 0)]
    left, top = round(pt(picture.left)), round(pt(picture.top))
    right, bottom = round(pt(picture.left + picture.width)), round(pt(picture.top + picture.height))
    with Image.open(files.previews[0]) as preview:
        region = preview.convert("RGB").crop((left, top, right, bottom))
    assert sorted(c for _, c in region.getcolors()) == [(0, 0, 255), (255, 0, 0)]  # only the two cell colours


def dot_region(preview: Image.Image, box: deck.Box, size: float) -> np.ndarray:
    """The first line's bullet column (left of the text) as an ink mask."""
    x0, y0 = box.left + deck.INSET_X, box.top + deck.INSET_Y
    crop = (round(x0), round(y0), round(x0 + deck.bullet_indent(size)), round(y0 + deck.LINE_HEIGHT_EM * size))
    return np.asarray(preview.convert("L").crop(crop)) < 128


def looks_like_a_dot(ink: np.ndarray, size: float) -> bool:
    """Small, roughly square and mostly filled: a bullet dot, not an empty missing-glyph rectangle."""
    if ink.sum() < 4:
        return False
    rows, cols = np.nonzero(ink)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    fill = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].mean()
    return 0.6 <= width / height <= 1.6 and max(width, height) <= 0.5 * size and fill >= 0.55


@pytest.mark.parametrize("font", ["dejavu", "fallback"])
def test_preview_bullets_are_dots(font: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if font == "fallback":
        monkeypatch.setattr(deck, "_font_path", lambda: None)
    elif deck._font_path() is None:
        pytest.skip("no DejaVuSans.ttf on this machine")
    picture = checkerboard(tmp_path / "p.png", 64, 40)
    slide = DeckSlide(title="Bullets", bullets=["one bullet"], layout="picture_left", picture=picture)
    files = write_deck([slide], tmp_path / "out")
    box = deck.slide_boxes("picture_left", (64, 40), has_bullets=True).text
    assert box is not None
    size = font_size(text_boxes(Presentation(str(files.pptx)).slides[0])[0])
    with Image.open(files.previews[0]) as preview:
        assert looks_like_a_dot(dot_region(preview, box, size), size)


def test_the_dot_check_rejects_a_missing_glyph_box() -> None:
    default = ImageFont.load_default(24)
    if bytes(default.getmask("•")) != bytes(default.getmask("\ue000")):
        pytest.skip("Pillow's default font has a bullet glyph here")
    canvas = Image.new("L", (40, 40), 255)
    ImageDraw.Draw(canvas).text((4, 2), "•", fill=0, font=default)
    assert not looks_like_a_dot(np.asarray(canvas) < 128, 24)


def test_missing_picture_raises_and_writes_nothing(slides: list[DeckSlide], tmp_path: Path) -> None:
    broken = [*slides, slides[0].model_copy(update={"picture": tmp_path / "missing.png"})]
    with pytest.raises(ConfigError, match=r"missing\.png"):
        write_deck(broken, tmp_path / "out")
    assert not (tmp_path / "out" / "deck.pptx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["square.png", "wide.png"]


def test_failure_while_writing_keeps_the_previous_deck(
    slides: list[DeckSlide], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_deck(slides, tmp_path / "out")
    before = {path.name: path.read_bytes() for path in (tmp_path / "out").iterdir()}
    drawn = []

    def failing_preview(*args: object) -> Image.Image:
        drawn.append(args)
        if len(drawn) == 2:
            raise OSError("disk full")
        return Image.new("RGB", (960, 540))

    monkeypatch.setattr(deck, "_preview", failing_preview)
    with pytest.raises(OSError, match="disk full"):
        write_deck(list(reversed(slides)), tmp_path / "out")
    assert {path.name: path.read_bytes() for path in (tmp_path / "out").iterdir()} == before
    assert files.pptx.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "square.png", "wide.png"]


def test_rewriting_a_shorter_deck_removes_stale_previews(slides: list[DeckSlide], tmp_path: Path) -> None:
    write_deck(slides, tmp_path / "out")
    files = write_deck(slides[:1], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["deck.pptx", "slide_00.png"]
    assert len(Presentation(str(files.pptx)).slides) == 1


def test_bad_input_raises_typed_errors(slides: list[DeckSlide], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty"):
        write_deck([], tmp_path / "out")
    with pytest.raises(ConfigError, match="folder"):
        write_deck(slides, tmp_path / "deck.pptx")
    with pytest.raises(ConfigError, match="layout"):
        write_deck([{**slides[0].model_dump(), "layout": "sideways"}], tmp_path / "out")  # type: ignore[list-item]
    assert not (tmp_path / "out").exists()


def test_missing_python_pptx_raises_dependency_missing(
    slides: list[DeckSlide], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pptx", None)
    with pytest.raises(DependencyMissingError, match="python-pptx"):
        write_deck(slides, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["title", "picture_right", "picture_left", "picture_full"])
@pytest.mark.parametrize("size", [(32, 32), (64, 40), (40, 300), (1000, 10)])
@pytest.mark.parametrize("has_bullets", [True, False])
def test_slide_boxes_keep_aspect_inside_the_slide(layout: str, size: tuple[int, int], has_bullets: bool) -> None:
    boxes = deck.slide_boxes(layout, size, has_bullets=has_bullets)  # type: ignore[arg-type]
    assert (boxes.text is not None) == has_bullets
    assert boxes.picture.width / boxes.picture.height == pytest.approx(size[0] / size[1])
    for box in (boxes.title, boxes.picture, boxes.text):
        if box is not None:
            assert 0 <= box.left and 0 <= box.top and box.right <= 960 and box.bottom <= 540
    picture = (boxes.picture.left, boxes.picture.top, boxes.picture.right, boxes.picture.bottom)
    for other in (boxes.title, boxes.text):
        if other is not None:
            assert not overlaps(picture, (other.left, other.top, other.right, other.bottom))

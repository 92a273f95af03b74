"""Write a 16:9 slide deck (``deck.pptx`` + ``slide_NN.png`` previews) from pictures that already exist.

Geometry is computed once per slide, in points on a 960 x 540 pt slide (13.333 x 7.5 in), by ``slide_boxes``;
the ``.pptx`` converts those points to EMU and the previews are drawn at 960 x 540 px, so one point is one
preview pixel and both outputs show the same layout. Text sizes come from ``fit_text``: lines are estimated
from characters per line at a font size, the size shrinks until the text fits its box, and text that does not
fit even at the smallest size is truncated with an ellipsis. Pictures keep their aspect ratio; small pictures
are upscaled by an integer factor with nearest-neighbour sampling so their pixels stay sharp. Everything is
written into a temporary folder beside ``out`` and moved into place file by file (``os.replace``), so a
failure leaves no partial deck.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import shutil
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, ValidationError

from seedx_agent.errors import ConfigError, DependencyMissingError, InvalidImageError
from seedx_agent.pipeline.images import load_image

if TYPE_CHECKING:
    from pptx.slide import Slide
    from pptx.text.text import _Paragraph

__all__ = [
    "BODY_SIZES",
    "CHAR_WIDTH_EM",
    "INSET_X",
    "INSET_Y",
    "LINE_HEIGHT_EM",
    "PREVIEW_SIZE",
    "SLIDE_SIZE_PT",
    "Box",
    "DeckFiles",
    "DeckSlide",
    "FittedText",
    "SlideBoxes",
    "bullet_indent",
    "fit_text",
    "slide_boxes",
    "text_height",
    "title_sizes",
    "write_deck",
]

Layout = Literal["title", "picture_right", "picture_left", "picture_full"]

SLIDE_SIZE_PT = (960.0, 540.0)  # 16:9, 13.333 x 7.5 in; also the preview size in pixels (1 pt = 1 px)
PREVIEW_SIZE = (960, 540)
EMU_PER_PT = 12700
MARGIN = 48.0  # slide margin, pt
GAP = 24.0  # space between title, text and picture, pt
INSET_X, INSET_Y = 7.2, 3.6  # text-frame insets (python-pptx defaults: 0.1 in, 0.05 in), pt
CHAR_WIDTH_EM = 0.55  # average character width; conservative for Calibri (~0.47) and DejaVu Sans (~0.52)
LINE_HEIGHT_EM = 1.25  # single line spacing is ~1.2 em in PowerPoint; a little slack
PARAGRAPH_GAP_EM = 0.3  # space before every paragraph but the first
BULLET_INDENT_EM = 0.9  # hanging indent: the bullet sits left of it, the text starts at it
BODY_SIZES = (24, 12)  # bullet font sizes tried, largest first, pt
_TITLE_SIZES = {"title": (44, 24), "content": (36, 20)}
PICTURE_DPI = 144  # small pictures are upscaled (nearest, integer factor) to at least this density in the pptx
MAX_EMBED_SIDE = 4096  # ... but never past this many pixels on a side
ELLIPSIS = "…"
_PREVIEW_NAME = re.compile(r"slide_\d{2,}\.png")
_FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),  # Debian, Ubuntu
    Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),  # Fedora, Arch
    Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
    Path("/usr/local/share/fonts/DejaVuSans.ttf"),
)


class DeckSlide(BaseModel):
    """One slide to write: a title, bullets, a layout and a picture file; ``notes`` become speaker notes."""

    model_config = ConfigDict(extra="forbid")

    title: str
    bullets: list[str]
    layout: Layout
    picture: Path  # a picture file on disk (PNG, any size and aspect)
    notes: str = ""  # speaker notes; callers write the picture's sources here


@dataclass(frozen=True)
class DeckFiles:
    """What ``write_deck`` wrote: the ``.pptx`` and one preview PNG per slide, in slide order."""

    pptx: Path
    previews: list[Path]


@dataclass(frozen=True)
class Box:
    """A rectangle in points on the 960 x 540 pt slide (also preview pixels)."""

    left: float
    top: float
    width: float
    height: float

    @property
    def right(self) -> float:
        """Right edge, pt."""
        return self.left + self.width

    @property
    def bottom(self) -> float:
        """Bottom edge, pt."""
        return self.top + self.height

    def emu(self) -> tuple[int, int, int, int]:
        """``(left, top, width, height)`` in EMU, the unit python-pptx positions shapes in."""
        left, top, width, height = (
            round(value * EMU_PER_PT) for value in (self.left, self.top, self.width, self.height)
        )
        return left, top, width, height

    def pixels(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` in preview pixels, rounded."""
        return (round(self.left), round(self.top), round(self.right), round(self.bottom))


@dataclass(frozen=True)
class SlideBoxes:
    """Where a slide's title, bullet text (``None`` without bullets) and fitted picture go, shared by both outputs."""

    title: Box
    text: Box | None
    picture: Box


@dataclass(frozen=True)
class FittedText:
    """Paragraph texts (truncated when they did not fit) and the font size they fit their box at."""

    size: int
    paragraphs: tuple[str, ...]
    truncated: bool


# ---------------------------------------------------------------------------------------------- geometry


def slide_boxes(layout: Layout, picture_size: tuple[int, int], *, has_bullets: bool) -> SlideBoxes:
    """Title, text and picture boxes for ``layout``; the picture is fitted into its area keeping its aspect."""
    width, height = SLIDE_SIZE_PT
    inner = width - 2 * MARGIN
    bottom = height - GAP
    if layout == "title":
        title = Box(MARGIN, 40.0, inner, 100.0)
        if has_bullets:
            text: Box | None = Box(MARGIN, title.bottom + 8.0, inner, 96.0)
            area = Box(MARGIN, text.bottom + 12.0, inner, bottom - text.bottom - 12.0)
        else:
            text, area = None, Box(MARGIN, title.bottom + 16.0, inner, bottom - title.bottom - 16.0)
        return SlideBoxes(title, text, _fit_picture(picture_size, area))
    title = Box(MARGIN, 24.0, inner, 72.0)
    top = title.bottom + 16.0
    content = Box(MARGIN, top, inner, bottom - top)
    if layout == "picture_full":
        if not has_bullets:
            return SlideBoxes(title, None, _fit_picture(picture_size, content))
        caption = 92.0
        area = Box(MARGIN, top, inner, content.height - caption - 12.0)
        return SlideBoxes(title, Box(MARGIN, area.bottom + 12.0, inner, caption), _fit_picture(picture_size, area))
    column = (inner - GAP) / 2
    left_box = Box(MARGIN, top, column, content.height)
    right_box = Box(MARGIN + column + GAP, top, column, content.height)
    text_box, area = (left_box, right_box) if layout == "picture_right" else (right_box, left_box)
    return SlideBoxes(title, text_box if has_bullets else None, _fit_picture(picture_size, area, top=True))


def _fit_picture(size: tuple[int, int], area: Box, *, top: bool = False) -> Box:
    """The largest box with the picture's aspect ratio inside ``area``, centred (or top-aligned, beside text)."""
    picture_width, picture_height = size
    scale = min(area.width / picture_width, area.height / picture_height)
    width, height = picture_width * scale, picture_height * scale
    y = area.top if top else area.top + (area.height - height) / 2
    return Box(area.left + (area.width - width) / 2, y, width, height)


# ---------------------------------------------------------------------------------------------- text fitting


def bullet_indent(size: float) -> float:
    """Hanging indent of a bulleted paragraph at font ``size``, pt: the bullet sits left of it."""
    return BULLET_INDENT_EM * size


def title_sizes(layout: Layout) -> tuple[int, int]:
    """Largest and smallest title font size for ``layout``, pt (the title slide gets a bigger title)."""
    return _TITLE_SIZES["title" if layout == "title" else "content"]


def _chars_per_line(width: float, size: float, bullet: bool) -> int:
    usable = width - 2 * INSET_X - (bullet_indent(size) if bullet else 0.0)
    return max(1, int(usable // (CHAR_WIDTH_EM * size)))


def _wrap(text: str, chars: int) -> list[str]:
    return textwrap.wrap(text, width=chars, break_long_words=True) or [""]


def text_height(paragraphs: Sequence[str], size: float, width: float, *, bullet: bool) -> float:
    """Estimated height (pt, insets included) of ``paragraphs`` at font ``size`` in a box ``width`` pt wide."""
    chars = _chars_per_line(width, size, bullet)
    lines = sum(len(_wrap(text, chars)) for text in paragraphs)
    gaps = max(0, len(paragraphs) - 1) * PARAGRAPH_GAP_EM * size
    return 2 * INSET_Y + lines * LINE_HEIGHT_EM * size + gaps


def fit_text(paragraphs: Sequence[str], box: Box, sizes: tuple[int, int], *, bullet: bool) -> FittedText:
    """The largest size in ``sizes`` (max, min) at which ``paragraphs`` fit ``box``; else truncate at the min."""
    largest, smallest = sizes
    texts = tuple(paragraphs)
    for size in range(largest, smallest - 1, -1):
        if text_height(texts, size, box.width, bullet=bullet) <= box.height:
            return FittedText(size, texts, truncated=False)
    return FittedText(smallest, _truncate(texts, box, smallest, bullet), truncated=True)


def _truncate(paragraphs: tuple[str, ...], box: Box, size: int, bullet: bool) -> tuple[str, ...]:
    """Keep whole paragraphs while they fit, then as many lines of the next as fit, ending with an ellipsis."""
    chars = _chars_per_line(box.width, size, bullet)
    line, gap = LINE_HEIGHT_EM * size, PARAGRAPH_GAP_EM * size
    room = box.height - 2 * INSET_Y
    kept: list[list[str]] = []
    for text in paragraphs:
        lines = _wrap(text, chars)
        cost = gap if kept else 0.0
        fitting = int((room - cost) // line)
        if fitting >= len(lines):
            kept.append(lines)
            room -= cost + len(lines) * line
            continue
        if fitting >= 1:
            kept.append(lines[:fitting])
        break
    if not kept:  # not even one line fits: show just the ellipsis
        return (ELLIPSIS,)
    last = kept[-1][-1]
    kept[-1][-1] = (last if len(last) < chars else last[: chars - 1]).rstrip() + ELLIPSIS
    return tuple(" ".join(lines) for lines in kept)


def _clean(text: str) -> str:
    """Collapse runs of whitespace (newlines included) to single spaces: one bullet is one paragraph."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------- writing


def write_deck(slides: Sequence[DeckSlide], out: Path, *, deck_title: str | None = None) -> DeckFiles:
    """Write ``out/deck.pptx`` and ``out/slide_NN.png`` previews (NN from 00) for ``slides``, all or nothing.

    ``out`` is a folder (created if needed). ``deck_title`` is the document title in the file's properties
    (default: the first slide's title); it adds no slide. Blank bullets are dropped. Previews left from an
    earlier, longer deck in ``out`` are removed. Raises ``ConfigError`` for no slides, a bad ``out`` or a
    missing picture file, ``InvalidImageError`` for an unreadable picture and ``DependencyMissingError``
    without python-pptx. Every file is built in a temporary folder beside ``out`` first, so an error leaves
    ``out`` as it was; only a failing ``os.replace`` in the final moves could leave new previews beside an old
    ``deck.pptx`` (which is moved last, so a new ``deck.pptx`` always means a complete deck).
    """
    try:
        from pptx import Presentation  # noqa: F401  (checked before anything is read or written)
    except ImportError as error:
        raise DependencyMissingError("writing a deck needs python-pptx: pip install 'seedx-agent[agent]'") from error
    checked = _check_slides(slides)
    out = Path(out)
    if out.suffix.lower() == ".pptx":
        raise ConfigError(
            f"out is the folder the deck is written into, got the file name {str(out)!r}; pass its folder"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {str(out)!r} exists and is not a folder; pass a folder for deck.pptx and previews")
    pictures = [_load_picture(slide.picture, index) for index, slide in enumerate(checked)]
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name or 'deck'}-", dir=parent))
    except OSError as error:
        raise ConfigError(f"cannot write a deck next to {str(out)!r}: {error}") from error
    try:
        digits = max(2, len(str(len(checked) - 1)))
        names = [f"slide_{index:0{digits}d}.png" for index in range(len(checked))]
        layouts = [_lay_out(slide, picture.size) for slide, picture in zip(checked, pictures)]
        _build_pptx(checked, pictures, layouts, deck_title).save(str(staging / "deck.pptx"))
        for slide, picture, layout, name in zip(checked, pictures, layouts, names):
            _preview(slide, picture, layout).save(staging / name)
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            os.replace(staging / name, out / name)
        for stale in out.iterdir():
            if _PREVIEW_NAME.fullmatch(stale.name) and stale.name not in names and stale.is_file():
                stale.unlink()
        os.replace(staging / "deck.pptx", out / "deck.pptx")  # last: a complete deck.pptx means a complete write
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return DeckFiles(pptx=out / "deck.pptx", previews=[out / name for name in names])


def _check_slides(slides: Sequence[DeckSlide]) -> list[DeckSlide]:
    """Validate the slide list (mappings are validated into ``DeckSlide``), normalising whitespace in texts."""
    if isinstance(slides, (str, bytes, Mapping)) or not isinstance(slides, Sequence):
        raise ConfigError(f"slides must be a sequence of DeckSlide, got {type(slides).__name__}")
    if not slides:
        raise ConfigError("slides is empty; a deck needs at least one DeckSlide")
    checked = []
    for index, slide in enumerate(slides):
        try:
            model = slide if isinstance(slide, DeckSlide) else DeckSlide.model_validate(slide)
        except ValidationError as error:
            problem = error.errors(include_url=False)[0]
            raise ConfigError(
                f"slide {index} is not a valid DeckSlide ({error.error_count()} problem(s); "
                f"{'.'.join(map(str, problem['loc']))}: {problem['msg']})"
            ) from error
        bullets = [_clean(bullet) for bullet in model.bullets]
        checked.append(model.model_copy(update={"title": _clean(model.title), "bullets": [b for b in bullets if b]}))
    return checked


def _load_picture(path: Path, index: int) -> Image.Image:
    """Read a slide's picture as RGB (EXIF-oriented, alpha over white) so pptx and preview show the same."""
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        raise ConfigError(f"slide {index}: picture {str(path)!r} {what}")
    try:
        return load_image(path)
    except InvalidImageError as error:
        raise type(error)(f"slide {index}: {error}") from error


@dataclass(frozen=True)
class _Layout:
    """A slide's boxes with its fitted title and bullets."""

    boxes: SlideBoxes
    title: FittedText
    bullets: FittedText | None


def _lay_out(slide: DeckSlide, picture_size: tuple[int, int]) -> _Layout:
    boxes = slide_boxes(slide.layout, picture_size, has_bullets=bool(slide.bullets))
    title = fit_text([slide.title], boxes.title, title_sizes(slide.layout), bullet=False)
    bullets = fit_text(slide.bullets, boxes.text, BODY_SIZES, bullet=True) if boxes.text else None
    return _Layout(boxes, title, bullets)


def _build_pptx(
    slides: Sequence[DeckSlide], pictures: Sequence[Image.Image], layouts: Sequence[_Layout], deck_title: str | None
) -> Any:
    """The presentation in memory: a 16:9 deck with one "Title Only" slide per ``DeckSlide``."""
    from pptx import Presentation
    from pptx.enum.text import MSO_ANCHOR, PP_ALIGN

    presentation = Presentation()
    presentation.slide_width, presentation.slide_height = (round(side * EMU_PER_PT) for side in SLIDE_SIZE_PT)
    presentation.core_properties.title = deck_title if deck_title is not None else slides[0].title
    for slide, picture, layout in zip(slides, pictures, layouts):
        page = presentation.slides.add_slide(presentation.slide_layouts[5])  # "Title Only"
        title = page.shapes.title
        title.left, title.top, title.width, title.height = layout.boxes.title.emu()
        align = PP_ALIGN.CENTER if slide.layout == "title" else PP_ALIGN.LEFT
        _fill_frame(title.text_frame, layout.title, align, MSO_ANCHOR.MIDDLE, bullet=False)
        if layout.bullets is not None and layout.boxes.text is not None:
            frame = page.shapes.add_textbox(*layout.boxes.text.emu()).text_frame
            _fill_frame(frame, layout.bullets, PP_ALIGN.LEFT, MSO_ANCHOR.TOP, bullet=True)
        _add_picture(page, picture, layout.boxes.picture)
        if slide.notes:
            page.notes_slide.notes_text_frame.text = slide.notes
    return presentation


def _fill_frame(frame: Any, fitted: FittedText, align: Any, anchor: Any, *, bullet: bool) -> None:
    """Write fitted paragraphs into a text frame with fixed size, our insets and (optionally) real bullets."""
    from pptx.enum.text import MSO_AUTO_SIZE
    from pptx.util import Pt

    frame.word_wrap = True
    frame.auto_size = MSO_AUTO_SIZE.NONE  # we sized the text; PowerPoint must not shrink or grow it again
    frame.vertical_anchor = anchor
    frame.margin_left = frame.margin_right = Pt(INSET_X)
    frame.margin_top = frame.margin_bottom = Pt(INSET_Y)
    for index, text in enumerate(fitted.paragraphs):
        paragraph = frame.paragraphs[0] if index == 0 else frame.add_paragraph()
        paragraph.alignment = align
        if index:
            paragraph.space_before = Pt(round(PARAGRAPH_GAP_EM * fitted.size, 1))
        run = paragraph.add_run()
        run.text = text
        run.font.size = Pt(fitted.size)
        if bullet:
            _bullet(paragraph, fitted.size)


def _bullet(paragraph: _Paragraph, size: int) -> None:
    """Give a paragraph a real "•" bullet with a hanging indent (python-pptx has no API for it)."""
    from pptx.oxml.xmlchemy import OxmlElement
    from pptx.util import Pt

    properties = paragraph._p.get_or_add_pPr()
    indent = int(Pt(bullet_indent(size)))
    properties.set("marL", str(indent))
    properties.set("indent", str(-indent))
    later = ("a:tabLst", "a:defRPr", "a:extLst")  # schema order: ... buFont, buChar, tabLst, defRPr, extLst
    font, char = OxmlElement("a:buFont"), OxmlElement("a:buChar")
    font.set("typeface", "Arial")
    char.set("char", "•")
    properties.insert_element_before(font, "a:buChar", *later)
    properties.insert_element_before(char, *later)


def _add_picture(page: Slide, picture: Image.Image, box: Box) -> None:
    """Embed the picture as PNG: upscaled (nearest, integer factor) when small for its box, so it is not blurred."""
    wanted = max(box.width, box.height) * PICTURE_DPI / 72
    longest = max(picture.size)
    factor = max(1, min(math.ceil(wanted / longest), MAX_EMBED_SIDE // longest))
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    elif longest > MAX_EMBED_SIDE:  # a huge picture: keep the file small, the aspect ratio stays
        picture = picture.copy()
        picture.thumbnail((MAX_EMBED_SIDE, MAX_EMBED_SIDE), Image.Resampling.LANCZOS)
    stream = io.BytesIO()
    picture.save(stream, format="PNG")
    stream.seek(0)
    page.shapes.add_picture(stream, *box.emu())


# ---------------------------------------------------------------------------------------------- previews


@functools.lru_cache(maxsize=1)
def _font_path() -> Path | None:
    """DejaVu Sans (has "•"): matplotlib's copy if matplotlib is importable, else a system copy, else ``None``."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        candidates = (Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", *_FONT_CANDIDATES)
    except ImportError:
        candidates = _FONT_CANDIDATES
    return next((path for path in candidates if path.is_file()), None)


def _font(size: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, bool]:
    """A preview font at ``size`` px and whether it draws "•" itself (else bullets are drawn as dots)."""
    path = _font_path()
    if path is not None:
        try:
            return _truetype(str(path), size), True
        except OSError:
            pass
    return ImageFont.load_default(size), False


@functools.lru_cache(maxsize=32)
def _truetype(path: str, size: int) -> ImageFont.FreeTypeFont:
    """A cached TrueType font: a deck draws the same few sizes on every slide."""
    return ImageFont.truetype(path, size)


def _preview(slide: DeckSlide, picture: Image.Image, layout: _Layout) -> Image.Image:
    """A Pillow drawing of the slide with the pptx's geometry and font sizes (1 pt = 1 px)."""
    canvas = Image.new("RGB", PREVIEW_SIZE, "white")
    draw = ImageDraw.Draw(canvas)
    box = layout.boxes.picture
    left, top, right, bottom = box.pixels()
    size = (max(1, right - left), max(1, bottom - top))
    smaller = size[0] < picture.width or size[1] < picture.height
    resample = Image.Resampling.LANCZOS if smaller else Image.Resampling.NEAREST
    canvas.paste(picture.resize(size, resample), (left, top))
    _draw_text(draw, layout.title, layout.boxes.title, centred=slide.layout == "title", middle=True, bullet=False)
    if layout.bullets is not None and layout.boxes.text is not None:
        _draw_text(draw, layout.bullets, layout.boxes.text, centred=False, middle=False, bullet=True)
    return canvas


def _draw_text(
    draw: ImageDraw.ImageDraw, fitted: FittedText, box: Box, *, centred: bool, middle: bool, bullet: bool
) -> None:
    """Draw fitted paragraphs wrapped to the box width; lines past the box bottom are cut with an ellipsis."""
    font, has_bullet_glyph = _font(fitted.size)
    size = fitted.size
    indent = bullet_indent(size) if bullet else 0.0
    width = box.width - 2 * INSET_X - indent
    line, gap = LINE_HEIGHT_EM * size, PARAGRAPH_GAP_EM * size
    paragraphs = [_wrap_pixels(draw, text, font, width) for text in fitted.paragraphs]
    rows: list[tuple[float, str, bool]] = []  # (top, text, first line of a paragraph)
    limit = box.height - 2 * INSET_Y
    y, full = 0.0, False
    for index, lines in enumerate(paragraphs):
        y += gap if index else 0.0
        for number, text in enumerate(lines):
            full = y + line > limit + 0.5
            if full:
                break
            rows.append((y, text, number == 0))
            y += line
        if full:
            break
    if full and rows:  # the estimate fitted but the measured wrap did not: cut like the pptx truncation does
        top, last, first = rows[-1]
        rows[-1] = (top, _with_ellipsis(draw, last, font, width), first)
    used = rows[-1][0] + line if rows else 0.0
    offset = box.top + INSET_Y + ((limit - used) / 2 if middle else 0.0)
    x0 = box.left + INSET_X
    for top, text, first in rows:
        y_row = offset + top + (line - size * 1.17) / 2  # DejaVu's ascent + descent is ~1.17 em
        x = x0 + indent
        if centred:
            x = x0 + (box.width - 2 * INSET_X - draw.textlength(text, font=font)) / 2
        draw.text((x, y_row), text, fill="black", font=font)
        if bullet and first:
            if has_bullet_glyph:
                draw.text((x0, y_row), "•", fill="black", font=font)
            else:  # the fallback font has no "•" glyph: draw the dot
                radius, cx, cy = 0.17 * size, x0 + 0.3 * size, y_row + 0.62 * size
                draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill="black")


def _wrap_pixels(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float
) -> list[str]:
    """Greedy word wrap by measured width; a word wider than the box is split by characters."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if draw.textlength(candidate, font=font) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        for char in word:
            if current and draw.textlength(current + char, font=font) > width:
                lines.append(current)
                current = ""
            current += char
    return [*lines, current] if current or not lines else lines


def _with_ellipsis(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float
) -> str:
    """``text`` shortened until it and a trailing ellipsis fit ``width``."""
    while text and draw.textlength(text.rstrip() + ELLIPSIS, font=font) > width:
        text = text[:-1]
    return text.rstrip() + ELLIPSIS

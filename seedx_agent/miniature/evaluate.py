"""Deterministic scoring for the miniature world: images are read back by pixel analysis, no model.

``analyse_image`` finds the shapes in a (possibly generated, blurry, noisy) image:

1. the background is the median colour of the border pixels that are not near a palette colour;
2. every pixel is projected onto the line from the background to each palette colour; it belongs to
   colour ``c`` when it lies at least 40% of the way to ``c`` and close to that line (blur mixes a
   shape with the background along exactly this line, noise moves it off the line a little);
3. 4-connected components of same-colour pixels, tiny ones dropped;
4. each component is explained by synthesis: the world's own shape masks (every kind, a few sizes and
   positions, sharp or 3x3-blurred) are compared with the soft colour map and the least-squares fit
   gives kind, size and box; the box centre gives the grid cell. A component the best fit explains
   badly, or one clearly stretched (no world shape is), gets the kind ``"unknown"``.

Fitting soft templates rather than thresholding a mask is what keeps a blurred 5-pixel square from
turning into a circle. The scorers compare detections with the scene the image should show.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import as_strided
from PIL import Image

from seedx_agent.errors import ConfigError, InvalidBoxError, InvalidImageError
from seedx_agent.miniature.world import (
    COLOURS,
    GRID,
    KINDS,
    MIN_IMAGE_SIZE,
    PALETTE,
    POSITIONS,
    SIZES,
    Scene,
    Shape,
    shape_extent,
    shape_mask,
)
from seedx_agent.pipeline.tokens import Box, strip_tags

__all__ = [
    "DONE_BARS",
    "GROUNDING_IOU_THRESHOLD",
    "MAX_ANALYSE_SIZE",
    "UNKNOWN_KIND",
    "DetectedShape",
    "Report",
    "ReportRow",
    "analyse_image",
    "normalise_text",
    "score_box",
    "score_edit",
    "score_generation",
    "score_grounding",
    "score_reconstruction",
    "score_text",
]

logger = logging.getLogger(__name__)

MAX_ANALYSE_SIZE = 1024
UNKNOWN_KIND = "unknown"
GROUNDING_IOU_THRESHOLD = 0.5
# The bars of issue 3's "done when" list, as (task, metric) -> minimum mean. The evaluator never
# lowers them; ``Report`` marks each row PASS or FAIL against them.
DONE_BARS: dict[tuple[str, str], float] = {
    ("caption", "accuracy"): 0.90,
    ("vqa", "accuracy"): 0.90,
    ("grounding", "hit"): 0.90,
    ("text_to_image", "all_ok"): 0.80,
    ("edit", "all_ok"): 0.80,
    ("reconstruction", "all_ok"): 0.90,
}

# A pixel belongs to colour c when it lies at least this fraction of the way from the background to c
# (a 3x3 blur leaves 4/9 at a square's corner and 3/9 just outside a straight edge) ...
_MIN_ALPHA = 0.4
_MAX_ALPHA = 1.25
# ... and within this RGB distance of that line (Gaussian noise of sigma 20 stays below it for
# > 99.9% of pixels; the gray title band and white text stay above it).
_MAX_RESIDUAL = 80.0
# Components smaller than this fraction of a small shape's box are specks, not shapes.
_MIN_AREA_FRACTION = 0.2
# Fits whose squared error (less what the image's noise alone explains) exceeds this fraction of the
# shape's area are blobs, not shapes: a 2:1 ellipse scores ~0.7, a 1.6:1 rectangle ~0.3; renders
# with a 3x3 blur stay below 0.11, with sigma-20 noise below 0.26 (99th percentile 0.2) at 32 px.
_MAX_FIT_ERROR = 0.3
# Every world shape has a square box; a component stretched more than this (ratio of principal
# axes) is not one of them. Shapes measure <= 1.19 clean and <= 1.32 with blur and sigma-20 noise
# once they cover 40 pixels; below that single pixels swing the ratio, so only the fit error counts.
_MAX_ELONGATION = 1.4
_MIN_AREA_FOR_ELONGATION = 40
# Border pixels this close to a palette colour belong to a shape touching the border.
_BORDER_PALETTE_DISTANCE = 60.0
_IDEAL_FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
_PALETTE_RGB = np.array([PALETTE[name] for name in COLOURS], dtype=np.float64)  # (colours, 3)


@dataclass(frozen=True)
class DetectedShape:
    """One shape read back from an image (``kind`` is ``"unknown"`` for a blob that is no world shape).

    ``box`` is the fitted template's pixel box (x2, y2 exclusive); ``fill`` is the component's pixel
    count over its bounding-box area (circle ~0.785, square 1.0, triangle ~0.5); ``fit_error`` is the
    least-squares error of the fit over the shape's area (0 for a clean render).
    """

    kind: str
    colour: str
    size: str
    cell: tuple[int, int]
    box: tuple[int, int, int, int]
    area: int
    fill: float
    fit_error: float

    @property
    def position(self) -> str:
        """The cell's name, e.g. ``"top left"``."""
        return POSITIONS[self.cell[0] * GRID + self.cell[1]]

    def agreement(self, shape: Shape) -> dict[str, bool]:
        """Which of kind, colour, cell and size agree with ``shape``."""
        return {
            "kind": self.kind == shape.kind,
            "colour": self.colour == shape.colour,
            "cell": self.cell == shape.cell,
            "size": self.size == shape.size,
        }

    def matches(self, shape: Shape) -> bool:
        """True when kind, colour, cell and size all agree with ``shape``."""
        return all(self.agreement(shape).values())


# ---------------------------------------------------------------------------------------------
# Image analysis
# ---------------------------------------------------------------------------------------------


def _as_pixels(image: Image.Image) -> np.ndarray:
    if not isinstance(image, Image.Image):
        raise InvalidImageError(f"analyse_image needs a PIL.Image.Image, got {type(image).__name__}")
    width, height = image.size
    if min(width, height) < MIN_IMAGE_SIZE or max(width, height) > MAX_ANALYSE_SIZE:
        raise InvalidImageError(
            f"image is {width}x{height}; analysis needs sides in [{MIN_IMAGE_SIZE}, {MAX_ANALYSE_SIZE}] pixels, "
            "resize it first"
        )
    return np.asarray(image.convert("RGB"), dtype=np.float64)  # (height, width, 3)


def _background(pixels: np.ndarray) -> np.ndarray:
    """Median colour of the border pixels that are not near a palette colour (shapes may touch the border)."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])  # (border pixels, 3)
    distances = np.linalg.norm(border[:, None, :] - _PALETTE_RGB[None], axis=-1)  # (border pixels, colours)
    plain = border[distances.min(axis=1) > _BORDER_PALETTE_DISTANCE]
    return np.median(plain if len(plain) else border, axis=0)


def _noise_levels(soft_maps: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Robust standard deviation of each soft map over the background (0 for a clean render)."""
    background = soft_maps[labels < 0]  # (background pixels, colours)
    if not len(background):
        return np.zeros(soft_maps.shape[-1])
    return 1.4826 * np.median(np.abs(background), axis=0)  # median absolute deviation around 0


def _colour_maps(pixels: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft per-colour maps and the colour label of every pixel (-1 = background / unknown).

    ``soft[..., c]`` is how far a pixel lies from the background towards colour ``c`` (about 0 on the
    background, 1 on a shape of colour ``c``), and 0 for pixels far off that line (other colours, the
    title band), so that only this colour's blur rim and noise count when a shape is fitted.
    """
    offsets = pixels - background  # (H, W, 3)
    directions = _PALETTE_RGB - background  # (colours, 3)
    lengths_sq = np.maximum((directions**2).sum(axis=1), 1e-6)  # (colours,)
    projections = offsets @ directions.T  # (H, W, colours)
    alpha = projections / lengths_sq
    offsets_sq = (offsets**2).sum(axis=-1, keepdims=True)  # (H, W, 1)

    def distance_sq(low: float) -> np.ndarray:
        # squared distance from each pixel to the segment [low, _MAX_ALPHA] of each background->colour line
        clamped = np.clip(alpha, low, _MAX_ALPHA)
        return offsets_sq - 2 * clamped * projections + clamped**2 * lengths_sq  # (H, W, colours)

    shape_distance_sq = distance_sq(_MIN_ALPHA)
    nearest = np.argmin(shape_distance_sq, axis=-1)  # (H, W)
    best_sq = np.take_along_axis(shape_distance_sq, nearest[..., None], axis=-1)[..., 0]
    best_alpha = np.take_along_axis(alpha, nearest[..., None], axis=-1)[..., 0]
    is_shape = (best_sq < _MAX_RESIDUAL**2) & (best_alpha >= _MIN_ALPHA)
    soft = np.where(distance_sq(0.0) < _MAX_RESIDUAL**2, np.clip(alpha, -0.5, 1.5), 0.0)
    return soft, np.where(is_shape, nearest, -1)


def _components(labels: np.ndarray) -> np.ndarray:
    """4-connected components of equal labels >= 0; returns an id map (-1 where there is none)."""
    height, width = labels.shape
    grid = labels.tolist()  # plain lists: much faster than numpy scalars in this pixel loop
    ids = [[-1] * width for _ in range(height)]
    next_id = 0
    for start_y, start_x in np.argwhere(labels >= 0).tolist():
        if ids[start_y][start_x] >= 0:
            continue
        label = grid[start_y][start_x]
        ids[start_y][start_x] = next_id
        stack = [(start_y, start_x)]
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < height and 0 <= nx < width and ids[ny][nx] < 0 and grid[ny][nx] == label:
                    ids[ny][nx] = next_id
                    stack.append((ny, nx))
        next_id += 1
    return np.array(ids, dtype=np.int64).reshape(height, width)


def _elongation(ys: np.ndarray, xs: np.ndarray) -> float:
    """sqrt of the ratio of the principal variances of a pixel set (1 for a disc or square)."""
    covariance = np.cov(np.stack([ys, xs]).astype(np.float64)) + np.eye(2) / 12  # + one pixel's own spread
    low, high = np.linalg.eigvalsh(covariance)
    return math.sqrt(high / low)


def _box_blur3(array: np.ndarray) -> np.ndarray:
    padded = np.pad(array, 1)
    height, width = array.shape
    return sum(padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)) / 9.0


@dataclass(frozen=True)
class _Template:
    kind: str
    extent: int
    pixels: np.ndarray  # (extent + 2, extent + 2): the mask padded by 1, optionally blurred
    energy: float  # sum of squares of pixels
    area: float  # pixels of the sharp mask
    centre_y: float  # mask centroid, in template coordinates (padding included)
    centre_x: float


@lru_cache(maxsize=512)
def _templates(kind: str, extent: int) -> tuple[_Template, _Template]:
    """The sharp and the 3x3-blurred template of one kind and extent."""
    sharp = np.pad(shape_mask(kind, extent).astype(np.float64), 1)  # (extent + 2, extent + 2)
    area = float(sharp.sum())
    centres = np.arange(extent + 2) + 0.5
    centre_y = float((sharp.sum(axis=1) * centres).sum() / area)
    centre_x = float((sharp.sum(axis=0) * centres).sum() / area)
    return tuple(
        _Template(kind, extent, pixels, float((pixels**2).sum()), area, centre_y, centre_x)
        for pixels in (sharp, _box_blur3(sharp))
    )  # type: ignore[return-value]


def _fit(soft: np.ndarray, centre_y: float, centre_x: float, mass: float) -> tuple[_Template, int, int, float] | None:
    """Least-squares fit of every template near the component's centroid to the soft colour map.

    Returns the best template, its top-left (y, x) in ``soft`` coordinates and its squared error,
    or None when no template fits in the window (a component far larger than any shape).
    """
    energy = float((soft**2).sum())  # errors are compared over the whole window
    best: tuple[_Template, int, int, float] | None = None
    for kind in KINDS:
        guess = math.sqrt(max(mass, 1.0) / _IDEAL_FILL[kind])  # the extent this mass implies
        for extent in range(max(2, math.floor(guess) - 1), math.ceil(guess) + 2):
            for template in _templates(kind, extent):
                size = template.pixels.shape[0]
                # the 3x3 block of placements around the centroid-aligned one
                top = round(centre_y - template.centre_y) - 1
                left = round(centre_x - template.centre_x) - 1
                if top < 0 or left < 0 or top + size + 2 > soft.shape[0] or left + size + 2 > soft.shape[1]:
                    continue
                # (3, 3, size, size) view of every placement's window; bounds were checked above
                block = as_strided(
                    soft[top:, left:], shape=(3, 3, size, size), strides=soft.strides * 2, writeable=False
                )
                correlation = np.einsum("ijyx,yx->ij", block, template.pixels)  # (3, 3) placements
                errors = energy - 2.0 * correlation + template.energy
                dy, dx = np.unravel_index(int(np.argmin(errors)), errors.shape)
                error = float(errors[dy, dx])
                if best is None or error < best[3] - 1e-9:
                    best = (template, top + int(dy), left + int(dx), error)
    return best


def analyse_image(image: Image.Image) -> list[DetectedShape]:
    """Every shape in ``image``: colour, kind, size, cell and box, largest first.

    Works on clean renders (exact), and on blurred, noisy or generated images (see the module doc).
    """
    pixels = _as_pixels(image)
    height, width = pixels.shape[:2]
    side = min(height, width)
    small_extent = shape_extent("small", side)
    large_extent = shape_extent("large", side)
    min_area = max(3, math.ceil(_MIN_AREA_FRACTION * small_extent**2))
    background = _background(pixels)
    soft_maps, labels = _colour_maps(pixels, background)
    component_ids = _components(labels)
    noise_levels = _noise_levels(soft_maps, labels)
    # pad so that every template placement near a component lies inside the arrays
    pad = large_extent + 6
    padded_ids = np.pad(component_ids, pad, constant_values=-1)
    padded_labels = np.pad(labels, pad, constant_values=-1)
    padded_soft: dict[int, np.ndarray] = {}  # per colour, padded once
    detections = []
    for component in range(int(component_ids.max()) + 1):
        ys, xs = np.nonzero(component_ids == component)
        if len(ys) < min_area:
            continue
        label = int(labels[ys[0], xs[0]])
        y1, x1, y2, x2 = int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1
        span = max(y2 - y1, x2 - x1)
        margin = span // 2 + 4  # room for the template search around the component
        wy1, wx1 = y1 + pad - margin, x1 + pad - margin
        wy2, wx2 = y2 + pad + margin, x2 + pad + margin
        if wy1 < 0 or wx1 < 0 or wy2 > height + 2 * pad or wx2 > width + 2 * pad:
            # a component much larger than any shape: keep the window inside the padded arrays
            margin = min(margin, pad)
            wy1, wx1, wy2, wx2 = y1 + pad - margin, x1 + pad - margin, y2 + pad + margin, x2 + pad + margin
        window_ids = padded_ids[wy1:wy2, wx1:wx2]
        window_labels = padded_labels[wy1:wy2, wx1:wx2]
        if label not in padded_soft:
            padded_soft[label] = np.pad(soft_maps[..., label], pad)
        soft = padded_soft[label][wy1:wy2, wx1:wx2]
        # keep this component and unlabelled pixels (a blurred rim); other shapes do not count
        soft = np.where((window_ids == component) | (window_labels < 0), soft, 0.0)
        mass = float(np.clip(soft, 0.0, 1.0).sum())
        centre_y = float(ys.mean()) + 0.5 + pad - wy1
        centre_x = float(xs.mean()) + 0.5 + pad - wx1
        fitted = _fit(soft, centre_y, centre_x, mass)
        expected_noise_error = float(noise_levels[label]) ** 2 * soft.size  # what noise alone adds
        elongation = _elongation(ys, xs)
        if fitted is None:  # no shape is this large: report the component's own box
            kind, extent, fit_error = UNKNOWN_KIND, max(y2 - y1, x2 - x1), math.inf
            box_x1, box_y1 = x1, y1
        else:
            template, top, left, error = fitted
            fit_error = max(0.0, error - expected_noise_error) / template.area
            stretched = len(ys) >= _MIN_AREA_FOR_ELONGATION and elongation > _MAX_ELONGATION
            is_shape = fit_error <= _MAX_FIT_ERROR and not stretched
            kind = template.kind if is_shape else UNKNOWN_KIND
            extent = template.extent
            box_x1 = left + 1 + wx1 - pad  # +1: templates carry one pixel of padding
            box_y1 = top + 1 + wy1 - pad
        size = min(SIZES, key=lambda name: abs(math.log(extent / shape_extent(name, side))))
        row = min(GRID - 1, max(0, math.floor((box_y1 + extent / 2) * GRID / height)))
        col = min(GRID - 1, max(0, math.floor((box_x1 + extent / 2) * GRID / width)))
        detections.append(
            DetectedShape(
                kind=kind,
                colour=COLOURS[label],
                size=size,
                cell=(row, col),
                box=(box_x1, box_y1, box_x1 + extent, box_y1 + extent),
                area=len(ys),
                fill=len(ys) / ((y2 - y1) * (x2 - x1)),
                fit_error=fit_error,
            )
        )
    detections.sort(key=lambda detection: -detection.area)
    logger.debug("analysed %dx%d image: %d shapes", width, height, len(detections))
    return detections


# ---------------------------------------------------------------------------------------------
# Scorers
# ---------------------------------------------------------------------------------------------

_PUNCTUATION_RE = re.compile(r"[^\w\s]")


def normalise_text(text: str) -> str:
    """Lower-case, special tags and punctuation removed, whitespace collapsed."""
    return " ".join(_PUNCTUATION_RE.sub(" ", strip_tags(text).lower()).split())


def score_text(pred: str, target: str) -> float:
    """1.0 when the normalised texts are identical, else 0.0."""
    return float(normalise_text(pred) == normalise_text(target))


def _as_box(box: Box | Sequence[float], name: str) -> Box:
    if isinstance(box, Box):
        return box
    if len(box) != 4:
        raise InvalidBoxError(f"{name} needs 4 numbers (x1, y1, x2, y2), got {len(box)}: {box!r}")
    return Box(*(float(v) for v in box))


def score_box(pred_box: Box | Sequence[float] | None, target_box: Box | Sequence[float]) -> float:
    """Intersection over union of two pixel boxes; a missing prediction scores 0."""
    target = _as_box(target_box, "target_box")
    if pred_box is None:
        return 0.0
    return _as_box(pred_box, "pred_box").iou(target)


def score_grounding(
    pred_box: Box | Sequence[float] | None, target_box: Box | Sequence[float]
) -> dict[str, float | bool]:
    """``iou`` and ``hit`` (IoU above 0.5, the grounding bar's criterion)."""
    iou = score_box(pred_box, target_box)
    return {"iou": iou, "hit": iou > GROUNDING_IOU_THRESHOLD}


def _assign(
    shapes: Sequence[Shape], detections: Sequence[DetectedShape], *, max_detections: int = 8
) -> list[DetectedShape | None]:
    """One-to-one assignment of detections to ``shapes`` maximising (full matches, agreeing attributes)."""
    pool = list(detections[:max_detections])  # largest first; extra specks cannot help

    def value(shape: Shape, detection: DetectedShape | None) -> tuple[int, int]:
        if detection is None:
            return (0, 0)
        agreement = detection.agreement(shape)
        return (int(all(agreement.values())), sum(agreement.values()))

    def search(index: int, used: frozenset[int]) -> tuple[tuple[int, int], list[DetectedShape | None]]:
        if index == len(shapes):
            return (0, 0), []
        best_total, best_choice = search(index + 1, used)
        best_choice = [None, *best_choice]
        for position, detection in enumerate(pool):
            if position in used:
                continue
            rest_total, rest = search(index + 1, used | {position})
            here = value(shapes[index], detection)
            total = (here[0] + rest_total[0], here[1] + rest_total[1])
            if total > best_total:
                best_total, best_choice = total, [detection, *rest]
        return best_total, best_choice

    return search(0, frozenset())[1]


def _attribute_ok(shapes: Sequence[Shape], assigned: Sequence[DetectedShape | None], attribute: str) -> bool:
    return all(d is not None and d.agreement(s)[attribute] for s, d in zip(shapes, assigned))


def score_generation(image: Image.Image, scene: Scene, *, check_size: bool = True) -> dict[str, bool]:
    """Does ``image`` show ``scene``? Per attribute over all its objects, and ``all_ok`` overall.

    ``all_ok`` needs kind, colour and cell of every object, no extra shapes (``count_ok``) and, when
    ``check_size``, the sizes.
    """
    detections = analyse_image(image)
    assigned = _assign(scene.shapes, detections)
    scores = {
        "shape_ok": _attribute_ok(scene.shapes, assigned, "kind"),
        "colour_ok": _attribute_ok(scene.shapes, assigned, "colour"),
        "position_ok": _attribute_ok(scene.shapes, assigned, "cell"),
        "size_ok": _attribute_ok(scene.shapes, assigned, "size"),
        "count_ok": len(detections) == len(scene.shapes),
    }
    required = ["shape_ok", "colour_ok", "position_ok", "count_ok"] + (["size_ok"] if check_size else [])
    scores["all_ok"] = all(scores[name] for name in required)
    return scores


def score_edit(image: Image.Image, source_scene: Scene, target_scene: Scene) -> dict[str, bool]:
    """Did the edit land? ``target_ok``: every new/changed object is there exactly and the objects it
    replaced are gone; ``untouched_ok``: every other object is still there with the same kind, colour,
    size and cell; ``all_ok`` needs both and no extra shapes (``count_ok``).
    """
    detections = analyse_image(image)
    assigned = _assign(target_scene.shapes, detections)
    unmatched_source = list(source_scene.shapes)
    is_changed = []  # per target shape: new or changed by the edit?
    for shape in target_scene.shapes:
        if shape in unmatched_source:
            unmatched_source.remove(shape)
            is_changed.append(False)
        else:
            is_changed.append(True)
    replaced = unmatched_source  # source objects the edit removed or changed
    ok = [d is not None and d.matches(s) for s, d in zip(target_scene.shapes, assigned)]
    gone = not any(detection.matches(old) for old in replaced for detection in detections)
    scores = {
        "target_ok": gone and all(o for o, changed in zip(ok, is_changed) if changed),
        "untouched_ok": all(o for o, changed in zip(ok, is_changed) if not changed),
        "count_ok": len(detections) == len(target_scene.shapes),
    }
    scores["all_ok"] = scores["target_ok"] and scores["untouched_ok"] and scores["count_ok"]
    return scores


def score_reconstruction(image: Image.Image, scene: Scene) -> dict[str, bool]:
    """Did a reconstruction keep every object's kind and colour? (``all_ok``; position is not required.)"""
    assigned = _assign(scene.shapes, analyse_image(image))
    scores = {
        "shape_ok": _attribute_ok(scene.shapes, assigned, "kind"),
        "colour_ok": _attribute_ok(scene.shapes, assigned, "colour"),
    }
    scores["all_ok"] = all(
        d is not None and d.kind == s.kind and d.colour == s.colour for s, d in zip(scene.shapes, assigned)
    )
    return scores


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportRow:
    """One aggregated metric: mean over ``count`` values, and its bar when one is set."""

    task: str
    metric: str
    mean: float
    count: int
    is_rate: bool  # every value was a bool: shown as a percentage
    bar: float | None

    @property
    def passed(self) -> bool | None:
        """True/False against the bar, None without a bar."""
        return None if self.bar is None else self.mean >= self.bar


class Report:
    """Collects named metric values per task and prints them as an aligned table with PASS/FAIL bars."""

    def __init__(self, bars: Mapping[tuple[str, str], float] | None = None) -> None:
        self._values: dict[tuple[str, str], list[float]] = {}
        self._rates: dict[tuple[str, str], bool] = {}
        self.bars: dict[tuple[str, str], float] = dict(DONE_BARS if bars is None else bars)

    def add(self, task: str, metric: str, value: float | bool) -> None:
        """Record one value (a bool counts as 0/1 and makes the row a percentage)."""
        key = (task, metric)
        number = float(value)
        if not math.isfinite(number):
            raise ConfigError(f"metric {task}/{metric} got the non-finite value {value!r}; record finite numbers")
        self._values.setdefault(key, []).append(number)
        self._rates[key] = self._rates.get(key, True) and isinstance(value, (bool, np.bool_))

    def add_scores(self, task: str, scores: Mapping[str, float | bool]) -> None:
        """Record every entry of a scorer's dict under ``task``."""
        for metric, value in scores.items():
            self.add(task, metric, value)

    def mean(self, task: str, metric: str) -> float:
        """Mean of the values recorded for (task, metric)."""
        values = self._values.get((task, metric))
        if not values:
            raise KeyError(f"no values recorded for {task}/{metric}; recorded: {sorted(self._values)}")
        return sum(values) / len(values)

    def rows(self) -> list[ReportRow]:
        """Rows in the order metrics were first added."""
        return [
            ReportRow(
                task,
                metric,
                self.mean(task, metric),
                len(values),
                self._rates[(task, metric)],
                self.bars.get((task, metric)),
            )
            for (task, metric), values in self._values.items()
        ]

    def passed(self) -> bool:
        """True when every row that has a bar reaches it (and at least one bar was checked)."""
        checked = [row.passed for row in self.rows() if row.passed is not None]
        return bool(checked) and all(checked)

    def to_dict(self) -> dict[str, dict[str, float]]:
        """``{task: {metric: mean}}`` for JSON output."""
        result: dict[str, dict[str, float]] = {}
        for row in self.rows():
            result.setdefault(row.task, {})[row.metric] = row.mean
        return result

    def format_table(self) -> str:
        """An aligned text table: task, metric, n, value, bar, status."""

        def show(value: float, is_rate: bool) -> str:
            return f"{100 * value:.1f}%" if is_rate else f"{value:.3f}"

        header = ("task", "metric", "n", "value", "bar", "status")
        lines = [header]
        for row in self.rows():
            bar = "" if row.bar is None else (f">= {100 * row.bar:.0f}%" if row.is_rate else f">= {row.bar:.3f}")
            status = {None: "", True: "PASS", False: "FAIL"}[row.passed]
            lines.append((row.task, row.metric, str(row.count), show(row.mean, row.is_rate), bar, status))
        widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
        right_aligned = {2, 3}
        rendered = []
        for line in lines:
            cells = [
                cell.rjust(width) if column in right_aligned else cell.ljust(width)
                for column, (cell, width) in enumerate(zip(line, widths))
            ]
            rendered.append("  ".join(cells).rstrip())
        rendered.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(rendered)

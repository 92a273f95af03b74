"""Turning whatever the caller hands us into one well-defined RGB ``PIL.Image``.

``load_image`` accepts a path (``str`` / ``Path``), a ``data:image/...;base64,`` URL, encoded bytes, a PIL
image or a numpy array and applies these normalisations (each is tested):

* EXIF orientation is applied first (a phone photo comes out the way it is displayed).
* Animated or multi-frame images (GIF, APNG, WebP, TIFF pages) -> their first frame.
* Transparency (RGBA, LA, La, PA, RGBa, P or L/RGB with a ``transparency`` key) is composited on white.
* CMYK, YCbCr, LAB, HSV, L, 1, P -> RGB with Pillow's conversions (embedded ICC profiles are ignored).
* High-bit-depth modes (I;16*, I, F) are rescaled to 8 bits by their actual range: the smallest
  value becomes 0 and the largest 255. A constant image becomes black if its value is <= 0, else white.
  Non-finite values (NaN, inf) of F images are treated as 0.
* Numpy arrays: (H, W) or (H, W, C) with C in 1, 3, 4 (4 = RGBA). uint8, and any integer array whose
  values all lie in [0, 255], is used as is; bool maps to 0/255; float arrays with all values in [0, 1]
  are scaled by 255; anything else is rescaled by its actual range like the high-bit modes. NaN or
  infinite values in an array are an error.

Every image of at least 1x1 pixel is accepted, including extreme aspect ratios such as 20000x50: the
any-res step (``anyres.py``) stretches it to its grid exactly as the official code does. Sizes are
checked against ``max_pixels`` from the file header, before any pixel is decoded; Pillow's own
decompression-bomb warnings and errors become ``ImageTooLargeError`` (never a warning). The caller's
PIL image is never modified; the result is always a new image.

``DEFAULT_MAX_PIXELS`` is the one pixel limit of the whole library: ``SeedX`` (its ``max_pixels``
attribute), the image memory (``ImageMemory.open(max_pixels=...)``), the tools and the CLI all default
to it and refuse larger images through ``check_image_size``, with the same ``ImageTooLargeError`` and
message. ``check_image_source`` is the one type check for image arguments (``InvalidImageError`` naming
the argument and the accepted types).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import PIL.Image
from PIL import Image, ImageOps, UnidentifiedImageError

from seedx_agent.errors import ConfigError, ImageTooLargeError, InvalidImageError, InvalidPromptError

__all__ = [
    "ACCEPTED_IMAGE_TYPES",
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "as_image_list",
    "check_image_size",
    "check_image_source",
    "is_image_source",
    "load_image",
    "to_rgb",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000  # e.g. 8000x8000; the one limit of the library (module docstring)
ImageSource = str | Path | bytes | PIL.Image.Image | np.ndarray
ACCEPTED_IMAGE_TYPES = (
    "a path (str or pathlib.Path), a 'data:image/...;base64,' URL, encoded bytes, a PIL.Image.Image or a numpy array"
)
_SOURCE_TYPES = (str, Path, bytes, bytearray, memoryview, PIL.Image.Image, np.ndarray)

_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# warnings.catch_warnings swaps process-wide state: serialise our own header reads around it.
_OPEN_LOCK = threading.Lock()


def check_image_source(value: object, *, argument: str = "image") -> None:
    """Raise ``InvalidImageError`` naming ``argument`` and the accepted types unless ``value`` is an image source."""
    if not isinstance(value, _SOURCE_TYPES):
        got = "None" if value is None else f"a {type(value).__name__}"
        raise InvalidImageError(f"{argument} must be an image: {ACCEPTED_IMAGE_TYPES}; got {got}")


def check_image_size(
    image: PIL.Image.Image | tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    what: str | None = None,
) -> None:
    """Refuse an image (or a (width, height)) with a side under 1 pixel or more than ``max_pixels`` pixels.

    The one size check of the library (``ImageTooLargeError``, message naming the size, the limit and the
    fix); ``what`` describes the image in the message (default: its mode and size).
    """
    _check_max_pixels(max_pixels)
    if isinstance(image, PIL.Image.Image):
        width, height = image.size
        what = what or _describe_pil(image)
    else:
        width, height = image
        what = what or "image"
    _check_size(width, height, what, max_pixels)


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> PIL.Image.Image:
    """Read ``source`` into a new RGB image, normalised as described in the module docstring.

    Raises ``InvalidImageError`` (naming the source and the cause) for missing, empty, truncated,
    corrupt or non-image input, and ``ImageTooLargeError`` when width*height exceeds ``max_pixels``.
    """
    _check_max_pixels(max_pixels)
    if isinstance(source, PIL.Image.Image):
        return _from_pil(source, max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _decode(io.BytesIO(data), len(data), f"<{len(data)} bytes>", max_pixels)
    if isinstance(source, str) and source.startswith("data:"):
        data = _data_url_bytes(source)
        return _decode(io.BytesIO(data), len(data), f"data URL ({len(source)} characters)", max_pixels)
    if isinstance(source, (str, Path)):
        file = _check_path(source)
        what = repr(str(source))
        try:
            with file.open("rb") as stream:  # only the header is read before the size check
                return _decode(stream, file.stat().st_size, what, max_pixels)
        except OSError as exc:
            raise InvalidImageError(f"image file {what} cannot be read: {exc}") from exc
    got = "None" if source is None else f"a {type(source).__name__}"
    raise InvalidImageError(f"cannot read an image from {got}; pass {ACCEPTED_IMAGE_TYPES}")


def to_rgb(image: PIL.Image.Image, *, apply_exif_orientation: bool = True) -> PIL.Image.Image:
    """Apply EXIF orientation (optional) and the mode normalisations of this module; returns a new RGB image."""
    oriented = ImageOps.exif_transpose(image) if apply_exif_orientation else image.copy()
    if oriented is None:  # exif_transpose returns None only with in_place=True; keeps type checkers happy
        oriented = image.copy()
    mode = oriented.mode
    try:
        if mode in _HIGH_BIT_MODES:
            return _rescale_to_8bit(oriented).convert("RGB")
        has_alpha = "A" in mode or "a" in mode  # RGBA, LA, PA, RGBa, La
        if has_alpha or "transparency" in oriented.info:
            # Premultiplied "La" only converts to LA in Pillow; every other alpha mode converts directly.
            rgba = (oriented.convert("LA") if mode == "La" else oriented).convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return oriented if mode == "RGB" else oriented.convert("RGB")
    except ValueError as exc:
        raise InvalidImageError(f"image mode {mode!r} cannot be converted to RGB: {exc}") from exc


# -- sources ---------------------------------------------------------------------------------------


def _check_max_pixels(max_pixels: object) -> None:
    """Raise ``ConfigError`` unless ``max_pixels`` is a positive int."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ConfigError(f"max_pixels must be a positive integer, got {max_pixels!r}")


def _describe_pil(image: PIL.Image.Image) -> str:
    """How error messages name a PIL image: its mode and size."""
    return f"PIL image ({image.mode}, {image.size[0]}x{image.size[1]})"


def _check_path(path: str | Path) -> Path:
    name = str(path)
    if name.startswith(("http://", "https://")):
        raise InvalidImageError(f"{name!r} is a URL; images are not downloaded: fetch it first and pass the bytes")
    file = Path(path).expanduser()
    if not file.exists():
        raise InvalidImageError(f"image file {name!r} does not exist")
    if not file.is_file():
        raise InvalidImageError(f"image path {name!r} is not a regular file")
    return file


def _data_url_bytes(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise InvalidImageError(f"data URL {url[:40]!r}... is not of the form 'data:image/<type>;base64,<data>'")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError(f"data URL {url[:40]!r}... has invalid base64 data: {exc}") from exc


def _check_size(width: int, height: int, what: str, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise InvalidImageError(f"{what} has size {width}x{height}; both sides must be at least 1 pixel")
    if width * height > max_pixels:
        default = " (the library-wide default, images.DEFAULT_MAX_PIXELS)" if max_pixels == DEFAULT_MAX_PIXELS else ""
        raise ImageTooLargeError(
            f"{what} is {width}x{height} = {width * height} pixels, more than max_pixels={max_pixels}{default}; "
            "downscale it first, or raise the limit: max_pixels= of load_image / ImageMemory.open, "
            "or SeedX.max_pixels"
        )


def _decode(stream: BinaryIO, num_bytes: int, what: str, max_pixels: int) -> PIL.Image.Image:
    if num_bytes == 0:
        raise InvalidImageError(f"image {what} is empty (0 bytes)")
    with _OPEN_LOCK, warnings.catch_warnings():
        # Our max_pixels check below replaces Pillow's bomb warning; its hard error is turned into ours.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(stream)  # reads the header only
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(
                f"image {what} exceeds Pillow's decompression-bomb limit ({exc}); downscale it first"
            ) from exc
        except UnidentifiedImageError as exc:
            raise InvalidImageError(
                f"image {what} is not in a recognised image format (corrupt data or not an image)"
            ) from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise InvalidImageError(f"image {what} has a corrupt header: {exc}") from exc
    _check_size(*image.size, f"image {what}", max_pixels)
    if getattr(image, "is_animated", False):  # cheaper than n_frames, which may scan every frame
        logger.debug("image %s has several frames; using the first", what)
    try:
        image.load()  # decodes the first frame (current after open)
        return to_rgb(image)
    except InvalidImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImageError(f"image {what} cannot be decoded (truncated or corrupt data): {exc}") from exc
    finally:
        image.close()


def _from_pil(image: PIL.Image.Image, max_pixels: int) -> PIL.Image.Image:
    what = _describe_pil(image)
    _check_size(*image.size, what, max_pixels)
    try:
        current = image.tell()
        if current != 0:
            # First frame without leaving the caller's image on a different frame.
            image.seek(0)
            try:
                first = image.copy()
            finally:
                image.seek(current)
        else:
            first = image
        return to_rgb(first)
    except InvalidImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImageError(f"{what} cannot be decoded (truncated or corrupt data): {exc}") from exc


def _from_array(array: np.ndarray, max_pixels: int) -> PIL.Image.Image:
    what = f"array of shape {array.shape} and dtype {array.dtype}"
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InvalidImageError(
            f"{what} is not an image; expected (H, W) or channels-last (H, W, C) with C in 1, 3, 4 "
            "(transpose channels-first arrays with array.transpose(1, 2, 0))"
        )
    height, width = array.shape[:2]
    _check_size(width, height, what, max_pixels)
    pixels = _array_to_uint8(array, what)  # uint8 (H, W), (H, W, 3) or (H, W, 4) -> L, RGB or RGBA
    return to_rgb(Image.fromarray(np.ascontiguousarray(pixels)))


def _array_to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InvalidImageError(f"{what} has an unsupported dtype; use uint8, bool, an integer or a float dtype")
    values = array.astype(np.float64)
    if np.issubdtype(array.dtype, np.integer) and values.min() >= 0 and values.max() <= 255:
        return array.astype(np.uint8)  # e.g. an int64 array of 8-bit values
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(values)
        if not finite.all():
            raise InvalidImageError(f"{what} contains NaN or infinite values")
        if values.min() >= 0.0 and values.max() <= 1.0:
            return np.round(values * 255.0).astype(np.uint8)
    return _rescale_values(values)


def _rescale_values(values: np.ndarray) -> np.ndarray:
    """Map float64 values linearly so that min -> 0 and max -> 255 (uint8, rounded)."""
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.full(values.shape, 0 if high <= 0 else 255, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _rescale_to_8bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """I;16 / I / F image -> L image rescaled by its actual range (module docstring)."""
    values: Any = np.asarray(image, dtype=np.float64)  # (H, W)
    values = np.where(np.isfinite(values), values, 0.0)
    return Image.fromarray(_rescale_values(values), mode="L")


def is_image_source(value: object) -> bool:
    """Whether ``value`` is one image (not a sequence of them)."""
    return isinstance(value, (str, Path, bytes, bytearray, memoryview, PIL.Image.Image, np.ndarray))


def as_image_list(images: object, argument: str = "images", *, allow_empty: bool = False) -> list[object]:
    """One image -> ``[image]``; a list/tuple -> a list; ``None`` or any other type -> ``InvalidImageError``."""
    if is_image_source(images):
        return [images]
    if not isinstance(images, Sequence):
        check_image_source(images, argument=argument)  # raises, naming the argument and the accepted types
    result = list(images)  # type: ignore[call-overload]
    if not result and not allow_empty:
        raise InvalidPromptError(f"no image given in {argument}; pass at least one image")
    return result

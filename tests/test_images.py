"""load_image: every accepted source, every mode normalisation, and every error path."""

from __future__ import annotations

import base64
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seedx_agent.errors import ConfigError, ImageTooLargeError, InvalidImageError
from seedx_agent.pipeline.images import load_image, to_rgb


def _encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _pixels(image: Image.Image) -> list:
    assert image.mode == "RGB"
    return np.asarray(image).tolist()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels but whose data stops after 100 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 100))


RGB_SAMPLE = Image.fromarray(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10)  # 3x2, distinct values


# -- sources ---------------------------------------------------------------------------------------


def test_path_str_and_pathlib(tmp_path: Path) -> None:
    file = tmp_path / "sample.png"
    file.write_bytes(_encode(RGB_SAMPLE))
    for source in (file, str(file)):
        image = load_image(source)
        assert image.size == (3, 2)
        assert _pixels(image) == np.asarray(RGB_SAMPLE).tolist()


def test_bytes_and_data_url() -> None:
    data = _encode(RGB_SAMPLE)
    assert _pixels(load_image(data)) == np.asarray(RGB_SAMPLE).tolist()
    assert _pixels(load_image(bytearray(data))) == np.asarray(RGB_SAMPLE).tolist()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert _pixels(load_image(url)) == np.asarray(RGB_SAMPLE).tolist()


def test_jpeg_bytes_decode_to_rgb() -> None:
    image = load_image(_encode(Image.new("RGB", (16, 8), (200, 30, 30)), "JPEG", quality=95))
    assert image.mode == "RGB" and image.size == (16, 8)
    assert np.abs(np.asarray(image).astype(int) - [200, 30, 30]).max() <= 4


def test_pil_input_returns_a_new_image_and_leaves_the_caller_alone() -> None:
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    before = np.asarray(rgba).copy()
    out = load_image(rgba)
    assert out is not rgba and out.mode == "RGB"
    assert rgba.mode == "RGBA" and np.array_equal(np.asarray(rgba), before)
    rgb = RGB_SAMPLE.copy()
    out = load_image(rgb)
    assert out is not rgb
    out.putpixel((0, 0), (1, 2, 3))
    assert rgb.getpixel((0, 0)) == RGB_SAMPLE.getpixel((0, 0))


# -- numpy arrays ----------------------------------------------------------------------------------


def test_numpy_uint8_gray_and_rgba() -> None:
    rgb = np.asarray(RGB_SAMPLE)
    assert _pixels(load_image(rgb)) == rgb.tolist()
    gray = np.array([[0, 100]], dtype=np.uint8)
    assert _pixels(load_image(gray)) == [[[0, 0, 0], [100, 100, 100]]]
    assert _pixels(load_image(gray[..., None])) == [[[0, 0, 0], [100, 100, 100]]]
    rgba = np.array([[[0, 0, 0, 0], [1, 2, 3, 255]]], dtype=np.uint8)
    assert _pixels(load_image(rgba)) == [[[255, 255, 255], [1, 2, 3]]]


def test_numpy_float_bool_and_wide_integers() -> None:
    unit = np.array([[0.0, 0.5, 1.0]])  # float in [0, 1]: scaled by 255
    assert [p[0] for p in _pixels(load_image(unit))[0]] == [0, 128, 255]
    wide = np.array([[-2.0, 0.0, 2.0]])  # float outside [0, 1]: rescaled by its range
    assert [p[0] for p in _pixels(load_image(wide))[0]] == [0, 128, 255]
    assert [p[0] for p in _pixels(load_image(np.array([[True, False]])))[0]] == [255, 0]
    deep = np.array([[1000, 2000, 3000]], dtype=np.uint16)  # beyond 8 bits: rescaled by its range
    assert [p[0] for p in _pixels(load_image(deep))[0]] == [0, 128, 255]
    eight_bit_values = np.array([[0, 100, 200]], dtype=np.int64)  # e.g. np.array of Python ints: kept
    assert [p[0] for p in _pixels(load_image(eight_bit_values))[0]] == [0, 100, 200]


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((3, 8, 8), dtype=np.uint8), "transpose"),  # channels-first
        (np.zeros(5, dtype=np.uint8), "not an image"),
        (np.array([[np.nan, 0.5]]), "NaN"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "at least 1 pixel"),
        (np.array([["a"]]), "dtype"),
    ],
)
def test_numpy_rejects_bad_arrays(array: np.ndarray, words: str) -> None:
    with pytest.raises(InvalidImageError, match=words):
        load_image(array)


# -- mode normalisations ---------------------------------------------------------------------------


def test_rgba_is_composited_on_white() -> None:
    image = Image.new("RGBA", (3, 1))
    image.putdata([(255, 0, 0, 128), (9, 9, 9, 0), (1, 2, 3, 255)])
    # half-transparent red over white: G = B = 255 * 127/255; transparent -> white; opaque unchanged
    assert _pixels(load_image(image)) == [[[255, 127, 127], [255, 255, 255], [1, 2, 3]]]
    assert _pixels(load_image(_encode(image))) == [[[255, 127, 127], [255, 255, 255], [1, 2, 3]]]


def test_la_is_composited_on_white() -> None:
    image = Image.new("LA", (2, 1))
    image.putdata([(0, 0), (100, 255)])
    assert _pixels(load_image(image)) == [[[255, 255, 255], [100, 100, 100]]]
    # Premultiplied variants too.
    assert _pixels(load_image(image.convert("La"))) == [[[255, 255, 255], [100, 100, 100]]]
    assert _pixels(load_image(Image.new("RGBa", (1, 1), (0, 0, 0, 0)))) == [[[255, 255, 255]]]


@pytest.mark.parametrize("mode", ["YCbCr", "HSV", "LAB", "RGBX", "I;16B", "PA"])
def test_other_modes_become_rgb(mode: str) -> None:
    image = load_image(Image.new(mode, (2, 3)))
    assert image.mode == "RGB" and image.size == (2, 3)


def test_palette_with_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([0, 255, 0, 10, 20, 30] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0  # palette index 0 (green) is transparent
    assert _pixels(load_image(image)) == [[[255, 255, 255], [10, 20, 30]]]
    assert _pixels(load_image(_encode(image))) == [[[255, 255, 255], [10, 20, 30]]]


def test_palette_without_transparency_cmyk_gray_and_bilevel() -> None:
    palette = Image.new("P", (1, 1))
    palette.putpalette([7, 8, 9] + [0] * 765)
    assert _pixels(load_image(palette)) == [[[7, 8, 9]]]
    assert _pixels(load_image(Image.new("CMYK", (1, 1), (0, 255, 255, 0)))) == [[[255, 0, 0]]]
    assert _pixels(load_image(Image.new("CMYK", (1, 1), (0, 0, 0, 0)))) == [[[255, 255, 255]]]
    assert _pixels(load_image(Image.new("L", (1, 1), 77))) == [[[77, 77, 77]]]
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    assert _pixels(load_image(bilevel)) == [[[0, 0, 0], [255, 255, 255]]]
    cmyk_jpeg = load_image(_encode(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG"))
    assert cmyk_jpeg.mode == "RGB"


def test_high_bit_modes_are_rescaled_by_their_range() -> None:
    i16 = Image.fromarray(np.array([[1000, 2000, 3000]], dtype=np.uint16))
    assert i16.mode == "I;16"
    assert [p[0] for p in _pixels(load_image(i16))[0]] == [0, 128, 255]
    assert [p[0] for p in _pixels(load_image(_encode(i16)))[0]] == [0, 128, 255]  # 16-bit PNG file
    i32 = Image.fromarray(np.array([[5, 10, 15]], dtype=np.int32))
    assert i32.mode == "I"
    assert [p[0] for p in _pixels(load_image(i32))[0]] == [0, 128, 255]
    f32 = Image.fromarray(np.array([[-1.0, 0.0, 3.0, np.nan]], dtype=np.float32))
    assert f32.mode == "F"
    assert [p[0] for p in _pixels(load_image(f32))[0]] == [0, 64, 255, 64]  # NaN counts as 0


def test_constant_high_bit_images() -> None:
    white = Image.fromarray(np.full((2, 2), 40000, dtype=np.uint16))
    black = Image.fromarray(np.zeros((2, 2), dtype=np.uint16))
    assert _pixels(load_image(white))[0][0] == [255, 255, 255]
    assert _pixels(load_image(black))[0][0] == [0, 0, 0]


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert _pixels(load_image(data))[0][0] == [255, 0, 0]
    # A caller's animated image sitting on frame 1: we still take frame 0 and leave it on frame 1.
    animated = Image.open(io.BytesIO(data))
    animated.seek(1)
    assert _pixels(load_image(animated))[0][0] == [255, 0, 0]
    assert animated.tell() == 1


def _oriented_sample() -> Image.Image:
    image = Image.new("RGB", (4, 2), (255, 0, 0))
    image.paste((0, 0, 255), (2, 0, 4, 2))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    image.info["exif"] = exif.tobytes()
    return image


def test_exif_orientation_is_applied() -> None:
    source = _oriented_sample()
    data = _encode(source, exif=source.info["exif"])
    for given in (data, source):
        image = load_image(given)
        assert image.size == (2, 4)
        red_channel = np.asarray(image)[:, :, 0]
        assert red_channel.tolist() == [[255, 255], [255, 255], [0, 0], [0, 0]]  # left half is now on top
    assert source.size == (4, 2)  # caller's image unchanged
    assert to_rgb(source, apply_exif_orientation=False).size == (4, 2)


def test_tiny_and_extreme_aspect_images_are_accepted() -> None:
    assert load_image(Image.new("RGB", (1, 1), (5, 6, 7))).size == (1, 1)
    assert load_image(_encode(Image.new("RGB", (20000, 50)))).size == (20000, 50)


# -- errors ----------------------------------------------------------------------------------------


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match=r"nope\.png.*does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InvalidImageError, match="not a regular file"):
        load_image(tmp_path)


def test_empty_file_and_empty_bytes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InvalidImageError, match=r"empty\.jpg.*empty \(0 bytes\)"):
        load_image(empty)
    with pytest.raises(InvalidImageError, match=r"empty \(0 bytes\)"):
        load_image(b"")


def test_truncated_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = _encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidImageError, match=r"cut\.png.*truncated or corrupt"):
        load_image(cut)


def test_corrupt_and_non_image_data(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="not in a recognised image format"):
        load_image(np.random.default_rng(0).bytes(200))
    text = tmp_path / "notes.txt"
    text.write_text("hello, not an image")
    with pytest.raises(InvalidImageError, match=r"notes\.txt.*not in a recognised image format"):
        load_image(text)


def test_bad_data_url_url_and_type() -> None:
    with pytest.raises(InvalidImageError, match="base64"):
        load_image("data:image/png;base64,@@@")
    with pytest.raises(InvalidImageError, match="data:image/<type>;base64"):
        load_image("data:text/plain,hello")
    with pytest.raises(InvalidImageError, match="URL"):
        load_image("https://example.com/cat.png")
    with pytest.raises(InvalidImageError, match="int"):
        load_image(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidImageError, match="at least 1 pixel"):
        load_image(Image.new("RGB", (0, 0)))
    with pytest.raises(ConfigError, match="max_pixels"):
        load_image(RGB_SAMPLE, max_pixels=0)


def test_max_pixels_limit() -> None:
    image = Image.new("RGB", (10, 10))
    assert load_image(image, max_pixels=100).size == (10, 10)  # the limit itself is allowed
    with pytest.raises(ImageTooLargeError, match=r"10x10 = 100 pixels.*max_pixels=99"):
        load_image(image, max_pixels=99)
    with pytest.raises(ImageTooLargeError, match="max_pixels=99"):
        load_image(_encode(image), max_pixels=99)
    with pytest.raises(ImageTooLargeError):
        load_image(np.zeros((10, 10, 3), dtype=np.uint8), max_pixels=99)


def test_size_is_checked_from_the_header_before_decoding() -> None:
    # The pixel data is truncated: if we decoded first we would report truncation, not the size.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLargeError, match="10000x10000"):
            load_image(_png_header_only(10_000, 10_000))  # 1e8 pixels: above our default 64M
        # Pillow's hard decompression-bomb error (> 2 x its limit) also becomes our error.
        with pytest.raises(ImageTooLargeError, match="decompression-bomb"):
            load_image(_png_header_only(100_000, 100_000))
        # Above Pillow's warning threshold but within a raised max_pixels: no warning leaks out.
        with pytest.raises(InvalidImageError, match="truncated") as info:
            load_image(_png_header_only(10_000, 10_000), max_pixels=200_000_000)
        assert not isinstance(info.value, ImageTooLargeError)
    assert [str(w.message) for w in caught] == []


# -- one pixel limit for the whole library (issue 23, finding 7) -----------------------------------------


def test_one_pixel_limit_for_the_model_and_the_memory(tmp_path: Path) -> None:
    """The same oversize image is refused by ``comprehend`` and ``ImageMemory.add`` with the same error."""
    pytest.importorskip("chromadb")
    from seedx_agent.memory import ImageMemory
    from seedx_agent.memory import store as memory_store

    from seedx_agent.model import SeedX
    from seedx_agent.pipeline.images import DEFAULT_MAX_PIXELS, check_image_size

    assert memory_store.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS == 64_000_000  # defined once, in images.py
    check_image_size((7900, 7900))  # the size of the example (62.4 Mpx): within the one limit
    header = _png_header_only(8001, 8000)  # 64.008 Mpx: one row over
    model = SeedX.from_pretrained("tiny-random", variants=("seed-x-i",))
    embedder = lambda images: np.ones((len(images), 4), dtype=np.float32)  # noqa: E731 - never reached
    with ImageMemory.open(tmp_path / "memory", image_embedder=embedder) as memory:
        for source in (lambda: Image.open(io.BytesIO(header)), lambda: header):  # a lazy PIL image (no pixels), bytes
            with pytest.raises(ImageTooLargeError) as by_model:
                model.comprehend(source(), "What?")
            with pytest.raises(ImageTooLargeError) as by_memory:
                memory.add(source(), kind="input", namespace="u")
            assert str(by_model.value) == str(by_memory.value)
            message = str(by_model.value)
            assert "8001x8000 = 64008000 pixels" in message and "max_pixels=64000000" in message
            assert "DEFAULT_MAX_PIXELS" in message and "downscale it first" in message
        assert memory.count() == 0
    model.max_pixels = 100  # configurable per model (and per memory with ImageMemory.open(max_pixels=...))
    with pytest.raises(ImageTooLargeError, match=r"20x20 = 400 pixels, more than max_pixels=100; downscale"):
        model.comprehend(Image.new("RGB", (20, 20)), "What?")


def test_check_image_size_and_source() -> None:
    from seedx_agent.pipeline.images import check_image_size, check_image_source

    check_image_size(Image.new("RGB", (10, 10)), max_pixels=100)
    with pytest.raises(ImageTooLargeError, match=r"^PIL image \(L, 11x10\) is 11x10 = 110 pixels.*max_pixels=100"):
        check_image_size(Image.new("L", (11, 10)), max_pixels=100)
    with pytest.raises(InvalidImageError, match="at least 1 pixel"):
        check_image_size((0, 5))
    with pytest.raises(ConfigError, match="max_pixels"):
        check_image_size((5, 5), max_pixels=0)
    for good in ("a.png", Path("a.png"), b"", Image.new("RGB", (1, 1)), np.zeros((1, 1))):
        check_image_source(good)
    with pytest.raises(InvalidImageError, match=r"^picture must be an image: a path .*; got None$"):
        check_image_source(None, argument="picture")
    with pytest.raises(InvalidImageError, match=r"cannot read an image from None; pass a path"):
        load_image(None)  # type: ignore[arg-type]

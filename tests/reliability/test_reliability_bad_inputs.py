"""Bad inputs at every boundary: each case names the exact error type, the message's key words, and that
nothing changed (files, the caller's objects, the model's weights, the memory's records)."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from langchain_core.tools import BaseTool
from PIL import Image
from reliability_helpers import call_tool, tree_snapshot
from safetensors.torch import save_file
from seedx_agent.memory import ImageMemory, InvalidImageIdError, InvalidMemoryRequestError, UnknownImageError

from seedx_agent.config import SeedXConfig
from seedx_agent.errors import (
    CapabilityMissingError,
    CheckpointError,
    ConfigError,
    ImageTooLargeError,
    InvalidBoxError,
    InvalidImageError,
    InvalidPromptError,
    StateDictMismatchError,
    UnknownPresetError,
    UnsafeCheckpointError,
)
from seedx_agent.model import SeedX
from seedx_agent.pipeline import prompts
from seedx_agent.pipeline.anyres import preprocess
from seedx_agent.pipeline.images import load_image
from seedx_agent.pipeline.tokens import BOI, BOP, BOX_END, BOX_START, EOI, EOP, Box, TokenIds, decode_box, encode_box
from seedx_agent.weights import load_strict, read_state_dict


def expect(fn: Callable[[], object], error_type: type[Exception], *words: str) -> Exception:
    """Run ``fn``; it must raise exactly ``error_type`` whose message contains every word in ``words``."""
    with pytest.raises(Exception) as caught:
        fn()
    error = caught.value
    assert type(error) is error_type, f"expected {error_type.__name__}, got {type(error).__name__}: {error}"
    for word in words:
        assert word in str(error), f"{word!r} not in message: {error}"
    return error


def png_bytes(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=save.pop("format", "PNG"), **save)  # type: ignore[arg-type]
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming ``width`` x ``height`` and a tiny IDAT: a decompression-bomb header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------------ images

GOOD_PNG = png_bytes(Image.new("RGB", (16, 12), (10, 200, 30)))
NOISE_PNG = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))

FILE_CASES = [
    ("zero-byte file", b"", InvalidImageError, ["empty (0 bytes)"]),
    ("png cut in its pixel data", NOISE_PNG[: len(NOISE_PNG) * 6 // 10], InvalidImageError, ["truncated or corrupt"]),
    ("png cut in its header", GOOD_PNG[:20], InvalidImageError, ["corrupt"]),
    ("png magic then garbage", b"\x89PNG\r\n\x1a\n" + b"\xff" * 64, InvalidImageError, ["image", "corrupt"]),
    ("text file", b"name,colour\nball,red\n", InvalidImageError, ["not in a recognised image format"]),
    ("bomb header 100000x100000", png_header_only(100_000, 100_000), ImageTooLargeError, ["decompression-bomb"]),
    (
        "header over max_pixels 9000x9000",
        png_header_only(9_000, 9_000),
        ImageTooLargeError,
        ["9000x9000", "max_pixels"],
    ),
]


@pytest.mark.parametrize(("label", "data", "error_type", "words"), FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_image_files(
    tmp_path: Path, label: str, data: bytes, error_type: type[Exception], words: list[str]
) -> None:
    path = tmp_path / "input.png"
    path.write_bytes(data)
    before = tree_snapshot(tmp_path)
    error = expect(lambda: load_image(path), error_type, *words)
    assert str(path) in str(error)  # the message names the file
    expect(lambda: load_image(data), error_type, *words)  # the same bytes in memory fail the same way
    assert tree_snapshot(tmp_path) == before and path.read_bytes() == data


@pytest.mark.parametrize(
    ("label", "source", "error_type", "words"),
    [
        ("missing path", "/nonexistent/dir/cat.png", InvalidImageError, ["does not exist"]),
        ("url", "https://example.com/cat.png", InvalidImageError, ["is a URL", "not downloaded"]),
        ("data url without base64", "data:image/png,abc", InvalidImageError, ["data:image/<type>;base64"]),
        ("data url bad base64", "data:image/png;base64,@@@@", InvalidImageError, ["invalid base64"]),
        ("integer", 42, InvalidImageError, ["cannot read an image from a int"]),
        ("zero-width PIL", Image.new("RGB", (0, 5)), InvalidImageError, ["0x5", "at least 1 pixel"]),
        ("channels-first array", np.zeros((3, 8, 8), np.uint8), InvalidImageError, ["transpose"]),
        ("NaN array", np.full((4, 4), np.nan), InvalidImageError, ["NaN"]),
        ("complex array", np.zeros((4, 4), np.complex64), InvalidImageError, ["unsupported dtype"]),
        ("5-d array", np.zeros((2, 2, 2, 2, 2), np.uint8), InvalidImageError, ["not an image"]),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None,
)
def test_bad_image_sources(label: str, source: object, error_type: type[Exception], words: list[str]) -> None:
    snapshot = source.tobytes() if isinstance(source, Image.Image) else None
    expect(lambda: load_image(source), error_type, *words)  # type: ignore[arg-type]
    if snapshot is not None:
        assert source.tobytes() == snapshot  # type: ignore[union-attr]


def test_image_directory_and_bad_max_pixels(tmp_path: Path) -> None:
    expect(lambda: load_image(tmp_path), InvalidImageError, "not a regular file")
    expect(lambda: load_image(GOOD_PNG, max_pixels=0), ConfigError, "max_pixels", "positive")
    expect(lambda: load_image(GOOD_PNG, max_pixels=100), ImageTooLargeError, "16x12", "max_pixels=100")


def _animated_gif() -> Image.Image:
    frames = [Image.new("RGB", (10, 6), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = png_bytes(frames[0], format="GIF", save_all=True, append_images=frames[1:])
    return Image.open(io.BytesIO(data))


UNUSUAL_MODES = {
    "CMYK": lambda: Image.new("CMYK", (9, 7), (0, 255, 255, 0)),
    "RGBA half transparent": lambda: Image.new("RGBA", (9, 7), (255, 0, 0, 0)),
    "I;16": lambda: Image.fromarray(np.arange(63, dtype=np.uint16).reshape(7, 9) * 1000),
    "palette": lambda: Image.new("P", (9, 7), 5),
    "1-bit": lambda: Image.new("1", (9, 7), 1),
    "LA": lambda: Image.new("LA", (9, 7), (80, 255)),
    "animated GIF on frame 1": _animated_gif,
}


@pytest.mark.parametrize("mode", list(UNUSUAL_MODES))
def test_unusual_modes_become_rgb_without_touching_the_input(mode: str) -> None:
    image = UNUSUAL_MODES[mode]()
    if mode.startswith("animated"):
        image.seek(1)
    before = (image.mode, image.size, image.tobytes(), image.tell())
    rgb = load_image(image)
    assert rgb.mode == "RGB" and rgb.size == image.size and rgb is not image
    assert (image.mode, image.size, image.tobytes(), image.tell()) == before
    if mode == "RGBA half transparent":
        assert rgb.getpixel((0, 0)) == (255, 255, 255)  # fully transparent -> composited on white


@pytest.mark.parametrize("size", [(1, 1), (20000, 1), (1, 20000), (4000, 3)])
def test_extreme_sizes_and_aspect_ratios_tile_into_full_crops(size: tuple[int, int]) -> None:
    config = SeedXConfig.from_preset("tiny-random")
    side = config.vision.image_size
    crops = preprocess(load_image(Image.new("RGB", size, (1, 2, 3))), config.vision, config.anyres.grids)
    cols, rows = crops.grid
    assert crops.pixel_values.shape == (cols * rows + 1, 3, side, side)
    assert crops.image_size == size
    assert torch.isfinite(crops.pixel_values).all()


# ------------------------------------------------------------------------------------------------ prompts


@pytest.mark.parametrize(
    ("label", "question", "error_type", "words"),
    [
        ("empty", "", InvalidPromptError, ["question is empty"]),
        ("whitespace", " \n\t ", InvalidPromptError, ["question is empty"]),
        ("over-long", "a" * (prompts.MAX_PROMPT_CHARS + 1), InvalidPromptError, ["20001 characters", "limit"]),
        ("not a string", b"what?", InvalidPromptError, ["must be a string", "bytes"]),
    ],
)
def test_bad_questions(label: str, question: object, error_type: type[Exception], words: list[str]) -> None:
    expect(lambda: prompts.comprehension_prompt("seed-x-i", [0], question, 4), error_type, *words)  # type: ignore[arg-type]


def test_prompt_style_and_chat_shape_errors() -> None:
    expect(lambda: prompts.generation_prompt("seed-x-9", "a cat"), ConfigError, "unknown prompt style", "seed-x-i")  # type: ignore[arg-type]
    assistant_last = [prompts.Turn("user", "hi"), prompts.Turn("assistant", "hello")]
    expect(lambda: prompts.chat_prompt("seed-x-i", assistant_last, 4), InvalidPromptError, "end with a user turn")
    assistant_first = [prompts.Turn("assistant", "hello"), prompts.Turn("user", "hi")]
    expect(lambda: prompts.chat_prompt("seed-x-i", assistant_first, 4), InvalidPromptError, "start with a user turn")


def test_prompt_longer_than_the_context_is_refused_before_decoding(tiny_model: SeedX) -> None:
    # Under the character limit but more tokens than the tiny model's context (2048 positions).
    question = "zq " * 6000
    expect(lambda: tiny_model.comprehend(Image.new("RGB", (8, 8)), question), InvalidPromptError, "exceeds the context")


LONE_SURROGATE = "a \ud800 b"  # e.g. from a JSON "\\ud800" escape or a surrogateescape-decoded argument


@pytest.mark.parametrize("ability", ["comprehend", "ground", "generate_image", "generate_images", "edit_image", "chat"])
def test_lone_surrogate_is_an_invalid_prompt_error_in_every_ability(tiny_model: SeedX, ability: str) -> None:
    """Was pybind11's RuntimeError from inside SentencePiece; now the typed error with the position and the fix."""
    from seedx_agent.model import ChatMessage

    image = Image.new("RGB", (16, 16), (200, 30, 30))
    calls: dict[str, Callable[[], object]] = {
        "comprehend": lambda: tiny_model.comprehend(image, LONE_SURROGATE),
        "ground": lambda: tiny_model.ground(image, LONE_SURROGATE),
        "generate_image": lambda: tiny_model.generate_image(LONE_SURROGATE, num_inference_steps=1),
        "generate_images": lambda: tiny_model.generate_images(["fine", LONE_SURROGATE], num_inference_steps=1),
        "edit_image": lambda: tiny_model.edit_image(image, LONE_SURROGATE, num_inference_steps=1),
        "chat": lambda: tiny_model.chat(
            [ChatMessage("user", "hi"), ChatMessage("assistant", LONE_SURROGATE), ChatMessage("user", "and?")]
        ),
    }
    expect(calls[ability], InvalidPromptError, "'\\ud800' at position 2", "surrogate", "remove it")


INJECTIONS = [
    "<img>",
    "</img>",
    "<loc-5>",
    "<box_start><loc-1><loc-2><loc-3><loc-4><box_end>",
    "<img_00000>",
    "<patch></patch>",
    "</s>",
    "<s>",
]


@pytest.mark.parametrize("injected", INJECTIONS)
def test_special_token_strings_in_user_text_stay_text(tiny_model: SeedX, injected: str) -> None:
    """User text spelling added tokens must not add image, box or control token ids (asserted on ids)."""
    tokenizer, ids = tiny_model.tokenizer, TokenIds.from_vocab(tiny_model.tokenizer, 4)
    specials = {ids.boi, ids.eoi, ids.bop, ids.eop, ids.box_start, ids.box_end, ids.eos, *ids.loc, *ids.image_all}
    built = {
        "question": prompts.comprehension_prompt("seed-x-i", [2], f"what is {injected} here?", 4),
        "phrase": prompts.grounding_prompt("seed-x-i", 0, f"the {injected}", 4),
        "caption": prompts.generation_prompt("seed-x", f"a cat {injected}"),
        "instruction": prompts.edit_prompt(0, f"paint {injected}", 4),
        "chat": prompts.chat_prompt("seed-x-i", [prompts.Turn("user", injected, (1,))], 4),
    }
    clean = {
        "question": prompts.comprehension_prompt("seed-x-i", [2], "what is here?", 4),
        "phrase": prompts.grounding_prompt("seed-x-i", 0, "the", 4),
        "caption": prompts.generation_prompt("seed-x", "a cat"),
        "instruction": prompts.edit_prompt(0, "paint", 4),
        "chat": prompts.chat_prompt("seed-x-i", [prompts.Turn("user", "hi", (1,))], 4),
    }
    for name, prompt in built.items():
        token_ids, mask = tokenizer.encode_segments_with_mask(prompt.segments, add_bos=True)
        clean_ids, clean_mask = tokenizer.encode_segments_with_mask(clean[name].segments, add_bos=True)
        got = sorted(t for t in token_ids if t in specials)
        want = sorted(t for t in clean_ids if t in specials)
        assert got == want, f"{name}: {injected!r} injected special ids"
        assert token_ids.count(ids.bos) == 1 and sum(mask) == sum(clean_mask) == 4 * prompt.num_input_crops


def test_a_special_instance_passed_as_user_text_is_still_text(tiny_model: SeedX) -> None:
    from seedx_agent.pipeline.tokens import Special

    prompt = prompts.comprehension_prompt("seed-x-i", [0], Special(BOI), 4)
    token_ids = tiny_model.tokenizer.encode_segments(prompt.segments, add_bos=True)
    assert token_ids.count(tiny_model.ids.boi) == 1  # only the real thumbnail block


# ------------------------------------------------------------------------------------------------ boxes


@pytest.mark.parametrize(
    ("box", "size", "words"),
    [
        ((30, 10, 10, 20), (100, 50), ["inverted or empty"]),
        ((10, 10, 10, 20), (100, 50), ["inverted or empty"]),
        ((10, 40, 20, 30), (100, 50), ["inverted or empty"]),
        ((10, 10, 120, 20), (100, 50), ["outside the 100x50 image", "clip it"]),
        ((-1, 10, 20, 20), (100, 50), ["outside"]),
        ((0, 0, float("inf"), 20), (100, 50), ["outside"]),
        ((float("nan"), 0, 10, 20), (100, 50), ["NaN"]),
        ((1, 2, 3), (100, 50), ["4 numbers"]),
        ((1, 2, 3, 4), (0, 50), ["positive values"]),
    ],
)
def test_bad_boxes_to_encode(box: tuple[float, ...], size: tuple[int, int], words: list[str]) -> None:
    expect(lambda: encode_box(box, size), InvalidBoxError, *words)


@pytest.mark.parametrize("bins", [(1, 2, 3, 224), (-1, 2, 3, 4), (1, 2, 3)])
def test_bad_bins_to_decode(bins: tuple[int, ...]) -> None:
    expect(lambda: decode_box(bins, (100, 50)), InvalidBoxError, "location bins", "[0, 223]")


def test_box_object_inverted_is_refused() -> None:
    expect(lambda: encode_box(Box(5, 5, 1, 1), (10, 10)), InvalidBoxError, "x1 < x2")


# ------------------------------------------------------------------------------------------------ presets


def test_unknown_presets_and_variants(tiny_model: SeedX) -> None:
    error = expect(lambda: SeedXConfig.from_preset("tiny-randon"), UnknownPresetError, "tiny-randon", "tiny-random")
    assert isinstance(error, KeyError)  # catchable as a lookup error too
    # one loader: a name that is neither a folder nor a preset says both, listing the presets
    for typo in ("seed-x-xl", "tiny-randon"):
        load = functools.partial(SeedX.from_pretrained, typo)
        expect(load, CheckpointError, f"'{typo}'", "does not exist", "'mini'", "tiny-random")
    expect(lambda: SeedXConfig.from_preset("tiny-random", variant="gpt"), ConfigError, "invalid override")
    image = Image.new("RGB", (8, 8))
    expect(lambda: tiny_model.comprehend(image, "hi", variant="seed-x-mega"), ConfigError, "unknown variant")
    expect(lambda: tiny_model.ground(image, "x", variant="seed-x"), CapabilityMissingError, "only", "load it")


# ------------------------------------------------------------------------------------------------ checkpoints


def _module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


@pytest.mark.parametrize(
    ("label", "edit", "words"),
    [
        ("missing key", lambda sd: sd.pop("1.bias"), ["missing keys (1)", "1.bias"]),
        ("extra key", lambda sd: sd.update({"2.weight": torch.zeros(1)}), ["unexpected keys (1)", "2.weight"]),
        (
            "mis-shaped key",
            lambda sd: sd.update({"0.weight": torch.zeros(4, 5)}),
            ["mis-shaped", "(4, 5) vs model (4, 3)"],
        ),
    ],
)
def test_mismatched_checkpoints_leave_the_module_untouched(
    tmp_path: Path, label: str, edit: Callable[[dict], object], words: list[str]
) -> None:
    state = {key: torch.full_like(value, 7.0) for key, value in _module().state_dict().items()}
    edit(state)
    save_file(state, tmp_path / "model.safetensors")
    module = _module()
    before = _weights(module)
    loaded = read_state_dict(tmp_path)
    expect(lambda: load_strict(module, loaded, component="toy"), StateDictMismatchError, "'toy'", *words)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # nothing half-loaded


def test_pickle_checkpoints_need_opt_in_and_must_be_flat(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    torch.save(_module().state_dict(), path)
    expect(lambda: read_state_dict(path), UnsafeCheckpointError, "pickle", "allow_pickle=True", "safetensors")
    nested = tmp_path / "nested.pt"
    torch.save({"model": _module().state_dict(), "step": 3}, nested)
    expect(lambda: read_state_dict(nested, allow_pickle=True), CheckpointError, "flat state dict")
    truncated = tmp_path / "cut.safetensors"
    save_file(_module().state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    expect(lambda: read_state_dict(truncated), CheckpointError, "truncated or corrupt")
    expect(lambda: read_state_dict(tmp_path / "weights.npz"), CheckpointError, "does not exist")
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    expect(lambda: read_state_dict(odd), CheckpointError, "unknown checkpoint format", ".npz")


# ------------------------------------------------------------------------------------------------ memory


def _memory_state(memory: ImageMemory) -> tuple[int, dict[str, tuple[int, int]]]:
    return memory.count(), tree_snapshot(memory.root / "images")


@pytest.mark.parametrize(
    ("label", "image_id", "error_type", "words"),
    [
        ("unknown id", "img_0123456789abcdef", UnknownImageError, ["no image with id"]),
        ("path traversal", "../../etc/passwd", InvalidImageIdError, ["not an image id", "file paths"]),
        ("absolute path", "/etc/passwd", InvalidImageIdError, ["not an image id"]),
        ("id then path", "img_0123456789abcdef/../../x", InvalidImageIdError, ["not an image id"]),
        ("upper-case hex", "img_0123456789ABCDEF", InvalidImageIdError, ["16 lowercase hex"]),
        ("trailing newline", "img_0123456789abcdef\n", InvalidImageIdError, ["not an image id"]),
        ("not a string", 1234, InvalidImageIdError, ["must be a string", "int"]),
    ],
)
def test_bad_memory_ids_change_nothing(
    memory: ImageMemory, stored_id: str, label: str, image_id: object, error_type: type[Exception], words: list[str]
) -> None:
    before = _memory_state(memory)
    for lookup in (memory.get, memory.load, memory.delete, memory.lineage):
        expect(lambda: lookup(image_id), error_type, *words)  # noqa: B023 - called immediately
    assert _memory_state(memory) == before


@pytest.mark.parametrize(
    ("label", "call", "words"),
    [
        ("unknown kind", lambda m: m.add(Image.new("RGB", (4, 4)), kind="photo", namespace="u"), ["kind"]),
        (
            "empty namespace segment",
            lambda m: m.add(Image.new("RGB", (4, 4)), kind="input", namespace="a//b"),
            ["malformed"],
        ),
        (
            "id passed as pixels",
            lambda m: m.add("img_0123456789abcdef", kind="input", namespace="u"),
            ["looks like a memory id"],
        ),
        ("k out of range", lambda m: m.search_text("red", k=0), ["k"]),
        ("filter on private field", lambda m: m.find(where={"ns_0": "u"}), ["unknown field 'ns_0'"]),
        # Lone surrogates: were a UnicodeEncodeError (or chroma's TypeError) from deep inside; now typed, with the
        # position of the bad character and the fix.
        (
            "surrogate in query",
            lambda m: m.search_text(LONE_SURROGATE),
            ["query", "'\\ud800' at position 2", "remove it"],
        ),
        (
            "surrogate in prompt",
            lambda m: m.add(Image.new("RGB", (4, 4)), kind="input", namespace="u", prompt=LONE_SURROGATE),
            ["prompt holds an invalid character", "position 2"],
        ),
        (
            "surrogate in caption of a batch",
            lambda m: m.add_many(
                [Image.new("RGB", (4, 4))] * 2, kind="input", namespace="u", captions=["ok", LONE_SURROGATE]
            ),
            ["caption 1 holds an invalid character", "position 2"],
        ),
        (
            "surrogate in namespace",
            lambda m: m.search_image(Image.new("RGB", (4, 4)), namespace="user:\udcff"),
            ["namespace", "position 5"],
        ),
        ("surrogate in a filter", lambda m: m.find(where={"prompt": {"$in": ["x", "\ud800"]}}), ["where['prompt']"]),
        (
            "relevance floor out of range",
            lambda m: m.search_text("red", min_score=2),
            ["min_score", "between -1 and 1"],
        ),
    ],
)
def test_bad_memory_requests_change_nothing(
    memory: ImageMemory, stored_id: str, label: str, call: Callable[[ImageMemory], object], words: list[str]
) -> None:
    before = _memory_state(memory)
    expect(lambda: call(memory), InvalidMemoryRequestError, *words)
    assert _memory_state(memory) == before


def test_unknown_parent_is_refused_before_storing(memory: ImageMemory, stored_id: str) -> None:
    before = _memory_state(memory)
    expect(
        lambda: memory.add(
            Image.new("RGB", (5, 5), (1, 1, 1)),
            kind="edited",
            namespace="u",
            parent_id="img_00000000000000ff",
            operation="edit",
        ),
        UnknownImageError,
        "img_00000000000000ff",
    )
    assert _memory_state(memory) == before


# ------------------------------------------------------------------------------------------------ tools


@pytest.mark.parametrize(
    ("tool_name", "args", "words"),
    [
        ("comprehend", {"image_ids": [123], "question": "what?"}, ["image_ids.0"]),
        ("comprehend", {"image_ids": ["img_0123456789abcdef"], "question": 5}, ["question"]),
        ("comprehend", {"image_ids": ["img_0123456789abcdef"] * 9, "question": "what?"}, ["image_ids", "at most 8"]),
        ("generate_image", {"prompt": None}, ["prompt"]),
        ("generate_image", {"prompt": "a cat", "seed": -1}, ["seed", "greater than or equal to 0"]),
        ("generate_image", {"prompt": "a cat", "seed": 1.5}, ["seed"]),
        ("edit_image", {"image_id": ["img_0123456789abcdef"], "instruction": "x"}, ["image_id"]),
        ("recall_images", {"query": "cat", "k": "many"}, ["k"]),
        ("recall_images", {"query": "cat", "k": 21}, ["k", "less than or equal to 20"]),
        ("ground", {"image_id": "img_0123456789abcdef"}, ["phrase", "Field required"]),
    ],
)
def test_tool_calls_with_wrong_argument_types(
    tools: dict[str, BaseTool], memory: ImageMemory, stored_id: str, tool_name: str, args: dict, words: list[str]
) -> None:
    before = _memory_state(memory)
    message = call_tool(tools[tool_name], args)
    assert message.status == "error" and message.artifact is None
    assert "invalid tool arguments" in message.content
    for word in words:
        assert word in message.content, message.content
    assert _memory_state(memory) == before


@pytest.mark.parametrize(
    ("tool_name", "args", "words"),
    [
        ("comprehend", {"image_ids": ["../../etc/passwd"], "question": "what?"}, ["not an image id", "file paths"]),
        ("ground", {"image_id": "img_0123456789abcdef", "phrase": "cat"}, ["no image with id", "recall_images"]),
        ("edit_image", {"image_id": "img_0123456789abcdef", "instruction": "   "}, ["instruction is empty"]),
        ("recall_images", {"image_id": "C:\\Windows\\win.ini"}, ["not an image id"]),
        ("recall_images", {"query": " "}, ["query is empty"]),
        ("comprehend", {"image_ids": ["STORED"], "question": "x" * 20_001}, ["InvalidPromptError", "limit"]),
        ("comprehend", {"image_ids": ["STORED"], "question": LONE_SURROGATE}, ["InvalidPromptError", "position 2"]),
        ("generate_image", {"prompt": LONE_SURROGATE}, ["InvalidPromptError", "position 2"]),
        ("recall_images", {"query": LONE_SURROGATE}, ["InvalidMemoryRequestError", "position 2"]),
    ],
)
def test_tool_calls_with_bad_values(
    tools: dict[str, BaseTool], memory: ImageMemory, stored_id: str, tool_name: str, args: dict, words: list[str]
) -> None:
    args = {key: ([stored_id] if value == ["STORED"] else value) for key, value in args.items()}
    before = _memory_state(memory)
    message = call_tool(tools[tool_name], args)
    assert message.status == "error" and message.artifact is None
    for word in words:
        assert word in message.content, message.content
    assert _memory_state(memory) == before


def test_memory_cli_failures_are_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``seedx-agent memory`` against a real memory: each failure is one ``error:`` line and exit 2, no traceback
    (``export --out /proc/nope`` was a FileNotFoundError traceback, a surrogate query a UnicodeEncodeError)."""
    from seedx_agent.cli.chat import main

    def one_error_line() -> str:
        captured = capsys.readouterr()
        lines = (captured.out + captured.err).strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        return lines[0]

    root = tmp_path / "memory"
    with ImageMemory.open(root, image_embedder=lambda images: np.ones((len(images), 4), np.float32)) as memory:
        stored = memory.add(Image.new("RGB", (6, 6), (9, 9, 9)), kind="input", namespace="u", prompt="grey")
    base = ["memory", "--memory", str(root)]
    assert main([*base, "export", stored.id, "--out", "/proc/nope"]) == 2
    assert "/proc/nope" in one_error_line()
    assert main([*base, "search", LONE_SURROGATE]) == 2
    assert "position 2" in one_error_line()
    blocked = tmp_path / "out"
    (blocked / f"{stored.id}.png").mkdir(parents=True)  # the export's own file name is taken by a folder
    assert main([*base, "export", stored.id, "--out", str(blocked)]) == 2
    assert "Is a directory" in one_error_line()
    assert main([*base, "search", "grey"]) == 0 and stored.id in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ sanity


def test_image_tokens_strings_are_the_ones_we_guard() -> None:
    # The injection table above must spell the real token strings from tokens.py.
    assert {BOI, EOI, BOX_START, BOX_END, BOP, EOP} <= {
        part for case in INJECTIONS for part in case.replace("><", ">|<").split("|")
    }

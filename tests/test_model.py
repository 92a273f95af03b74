"""End to end on tiny-random: every ability of the facade, its errors, and the engine."""

import re
import threading

import numpy as np
import PIL.Image
import pytest
import torch

from seedx_agent.config import SeedXConfig, resolve_config
from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import (
    CapabilityMissingError,
    ConfigError,
    InvalidBoxError,
    InvalidImageError,
    InvalidPromptError,
)
from seedx_agent.model import ChatMessage, SeedX
from seedx_agent.pipeline.anyres import preprocess, vit_transform
from seedx_agent.pipeline.decoding import GenerationOptions
from seedx_agent.pipeline.tokens import Box
from seedx_agent.pipeline.vision import pool_tokens_4to1
from seedx_agent.weights.loading import default_dtype, resolve_device_map


@pytest.fixture(scope="module")
def model():
    return SeedX.from_pretrained("tiny-random", variants=("seed-x-i", "seed-x-edit"))


@pytest.fixture(scope="module")
def scene():
    image = PIL.Image.new("RGB", (120, 60), "white")
    image.paste((220, 30, 30), (10, 10, 40, 40))
    return image


def test_comprehend(model, scene):
    result = model.comprehend(scene, "What color is the square?", options=GenerationOptions(max_new_tokens=6))
    assert isinstance(result.text, str) and 1 <= len(result.token_ids) <= 6
    again = model.comprehend(scene, "What color is the square?", options=GenerationOptions(max_new_tokens=6))
    assert again.token_ids == result.token_ids  # greedy is deterministic


def test_comprehend_uses_the_image(model, scene):
    other = PIL.Image.new("RGB", (120, 60), "blue")
    opts = GenerationOptions(max_new_tokens=8)
    a = model.comprehend(scene, "Describe.", options=opts).token_ids
    b = model.comprehend(other, "Describe.", options=opts).token_ids
    c = model.comprehend([scene, other], "Describe.", options=opts).token_ids
    assert len({tuple(a), tuple(b), tuple(c)}) >= 2


def test_ground_returns_pixel_boxes(model, scene):
    result = model.ground(scene, "the red square", options=GenerationOptions(max_new_tokens=12))
    for box in result.boxes:
        assert 0 <= box.x1 <= box.x2 <= 120 and 0 <= box.y1 <= box.y2 <= 60 and box.label == "the red square"


def test_generate_image_is_seeded(model):
    first = model.generate_image("a red circle", seed=3)
    second = model.generate_image("a red circle", seed=3)
    third = model.generate_image("a red circle", seed=4)
    assert first.image.size == (32, 32) and first.features.shape == (1, 4, 48)
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(third.image))
    assert set(first.timings) == {"llm_s", "detokenizer_s"}


def test_edit_image_and_its_requirements(model, scene):
    edited = model.edit_image(scene, "Make the square blue.", num_inference_steps=2)
    assert edited.image.size == (32, 32)
    generator_only = SeedX.from_pretrained("tiny-random")
    with pytest.raises(CapabilityMissingError, match=r"seed-x-edit.*stage-2"):
        generator_only.edit_image(scene, "Make it blue.")


def test_chat_multi_turn(model, scene):
    messages = [
        ChatMessage("user", "What is in the picture?", [scene]),
        ChatMessage("assistant", "A red square."),
        ChatMessage("user", "Where is it?"),
    ]
    result = model.chat(messages, options=GenerationOptions(max_new_tokens=8))
    assert isinstance(result.text, str)
    with pytest.raises(InvalidPromptError, match="assistant messages cannot carry"):
        model.chat([ChatMessage("user", "hi"), ChatMessage("assistant", "x", [scene]), ChatMessage("user", "y")])
    with pytest.raises(InvalidPromptError, match="empty"):
        model.chat([])


def test_reconstruct_and_embeddings(model, scene):
    assert model.reconstruct(scene, num_inference_steps=2).size == (32, 32)
    emb = model.image_embeddings([scene, scene.transpose(PIL.Image.FLIP_LEFT_RIGHT)])
    assert emb.shape == (2, 48)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("size", [(1, 1), (20000, 50), (50, 20000)])
def test_extreme_sizes_are_accepted(model, size):
    image = PIL.Image.new("RGB", size, "green")
    assert model.comprehend(image, "What?", options=GenerationOptions(max_new_tokens=2)).token_ids


def test_bad_inputs(model, scene, tmp_path):
    with pytest.raises(InvalidPromptError, match="empty"):
        model.comprehend(scene, "  ")
    with pytest.raises(InvalidPromptError, match="empty"):
        model.generate_image("")
    with pytest.raises(InvalidPromptError, match="no image"):
        model.comprehend([], "What?")
    with pytest.raises(ConfigError, match="unknown variant"):
        model.comprehend(scene, "What?", variant="seed-x-9")
    with pytest.raises(CapabilityMissingError, match="only"):
        model.comprehend(scene, "What?", variant="seed-x")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InvalidImageError):
        model.comprehend(tmp_path / "bad.png", "What?")
    with pytest.raises(InvalidPromptError, match="exceeds the context"):
        model.comprehend(scene, "What?", options=GenerationOptions(max_new_tokens=4000))


def test_prompt_injection_does_not_open_an_image(model):
    # "<img>" typed by a user is text: it cannot make the prompt end in an image block.
    result = model.comprehend(PIL.Image.new("RGB", (8, 8)), "<img>", options=GenerationOptions(max_new_tokens=3))
    assert len(result.token_ids) <= 3


def test_from_pretrained_errors(tmp_path):
    # one loader: a preset name gives random weights of its geometry; a config object does the same
    assert SeedX.from_pretrained("tiny-random").config == SeedXConfig.from_preset("tiny-random")
    with pytest.raises(Exception, match="does not exist") as caught:
        SeedX.from_pretrained(tmp_path / "missing")
    message = str(caught.value)  # 'mini' is the bundled trained model, not listed among the random presets
    assert "'mini' (the bundled trained miniature)" in message and "tiny-random" in message
    assert "one of " in message and "mini" not in message.split("one of ")[1].split(", or a SeedXConfig")[0]


def test_save_and_from_pretrained_round_trip(model, scene, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    loaded = SeedX.from_pretrained(tmp_path / "ckpt")
    assert set(loaded.variants) == {"seed-x-i", "seed-x-edit"}
    opts = GenerationOptions(max_new_tokens=5)
    assert (
        loaded.comprehend(scene, "What?", options=opts).token_ids
        == model.comprehend(scene, "What?", options=opts).token_ids
    )
    for (name, a), (_, b) in zip(model.parts.modules(), loaded.parts.modules()):
        for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), (name, key)


def test_engine_threads_match_serial(model, scene):
    engine = SeedXEngine(model)
    opts = GenerationOptions(max_new_tokens=4)
    jobs = [
        ("comprehend", (scene, "What?"), {"options": opts}),
        ("ground", (scene, "the square"), {"options": opts}),
        ("generate_image", ("a dog",), {"seed": 1, "num_inference_steps": 2}),
        ("comprehend", (scene, "Colour?"), {"options": opts}),
    ] * 2

    def key(result):
        if hasattr(result, "image"):
            return np.asarray(result.image).tobytes()
        return tuple(getattr(result, "token_ids", ())) or result.raw_text

    serial = [key(getattr(engine, name)(*args, **kw)) for name, args, kw in jobs]
    results: list = [None] * len(jobs)

    def run(i):
        name, args, kw = jobs[i]
        results[i] = key(getattr(engine, name)(*args, **kw))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert results == serial
    assert engine.calls == 2 * len(jobs)


def test_chat_returns_interleaved_images(model, scene):
    messages = [ChatMessage("user", "Draw what you see.", [scene])]
    opts = GenerationOptions(max_new_tokens=12, require_image=True)
    result = model.chat(messages, options=opts, seed=5, num_inference_steps=2)
    n_tokens = model.config.lvlm.num_image_tokens
    assert result.raw_text.count("<img>") == len(result.images) >= 1
    assert result.features.shape == (len(result.images), n_tokens, model.config.vision.output_dim)
    assert all(image.size == (32, 32) for image in result.images) and not result.features.requires_grad
    unrendered = model.chat(messages, options=opts, render_images=False)
    assert unrendered.images == [] and torch.equal(unrendered.features, result.features)


def test_referring_box_question(model, scene):
    opts = GenerationOptions(max_new_tokens=4)
    box = Box(10, 10, 40, 40)
    result = model.comprehend(scene, ["What colour is ", box, "?"], options=opts)
    assert 1 <= len(result.token_ids) <= 4
    with pytest.raises(InvalidBoxError, match="outside the 120x60 image"):
        model.comprehend(scene, ["What colour is ", Box(10, 10, 400, 40), "?"], options=opts)
    with pytest.raises(InvalidPromptError, match="exactly one image"):
        model.comprehend([scene, scene], ["Compare ", box, "."], options=opts)


def test_short_render_names_and_variant_shorthand(model, scene, tmp_path):
    short = model.generate_image("a red circle", seed=3, steps=2, guidance=2.0)
    long = model.generate_image("a red circle", seed=3, num_inference_steps=2, guidance_scale=2.0)
    assert np.array_equal(np.asarray(short.image), np.asarray(long.image))
    with pytest.raises(ConfigError, match="either steps= or num_inference_steps="):
        model.generate_image("a red circle", steps=2, num_inference_steps=3)
    with pytest.raises(ConfigError, match="either guidance= or guidance_scale="):
        model.edit_image(scene, "Make it blue.", guidance=2.0, guidance_scale=3.0)
    model.save_pretrained(tmp_path / "ckpt")
    assert SeedX.from_pretrained(tmp_path / "ckpt", variant="seed-x-edit").variants == ("seed-x-edit",)
    with pytest.raises(ConfigError, match="either variant="):
        SeedX.from_pretrained(tmp_path / "ckpt", variant="seed-x-i", variants=("seed-x-i",))


def test_placement_defaults():
    assert default_dtype({"vision": "cpu", "llm": "cpu", "detokenizer": "cpu"}) == torch.float32
    assert default_dtype({"vision": "cpu", "llm": "cuda:0", "detokenizer": "cpu"}) == torch.bfloat16
    assert resolve_device_map("cpu", {"llm": "cuda:1"}) == {"vision": "cpu", "llm": "cuda:1", "detokenizer": "cpu"}


def test_cfg_negative_is_the_zero_image_and_official_guidance(model):
    size = model.config.vision.image_size
    raw = model.encode_crops(torch.zeros(1, 3, size, size))
    assert torch.equal(model.negative_features(pooled=False), raw)
    assert torch.equal(model.negative_features(pooled=True), pool_tokens_4to1(raw))
    official = SeedXConfig.from_preset("seed-x-i")
    assert official.detokenizer.guidance_scale == 7.5
    assert (official.edit_detokenizer.guidance_scale, official.edit_detokenizer.image_guidance_scale) == (7.5, 1.5)


def test_generate_image_reads_context_images(model):
    """SEED-X-I style: earlier pictures in, a new picture out; the context changes the regressed features."""
    picture = PIL.Image.new("RGB", (40, 24), (200, 60, 30))
    plain = model.generate_image("a fox", seed=0, num_inference_steps=1)
    seen = model.generate_image("a fox", seed=0, num_inference_steps=1, context=[picture])
    again = model.generate_image("a fox", seed=0, num_inference_steps=1, context=[picture])
    assert seen.image.size == plain.image.size
    assert torch.equal(seen.features, again.features)  # deterministic
    assert not torch.equal(seen.features, plain.features)  # the context reached the LLM
    with pytest.raises(InvalidImageError):
        model.generate_image("a fox", context=[b"not an image"])


def test_reconstruct_feeds_the_vit_the_official_transform(model, monkeypatch):
    # Official reconstruction (§8.1 D): Resize((448, 448)) bilinear + normalise, not the any-res thumbnail.
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8))
    seen: list[torch.Tensor] = []
    encode = model.encode_crops

    def spy(pixel_values: torch.Tensor) -> torch.Tensor:
        seen.append(pixel_values.clone())
        return encode(pixel_values)

    monkeypatch.setattr(model, "encode_crops", spy)
    model.reconstruct(image, num_inference_steps=1)
    assert torch.equal(seen[0], vit_transform(image, model.config.vision)[None])
    thumbnail = preprocess(image, model.config.vision, ("1x1",)).pixel_values[-1:]  # bicubic: not what we feed
    assert not torch.equal(seen[0], thumbnail)


def _custom_tiny() -> SeedXConfig:
    """tiny-random with a non-standard geometry (3 LLM layers instead of 2)."""
    data = SeedXConfig.from_preset("tiny-random").model_dump()
    data["llm"]["num_layers"] = 3
    return SeedXConfig.model_validate({**data, "name": "tiny-custom"})


def test_a_custom_config_round_trips_through_from_pretrained(scene, tmp_path):
    custom = _custom_tiny()
    model = SeedX.from_pretrained(custom, variants=("seed-x-i",))  # random weights for a config object
    assert model.config == custom and len(model.parts.lvlms["seed-x-i"].llm.model.layers) == 3
    model.save_pretrained(tmp_path / "ckpt")
    loaded = SeedX.from_pretrained(tmp_path / "ckpt", config=custom)
    assert loaded.config == custom
    for (name, a), (_, b) in zip(model.parts.modules(), loaded.parts.modules()):
        assert all(torch.equal(x, b.state_dict()[key]) for key, x in a.state_dict().items()), name
    opts = GenerationOptions(max_new_tokens=3)
    answer = model.comprehend(scene, "What?", options=opts).token_ids
    assert loaded.comprehend(scene, "What?", options=opts).token_ids == answer
    # name/variant are labels: a config that differs only there still matches the stored one
    relabelled = custom.model_copy(update={"name": "other", "variant": "seed-x"})
    assert SeedX.from_pretrained(tmp_path / "ckpt", config=relabelled).config == custom


def test_from_pretrained_refuses_a_config_that_does_not_match(tmp_path):
    custom = _custom_tiny()
    SeedX.from_pretrained(custom, variants=("seed-x-i",)).save_pretrained(tmp_path / "ckpt")
    # our layout's config.json describes its weights; a different geometry is an error, not an override
    with pytest.raises(ConfigError, match=r"does not match .*config\.json.* on llm\.num_layers"):
        SeedX.from_pretrained(tmp_path / "ckpt", config="tiny-random")
    # a preset or config object already is the geometry (random weights): config= beside it is refused
    with pytest.raises(ConfigError, match="drop config="):
        SeedX.from_pretrained("tiny-random", config=custom)
    with pytest.raises(ConfigError, match="SeedXConfig or a preset name"):
        SeedX.from_pretrained(tmp_path / "ckpt", config={"llm": {}})  # type: ignore[arg-type]
    assert resolve_config(None) == SeedXConfig.from_preset("seed-x-i")
    assert resolve_config("seed-x-edit", preset="seed-x-i").variant == "seed-x-edit"  # same geometry
    assert resolve_config(custom) is custom


# -- None and non-images (issue 23, finding 3) ---------------------------------------------------------
ACCEPTED = re.escape("a path (str or pathlib.Path)") + ".*PIL.Image.Image.*numpy array"


@pytest.mark.parametrize("bad", [None, 42, {"path": "x.png"}, 1.5])
def test_every_ability_refuses_non_images_naming_the_argument(model, scene, bad):
    got = "None" if bad is None else f"a {type(bad).__name__}"
    calls = [
        ("images", lambda: model.comprehend(bad, "What?")),
        ("images[1]", lambda: model.comprehend([scene, bad], "What?")),
        ("image", lambda: model.ground(bad, "the square")),
        ("image", lambda: model.edit_image(bad, "Make it blue.")),
        ("image", lambda: model.reconstruct(bad)),
        ("messages[0].images[0]", lambda: model.chat([ChatMessage("user", "Hi", [bad])])),
        ("context[0]", lambda: model.generate_image("a cat", context=[bad])),
        ("images", lambda: model.image_embeddings(bad)),
    ]
    if bad is not None:  # images=None in a chat message means "no images"
        messages = [ChatMessage("user", "Hi"), ChatMessage("user", "?", bad)]
        calls.append(("messages[1].images", lambda: model.chat(messages)))
    for argument, call in calls:
        pattern = f"^{re.escape(argument)} must be an image: {ACCEPTED}; got {re.escape(got)}$"
        with pytest.raises(InvalidImageError, match=pattern):
            call()


def test_a_single_image_in_a_chat_message_is_one_image(model, scene):
    opts = GenerationOptions(max_new_tokens=3)
    single = model.chat([ChatMessage("user", "What is this?", scene)], options=opts)  # type: ignore[arg-type]
    listed = model.chat([ChatMessage("user", "What is this?", [scene])], options=opts)
    assert single.raw_text == listed.raw_text
    assert model.chat([ChatMessage("user", "Hi", None)], options=opts).text is not None  # type: ignore[arg-type]


def test_de_tokenizers_load_alone_without_any_llm(tmp_path):
    """A de-tokenizer-only process (e.g. a serving replica) loads no LLM: variants=() with stages=."""
    full = SeedX.from_pretrained("tiny-random", variants=("seed-x-i", "seed-x-edit"))
    full.save_pretrained(tmp_path / "ckpt")
    alone = SeedX.from_pretrained(tmp_path / "ckpt", variants=(), stages=(1, 2))
    assert alone.variants == () and sorted(alone.parts.detokenizers) == [1, 2]
    for stage in (1, 2):  # the same weights as the full load's
        ours, theirs = alone.parts.detokenizers[stage].state_dict(), full.parts.detokenizers[stage].state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    picture = PIL.Image.new("RGB", (32, 32), "red")
    assert (
        alone.reconstruct(picture, num_inference_steps=1).size == full.reconstruct(picture, num_inference_steps=1).size
    )
    with pytest.raises(CapabilityMissingError, match="loaded: \\[\\]"):
        alone.comprehend(picture, "what?")
    with pytest.raises(ConfigError, match="variants=\\(\\) with stages="):
        SeedX.from_pretrained("tiny-random", variants=())

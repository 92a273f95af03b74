"""LangChain's standard integration suite (``langchain-tests``' ``ChatModelIntegrationTests``) on ``ChatSeedX``
over the bundled miniature (``mini``, 14M parameters, CPU), and over ``tiny-random`` (random weights): the
protocol does not depend on what the weights know.

The suite runs as published. Documented properties say what ChatSeedX supports; the suite's pictures, which it
downloads from the internet, are served from a picture drawn here (tests run offline). Tests that need world
knowledge or skills a 14M-parameter model trained on coloured-shape scenes cannot have are overridden only
with ``pytest.mark.xfail(reason=...)`` (the suite's documented way), the reason next to each. Every protocol
test (message types, streaming, async, batching, usage, stop, images, tool-message histories of every
provider's shape) passes, and so do the tests that force a tool call (tool_choice, no-argument calls, runnables
as tools, few-shot) and every structured-output test: ``tool_choice`` and ``with_structured_output`` are
enforced while decoding.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from seedx_agent.memory import ImageMemory
from seedx_agent.tools import ChatSeedX

from seedx_agent.engine import SeedXEngine
from seedx_agent.miniature import world
from seedx_agent.model import SeedX

NAMESPACE = "user:standard/thread:integration"
RESOURCES: dict[str, Any] = {}
SCENE = world.Scene(
    shapes=(world.Shape("circle", "red", "large", (0, 0)), world.Shape("square", "green", "small", (2, 2)))
)


@pytest.fixture(scope="module")
def engine() -> SeedXEngine:
    return SeedXEngine(SeedX.from_pretrained("mini", variants=("seed-x-i",)))


@pytest.fixture(scope="module", autouse=True)
def _resources(engine: SeedXEngine, memory: ImageMemory) -> None:
    RESOURCES.update(memory=memory, engines={"mini": engine})


def _engine(name: str) -> SeedXEngine:
    engines = RESOURCES["engines"]
    if name not in engines:
        engines[name] = SeedXEngine(SeedX.from_pretrained(name, variants=("seed-x-i",)))
    return engines[name]


class _Download:
    """What ``httpx.get`` returns for the suite's picture URL: a world scene as PNG bytes."""

    def __init__(self, content: bytes) -> None:
        self.content = content


class _OfflineHttpx:
    """Stands in for ``httpx`` inside the suite's module: its picture comes from here, anything else raises."""

    def get(self, url: str, **kwargs: Any) -> _Download:
        if not url.endswith(".png"):
            raise OSError(f"tests run offline; the suite asked for {url}")
        buffer = io.BytesIO()
        world.render(SCENE, 64).save(buffer, format="PNG")
        return _Download(buffer.getvalue())


class _ChatSeedXIntegration(ChatModelIntegrationTests):
    model_spec: str

    @pytest.fixture(autouse=True)
    def _offline_pictures(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import langchain_tests.integration_tests.chat_models as suite

        monkeypatch.setattr(suite, "httpx", _OfflineHttpx())

    @property
    def chat_model_class(self) -> type[ChatSeedX]:
        return ChatSeedX

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "engine": _engine(self.model_spec),
            "memory": RESOURCES["memory"],
            "namespace": NAMESPACE,
            "model": self.model_spec,
            # The miniature answers most short requests ("Hello") by drawing; the suite checks text answers.
            "image_output": "off",
            # The form the miniature was agent-tuned on (one name(args) line per tool), as seedx_planner uses it.
            "tool_specs": "compact",
            "seed": 0,
        }

    @property
    def has_tool_choice(self) -> bool:
        return True  # "any"/"required" and a tool name are enforced while decoding

    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_image_tool_message(self) -> bool:
        return True

    @property
    def supports_anthropic_inputs(self) -> bool:
        return True  # Anthropic tool dicts, tool_use and thinking blocks, base64 image sources

    @property
    def supports_json_mode(self) -> bool:
        return True  # method="json_mode" takes the same schema-constrained path as function calling

    @property
    def supports_model_override(self) -> bool:
        return False  # a ChatSeedX serves the engine it was built with; another per-call model raises

    # -- beyond a 14M-parameter model trained on coloured-shape scenes (and beyond random weights) ------------
    # With tool_choice="any" the call itself is guaranteed (always magic_function, an integer input); these tests
    # also need the argument's value read out of the question, or the choice of a tool left to the model.

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @pytest.mark.xfail(
        reason="needs the value 3 read out of 'magic_function(3)': the constraint fixes the call, its name and the "
        "integer type, not the value; the miniature never saw this tool or such requests and writes 2 (random "
        "weights: any integer)"
    )
    def test_tool_calling(self, model: BaseChatModel) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(
        reason="needs the value 3 read out of 'magic_function(3)' (see test_tool_calling); the miniature writes 2, "
        "random weights any integer"
    )
    async def test_tool_calling_async(self, model: BaseChatModel) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @pytest.mark.xfail(
        reason="tool_choice is left to the model here: deciding by itself that a weather question about San "
        "Francisco calls get_weather needs world knowledge the miniature lacks (it knows shapes, not weather; "
        "random weights know nothing)"
    )
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(
        reason="needs the Chinese and Japanese names copied into the call: the miniature was trained on English "
        "shape scenes only and its 842-piece tokenizer writes CJK text as raw bytes it never learned (random "
        "weights: nothing learned)"
    )
    def test_unicode_tool_call_integration(
        self, model: BaseChatModel, *, tool_choice: str | None = None, force_tool_call: bool = True
    ) -> None:
        super().test_unicode_tool_call_integration(model, tool_choice=tool_choice, force_tool_call=force_tool_call)

    @pytest.mark.xfail(
        reason="the suite times a replayed HTTP cassette (the vcr fixture of pytest-recording, which our pytest "
        "configuration disables because it undoes the test-wide network guard); ChatSeedX makes no HTTP calls",
        run=False,
    )
    def test_stream_time(self, *args: object, **kwargs: object) -> None:
        super().test_stream_time(*args, **kwargs)  # type: ignore[misc]


class TestChatSeedXMini(_ChatSeedXIntegration):
    model_spec = "mini"


class TestChatSeedXTinyRandom(_ChatSeedXIntegration):
    model_spec = "tiny-random"


def test_the_suite_runs_offline_on_a_drawn_picture() -> None:
    picture = _OfflineHttpx().get("https://example.org/picture.png").content
    assert picture.startswith(b"\x89PNG")
    with pytest.raises(OSError, match="offline"):
        _OfflineHttpx().get("https://example.org/audio.wav")

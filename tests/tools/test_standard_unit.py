"""LangChain's standard unit suites (``langchain-tests``): ``ChatSeedX`` and every tool of ``make_seedx_tools``
on a real ``tiny-random`` engine and image memory, and the tools' integration suite (they run for real here).

The suites are used as published: no standard test is overridden. Only the documented properties are set;
each one that differs from the suite's default says why next to it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from langchain_core.tools import BaseTool
from langchain_tests.integration_tests import ToolsIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests, ToolsUnitTests
from PIL import Image
from seedx_agent.memory import ImageMemory
from seedx_agent.tools import ChatSeedX, make_seedx_tools

from seedx_agent.engine import SeedXEngine
from seedx_agent.model import SeedX

NAMESPACE = "user:standard/thread:unit"
RESOURCES: dict[str, Any] = {}  # filled once per module by ``_resources``: the suites read it in properties


@pytest.fixture(scope="module")
def engine() -> SeedXEngine:
    return SeedXEngine(SeedX.from_pretrained("tiny-random", variants=("seed-x-i", "seed-x-edit")))


@pytest.fixture(scope="module", autouse=True)
def _resources(engine: SeedXEngine, memory: ImageMemory) -> None:
    pixels = np.zeros((40, 48, 3), dtype=np.uint8)  # (height, width, rgb)
    pixels[8:30, 10:36] = (200, 30, 30)
    image_id = memory.add(Image.fromarray(pixels), kind="input", namespace=NAMESPACE, caption="a red square").id
    tools = make_seedx_tools(engine, memory, namespace=NAMESPACE, default_steps=2)
    RESOURCES.update(engine=engine, memory=memory, image_id=image_id, tools={tool.name: tool for tool in tools})


class TestChatSeedXUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatSeedX]:
        return ChatSeedX

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": RESOURCES["engine"], "memory": RESOURCES["memory"], "namespace": NAMESPACE}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # The suite's defaults minus the network-client fields (timeout, max_retries, api_key): the model runs in
        # this process, and ChatSeedX refuses fields it would ignore (extra="forbid"). temperature, max_tokens
        # and stop stay: they are honoured.
        params = super().standard_chat_model_params
        return {key: value for key, value in params.items() if key not in ("timeout", "max_retries", "api_key")}

    @property
    def has_tool_choice(self) -> bool:
        return True  # "any"/"required" and a tool name are enforced while decoding

    @property
    def supports_image_inputs(self) -> bool:
        return True  # base64 / data-URL image blocks and memory ids

    @property
    def supports_image_tool_message(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True  # method="json_mode" takes the same schema-constrained path as function calling

    @property
    def supports_model_override(self) -> bool:
        return False  # a ChatSeedX serves the engine it was built with; another per-call model raises


# ---------------------------------------------------------------------------------------------- the tools


class _SeedXToolTests:
    """Shared properties: the tool instance from ``make_seedx_tools`` and example arguments valid for it."""

    name: str

    @property
    def tool_constructor(self) -> BaseTool:
        return RESOURCES["tools"][self.name]

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        image_id = RESOURCES.get("image_id", "img_0123456789abcdef")
        return {
            "comprehend": {"image_ids": [image_id], "question": "What colour is the square?"},
            "ground": {"image_id": image_id, "phrase": "the red square"},
            "generate_image": {"prompt": "a red square on black", "seed": 3},
            "edit_image": {"image_id": image_id, "instruction": "make the square blue", "seed": 3},
            "recall_images": {"query": "a red square", "k": 2},
        }[self.name]


def test_every_tool_has_its_standard_test_classes() -> None:
    names = {tool.name for tool in RESOURCES["tools"].values()}
    covered = {cls.name for cls in _SeedXToolTests.__subclasses__()}
    assert covered == names  # a tool added to make_seedx_tools needs its classes below


class _Comprehend(_SeedXToolTests):
    name = "comprehend"


class _Ground(_SeedXToolTests):
    name = "ground"


class _GenerateImage(_SeedXToolTests):
    name = "generate_image"


class _EditImage(_SeedXToolTests):
    name = "edit_image"


class _RecallImages(_SeedXToolTests):
    name = "recall_images"


class TestComprehendUnit(_Comprehend, ToolsUnitTests): ...


class TestComprehendIntegration(_Comprehend, ToolsIntegrationTests): ...


class TestGroundUnit(_Ground, ToolsUnitTests): ...


class TestGroundIntegration(_Ground, ToolsIntegrationTests): ...


class TestGenerateImageUnit(_GenerateImage, ToolsUnitTests): ...


class TestGenerateImageIntegration(_GenerateImage, ToolsIntegrationTests): ...


class TestEditImageUnit(_EditImage, ToolsUnitTests): ...


class TestEditImageIntegration(_EditImage, ToolsIntegrationTests): ...


class TestRecallImagesUnit(_RecallImages, ToolsUnitTests): ...


class TestRecallImagesIntegration(_RecallImages, ToolsIntegrationTests): ...

"""Forced tool calls and structured output: ``SchemaGrammar``, ``CopyArguments`` with ``schemas``, and the
standard parameters of ``ChatSeedX`` (model, max_tokens, temperature, top_p, stop, seed, usage, unknown fields),
on the tiny tokenizer with random logits and on a real ``tiny-random`` engine (random weights: whatever they
prefer, the constraint must yield a valid call)."""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from PIL import Image
from pydantic import BaseModel, Field, ValidationError
from seedx_agent.memory import ImageMemory
from seedx_agent.tools import ChatSeedX, UnsupportedContentError, parse_tool_calls
from seedx_agent.tools.chat_rendering import history_tool_calls, render_messages

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import ConfigError
from seedx_agent.model import SeedX
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.protocol.copy_arguments import CopyArguments, SchemaGrammar
from seedx_agent.protocol.tool_calls import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

NAMESPACE = "user:test/thread:tool-choice"


class Order(BaseModel):
    """Order an item."""

    item: str = Field(min_length=1, description="what to order")
    quantity: int = Field(ge=1, le=20)
    size: Literal["small", "large"] = "small"
    note: str | None = None
    tags: list[str] = Field(default_factory=list, max_length=3)


ORDER_SCHEMA = Order.model_json_schema()
MAGIC_SCHEMA = {
    "type": "object",
    "properties": {"input": {"type": "integer", "exclusiveMinimum": -1000, "exclusiveMaximum": 1000}},
    "required": ["input"],
}
NO_ARGS_SCHEMA = {"type": "object", "properties": {}}


@pytest.fixture(scope="module")
def tokenizer() -> SeedXTokenizer:
    return SeedXTokenizer.tiny()


@pytest.fixture(scope="module")
def engine() -> SeedXEngine:
    return SeedXEngine(SeedX.from_pretrained("tiny-random", variants=("seed-x-i",)))


@pytest.fixture(scope="module")
def chat(engine: SeedXEngine, memory: ImageMemory) -> ChatSeedX:
    return ChatSeedX(engine=engine, memory=memory, namespace=NAMESPACE, seed=5, image_output="off")


# ---------------------------------------------------------------------------------------------- the grammar


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ('{"item": "tea", "quantity": 2}', True),
        ('{"item": "tea", "quantity": 20, "size": "large", "note": null, "tags": ["a", "b"]}', True),
        ('{"item": "t\\u00e9\\n", "quantity": 1, "note": "x"}', True),
        ('{"quantity": 2, "item": "tea"}', False),  # keys in the schema's order
        ('{"item": "tea"}', False),  # a required key missing
        ('{"item": "", "quantity": 2}', False),  # minLength
        ('{"item": "tea", "quantity": 21}', False),  # maximum
        ('{"item": "tea", "quantity": 0}', False),  # minimum
        ('{"item": "tea", "quantity": 2.5}', False),  # an integer
        ('{"item": "tea", "quantity": 02}', False),  # JSON numbers
        ('{"item": "tea", "quantity": 2, "size": "medium"}', False),  # enum
        ('{"item": "tea", "quantity": 2, "tags": ["a", "b", "c", "d"]}', False),  # maxItems
        ('{"item": "tea", "quantity": 2, "colour": "red"}', False),  # undeclared key
        ('{"item":"tea", "quantity": 2}', False),  # json.dumps layout only
        ('{"item": "</tool_call>", "quantity": 2}', False),  # a value cannot close the call
        ('{"item": "<\\/tool_call>", "quantity": 2}', True),
    ],
)
def test_schema_grammar_reads_exactly_the_valid_values(text: str, valid: bool) -> None:
    grammar = SchemaGrammar(ORDER_SCHEMA)
    state = grammar.feed(grammar.start, text)
    assert (state is not None and grammar.is_complete(state)) == valid
    if valid:
        Order.model_validate(json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        '{"item": "tea", "quantity": 12, "size": "large", "note": "hot", "tags": ["green", "x"]}',
        '{"item": "a\\"b", "quantity": 3}',
    ],
)
def test_the_shortest_completion_ends_every_prefix_validly(text: str) -> None:
    grammar = SchemaGrammar(ORDER_SCHEMA)
    for end in range(len(text) + 1):
        state = grammar.feed(grammar.start, text[:end])
        assert state is not None, text[:end]
        whole = text[:end] + grammar.completion(state)
        assert grammar.is_complete(grammar.feed(grammar.start, whole)), whole
        Order.model_validate(json.loads(whole))


def test_tool_call_grammar_names_a_tool_and_follows_its_schema() -> None:
    grammar = SchemaGrammar.tool_calls({"magic_function": MAGIC_SCHEMA, "ping": NO_ARGS_SCHEMA, "free": None})

    def complete(text: str) -> bool:
        state = grammar.feed(grammar.start, text)
        return state is not None and grammar.is_complete(state)

    assert complete('{"name": "magic_function", "args": {"input": -999}}')
    assert complete('{"name": "ping", "args": {}}')
    assert complete('{"name": "free", "args": {"anything": [1, {"b": null}, "x"]}}')
    assert not complete('{"name": "magic_function", "args": {"input": 1000}}')
    assert not complete('{"name": "ping", "args": {"a": 1}}')
    assert not complete('{"name": "pong", "args": {}}')
    assert not complete('{"args": {}, "name": "ping"}')
    assert grammar.completion(grammar.feed(grammar.start, '{"name": "m')) == 'agic_function", "args": {"input": 0}}'


def test_refs_unions_and_bad_schemas() -> None:
    class Inner(BaseModel):
        flag: bool

    class Outer(BaseModel):
        inner: Inner
        either: int | str

    grammar = SchemaGrammar(Outer.model_json_schema())  # {"$defs": {"Inner": ...}, "$ref": ...}
    state = grammar.feed(grammar.start, '{"inner": {"flag": true}, "either": "x"}')
    assert grammar.is_complete(state)
    assert grammar.is_complete(grammar.feed(grammar.start, '{"inner": {"flag": false}, "either": -3}'))
    assert grammar.feed(grammar.start, '{"inner": {"flag": 1}') is None
    with pytest.raises(ValueError, match="unsupported JSON schema type"):
        SchemaGrammar({"type": "date"})
    with pytest.raises(ValueError, match="points nowhere"):
        SchemaGrammar({"$ref": "#/$defs/Missing"})


# ---------------------------------------------------------------------------------------------- the processor


def _decode(processor: CopyArguments, tokenizer: SeedXTokenizer, seed: int, budget: int) -> list[int]:
    """Greedy decoding of random logits under ``processor``: whatever the model prefers, the constraint rules."""
    generator = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    while len(ids) < budget:
        logits = processor(ids, torch.randn(len(tokenizer), generator=generator))
        token = int(torch.argmax(logits))
        assert torch.isfinite(logits[token])
        ids.append(token)
        if token == tokenizer.eos_token_id:
            break
    return ids


@pytest.mark.parametrize("budget", [66, 80, 400])  # the shortest call takes 63 tiny-tokenizer tokens
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_forced_call_is_one_valid_call_within_the_budget(tokenizer: SeedXTokenizer, seed: int, budget: int) -> None:
    schemas = {"order": ORDER_SCHEMA, "magic_function": MAGIC_SCHEMA}
    processor = CopyArguments(
        tokenizer,
        [],
        keys=(),
        tool_names=list(schemas),
        schemas=schemas,
        require_call=True,
        single_call=True,
        max_new_tokens=budget,
    )
    ids = _decode(processor, tokenizer, seed, budget)
    text = tokenizer.decode(ids)
    assert text.startswith(TOOL_CALL_OPEN) and text.endswith(TOOL_CALL_CLOSE), text
    assert ids[-1] == tokenizer.eos_token_id or len(ids) == budget
    parsed = parse_tool_calls(text, list(schemas))
    assert parsed.text == "" and parsed.invalid_tool_calls == [] and len(parsed.tool_calls) == 1
    call = parsed.tool_calls[0]
    if call["name"] == "order":
        Order.model_validate(call["args"])
    else:
        assert isinstance(call["args"]["input"], int) and -1000 < call["args"]["input"] < 1000


def test_a_named_choice_fixes_the_name(tokenizer: SeedXTokenizer) -> None:
    schemas = {"order": ORDER_SCHEMA, "magic_function": MAGIC_SCHEMA}
    for seed in range(4):
        processor = CopyArguments(
            tokenizer,
            [],
            keys=(),
            tool_names=["magic_function"],
            schemas=schemas,
            require_call=True,
            single_call=True,
            max_new_tokens=100,
        )
        (call,) = parse_tool_calls(tokenizer.decode(_decode(processor, tokenizer, seed, 100))).tool_calls
        assert call["name"] == "magic_function"


def test_parallel_calls_are_whole_calls_and_nothing_else(tokenizer: SeedXTokenizer) -> None:
    schemas = {"magic_function": MAGIC_SCHEMA, "ping": NO_ARGS_SCHEMA}
    for seed in range(3):
        processor = CopyArguments(
            tokenizer, [], keys=(), tool_names=list(schemas), schemas=schemas, require_call=True, max_new_tokens=150
        )
        text = tokenizer.decode(_decode(processor, tokenizer, seed, 150))
        parsed = parse_tool_calls(text, list(schemas))
        assert parsed.invalid_tool_calls == [] and len(parsed.tool_calls) >= 1
        assert parsed.text.strip("\n") == "", text  # only newlines between calls; no call is left open


def test_the_call_opening_is_forced_even_against_the_models_wish(tokenizer: SeedXTokenizer) -> None:
    processor = CopyArguments(
        tokenizer,
        [],
        keys=(),
        tool_names=["ping"],
        schemas={"ping": NO_ARGS_SCHEMA},
        require_call=True,
        single_call=True,
    )
    logits = torch.zeros(len(tokenizer))
    logits[tokenizer.eos_token_id] = 100.0  # the model wants to stop at once
    restricted = processor([], logits)
    assert not torch.isfinite(restricted[tokenizer.eos_token_id])
    allowed = torch.isfinite(restricted).nonzero().flatten().tolist()
    assert allowed and all(TOOL_CALL_OPEN.startswith(tokenizer.decode([i])) for i in allowed)


# ---------------------------------------------------------------------------------------------- ChatSeedX fields


def test_unknown_fields_raise_and_name_themselves(engine: SeedXEngine, memory: ImageMemory) -> None:
    base = {"engine": engine, "memory": memory, "namespace": NAMESPACE}
    with pytest.raises(ValidationError, match="bogus_field"):
        ChatSeedX(**base, max_tokens=3, bogus_field=1)
    with pytest.raises(ValidationError, match="did you mean 'temperature'"):
        ChatSeedX(**base, temprature=0.5)
    with pytest.raises(ValidationError, match="'timeout': ChatSeedX runs the model in this process"):
        ChatSeedX(**base, timeout=60)


def test_model_name_and_its_alias(engine: SeedXEngine, memory: ImageMemory, chat: ChatSeedX) -> None:
    base = {"engine": engine, "memory": memory, "namespace": NAMESPACE}
    assert chat.model_name == "tiny-random"
    assert ChatSeedX(**base, model="tiny-random").model_name == ChatSeedX(**base, model_name="tiny-random").model_name
    with pytest.raises(ConfigError, match="not the engine's model 'tiny-random'"):
        ChatSeedX(**base, model="mini")
    with pytest.raises(ConfigError, match="not this ChatSeedX's model"):
        chat.invoke("hi", model="gpt-4o")
    params = ChatSeedX(**base, max_tokens=7, stop=["x"], temperature=0.5)._get_ls_params()
    assert params == {
        "ls_provider": "seedx",
        "ls_model_name": "tiny-random",
        "ls_model_type": "chat",
        "ls_temperature": 0.5,
        "ls_max_tokens": 7,
        "ls_stop": ["x"],
    }


@pytest.fixture
def chat_calls(engine: SeedXEngine, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every ``SeedX.chat`` call's options, and the tokens it produced (the real call runs)."""
    calls: list[dict] = []
    real = engine.model.chat

    def spy(messages, *, options=None, on_token=None, logits_processor=None, **kwargs):
        record = {"options": options, "tokens": [], "processor": logits_processor}
        calls.append(record)

        def count(token: int) -> None:
            record["tokens"].append(token)
            if on_token is not None:
                on_token(token)

        return real(messages, options=options, on_token=count, logits_processor=logits_processor, **kwargs)

    monkeypatch.setattr(engine.model, "chat", spy)
    return calls


def test_sampling_parameters_reach_the_decoder(chat: ChatSeedX, chat_calls: list[dict]) -> None:
    sampling = chat.model_copy(update={"max_new_tokens": 6, "temperature": 0.7, "top_p": 0.5, "seed": 11})
    first = sampling.invoke("Tell me about the red circle.")
    options = chat_calls[-1]["options"]
    assert (options.max_new_tokens, options.do_sample, options.temperature, options.top_p, options.seed) == (
        6,
        True,
        0.7,
        0.5,
        11,
    )
    assert first.usage_metadata["output_tokens"] == len(chat_calls[-1]["tokens"]) <= 6
    assert sampling.invoke("Tell me about the red circle.").content == first.content  # the same seed
    assert chat.model_copy(update={"max_new_tokens": 3}).max_tokens == 3
    assert ChatSeedX(engine=chat.engine, memory=chat.memory, namespace=NAMESPACE, max_tokens=4).max_new_tokens == 4


def test_stop_ends_decoding_at_the_stop_string(chat: ChatSeedX, chat_calls: list[dict]) -> None:
    free = chat.model_copy(update={"max_new_tokens": 40}).invoke("Describe the scene.")
    text = free.response_metadata["raw_text"]
    words = [word for word in text.split() if word.isalpha() and len(word) >= 2]
    assert words, text  # random weights: some word to stop at
    stop = words[len(words) // 2]
    stopped = chat.model_copy(update={"max_new_tokens": 40, "stop": [stop]}).invoke("Describe the scene.")
    assert stop not in stopped.content and text.startswith(
        stopped.response_metadata["raw_text"][: len(stopped.content)]
    )
    assert stopped.usage_metadata["output_tokens"] < free.usage_metadata["output_tokens"]  # decoding ended early
    per_call = chat.model_copy(update={"max_new_tokens": 40, "stop": ["never"]}).invoke(
        "Describe the scene.", stop=[stop]
    )
    assert per_call.content == stopped.content  # a per-call stop replaces the field


def test_usage_counts_the_tokens_the_model_read_and_wrote(
    chat: ChatSeedX, engine: SeedXEngine, chat_calls: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[int] = []
    real = engine.model.tokenizer.encode_segments_with_mask

    def spy(segments, **kwargs):
        ids, mask = real(segments, **kwargs)
        encoded.append(len(ids))
        return ids, mask

    monkeypatch.setattr(engine.model.tokenizer, "encode_segments_with_mask", spy)
    pixels = np.zeros((40, 90, 3), dtype=np.uint8)  # a wide picture: more than one any-res tile
    image_id = chat.memory.add(Image.fromarray(pixels), kind="input", namespace=NAMESPACE).id
    messages = [
        SystemMessage("Be brief."),
        HumanMessage(content=[{"type": "image", "file_id": image_id}, {"type": "text", "text": "What is it?"}]),
    ]
    message = chat.invoke(messages)
    usage = message.usage_metadata
    assert usage["input_tokens"] == encoded[-1] and usage["output_tokens"] == len(chat_calls[-1]["tokens"])
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    chunks = list(chat.stream(messages))
    assert [c.usage_metadata is not None for c in chunks].count(True) == 1 and chunks[-1].usage_metadata == usage


def test_image_output_off_masks_the_image_token(chat: ChatSeedX, engine: SeedXEngine, chat_calls: list[dict]) -> None:
    chat.invoke("Draw a cat.")
    processor = chat_calls[-1]["processor"]
    assert processor is not None
    assert processor([], torch.zeros(len(engine.model.tokenizer)))[engine.model.ids.boi] == float("-inf")


def test_streaming_field_streams_invoke(chat: ChatSeedX) -> None:
    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs) -> None:
            self.tokens.append(token)

    handler = Tokens()
    message = chat.model_copy(update={"streaming": True}).invoke("Describe the scene.", config={"callbacks": [handler]})
    assert "".join(handler.tokens) == message.text


# ---------------------------------------------------------------------------------- forced calls, real model


@tool
def magic_function(input: int) -> int:
    """Apply a magic function to an input."""
    return input + 2


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return "sunny"


@pytest.mark.parametrize("choice", ["any", "required", "magic_function", True])
def test_tool_choice_is_enforced_on_random_weights(chat: ChatSeedX, choice) -> None:
    bound = chat.bind_tools([get_weather, magic_function], tool_choice=choice)
    message = bound.invoke("Hello!")
    assert message.content == "" and message.invalid_tool_calls == []
    (call,) = message.tool_calls
    if choice == "magic_function":
        assert call["name"] == "magic_function" and isinstance(call["args"]["input"], int)
    else:
        assert call["name"] in ("get_weather", "magic_function")
    chunks = list(bound.stream("Hello!"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [(call["name"], call["args"])]  # greedy: same


def test_parallel_tool_calls_and_auto(chat: ChatSeedX) -> None:
    several = chat.bind_tools([magic_function], tool_choice="any", parallel_tool_calls=True).invoke("Go.")
    assert len(several.tool_calls) >= 1 and several.invalid_tool_calls == [] and several.content == ""
    auto = chat.bind_tools([magic_function]).invoke("Go.")  # the model's choice: random weights write no call
    assert isinstance(auto, AIMessage)


class Joke(BaseModel):
    """A joke."""

    setup: str = Field(description="question to set up a joke")
    punchline: str | None = Field(default=None, description="answer to resolve the joke")
    rating: int = Field(default=3, ge=1, le=5)


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_structured_output_is_an_object_of_the_schema(chat: ChatSeedX, method: str) -> None:
    joke = chat.with_structured_output(Joke, method=method).invoke("Tell me a joke about cats.")
    assert isinstance(joke, Joke) and 1 <= joke.rating <= 5
    as_dict = chat.with_structured_output(Joke.model_json_schema(), method=method).invoke("Tell me a joke.")
    assert isinstance(as_dict, dict) and "setup" in as_dict
    raw = chat.with_structured_output(Joke, include_raw=True).invoke("Tell me a joke.")
    assert isinstance(raw["parsed"], Joke) and raw["parsing_error"] is None and len(raw["raw"].tool_calls) == 1
    with pytest.raises(ConfigError, match="method"):
        chat.with_structured_output(Joke, method="xml")


# ---------------------------------------------------------------------------------------------- history shapes


def test_tool_calls_of_every_provider_shape_are_replayed_once(memory: ImageMemory) -> None:
    args = {"a": 1, "b": 2}
    anthropic = AIMessage(
        [
            {"type": "thinking", "thinking": "add them", "signature": "x"},
            {"type": "text", "text": "some text"},
            {"type": "tool_use", "id": "abc", "name": "add", "input": args},
        ],
        tool_calls=[{"name": "add", "args": args, "id": "abc", "type": "tool_call"}],
    )
    responses = AIMessage([{"type": "function_call", "name": "add", "arguments": json.dumps(args), "call_id": "c1"}])
    legacy = AIMessage("", additional_kwargs={"function_call": {"name": "add", "arguments": json.dumps(args)}})
    raw_openai = AIMessage(
        "",
        additional_kwargs={
            "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]
        },
    )
    expected = '<tool_call>{"name": "add", "args": {"a": 1, "b": 2}}</tool_call>'
    for message, text in [
        (anthropic, "some text\n" + expected),
        (responses, expected),
        (legacy, expected),
        (raw_openai, '<tool_call>{"name": "add", "args": {"a": 1}}</tool_call>'),
    ]:
        turns = render_messages(
            [HumanMessage("What is 1 + 2?"), message, ToolMessage("3", tool_call_id="abc")],
            memory=memory,
            namespace=NAMESPACE,
        )
        assert turns[1].text == text
    assert history_tool_calls(anthropic) == [("add", args)]
    with pytest.raises(UnsupportedContentError, match="'audio'"):
        render_messages(
            [HumanMessage("hi"), AIMessage([{"type": "audio", "base64": "AAAA"}]), HumanMessage("again")],
            memory=memory,
            namespace=NAMESPACE,
        )

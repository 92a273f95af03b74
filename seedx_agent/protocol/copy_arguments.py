"""Copy-constrained tool arguments: free-text arguments of a tool call may only quote the user's words.

SEED-X's tool requests repeat the user's own words: "Find the red circle in #1." becomes
``{"image_id": "#1", "phrase": "the red circle"}``, and an edit instruction, a generation prompt or a recall
query is lifted from the request the same way (that is how ``miniature.tool_dialogs`` writes them). A small
planner knows which tool to call and where the quoted text starts, but it drifts while copying: it writes
a plausible phrase of its own. The bundled miniature did this in most held-out calls, and training on copy
drills did not fix it (README, agent row).

``CopyArguments`` is a logits processor for ``decode``/``SeedX.chat`` that enforces the copy while the
model writes such an argument. Inside the string value of a free-text key (``FREE_TEXT_ARGUMENTS``) of an
open ``<tool_call>``, the value must stay a word-aligned span of one of the source texts (the user's turns):
it starts at a word, and it may end (a token with the closing quote) only after a whole word. A few keys
also accept fixed protocol values (``FIXED_VALUES``: a description asks "describe the picture"). The model
keeps the decisions: which tool, which argument, where the span starts, and whether it goes on. At each
step the probability it gives to closing the string is weighed against the probability of any other token.
If closing is less likely, it continues with its most likely token that extends the span; otherwise it
closes. Everything outside those strings is untouched. This is constrained decoding in the sense of JSON
schema or grammar constraints, applied to the agent protocol. It is not part of the official SEED-X.
``ChatSeedX(copy_arguments=...)`` turns it on or off.

With ``json_structure`` (the default), the whole open call is also kept well-formed: every token must leave
the text after ``<tool_call>`` a prefix of valid JSON (``json_prefix``), and once the JSON object is
complete only ``</tool_call>`` may follow. The miniature otherwise often dropped a closing brace or wrote
``": "`` after a value. Given ``tool_names``, the call's ``"name"`` must be one of them.

Forced calls (``ChatSeedX`` with ``tool_choice="any"``/a tool name, and ``with_structured_output``). With
``schemas`` (a JSON schema of the arguments per tool name) the open call follows ``SchemaGrammar``: exactly
``{"name": "<tool>", "args": {...}}`` in ``json.dumps`` layout, the arguments valid under the tool's schema
(keys, types, enums, bounds). ``require_call`` makes the answer open with ``<tool_call>``; ``single_call``
ends it (only EOS) once that call is closed; ``max_new_tokens`` (the decoding budget) closes an open call in
time: when the tokens left barely cover the shortest valid completion, that completion is written.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.protocol import json_prefix
from seedx_agent.protocol.tool_calls import DESCRIBE_QUESTION, SYSTEM_CLOSE, TOOL_CALL_CLOSE, TOOL_CALL_OPEN

if TYPE_CHECKING:
    from seedx_agent.model import ChatMessage

__all__ = [
    "FIXED_VALUES",
    "FREE_TEXT_ARGUMENTS",
    "TOOL_NAME",
    "CopyArguments",
    "GrammarState",
    "SchemaGrammar",
    "copy_sources",
]

# Argument names of the SEED-X tools whose values quote the request (tools/seedx_tools.py, tool_dialogs).
FREE_TEXT_ARGUMENTS: tuple[str, ...] = ("phrase", "instruction", "prompt", "query", "question")
# Values an argument may take besides quotes: a description request asks the protocol's fixed question.
FIXED_VALUES: dict[str, tuple[str, ...]] = {"question": (DESCRIBE_QUESTION,)}
_BUDGET_ZONE = 32  # tokens: this close to the budget's end, every token must leave room to close the call
_NEXT_CALL = "\n" + TOOL_CALL_OPEN  # a further call of a forced answer, on its own line
TOOL_NAME = "<tool name>"  # options() key of the call's "name" value (not a JSON key: it cannot clash)
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")


def copy_sources(user_texts: Sequence[str]) -> list[str]:
    """The texts arguments may quote: each user turn without the system preamble (tool specs are not the
    user's words), blank turns dropped."""
    sources = []
    for text in user_texts:
        if SYSTEM_CLOSE in text:
            text = text.split(SYSTEM_CLOSE, 1)[1]
        if text.strip():
            sources.append(text)
    return sources


@functools.lru_cache(maxsize=4)  # one table per tokenizer: 32k entries for LLaMA's take ~50 ms to build
def _piece_texts(tokenizer: SeedXTokenizer) -> tuple[str | None, ...]:
    """Text each token adds mid-string (``▁`` as a space, ASCII byte pieces as their character); None for
    control, added (``<img>``, ``<loc-N>``) and non-ASCII byte tokens, which never go inside a quote."""
    texts: list[str | None] = []
    for token_id in range(len(tokenizer)):
        if token_id in tokenizer.added_tokens.values() or tokenizer.sp.is_control(token_id):
            texts.append(None)
            continue
        if tokenizer.sp.is_unknown(token_id):
            texts.append(None)
            continue
        piece = tokenizer.sp.id_to_piece(token_id)
        byte = _BYTE_PIECE.fullmatch(piece)
        if byte is not None:
            value = int(byte.group(1), 16)
            texts.append(chr(value) if 0x20 <= value < 0x7F else None)
        else:
            texts.append(piece.replace("\u2581", " "))
    return tuple(texts)


@functools.lru_cache(maxsize=4)
def _grammar_piece_texts(tokenizer: SeedXTokenizer) -> tuple[str | None, ...]:
    """``_piece_texts`` with non-ASCII byte tokens as ``BYTE_CONTENT`` (string content for ``SchemaGrammar``:
    a multi-byte character such as 你 is written byte by byte)."""
    texts = list(_piece_texts(tokenizer))
    for token_id, text in enumerate(texts):
        if text is None and token_id < tokenizer.sp.get_piece_size() and not tokenizer.sp.is_control(token_id):
            byte = _BYTE_PIECE.fullmatch(tokenizer.sp.id_to_piece(token_id))
            if byte is not None and int(byte.group(1), 16) >= 0x80:
                texts[token_id] = BYTE_CONTENT
    return tuple(texts)


# ---------------------------------------------------------------------------------------------- JSON-schema grammar

_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)")
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_ESCAPABLE = frozenset('"\\/bfnrt')
BYTE_CONTENT = "\x80"  # grammar text of a non-ASCII byte token: string content, nothing else


def _escape_pad(escape: str) -> str:
    """What ends an open escape of a string being written (``\\`` -> ``n``, ``\\u12`` -> ``00``)."""
    if escape == "\\":
        return "n"
    return "0" * (4 - int(escape[1:])) if escape.startswith("u") else ""


GrammarState = frozenset  # of stacks (tuples of frames); see SchemaGrammar


class SchemaGrammar:
    """Is this text the beginning of the JSON of a value valid under a JSON schema?

    A prefix checker in the manner of ``json_prefix``, but driven by a schema: ``advance(state, char)`` returns
    the next state or None when no valid value starts with the text so far. The text is the layout
    ``json.dumps`` writes (``", "`` and ``": "`` separators, no other whitespace), so a small model spends no
    tokens on layout, and object keys come in the schema's order (optional ones may be left out, required ones
    may not). Supported: ``type`` (one or a list), ``properties``/``required`` (an object without
    ``properties`` takes any keys), ``items``/``minItems``/``maxItems``, ``enum``/``const``, ``anyOf``/``oneOf``
    (every branch followed at once), ``allOf`` (merged), ``$ref`` into ``$defs``/``definitions``,
    ``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum`` and ``minLength``; other keywords are
    not checked. An empty schema takes any JSON value.

    A state is a frozenset of stacks, one per live reading (``anyOf`` branches); a stack is a tuple of frames
    (innermost last), the empty stack a complete value. Frames: ``("V", node)`` a value is due; ``("S", alt,
    written, count, escape)`` inside a string (``written``: the text so far, for enums only; ``count``: characters
    up to ``minLength``); ``("N", alt, text)`` a number; ``("L", rest)`` the rest of a literal; ``("O", alt, pos,
    mode, pending)`` an object (``pos``: index of the next key it may write; ``mode``: open, key, colon,
    colon_space, after, comma; ``pending``: the node of the value after the colon); ``("K", alt, pos, written,
    escape)`` a key being written, on top of its object; ``("A", alt, count, mode)`` an array. Schemas become
    nodes (tuples of alternatives), so states hash and valid-token sets can be cached per state.
    ``completion(state)`` is the shortest text that completes a valid value from ``state``.
    """

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._alts: list[tuple[Any, ...]] = []
        self._nodes: list[tuple[int, ...]] = []
        self._memo: dict[Any, int] = {}
        self._keep: list[Any] = []
        self._min: dict[int, str] = {}
        any_node = self._new_node()
        generic_object = self._add_alt(("object", None, frozenset()))
        generic_array = self._add_alt(("array", any_node, 0, None))
        generic_string = self._add_alt(("string", None, 0))
        generic_number = self._add_alt(("number", None, None, False, False))
        literals = [self._add_alt(("literal", text)) for text in ("true", "false", "null")]
        self._nodes[any_node] = (generic_object, generic_array, generic_string, generic_number, *literals)
        self.any_node = any_node
        self.root = self._register(schema, schema)
        self.start: GrammarState = frozenset({(("V", self.root),)})

    @classmethod
    def tool_calls(cls, schemas: Mapping[str, Mapping[str, Any] | None]) -> SchemaGrammar:
        """The grammar of one call ``{"name": <a key of schemas>, "args": <a value of its schema>}``; a None
        schema takes any object of arguments."""
        if not schemas:
            raise ValueError("tool_calls needs at least one tool schema")
        grammar = cls({})
        node = grammar._new_node()
        alts = []
        for name, parameters in schemas.items():
            name_node = grammar._new_node()
            grammar._nodes[name_node] = (
                grammar._add_alt(("string", (json.dumps(name, ensure_ascii=False)[1:-1],), 0)),
            )
            parameters = parameters if parameters is not None else {"type": "object"}
            props = (("name", name_node), ("args", grammar._register(parameters, parameters)))
            alts.append(grammar._add_alt(("object", props, frozenset({"name", "args"}))))
        grammar._nodes[node] = tuple(alts)
        grammar.root = node
        grammar.start = frozenset({(("V", node),)})
        return grammar

    # -- schema -> nodes ----------------------------------------------------------------------------
    def _new_node(self) -> int:
        self._nodes.append(())
        return len(self._nodes) - 1

    def _add_alt(self, alt: tuple[Any, ...]) -> int:
        self._alts.append(alt)
        return len(self._alts) - 1

    @staticmethod
    def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
        seen = 0
        while "$ref" in schema:
            ref = str(schema["$ref"])
            if not ref.startswith("#/") or seen > 32:
                raise ValueError(f"unsupported $ref {ref!r}: only references into this schema (#/$defs/...)")
            target: Any = root
            for part in ref[2:].split("/"):
                target = target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, Mapping) else None
            if not isinstance(target, Mapping):
                raise ValueError(f"$ref {ref!r} points nowhere in the schema")
            rest = {key: value for key, value in schema.items() if key != "$ref"}
            schema = {**target, **rest}
            seen += 1
        return schema

    def _register(self, schema: Any, root: Mapping[str, Any]) -> int:
        if schema is True or schema is None or (isinstance(schema, Mapping) and not schema):
            return self.any_node
        if not isinstance(schema, Mapping):
            raise ValueError(f"a JSON schema must be an object, got {schema!r:.60}")
        pure_ref = "$ref" in schema and set(schema) <= {"$ref", "description", "title", "default"}
        key: Any = ("$ref", schema["$ref"]) if pure_ref else id(schema)
        if key in self._memo:
            return self._memo[key]
        self._keep.append(schema)  # ids stay unique while the memo uses them
        node = self._new_node()
        self._memo[key] = node
        self._nodes[node] = tuple(self._alternatives(self._resolve(schema, root), root))
        if not self._nodes[node]:
            raise ValueError(f"the schema {dict(schema)!r:.80} admits no value")
        return node

    def _alternatives(self, schema: Mapping[str, Any], root: Mapping[str, Any]) -> list[int]:
        for merged in schema.get("allOf") or ():
            merged = self._resolve(merged, root)
            schema = {**merged, **{k: v for k, v in schema.items() if k != "allOf"}}
        branches = schema.get("anyOf") or schema.get("oneOf")
        if branches:
            base = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
            alts: list[int] = []
            for branch in branches:
                alts.extend(self._alternatives({**base, **self._resolve(branch, root)}, root))
            return alts
        if "const" in schema or "enum" in schema:
            values = [schema["const"]] if "const" in schema else list(schema["enum"])
            strings = tuple(json.dumps(v, ensure_ascii=False)[1:-1] for v in values if isinstance(v, str))
            alts = [self._add_alt(("string", strings, 0))] if strings else []
            alts += [self._add_alt(("literal", json.dumps(v))) for v in values if not isinstance(v, str)]
            return alts
        types = schema.get("type")
        if types is None:
            if "properties" in schema:
                types = ["object"]
            elif "items" in schema:
                types = ["array"]
            else:
                return list(self._nodes[self.any_node])
        alts = []
        for kind in [types] if isinstance(types, str) else list(types):
            if kind == "object":
                properties = schema.get("properties")
                props = (
                    None
                    if properties is None
                    else tuple((name, self._register(value, root)) for name, value in properties.items())
                )
                alts.append(self._add_alt(("object", props, frozenset(schema.get("required") or ()))))
            elif kind == "array":
                items = self._register(schema.get("items"), root)
                alts.append(self._add_alt(("array", items, int(schema.get("minItems", 0)), schema.get("maxItems"))))
            elif kind == "string":
                alts.append(self._add_alt(("string", None, int(schema.get("minLength", 0)))))
            elif kind in ("integer", "number"):
                low, high = schema.get("minimum"), schema.get("maximum")
                low_excl, high_excl = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
                if isinstance(low_excl, (int, float)) and not isinstance(low_excl, bool):
                    low, low_strict = low_excl, True
                else:
                    low_strict = low_excl is True
                if isinstance(high_excl, (int, float)) and not isinstance(high_excl, bool):
                    high, high_strict = high_excl, True
                else:
                    high_strict = high_excl is True
                if kind == "integer":  # integer bounds become inclusive integers
                    if low is not None:
                        low = math.floor(low) + 1 if low_strict and low == math.floor(low) else math.ceil(low)
                    if high is not None:
                        high = math.ceil(high) - 1 if high_strict and high == math.ceil(high) else math.floor(high)
                    alts.append(self._add_alt(("integer", low, high, False, False)))
                else:
                    alts.append(self._add_alt(("number", low, high, low_strict, high_strict)))
            elif kind == "boolean":
                alts += [self._add_alt(("literal", "true")), self._add_alt(("literal", "false"))]
            elif kind == "null":
                alts.append(self._add_alt(("literal", "null")))
            else:
                raise ValueError(f"unsupported JSON schema type {kind!r}")
        return alts

    # -- checking -----------------------------------------------------------------------------------
    def advance(self, state: GrammarState | None, char: str) -> GrammarState | None:
        """The state after ``char``, or None when no valid value continues this way."""
        if not state:
            return None
        stacks: set[tuple[Any, ...]] = set()
        for stack in state:
            stacks.update(self._step(stack, char))
        return frozenset(stacks) if stacks else None

    def feed(self, state: GrammarState | None, text: str) -> GrammarState | None:
        """``advance`` over every character of ``text``."""
        for char in text:
            state = self.advance(state, char)
            if state is None:
                return None
        return state

    @staticmethod
    def is_complete(state: GrammarState | None) -> bool:
        """Whether the text so far is a whole valid value (nothing may follow it)."""
        return bool(state) and () in state  # type: ignore[operator]

    def _keys(self, alt: int, pos: int) -> list[tuple[int, str, str, int]]:
        """(index, name, name as JSON text, value node) of the keys an object may write next: those after
        ``pos`` up to and including the first required one."""
        props, required = self._alts[alt][1], self._alts[alt][2]
        keys = []
        for index in range(pos, len(props)):
            name, node = props[index]
            keys.append((index, name, json.dumps(name, ensure_ascii=False)[1:-1], node))
            if name in required:
                break
        return keys

    def _may_close_object(self, alt: int, pos: int) -> bool:
        props, required = self._alts[alt][1], self._alts[alt][2]
        return props is None or not any(name in required for name, _ in props[pos:])

    def _number_ok(self, alt: int, text: str, complete: bool) -> bool:
        kind, low, high, low_strict, high_strict = self._alts[alt]
        pattern = _INT_RE if kind == "integer" else _NUMBER_RE
        if complete:
            if not pattern.fullmatch(text):
                return False
            value = float(text)
            return not (
                (low is not None and (value < low or (low_strict and value == low)))
                or (high is not None and (value > high or (high_strict and value == high)))
            )
        if not any(pattern.fullmatch(text + tail) for tail in ("", "0")):
            return False
        whole = text if kind == "integer" else re.split(r"[.eE]", text)[0]
        if whole in ("", "-"):
            return whole == "" or low is None or low < 0
        if re.search(r"[eE]", text):
            return True  # an exponent can still move the value anywhere: checked when complete
        value = int(whole)
        if not whole.startswith("-") and high is not None and value > high:
            return False  # more digits only grow it
        return not (whole.startswith("-") and low is not None and value < low)  # more digits only shrink it

    def _value_starts(self, node: int, char: str, rest: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        out = []
        for alt in self._nodes[node]:
            kind = self._alts[alt][0]
            if kind == "object" and char == "{":
                out.append((*rest, ("O", alt, 0, "open", None)))
            elif kind == "array" and char == "[":
                out.append((*rest, ("A", alt, 0, "open")))
            elif kind == "string" and char == '"':
                out.append((*rest, ("S", alt, "" if self._alts[alt][1] is not None else None, 0, "")))
            elif kind in ("integer", "number") and (char == "-" or char.isdigit()) and char.isascii():
                if self._number_ok(alt, char, complete=False):
                    out.append((*rest, ("N", alt, char)))
            elif kind == "literal" and char == self._alts[alt][1][0]:
                text = self._alts[alt][1]
                out.append((*rest, ("L", text[1:])) if len(text) > 1 else rest)
        return out

    def _step(self, stack: tuple[Any, ...], char: str) -> list[tuple[Any, ...]]:
        if not stack:
            return []  # a complete value takes nothing more
        frame, rest = stack[-1], stack[:-1]
        kind = frame[0]
        if kind == "V":
            return self._value_starts(frame[1], char, rest)
        if kind == "L":
            if char != frame[1][0]:
                return []
            return [(*rest, ("L", frame[1][1:])) if len(frame[1]) > 1 else rest]
        if kind == "N":
            _, alt, text = frame
            if self._number_ok(alt, text + char, complete=False):
                return [(*rest, ("N", alt, text + char))]
            return self._step(rest, char) if rest and self._number_ok(alt, text, complete=True) else []
        if kind == "S":
            return self._string_step(frame, rest, char)
        if kind == "K":
            return self._key_step(frame, rest, char)
        if kind == "O":
            return self._object_step(frame, rest, char)
        return self._array_step(frame, rest, char)

    def _string_step(self, frame: tuple[Any, ...], rest: tuple[Any, ...], char: str) -> list[tuple[Any, ...]]:
        _, alt, written, count, escape = frame
        enum, min_length = self._alts[alt][1], self._alts[alt][2]
        if enum is not None:  # the value as JSON text must stay a prefix of an allowed one
            out = [rest] if char == '"' and written in enum else []
            if any(text.startswith(written + char) for text in enum):
                out.append((*rest, ("S", alt, written + char, 0, "")))
            return out
        counted = min(count + 1, min_length)
        if escape == "<":  # "</" is never written inside a string, so a value cannot close the call early
            if char == "/":
                return []
            escape = ""
        if escape == "\\":
            if char == "u":
                return [(*rest, ("S", alt, None, count, "u0"))]
            return [(*rest, ("S", alt, None, counted, ""))] if char in _ESCAPABLE else []
        if escape:
            if char not in _HEX_DIGITS:
                return []
            digits = int(escape[1:]) + 1
            return [(*rest, ("S", alt, None, counted, "") if digits == 4 else ("S", alt, None, count, f"u{digits}"))]
        if char == '"':
            return [rest] if count >= min_length else []
        if char == "\\":
            return [(*rest, ("S", alt, None, count, "\\"))]
        return [(*rest, ("S", alt, None, counted, "<" if char == "<" else ""))] if char >= " " else []

    def _key_step(self, frame: tuple[Any, ...], rest: tuple[Any, ...], char: str) -> list[tuple[Any, ...]]:
        _, alt, pos, written, escape = frame
        below = rest[:-1]  # ``rest`` ends with the object's own frame, replaced once the key is read
        if written is None:  # an object without declared properties: any key, then any value
            out = []
            for step in self._string_step(("S", self._generic_string, None, 0, escape), (), char):
                if step:
                    out.append((*rest, ("K", alt, pos, None, step[-1][4])))
                else:
                    out.append((*below, ("O", alt, pos, "colon", self.any_node)))
            return out
        keys = self._keys(alt, pos)
        if char == '"':
            return [(*below, ("O", alt, index + 1, "colon", node)) for index, _, text, node in keys if text == written]
        if any(text.startswith(written + char) for _, _, text, _ in keys):
            return [(*rest, ("K", alt, pos, written + char, ""))]
        return []

    @property
    def _generic_string(self) -> int:
        return self._nodes[self.any_node][2]

    def _object_step(self, frame: tuple[Any, ...], rest: tuple[Any, ...], char: str) -> list[tuple[Any, ...]]:
        _, alt, pos, mode, pending = frame
        generic = self._alts[alt][1] is None
        if mode in ("open", "after") and char == "}":
            return [rest] if self._may_close_object(alt, pos) else []
        if char == '"' and mode in ("open", "key"):
            if not generic and not self._keys(alt, pos):
                return []
            return [(*rest, frame, ("K", alt, pos, None if generic else "", ""))]
        if mode == "after" and char == ",":
            return [(*rest, ("O", alt, pos, "comma", None))] if generic or self._keys(alt, pos) else []
        if mode == "comma" and char == " ":
            return [(*rest, ("O", alt, pos, "key", None))]
        if mode == "colon" and char == ":":
            return [(*rest, ("O", alt, pos, "colon_space", pending))]
        if mode == "colon_space" and char == " ":
            return [(*rest, ("O", alt, pos, "after", None), ("V", pending))]
        return []

    def _array_step(self, frame: tuple[Any, ...], rest: tuple[Any, ...], char: str) -> list[tuple[Any, ...]]:
        _, alt, count, mode = frame
        _, items, min_items, max_items = self._alts[alt]
        if mode in ("open", "after") and char == "]":
            return [rest] if count >= min_items else []
        if mode == "open":
            if max_items is not None and max_items < 1:
                return []
            return self._value_starts(items, char, (*rest, ("A", alt, 1, "after")))
        if mode == "after" and char == ",":
            return [(*rest, ("A", alt, count, "comma"))] if max_items is None or count < max_items else []
        if mode == "comma" and char == " ":
            return [(*rest, ("A", alt, count + 1, "after"), ("V", items))]
        return []

    # -- the shortest completion ----------------------------------------------------------------------
    def minimal_value(self, node: int) -> str:
        """The shortest JSON text of a valid value of ``node`` (a guess for recursive schemas)."""
        if node not in self._min:
            self._min[node] = "null"  # recursion guard
            self._min[node] = min((self._minimal_alt(alt) for alt in self._nodes[node]), key=len)
        return self._min[node]

    def _minimal_alt(self, alt: int) -> str:
        spec = self._alts[alt]
        kind = spec[0]
        if kind == "object":
            return "{" + self._object_rest(alt, 0, need_key=False).lstrip(", ")
        if kind == "array":
            return "[" + ", ".join([self.minimal_value(spec[1])] * spec[2]) + "]"
        if kind == "string":
            return '"' + (min(spec[1], key=len) if spec[1] is not None else "x" * spec[2]) + '"'
        if kind == "literal":
            return spec[1]
        low, high = spec[1], spec[2]
        for value in (0, low, high):
            if value is not None:
                text = json.dumps(int(value)) if float(value).is_integer() else json.dumps(value)
                if self._number_ok(alt, text, complete=True):
                    return text
        for value in (low, high):
            if value is not None:
                for delta in (1, -1, 0.5, -0.5):
                    text = json.dumps(value + delta)
                    if self._number_ok(alt, text, complete=True):
                        return text
        return "0"

    def _object_rest(self, alt: int, pos: int, *, need_key: bool) -> str:
        """The shortest text that ends an object at ``pos`` (after a value, or after ``", "`` with
        ``need_key``): the required keys left, with their shortest values, then ``}``."""
        props, required = self._alts[alt][1], self._alts[alt][2]
        entries = []
        if props is not None:
            for index in range(pos, len(props)):
                name, node = props[index]
                if name in required or (need_key and not entries):
                    entries.append(f"{json.dumps(name, ensure_ascii=False)}: {self.minimal_value(node)}")
        elif need_key:
            entries.append('"x": null')
        text = ", ".join(entries)
        if need_key:
            return text + "}"
        return (", " + text if entries else "") + "}"

    def completion(self, state: GrammarState) -> str:
        """The shortest text that completes a valid value from ``state`` ('' when it is complete)."""
        return min((self._complete(stack) for stack in state), key=len)

    def _complete(self, stack: tuple[Any, ...]) -> str:
        out: list[str] = []
        frames = list(stack)
        while frames:
            frame = frames.pop()
            kind = frame[0]
            if kind == "V":
                out.append(self.minimal_value(frame[1]))
            elif kind == "L":
                out.append(frame[1])
            elif kind == "N":
                alt, text = frame[1], frame[2]
                out.append(next((t for t in ("", "0", "1", ".0") if self._number_ok(alt, text + t, complete=True)), ""))
            elif kind == "S":
                _, alt, written, count, escape = frame
                enum, min_length = self._alts[alt][1], self._alts[alt][2]
                if enum is not None:
                    out.append(min((t for t in enum if t.startswith(written)), key=len)[len(written) :] + '"')
                else:
                    pad = _escape_pad(escape)
                    out.append(pad + "x" * max(0, min_length - count - (1 if pad else 0)) + '"')
            elif kind == "K":
                _, alt, pos, written, escape = frame
                frames.pop()  # the object's own frame: the text below ends the object too
                if written is None:  # any key
                    pad = _escape_pad(escape)
                    out.append(pad + '": null' + self._object_rest(alt, 0, need_key=False))
                else:
                    index, _, text, node = min(
                        (key for key in self._keys(alt, pos) if key[2].startswith(written)), key=lambda k: len(k[2])
                    )
                    out.append(text[len(written) :] + '": ' + self.minimal_value(node))
                    out.append(self._object_rest(alt, index + 1, need_key=False))
            elif kind == "O":
                _, alt, pos, mode, pending = frame
                if mode == "colon":
                    out.append(": " + self.minimal_value(pending) + self._object_rest(alt, pos, need_key=False))
                elif mode == "colon_space":
                    out.append(" " + self.minimal_value(pending) + self._object_rest(alt, pos, need_key=False))
                elif mode == "comma":
                    out.append(" " + self._object_rest(alt, pos, need_key=True))
                elif mode == "key":
                    out.append(self._object_rest(alt, pos, need_key=True))
                elif mode == "open":
                    out.append(self._object_rest(alt, pos, need_key=False).lstrip(", "))
                else:
                    out.append(self._object_rest(alt, pos, need_key=False))
            else:  # "A"
                _, alt, count, mode = frame
                _, items, min_items, _ = self._alts[alt]
                value = self.minimal_value(items)
                if mode == "open":
                    out.append(", ".join([value] * min_items) + "]")
                elif mode == "comma":
                    out.append(" " + ", ".join([value] * max(1, min_items - count)) + "]")
                else:
                    out.append("".join(", " + value for _ in range(max(0, min_items - count))) + "]")
        return "".join(out)


class CopyArguments:
    """A ``decoding.LogitsProcessor``: free-text tool arguments stay substrings of ``sources`` (module doc)."""

    def __init__(
        self,
        tokenizer: SeedXTokenizer,
        sources: Sequence[str],
        *,
        keys: Collection[str] = FREE_TEXT_ARGUMENTS,
        fixed_values: Mapping[str, Sequence[str]] = FIXED_VALUES,
        json_structure: bool = True,
        tool_names: Collection[str] | None = None,
        schemas: Mapping[str, Mapping[str, Any] | None] | None = None,
        require_call: bool = False,
        single_call: bool = False,
        max_new_tokens: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.json_structure = json_structure or schemas is not None
        self._json_valid: dict[tuple[Any, str], torch.Tensor] = {}
        self.sources = [text for text in sources if text]
        self.fixed_values = {key: tuple(values) for key, values in fixed_values.items()}
        self.pieces = _piece_texts(tokenizer)
        names = "|".join(re.escape(key) for key in keys)
        # An open string value of one of ``keys``: `"phrase": "the red` (key, what is written so far).
        self._open_value = re.compile(r'"(' + names + r')"\s*:\s*"([^"\\]*)$') if keys else None
        if schemas is not None and tool_names is not None:
            schemas = {name: schemas.get(name) for name in tool_names}
        self.grammar = SchemaGrammar.tool_calls(schemas) if schemas is not None else None
        self.tool_names = tuple(tool_names if tool_names is not None else (schemas or ()))
        self.require_call = require_call
        self.single_call = single_call
        self.max_new_tokens = max_new_tokens
        # Text of each token for the call's grammar (non-ASCII bytes only with a schema grammar: string content).
        self._grammar_pieces = _grammar_piece_texts(tokenizer) if self.grammar is not None else self.pieces
        self._piece_index: dict[str, int] = {}
        for token_id, piece in enumerate(self._grammar_pieces):
            if piece and piece != BYTE_CONTENT:
                self._piece_index.setdefault(piece, token_id)
        self._needs: dict[tuple[Any, str], int] = {}
        self._longest_piece = max((len(piece) for piece in self._piece_index), default=1)
        # (key, value) -> (extend ids, close ids)
        self._options: dict[tuple[str, str], tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self._quote_ids = torch.tensor([i for i, piece in enumerate(self.pieces) if piece and '"' in piece])
        self._name_value = re.compile(r'^\s*\{\s*"name"\s*:\s*"([^"\\]*)$')  # the call's own "name" value
        self.constrained_steps = 0  # how many tokens the constraint restricted (for tests and reports)

    @classmethod
    def for_chat(
        cls, tokenizer: SeedXTokenizer, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]]
    ) -> CopyArguments:
        """The processor for a chat planner turn: quotes from the user messages (``copy_sources``), names from
        ``tools`` (OpenAI-style specs, ``{"function": {"name": ...}}``)."""
        sources = copy_sources([message.text for message in messages if message.role == "user"])
        return cls(tokenizer, sources, tool_names=[tool["function"]["name"] for tool in tools])

    @staticmethod
    def _open_call(text: str) -> str | None:
        """What follows ``<tool_call>`` when ``text`` ends inside a tool call, else None."""
        start = text.rfind(TOOL_CALL_OPEN)
        if start < 0 or TOOL_CALL_CLOSE in text[start:]:
            return None
        return text[start + len(TOOL_CALL_OPEN) :]

    def open_value(self, text: str) -> tuple[str, str] | None:
        """(key, value so far) when ``text`` ends inside a free-text argument of an open tool call."""
        body = self._open_call(text)
        match = None if body is None or self._open_value is None else self._open_value.search(body)
        return None if match is None else (match.group(1), match.group(2))

    def _spans(self, key: str, text: str) -> list[tuple[str, int]]:
        """(text, index) of every occurrence of ``text`` that starts at a word of a source, or at the start of
        one of ``key``'s fixed values."""
        found = [(fixed, 0) for fixed in self.fixed_values.get(key, ()) if fixed.startswith(text)]
        for source in self.sources:
            index = source.find(text)
            while index >= 0:
                if index == 0 or not source[index - 1].isalnum():
                    found.append((source, index))
                index = source.find(text, index + 1)
        return found

    def _may_end(self, key: str, value: str) -> bool:
        """Whether ``value`` is a whole-word span of a source, or a whole fixed value of ``key``."""
        if value in self.fixed_values.get(key, ()):
            return True
        if not value or value != value.strip():
            return False
        return any(
            index + len(value) == len(source) or not source[index + len(value)].isalnum()
            for source, index in self._spans(key, value)
            if source in self.sources
        )

    def options(self, key: str, value: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(ids that extend ``value`` within a span, ids that close it) for ``key``; None where empty. The key
        ``TOOL_NAME`` is the call's tool name: a prefix of a bound tool's name, closed only when whole."""
        if (key, value) not in self._options:
            extend, close = [], []
            for token_id, piece in enumerate(self.pieces):
                if not piece:
                    continue
                quote = piece.find('"')
                if key == TOOL_NAME:
                    if quote >= 0:
                        if value + piece[:quote] in self.tool_names:
                            close.append(token_id)
                    elif any(name.startswith(value + piece) for name in self.tool_names):
                        extend.append(token_id)
                elif quote >= 0:
                    if self._may_end(key, value + piece[:quote]):
                        close.append(token_id)
                elif (value or not piece[0].isspace()) and self._spans(key, value + piece):
                    extend.append(token_id)
            self._options[key, value] = (
                torch.tensor(extend, dtype=torch.long) if extend else None,
                torch.tensor(close, dtype=torch.long) if close else None,
            )
        return self._options[key, value]

    def _advance(self, state: Any, char: str) -> Any:
        return self.grammar.advance(state, char) if self.grammar is not None else json_prefix.advance(state, char)

    def _complete(self, state: Any) -> bool:
        return self.grammar.is_complete(state) if self.grammar is not None else json_prefix.is_complete(state)

    def _call_state(self, body: str) -> tuple[Any, str] | None:
        """(JSON state, text after the JSON) of an open call's ``body``; None when it is not a valid prefix.
        Whitespace may follow plain JSON; a schema grammar's layout has none."""
        state: Any = self.grammar.start if self.grammar is not None else json_prefix.START
        space = "" if self.grammar is not None else " \t\n\r"
        for index, char in enumerate(body):
            if self._complete(state) and char not in space:
                tail = body[index:]
                return (state, tail) if TOOL_CALL_CLOSE.startswith(tail) else None
            state = self._advance(state, char)
            if state is None:
                return None
        return state, ""

    def _piece_ok(self, state: Any, tail: str, piece: str) -> bool:
        """Whether ``piece`` keeps the call well-formed: valid JSON, then only (a prefix of) ``</tool_call>``."""
        current = state
        space = "" if self.grammar is not None else " \t\n\r"
        for index, char in enumerate(piece):
            if self._complete(current) and (tail or char not in space):
                rest = tail + piece[index:]
                return TOOL_CALL_CLOSE.startswith(rest) or rest.startswith(TOOL_CALL_CLOSE)
            current = self._advance(current, char)
            if current is None:
                return False
        return True

    def json_valid_ids(self, state: Any, tail: str) -> torch.Tensor:
        """Ids of the tokens that keep an open call well-formed from (``state``, ``tail``); cached per state."""
        key = (state, tail)
        if key not in self._json_valid:
            pieces = self._grammar_pieces
            valid = [i for i, piece in enumerate(pieces) if piece and self._piece_ok(state, tail, piece)]
            self._json_valid[key] = torch.tensor(valid, dtype=torch.long)
        return self._json_valid[key]

    # -- forced calls ---------------------------------------------------------------------------------
    def _opening_ids(self, generated: Sequence[int], text: str, done: int) -> torch.Tensor | None:
        """Tokens that go on opening the next call. ``text[done:]`` (after the last closed call, or the whole
        answer) must stay a prefix of ``<tool_call>``, or of ``"\n<tool_call>"`` for a further call; after a
        closed call EOS may also end the answer. Each candidate is checked by decoding."""
        rest = text[done:]
        openers = [o for o in ((TOOL_CALL_OPEN,) if done == 0 else (_NEXT_CALL, TOOL_CALL_OPEN)) if o.startswith(rest)]
        if not openers:
            return None  # the answer did not start under this processor: leave it alone
        keep = [self.tokenizer.eos_token_id] if done and not rest else []
        if done and not rest and not self._room_for_another_call(generated):
            return torch.tensor(keep, dtype=torch.long)
        for token_id, piece in enumerate(self._grammar_pieces):
            visible = piece.lstrip(" ") if piece and not text else piece
            if not visible or not any(
                o[len(rest) :].startswith(visible) or visible.startswith(o[len(rest) :]) for o in openers
            ):
                continue
            new = self.tokenizer.decode([*generated, token_id])
            if len(new) <= len(text) or not new.startswith(text):
                continue
            written = new[done:]
            if any(
                o.startswith(written) or (written.startswith(o) and self._call_state(written[len(o) :]) is not None)
                for o in openers
            ):
                keep.append(token_id)
        return self._opening_in_budget(generated, keep, done) if keep else None

    def _opening_in_budget(self, generated: Sequence[int], keep: list[int], done: int) -> torch.Tensor:
        """``keep`` without the openings after which the shortest whole call no longer fits the budget (the one
        that gets furthest when none does)."""
        if self.max_new_tokens is None or self.grammar is None:
            return torch.tensor(keep, dtype=torch.long)
        left = self.max_new_tokens - len(generated)
        eos = self.tokenizer.eos_token_id
        fitting, progress = [], {}
        for token_id in keep:
            if token_id == eos:
                fitting.append(token_id)
                continue
            written = self.tokenizer.decode([*generated, token_id])[done:].lstrip("\n")
            if TOOL_CALL_OPEN.startswith(written):
                need = self.token_estimate(TOOL_CALL_OPEN[len(written) :]) + self._need(self.grammar.start, "")
            else:
                call = self._call_state(written[len(TOOL_CALL_OPEN) :])
                need = self._need(*call) if call is not None else 0
            progress[token_id] = len(written)
            if need <= left - 2:
                fitting.append(token_id)
        if any(token_id != eos for token_id in fitting) or not progress:
            return torch.tensor(fitting, dtype=torch.long)
        return torch.tensor([max(progress, key=progress.__getitem__)], dtype=torch.long)

    def token_estimate(self, text: str) -> int:
        """Tokens ``text`` takes when written greedily with the longest matching pieces."""
        count, index = 0, 0
        while index < len(text):
            for size in range(min(self._longest_piece, len(text) - index), 0, -1):
                if text[index : index + size] in self._piece_index:
                    index += size
                    break
            else:
                index += 1  # no piece: a character written in bytes (counted as one token, a lower bound)
            count += 1
        return count

    def _need(self, state: Any, tail: str) -> int:
        """Tokens the shortest valid end of the call takes from (``state``, ``tail``), ``</tool_call>`` included."""
        key = (state, tail)
        if key not in self._needs:
            assert self.grammar is not None
            written = "" if self.grammar.is_complete(state) else self.grammar.completion(state)
            self._needs[key] = self.token_estimate(written + TOOL_CALL_CLOSE[len(tail) :])
        return self._needs[key]

    def _after(self, state: Any, tail: str, piece: str) -> tuple[Any, str] | None:
        """(state, tail) once ``piece`` is written (``tail`` is all of ``</tool_call>`` once the call is closed)."""
        assert self.grammar is not None
        for index, char in enumerate(piece):
            if self.grammar.is_complete(state):
                rest = tail + piece[index:]
                if TOOL_CALL_CLOSE.startswith(rest):
                    return state, rest
                return (state, TOOL_CALL_CLOSE) if rest.startswith(TOOL_CALL_CLOSE) else None
            state = self.grammar.advance(state, char)
            if state is None:
                return None
        return state, tail

    def _budget_ids(
        self, state: Any, tail: str, generated: Sequence[int], valid: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, bool]:
        """(ids, forced) that keep the open call completable within ``max_new_tokens``: None far from the end of
        the budget; near it (``_BUDGET_ZONE``), the valid tokens after which the shortest end still fits with a
        token to spare; at the end, (the one token that writes the shortest end, True)."""
        if self.max_new_tokens is None or self.grammar is None:
            return None, False
        left = self.max_new_tokens - len(generated)
        need = self._need(state, tail)
        if left > need + _BUDGET_ZONE:
            return None, False
        if left > need + 1 and valid is not None:
            keep = []
            for token_id in valid.tolist():
                after = self._after(state, tail, self._grammar_pieces[token_id] or "")
                if after is not None and self._need(*after) <= left - 2:
                    keep.append(token_id)
            if keep:
                return torch.tensor(keep, dtype=torch.long), False
        written = "" if self.grammar.is_complete(state) else self.grammar.completion(state)
        rest = written + TOOL_CALL_CLOSE[len(tail) :]
        size = min(self._longest_piece, len(rest))
        while size > 0 and rest[:size] not in self._piece_index:
            size -= 1
        return (torch.tensor([self._piece_index[rest[:size]]], dtype=torch.long) if size else None), True

    def _room_for_another_call(self, generated: Sequence[int]) -> bool:
        """Whether the budget left fits a further call (its opening written a character per token)."""
        if self.max_new_tokens is None or self.grammar is None:
            return True
        left = self.max_new_tokens - len(generated)
        return left >= len(_NEXT_CALL) + self._need(self.grammar.start, "") + 2

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        text = self.tokenizer.decode(generated)
        last_open = text.rfind(TOOL_CALL_OPEN)
        closed_at = text.find(TOOL_CALL_CLOSE, last_open) if last_open >= 0 else -1
        if closed_at >= 0 and self.single_call:
            return self._restrict(logits, torch.tensor([self.tokenizer.eos_token_id]))  # the one call is written
        if self.require_call and (last_open < 0 or closed_at >= 0):  # a forced answer is calls only
            done = closed_at + len(TOOL_CALL_CLOSE) if closed_at >= 0 else 0
            return self._restrict(logits, self._opening_ids(generated, text, done))
        body = self._open_call(text)
        if body is None:
            return logits  # not inside a tool call
        valid: torch.Tensor | None = None
        call = self._call_state(body) if self.json_structure else None
        if call is not None:
            valid = self.json_valid_ids(*call)
            if not len(valid):
                valid = None
            budgeted, forced = self._budget_ids(*call, generated, valid)
            if forced:
                return self._restrict(logits, budgeted)
            valid = budgeted if budgeted is not None else valid
        keep = valid
        name = self._name_value.match(body) if self.tool_names else None
        if name is not None:
            open_value: tuple[str, str] | None = (TOOL_NAME, name.group(1))
        else:
            match = None if self._open_value is None else self._open_value.search(body)
            open_value = None if match is None else (match.group(1), match.group(2))
        if open_value is not None:  # with nothing to quote, options() is empty and only ``valid`` applies
            extend, close = (self._within(part, valid) for part in self.options(*open_value))
            if extend is not None and close is not None:  # the model's own choice: end the string or go on
                probs = torch.softmax(logits.float(), dim=-1)
                closing_probability = float(probs[self._quote_ids.to(logits.device)].sum())
                keep = close if closing_probability >= 1.0 - closing_probability else extend
            elif extend is not None or close is not None:
                keep = extend if extend is not None else close
        return self._restrict(logits, keep)

    def _restrict(self, logits: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """``logits`` with every token outside ``keep`` at -inf (unchanged when ``keep`` is None)."""
        if keep is None:
            return logits
        self.constrained_steps += 1
        index = keep.to(logits.device)
        restricted = torch.full_like(logits, float("-inf"))
        restricted[index] = logits[index]
        return restricted

    @staticmethod
    def _within(ids: torch.Tensor | None, valid: torch.Tensor | None) -> torch.Tensor | None:
        """``ids`` that are also in ``valid`` (all of them when ``valid`` is None); None when none are left."""
        if ids is None or valid is None:
            return ids
        kept = ids[torch.isin(ids, valid)]
        return kept if len(kept) else None

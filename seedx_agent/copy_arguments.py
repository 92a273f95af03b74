"""Copy-constrained tool arguments: free-text arguments of a tool call may only quote the user's words.

SEED-X's tool requests repeat the user's own words: "Find the red circle in #1." becomes
``{"image_id": "#1", "phrase": "the red circle"}``, and an edit instruction, a generation prompt or a recall
query is lifted from the request the same way (that is how ``training.tool_dialogs`` writes them). A small
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
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from seedx_agent import json_prefix
from seedx_agent.tokenizer import SeedXTokenizer
from seedx_agent.tool_protocol import DESCRIBE_QUESTION, SYSTEM_CLOSE, TOOL_CALL_CLOSE, TOOL_CALL_OPEN

if TYPE_CHECKING:
    from seedx_agent.model import ChatMessage

__all__ = ["FIXED_VALUES", "FREE_TEXT_ARGUMENTS", "TOOL_NAME", "CopyArguments", "copy_sources"]

# Argument names of the SEED-X tools whose values quote the request (tools/seedx_tools.py, tool_dialogs).
FREE_TEXT_ARGUMENTS: tuple[str, ...] = ("phrase", "instruction", "prompt", "query", "question")
# Values an argument may take besides quotes: a description request asks the protocol's fixed question.
FIXED_VALUES: dict[str, tuple[str, ...]] = {"question": (DESCRIBE_QUESTION,)}
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
    ) -> None:
        self.tokenizer = tokenizer
        self.json_structure = json_structure
        self._json_valid: dict[tuple[json_prefix.JsonState, str], torch.Tensor] = {}
        self.sources = [text for text in sources if text]
        self.fixed_values = {key: tuple(values) for key, values in fixed_values.items()}
        self.pieces = _piece_texts(tokenizer)
        names = "|".join(re.escape(key) for key in keys)
        # An open string value of one of ``keys``: `"phrase": "the red` (key, what is written so far).
        self._open_value = re.compile(r'"(' + names + r')"\s*:\s*"([^"\\]*)$')
        # (key, value) -> (extend ids, close ids)
        self._options: dict[tuple[str, str], tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self._quote_ids = torch.tensor([i for i, piece in enumerate(self.pieces) if piece and '"' in piece])
        self.tool_names = tuple(tool_names or ())
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
        match = None if body is None else self._open_value.search(body)
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

    def _call_state(self, body: str) -> tuple[json_prefix.JsonState, str] | None:
        """(JSON state, text after the JSON) of an open call's ``body``; None when it is not a valid prefix."""
        state: json_prefix.JsonState | None = json_prefix.START
        for index, char in enumerate(body):
            if json_prefix.is_complete(state) and char not in " \t\n\r":
                tail = body[index:]
                return (state, tail) if TOOL_CALL_CLOSE.startswith(tail) else None  # type: ignore[return-value]
            state = json_prefix.advance(state, char)
            if state is None:
                return None
        return state, ""  # type: ignore[return-value]

    def _piece_ok(self, state: json_prefix.JsonState, tail: str, piece: str) -> bool:
        """Whether ``piece`` keeps the call well-formed: valid JSON, then only (a prefix of) ``</tool_call>``."""
        current: json_prefix.JsonState | None = state
        for index, char in enumerate(piece):
            if json_prefix.is_complete(current) and (tail or char not in " \t\n\r"):
                rest = tail + piece[index:]
                return TOOL_CALL_CLOSE.startswith(rest) or rest.startswith(TOOL_CALL_CLOSE)
            current = json_prefix.advance(current, char)
            if current is None:
                return False
        return True

    def json_valid_ids(self, state: json_prefix.JsonState, tail: str) -> torch.Tensor:
        """Ids of the tokens that keep an open call well-formed from (``state``, ``tail``); cached per state."""
        key = (state, tail)
        if key not in self._json_valid:
            valid = [i for i, piece in enumerate(self.pieces) if piece and self._piece_ok(state, tail, piece)]
            self._json_valid[key] = torch.tensor(valid, dtype=torch.long)
        return self._json_valid[key]

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        body = self._open_call(self.tokenizer.decode(generated))
        if body is None:
            return logits  # not inside a tool call
        valid: torch.Tensor | None = None
        if self.json_structure:
            call = self._call_state(body)
            if call is not None:
                valid = self.json_valid_ids(*call)
                if not len(valid):
                    valid = None
        keep = valid
        name = self._name_value.match(body) if self.tool_names else None
        if name is not None:
            open_value: tuple[str, str] | None = (TOOL_NAME, name.group(1))
        else:
            match = self._open_value.search(body)
            open_value = None if match is None else (match.group(1), match.group(2))
        if open_value is not None:  # with nothing to quote, options() is empty and only ``valid`` applies
            extend, close = (self._within(part, valid) for part in self.options(*open_value))
            if extend is not None and close is not None:  # the model's own choice: end the string or go on
                probs = torch.softmax(logits.float(), dim=-1)
                closing = float(probs[self._quote_ids.to(logits.device)].sum())
                keep = close if closing >= 1.0 - closing else extend
            elif extend is not None or close is not None:
                keep = extend if extend is not None else close
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

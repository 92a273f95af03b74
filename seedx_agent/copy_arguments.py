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
it starts at a word, and it may end (a token with the closing quote) only after a whole word. The model
keeps the decisions: which tool, which argument, where the span starts, and whether it goes on. At each
step the probability it gives to closing the string is weighed against the probability of any other token.
If closing is less likely, it continues with its most likely token that extends the span; otherwise it
closes. Everything outside those strings is untouched. This is constrained decoding in the sense of JSON
schema or grammar constraints, applied to the agent protocol. It is not part of the official SEED-X.
``ChatSeedX(copy_arguments=...)`` turns it on or off.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

import torch

from seedx_agent.tokenizer import SeedXTokenizer
from seedx_agent.tool_protocol import SYSTEM_CLOSE, TOOL_CALL_CLOSE, TOOL_CALL_OPEN

__all__ = ["FREE_TEXT_ARGUMENTS", "CopyArguments", "copy_sources"]

# Argument names of the SEED-X tools whose values quote the request (tools/seedx_tools.py, tool_dialogs).
# Not "question": a description request asks the fixed ``world.CAPTION_QUESTION``, not the user's words.
FREE_TEXT_ARGUMENTS: tuple[str, ...] = ("phrase", "instruction", "prompt", "query")
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


def _piece_texts(tokenizer: SeedXTokenizer) -> list[str | None]:
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
    return texts


class CopyArguments:
    """A ``decoding.LogitsProcessor``: free-text tool arguments stay substrings of ``sources`` (module doc)."""

    def __init__(
        self,
        tokenizer: SeedXTokenizer,
        sources: Sequence[str],
        *,
        keys: Collection[str] = FREE_TEXT_ARGUMENTS,
    ) -> None:
        self.tokenizer = tokenizer
        self.sources = [text for text in sources if text]
        self.pieces = _piece_texts(tokenizer)
        names = "|".join(re.escape(key) for key in keys)
        # An open string value of one of ``keys``: `"phrase": "the red` (group 1 = what is written so far).
        self._open_value = re.compile(r'"(?:' + names + r')"\s*:\s*"([^"\\]*)$')
        self._options: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}  # value -> (extend, close)
        self._quote_ids = torch.tensor([i for i, piece in enumerate(self.pieces) if piece and '"' in piece])
        self.constrained_steps = 0  # how many tokens the constraint restricted (for tests and reports)

    def open_value(self, text: str) -> str | None:
        """The value being written when ``text`` ends inside a free-text argument of an open tool call."""
        start = text.rfind(TOOL_CALL_OPEN)
        if start < 0 or TOOL_CALL_CLOSE in text[start:]:
            return None
        match = self._open_value.search(text[start:])
        return None if match is None else match.group(1)

    def _spans(self, text: str) -> list[tuple[str, int]]:
        """(source, index) of every occurrence of ``text`` that starts at a word in a source."""
        found = []
        for source in self.sources:
            index = source.find(text)
            while index >= 0:
                if index == 0 or not source[index - 1].isalnum():
                    found.append((source, index))
                index = source.find(text, index + 1)
        return found

    def _may_end(self, value: str) -> bool:
        """Whether ``value`` is a whole-word span of a source (non-empty, no edge spaces)."""
        if not value or value != value.strip():
            return False
        return any(
            index + len(value) == len(source) or not source[index + len(value)].isalnum()
            for source, index in self._spans(value)
        )

    def options(self, value: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(ids that extend ``value`` within a span, ids that close it) after ``value``; None where empty."""
        if value not in self._options:
            extend, close = [], []
            for token_id, piece in enumerate(self.pieces):
                if not piece:
                    continue
                quote = piece.find('"')
                if quote >= 0:
                    if self._may_end(value + piece[:quote]):
                        close.append(token_id)
                elif (value or not piece[0].isspace()) and self._spans(value + piece):
                    extend.append(token_id)
            self._options[value] = (
                torch.tensor(extend, dtype=torch.long) if extend else None,
                torch.tensor(close, dtype=torch.long) if close else None,
            )
        return self._options[value]

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        if not self.sources:
            return logits
        value = self.open_value(self.tokenizer.decode(generated))
        if value is None:
            return logits
        extend, close = self.options(value)
        if extend is None and close is None:  # the value already left every source: nothing sensible to force
            return logits
        if extend is None:
            keep = close
        elif close is None:
            keep = extend
        else:  # the model's own choice between ending the string and going on
            probs = torch.softmax(logits.float(), dim=-1)
            closing = float(probs[self._quote_ids.to(logits.device)].sum())
            keep = close if closing >= 1.0 - closing else extend
        self.constrained_steps += 1
        index = keep.to(logits.device)  # type: ignore[union-attr]
        restricted = torch.full_like(logits, float("-inf"))
        restricted[index] = logits[index]
        return restricted

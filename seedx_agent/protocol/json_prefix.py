"""An incremental JSON prefix checker: is this text the beginning of some JSON value?

Used to keep a tool call that a model is writing well-formed (``copy_arguments.CopyArguments``): for each
candidate token, we ask whether the call's text plus the token's text is still a prefix of valid JSON.
States are small immutable tuples, so the state after the text so far is computed once per step and every
candidate continues from it for only its own few characters.

The grammar is RFC 8259's (objects, arrays, strings with escapes, numbers, ``true``/``false``/``null``), with
one relaxation: a number may stop at any point of a valid number's prefix (``-`` or ``1.``), because more
digits can always follow.
"""

from __future__ import annotations

__all__ = ["DONE", "START", "JsonState", "advance", "feed", "is_complete"]

# A state: (stack, mode, detail). ``stack`` holds "{" / "[" for each open container; ``mode`` says what may
# come next; ``detail`` carries the rest of a literal or the part of a number written so far.
JsonState = tuple[tuple[str, ...], str, str]

START: JsonState = ((), "value", "")
DONE = "done"
_WHITESPACE = " \t\n\r"
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
_ESCAPES = set('"\\/bfnrtu')
_HEX = set("0123456789abcdefABCDEF")


def _after_value(stack: tuple[str, ...]) -> JsonState:
    return (stack, "after_value", "") if stack else (stack, DONE, "")


def _number_may_continue(number: str, char: str) -> bool:
    """Whether ``number + char`` is still a prefix of a JSON number."""
    text = number + char
    state = "sign"  # sign -> int0/int -> frac0 -> frac -> exp0 -> expsign -> exp
    for c in text:
        if state == "sign":
            state = "sign2" if c == "-" else ("int0" if c == "0" else ("int" if c.isdigit() else "bad"))
        elif state == "sign2":
            state = "int0" if c == "0" else ("int" if c.isdigit() else "bad")
        elif state in ("int0", "int"):
            if c == ".":
                state = "frac0"
            elif c in "eE":
                state = "exp0"
            elif c.isdigit() and state == "int":
                state = "int"
            else:
                state = "bad"
        elif state in ("frac0", "frac"):
            if c.isdigit():
                state = "frac"
            elif c in "eE" and state == "frac":
                state = "exp0"
            else:
                state = "bad"
        elif state == "exp0":
            state = "expsign" if c in "+-" else ("exp" if c.isdigit() else "bad")
        elif state in ("expsign", "exp"):
            state = "exp" if c.isdigit() else "bad"
        if state == "bad":
            return False
    return True


def _number_complete(number: str) -> bool:
    return bool(number) and number[-1].isdigit()


def advance(state: JsonState | None, char: str) -> JsonState | None:
    """The state after ``char``, or None when ``char`` cannot continue valid JSON from ``state``."""
    if state is None:
        return None
    stack, mode, detail = state
    if mode == "string" or mode == "key":
        if char == "\\":
            return (stack, mode + "_escape", "")
        if char == '"':
            return (stack, "colon", "") if mode == "key" else _after_value(stack)
        return state if char >= " " else None
    if mode in ("string_escape", "key_escape"):
        base = mode.split("_")[0]
        if char == "u":
            return (stack, base + "_hex", "")
        return (stack, base, "") if char in _ESCAPES else None
    if mode in ("string_hex", "key_hex"):
        if char not in _HEX:
            return None
        base = mode.split("_")[0]
        return (stack, base, "") if len(detail) == 3 else (stack, mode, detail + char)
    if mode == "number":
        if _number_may_continue(detail, char):
            return (stack, mode, detail + char)
        if not _number_complete(detail):
            return None
        return advance(_after_value(stack), char)
    if mode == "literal":
        if not detail or char != detail[0]:
            return None
        return (stack, mode, detail[1:]) if len(detail) > 1 else _after_value(stack)
    if char in _WHITESPACE:
        return state
    if mode in ("value", "value_or_end"):
        if mode == "value_or_end" and char == "]":
            return _after_value(stack[:-1])
        if char == "{":
            return ((*stack, "{"), "key_or_end", "")
        if char == "[":
            return ((*stack, "["), "value_or_end", "")
        if char == '"':
            return (stack, "string", "")
        if char in _LITERALS:
            return (stack, "literal", _LITERALS[char])
        if char == "-" or char.isdigit():
            return (stack, "number", char)
        return None
    if mode in ("key_or_end", "key"):
        if mode == "key_or_end" and char == "}":
            return _after_value(stack[:-1])
        return (stack, "key", "") if char == '"' else None
    if mode == "next_key":
        return (stack, "key", "") if char == '"' else None
    if mode == "colon":
        return (stack, "value", "") if char == ":" else None
    if mode == "after_value":
        top = stack[-1]
        if char == ",":
            return (stack, "next_key", "") if top == "{" else (stack, "value", "")
        if (char == "}" and top == "{") or (char == "]" and top == "["):
            return _after_value(stack[:-1])
        return None
    return None  # DONE: only whitespace (handled above) may follow


def feed(state: JsonState | None, text: str) -> JsonState | None:
    """``advance`` over every character of ``text``."""
    for char in text:
        state = advance(state, char)
        if state is None:
            return None
    return state


def is_complete(state: JsonState | None) -> bool:
    """Whether the text fed so far is one whole JSON value (trailing whitespace allowed)."""
    return state is not None and state[1] == DONE

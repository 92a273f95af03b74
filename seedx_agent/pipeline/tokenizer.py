"""The SEED-X tokenizer: LLaMA SentencePiece + 330 added tokens, with transformers-4.30.2 semantics.

SEED-X was trained with the slow ``LlamaTokenizer`` of transformers 4.30.2. Current transformers
tokenizes the same prompts differently (an extra ``▁`` before added tokens, FIELD-NOTES), which would
shift every image mask. We reproduce the old behaviour directly on ``sentencepiece``:

1. split the text at every added token (longest match first);
2. strip whitespace on both sides of each added token (4.30 did this for added tokens that are plain
   strings, which the SEED-X ones are);
3. encode each remaining non-empty chunk with SentencePiece on its own (its own dummy ``▁`` prefix).

Decoding joins text chunks and added tokens with single spaces, as 4.30's default
``spaces_between_special_tokens=True`` did.

Every encode entry point checks its text with ``prompts.check_text`` first, so a lone surrogate is an
``InvalidPromptError`` naming its position, never pybind11's ``RuntimeError`` from inside SentencePiece.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from seedx_agent.errors import CheckpointError, InvalidPromptError
from seedx_agent.pipeline.prompts import check_text
from seedx_agent.pipeline.tokens import ADDED_TOKENS, InputSlot, Special

__all__ = ["TINY_TOKENIZER_DIR", "SeedXTokenizer", "write_added_tokens"]

TINY_TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny_tokenizer"


class SeedXTokenizer:
    """SentencePiece base vocabulary plus the SEED-X added tokens, ids read from ``added_tokens.json``."""

    def __init__(self, sp_model: spm.SentencePieceProcessor, added_tokens: dict[str, int]) -> None:
        self.sp = sp_model
        base = sp_model.get_piece_size()
        ids = sorted(added_tokens.values())
        if ids and (ids[0] < base or len(set(ids)) != len(ids)):
            raise CheckpointError(
                f"added_tokens.json ids must be unique and >= the SentencePiece size {base}; got {ids[:3]}..."
            )
        if ids and ids != list(range(base, base + len(ids))):
            raise CheckpointError("added_tokens.json ids must be contiguous after the SentencePiece vocabulary")
        self.added_tokens = dict(added_tokens)
        self._id_to_added = {v: k for k, v in added_tokens.items()}
        # Longest first so that e.g. "</img>" is not split as "<" + "/img>"; all are literal strings.
        pattern = "|".join(re.escape(t) for t in sorted(added_tokens, key=len, reverse=True))
        self._split_re = re.compile(f"({pattern})") if pattern else None

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str | Path) -> SeedXTokenizer:
        """Load ``tokenizer.model`` + ``added_tokens.json`` (the official tokenizer folder layout)."""
        folder = Path(folder)
        model_file, added_file = folder / "tokenizer.model", folder / "added_tokens.json"
        for path in (model_file, added_file):
            if not path.is_file():
                raise CheckpointError(
                    f"tokenizer file {str(path)!r} is missing; expected the official tokenizer folder"
                )
        try:
            added = json.loads(added_file.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{str(added_file)!r} is not valid JSON: {exc}") from exc
        missing = [t for t in ADDED_TOKENS if t not in added]
        if missing:
            raise CheckpointError(f"{str(added_file)!r} lacks {len(missing)} SEED-X tokens, e.g. {missing[:3]}")
        sp_model = spm.SentencePieceProcessor()
        try:
            sp_model.Load(str(model_file))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read SentencePiece model {str(model_file)!r}: {exc}") from exc
        return cls(sp_model, {k: int(v) for k, v in added.items()})

    @classmethod
    def tiny(cls) -> SeedXTokenizer:
        """The small bundled tokenizer used by ``tiny-random`` (see scripts/build_tiny_tokenizer.py)."""
        return cls.from_folder(TINY_TOKENIZER_DIR)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer.model").write_bytes(self.sp.serialized_model_proto())
        (folder / "added_tokens.json").write_text(json.dumps(self.added_tokens, indent=2, sort_keys=True) + "\n")
        _write_side_files(folder)

    # -- vocabulary ------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() + len(self.added_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def bos_token_id(self) -> int:
        return int(self.sp.bos_id())

    @property
    def eos_token_id(self) -> int:
        return int(self.sp.eos_id())

    @property
    def pad_token_id(self) -> int:
        return int(self.sp.unk_id())  # SEED-X pads with <unk> (id 0)

    def token_to_id(self, token: str) -> int | None:
        if token in self.added_tokens:
            return self.added_tokens[token]
        piece_id = self.sp.piece_to_id(token)
        return piece_id if self.sp.id_to_piece(piece_id) == token else None

    def id_to_token(self, token_id: int) -> str:
        if token_id in self._id_to_added:
            return self._id_to_added[token_id]
        return self.sp.id_to_piece(int(token_id))

    # -- encode / decode -------------------------------------------------------------------------
    def split(self, text: str) -> list[str]:
        """Chunks after splitting on added tokens and 4.30-style whitespace stripping."""
        chunks = self._split_re.split(text) if self._split_re else [text]
        for i, chunk in enumerate(chunks):
            if chunk in self.added_tokens:
                if i + 1 < len(chunks) and chunks[i + 1] not in self.added_tokens:
                    chunks[i + 1] = chunks[i + 1].lstrip()
                if i > 0 and chunks[i - 1] not in self.added_tokens:
                    chunks[i - 1] = chunks[i - 1].rstrip()
        return [c for c in chunks if c]

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Ids of ``text``; ``add_bos`` prepends ``<s>`` as the official ``[1] + encode(...)``."""
        _check_str(text)
        ids = [self.bos_token_id] if add_bos else []
        for chunk in self.split(text):
            if chunk in self.added_tokens:
                ids.append(self.added_tokens[chunk])
            else:
                ids.extend(self.sp.encode(chunk))
        return ids

    def encode_segments(self, segments: Sequence[str], *, add_bos: bool = False) -> list[int]:
        return self.encode_segments_with_mask(segments, add_bos=add_bos)[0]

    def encode_segments_with_mask(
        self, segments: Sequence[str], *, add_bos: bool = False
    ) -> tuple[list[int], list[bool]]:
        """Encode a prompt given as text segments and ``Special`` tokens.

        Only ``Special`` segments become added tokens; added-token strings inside text stay plain text,
        so user text cannot inject ``<img>`` or ``<loc-5>``. For text without such strings the ids equal
        ``encode("".join(segments))``: adjacent text segments are merged and whitespace next to a special
        token is stripped exactly as in ``split``.
        """
        merged: list[str] = []
        offset = 0  # position of ``seg`` in the prompt's text, for the error message
        for seg in segments:
            _check_str(seg, offset)
            offset += len(seg)
            if isinstance(seg, Special):
                if seg not in self.added_tokens:
                    raise KeyError(f"{seg!r} is not an added token of this tokenizer")
                merged.append(seg)
            elif merged and not isinstance(merged[-1], Special):
                merged[-1] = merged[-1] + seg
            else:
                merged.append(seg)
        ids = [self.bos_token_id] if add_bos else []
        mask = [False] * len(ids)  # True where an input image feature goes (ids_cmp_mask)
        for i, seg in enumerate(merged):
            if isinstance(seg, Special):
                ids.append(self.added_tokens[seg])
                mask.append(isinstance(seg, InputSlot))
                continue
            if i > 0:
                seg = seg.lstrip()
            if i + 1 < len(merged):
                seg = seg.rstrip()
            if seg:
                pieces = self.sp.encode(seg)
                ids.extend(pieces)
                mask.extend([False] * len(pieces))
        return ids, mask

    def encode_plain(self, text: str) -> list[int]:
        """Ids of ``text`` with added-token strings treated as ordinary text.

        Used for untrusted user text so that a prompt containing ``<img>`` or ``<loc-5>`` cannot
        inject image or box tokens (they become ordinary characters/pieces).
        """
        _check_str(text)
        return list(self.sp.encode(text)) if text.strip() else []

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        pieces: list[str] = []
        run: list[int] = []
        specials = {self.bos_token_id, self.eos_token_id, self.pad_token_id}
        for token_id in (int(i) for i in ids):
            if skip_special_tokens and (token_id in specials or token_id in self._id_to_added):
                continue
            if token_id in self._id_to_added:
                if run:
                    pieces.append(self.sp.decode(run))
                    run = []
                pieces.append(self._id_to_added[token_id])
            else:
                run.append(token_id)
        if run:
            pieces.append(self.sp.decode(run))
        return " ".join(p for p in pieces if p)

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        out = []
        for token in tokens:
            token_id = self.token_to_id(token)
            if token_id is None:
                raise KeyError(f"unknown token {token!r}")
            out.append(token_id)
        return out


def _check_str(text: object, offset: int = 0) -> None:
    """Refuse what SentencePiece cannot encode (non-strings, lone surrogates) with an ``InvalidPromptError``."""
    if not isinstance(text, str):
        raise InvalidPromptError(f"the tokenizer encodes strings; got {type(text).__name__} {text!r:.80}")
    check_text(text, "the prompt text", offset=offset)


def _write_side_files(folder: Path) -> None:
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, indent=2)
        + "\n"
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False},
            indent=2,
        )
        + "\n"
    )


def write_added_tokens(folder: str | Path, *, base_vocab_size: int) -> dict[str, int]:
    """Write ``added_tokens.json`` (and the side files) for a new tokenizer, ids after the base vocab."""
    folder = Path(folder)
    added = {token: base_vocab_size + i for i, token in enumerate(ADDED_TOKENS)}
    (folder / "added_tokens.json").write_text(json.dumps(added, indent=2, sort_keys=True) + "\n")
    _write_side_files(folder)
    return added

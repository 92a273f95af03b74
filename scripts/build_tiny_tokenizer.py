"""Build the small SentencePiece model bundled for the ``tiny-random`` preset and tests.

It plays the role of LLaMA-2's ``tokenizer.model`` at miniature size: BPE with byte fallback (so any
text encodes without ``<unk>``), ids 0/1/2 = ``<unk>``/``<s>``/``</s>`` as in LLaMA.
Run: ``python scripts/build_tiny_tokenizer.py`` (deterministic; writes seedx_agent/assets/tiny_tokenizer).
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import sentencepiece as spm

from seedx_agent.config import TINY_VOCAB_BASE
from seedx_agent.pipeline.tokenizer import write_added_tokens

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "brown", "pink"]
SHAPES = ["circle", "square", "triangle", "star", "car", "dog", "cat", "house", "tree", "person"]
PLACES = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
SENTENCES = [
    "Generate an image: {c}",
    "Please show me a picture of {c}",
    "Here is a picture.",
    "Describe the image in detail.",
    "What color is the {s}?",
    "How many objects are there?",
    "Where is the {s}? Show me the location.",
    "Make the {s} {col}.",
    "Move the {s} to the {p}.",
    "Remove the {s}.",
    "Add a {col} {s} at the {p}.",
    "Question: what is in the picture?\nAnswer: a {col} {s}",
    "Once upon a time a small {col} {s} lived at the {p} of the world.",
    "The slide title is about {s} and {col} things.",
]


def corpus() -> str:
    lines = []
    for col, s, p in itertools.product(COLOURS, SHAPES, PLACES):
        c = f"a {col} {s} at the {p}"
        for template in SENTENCES:
            lines.append(template.format(c=c, s=s, col=col, p=p))
    return "\n".join(lines)


DEFAULT_OUT = Path(__file__).resolve().parents[1] / "seedx_agent/assets/tiny_tokenizer"


def main(out: Path = DEFAULT_OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus().splitlines()),
        model_writer=model,
        vocab_size=TINY_VOCAB_BASE,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        character_coverage=1.0,
        normalization_rule_name="identity",  # as LLaMA-2: no NFKC, keep whitespace runs, split digits
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    write_added_tokens(out, base_vocab_size=TINY_VOCAB_BASE)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

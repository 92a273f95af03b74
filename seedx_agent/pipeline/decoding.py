"""KV-cached decoding written for SEED-X: text, boxes and image blocks (reference §6.1, §6.2, §8).

Once ``<img>`` is produced, the next ``num_image_tokens`` placeholders and ``</img>`` are fixed by
the official forcing rule, so we feed all placeholders in ONE forward pass and keep their
final-layer (post-norm) hidden states as the image features. The official loop needs one decoding
step per placeholder and keeps every layer's hidden states; the result is the same (pinned by a test).

In the official comparison mode (``ComparisonSwitches(placeholder_mask="official_zero")``) stray placeholders
can win (their logits are 0.0, not -inf), and the official processor then forces the rest of the run from that
placeholder on (``<img_k>`` -> ``<img_k+1>`` ... ``</img>``); we do the same (:func:`forced_tokens`). A run
that starts at ``<img_00000>`` has the same 64 input placeholders as a block opened by ``<img>``, so its
hidden states are kept as image features exactly as the official ``generate`` does. A run that starts at a
later placeholder yields no features: the official code would take the 64 states before ``</img>``,
mixing in the states of the text tokens that preceded the run (documented deviation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from seedx_agent.pipeline.lvlm import SeedXLVLM
from seedx_agent.pipeline.tokens import TokenIds

__all__ = [
    "ComparisonSwitches",
    "DecodeOutput",
    "GenerationOptions",
    "LogitsProcessor",
    "apply_placeholder_mask",
    "decode",
    "forced_tokens",
    "sample_next_token",
]

logger = logging.getLogger(__name__)

# (ids generated so far, (vocab,) float logits of the next token) -> logits to pick from
LogitsProcessor = Callable[[Sequence[int], torch.Tensor], torch.Tensor]


class ComparisonSwitches(BaseModel):
    """Switches back to the official algorithm, one at a time, for comparisons and checks (benchmarks, tests).

    Our defaults give the official answers faster, except ``placeholder_mask`` (see its comment);
    ``ComparisonSwitches.official()`` turns all three to the official code's behaviour.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # "neg_inf": placeholders/</img> can never be emitted outside an image block (our default);
    # "official_zero": their logits are set to 0.0 as in the official processor (§6.1), and a placeholder that
    # wins anyway forces the rest of its run up to </img>, as the official processor does.
    placeholder_mask: Literal["neg_inf", "official_zero"] = "neg_inf"
    # "one_forward" (fast) or "per_token" (the official one-step-per-placeholder path).
    image_block_mode: Literal["one_forward", "per_token"] = "one_forward"
    # One-token steps: "lean" walks the LLaMA layers directly (bit-identical, ~1 ms/step less overhead;
    # seedx_agent.speed.lean_step), "transformers" calls LlamaModel.forward as the official code does.
    decode_step: Literal["lean", "transformers"] = "lean"

    @classmethod
    def official(cls) -> ComparisonSwitches:
        """Every switch on the official code's behaviour."""
        return cls(placeholder_mask="official_zero", image_block_mode="per_token", decode_step="transformers")


class GenerationOptions(BaseModel):
    """How to pick tokens (the user's knobs). Greedy by default, as the official code; sampling knobs really apply.

    ``compare`` groups the switches back to the official algorithm, which only comparisons need.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(512, ge=1, le=32768)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    seed: int | None = None
    # Replace an early end (EOS or running out of budget) by ``<img>`` when no image was produced yet.
    require_image: bool = False
    # Reuse (and store) the KV entries of the prompt up to its last input image (SeedX.prefix_cache).
    prefix_cache: bool = True
    compare: ComparisonSwitches = ComparisonSwitches()


@dataclass
class DecodeOutput:
    token_ids: list[int]  # generated ids, image blocks included
    image_hidden_states: list[torch.Tensor] = field(default_factory=list)  # each (num_image_tokens, hidden)
    finish_reason: Literal["eos", "length"] = "length"
    cache: object | None = None  # the KV cache of every token run through the model (the last one may be missing)


def apply_placeholder_mask(logits: torch.Tensor, ids: TokenIds, mode: str) -> torch.Tensor:
    """Suppress image placeholders and ``</img>`` outside an image block (in place on a copy)."""
    logits = logits.clone()
    if mode == "official_zero":
        logits[..., list(ids.image)] = 0.0
        logits[..., ids.eoi] = 0.0
    else:
        logits[..., list(ids.image_all)] = float("-inf")
        logits[..., ids.eoi] = float("-inf")
    return logits


def forced_tokens(last: int, ids: TokenIds, placeholder_mask: str) -> tuple[int, ...]:
    """The tokens the official rule forces after ``last``: the rest of an image block, or none (§6.1)."""
    if last == ids.boi:
        return (*ids.image, ids.eoi)
    if placeholder_mask == "official_zero" and last in ids.image:
        # The official processor forces the successor of any of <img>, <img_00000>..<img_{N-1}>.
        return (*ids.image[ids.image.index(last) + 1 :], ids.eoi)
    return ()


def sample_next_token(logits: torch.Tensor, options: GenerationOptions, generator: torch.Generator | None) -> int:
    """Greedy argmax, or temperature / top-k / top-p sampling from ``logits`` (vocab,)."""
    if not options.do_sample:
        return int(torch.argmax(logits))
    scores = logits.float() / options.temperature
    if options.top_k > 0:
        kth = torch.topk(scores, min(options.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if options.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= options.top_p  # keep the first crossing token
        scores = scores.scatter(0, order, sorted_scores.masked_fill(drop, float("-inf")))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.no_grad()
def decode(
    lvlm: SeedXLVLM,
    ids: TokenIds,
    *,
    inputs_embeds: torch.Tensor,
    last_prompt_token: int,
    options: GenerationOptions,
    cache: object | None = None,
    on_token: Callable[[int], None] | None = None,
    logits_processor: LogitsProcessor | None = None,
) -> DecodeOutput:
    """Decode after a prompt given as embeddings (1, seq, hidden); batch size 1 like the official code.

    ``cache`` may hold the KV entries of a prefix of the prompt; then ``inputs_embeds`` holds only the
    rest. ``last_prompt_token`` is the id of the prompt's final token (``<img>`` starts an image block;
    see :func:`forced_tokens`).
    Tokens are fed lazily: a forced image block goes into the same forward pass as whatever precedes it
    (the prompt, or the sampled ``<img>``) together with its ``</img>``, and no forward is spent on the
    final token once the budget is used up. ``logits_processor`` (if any) adjusts each text token's logits
    after the placeholder mask; forced image blocks do not consult it.
    """
    from seedx_agent.speed.growing_kv import new_kv_cache
    from seedx_agent.speed.lean_step import LeanStep, lean_step_supported

    model, head = lvlm.backbone, lvlm.lm_head
    lean = options.compare.decode_step == "lean" and lean_step_supported(model)
    stepper: LeanStep | None = None  # built at the first one-token step
    embed = lvlm.llm.get_input_embeddings()
    device = inputs_embeds.device
    cache = cache if cache is not None else new_kv_cache(lvlm.llm.config)
    generator = None
    if options.do_sample:
        generator = torch.Generator().manual_seed(options.seed if options.seed is not None else torch.seed())

    def run(embeds: torch.Tensor) -> torch.Tensor:
        nonlocal stepper
        if lean and embeds.shape[1] == 1:
            stepper = stepper or LeanStep(model)
            return stepper(embeds, cache)  # (1, 1, hidden), bit-identical to the forward below
        return model(inputs_embeds=embeds, cache=cache, use_cache=True).last_hidden_state  # (1, n, hidden)

    def embed_ids(token_ids: list[int]) -> torch.Tensor:
        return embed(torch.tensor([token_ids], device=device)).to(inputs_embeds.dtype)  # (1, n, hidden)

    n_block = len(ids.image)
    pending: torch.Tensor | None = inputs_embeds  # (1, n, hidden) fed to the model but not run yet
    hidden_last = inputs_embeds.new_zeros(0)
    generated: list[int] = []
    images: list[torch.Tensor] = []
    last = last_prompt_token
    finish: Literal["eos", "length"] = "length"

    def emit(token: int) -> None:
        generated.append(token)
        if on_token is not None:
            on_token(token)

    while len(generated) < options.max_new_tokens:
        forced = forced_tokens(last, ids, options.compare.placeholder_mask)
        if forced:
            # Inputs that are placeholders: the forced ones, plus ``last`` when a placeholder opened the run
            # (it is the final position of ``pending``).
            lead = 0 if last == ids.boi else 1
            if options.compare.image_block_mode == "one_forward":
                block = embed_ids(list(forced))  # (1, len(forced), hidden)
                feed = block if pending is None else torch.cat([pending, block], dim=1)
                hidden = run(feed)  # (1, n, hidden)
                states = hidden[0, -(len(forced) + lead) : -1]  # (placeholders, hidden)
                hidden_last = hidden[:, -1]
            else:  # one decoding step per placeholder, as the official loop
                first = run(pending)[0, -1] if pending is not None else None
                steps = [run(embed_ids([token]))[0, 0] for token in forced[:-1]]
                states = torch.stack(([first] if lead and first is not None else []) + steps)
                hidden_last = run(embed_ids([ids.eoi]))[:, -1]
            if states.shape[0] == n_block:  # a whole run <img_00000>..<img_{N-1}>: an image's features
                images.append(states)
            pending = None
            for token in forced:
                emit(token)
            last = ids.eoi
            continue
        if pending is not None:
            hidden_last = run(pending)[:, -1]
            pending = None
        logits = apply_placeholder_mask(head(hidden_last)[0].float(), ids, options.compare.placeholder_mask)
        if logits_processor is not None:
            logits = logits_processor(generated, logits)
        if options.require_image and not images:
            room = options.max_new_tokens - len(generated)
            if room <= n_block + 2:  # only an image block (and EOS) still fits
                logits = torch.full_like(logits, float("-inf"))
                logits[ids.boi] = 0.0
            elif int(torch.argmax(logits)) == ids.eos and not options.do_sample:
                logits[ids.eos] = float("-inf")
                logits[ids.boi] = float("inf")
        next_token = sample_next_token(logits, options, generator)
        if options.require_image and not images and next_token == ids.eos:
            next_token = ids.boi
        emit(next_token)
        if next_token == ids.eos:
            finish = "eos"
            break
        pending = embed_ids([next_token])
        last = next_token
    return DecodeOutput(generated, images, finish, cache)

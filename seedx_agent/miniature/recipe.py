"""The miniature's training run: its own stages on the world, chained with the paper's (``training.recipes``).

1. ``vit_world_pretrain``: the real ViT comes pre-trained from Qwen-VL; the miniature's is trained on the
   world with attribute heads (kind/colour/size per grid cell), then frozen.
2. ``detokenizer_stage1`` / ``detokenizer_stage2`` (``training.recipes``) on world scenes and edits.
3. ``input_resampler_align`` (``lvlm-align``, off unless given steps): the LLM's input resampler learns
   to pass the scene on (world heads on its output) before pre-training starts.
4. ``lvlm_pretrain`` and ``lvlm_sft`` (``training.recipes``) on the world's task mixture.
5. agent tuning (``lvlm-agent``): ``lvlm_sft`` again with a fresh LoRA on the merged SFT model, on
   tool-calling dialogs in the compact protocol (``tool_dialogs``) alternating with the task mixture, so
   the miniature can be its own planner in the chat agent. SEED-X itself was never tuned for tool calls;
   large models follow the full protocol from its instructions.

Each stage checkpoints into its own folder and resumes there; ``run_mini`` chains them and
``assemble_mini`` writes the finished model with ``save_components``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from seedx_agent.config import SeedXConfig
from seedx_agent.errors import ConfigError
from seedx_agent.miniature import world
from seedx_agent.miniature.world_data import (
    COLOUR_CLASSES,
    KIND_CLASSES,
    SIZE_CLASSES,
    WorldData,
    scene_targets,
)
from seedx_agent.pipeline.components import build_components
from seedx_agent.pipeline.lvlm import SeedXLVLM
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.pipeline.vision import QwenViT, pool_tokens_4to1
from seedx_agent.training.loop import LoopConfig, LoopResult, distributed_context, run_loop
from seedx_agent.training.recipes import (
    LoraSettings,
    _load_module,
    apply_lora,
    detokenizer_stage1,
    detokenizer_stage2,
    frozen,
    lvlm_pretrain,
    lvlm_sft,
    merge_lora,
    stage2_from_stage1,
    vit_features,
)

__all__ = [
    "MINI_LORA",
    "MINI_STAGES",
    "MiniSchedule",
    "ViTWorldHeads",
    "assemble_mini",
    "input_resampler_align",
    "run_mini",
    "vit_world_pretrain",
]


# ---------------------------------------------------------------------------------------------
# Stage 0: ViT on the world
# ---------------------------------------------------------------------------------------------


class ViTWorldHeads(nn.Module):
    """Attribute heads on the 4-to-1 pooled ViT tokens: forces those tokens (the regression targets and
    the de-tokenizer's input) to carry every object's kind, colour, size and cell.

    With ``raw_grid`` set (the side of the raw token raster), a second, *local* head reads each cell from
    the mean of the raw tokens whose centres fall in it, with one MLP shared by all cells: every region
    must then describe its own content in a position-independent code, which attention (the LLM's input
    resampler, the de-tokenizer's perceiver) can read by looking at that region. The flattened global
    head alone left the content spread over all tokens (linear probes: 99% from all tokens, 88-93% from
    a cell's own tokens).
    """

    def __init__(
        self, tokens: int, dim: int, cells: int = 9, hidden: int = 256, *, raw_grid: int | None = None
    ) -> None:
        super().__init__()
        self.cells = cells
        self.sizes = (len(KIND_CLASSES), len(COLOUR_CLASSES), len(SIZE_CLASSES))
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(tokens * dim, hidden), nn.GELU())
        self.cell_head = nn.Linear(hidden, cells * sum(self.sizes))
        self.scene_head = nn.Linear(hidden, 4)  # background (2) + title (2)
        self.local_head: nn.Module | None = None
        if raw_grid is not None:
            self.register_buffer("cell_weights", _cell_pooling(raw_grid, round(cells**0.5)), persistent=False)
            self.local_head = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, sum(self.sizes)))

    def _split(self, cell_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        kind, colour, size = cell_logits.split(self.sizes, dim=-1)
        return {"kind": kind, "colour": colour, "size": size}

    def forward(self, pooled: torch.Tensor, raw: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.body(pooled)
        out = self._split(self.cell_head(h).view(h.shape[0], self.cells, sum(self.sizes)))
        scene = self.scene_head(h)
        out.update(background=scene[:, :2], title=scene[:, 2:])
        if self.local_head is not None:
            if raw is None:
                raise ValueError("local heads need the raw ViT tokens")
            per_cell = torch.einsum("ct,btd->bcd", self.cell_weights.to(raw.dtype), raw)  # (B, cells, dim)
            out.update({f"local_{k}": v for k, v in self._split(self.local_head(per_cell)).items()})
        return out


def _cell_pooling(raw_grid: int, grid: int) -> torch.Tensor:
    """(grid², raw_grid²) averaging weights: each world cell's mean over the raw tokens centred in it."""
    if raw_grid < grid:
        raise ConfigError(f"a {raw_grid}x{raw_grid} token raster cannot cover {grid}x{grid} cells with local heads")
    centre_cell = [min(grid - 1, int((i + 0.5) * grid / raw_grid)) for i in range(raw_grid)]
    weights = torch.zeros(grid * grid, raw_grid * raw_grid)
    for row in range(raw_grid):
        for col in range(raw_grid):
            weights[centre_cell[row] * grid + centre_cell[col], row * raw_grid + col] = 1.0
    return weights / weights.sum(dim=1, keepdim=True)


def _train_world_heads(
    name: str,
    heads: ViTWorldHeads,
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    data: WorldData,
    out_dir: str | Path,
    modules: dict[str, nn.Module],
    params: list[nn.Parameter],
    loop: LoopConfig,
    batch_size: int,
    progress: bool,
) -> tuple[LoopResult, float]:
    """Shared by the ViT and input-alignment stages: cross-entropy of ``heads`` on the world's per-cell
    targets, where ``encode(vit_pixels)`` gives the (pooled, raw) tokens the heads read. Returns the loop
    result and the held-out accuracy of the global heads (mean over cells and attributes)."""

    def logits_and_targets(step: int, n: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        batch = data.scenes(step, n)
        return heads(*encode(batch.vit_pixels)), scene_targets(batch.scenes)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        logits, targets = logits_and_targets(step, batch_size)
        losses = {
            key: F.cross_entropy(value.flatten(0, -2), targets[key.removeprefix("local_")].flatten())
            for key, value in logits.items()
        }
        return {"loss": sum(losses.values()), **{k: v.detach() for k, v in losses.items()}}

    result = run_loop(name, out_dir, modules, params, step_fn, loop, progress=progress)
    with torch.no_grad():
        for module in modules.values():
            module.eval()
        logits, targets = logits_and_targets(10**6 - 1, 256)  # a step index the run never reaches
        names = [k for k in logits if not k.startswith("local_")]
        accuracy = sum(float((logits[k].argmax(-1) == targets[k]).float().mean()) for k in names) / len(names)
    return result, accuracy


def vit_world_pretrain(
    vision: QwenViT,
    data: WorldData,
    out_dir: str | Path,
    loop: LoopConfig,
    *,
    batch_size: int = 32,
    progress: bool = True,
    local_heads: bool = False,
) -> tuple[LoopResult, float]:
    """Train the ViT (+ throw-away heads) to read the world; returns the loop result and held-out
    per-attribute accuracy (mean over cells/attributes, global heads) of the final weights.

    ``local_heads`` adds the shared per-cell head on the raw tokens (``ViTWorldHeads``)."""
    pooled_tokens = vision.config.num_output_tokens // 4
    raw_grid = vision.config.pool_grid if local_heads else None
    heads = ViTWorldHeads(pooled_tokens, vision.config.output_dim, raw_grid=raw_grid)
    vision.requires_grad_(True)

    def encode(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = vision(pixels)
        return pool_tokens_4to1(raw), raw

    modules = {"vision": vision, "heads": heads}
    params = [*vision.parameters(), *heads.parameters()]
    result = _train_world_heads("vit", heads, encode, data, out_dir, modules, params, loop, batch_size, progress)
    frozen(vision)
    return result


def input_resampler_align(
    lvlm: SeedXLVLM,
    vision: QwenViT,
    data: WorldData,
    out_dir: str | Path,
    loop: LoopConfig,
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[LoopResult, float]:
    """Miniature only: train the LLM's input resampler (and patch-position table) to pass the scene on.

    Trained from scratch inside LVLM pre-training, the single attention-pool layer stays close to a
    uniform average for hundreds of steps and loses where things are (ridge probes on its 16 output
    tokens after 600 pre-training steps: 78% per-cell kind accuracy, against 99.8% on the ViT tokens it
    reads), and the LLM learns to answer from the blur. This step first trains it, with the ViT frozen,
    under ``ViTWorldHeads`` (global plus per-cell local heads on its output grid). Returns the loop
    result and the held-out per-cell accuracy of the global heads."""
    from seedx_agent.pipeline.anyres import THUMBNAIL_POSITION

    frozen(vision)
    lvlm.requires_grad_(False)
    lvlm.input_resampler.requires_grad_(True)
    lvlm.patch_pos_embed.requires_grad_(True)
    tokens, hidden = lvlm.config.num_image_tokens, lvlm.llm.config.hidden_size
    side = round(tokens**0.5)
    heads = ViTWorldHeads(tokens, hidden, raw_grid=side if side >= world.GRID else None)  # local heads if they fit
    # World images are square: their 1x1 tile and thumbnail both sit at the thumbnail's position.
    position = torch.tensor([THUMBNAIL_POSITION])

    def encode(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = lvlm.embed_images(vit_features(vision, pixels), position.expand(len(pixels), -1))
        return embeds, embeds

    params = [*lvlm.input_resampler.parameters(), lvlm.patch_pos_embed, *heads.parameters()]
    modules = {"lvlm": lvlm, "heads": heads}
    result = _train_world_heads("lvlm-align", heads, encode, data, out_dir, modules, params, loop, batch_size, progress)
    lvlm.requires_grad_(True)
    lvlm.train()
    return result


# ---------------------------------------------------------------------------------------------
# The miniature, end to end
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MiniSchedule:
    """Steps per stage of the miniature run (the defaults are the bundled weights' totals; see
    ``scripts/train_mini.sh`` for the phases the LLM stages ran in)."""

    vit_steps: int = 900
    vit_batch: int = 32
    detok1_steps: int = 2400
    detok2_steps: int = 400
    pretrain_steps: int = 2800
    sft_steps: int = 2000
    agent_steps: int = 600
    detok_batch: int = 16
    lvlm_batch: int = 16
    agent_batch: int = 8
    agent_scramble: float = 0.0  # share of copy-drill dialogs (WorldData.agent_examples); 0.4 did not help
    vit_local_heads: bool = False  # ViTWorldHeads' shared per-cell head on the raw tokens: did not help the LLM
    align_steps: int = 0  # input_resampler_align before pre-training; 0 skips it (the bundle predates it)
    seed: int = 0

    def scaled(self, factor: float) -> MiniSchedule:
        """Every stage's steps times ``factor`` (at least 1): for smoke runs and tests."""
        fields = [f for f in STAGE_STEP_FIELDS.values() if getattr(self, f) > 0]  # a skipped stage stays skipped
        return replace(self, **{f: max(1, round(getattr(self, f) * factor)) for f in fields})

    def with_steps(self, steps: Mapping[str, int]) -> MiniSchedule:
        """This schedule with some stages' total steps replaced, e.g. ``{"lvlm-sft": 1000}``; a finished
        stage given more steps resumes from its checkpoint and continues on the longer schedule."""
        unknown = [name for name in steps if name not in STAGE_STEP_FIELDS]
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown}; choose from {list(STAGE_STEP_FIELDS)}")
        bad = {name: n for name, n in steps.items() if isinstance(n, bool) or not isinstance(n, int) or n < 1}
        if bad:
            raise ConfigError(f"stage steps must be positive integers, got {bad}")
        return replace(self, **{STAGE_STEP_FIELDS[name]: n for name, n in steps.items()})


# Stage name -> its MiniSchedule field of total steps.
STAGE_STEP_FIELDS: dict[str, str] = {
    "vit": "vit_steps",
    "detokenizer-1": "detok1_steps",
    "detokenizer-2": "detok2_steps",
    "lvlm-align": "align_steps",
    "lvlm-pretrain": "pretrain_steps",
    "lvlm-sft": "sft_steps",
    "lvlm-agent": "agent_steps",
}


MINI_STAGES = ("vit", "detokenizer-1", "detokenizer-2", "lvlm-align", "lvlm-pretrain", "lvlm-sft", "lvlm-agent")
# The SFT adapter of the miniature: training wraps the LLM with it, assembly must rebuild the same wrapper.
MINI_LORA = LoraSettings(r=32, alpha=32)


def _load_lora_stage(lvlm: SeedXLVLM, folder: Path) -> None:
    """Apply the miniature's LoRA, load a finished LoRA stage's checkpoint into it and merge."""
    apply_lora(lvlm, MINI_LORA)
    _load_module(lvlm, folder, "lvlm")
    merge_lora(lvlm)


def run_mini(
    out_dir: str | Path,
    *,
    schedule: MiniSchedule = MiniSchedule(),
    stages: tuple[str, ...] = MINI_STAGES,
    max_minutes: float | None = None,
    threads: int | None = None,
    tokenizer: SeedXTokenizer | None = None,
    config: SeedXConfig | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """Train (or resume) the miniature SEED-X: each stage of ``stages`` in order, checkpointing in
    ``out_dir/<stage>``; when every stage is done, write the model to ``out_dir/model``.

    Stages already finished are loaded, not retrained, so the command can be re-run after an
    interruption. ``stages`` may name a subset (e.g. the de-tokenizer stages in one process and the
    LLM stages in another: both need only the finished ViT). Launched as N CPU processes (``torchrun
    --nproc_per_node N -m seedx_agent train mini``) every stage is data-parallel, N times the batch.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = config or SeedXConfig.from_preset("mini")
    tokenizer = tokenizer or SeedXTokenizer.tiny()
    unknown = [s for s in stages if s not in MINI_STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; choose from {list(MINI_STAGES)}")
    parts = build_components(config, tokenizer=tokenizer, variants=("seed-x-i",), stages=(1,), seed=schedule.seed)
    data = WorldData(config, tokenizer, seed=schedule.seed)
    started = time.monotonic()
    report: dict[str, object] = {"schedule": asdict(schedule), "stages": {}}

    def remaining() -> float | None:
        return None if max_minutes is None else max(0.1, max_minutes - (time.monotonic() - started) / 60)

    def loop(steps: int, lr: float, warmup: int) -> LoopConfig:
        return LoopConfig(steps=steps, lr=lr, warmup_steps=warmup, seed=schedule.seed, max_minutes=remaining())

    def record(stage: str, result: LoopResult, **extra: object) -> bool:
        """Note a stage's outcome in the report; False when it stopped early (time budget)."""
        report["stages"][stage] = {"step": result.step, "finished": result.finished, **extra, **result.losses}
        return result.finished

    def done(stage: str, steps: int) -> bool:
        from seedx_agent.training.loop import checkpoint_step

        return (checkpoint_step(out / stage) or 0) >= steps

    # 0. ViT
    if "vit" in stages:
        result, accuracy = vit_world_pretrain(
            parts.vision,
            data,
            out / "vit",
            loop(schedule.vit_steps, 1e-3, 50),
            batch_size=schedule.vit_batch,
            progress=progress,
            local_heads=schedule.vit_local_heads,
        )
        if not record("vit", result, heldout_accuracy=accuracy):
            return report
    elif done("vit", schedule.vit_steps):
        _load_module(parts.vision, out / "vit", "vision")
    else:
        raise ConfigError("the ViT stage has not finished; run the 'vit' stage first")
    frozen(parts.vision)

    # 1-2. De-tokenizers
    detok1 = parts.detokenizers[1]
    if "detokenizer-1" in stages:
        result = detokenizer_stage1(
            detok1,
            parts.vision,
            data,
            out / "detokenizer-1",
            loop(schedule.detok1_steps, 3e-4, 100),
            batch_size=schedule.detok_batch,
            progress=progress,
        )
        if not record("detokenizer-1", result):
            return report
    detok2 = None
    if "detokenizer-2" in stages or done("detokenizer-2", schedule.detok2_steps):
        if not done("detokenizer-1", schedule.detok1_steps):
            raise ConfigError("de-tokenizer stage 2 starts from a finished stage 1; run 'detokenizer-1' first")
        _load_module(detok1, out / "detokenizer-1", "detokenizer")
        detok2 = stage2_from_stage1(detok1, config)
    if "detokenizer-2" in stages:
        result = detokenizer_stage2(
            detok2,
            parts.vision,
            data,
            out / "detokenizer-2",
            loop(schedule.detok2_steps, 2e-4, 50),
            batch_size=schedule.detok_batch,
            progress=progress,
        )
        if not record("detokenizer-2", result):
            return report

    # 3-4. LLM
    lvlm = parts.lvlms["seed-x-i"]
    pad = tokenizer.pad_token_id
    if "lvlm-align" in stages and schedule.align_steps > 0:
        result, accuracy = input_resampler_align(
            lvlm,
            parts.vision,
            data,
            out / "lvlm-align",
            loop(schedule.align_steps, 1e-3, 50),
            batch_size=schedule.vit_batch,
            progress=progress,
        )
        if not record("lvlm-align", result, heldout_accuracy=accuracy):
            return report
    if "lvlm-pretrain" in stages:
        if schedule.align_steps > 0 and "lvlm-align" not in stages:
            if not done("lvlm-align", schedule.align_steps):
                raise ConfigError("pre-training starts from the aligned input resampler; run 'lvlm-align' first")
            _load_module(lvlm, out / "lvlm-align", "lvlm")
        result = lvlm_pretrain(
            lvlm,
            parts.vision,
            lambda step: data.lvlm_examples(step, schedule.lvlm_batch, style="seed-x"),
            out / "lvlm-pretrain",
            loop(schedule.pretrain_steps, 1e-3, 100),
            pad_token_id=pad,
            progress=progress,
        )
        if not record("lvlm-pretrain", result):
            return report
    if "lvlm-sft" in stages:
        if not done("lvlm-pretrain", schedule.pretrain_steps):
            raise ConfigError("instruction tuning starts from a finished pre-training; run 'lvlm-pretrain' first")
        _load_module(lvlm, out / "lvlm-pretrain", "lvlm")
        result = lvlm_sft(
            lvlm,
            parts.vision,
            lambda step: data.lvlm_examples(step, schedule.lvlm_batch, style="seed-x-i"),
            out / "lvlm-sft",
            loop(schedule.sft_steps, 5e-4, 50),
            lora=MINI_LORA,
            pad_token_id=pad,
            progress=progress,
        )
        if not record("lvlm-sft", result):
            return report
    if "lvlm-agent" in stages:
        if not done("lvlm-sft", schedule.sft_steps):
            raise ConfigError("agent tuning starts from a finished instruction tuning; run 'lvlm-sft' first")
        if "lvlm-sft" not in stages:  # the SFT LLM, merged (a stage run above is merged already)
            _load_lora_stage(lvlm, out / "lvlm-sft")
        result = lvlm_sft(
            lvlm,
            parts.vision,
            lambda step: data.agent_examples(
                step, schedule.agent_batch, schedule.lvlm_batch, scramble=schedule.agent_scramble
            ),
            out / "lvlm-agent",
            loop(schedule.agent_steps, 2e-3, 30),
            lora=MINI_LORA,
            pad_token_id=pad,
            progress=progress,
            name="lvlm-agent",
        )
        if not record("lvlm-agent", result):
            return report
    if distributed_context().is_main:
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def assemble_mini(
    out_dir: str | Path,
    model_dir: str | Path,
    *,
    schedule: MiniSchedule = MiniSchedule(),
    dtype: torch.dtype = torch.float16,
    config: SeedXConfig | None = None,
) -> Path:
    """Collect the finished stages of ``out_dir`` into one checkpoint folder (our layout) at ``model_dir``.

    The one trained LLM serves both the ``seed-x-i`` and the ``seed-x-edit`` roles (stored once).
    """
    from seedx_agent.training.loop import checkpoint_step
    from seedx_agent.weights import save_components

    out = Path(out_dir)
    need = {
        "vit": schedule.vit_steps,
        "detokenizer-1": schedule.detok1_steps,
        "detokenizer-2": schedule.detok2_steps,
        "lvlm-sft": schedule.sft_steps,
        "lvlm-agent": schedule.agent_steps,
    }
    unfinished = [s for s, n in need.items() if (checkpoint_step(out / s) or 0) < n]
    if unfinished:
        raise ConfigError(f"stages {unfinished} of {str(out)!r} are not finished; run the training first")
    config = config or SeedXConfig.from_preset("mini")
    tokenizer = SeedXTokenizer.tiny()
    parts = build_components(config, tokenizer=tokenizer, variants=("seed-x-i",), stages=(1,), seed=0)
    _load_module(parts.vision, out / "vit", "vision")
    _load_module(parts.detokenizers[1], out / "detokenizer-1", "detokenizer")
    detok2 = stage2_from_stage1(parts.detokenizers[1], config)
    _load_module(detok2, out / "detokenizer-2", "detokenizer")
    parts.detokenizers[2] = detok2
    lvlm = parts.lvlms["seed-x-i"]
    _load_lora_stage(lvlm, out / "lvlm-sft")
    _load_lora_stage(lvlm, out / "lvlm-agent")
    parts.lvlms["seed-x-edit"] = lvlm
    for _, module in parts.modules():
        module.to(dtype).eval()
    return save_components(parts, Path(model_dir), overwrite=True)

"""Each training stage learns (loss drops on a fixed batch), LoRA merges exactly, and the miniature's
recipe runs end to end, resumes and assembles a loadable model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from seedx_agent.config import SeedXConfig
from seedx_agent.errors import ConfigError
from seedx_agent.miniature.recipe import (
    MiniSchedule,
    ViTWorldHeads,
    _cell_pooling,
    assemble_mini,
    input_resampler_align,
    run_mini,
    vit_world_pretrain,
)
from seedx_agent.miniature.world_data import KIND_CLASSES, WorldData
from seedx_agent.model import SeedX
from seedx_agent.pipeline.components import build_components
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.pipeline.vision import pool_tokens_4to1
from seedx_agent.training.loop import LoopConfig
from seedx_agent.training.recipes import (
    LoraSettings,
    apply_lora,
    detokenizer_stage1,
    detokenizer_stage2,
    lvlm_loss,
    lvlm_pretrain,
    lvlm_sft,
    merge_lora,
    stage2_from_stage1,
    vit_features,
)
from seedx_agent.training.samples import collate


class FixedBatch(WorldData):
    """The same batch at every step, so a falling loss means the weights learned it."""

    def scenes(self, step, n):
        return super().scenes(0, n)

    def edits(self, step, n):
        return super().edits(0, n)

    def lvlm_examples(self, step, n, **kwargs):
        return super().lvlm_examples(0, n, **kwargs)


@pytest.fixture(scope="module")
def tiny():
    config = SeedXConfig.from_preset("tiny-random")
    tokenizer = SeedXTokenizer.tiny()
    parts = build_components(config, tokenizer=tokenizer, variants=("seed-x-i",), stages=(1,), seed=0)
    return config, tokenizer, parts, FixedBatch(config, tokenizer)


def loop(steps: int, lr: float) -> LoopConfig:
    return LoopConfig(steps=steps, lr=lr, warmup_steps=0, checkpoint_every_s=1e9, log_every=1, weight_decay=0.0)


def detok_loss(detok, vision, batch, stage: int) -> float:
    torch.manual_seed(0)
    features = pool_tokens_4to1(vit_features(vision, batch.vit_pixels))
    kwargs = {"condition_images": batch.condition_pixels} if stage == 2 else {}
    with torch.no_grad():
        return float(detok.training_loss(batch.target_pixels, features, **kwargs))


@pytest.mark.parametrize("local_heads", [False, True])
def test_vit_stage_learns_the_world(tiny, tmp_path: Path, local_heads: bool) -> None:
    _config, _, parts, data = tiny
    vision = copy.deepcopy(parts.vision)
    result, accuracy = vit_world_pretrain(vision, data, tmp_path, loop(8, 3e-3), batch_size=8, local_heads=local_heads)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert ("local_kind" in result.history[-1]) is local_heads
    if local_heads:
        assert result.history[-1]["local_colour"] < result.history[0]["local_colour"]
    assert 0.0 <= accuracy <= 1.0
    assert not any(p.requires_grad for p in vision.parameters())  # frozen afterwards


def test_local_heads_pool_each_cell_from_its_own_tokens() -> None:
    weights = _cell_pooling(8, 3)  # an 8x8 raster: token centres 4, 12, 20 | 28, 36 | 44, 52, 60 px of 64
    assert weights.shape == (9, 64)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(9))
    assert ((weights > 0).sum(dim=0) == 1).all()  # every token belongs to exactly one cell
    rows = [3, 2, 3]
    assert [int((weights[cell] > 0).sum()) for cell in range(9)] == [r * c for r in rows for c in rows]
    centre = weights[4].view(8, 8)
    assert centre[3:5, 3:5].gt(0).all() and centre.gt(0).sum() == 4
    heads = ViTWorldHeads(16, 16, raw_grid=8)
    raw = torch.randn(2, 64, 16)
    out = heads(pool_tokens_4to1(raw), raw)
    assert out["local_kind"].shape == out["kind"].shape == (2, 9, len(KIND_CLASSES))
    # a cell's local logits depend on that cell's tokens only
    changed = raw.clone().view(2, 8, 8, 16)
    changed[:, 0, 0] += 5.0  # a token of the top-left cell
    again = heads(pool_tokens_4to1(raw), changed.view(2, 64, 16))
    moved = (again["local_colour"] - out["local_colour"]).abs().amax(dim=(0, 2))
    assert moved[0] > 0 and torch.all(moved[1:] == 0)
    with pytest.raises(ValueError, match="raw ViT tokens"):
        heads(pool_tokens_4to1(raw))


def test_input_resampler_align_trains_only_the_input_side(tiny, tmp_path: Path) -> None:
    _config, _, parts, data = tiny
    lvlm = copy.deepcopy(parts.lvlms["seed-x-i"])
    before = {k: v.clone() for k, v in lvlm.state_dict().items()}
    result, accuracy = input_resampler_align(lvlm, parts.vision, data, tmp_path, loop(8, 3e-3), batch_size=8)
    assert result.finished and result.history[-1]["loss"] < result.history[0]["loss"]
    assert 0.0 <= accuracy <= 1.0
    changed = {k for k, v in lvlm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("input_resampler.", "patch_pos_embed")) for k in changed)
    assert any(k.startswith("input_resampler.") for k in changed) and "patch_pos_embed" in changed
    assert all(p.requires_grad for p in lvlm.parameters())  # ready for pre-training
    with pytest.raises(ConfigError, match="cannot cover"):
        _cell_pooling(2, 3)


# ~50 s (two de-tokenizer stages): slow, run by .ci/run after the unit suite.
@pytest.mark.slow
def test_detokenizer_stages_lower_the_loss(tiny, tmp_path: Path) -> None:
    config, _, parts, data = tiny
    vision, detok = parts.vision, copy.deepcopy(parts.detokenizers[1])
    batch = data.scenes(0, 4)
    before = detok_loss(detok, vision, batch, 1)
    detokenizer_stage1(detok, vision, data, tmp_path / "d1", loop(6, 2e-3), batch_size=4, uncond_prob=0.0)
    assert detok_loss(detok, vision, batch, 1) < before
    assert not any(p.requires_grad for p in vision.parameters())

    stage2 = stage2_from_stage1(detok, config)
    assert stage2.unet.conv_in.in_channels == 2 * detok.unet.conv_in.in_channels
    edits = data.edits(0, 4)
    before = detok_loss(stage2, vision, edits, 2)
    detokenizer_stage2(stage2, vision, data, tmp_path / "d2", loop(6, 2e-3), batch_size=4, uncond_prob=0.0)
    assert detok_loss(stage2, vision, edits, 2) < before
    with pytest.raises(ConfigError, match="stage-1"):
        detokenizer_stage1(stage2, vision, data, tmp_path / "bad", loop(1, 1e-3))


def test_lvlm_pretrain_and_sft_lower_both_losses(tiny, tmp_path: Path) -> None:
    _config, _tokenizer, parts, data = tiny
    lvlm, vision = copy.deepcopy(parts.lvlms["seed-x-i"]), parts.vision
    examples = data.lvlm_examples(0, 6, style="seed-x", weights={"caption": 1, "text_to_image": 1})
    batch = collate(examples)
    with torch.no_grad():
        before = lvlm_loss(lvlm, vision, batch)
    lvlm_pretrain(lvlm, vision, lambda s: examples, tmp_path / "pt", loop(8, 3e-3))
    with torch.no_grad():
        after = lvlm_loss(lvlm, vision, batch)
    assert after["lm"] < before["lm"] and after["rec"] < before["rec"]

    sft_examples = data.lvlm_examples(0, 6, style="seed-x-i", weights={"vqa": 1, "edit": 1})
    sft_batch = collate(sft_examples)
    with torch.no_grad():
        before = lvlm_loss(lvlm, vision, sft_batch)["loss"]
    result = lvlm_sft(
        lvlm, vision, lambda s: sft_examples, tmp_path / "sft", loop(8, 3e-3), lora=LoraSettings(r=4, alpha=8)
    )
    assert result.finished and not hasattr(lvlm.llm, "merge_and_unload")  # merged back into plain LLaMA
    with torch.no_grad():
        assert lvlm_loss(lvlm, vision, sft_batch)["loss"] < before


def test_lora_trainable_set_and_exact_merge(tiny) -> None:
    _, _, parts, data = tiny
    lvlm = copy.deepcopy(parts.lvlms["seed-x-i"])
    lvlm.requires_grad_(False)
    apply_lora(lvlm, LoraSettings(r=4, alpha=8, dropout=0.0))
    trainable = {n for n, p in lvlm.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    assert any("input_layernorm.modules_to_save" in n for n in trainable)
    assert any("embed_tokens" in n for n in trainable) and any("lm_head" in n for n in trainable)
    assert any(n.startswith("input_resampler") for n in trainable)
    assert not any(n.endswith("q_proj.base_layer.weight") for n in trainable)  # base weights frozen
    with torch.no_grad():  # make the adapter non-trivial, then merging must not change outputs
        for name, p in lvlm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    lvlm.eval()
    batch = collate(data.lvlm_examples(0, 3, style="seed-x-i", weights={"vqa": 1}))
    with torch.no_grad():
        unmerged = lvlm_loss(lvlm, parts.vision, batch)["loss"]
        merge_lora(lvlm)
        merged = lvlm_loss(lvlm, parts.vision, batch)["loss"]
    assert type(lvlm.llm).__name__ == "LlamaForCausalLM"
    assert torch.allclose(unmerged, merged, atol=1e-5)


def test_miniature_recipe_runs_resumes_and_assembles(tmp_path: Path) -> None:
    schedule = MiniSchedule(
        vit_steps=2,
        detok1_steps=2,
        detok2_steps=1,
        pretrain_steps=2,
        sft_steps=1,
        agent_steps=2,
        vit_batch=2,
        detok_batch=2,
        lvlm_batch=2,
        agent_batch=1,
        align_steps=1,
    )
    run = tmp_path / "run"
    config = SeedXConfig.from_preset("tiny-random").model_copy(
        update={"anyres": SeedXConfig.from_preset("mini").anyres}
    )
    with pytest.raises(ConfigError, match="ViT stage"):
        run_mini(run, schedule=schedule, stages=("lvlm-pretrain",), progress=False, config=config)
    with pytest.raises(ConfigError, match="instruction tuning"):
        run_mini(run, schedule=schedule, stages=("vit", "lvlm-agent"), progress=False, config=config)
    report = run_mini(run, schedule=schedule, progress=False, config=config)
    assert set(report["stages"]) == {
        "vit",
        "detokenizer-1",
        "detokenizer-2",
        "lvlm-align",
        "lvlm-pretrain",
        "lvlm-sft",
        "lvlm-agent",
    }
    assert all(stage["finished"] for stage in report["stages"].values())
    again = run_mini(
        run, schedule=schedule, stages=("lvlm-pretrain",), progress=False, config=config
    )  # finished: no work
    assert again["stages"]["lvlm-pretrain"]["step"] == 2
    longer = schedule.with_steps({"lvlm-pretrain": 3})  # a finished stage continues on a longer schedule
    more = run_mini(run, schedule=longer, stages=("lvlm-pretrain",), progress=False, config=config)
    assert more["stages"]["lvlm-pretrain"]["step"] == 3 and more["stages"]["lvlm-pretrain"]["finished"]

    folder = assemble_mini(run, tmp_path / "model", schedule=schedule, config=config)
    model = SeedX.from_pretrained(folder)
    assert model.variants == ("seed-x-i", "seed-x-edit")
    assert model.parts.lvlms["seed-x-i"] is model.parts.lvlms["seed-x-edit"]  # one LLM, stored once
    assert not (folder / "lvlm" / "seed-x-edit.safetensors").exists()
    assert sorted(model.parts.detokenizers) == [1, 2]
    assert model.generate_image("a red circle at the top", seed=0, num_inference_steps=2).image.size == (32, 32)
    with pytest.raises(ConfigError, match="not finished"):
        assemble_mini(tmp_path / "empty", tmp_path / "model2", schedule=schedule, config=config)


def test_schedule_stage_steps_override_and_errors() -> None:
    schedule = MiniSchedule().with_steps({"detokenizer-1": 1200, "lvlm-sft": 7})
    assert (schedule.detok1_steps, schedule.sft_steps, schedule.vit_steps) == (1200, 7, MiniSchedule().vit_steps)
    with pytest.raises(ConfigError, match="unknown stage"):
        MiniSchedule().with_steps({"detokenizer-3": 5})
    with pytest.raises(ConfigError, match="positive integers"):
        MiniSchedule().with_steps({"vit": 0})
    assert MiniSchedule().scaled(0.5).align_steps == 0  # a skipped stage stays skipped
    assert MiniSchedule(align_steps=400).scaled(0.5).align_steps == 200


def test_cli_refuses_a_negative_rec_loss_scale(tmp_path: Path) -> None:
    from seedx_agent.cli import main

    with pytest.raises(SystemExit, match="rec-loss-scale must be >= 0"):
        main(["train", "mini", "--out", str(tmp_path / "run"), "--stages", "vit", "--rec-loss-scale", "-1"])
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_cli_stage_steps_parsing() -> None:
    from seedx_agent.cli.main import _stage_steps

    assert _stage_steps(["lvlm-sft=1000", " vit = 3"]) == {"lvlm-sft": 1000, "vit": 3}
    for bad in (["lvlm-sft"], ["lvlm-sft=ten"], ["vit=-1"]):
        with pytest.raises(SystemExit, match="STAGE=STEPS"):
            _stage_steps(bad)

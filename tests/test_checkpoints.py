"""Checkpoints: official layout write -> load, strict key checks, pickle opt-in, our safetensors layout."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from seedx_agent.config import VARIANTS, SeedXConfig
from seedx_agent.errors import (
    CheckpointError,
    ConfigError,
    DependencyMissingError,
    StateDictMismatchError,
    UnsafeCheckpointError,
)
from seedx_agent.miniature.official_layout import write_official_layout
from seedx_agent.pipeline.components import SeedXComponents, build_components
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.weights import (
    DETOKENIZER_FOLDER,
    TOKENIZER_FOLDER,
    OfficialLayout,
    check_state_dict,
    convert_official,
    load_components,
    load_official,
    load_strict,
    place,
    quantize_llm,
    read_state_dict,
    save_components,
)

TINY = SeedXConfig.from_preset("tiny-random")
AGENT_KEY = "input_resampler.kv_proj.weight"
TO_K_KEY = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"


# -- fixtures and helpers -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source() -> SeedXComponents:
    parts = build_components(TINY, tokenizer=SeedXTokenizer.tiny(), variants=VARIANTS, stages=(1, 2), seed=0)
    parts.detokenizers[2].vae.load_state_dict(parts.detokenizers[1].vae.state_dict())  # one SDXL VAE
    return parts


@pytest.fixture(scope="module")
def official(source: SeedXComponents, tmp_path_factory: pytest.TempPathFactory) -> OfficialLayout:
    return write_official_layout(source, tmp_path_factory.mktemp("official") / "pretrained")


def _linked_copy(layout: OfficialLayout, destination: Path) -> Path:
    """A copy of the layout made of symlinks (cheap); replace a file by unlinking it first."""
    shutil.copytree(layout.root, destination, copy_function=os.symlink)
    return destination


def _rewrite_pickle(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    edit(state)
    path.unlink()
    torch.save(state, path)


def _assert_all_equal(expected: SeedXComponents, actual: SeedXComponents, *, same_dtype: bool = True) -> int:
    names = [n for n, _ in expected.modules()]
    assert names == [n for n, _ in actual.modules()]
    count = 0
    for (name, want), (_, got) in zip(expected.modules(), actual.modules()):
        want_state, got_state = want.state_dict(), got.state_dict()
        assert want_state.keys() == got_state.keys(), name
        for key, tensor in want_state.items():
            assert torch.equal(tensor, got_state[key]), f"{name}: {key}"
            if same_dtype:
                assert tensor.dtype == got_state[key].dtype, f"{name}: {key}"
            count += 1
    return count


def _assert_subset_equal(expected: SeedXComponents, actual: SeedXComponents) -> None:
    """Every tensor of every module ``actual`` loaded equals (value and dtype) ``expected``'s."""
    reference = dict(expected.modules())
    for name, module in actual.modules():
        want = reference[name].state_dict()
        for key, tensor in module.state_dict().items():
            assert torch.equal(want[key], tensor) and want[key].dtype == tensor.dtype, f"{name}: {key}"


# -- official layout: write -> load -------------------------------------------------------------------
def test_official_layout_round_trip_every_tensor_equal(source: SeedXComponents, official: OfficialLayout) -> None:
    loaded = load_official(official, TINY, variants=VARIANTS, stages=(1, 2), allow_pickle=True)
    assert _assert_all_equal(source, loaded) == sum(len(m.state_dict()) for _, m in source.modules())
    for _, module in loaded.modules():
        assert not any(p.is_meta for p in module.parameters())
        assert not any(b.is_meta for b in module.buffers())
        assert not module.training
    # Non-persistent buffers (RoPE) were rebuilt, so the LLM computes the same logits.
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        want = source.lvlms["seed-x-i"].llm(input_ids=ids).logits
        got = loaded.lvlms["seed-x-i"].llm(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert loaded.detokenizers[2].unet.conv_in.weight.shape[1] == 8
    assert loaded.tokenizer.vocab_size == TINY.llm.vocab_size


def test_official_files_use_official_names_and_formats(source: SeedXComponents, official: OfficialLayout) -> None:
    root = official.root
    llm_folder = root / "seed_x_i" / "llm"
    index = json.loads((llm_folder / "pytorch_model.bin.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
    ]
    hf_config = json.loads((llm_folder / "config.json").read_text())
    assert hf_config["pretraining_tp"] == 2 and hf_config["vocab_size"] == TINY.llm.vocab_size
    rotary = [k for k in index["weight_map"] if k.endswith("rotary_emb.inv_freq")]
    assert len(rotary) == TINY.llm.num_layers
    assert "lm_head.weight" in index["weight_map"] and "model.embed_tokens.weight" in index["weight_map"]

    agent = torch.load(root / "seed_x_i" / "agent" / "pytorch_model.bin", weights_only=True)
    assert "patch_pos_embed" in agent and agent["patch_pos_embed"].shape == (4, TINY.llm.hidden_size)
    assert {k.split(".")[0] for k in agent} == {"patch_pos_embed", "input_resampler", "output_resampler"}

    first = torch.load(root / DETOKENIZER_FOLDER / "first_stage" / "pytorch_model.bin", weights_only=True)
    unet_keys = [k for k in first if k.startswith("unet.")]
    overlay_names = {k.rsplit(".", 3)[-3] + "." + k.rsplit(".", 2)[-2] for k in unet_keys}
    assert overlay_names == {"attn1.to_k", "attn1.to_v", "attn2.to_k", "attn2.to_v"}
    n_attn = sum(1 for k in source.detokenizers[1].unet.state_dict() if k.endswith(".to_k.weight"))
    assert len(unet_keys) == 2 * n_attn
    assert {k.split(".")[0] for k in first} == {"resampler", "unet"}
    second = torch.load(root / DETOKENIZER_FOLDER / "second_stage" / "pytorch_model.bin", weights_only=True)
    assert second["unet.conv_in.weight"].shape[1] == 8
    assert len([k for k in second if k.startswith("unet.")]) == len(source.detokenizers[2].unet.state_dict())

    vit = torch.load(root / "QwenViT" / "qwen_vit_G.pt", weights_only=True)
    assert "conv1.weight" in vit and "attn_pool.query" in vit and "proj" in vit
    for part in ("unet", "vae"):
        assert (official.sdxl / part / "config.json").is_file()
    assert json.loads(official.scheduler_config.read_text())["_class_name"] == "EulerDiscreteScheduler"
    assert official.available_variants() == VARIANTS and official.available_stages() == (1, 2)


def test_stage1_file_overlays_the_stock_unet(official: OfficialLayout, tmp_path: Path) -> None:
    root = _linked_copy(official, tmp_path / "pretrained")
    stage_file = root / DETOKENIZER_FOLDER / "first_stage" / "pytorch_model.bin"
    trained: dict[str, torch.Tensor] = {}

    def shift_to_k(state: dict[str, torch.Tensor]) -> None:
        for key in state:
            if key.endswith("to_k.weight"):
                state[key] = state[key] + 1.0
                trained[key] = state[key]

    _rewrite_pickle(stage_file, shift_to_k)
    loaded = load_official(OfficialLayout.discover(root), TINY, variants=("seed-x-i",), stages=(1,), allow_pickle=True)
    unet_state = loaded.detokenizers[1].unet.state_dict()
    stock = read_state_dict(official.sdxl_weights("unet"))
    for key, value in trained.items():
        assert torch.equal(unet_state[key.removeprefix("unet.")], value)
    untouched = "conv_in.weight"
    assert torch.equal(unet_state[untouched], stock[untouched])


def test_loaded_model_does_not_keep_file_pages(official: OfficialLayout, tmp_path: Path) -> None:
    """Pickles are read memory-mapped; rewriting a file in place afterwards must not touch the model."""
    root = _linked_copy(official, tmp_path / "pretrained")
    agent_file = root / "seed_x_i" / "agent" / "pytorch_model.bin"
    agent_file.unlink()
    shutil.copyfile(official.variants["seed-x-i"].agent, agent_file)
    loaded = load_official(OfficialLayout.discover(root), TINY, variants=("seed-x-i",), stages=(), allow_pickle=True)
    before = loaded.lvlms["seed-x-i"].patch_pos_embed.detach().clone()
    state = torch.load(agent_file, weights_only=True)
    torch.save({k: torch.zeros_like(v) for k, v in state.items()}, agent_file)  # same inode, truncated first
    assert torch.equal(loaded.lvlms["seed-x-i"].patch_pos_embed, before)


# -- pickle opt-in ------------------------------------------------------------------------------------
def test_pickle_requires_opt_in(official: OfficialLayout) -> None:
    with pytest.raises(UnsafeCheckpointError) as info:
        load_official(official, TINY, variants=("seed-x-i",), stages=())
    message = str(info.value)
    assert "allow_pickle=True" in message and "--allow-pickle" in message and "pretrained" in message

    agent_file = official.variants["seed-x-i"].agent
    with pytest.raises(UnsafeCheckpointError, match=re.escape("agent/pytorch_model.bin")):
        read_state_dict(agent_file)
    state = read_state_dict(agent_file, allow_pickle=True)
    reference = torch.load(agent_file, weights_only=True)
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)
    # Sharded pickle folders are refused before any shard is read.
    with pytest.raises(UnsafeCheckpointError, match=re.escape("pytorch_model.bin.index.json")):
        read_state_dict(official.variants["seed-x-i"].llm)


def test_pickle_holding_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.bin"
    torch.save({"weight": torch.zeros(2), "payload": PurePosixPath("/etc")}, path)
    with pytest.raises(CheckpointError, match=re.escape("evil.bin")):
        read_state_dict(path, allow_pickle=True)
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, nested)
    with pytest.raises(CheckpointError, match="flat state dict"):
        read_state_dict(nested, allow_pickle=True)


# -- strict key checks on the agent file and the stage-1 overlay ---------------------------------------
def _edit_missing(state: dict[str, torch.Tensor], key: str) -> None:
    del state[key]


def _edit_unexpected(state: dict[str, torch.Tensor], key: str) -> None:
    state[key] = torch.zeros(3)


def _edit_misshaped(state: dict[str, torch.Tensor], key: str) -> None:
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])


CASES = {
    # (file, kind): (key to edit, key expected in the error, which list, edit)
    ("agent", "missing"): (AGENT_KEY, AGENT_KEY, "missing", _edit_missing),
    ("agent", "unexpected"): (
        "input_resampler.extra_scale",
        "input_resampler.extra_scale",
        "unexpected",
        _edit_unexpected,
    ),
    ("agent", "misshaped"): (AGENT_KEY, AGENT_KEY, "mismatched", _edit_misshaped),
    ("stage1", "missing"): (TO_K_KEY, TO_K_KEY, "missing", _edit_missing),
    # Any UNet weight besides to_k/to_v is unexpected in the stage-1 file (no silent strict=False).
    ("stage1", "unexpected"): ("unet.conv_in.weight", "unet.conv_in.weight", "unexpected", _edit_unexpected),
    ("stage1", "misshaped"): (TO_K_KEY, TO_K_KEY, "mismatched", _edit_misshaped),
}


@pytest.mark.parametrize("case", list(CASES), ids=lambda c: f"{c[0]}-{c[1]}")
def test_mismatched_keys_are_all_reported(official: OfficialLayout, tmp_path: Path, case: tuple[str, str]) -> None:
    key, reported, field, edit = CASES[case]
    root = _linked_copy(official, tmp_path / "pretrained")
    if case[0] == "agent":
        target, stages = root / "seed_x_i" / "agent" / "pytorch_model.bin", ()
    else:
        target, stages = root / DETOKENIZER_FOLDER / "first_stage" / "pytorch_model.bin", (1,)
    _rewrite_pickle(target, lambda state: edit(state, key))
    with pytest.raises(StateDictMismatchError) as info:
        load_official(OfficialLayout.discover(root), TINY, variants=("seed-x-i",), stages=stages, allow_pickle=True)
    error = info.value
    listed = [entry[0] if isinstance(entry, tuple) else entry for entry in getattr(error, field)]
    assert listed == [reported]
    assert reported in str(error) and str(target) in str(error)
    if field == "mismatched":
        ((_, checkpoint_shape, model_shape),) = error.mismatched
        assert checkpoint_shape[0] == model_shape[0] + 1


def test_every_difference_is_listed_at_once() -> None:
    model = nn.Linear(3, 2)
    state = {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)}
    with pytest.raises(StateDictMismatchError) as info:
        load_strict(model, state, component="toy")
    assert info.value.missing == ["bias"]
    assert info.value.unexpected == ["extra"]
    assert info.value.mismatched == [("weight", (2, 4), (2, 3))]
    assert "toy" in str(info.value)


# -- config checks and missing files ------------------------------------------------------------------
def test_llm_config_geometry_mismatch_names_both_values(official: OfficialLayout, tmp_path: Path) -> None:
    root = _linked_copy(official, tmp_path / "pretrained")
    config_file = root / "seed_x_i" / "llm" / "config.json"
    hf_config = json.loads(config_file.read_text())
    hf_config["intermediate_size"] = 256
    config_file.unlink()
    config_file.write_text(json.dumps(hf_config))
    with pytest.raises(ConfigError) as info:
        load_official(OfficialLayout.discover(root), TINY, variants=("seed-x-i",), stages=(), allow_pickle=True)
    message = str(info.value)
    assert "intermediate_size is 256" in message and f"is {TINY.llm.intermediate_size}" in message
    # A config with another geometry is refused against the untouched files too.
    bigger = SeedXConfig.model_validate({**TINY.model_dump(), "llm": {**TINY.llm.model_dump(), "num_layers": 3}})
    with pytest.raises(ConfigError, match="num_hidden_layers is 2"):
        load_official(official, bigger, variants=("seed-x",), stages=(), allow_pickle=True)


def test_sdxl_unet_config_mismatch(official: OfficialLayout, tmp_path: Path) -> None:
    root = _linked_copy(official, tmp_path / "pretrained")
    config_file = root / "stable-diffusion-xl-base-1.0" / "unet" / "config.json"
    unet_config = json.loads(config_file.read_text())
    unet_config["attention_head_dim"] = [4, 8]
    config_file.unlink()
    config_file.write_text(json.dumps(unet_config))
    with pytest.raises(ConfigError, match="attention_head_dim"):
        load_official(OfficialLayout.discover(root), TINY, variants=("seed-x-i",), stages=(1,), allow_pickle=True)


def test_missing_files_are_listed_with_the_searched_root(official: OfficialLayout, tmp_path: Path) -> None:
    root = _linked_copy(official, tmp_path / "pretrained")
    (root / "seed_x_i" / "agent" / "pytorch_model.bin").unlink()
    (root / "QwenViT" / "qwen_vit_G.pt").unlink()
    shutil.rmtree(root / DETOKENIZER_FOLDER / "second_stage")
    layout = OfficialLayout.discover(root)
    assert layout.available_variants() == ("seed-x", "seed-x-edit") and layout.available_stages() == (1,)
    with pytest.raises(CheckpointError) as info:
        load_official(layout, TINY, variants=("seed-x-i", "seed-x-edit"), stages=(1, 2), allow_pickle=True)
    message = str(info.value)
    assert str(root) in message
    assert str(root / "seed_x_i" / "agent" / "pytorch_model.bin") in message
    assert str(root / "QwenViT" / "qwen_vit_G.pt") in message
    assert "second_stage" in message and "seed_x_edit/agent" not in message
    # The ViT may live elsewhere (vit_path); then only the other two are reported.
    moved = OfficialLayout.discover(root, vit_path=official.vit)
    with pytest.raises(CheckpointError) as info:
        load_official(moved, TINY, variants=("seed-x-i",), stages=(1, 2), allow_pickle=True)
    assert "qwen_vit_G.pt" not in str(info.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        OfficialLayout.discover(tmp_path / "nowhere")


def test_old_vae_attention_names_load(official: OfficialLayout, tmp_path: Path) -> None:
    root = _linked_copy(official, tmp_path / "pretrained")
    vae_file = root / "stable-diffusion-xl-base-1.0" / "vae" / "diffusion_pytorch_model.safetensors"
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = read_state_dict(vae_file)
    renamed = {}
    for key, value in state.items():
        for new, old in old_names.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        renamed[key] = value
    assert any(".query." in k for k in renamed)
    vae_file.unlink()
    save_file(renamed, str(vae_file))
    loaded = load_official(OfficialLayout.discover(root), TINY, variants=("seed-x-i",), stages=(1,), allow_pickle=True)
    got = loaded.detokenizers[1].vae.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())


# -- our layout ---------------------------------------------------------------------------------------
def test_our_layout_round_trip_is_bit_exact(source: SeedXComponents, tmp_path: Path) -> None:
    folder = save_components(source, tmp_path / "ckpt")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["variants"] == list(VARIANTS) and manifest["stages"] == [1, 2]
    assert "lvlm/seed-x-i.safetensors" in manifest["files"] and "detokenizer/stage2.safetensors" in manifest["files"]
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    loaded = load_components(folder, verify=True)
    assert _assert_all_equal(source, loaded) > 0
    # Stored in bf16 (VAE kept fp32): the dtypes and bits come back unchanged.
    place(loaded, dtype=torch.bfloat16)
    half = load_components(save_components(loaded, tmp_path / "bf16"))
    _assert_all_equal(loaded, half)
    assert half.vision.conv1.weight.dtype == torch.bfloat16
    assert half.detokenizers[1].vae.encoder.conv_in.weight.dtype == torch.float32
    only_edit = load_components(folder, variants=("seed-x-edit",))
    assert list(only_edit.lvlms) == ["seed-x-edit"] and list(only_edit.detokenizers) == [2]
    with pytest.raises(CheckpointError, match="holds variants"):
        load_components(save_components(source, tmp_path / "again"), variants=("nope",))


def test_save_is_atomic_and_refuses_to_overwrite(source: SeedXComponents, tmp_path: Path) -> None:
    unloaded = build_components(TINY, tokenizer=SeedXTokenizer.tiny(), variants=("seed-x",), stages=(1,), device="meta")
    with pytest.raises(CheckpointError, match="meta"):
        save_components(unloaded, tmp_path / "broken")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no folder, no leftover staging folder
    folder = save_components(source, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="already exists"):
        save_components(source, folder)
    save_components(source, folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_corrupt_or_truncated_files_raise_checkpoint_error(source: SeedXComponents, tmp_path: Path) -> None:
    folder = save_components(source, tmp_path / "ckpt")
    vision = folder / "vision.safetensors"
    data = bytearray(vision.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside the tensor data: only the checksum can notice
    vision.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"vision\.safetensors.*sha256"):
        load_components(folder, verify=True)
    vision.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match=r"vision\.safetensors") as info:
        read_state_dict(vision)
    assert "truncated or corrupt" in str(info.value)
    with pytest.raises(CheckpointError, match=r"vision\.safetensors"):
        load_components(folder)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match=re.escape("garbage.safetensors")):
        read_state_dict(garbage)
    truncated_pickle = tmp_path / "cut.bin"
    torch.save({"w": torch.arange(1000.0)}, truncated_pickle)
    truncated_pickle.write_bytes(truncated_pickle.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=re.escape("cut.bin")):
        read_state_dict(truncated_pickle, allow_pickle=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="not a seedx-agent checkpoint"):
        load_components(tmp_path)


def test_sharded_safetensors_folder(tmp_path: Path) -> None:
    state = {"a.weight": torch.randn(3, 2), "b.weight": torch.randn(4), "c.bias": torch.arange(5)}
    save_file({"a.weight": state["a.weight"]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(
        {"b.weight": state["b.weight"], "c.bias": state["c.bias"]}, str(tmp_path / "model-00002-of-00002.safetensors")
    )
    weight_map = {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors",
        "c.bias": "model-00002-of-00002.safetensors",
    }
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    got = read_state_dict(tmp_path)  # safetensors shards need no opt-in
    assert got.keys() == state.keys() and all(torch.equal(got[k], v) for k, v in state.items())
    index.write_text(json.dumps({"weight_map": {**weight_map, "d.weight": "model-00003-of-00003.safetensors"}}))
    with pytest.raises(CheckpointError, match=re.escape("model-00003-of-00003.safetensors")):
        read_state_dict(index)
    index.write_text(json.dumps({"weight_map": {**weight_map, "d.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"lacks keys.*d\.weight"):
        read_state_dict(index)
    index.write_text(json.dumps({"weight_map": {**weight_map, "d.weight": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside its folder"):
        read_state_dict(index)


# -- load_strict on meta and real modules ---------------------------------------------------------------
def test_load_strict_assigns_into_meta_modules_and_copies_into_real_ones() -> None:
    state = {"0.weight": torch.randn(4, 3, dtype=torch.float16), "0.bias": torch.randn(4, dtype=torch.float16)}
    with torch.device("meta"):
        meta_model = nn.Sequential(nn.Linear(3, 4))
    load_strict(meta_model, state, component="toy")
    assert meta_model[0].weight.device.type == "cpu" and meta_model[0].weight.dtype == torch.float32
    assert torch.equal(meta_model[0].weight, state["0.weight"].float())
    assert isinstance(meta_model[0].weight, nn.Parameter) and meta_model[0].weight.requires_grad

    with torch.device("meta"):
        half_model = nn.Sequential(nn.Linear(3, 4))
    load_strict(half_model, state, component="toy", dtype=torch.bfloat16)
    assert half_model[0].bias.dtype == torch.bfloat16

    real = nn.Sequential(nn.Linear(3, 4))
    weight_before = real[0].weight
    load_strict(real, state, component="toy")
    assert real[0].weight is weight_before and real[0].weight.dtype == torch.float32
    assert torch.equal(real[0].weight, state["0.weight"].float())


def test_ignore_patterns_drop_only_checkpoint_keys() -> None:
    model = nn.Linear(2, 2)
    state = {**model.state_dict(), "layers.0.self_attn.rotary_emb.inv_freq": torch.ones(1)}
    with pytest.raises(StateDictMismatchError, match=re.escape("rotary_emb.inv_freq")):
        load_strict(model, state, component="toy")
    load_strict(model, state, component="toy", ignore=(r"rotary_emb\.inv_freq$",))
    with pytest.raises(StateDictMismatchError, match="bias"):
        check_state_dict(model.state_dict(), {"weight": torch.zeros(2, 2)}, component="toy", ignore=("bias",))


# -- convert, place, quantise ---------------------------------------------------------------------------
def test_convert_official_equals_source(source: SeedXComponents, official: OfficialLayout, tmp_path: Path) -> None:
    out = convert_official(
        official.root, tmp_path / "converted", variants=("seed-x-edit",), allow_pickle=True, config=TINY
    )
    loaded = load_components(out, verify=True)
    assert list(loaded.lvlms) == ["seed-x-edit"] and list(loaded.detokenizers) == [2]
    for name, module in loaded.modules():
        reference = dict(source.modules())[name].state_dict()
        assert all(torch.equal(reference[k], v) for k, v in module.state_dict().items()), name
    with pytest.raises(UnsafeCheckpointError):
        convert_official(official.root, tmp_path / "refused", variants=("seed-x-edit",), config=TINY)
    assert not (tmp_path / "refused").exists()


def test_facade_and_cli_read_the_official_layout(
    source: SeedXComponents, official: OfficialLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The user-facing paths: ``SeedX.from_pretrained`` on the release folder and ``seedx-agent convert``."""
    from seedx_agent.cli import main
    from seedx_agent.model import SeedX

    with pytest.raises(UnsafeCheckpointError, match="allow_pickle"):
        SeedX.from_pretrained(official.root, config="tiny-random", variant="seed-x-i", stages=(1,))
    model = SeedX.from_pretrained(
        official.root, config="tiny-random", variant="seed-x-i", stages=(1,), allow_pickle=True
    )
    assert model.variants == ("seed-x-i",) and sorted(model.parts.detokenizers) == [1]
    _assert_subset_equal(source, model.parts)  # CPU default: fp32, every tensor as written
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parts.vision.parameters())

    out = tmp_path / "converted"
    argv = ["convert", str(official.root), str(out), "--variants", "seed-x-edit", "--stages", "2"]
    assert main([*argv, "--preset", "tiny-random"]) == 2  # no --allow-pickle: refused, nothing written
    assert "allow" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--preset", "tiny-random", "--allow-pickle"]) == 0
    loaded = load_components(out, verify=True)
    assert list(loaded.lvlms) == ["seed-x-edit"] and list(loaded.detokenizers) == [2]
    _assert_subset_equal(source, loaded)


def test_place_casts_and_keeps_vae_and_rope_in_fp32(official: OfficialLayout) -> None:
    parts = load_official(official, TINY, variants=("seed-x-i",), stages=(1,), allow_pickle=True)
    place(parts, device_map={"vision": "cpu", "llm": "cpu", "detokenizer": "cpu"}, dtype=torch.float16)
    lvlm = parts.lvlms["seed-x-i"]
    assert lvlm.llm.model.embed_tokens.weight.dtype == torch.float16
    assert lvlm.patch_pos_embed.dtype == torch.float16 and lvlm.input_resampler.query.dtype == torch.float16
    assert lvlm.llm.model.rotary_emb.inv_freq.dtype == torch.float32
    assert parts.vision.proj.dtype == torch.float16
    detokenizer = parts.detokenizers[1]
    assert detokenizer.unet.conv_in.weight.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in detokenizer.vae.parameters())
    with pytest.raises(ConfigError, match="unknown keys"):
        place(parts, device_map={"unet": "cpu"})
    with pytest.raises(ConfigError, match="floating dtype"):
        place(parts, dtype=torch.int8)
    loaded_fp16 = load_official(
        official, TINY, variants=("seed-x-i",), stages=(1,), allow_pickle=True, dtype=torch.float16
    )
    assert loaded_fp16.vision.conv1.weight.dtype == torch.float16
    assert loaded_fp16.detokenizers[1].vae.decoder.conv_out.weight.dtype == torch.float32


def test_quantize_llm_needs_bitsandbytes(source: SeedXComponents) -> None:
    with pytest.raises(ConfigError, match="8 or 4"):
        quantize_llm(source.lvlms["seed-x-i"], bits=3)
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(DependencyMissingError) as info:
        quantize_llm(source.lvlms["seed-x-i"], bits=4)
    assert "pip install bitsandbytes" in str(info.value) and "CUDA" in str(info.value)


# -- the example ----------------------------------------------------------------------------------------
def test_example_script_runs(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "load_official_layout.py"
    spec = importlib.util.spec_from_file_location("load_official_layout_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--workdir", str(tmp_path)])
    assert report["identical_after_conversion"] is True
    components = report["components"]
    assert set(components) == {"vision", *(f"lvlm:{v}" for v in VARIANTS), "detokenizer:1", "detokenizer:2"}
    assert components["lvlm:seed-x-i"]["parameters"] > 0 and components["detokenizer:2"]["keys"] > 0
    assert (tmp_path / "pretrained" / TOKENIZER_FOLDER / "added_tokens.json").is_file()
    assert (tmp_path / "converted" / "manifest.json").is_file()


def test_official_layout_with_a_custom_geometry_loads_with_config(tmp_path: Path) -> None:
    """A non-standard geometry (no preset describes it) loads from the official layout via ``config=``."""
    from seedx_agent.model import SeedX

    data = TINY.model_dump()
    data["llm"]["num_layers"] = 3
    custom = SeedXConfig.model_validate({**data, "name": "tiny-custom"})
    parts = build_components(custom, tokenizer=SeedXTokenizer.tiny(), variants=("seed-x-i",), stages=(1,), seed=1)
    layout = write_official_layout(parts, tmp_path / "official")
    model = SeedX.from_pretrained(layout.root, config=custom, variant="seed-x-i", stages=(1,), allow_pickle=True)
    assert model.config == custom
    _assert_subset_equal(parts, model.parts)
    # the release's own LLM config.json is still checked against the geometry asked for
    with pytest.raises(ConfigError, match=r"num_hidden_layers is 3 in the file.*config="):
        SeedX.from_pretrained(layout.root, config="tiny-random", variant="seed-x-i", stages=(1,), allow_pickle=True)
    out = convert_official(
        layout.root, tmp_path / "converted", variants=("seed-x-i",), allow_pickle=True, config=custom
    )
    assert SeedXConfig.load(out / "config.json") == custom
    _assert_subset_equal(parts, load_components(out, verify=True))
    with pytest.raises(ConfigError, match="SeedXConfig or a preset name"):
        convert_official(layout.root, tmp_path / "bad", config=3, allow_pickle=True)  # type: ignore[arg-type]


# -- verified loading (issue 23, finding 1) -------------------------------------------------------------
def _flip_one_mantissa_bit(path: Path, *, fraction: float = 0.5) -> None:
    """Flip the lowest bit of one 16/32-bit float element in a safetensors file (the value stays finite)."""
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    start = 8 + header_len
    header = json.loads(data[8:start])
    _, info = max(
        ((k, v) for k, v in header.items() if k != "__metadata__" and v["dtype"] in ("F16", "BF16", "F32")),
        key=lambda kv: kv[1]["data_offsets"][1] - kv[1]["data_offsets"][0],
    )
    width = 4 if info["dtype"] == "F32" else 2
    begin, end = info["data_offsets"]
    element = int((end - begin) // width * fraction)
    data[start + begin + element * width] ^= 0x01  # little endian: the lowest mantissa bit
    path.write_bytes(bytes(data))


def _mini_copy(tmp_path: Path) -> Path:
    from seedx_agent.weights.loading import bundled_mini_path

    return Path(shutil.copytree(bundled_mini_path(), tmp_path / "mini"))


def test_from_pretrained_refuses_a_flipped_byte_by_default(tmp_path: Path) -> None:
    from seedx_agent.errors import CorruptCheckpointError
    from seedx_agent.model import SeedX

    folder = _mini_copy(tmp_path)
    weights = folder / "lvlm" / "seed-x-i.safetensors"
    _flip_one_mantissa_bit(weights)
    with pytest.raises(CorruptCheckpointError, match=r"seed-x-i\.safetensors.*sha256.*verify=False") as info:
        SeedX.from_pretrained(folder)
    assert info.value.path == str(weights) and isinstance(info.value, CheckpointError)
    # Opting out loads the corrupted weights (one element differs from the bundled ones).
    loaded = SeedX.from_pretrained(folder, verify=False)
    bundled = SeedX.from_pretrained("mini")
    different = [
        key
        for (key, a), (_, b) in zip(
            loaded.parts.lvlms["seed-x-i"].state_dict().items(), bundled.parts.lvlms["seed-x-i"].state_dict().items()
        )
        if not torch.equal(a, b)
    ]
    assert len(different) == 1
    # A truncated file fails on its size, before any hashing, naming the file.
    vision = folder / "vision.safetensors"
    vision.write_bytes(vision.read_bytes()[:-100])
    with pytest.raises(CorruptCheckpointError, match=r"vision\.safetensors.*bytes where the manifest lists"):
        load_components(folder)


def test_verification_is_remembered_for_unchanged_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from seedx_agent import weights as checkpoints
    from seedx_agent.errors import CorruptCheckpointError
    from seedx_agent.weights import io as weights_io

    parts = build_components(TINY, tokenizer=SeedXTokenizer.tiny(), variants=("seed-x",))
    folder = save_components(parts, tmp_path / "c")
    hashed: list[str] = []
    real = weights_io._sha256
    monkeypatch.setattr(weights_io, "_sha256", lambda path: hashed.append(path.name) or real(path))
    checkpoints.verify_files(folder)
    assert hashed == []  # save_components remembered what it wrote
    checkpoints.clear_verified_files()
    checkpoints.verify_files(folder)
    listed = json.loads((folder / "manifest.json").read_text())["files"]
    assert sorted(hashed) == sorted(PurePosixPath(p).name for p in listed)
    hashed.clear()
    load_components(folder)  # every file it reads was verified above and has not changed
    assert hashed == []
    vision = folder / "vision.safetensors"
    os.utime(vision, ns=(vision.stat().st_atime_ns, vision.stat().st_mtime_ns + 1))  # "touched": hashed again
    load_components(folder)
    assert hashed == ["vision.safetensors"]
    _flip_one_mantissa_bit(vision)  # rewritten in place, same size
    with pytest.raises(CorruptCheckpointError, match=r"vision\.safetensors"):
        load_components(folder)
    load_components(folder, verify=False)  # opt out


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path: Path, bad: float) -> None:
    from seedx_agent.errors import NonFiniteWeightError
    from seedx_agent.model import SeedX

    model = SeedX.from_pretrained("tiny-random", variants=("seed-x-i",))
    key = "llm.model.layers.1.mlp.down_proj.weight"
    with torch.no_grad():
        model.parts.lvlms["seed-x-i"].state_dict()[key][3, 5] = bad
    model.save_pretrained(tmp_path / "ckpt")  # the manifest's checksums match: only the finite check can tell
    with pytest.raises(NonFiniteWeightError, match=re.escape(key)) as info:
        SeedX.from_pretrained(tmp_path / "ckpt")
    assert info.value.tensor == key and "seed-x-i.safetensors" in info.value.source
    assert (info.value.nan, info.value.inf) == ((1, 0) if bad != bad else (0, 1))
    assert isinstance(info.value, CheckpointError)
    loaded = SeedX.from_pretrained(tmp_path / "ckpt", check_finite=False)  # opt out
    assert not torch.isfinite(loaded.parts.lvlms["seed-x-i"].state_dict()[key]).all()


def test_finite_check_of_the_official_layout(official: OfficialLayout, tmp_path: Path) -> None:
    from seedx_agent.errors import NonFiniteWeightError

    root = _linked_copy(official, tmp_path / "nan")
    agent = OfficialLayout.discover(root).variants["seed-x-i"].agent
    _rewrite_pickle(agent, lambda state: state[AGENT_KEY].view(-1)[0].fill_(float("nan")))
    with pytest.raises(NonFiniteWeightError, match=re.escape(AGENT_KEY)):
        load_official(OfficialLayout.discover(root), TINY, variants=("seed-x-i",), stages=(), allow_pickle=True)
    load_official(
        OfficialLayout.discover(root), TINY, variants=("seed-x-i",), stages=(), allow_pickle=True, check_finite=False
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_finite_check_is_exact_for_every_float_dtype(dtype: torch.dtype) -> None:
    from seedx_agent.weights import check_finite_weights

    info = torch.finfo(dtype)
    edge = torch.tensor([info.max, -info.max, info.tiny, info.tiny / 4, 0.0, -0.0] * 5, dtype=dtype)  # all finite
    check_finite_weights({"edge": edge, "ids": torch.arange(3), "empty": torch.empty(0, dtype=dtype)}, source="t")
    for bad, counts in ((float("nan"), "1 NaN and 0 infinite"), (float("-inf"), "0 NaN and 1 infinite")):
        tensor = edge.clone()
        tensor[-1] = bad
        with pytest.raises(CheckpointError, match=f"'edge' of t holds {counts} values out of 30"):
            check_finite_weights({"fine": edge, "edge": tensor}, source="t")
        strided = torch.stack([edge, tensor], dim=1)[:, 1]  # not contiguous
        with pytest.raises(CheckpointError, match="'s' of t"):
            check_finite_weights({"s": strided}, source="t")

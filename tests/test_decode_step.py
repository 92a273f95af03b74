"""lean_step: the one-token walk through a LLaMA stack is bit-identical to LlamaModel.forward."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from seedx_agent.pipeline.decoding import ComparisonSwitches, GenerationOptions, decode
from seedx_agent.speed import lean_step as decode_step
from seedx_agent.speed.cpu_linear import onednn_linear_available, use_linear_kernel
from seedx_agent.speed.growing_kv import new_kv_cache
from seedx_agent.speed.lean_step import LeanStep, fuse_qkv, lean_step, lean_step_supported

CONFIG = LlamaConfig(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention: the SDPA path packs or repeats KV heads
    max_position_embeddings=256,
)


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(CONFIG).eval()


@torch.no_grad()
@pytest.mark.parametrize("batch", [1, 2])
def test_steps_equal_the_forward_bit_for_bit(llama: LlamaForCausalLM, batch: int) -> None:
    backbone = llama.model
    assert lean_step_supported(backbone)
    prompt = torch.randint(0, CONFIG.vocab_size, (batch, 9), generator=torch.Generator().manual_seed(1))
    caches = [new_kv_cache(CONFIG), new_kv_cache(CONFIG)]
    for cache in caches:
        backbone(input_ids=prompt, cache=cache, use_cache=True)
    token = prompt[:, -1:]
    for _ in range(12):
        embeds = backbone.embed_tokens(token)  # (batch, 1, hidden)
        reference = backbone(inputs_embeds=embeds, cache=caches[0], use_cache=True).last_hidden_state
        ours = lean_step(backbone, embeds, caches[1])
        assert ours.shape == reference.shape == (batch, 1, CONFIG.hidden_size)
        assert torch.equal(ours, reference)
        token = llama.lm_head(ours).argmax(-1)  # (batch, 1)
    for layer in range(CONFIG.num_hidden_layers):  # the caches hold the same keys and values afterwards
        assert torch.equal(caches[0].layers[layer].keys, caches[1].layers[layer].keys)
        assert torch.equal(caches[0].layers[layer].values, caches[1].layers[layer].values)
    assert caches[1].get_seq_length() == 9 + 12


def test_rejects_more_than_one_position(llama: LlamaForCausalLM) -> None:
    with pytest.raises(ValueError, match="one position"):
        lean_step(llama.model, torch.zeros(1, 2, CONFIG.hidden_size), new_kv_cache(CONFIG))


def test_hooks_training_and_other_attention_fall_back(llama: LlamaForCausalLM) -> None:
    backbone = llama.model
    handle = backbone.layers[1].register_forward_hook(lambda module, args, output: None)
    assert not lean_step_supported(backbone)  # the walk would skip a layer-level hook
    handle.remove()
    handle = backbone.layers[0].self_attn.register_forward_pre_hook(lambda module, args: None)
    assert not lean_step_supported(backbone)
    handle.remove()
    handle = backbone.layers[0].mlp.register_forward_hook(lambda module, args, output: None)
    assert lean_step_supported(backbone)  # submodule hooks still run: the walk calls the MLP as a module
    handle.remove()
    backbone.train()
    assert not lean_step_supported(backbone)
    backbone.eval()
    eager_config = LlamaConfig(**CONFIG.to_dict(), attn_implementation="eager")  # what transformers >= 5 honours
    eager = LlamaForCausalLM(eager_config).eval()
    assert eager.config._attn_implementation == "eager"
    assert not lean_step_supported(eager.model)
    assert not lean_step_supported(torch.nn.Linear(2, 2))


@torch.no_grad()
def test_decode_is_identical_with_either_step(tiny_lvlm) -> None:  # type: ignore[no-untyped-def]
    """decode(): the same tokens, image states and final KV with the lean step and with LlamaModel.forward."""
    lvlm, ids, tokenizer = tiny_lvlm
    prompt = tokenizer.encode("draw a red circle and describe it", add_bos=True)
    embeds = lvlm.inputs_embeds(torch.tensor([prompt]))
    runs = {}
    for step in ("lean", "transformers"):
        options = GenerationOptions(
            max_new_tokens=40, compare=ComparisonSwitches(decode_step=step), do_sample=True, seed=3, top_k=5
        )
        runs[step] = decode(lvlm, ids, inputs_embeds=embeds, last_prompt_token=prompt[-1], options=options)
    lean, reference = runs["lean"], runs["transformers"]
    assert len(lean.token_ids) > 1 and lean.token_ids == reference.token_ids
    assert len(lean.image_hidden_states) == len(reference.image_hidden_states)
    for ours, theirs in zip(lean.image_hidden_states, reference.image_hidden_states, strict=True):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(lean.cache.layers, reference.cache.layers, strict=True):
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)


@pytest.mark.skipif(not onednn_linear_available(), reason="this torch build has no oneDNN linear")
@torch.no_grad()
def test_fused_qkv_keeps_parameters_and_stays_bit_identical() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(CONFIG).eval()
    backbone = model.model
    state = {key: value.clone() for key, value in model.state_dict().items()}
    params = {name: id(param) for name, param in model.named_parameters()}
    use_linear_kernel(model, "onednn", min_weight_elements=0)
    assert fuse_qkv(backbone) == CONFIG.num_hidden_layers
    assert fuse_qkv(backbone) == CONFIG.num_hidden_layers  # idempotent: already fused
    block = backbone.layers[0].self_attn
    storage = block.q_proj.weight.untyped_storage().data_ptr()
    assert (
        block.k_proj.weight.untyped_storage().data_ptr() == storage == block.v_proj.weight.untyped_storage().data_ptr()
    )
    assert {name: id(param) for name, param in model.named_parameters()} == params  # same Parameter objects
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert decode_step._onednn_fused(block) is not None  # the step will fuse

    prompt = torch.randint(0, CONFIG.vocab_size, (2, 7), generator=torch.Generator().manual_seed(2))
    caches = [new_kv_cache(CONFIG), new_kv_cache(CONFIG)]
    for cache in caches:
        backbone(input_ids=prompt, cache=cache, use_cache=True)
    token = prompt[:, -1:]
    for _ in range(6):  # forward calls q/k/v separately; the lean step runs one fused GEMV
        embeds = backbone.embed_tokens(token)
        reference = backbone(inputs_embeds=embeds, cache=caches[0], use_cache=True).last_hidden_state
        ours = lean_step(backbone, embeds, caches[1])
        assert torch.equal(ours, reference)
        token = model.lm_head(ours).argmax(-1)

    assert decode_step._onednn_fused(block) is not None
    model.double()  # casting re-allocates each weight: the views are gone and the step notices
    assert block.k_proj.weight.untyped_storage().data_ptr() != block.q_proj.weight.untyped_storage().data_ptr()
    embeds = backbone.embed_tokens(token)
    caches = [new_kv_cache(CONFIG), new_kv_cache(CONFIG)]
    reference = backbone(inputs_embeds=embeds, cache=caches[0], use_cache=True).last_hidden_state
    assert decode_step._onednn_fused(block) is None
    assert torch.equal(lean_step(backbone, embeds, caches[1]), reference)


@pytest.mark.skipif(not onednn_linear_available(), reason="this torch build has no oneDNN linear")
def test_fused_model_saves_and_reloads_exactly(tmp_path) -> None:
    from seedx_agent.model import SeedX

    model = SeedX.from_pretrained("tiny-random", variants=("seed-x-i",))
    reference = {key: value.clone() for key, value in model.parts.lvlms["seed-x-i"].state_dict().items()}
    assert model.set_linear_kernel("onednn", min_weight_elements=0) > 0
    block = model.parts.lvlms["seed-x-i"].backbone.layers[0].self_attn
    assert block.k_proj.weight.untyped_storage().data_ptr() == block.q_proj.weight.untyped_storage().data_ptr()
    model.save_pretrained(tmp_path / "saved")  # shared storage is cloned for safetensors
    loaded = SeedX.from_pretrained(tmp_path / "saved", linear_kernel="torch")
    for key, value in loaded.parts.lvlms["seed-x-i"].state_dict().items():
        assert torch.equal(value, reference[key]), key


@torch.no_grad()
def test_lora_wrapped_projections_stay_bit_identical() -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        LlamaForCausalLM(CONFIG).eval(),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"], init_lora_weights=False),
    ).eval()
    backbone = model.get_base_model().model
    assert lean_step_supported(backbone)
    stepper = LeanStep(backbone)
    prompt = torch.randint(0, CONFIG.vocab_size, (1, 5), generator=torch.Generator().manual_seed(4))
    caches = [new_kv_cache(CONFIG), new_kv_cache(CONFIG)]
    for cache in caches:
        backbone(input_ids=prompt, cache=cache, use_cache=True)
    embeds = backbone.embed_tokens(prompt[:, -1:])
    for _ in range(3):
        reference = backbone(inputs_embeds=embeds, cache=caches[0], use_cache=True).last_hidden_state
        ours = stepper(embeds, caches[1])
        assert torch.equal(ours, reference)
        embeds = reference


def test_lean_step_refuses_unsupported_modules() -> None:
    with pytest.raises(ValueError, match="LLaMA stack"):
        LeanStep(torch.nn.Linear(2, 2))

"""Write tiny components in the official release layout, so tests and the example can exercise the official
loader without the real 13B download. Not product code: nothing in the product imports it."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seedx_agent.config import LLMConfig
from seedx_agent.errors import (
    CheckpointError,
)
from seedx_agent.pipeline.components import SeedXComponents
from seedx_agent.weights.io import StateDict, _prefixed
from seedx_agent.weights.official import (
    _OVERLAY_RE,
    DEFAULT_SDXL,
    DEFAULT_VIT,
    DETOKENIZER_FOLDER,
    STAGE_FOLDERS,
    TOKENIZER_FOLDER,
    VARIANT_FOLDERS,
    OfficialLayout,
)

logger = logging.getLogger(__name__)


# =================================================================================================
# Writing the official layout (tests, examples)
# =================================================================================================
def _official_llm_config(llm: LLMConfig) -> dict[str, Any]:
    """An HF Llama ``config.json`` as transformers 4.30.2 wrote it for the release (§5.1)."""
    return {
        "_name_or_path": "seedx_llama13b_vitg_448_anyres/checkpoint-merged/llm",
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": llm.bos_token_id,
        "eos_token_id": llm.eos_token_id,
        "hidden_act": "silu",
        "hidden_size": llm.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": llm.intermediate_size,
        "max_position_embeddings": 2048,
        "model_type": "llama",
        "num_attention_heads": llm.num_heads,
        "num_hidden_layers": llm.num_layers,
        "pad_token_id": llm.pad_token_id,
        "pretraining_tp": 2,
        "rms_norm_eps": llm.rms_norm_eps,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.30.2",
        "use_cache": True,
        "vocab_size": llm.vocab_size,
    }


def _pickle_tensors(state: Mapping[str, torch.Tensor]) -> StateDict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _write_llm_folder(llm_module: nn.Module, llm: LLMConfig, folder: Path) -> None:
    """HF folder with two pickle shards, an index, and 4.30-style per-layer ``rotary_emb.inv_freq``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_official_llm_config(llm), indent=2) + "\n")
    generation = {
        "bos_token_id": llm.bos_token_id,
        "eos_token_id": llm.eos_token_id,
        "pad_token_id": llm.pad_token_id,
        "transformers_version": "4.30.2",
    }
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    head_dim = llm.hidden_size // llm.num_heads
    inv_freq = 1.0 / (llm.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    state = _pickle_tensors(llm_module.state_dict())
    for layer in range(llm.num_layers):
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    total = sum(t.numel() * t.element_size() for t in state.values())
    shards: list[StateDict] = [{}, {}]
    running = 0
    for key, tensor in state.items():  # first half of the bytes -> shard 1, the rest -> shard 2
        shards[0 if running < total / 2 else 1][key] = tensor
        running += tensor.numel() * tensor.element_size()
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        name = f"pytorch_model-{number:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, folder / name)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _stock_unet(parts: SeedXComponents) -> nn.Module:
    """The 4-channel UNet to store as the SDXL base: stage 1's, else stage 2's with conv_in cut to 4 inputs."""
    if 1 in parts.detokenizers:
        return parts.detokenizers[1].unet
    from diffusers import UNet2DConditionModel

    edit_unet = parts.detokenizers[2].unet
    unet_config = dict(parts.config.edit_detokenizer.unet)
    channels = parts.config.edit_detokenizer.latent_channels
    unet = UNet2DConditionModel(**{**unet_config, "in_channels": channels})
    state = _pickle_tensors(edit_unet.state_dict())
    state["conv_in.weight"] = state["conv_in.weight"][:, :channels].contiguous()  # (out, in, kh, kw)
    unet.load_state_dict(state, strict=True)
    return unet


def write_official_layout(parts: SeedXComponents, root: str | Path) -> OfficialLayout:
    """Write ``parts`` in the official release layout, key names and pickle formats (§13).

    Meant for tests and examples: it exercises the real-weight loading path on a tiny checkpoint.
    The release stores one SDXL VAE for both stages, so the stages' VAEs must be equal.
    """
    from diffusers import EulerDiscreteScheduler

    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    parts.tokenizer.save(root / TOKENIZER_FOLDER)
    vit_file = root / DEFAULT_VIT
    vit_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_pickle_tensors(parts.vision.state_dict()), vit_file)

    for variant, lvlm in parts.lvlms.items():
        folder = root / VARIANT_FOLDERS[variant]
        _write_llm_folder(lvlm.llm, parts.config.llm, folder / "llm")
        agent = {k: v for k, v in lvlm.state_dict().items() if not k.startswith("llm.")}
        (folder / "agent").mkdir(parents=True, exist_ok=True)
        torch.save(_pickle_tensors(agent), folder / "agent" / "pytorch_model.bin")

    for stage, detokenizer in parts.detokenizers.items():
        state = _prefixed(detokenizer.resampler, "resampler.")
        unet_state = _prefixed(detokenizer.unet, "unet.")
        if stage == 1:
            unet_state = {k: v for k, v in unet_state.items() if _OVERLAY_RE.search(k)}
        target = root / DETOKENIZER_FOLDER / STAGE_FOLDERS[stage] / "pytorch_model.bin"
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(_pickle_tensors({**state, **unet_state}), target)

    if parts.detokenizers:
        sdxl = root / DEFAULT_SDXL
        _stock_unet(parts).save_pretrained(sdxl / "unet", safe_serialization=True)
        vaes = [d.vae for _, d in sorted(parts.detokenizers.items()) if d.vae is not None]
        if vaes:
            reference = vaes[0].state_dict()
            for other in vaes[1:]:
                if any(not torch.equal(reference[k], v) for k, v in other.state_dict().items()):
                    raise CheckpointError(
                        "the official layout stores one SDXL VAE for both de-tokenizer stages, but the two stages "
                        "have different VAE weights; copy one VAE's state dict into the other first"
                    )
            vaes[0].save_pretrained(sdxl / "vae", safe_serialization=True)
        EulerDiscreteScheduler.from_config(parts.config.detokenizer.scheduler).save_config(sdxl / "scheduler")
    logger.info("wrote the official layout to %s", root)
    return OfficialLayout.discover(root)

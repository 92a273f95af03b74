"""Weights: reading, verifying and placing SEED-X checkpoints, split by job.

``io`` reads state dicts and assigns them strictly into meta-built modules; ``official`` knows the release
layout; ``native`` is our safetensors + manifest layout (sha256 verified on load); ``placement`` moves and
quantises loaded components. The public names are re-exported here.
"""

from __future__ import annotations

from seedx_agent.weights.io import (
    PICKLE_SUFFIXES,
    check_finite_weights,
    check_state_dict,
    clear_verified_files,
    file_sha256,
    load_strict,
    read_state_dict,
)
from seedx_agent.weights.native import FORMAT_VERSION, load_components, save_components, verify_files
from seedx_agent.weights.official import (
    DETOKENIZER_FOLDER,
    LLM_IGNORE,
    STAGE_FOLDERS,
    TOKENIZER_FOLDER,
    VARIANT_FOLDERS,
    OfficialLayout,
    VariantFiles,
    convert_official,
    load_official,
)
from seedx_agent.weights.placement import PLACEMENT_KEYS, describe, place, quantize_llm

__all__ = [
    "DETOKENIZER_FOLDER",
    "FORMAT_VERSION",
    "LLM_IGNORE",
    "PICKLE_SUFFIXES",
    "PLACEMENT_KEYS",
    "STAGE_FOLDERS",
    "TOKENIZER_FOLDER",
    "VARIANT_FOLDERS",
    "OfficialLayout",
    "VariantFiles",
    "check_finite_weights",
    "check_state_dict",
    "clear_verified_files",
    "convert_official",
    "describe",
    "file_sha256",
    "load_components",
    "load_official",
    "load_strict",
    "place",
    "quantize_llm",
    "read_state_dict",
    "save_components",
    "verify_files",
]

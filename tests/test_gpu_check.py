"""benchmarks/gpu_check.py at tiny-random size on the CPU: every report field present and sane, equalities hold."""

import json
import sys
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not of the installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import gpu_check  # noqa: E402
from seedx_agent.config import SeedXConfig  # noqa: E402
from seedx_agent.pipeline.tokenizer import SeedXTokenizer  # noqa: E402
from seedx_agent.pipeline.tokens import TokenIds  # noqa: E402

CPU_MAP = {"vision": "cpu", "llm": "cpu", "detokenizer": "cpu"}
ARGV = [
    "--preset",
    "tiny-random",
    "--device",
    "cpu",
    "--dtype",
    "fp32",
    "--quant",
    "none,8,4",
    "--steps",
    "2",
    "--fast-steps",
    "1",
    "--max-new-tokens",
    "6",
    "--runs",
    "1",
    "--block-runs",
    "1",
    "--bandwidth-mb",
    "8",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    start = time.perf_counter()
    status = gpu_check.main([*ARGV, "--out", str(out)])
    seconds = time.perf_counter() - start
    report = json.loads((out / "gpu_check.json").read_text())
    return status, seconds, report, (out / "gpu_check.md").read_text()


def _positive(*values):
    return all(isinstance(v, (int, float)) and v > 0 for v in values)


def test_runs_in_seconds_and_writes_json_and_markdown(run):
    status, seconds, report, table = run
    assert status == 0
    assert seconds < 60
    assert report["schema"] == gpu_check.SCHEMA_VERSION and report["preset"] == "tiny-random"
    assert report["device_map"] == CPU_MAP
    assert _positive(report["bandwidth_gbps"]["cpu"])
    assert report["environment"]["torch"] and report["environment"]["cpu_count"] >= 1
    assert report["image_size"] == 32 and report["steps"] == 2 and report["fast_steps"] == 1
    names = [row["name"] for row in report["configurations"]]
    assert names == ["fp32/no quant", "fp32/8-bit LLM", "fp32/4-bit LLM"]
    assert "## GPU check: preset tiny-random" in table
    for name in names:
        assert f"| {name} |" in table
    assert table.count("\n|") >= 2 + len(names)  # header, rule, one row per configuration


def test_quantised_configurations_are_skipped_with_a_reason_without_a_gpu(run):
    for row, bits in zip(run[2]["configurations"][1:], (8, 4)):
        if gpu_check.quant_skip_reason(bits, CPU_MAP) is None:  # a GPU and bitsandbytes: quantize_llm moves the LLM
            assert row["status"] == "ok", row.get("traceback")
        else:
            assert row["status"] == "skipped"
            assert "CUDA" in row["reason"] or "bitsandbytes" in row["reason"]


def test_every_measurement_is_present_and_sane(run):
    row = run[2]["configurations"][0]
    assert row["status"] == "ok", row.get("traceback")
    assert set(row["stacks"]) == {"seed-x-i", "seed-x-edit"}
    for variant, stack in row["stacks"].items():
        assert stack["variant"] == variant and stack["detokenizer_stage"] == (2 if variant == "seed-x-edit" else 1)
        assert _positive(stack["load_s"], stack["llm_weight_bytes"]) and stack["llm_dtype"] == "float32"
        assert all(_positive(n) for n in stack["parameters"].values()) and len(stack["parameters"]) == 3
        load, ran = stack["load_peak_memory"]["cpu"], stack["run_peak_memory"]["cpu"]
        assert load["kind"] == "process_rss_peak" and _positive(load["peak_bytes"])
        assert ran["peak_bytes"] >= load["peak_bytes"]  # a process peak never goes down

    comp = row["comprehension"]
    assert comp["image_size"] == [1000, 600] and comp["grid"] == "2x1" and comp["crops"] == 3
    assert _positive(comp["ttft_s"], comp["cold_ttft_s"], comp["request_s"], comp["cold_request_s"])
    assert comp["request_s"] >= comp["ttft_s"]
    assert comp["new_tokens"] >= 2 and comp["image_blocks"] == 0
    assert _positive(comp["decode_tokens_per_s"], comp["bound_tokens_per_s"], comp["fraction_of_bound"])
    assert comp["fraction_of_bound"] == pytest.approx(comp["decode_tokens_per_s"] / comp["bound_tokens_per_s"])

    assert _positive(row["grounding"]["request_s"], row["grounding"]["cold_request_s"])
    assert row["grounding"]["boxes"] >= 0

    for ability in ("t2i", "edit"):
        result = row[ability]
        assert _positive(result["request_s"], result["cold_request_s"], result["llm_s"], result["detokenizer_s"])
        assert result["request_s"] >= result["detokenizer_s"]
        assert result["output_size"] == [32, 32] and result["requested_size"] == 32
        assert result["scheduler"] == "euler" and result["steps"] == 2

    detok = row["detokenizer"]
    assert detok["euler"]["steps"] == 2 and detok["dpm"]["steps"] == 1
    assert _positive(detok["euler"]["seconds"], detok["dpm"]["seconds"], detok["speedup"])
    assert detok["euler"]["seconds"] == row["t2i"]["detokenizer_s"]


def test_official_and_our_image_block_agree(run):
    block = run[2]["configurations"][0]["image_block"]
    assert block["num_image_tokens"] == SeedXConfig.from_preset("tiny-random").lvlm.num_image_tokens
    assert _positive(block["official_s"], block["ours_s"], block["speedup"], block["max_abs_value"])
    assert block["tolerance"] == gpu_check.TOLERANCE  # fp32: the absolute tolerance of bench_image_tokens
    assert block["equal"] and 0 <= block["max_abs_diff"] <= block["tolerance"]
    assert block["cosine"] > 0.9999


def test_stand_in_tokenizer_has_the_real_vocabulary_layout():
    config = SeedXConfig.from_preset("seed-x-i")
    tokenizer = gpu_check.stand_in_tokenizer(config.llm.vocab_size)
    tiny = SeedXTokenizer.tiny()
    assert tokenizer.vocab_size == config.llm.vocab_size == 32330
    shift = 32000 - tiny.sp.get_piece_size()
    assert tokenizer.token_to_id("<img>") == tiny.token_to_id("<img>") + shift
    ids = TokenIds.from_vocab(tokenizer, config.lvlm.num_image_tokens)
    assert ids.boi >= 32000 and len(ids.image) == 64
    plain = tokenizer.encode("a red circle on a blue square", add_bos=True)
    assert plain == tiny.encode("a red circle on a blue square", add_bos=True)  # padding pieces never appear
    assert gpu_check.stand_in_tokenizer(tiny.vocab_size).vocab_size == tiny.vocab_size


def test_quant_skip_reasons_and_argument_checks():
    assert gpu_check.quant_skip_reason(None, CPU_MAP) is None
    if not torch.cuda.is_available():
        assert "CUDA" in gpu_check.quant_skip_reason(4, CPU_MAP)
    assert gpu_check._device_map_arg("llm=cuda:1,vision=cpu") == {"llm": "cuda:1", "vision": "cpu"}
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", "x", "--quant", "3"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", "x", "--device-map", "unet=cpu"])


def test_direct_build_branch_matches_from_preset():
    """The branch that initialises random weights on the target device (used on GPUs) builds what
    SeedX.from_pretrained builds for a preset; ``cpu:0`` sends the tiny preset through it on this machine."""
    args = gpu_check.parse_args(["--preset", "tiny-random", "--device", "cpu", "--out", "x"])
    config = SeedXConfig.from_preset("tiny-random")
    tokenizer = gpu_check.stand_in_tokenizer(config.llm.vocab_size)
    loaded = {}
    for build in ("cpu", "cpu:0"):
        args.build_device = build
        loaded[build] = gpu_check.load_stack(args, config, tokenizer, "seed-x-i", 1, CPU_MAP, torch.float32, None)
    (reference, info_cpu), (direct, info_direct) = loaded["cpu"], loaded["cpu:0"]
    assert info_cpu["build_device"] == "cpu" and info_direct["build_device"] == "cpu:0"
    assert "build_fallback" not in info_direct and info_direct["load_s"] > 0
    expected = dict(reference.parts.lvlms["seed-x-i"].state_dict())
    for name, tensor in direct.parts.lvlms["seed-x-i"].state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert set(direct.parts.detokenizers) == {1}

"""oneDNN linears: same parameters and state dict, F.linear-equal up to fp32 rounding, used only where valid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seedx_agent.errors import ConfigError
from seedx_agent.speed.cpu_linear import (
    OneDNNLinear,
    linear_kernel_of,
    onednn_linear_available,
    resolve_linear_kernel,
    use_linear_kernel,
)

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="this torch build has no oneDNN linear")


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 32, bias=False), nn.LayerNorm(32))


def test_bad_arguments_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="linear_kernel must be one of"):
        use_linear_kernel(_mlp(), "mkl")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="min_weight_elements"):
        use_linear_kernel(_mlp(), "torch", min_weight_elements=-1)
    assert resolve_linear_kernel("torch") == "torch"
    assert resolve_linear_kernel("auto") == ("onednn" if onednn_linear_available() else "torch")


@needs_onednn
@torch.no_grad()
def test_switch_keeps_parameters_and_matches_f_linear() -> None:
    model = _mlp()
    before = {name: tensor.data_ptr() for name, tensor in model.state_dict().items()}
    x = torch.randn(3, 5, 64)
    reference = model(x)
    assert use_linear_kernel(model, "onednn", min_weight_elements=0) == 2
    assert type(model[0]) is OneDNNLinear and type(model[3]) is nn.LayerNorm
    assert isinstance(model[0], nn.Linear) and linear_kernel_of(model) == "onednn"
    assert {name: tensor.data_ptr() for name, tensor in model.state_dict().items()} == before  # no copies
    out = model(x)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    # The oneDNN op really ran: its output equals the op's, which differs from MKL's in the last bits.
    hidden = model[1](torch.ops.mkldnn._linear_pointwise(x, model[0].weight, model[0].bias, "none", [], ""))
    assert torch.equal(
        model[0](x), torch.ops.mkldnn._linear_pointwise(x, model[0].weight, model[0].bias, "none", [], "")
    )
    assert torch.equal(
        model[2](hidden), torch.ops.mkldnn._linear_pointwise(hidden, model[2].weight, None, "none", [], "")
    )
    assert use_linear_kernel(model, "torch") == 0
    assert type(model[0]) is nn.Linear and linear_kernel_of(model) == "torch"
    assert torch.equal(model(x), reference)


@needs_onednn
def test_threshold_leaves_small_layers_alone() -> None:
    model = _mlp()  # weights of 16384 and 8192 elements
    assert use_linear_kernel(model, "onednn", min_weight_elements=10_000) == 1
    assert type(model[0]) is OneDNNLinear and type(model[2]) is nn.Linear
    assert use_linear_kernel(model, "onednn", min_weight_elements=20_000) == 0  # raising it switches back
    assert type(model[0]) is nn.Linear


@needs_onednn
def test_falls_back_to_f_linear_where_onednn_is_not_used() -> None:
    model = _mlp()
    use_linear_kernel(model, "onednn", min_weight_elements=0)
    layer = model[0]
    x = torch.randn(4, 64)
    expected = nn.functional.linear(x, layer.weight, layer.bias)
    # Autograd: training sees exactly F.linear and gets its gradients.
    out = layer(x)
    assert out.requires_grad and torch.equal(out, expected)
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.shape == layer.weight.shape
    with torch.no_grad():
        threads = torch.get_num_threads()
        try:  # a single thread: MKL's GEMV is faster there
            torch.set_num_threads(1)
            assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
        finally:
            torch.set_num_threads(threads)
        half = layer.to(torch.bfloat16)  # other dtypes: F.linear
        xb = x.to(torch.bfloat16)
        assert torch.equal(half(xb), nn.functional.linear(xb, half.weight, half.bias))


@needs_onednn
@torch.no_grad()
def test_greedy_decoding_unchanged_on_a_tiny_llm(tiny_lvlm) -> None:  # type: ignore[no-untyped-def]
    from seedx_agent.pipeline.decoding import GenerationOptions, decode

    lvlm, ids, tokenizer = tiny_lvlm
    prompt = tokenizer.encode("a red circle<img>", add_bos=True)
    embeds = lvlm.inputs_embeds(torch.tensor([prompt]))
    options = GenerationOptions(max_new_tokens=24)
    runs = {}
    try:
        for kernel in ("torch", "onednn"):
            switched = use_linear_kernel(lvlm, kernel, min_weight_elements=0)
            assert (switched > 0) == (kernel == "onednn")
            runs[kernel] = decode(lvlm, ids, inputs_embeds=embeds, last_prompt_token=prompt[-1], options=options)
    finally:
        use_linear_kernel(lvlm, "torch")
    assert runs["onednn"].token_ids == runs["torch"].token_ids
    torch.testing.assert_close(
        runs["onednn"].image_hidden_states[0], runs["torch"].image_hidden_states[0], rtol=1e-4, atol=1e-4
    )


def test_seedx_facade_switches_and_validates() -> None:
    from seedx_agent.model import SeedX

    with pytest.raises(ConfigError, match="linear_kernel"):
        SeedX.from_pretrained("tiny-random", linear_kernel="fast")  # type: ignore[arg-type]
    model = SeedX.from_pretrained("tiny-random", linear_kernel="auto")
    assert all(linear_kernel_of(module) == "torch" for _, module in model.parts.modules())  # tiny: below threshold
    if onednn_linear_available():
        switched = model.set_linear_kernel("onednn", min_weight_elements=0)
        assert switched > 0 and linear_kernel_of(model.parts.lvlms["seed-x-i"]) == "onednn"
    assert model.set_linear_kernel("torch") == 0
    assert all(linear_kernel_of(module) == "torch" for _, module in model.parts.modules())


# ----------------------------------------------------------------------------- "auto": measured, not a fixed default


@pytest.fixture
def fresh_measurements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Empty the per-process measurement cache; record which weight shapes get measured."""
    from seedx_agent.speed import cpu_linear

    monkeypatch.setattr(cpu_linear, "_MEASURED", {})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    return []


def _scripted_timings(monkeypatch, measured, seconds):
    from seedx_agent.speed import cpu_linear

    def fake(weight, **_):
        measured.append(tuple(weight.shape))
        return dict(seconds)

    monkeypatch.setattr(cpu_linear, "measure_linear_kernels", fake)


@pytest.mark.skipif(not onednn_linear_available(), reason="this torch build has no usable oneDNN linear")
@pytest.mark.parametrize(
    ("seconds", "expected"), [({"onednn": 1.0, "torch": 2.0}, "onednn"), ({"onednn": 2.0, "torch": 1.0}, "torch")]
)
def test_auto_keeps_the_kernel_that_measured_faster(monkeypatch, fresh_measurements, seconds, expected):
    from seedx_agent.speed.cpu_linear import linear_kernel_measurements

    _scripted_timings(monkeypatch, fresh_measurements, seconds)
    model = nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 2048), nn.Linear(8, 8))
    switched = use_linear_kernel(model, "auto", min_weight_elements=1 << 20)
    assert linear_kernel_of(model) == expected and switched == (2 if expected == "onednn" else 0)
    assert fresh_measurements == [(2048, 1024)]  # the largest eligible layer, measured once
    use_linear_kernel(nn.Sequential(nn.Linear(1024, 2048)), "auto")  # same shape: the cached verdict
    assert fresh_measurements == [(2048, 1024)]
    assert linear_kernel_measurements()[(2048, 1024, 2)][0] == expected
    # forcing a kernel skips the measurement
    assert use_linear_kernel(nn.Sequential(nn.Linear(1024, 4096)), "onednn") == 1
    assert fresh_measurements == [(2048, 1024)]


@pytest.mark.skipif(not onednn_linear_available(), reason="this torch build has no usable oneDNN linear")
def test_auto_measures_nothing_where_onednn_would_not_run(monkeypatch, fresh_measurements):
    _scripted_timings(monkeypatch, fresh_measurements, {"onednn": 1.0, "torch": 2.0})
    small = nn.Sequential(nn.Linear(64, 64))  # below the size where oneDNN pays: nothing to measure
    assert use_linear_kernel(small, "auto") == 0 and fresh_measurements == []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # one thread: oneDNN is never used
    big = nn.Sequential(nn.Linear(1024, 1024))
    assert use_linear_kernel(big, "auto", min_weight_elements=1) == 0 and fresh_measurements == []


@pytest.mark.skipif(not onednn_linear_available(), reason="this torch build has no usable oneDNN linear")
def test_measure_linear_kernels_times_both_kernels():
    from seedx_agent.speed.cpu_linear import measure_linear_kernels

    seconds = measure_linear_kernels(torch.randn(256, 128), repeats=2)
    assert set(seconds) == {"onednn", "torch"} and all(0 < value < 1 for value in seconds.values())

"""The optimisation loop: schedule, exact resume after a crash, time budget, bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from seedx_agent.errors import ConfigError
from seedx_agent.training.loop import CHECKPOINT_DIR, LoopConfig, checkpoint_step, lr_at, run_loop


class Crash(RuntimeError):
    pass


def make_problem(seed: int = 0) -> tuple[nn.Module, callable]:
    torch.manual_seed(0)
    target = nn.Linear(4, 1)  # the same problem whatever the model's init
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(step)  # the batch is a function of the step
        x = torch.randn(16, 4, generator=g)
        with torch.no_grad():
            y = target(x)
        loss = ((model(x) - y) ** 2).mean()
        return {"loss": loss, "mse": loss.detach()}

    return model, step_fn


def config(**overrides: object) -> LoopConfig:
    base = {"steps": 6, "lr": 1e-2, "warmup_steps": 2, "checkpoint_every_s": 0.0, "log_every": 1}
    return LoopConfig(**{**base, **overrides})


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = LoopConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.05)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.05)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_resume_after_crash_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    model, step_fn = make_problem()
    straight = run_loop(
        "t", tmp_path / "straight", {"m": model}, list(model.parameters()), step_fn, config(), progress=False
    )
    assert straight.finished and straight.step == 6

    crashed_model, crashing_fn = make_problem()

    def dies_at_4(step: int) -> dict[str, torch.Tensor]:
        if step == 4:
            raise Crash("killed")
        return crashing_fn(step)

    with pytest.raises(Crash):
        run_loop(
            "t",
            tmp_path / "crashed",
            {"m": crashed_model},
            list(crashed_model.parameters()),
            dies_at_4,
            config(),
            progress=False,
        )
    assert checkpoint_step(tmp_path / "crashed") == 4

    fresh, fresh_fn = make_problem(seed=123)  # different init: everything must come from the checkpoint
    resumed = run_loop(
        "t", tmp_path / "crashed", {"m": fresh}, list(fresh.parameters()), fresh_fn, config(), progress=False
    )
    assert resumed.finished and resumed.step == 6
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "crashed" / CHECKPOINT_DIR / "weights.safetensors").is_file()
    assert not [p for p in (tmp_path / "crashed").iterdir() if p.name.startswith(".")]  # no partial folders


def test_loss_goes_down_and_is_logged(tmp_path: Path) -> None:
    model, step_fn = make_problem()
    result = run_loop(
        "t", tmp_path, {"m": model}, list(model.parameters()), lambda s: step_fn(0), config(steps=30), progress=False
    )
    losses = [json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 30 and losses[-1] < 0.5 * losses[0]
    assert result.losses["loss"] == losses[-1]


def test_time_budget_stops_with_a_checkpoint_and_resumes(tmp_path: Path) -> None:
    model, step_fn = make_problem()
    first = run_loop(
        "t", tmp_path, {"m": model}, list(model.parameters()), step_fn, config(max_minutes=0.0), progress=False
    )
    assert not first.finished and first.step == 1 and checkpoint_step(tmp_path) == 1
    rest = run_loop("t", tmp_path, {"m": model}, list(model.parameters()), step_fn, config(), progress=False)
    assert rest.finished and rest.step == 6


def test_bad_settings_and_diverging_loss(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="steps"):
        LoopConfig(steps=0)
    with pytest.raises(ConfigError, match="lr"):
        LoopConfig(steps=1, lr=0.0)
    model, _ = make_problem()
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable"):
        run_loop("t", tmp_path, {"f": frozen}, list(frozen.parameters()), lambda s: {}, config(), progress=False)
    nan = lambda s: {"loss": model[0].weight.sum() * float("nan")}  # noqa: E731
    with pytest.raises(FloatingPointError, match="learning rate"):
        run_loop("t", tmp_path / "nan", {"m": model}, list(model.parameters()), nan, config(), progress=False)


def test_corrupt_checkpoint_names_the_fix(tmp_path: Path) -> None:
    model, step_fn = make_problem()
    run_loop("t", tmp_path, {"m": model}, list(model.parameters()), step_fn, config(steps=2), progress=False)
    (tmp_path / CHECKPOINT_DIR / "optimizer.safetensors").write_bytes(b"garbage")
    from seedx_agent.errors import CheckpointError

    with pytest.raises(CheckpointError, match="delete that folder"):
        run_loop("t", tmp_path, {"m": model}, list(model.parameters()), step_fn, config(steps=4), progress=False)

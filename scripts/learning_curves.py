"""Learning curves of the miniature's LLM: one arm's held-out accuracy at log-spaced step counts, in ONE run.

A fresh miniature LVLM is pre-trained (``lvlm_pretrain``, the ``seed-x`` task mixture) on the bundled
model's frozen ViT, as ``scripts/compare_lvlm_pretrain.py`` does, but with a warm-up then a CONSTANT
learning rate, so the model at step 400 is the one a 400-step run would have given (without a cooldown)
and one run serves every step count. At 100, 200, 400, ... steps (and at ``--max-steps``) it scores
held-out teacher-forced exact answers (caption, VQA, grounding; ``compare_lvlm_pretrain.heldout_scores``)
and appends a row to ``OUT/curve.csv``. It checkpoints every two minutes (``LoopConfig`` default) and
resumes when re-run with the same command, skipping the eval points already in the CSV::

    nohup nice -n 19 .venv/bin/python scripts/learning_curves.py lr3e-4_w256_d4_b16 \\
        --out ~/.cache/seedx-agent/runs/curves/lr3e-4_w256_d4_b16 --lr 3e-4 --max-steps 3200 --threads 1 &

``--plot`` merges the CSVs of several arms, draws accuracy against examples seen and against CPU minutes
and fits ``acc = a - b * minutes ** -c`` per arm and task to predict the CPU minutes to 90 %::

    .venv/bin/python scripts/learning_curves.py --plot RUN_DIR1 RUN_DIR2 \\
        --png benchmarks/curves/llm.png --csv benchmarks/curves/llm.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_lvlm_pretrain import SCORED_TASKS, heldout_scores

from seedx_agent.config import SeedXConfig
from seedx_agent.miniature.world_data import LVLM_TASK_WEIGHTS, WorldData
from seedx_agent.pipeline.components import build_components
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.pipeline.vision import QwenViT
from seedx_agent.training.loop import LoopConfig, checkpoint_step
from seedx_agent.training.recipes import _load_module, lvlm_pretrain
from seedx_agent.weights import load_strict, read_state_dict
from seedx_agent.weights.loading import bundled_mini_path

CSV_NAME = "curve.csv"
ARM_FILE = "arm.json"
PROGRESS_FILE = "cpu_time.json"
STAGE_DIR = "lvlm-pretrain"
COLUMNS = ("arm", "step", "examples_seen", "cpu_minutes", "caption", "vqa", "grounding", "t2i_mse")
BAR = 0.9  # the evaluator's bar for caption, VQA and grounding
FIT_TASKS = ("vqa", "grounding")
NOT_REACHED = "not reached within fit"
MIN_FIT_POINTS = 4
EXTRAPOLATION_LIMIT = 100  # predictions beyond 100x the CPU minutes measured are not trusted
# Settings that define the arm: re-running the same folder with other values would mix two runs.
_ARM_KEYS = (
    "preset",
    "vit",
    "width",
    "depth",
    "lr",
    "batch",
    "warmup",
    "grad_clip",
    "eval_n",
    "seed",
    "mixture",
    "style",
)


# ---------------------------------------------------------------------------------------------
# Training one arm
# ---------------------------------------------------------------------------------------------


def eval_points(max_steps: int, first: int = 100) -> list[int]:
    """Log-spaced eval steps ``first, 2 first, 4 first, ...`` below ``max_steps``, then ``max_steps`` itself."""
    if max_steps < 1 or first < 1:
        raise ValueError(f"max_steps and first eval step must be positive, got {max_steps} and {first}")
    points, step = [], first
    while step < max_steps:
        points.append(step)
        step *= 2
    return [*points, max_steps]


def arm_config(preset: str, width: int | None, depth: int | None) -> SeedXConfig:
    """The preset with the LLM's width (hidden size; MLP and resampler sides scaled with it) and depth replaced."""
    data = SeedXConfig.from_preset(preset).model_dump()
    llm, lvlm = data["llm"], data["lvlm"]
    if width is not None:
        llm["intermediate_size"] = round(llm["intermediate_size"] * width / llm["hidden_size"])
        llm["hidden_size"] = width
        lvlm["input_resampler"]["embed_dim"] = width
        lvlm["output_resampler"]["kv_dim"] = width
    if depth is not None:
        llm["num_layers"] = depth
    return SeedXConfig.model_validate(data)


def parse_mixture(text: str | None) -> dict[str, float] | None:
    """``caption=1,vqa=3,...`` -> task weights (None: the stages' default ``LVLM_TASK_WEIGHTS``)."""
    if not text:
        return None
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in LVLM_TASK_WEIGHTS or not value:
            raise SystemExit(f"--mixture: {item!r} is not TASK=WEIGHT with TASK one of {sorted(LVLM_TASK_WEIGHTS)}")
        weights[name.strip()] = float(value)
    if sum(weights.values()) <= 0:
        raise SystemExit("--mixture: the weights must add up to more than 0")
    return weights


def load_vision(vision: QwenViT, source: str) -> None:
    """Load the ViT: ``bundled`` (the bundled miniature's), ``random`` (as built) or a finished 'vit' stage folder."""
    if source == "random":
        return
    if source == "bundled":
        path = bundled_mini_path() / "vision.safetensors"
        load_strict(vision, read_state_dict(path), component=f"vision ({path})")
    else:
        _load_module(vision, Path(source).expanduser(), "vision")


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a curve CSV (empty when the file does not exist)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def append_row(path: Path, row: dict[str, object], columns: Sequence[str] = COLUMNS) -> None:
    """Append one row to a curve CSV, writing the header first if the file is new."""
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _check_arm(out: Path, settings: dict[str, object]) -> None:
    """Record the arm's settings on the first run; refuse to resume a folder trained with other ones."""
    path = out / ARM_FILE
    if path.is_file():
        stored = json.loads(path.read_text())
        # settings added later default to what those arms ran with
        older = {"mixture": None, "style": "seed-x"}
        changed = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k, older.get(k)) != v}
        if changed:
            raise SystemExit(f"{out} holds an arm with other settings (stored, asked): {changed}; use a new --out")
    else:
        path.write_text(json.dumps(settings, indent=2) + "\n")


def train_arm(args: argparse.Namespace) -> list[dict[str, str]]:
    """Train one arm to ``--max-steps``, scoring at every eval point not yet in the CSV; returns the CSV rows."""
    torch.set_num_threads(args.threads)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    settings = {key: getattr(args, key) for key in _ARM_KEYS}
    _check_arm(out, settings)
    csv_path, stage = out / CSV_NAME, out / STAGE_DIR
    done = {int(row["step"]) for row in read_rows(csv_path)}
    progress_step, cpu_s = _read_progress(out)

    config = arm_config(args.preset, args.width, args.depth)
    tokenizer = SeedXTokenizer.tiny()
    parts = build_components(config, tokenizer=tokenizer, variants=("seed-x-i",), stages=(), seed=args.seed)
    load_vision(parts.vision, args.vit)
    lvlm, data = parts.lvlms["seed-x-i"], WorldData(config, tokenizer, seed=args.seed)
    mixture = parse_mixture(args.mixture)
    llm = config.llm
    print(
        f"arm {args.arm}: LLM width {llm.hidden_size}, depth {llm.num_layers}, "
        f"{sum(p.numel() for p in lvlm.parameters()) / 1e6:.2f} M parameters, lr {args.lr}, batch {args.batch}",
        flush=True,
    )
    started, segments = time.monotonic(), 0
    for point in eval_points(args.max_steps, args.first_eval):
        if point in done:
            continue
        reached = checkpoint_step(stage) or 0
        if reached > point:
            print(f"step {point}: checkpoint is already at step {reached}, cannot score it; skipped", flush=True)
            continue
        budget = None
        if args.max_minutes is not None:
            budget = max(0.0, args.max_minutes - (time.monotonic() - started) / 60)
            if budget == 0 and segments:  # the first segment of a call always trains at least one step
                print(f"--max-minutes spent before step {point}; re-run the same command to resume", flush=True)
                return read_rows(csv_path)
        segments += 1
        loop = LoopConfig(
            steps=point,
            lr=args.lr,
            warmup_steps=args.warmup,
            min_lr_ratio=1.0,  # constant after warm-up: every eval point is a finished run of that length
            grad_clip=args.grad_clip,
            seed=args.seed,
            max_minutes=budget,
        )
        cpu_before = time.process_time()
        result = lvlm_pretrain(
            lvlm,
            vision=parts.vision,
            examples=lambda step: data.lvlm_examples(step, args.batch, style=args.style, weights=mixture),
            out_dir=stage,
            loop=loop,
            pad_token_id=tokenizer.pad_token_id,
            progress=False,
        )
        trained = result.step - reached
        if trained > 0 and result.step > progress_step:
            # A run killed between checkpoints redoes some steps: count each step once, at this call's CPU
            # seconds per step.
            cpu_s += (time.process_time() - cpu_before) * (result.step - progress_step) / trained
            progress_step = result.step
            _write_progress(out, progress_step, cpu_s)
        if not result.finished:
            print(f"stopped at step {result.step} (--max-minutes); re-run the same command to resume", flush=True)
            return read_rows(csv_path)
        scores = heldout_scores(lvlm, parts.vision, data, args.eval_n, style=args.style)
        row = {
            "arm": args.arm,
            "step": point,
            "examples_seen": point * args.batch,
            "cpu_minutes": round(cpu_s / 60, 4),
            **{task: round(scores[f"{task}_exact"], 4) for task in SCORED_TASKS},
            "t2i_mse": round(scores["t2i_regression_mse"], 4),
        }
        append_row(csv_path, row)
        done.add(point)
        print(json.dumps({**row, "train_loss": result.losses.get("loss")}), flush=True)
    return read_rows(csv_path)


def _read_progress(out: Path) -> tuple[int, float]:
    """The step the arm's CPU-time count has reached and the training CPU seconds up to it (0, 0 at the start)."""
    path = out / PROGRESS_FILE
    if not path.is_file():
        return 0, 0.0
    state = json.loads(path.read_text())
    return int(state["step"]), float(state["cpu_s"])


def _write_progress(out: Path, step: int, cpu_s: float) -> None:
    """Record the training CPU seconds up to ``step`` (renamed into place, so a kill leaves the old record)."""
    staging = out / f".{PROGRESS_FILE}.partial"
    staging.write_text(json.dumps({"step": step, "cpu_s": round(cpu_s, 3)}) + "\n")
    staging.replace(out / PROGRESS_FILE)


# ---------------------------------------------------------------------------------------------
# Merging, plotting and fitting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """``acc = a - b * t ** -c`` fitted to one arm's points of one task (t in CPU minutes)."""

    a: float
    b: float
    c: float

    def __call__(self, t: float) -> float:
        return self.a - self.b * t**-self.c

    def minutes_to(self, target: float) -> float | None:
        """CPU minutes at which the fitted curve reaches ``target`` (None when its asymptote stays below)."""
        if self.b <= 0 or self.a <= target:
            return None
        return (self.b / (self.a - target)) ** (1 / self.c)


def fit_saturating(minutes: Sequence[float], accuracy: Sequence[float]) -> Fit | None:
    """Least-squares ``a - b t^-c`` with ``0 <= a <= 1`` and ``b > 0``: a grid over ``c``, closed-form ``a``, ``b``
    for each.

    None below ``MIN_FIT_POINTS`` points (three parameters need at least one point more to be a fit), and None when
    no rising curve fits (flat or falling points, e.g. noise around 0 % early in a de-tokenizer's training): such a
    "fit" would predict nothing but its own noise."""
    points = [(t, y) for t, y in zip(minutes, accuracy) if t > 0]
    if len(points) < MIN_FIT_POINTS:
        return None
    best: tuple[float, Fit] | None = None
    for i in range(1, 301):
        c = i / 100
        u = [t**-c for t, _ in points]
        y = [acc for _, acc in points]
        mu, my = sum(u) / len(u), sum(y) / len(y)
        var = sum((x - mu) ** 2 for x in u)
        if var <= 0:
            continue
        slope = sum((x - mu) * (v - my) for x, v in zip(u, y)) / var
        fit = Fit(a=my - slope * mu, b=-slope, c=c)
        if fit.a > 1.0:  # accuracy saturates at most at 1: the constrained optimum then lies on a = 1
            fit = Fit(a=1.0, b=sum(x * (1.0 - v) for x, v in zip(u, y)) / sum(x * x for x in u), c=c)
        if fit.b <= 0 or fit.a < 0:  # not a rising curve towards an accuracy in [0, 1]
            continue
        error = sum((fit(t) - acc) ** 2 for t, acc in points)
        if best is None or error < best[0]:
            best = (error, fit)
    return best[1] if best else None


def merge_arms(folders: Sequence[str | Path]) -> list[dict[str, str]]:
    """The rows of every arm folder's ``curve.csv``, in the order given (a folder may be the CSV itself)."""
    rows: list[dict[str, str]] = []
    for folder in folders:
        path = Path(folder).expanduser()
        path = path if path.suffix == ".csv" else path / CSV_NAME
        if not path.is_file():
            raise SystemExit(f"no curve at {path}")
        rows.extend(read_rows(path))
    return rows


def _by_arm(rows: Sequence[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    arms: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        arms.setdefault(row["arm"], []).append(row)
    return {arm: sorted(points, key=lambda r: int(r["step"])) for arm, points in arms.items()}


def _column(points: Sequence[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in points]


def time_to_bar(minutes: list[float], scores: list[float], bar: float) -> tuple[str, str]:
    """(fitted asymptote, CPU minutes to ``bar``: measured, predicted by the fit, or not reached)."""
    fit = fit_saturating(minutes, scores)
    asymptote = f"{min(fit.a, 1.0):.0%}" if fit else "-"
    hit = next((t for t, score in zip(minutes, scores) if score >= bar), None)
    if hit is not None:
        return asymptote, f"reached at {hit:.1f}"
    predicted = fit.minutes_to(bar) if fit else None
    limit = EXTRAPOLATION_LIMIT * minutes[-1]
    if predicted is None:
        return asymptote, NOT_REACHED
    if predicted > limit:
        return asymptote, f"{NOT_REACHED} (> {limit:,.0f})"
    return asymptote, f"{predicted:,.0f} ({predicted / 60:,.1f} h)"


def prediction_table(rows: Sequence[dict[str, str]], target: float = BAR) -> str:
    """Markdown table: per arm, the last point and the predicted CPU minutes to ``target`` VQA and grounding."""
    head = ["arm", "steps", "CPU min"]
    for task in FIT_TASKS:
        head += [f"{task} last", f"{task} asymptote", f"CPU min to {target:.0%} {task}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, points in _by_arm(rows).items():
        minutes = _column(points, "cpu_minutes")
        cells = [arm, points[-1]["step"], f"{minutes[-1]:.1f}"]
        for task in FIT_TASKS:
            accuracy = _column(points, task)
            cells += [f"{accuracy[-1]:.0%}", *time_to_bar(minutes, accuracy, target)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, str]], path: Path, columns: Sequence[str] = COLUMNS) -> None:
    """Write the merged rows of all arms to one CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(
    rows: Sequence[dict[str, str]],
    path: Path,
    *,
    scores: Sequence[tuple[str, str]] = tuple((task, task) for task in SCORED_TASKS),
    bars: Mapping[str, float] | None = None,
    ylabel: str = "{task} held-out exact",
    title: str = "Miniature LLM pre-training: held-out teacher-forced exact answers",
) -> None:
    """Each score (CSV column, panel title) against examples seen (top) and CPU minutes with the fitted curves
    (bottom); ``bars`` (default ``BAR`` for every score) is drawn as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    figure, axes = plt.subplots(2, len(scores), figsize=(5 * len(scores), 8), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (arm, points) in enumerate(_by_arm(rows).items()):
        colour = colours[index % len(colours)]
        examples, minutes = _column(points, "examples_seen"), _column(points, "cpu_minutes")
        for column, (key, _) in enumerate(scores):
            values = _column(points, key)
            axes[0][column].plot(examples, values, "o-", color=colour, label=arm)
            axes[1][column].plot(minutes, values, "o-", color=colour, label=arm)
            fit = fit_saturating(minutes, values)
            if fit is not None:
                end = max(minutes) * 4
                grid = [min(minutes) * (end / min(minutes)) ** (k / 60) for k in range(61)]
                fitted = [min(1.0, max(0.0, fit(t))) for t in grid]
                axes[1][column].plot(grid, fitted, "--", color=colour, alpha=0.6)
    for row, xlabel in enumerate(("examples seen", "CPU minutes (fit dashed, extrapolated 4x)")):
        for column, (key, task) in enumerate(scores):
            axis = axes[row][column]
            axis.axhline((bars or {}).get(key, BAR), color="grey", linestyle=":", linewidth=1)
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: 2x10^3 3x10^3 ... overlap
            axis.set_ylim(-0.02, 1.02)
            axis.set_xlabel(xlabel)
            axis.set_ylabel(ylabel.format(task=task))
            axis.set_title(task)
            axis.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_mode(args: argparse.Namespace) -> str:
    """Merge the arms' CSVs, write the merged CSV and the PNG, and return the prediction table."""
    rows = merge_arms(args.plot)
    if args.csv:
        write_csv(rows, Path(args.csv))
    if args.png:
        plot_curves(rows, Path(args.png))
    table = prediction_table(rows)
    print(table)
    return table


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def arm_parser(
    description: str, *, out_help: str, max_steps: int, first_eval: int, eval_n: int
) -> argparse.ArgumentParser:
    """The flags every curve script shares (this one and ``detok_curves.py``): the arm, its folder, the optimiser,
    the eval schedule, the run budget and ``--plot``; each script adds its own and passes its defaults."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("arm", nargs="?", help="name of the arm (the CSV's 'arm' column)")
    parser.add_argument("--out", help=out_help)
    parser.add_argument("--preset", default="mini", help="config preset (tests: tiny-random)")
    parser.add_argument("--vit", default="bundled", help="'bundled', 'random', or a finished 'vit' stage folder")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak (= constant after warm-up) learning rate")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=max_steps)
    parser.add_argument("--first-eval", type=int, default=first_eval, help="first eval step; then doubling")
    parser.add_argument("--eval-n", type=int, default=eval_n, help="held-out samples per scored task")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (checkpointed) after this wall time")
    parser.add_argument("--plot", nargs="+", metavar="DIR", help="merge these arms' folders (or CSVs) and plot")
    parser.add_argument("--png", help="--plot: the figure to write")
    parser.add_argument("--csv", help="--plot: the merged CSV to write")
    return parser


def parse_arm_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None, usage: str) -> argparse.Namespace:
    """Parse; without ``--plot`` an arm name and ``--out`` are required (``usage`` says how to call)."""
    args = parser.parse_args(argv)
    if args.plot is None and (args.arm is None or args.out is None):
        parser.error(usage)
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (one arm to train, or ``--plot`` folders to merge)."""
    parser = arm_parser(
        __doc__.split("\n")[0],
        out_help="folder of this arm (checkpoint, curve.csv); outside the work tree",
        max_steps=3200,
        first_eval=100,
        eval_n=100,
    )
    parser.add_argument("--width", type=int, default=None, help="LLM hidden size (default: the preset's)")
    parser.add_argument("--depth", type=int, default=None, help="LLM layers (default: the preset's)")
    parser.add_argument(
        "--mixture", default=None, help="task weights, e.g. caption=1,vqa=3,grounding=3,text_to_image=1,edit=1"
    )
    parser.add_argument(
        "--style",
        default="seed-x",
        choices=("seed-x", "seed-x-i"),
        help="prompt style trained and scored: seed-x (pre-training, then SFT) or seed-x-i (one instruction stage)",
    )
    return parse_arm_args(parser, argv, "train an arm with ARM_NAME --out DIR, or merge arms with --plot DIR ...")


def main(argv: Sequence[str] | None = None) -> None:
    """Train one arm (resuming), or with ``--plot`` merge, draw and fit several."""
    args = parse_args(argv)
    if args.plot is not None:
        plot_mode(args)
    else:
        train_arm(args)


if __name__ == "__main__":
    main()

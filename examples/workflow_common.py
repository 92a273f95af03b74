"""What examples/story.py and examples/slides.py share: the model/planner/output flags and opening the engine,
the image memory and the planner in one ``with`` block."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from seedx_agent.graphs.runtime import default_planner, load_engine, load_planner, open_memory
from seedx_agent.memory import ImageMemory

from seedx_agent import SeedXEngine


def workflow_parser(doc: str) -> argparse.ArgumentParser:
    """A parser with --model, --planner, --num-inference-steps and --out; the example adds its own flags."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--model", default="mini", help="mini (the bundled trained miniature), tiny-random (random weights) or a folder"
    )
    parser.add_argument("--planner", default=None, help="seedx | world | module:attr (default: by model)")
    parser.add_argument(
        "--num-inference-steps", type=int, default=None, help="diffusion steps per picture (model default)"
    )
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    return parser


@contextmanager
def open_workflow(args: argparse.Namespace, prefix: str) -> Iterator[tuple[SeedXEngine, ImageMemory, Any, Path]]:
    """The engine, an image memory inside the output folder, the planner and that folder."""
    out = Path(args.out or tempfile.mkdtemp(prefix=prefix))
    engine = load_engine(args.model)
    with open_memory(out / "memory", engine) as memory:
        yield engine, memory, load_planner(args.planner or default_planner(args.model), engine, memory), out

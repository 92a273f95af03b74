"""``seedx-agent ui``: the web page (``seedx_agent.serving.ui``, Gradio) over the chat agent, story and slides.

``register(subparsers)`` adds the sub-command; Gradio is imported only when it runs, and the cheap arguments
(model spec, folders, planner, host and port) are checked before the model loads. The model and the memory
load once, then the page is served until interrupted.
"""

from __future__ import annotations

import argparse
import signal
import socket
from typing import Any

__all__ = ["DEFAULT_OUT", "DEFAULT_PORT", "check_ui_args", "cmd_ui", "register"]

DEFAULT_PORT = 7860
DEFAULT_OUT = "outputs/ui"
_DEFAULT_MEMORY = "~/.cache/seedx-agent/memory"  # same as seedx_agent.graphs.runtime.DEFAULT_MEMORY_DIR


def register(subparsers: Any) -> None:
    """Add ``ui`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from seedx_agent.cli.chat import MODEL_HELP, add_chroma_flag, add_steps_flag

    ui = subparsers.add_parser(
        "ui",
        help="serve a web page: chat about pictures (boxes drawn), generate and edit, stories and slides",
        description="A local web page (Gradio): a multimodal chat with the SEED-X agent (upload or paste a picture, "
        "ask; boxes the model finds are drawn on it; new pictures inline; the memory's recent pictures to reuse), "
        "a story tab (premise -> illustrated beats -> storyboard.zip) and a slides tab (topic -> previews -> "
        ".pptx). Needs the ui extra: pip install 'seedx-agent[ui]'.",
    )
    ui.add_argument("--model", default="mini", help=MODEL_HELP)
    add_steps_flag(ui)
    ui.add_argument("--memory", default=_DEFAULT_MEMORY, help=f"image memory folder (default {_DEFAULT_MEMORY})")
    add_chroma_flag(ui)
    ui.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"folder of the page's files: display pictures, stories, decks (default {DEFAULT_OUT})",
    )
    ui.add_argument(
        "--planner",
        default=None,
        help="who plans stories and slides: seedx (ChatSeedX on --model), world (the miniature's plug-in) or "
        "module:attr (an importable chat model or factory); default: world for mini/tiny-random, else seedx",
    )
    ui.add_argument(
        "--namespace", default="user:local/ui", help="memory namespace of the chat's pictures (default user:local/ui)"
    )
    ui.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine)")
    ui.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    ui.add_argument("--quiet", action="store_true", help="no start-up lines from Gradio")
    ui.set_defaults(func=cmd_ui)


def check_ui_args(args: argparse.Namespace) -> None:
    """The cheap checks, before Gradio is imported or the model loads (each failure is one ``ConfigError``)."""
    from seedx_agent import ConfigError
    from seedx_agent.cli.chat import (
        check_chroma,
        check_model,
        check_namespace,
        check_output_folder,
        check_planner,
        check_text,
    )

    check_model(args.model)
    check_output_folder(args.memory, "--memory")
    check_chroma(args.chroma)
    check_output_folder(args.out, "--out")
    check_planner(args.planner)
    check_namespace(args.namespace)
    check_text(args.host, "--host")
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be in [1, 65535], got {args.port}")
    try:
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((args.host, args.port))
    except OSError as error:
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port} ({error.strerror or error}); pick another --port or --host"
        ) from None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_ui(args: argparse.Namespace) -> int:
    """Check the arguments, load the model and the memory, and serve the page until interrupted."""
    check_ui_args(args)
    try:
        import gradio  # noqa: F401

        from seedx_agent.serving.ui import build_ui, launch
    except ImportError as error:
        from seedx_agent import DependencyMissingError

        raise DependencyMissingError(
            f"seedx-agent ui needs Gradio ({error}); install it with: pip install 'seedx-agent[ui]'"
        ) from error
    from seedx_agent.graphs.runtime import load_engine, open_memory

    engine = load_engine(args.model)
    with open_memory(args.memory, engine, chroma=args.chroma) as memory:
        blocks = build_ui(
            engine,
            memory,
            out_dir=args.out,
            model=args.model,
            planner=args.planner,
            namespace=args.namespace,
            num_inference_steps=args.num_inference_steps,
        )
        url = launch(blocks, host=args.host, port=args.port, block=False, quiet=args.quiet)
        print(f"seedx-agent ui: serving {url} (model {args.model}); Ctrl+C stops it", flush=True)
        previous = signal.signal(signal.SIGTERM, _interrupt)  # a terminate closes the memory like Ctrl+C
        try:
            blocks.block_thread()
        finally:
            signal.signal(signal.SIGTERM, previous)
            blocks.close()
    return 0

"""``seedx-agent``: the command line, the top floor and the only product code that wires in the plug-ins
(the miniature and the training code). ``main`` parses and runs a command; each subcommand module registers its
parser and imports what it needs (torch, LangGraph, FastAPI, Gradio) only when it runs."""

from __future__ import annotations

from seedx_agent.cli.main import main

__all__ = ["main"]

"""``seedx-agent chat | refine | memory``: the agent graphs and the image memory from the command line.

``register(subparsers)`` adds the three subcommands to an ``argparse`` sub-parser set (the main CLI calls it);
``main(argv)`` runs them stand-alone. Heavy imports (torch, LangGraph, chromadb) happen inside the commands, so
registering them costs nothing. ``--model`` is a spec for ``SeedX.load`` (``mini``, ``tiny-random`` or a folder);
``mini`` falls back to ``tiny-random`` with a warning while the miniature's weights are not bundled.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "cmd_chat", "cmd_memory", "cmd_refine", "main", "register"]

logger = logging.getLogger(__name__)

_DEFAULT_MEMORY = "~/.cache/seedx-agent/memory"  # same as seedx_agent.graphs.runtime.DEFAULT_MEMORY_DIR


def _add_memory_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory", default=_DEFAULT_MEMORY, help=f"image memory folder (default {_DEFAULT_MEMORY})")


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mini", help="mini | tiny-random | checkpoint folder (default mini)")
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps for generation/editing")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def register(subparsers: Any) -> None:
    """Add ``chat``, ``refine`` and ``memory`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    chat = subparsers.add_parser("chat", help="talk to the SEED-X agent (REPL, or --script for a batch)")
    _add_model_flags(chat)
    _add_memory_flag(chat)
    chat.add_argument("--out", default=None, help="write transcript.json and every image of the conversation here")
    chat.add_argument(
        "--script",
        default=None,
        help="JSON list of user inputs replayed non-interactively; besides messages, '/add PATH' stores an image "
        "(its id is attached to the next message) and '/approve' or '/reject REASON' answer a pending edit review",
    )
    chat.add_argument("--approve-edits", action="store_true", help="ask before every edit_image call")
    chat.add_argument(
        "--planner-script",
        default=None,
        help="JSON list of AI turns ({'content', 'tool_calls'}) replayed by ScriptedPlanner instead of ChatSeedX",
    )
    chat.add_argument("--namespace", default="user:local/chat", help="memory namespace of this conversation")
    chat.add_argument("--thread", default=None, help="thread id to continue (with --checkpoints)")
    chat.add_argument("--checkpoints", default=None, help="SQLite file keeping threads (default: in memory only)")
    chat.set_defaults(func=cmd_chat)

    refine = subparsers.add_parser("refine", help="generate, verify and edit until the picture matches")
    _add_model_flags(refine)
    _add_memory_flag(refine)
    refine.add_argument("--prompt", required=True, help="e.g. 'a red circle at the top left'")
    refine.add_argument("--rounds", type=int, default=3, help="at most this many edits (default 3)")
    refine.add_argument("--seed", type=int, default=0)
    refine.add_argument("--namespace", default="refine", help="memory namespace of the versions")
    refine.add_argument("--out", default="outputs/refine", help="folder for every version's PNG and report.json")
    refine.set_defaults(func=cmd_refine)

    memory = subparsers.add_parser("memory", help="list, search, show, export or delete stored images")
    _add_memory_flag(memory)
    actions = memory.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="records, oldest first")
    listing.add_argument("--namespace", default=None)
    listing.add_argument("--kind", choices=["input", "generated", "edited"], default=None)
    listing.add_argument("--limit", type=int, default=None)
    search = actions.add_parser("search", help="text search over prompts and captions")
    search.add_argument("query")
    search.add_argument("--k", type=int, default=5)
    search.add_argument("--namespace", default=None)
    show = actions.add_parser("show", help="one record with its lineage and children")
    show.add_argument("image_id")
    export = actions.add_parser("export", help="write PNG + record JSON of images")
    export.add_argument("image_ids", nargs="+")
    export.add_argument("--out", required=True, help="destination folder")
    delete = actions.add_parser("delete", help="remove records (files go when no record uses them)")
    delete.add_argument("image_ids", nargs="+")
    memory.set_defaults(func=cmd_memory)


def build_parser() -> argparse.ArgumentParser:
    """A parser with just these subcommands (``python -m seedx_agent.graphs.cli_chat``)."""
    parser = argparse.ArgumentParser(prog="seedx-agent", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; library errors print one line and return 2, like the main CLI."""
    from seedx_agent.errors import SeedXError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except SeedXError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------- chat


def _read_json_list(path: str, what: str) -> list[Any]:
    from seedx_agent.errors import ConfigError

    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{what} {path!r} is not a readable JSON file: {error}") from error
    if not isinstance(items, list):
        raise ConfigError(f"{what} {path!r} must hold a JSON list, got {type(items).__name__}")
    return items


def _script_inputs(path: str) -> Iterator[str]:
    from seedx_agent.errors import ConfigError

    for index, item in enumerate(_read_json_list(path, "chat script")):
        if not isinstance(item, str):
            raise ConfigError(f"chat script item {index} must be a string (a message or a /command), got {item!r}")
        yield item


def _interactive_inputs() -> Iterator[str]:
    while True:
        try:
            yield input("you> ")
        except EOFError:
            return


def _progress_printer(quiet: bool) -> Callable[[dict[str, Any]], None]:
    def show(event: dict[str, Any]) -> None:
        if quiet:
            return
        details = ", ".join(f"{key}={value}" for key, value in event.items() if key != "event")
        print(f"  [{event.get('event')}] {details}", file=sys.stderr)

    return show


def cmd_chat(args: argparse.Namespace) -> int:
    """Chat with the agent; every turn runs with ``durability="sync"``, so a thread survives a crash."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langgraph.types import Command
    from seedx_agent.graphs.chat_agent import create_chat_agent, seedx_agent_options, seedx_planner
    from seedx_agent.graphs.runtime import load_engine, open_memory
    from seedx_agent.graphs.scripted import ScriptedPlanner
    from seedx_agent.tools import make_seedx_tools

    from seedx_agent.errors import ConfigError

    engine = load_engine(args.model)
    show = _progress_printer(args.quiet)
    with open_memory(args.memory, engine) as memory:
        options: dict[str, Any] = {}
        if args.planner_script:
            planner = ScriptedPlanner.from_json(args.planner_script)
        else:
            planner = seedx_planner(engine, memory, args.namespace)
            options = seedx_agent_options(engine)
        tools = make_seedx_tools(engine, memory, namespace=args.namespace, default_steps=args.steps)
        saver_context = _checkpointer(args.checkpoints)
        with saver_context as checkpointer:
            graph = create_chat_agent(
                planner, tools, checkpointer=checkpointer, approve_edits=args.approve_edits, **options
            )
            config = {"configurable": {"thread_id": args.thread or uuid.uuid4().hex}}
            inputs = _script_inputs(args.script) if args.script else _interactive_inputs()
            pending: Any = None  # the interrupt value of an edit waiting for review
            attached: list[str] = []  # ids stored with /add, named in the next user message

            def run(graph_input: Any) -> Any:
                for mode, chunk in graph.stream(
                    graph_input, config, stream_mode=["custom", "updates"], durability="sync"
                ):
                    if mode == "custom":
                        show(chunk)
                state = graph.get_state(config)
                if state.interrupts:
                    request = state.interrupts[0].value
                    print(f"review> {request['tool']} {json.dumps(request['args'])}: /approve or /reject REASON")
                    return request
                final = state.values["messages"][-1]
                if isinstance(final, AIMessage):
                    print(f"assistant> {final.content}")
                return None

            for line in inputs:
                text = line.strip()
                if text in {"/quit", "/exit"}:
                    break
                if text.startswith("/add "):
                    record = memory.add(text[5:].strip(), kind="input", namespace=args.namespace)
                    attached.append(record.id)
                    print(f"stored {record.id} ({record.width}x{record.height}); it is attached to your next message")
                elif text == "/approve" or text.startswith("/reject"):
                    if pending is None:
                        raise ConfigError(f"{text!r}: no edit is waiting for review")
                    decision = {"approved": text == "/approve", "reason": text[len("/reject") :].strip()}
                    pending = run(Command(resume=decision))
                elif pending is not None:
                    raise ConfigError(f"an edit is waiting for review; answer /approve or /reject REASON, not {text!r}")
                elif text:
                    if attached:
                        text += "\n(attached images: " + ", ".join(attached) + ")"
                        attached.clear()
                    pending = run({"messages": [HumanMessage(text)]})
            if pending is not None:
                raise ConfigError("the input ended while an edit was waiting for review; add /approve or /reject")
            if args.out:
                messages = graph.get_state(config).values.get("messages", [])
                _write_transcript(Path(args.out), messages, memory, ToolMessage)
    return 0


class _NullContext:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: object) -> None:
        return None


def _checkpointer(path: str | None) -> Any:
    """A context manager giving a SqliteSaver on ``path``, or an InMemorySaver when no path is given."""
    if path is None:
        from langgraph.checkpoint.memory import InMemorySaver

        return _NullContext(InMemorySaver())
    from langgraph.checkpoint.sqlite import SqliteSaver

    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return SqliteSaver.from_conn_string(str(Path(path).expanduser()))


def _write_transcript(out: Path, messages: list[Any], memory: Any, tool_message_type: type) -> None:
    out.mkdir(parents=True, exist_ok=True)
    image_ids: list[str] = []
    transcript = []
    for message in messages:
        entry: dict[str, Any] = {"role": message.type, "content": message.content}
        if getattr(message, "tool_calls", None):
            entry["tool_calls"] = [{"name": c["name"], "args": c["args"], "id": c["id"]} for c in message.tool_calls]
        if isinstance(message, tool_message_type):
            entry.update(name=message.name, status=message.status, artifact=message.artifact)
            artifact = message.artifact if isinstance(message.artifact, dict) else {}
            for key in ("image_id", "annotated_image_id"):
                if isinstance(artifact.get(key), str) and artifact[key] not in image_ids:
                    image_ids.append(artifact[key])
        transcript.append(entry)
    (out / "transcript.json").write_text(json.dumps(transcript, indent=2, default=str) + "\n", encoding="utf-8")
    for image_id in image_ids:
        memory.load(image_id).save(out / f"{image_id}.png")


# ---------------------------------------------------------------------------------------------- refine


def cmd_refine(args: argparse.Namespace) -> int:
    """Run the refine loop once; write every version as PNG and report.json into ``--out``."""
    from seedx_agent.graphs.refine import create_refine_graph
    from seedx_agent.graphs.runtime import load_engine, open_memory
    from tqdm.auto import tqdm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine = load_engine(args.model)
    with open_memory(args.memory, engine) as memory:
        graph = create_refine_graph(
            engine, memory, max_rounds=args.rounds, namespace=args.namespace, num_inference_steps=args.steps
        )
        final: dict[str, Any] = {}
        with tqdm(total=2 + 2 * args.rounds, desc="refine", unit="step", disable=args.quiet) as bar:
            for mode, chunk in graph.stream(
                {"request": args.prompt, "seed": args.seed}, stream_mode=["custom", "values"]
            ):
                if mode == "values":
                    final = chunk
                elif chunk.get("event", "").endswith("_end"):
                    bar.update(1)
                    bar.set_postfix_str(chunk["event"].removesuffix("_end"))
        versions = []
        for index, version in enumerate(final["versions"]):
            name = f"{index:02d}_{version['operation']}_{version['image_id']}.png"
            memory.load(version["image_id"]).save(out / name)
            versions.append({**version, "file": name})
        lineage = [record.id for record in memory.lineage(final["image_id"])]
        report = {
            "request": args.prompt,
            "model": args.model,
            "model_config": engine.model.config.name,
            "objects": final["objects"],
            "verified": final["verified"],
            "rounds": final["round"],
            "final_image_id": final["image_id"],
            "lineage": lineage,
            "versions": versions,
            "verdicts": final["verdicts"],
        }
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    state = "verified" if report["verified"] else f"not verified after {report['rounds']} edit(s)"
    print(f"{state}; {len(versions)} version(s) in {out}")
    return 0


# ---------------------------------------------------------------------------------------------- memory


def _no_image_embedder(images: list[Any]) -> Any:
    from seedx_agent.errors import CapabilityMissingError

    raise CapabilityMissingError(
        "`seedx-agent memory` runs without a model, so it cannot embed new images; use chat or refine to add images"
    )


def cmd_memory(args: argparse.Namespace) -> int:
    """Inspect or prune an image memory folder without loading a model."""
    from seedx_agent.memory import ImageMemory

    from seedx_agent.errors import ConfigError

    root = Path(args.memory).expanduser()
    if not root.is_dir():
        raise ConfigError(f"no image memory at {str(root)!r}; pass --memory DIR of an existing memory")
    with ImageMemory.open(root, image_embedder=_no_image_embedder) as memory:
        if args.action == "list":
            where = {"kind": args.kind} if args.kind else None
            for record in memory.find(where, namespace=args.namespace, limit=args.limit):
                print(_record_line(record))
        elif args.action == "search":
            for hit in memory.search_text(args.query, k=args.k, namespace=args.namespace):
                print(f"{hit.score:.3f} {_record_line(hit.record)}")
        elif args.action == "show":
            record = memory.get(args.image_id)
            shown = {
                "record": record.model_dump(mode="json"),
                "lineage": [item.id for item in memory.lineage(args.image_id)],
                "children": [item.id for item in memory.children(args.image_id)],
            }
            print(json.dumps(shown, indent=2))
        elif args.action == "export":
            _export(memory, args.image_ids, Path(args.out))
        elif args.action == "delete":
            for image_id in args.image_ids:
                memory.get(image_id)  # check them all before deleting any
            for image_id in args.image_ids:
                memory.delete(image_id)
                print(f"deleted {image_id}")
    return 0


def _record_line(record: Any) -> str:
    text = record.prompt or record.caption or ""
    parent = f" <- {record.parent_id} ({record.operation})" if record.parent_id else ""
    return f"{record.id} {record.kind:9} {record.width}x{record.height} {record.namespace} {text!r}{parent}"


def _export(memory: Any, image_ids: list[str], out: Path) -> None:
    from tqdm.auto import tqdm

    records = [memory.get(image_id) for image_id in image_ids]
    out.mkdir(parents=True, exist_ok=True)
    for record in tqdm(records, desc="export", unit="image", disable=len(records) < 10):
        memory.load(record.id).save(out / f"{record.id}.png")
        (out / f"{record.id}.json").write_text(json.dumps(record.model_dump(mode="json"), indent=2) + "\n")
    print(f"exported {len(records)} image(s) to {out}")


if __name__ == "__main__":
    sys.exit(main())

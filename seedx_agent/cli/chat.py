"""``seedx-agent chat | memory``: the agent graphs and the image memory from the command line.

``register(subparsers)`` adds the subcommands to an ``argparse`` sub-parser set (the main CLI calls it);
``main(argv)`` runs them stand-alone. Heavy imports (torch, LangGraph, chromadb) happen inside the commands, so
registering them costs nothing. ``--model`` is a spec for ``SeedX.from_pretrained`` (``mini``, ``tiny-random``
or a folder); ``mini`` falls back to ``tiny-random`` with a warning while the miniature's weights are not bundled.

The argument helpers at the top (``positive_int``, ``add_steps_flag``, the ``check_*`` functions) are shared by
every subcommand: cheap arguments are checked before any model loads, and a bad one is one ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from seedx_agent.protocol.tool_calls import IMAGE_ID_RE

__all__ = [
    "MODEL_HELP",
    "add_steps_flag",
    "add_verbosity_flag",
    "build_parser",
    "check_model",
    "check_namespace",
    "check_output_folder",
    "check_text",
    "cmd_chat",
    "cmd_memory",
    "main",
    "non_negative_int",
    "positive_int",
    "register",
    "run_command",
    "setup_logging",
]

logger = logging.getLogger(__name__)

_DEFAULT_MEMORY = "~/.cache/seedx-agent/memory"  # same as seedx_agent.graphs.runtime.DEFAULT_MEMORY_DIR
_DEFAULT_PICTURES = "outputs/chat"  # where chat writes new pictures when --out is not given


# ---------------------------------------------------------------------------------------------- shared arguments

MODEL_HELP = (
    "mini (the bundled trained miniature), a random-weight preset such as tiny-random, or a checkpoint folder "
    "(default mini)"
)
STEPS_HELP = "diffusion steps of the de-tokenizer per picture (default: the model's)"
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def positive_int(text: str) -> int:
    """``argparse`` type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """``argparse`` type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def add_steps_flag(parser: argparse.ArgumentParser, *, steps_alias: bool = True) -> None:
    """``--num-inference-steps N`` (diffusion steps), with ``--steps`` as its short alias unless ``steps_alias``
    is False (``story``, where ``--steps`` is the old name of ``--beats``)."""
    flags = ["--num-inference-steps", "--steps"] if steps_alias else ["--num-inference-steps"]
    parser.add_argument(
        *flags, dest="num_inference_steps", type=positive_int, default=None, metavar="N", help=STEPS_HELP
    )


def add_verbosity_flag(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``-v`` (INFO log lines) / ``-vv`` (DEBUG); warnings only by default. Sub-commands accept it too, without
    resetting a ``-v`` given before the sub-command's name."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if top else argparse.SUPPRESS,
        help="log more: -v info lines (loading times, stored images), -vv debug (default: warnings only)",
    )


def setup_logging(verbosity: int) -> None:
    """Warnings only by default, INFO with ``-v``, DEBUG with ``-vv``."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format=LOG_FORMAT)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed sub-command; a library or file-system error is one ``error: ...`` line and exit code 2."""
    from seedx_agent.errors import SeedXError

    try:
        return int(args.func(args))
    except (SeedXError, OSError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2


def _config_error(message: str) -> Exception:
    from seedx_agent.errors import ConfigError

    return ConfigError(message)


def check_text(text: str, what: str) -> str:
    """``text`` when it can be encoded as UTF-8 (a terminal can hand over lone surrogates), else a ConfigError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = text[error.start : error.end]
        raise _config_error(
            f"{what} holds characters that are not valid UTF-8 ({bad!r} at position {error.start})"
        ) from None
    return text


def check_namespace(namespace: str | None, flag: str = "--namespace") -> str | None:
    """``namespace`` when it is well formed (the memory's own rule), before any model loads."""
    if namespace is None:
        return None
    from seedx_agent.memory.records import validate_namespace

    check_text(namespace, flag)
    return validate_namespace(namespace, argument=flag)


def check_model(spec: str | Path, flag: str = "--model") -> None:
    """A ConfigError now, before loading, when ``spec`` is neither ``mini``, a preset nor an existing path."""
    from seedx_agent.config import PRESETS

    if str(spec) == "mini" or str(spec) in PRESETS:
        return
    check_text(str(spec), flag)
    if not Path(spec).exists():
        random_presets = ", ".join(sorted(name for name in PRESETS if name != "mini"))
        raise _config_error(
            f"{flag} {str(spec)!r} does not exist: pass an existing checkpoint folder, 'mini' (the bundled trained "
            f"miniature) or a preset with random weights ({random_presets})"
        )


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot serve as an output folder, or None. Folders made to find out are removed again."""
    if folder.exists():
        if not folder.is_dir():
            return "is a file, not a folder"
        return None if os.access(folder, os.W_OK | os.X_OK) else "is not writable"
    created: list[Path] = []
    try:
        for parent in [*reversed(folder.parents), folder]:
            if parent.is_dir():
                continue
            if parent.exists():
                return f"cannot be created: {str(parent)!r} is a file"
            parent.mkdir()
            created.append(parent)
    except OSError as error:
        return f"cannot be created as a folder: {error.strerror or type(error).__name__}"
    finally:
        for made in reversed(created):
            try:
                made.rmdir()
            except OSError:
                pass
    return None


CHROMA_HELP = (
    "chroma server HOST:PORT[/PREFIX] of a memory shared with other processes, e.g. a server beside this command "
    "(shared mode; default: $SEEDX_CHROMA if set, else a memory of this process alone)"
)


def add_chroma_flag(parser: argparse.ArgumentParser) -> None:
    """``--chroma HOST:PORT``: open the image memory in shared mode on that chroma server."""
    parser.add_argument("--chroma", default=None, metavar="HOST:PORT", help=CHROMA_HELP)


def check_chroma(address: str | None) -> None:
    """A malformed ``--chroma`` address fails here, before any model loads (``InvalidMemoryRequestError``)."""
    if address is not None:
        from seedx_agent.memory import parse_chroma_address

        parse_chroma_address(address)


def check_output_folder(path: str | Path, flag: str) -> Path:
    """``path`` (``~`` expanded) when it is a folder or can be created as one, else a ConfigError naming ``flag``.

    Run before any model loads; nothing is left behind (folders made to find out are removed again)."""
    check_text(str(path), flag)
    folder = Path(path).expanduser()
    problem = _folder_problem(folder)
    if problem:
        raise _config_error(f"{flag} {str(path)!r} {problem}")
    return folder


def check_file_folder(path: str | Path, flag: str) -> Path:
    """For a file to be written at ``path``: not a folder, and its folder exists or can be created."""
    check_text(str(path), flag)
    file = Path(path).expanduser()
    if file.is_dir():
        raise _config_error(f"{flag} {str(path)!r} is a folder, not a file")
    problem = _folder_problem(file.parent)
    if problem:
        raise _config_error(f"{flag} {str(path)!r}: its folder {str(file.parent)!r} {problem}")
    return file


def check_planner(spec: str | None) -> None:
    """A ``module:attr`` planner must name a module that exists (other names are checked when loaded)."""
    if spec is None or ":" not in spec:
        return
    import importlib.util

    module_name, _, attr = spec.partition(":")
    try:
        found = bool(module_name) and bool(attr) and importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise _config_error(
            f"--planner {spec!r}: no importable module {module_name!r}; use 'seedx', 'world' or 'module:attr' "
            "naming an importable chat model (or a factory returning one)"
        )


def _add_memory_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory", default=_DEFAULT_MEMORY, help=f"image memory folder (default {_DEFAULT_MEMORY})")
    add_chroma_flag(parser)


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mini", help=MODEL_HELP)
    add_steps_flag(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def register(subparsers: Any) -> None:
    """Add ``chat`` and ``memory`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    chat = subparsers.add_parser("chat", help="talk to the SEED-X agent (REPL, or --script for a batch)")
    _add_model_flags(chat)
    _add_memory_flag(chat)
    chat.add_argument(
        "--out",
        default=None,
        help="write transcript.json and every image of the conversation here (without it, new pictures go to "
        f"{_DEFAULT_PICTURES}/)",
    )
    chat.add_argument(
        "--script",
        default=None,
        help="JSON list of user inputs replayed non-interactively; besides messages, '/add PATH' stores an image "
        "(its id is attached to the next message) and '/approve' or '/reject REASON' answer a pending edit review. "
        "In messages, #N names the picture the chat printed with that handle",
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

    memory = subparsers.add_parser("memory", help="list, search, show, export or delete stored images")
    _add_memory_flag(memory)
    actions = memory.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="records, oldest first")
    listing.add_argument("--namespace", default=None, help="only this namespace and those below it (default: all)")
    listing.add_argument(
        "--kind", choices=["input", "generated", "edited"], default=None, help="only records of this kind"
    )
    listing.add_argument("--limit", type=positive_int, default=None, help="at most this many records")
    search = actions.add_parser("search", help="text search over prompts and captions")
    search.add_argument("query", help="text to look for, e.g. 'a red circle'")
    search.add_argument("--k", type=positive_int, default=5, help="number of hits (default 5)")
    search.add_argument("--namespace", default=None, help="only this namespace and those below it (default: all)")
    show = actions.add_parser("show", help="one record with its lineage and children")
    show.add_argument("image_id", help="an id such as img_0123456789abcdef")
    export = actions.add_parser("export", help="write PNG + record JSON of images")
    export.add_argument("image_ids", nargs="+", help="ids such as img_0123456789abcdef")
    export.add_argument("--out", required=True, help="destination folder (created if missing)")
    delete = actions.add_parser("delete", help="remove records (files go when no record uses them)")
    delete.add_argument("image_ids", nargs="+", help="ids such as img_0123456789abcdef")
    memory.set_defaults(func=cmd_memory)


def build_parser() -> argparse.ArgumentParser:
    """A parser with just these subcommands (``python -m seedx_agent.cli.chat``)."""
    parser = argparse.ArgumentParser(prog="seedx-agent", description="Chat with the SEED-X agent; inspect its memory.")
    add_verbosity_flag(parser, top=True)
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; library errors print one line and return 2, like the main CLI."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_command(args)


# ---------------------------------------------------------------------------------------------- chat

# The new picture a successful tool result brings, by tool (ground's ``image_id`` is its input, not new).
_PICTURE_KEYS = {"generate_image": "image_id", "edit_image": "image_id", "ground": "annotated_image_id"}
_HANDLE_IN_TEXT_RE = re.compile(r"(?<![\w#&])#(\d+)(?!\w)")  # '#2' in 'make #2 blue', not 'abc#2' or '#2nd'
_WHOLE_HANDLE_RE = re.compile(r"\s*#(\d+)\s*")


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


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _seconds(event: dict[str, Any]) -> str:
    seconds = event.get("seconds")
    return f"{seconds:.2f} s" if isinstance(seconds, (int, float)) else "?"


def _progress_line(event: dict[str, Any], seed_of: Callable[[str], int | None]) -> str:
    """One short human line for a chat progress event (``seed_of`` looks up the seed of a stored image)."""
    kind, tool = event.get("event"), event.get("tool")
    if kind == "planner_start":
        return "[planner] thinking"
    if kind == "planner_end":
        calls = event.get("tool_calls") or []
        return f"[planner] {'calls ' + ', '.join(calls) if calls else 'answers'} ({_seconds(event)})"
    if kind == "tool_start":
        return f"[{tool}] running"
    if kind == "tool_end":
        if event.get("status") == "error":
            return f"[{tool}] failed ({_seconds(event)})"
        new_id = event.get(_PICTURE_KEYS.get(str(tool), ""))
        if tool == "ground":
            found = f"boxes drawn on {new_id}" if new_id else "nothing found"
            return f"[ground] done: {found} ({_seconds(event)})"
        if isinstance(new_id, str):
            parent = f" from {event['parent_id']}" if event.get("parent_id") else ""
            seed = seed_of(new_id)
            seed_text = f"seed {seed}, " if seed is not None else ""
            return f"[{tool}] done: {new_id}{parent} ({seed_text}{_seconds(event)})"
        return f"[{tool}] done ({_seconds(event)})"
    if kind == "review_requested":
        return f"[review] {tool} waits for /approve or /reject REASON"
    if kind == "review_decided":
        return "[review] approved" if event.get("approved") else f"[review] rejected: {event.get('reason') or '-'}"
    if kind == "tool_skipped":
        return f"[{tool}] skipped: {event.get('reason')}"
    details = ", ".join(f"{key}={value}" for key, value in event.items() if key != "event")
    return f"[{kind}] {details}"


def _progress_printer(quiet: bool, memory: Any) -> Callable[[dict[str, Any]], None]:
    from seedx_agent.errors import SeedXError

    def seed_of(image_id: str) -> int | None:
        try:
            return memory.get(image_id).seed
        except SeedXError:
            return None

    def show(event: dict[str, Any]) -> None:
        if not quiet:
            print("  " + _progress_line(event, seed_of), file=sys.stderr)

    return show


def _pictures_of(message: Any) -> list[str]:
    """The images ``message`` brings into the conversation: a tool result's new picture, pictures the planner
    drew itself (``response_metadata["image_ids"]``), or the ids a human message names or has attached (``/add``)."""
    if message.type == "tool":
        artifact = message.artifact if isinstance(message.artifact, dict) else {}
        image_id = artifact.get(_PICTURE_KEYS.get(message.name or "", ""))
        return [image_id] if message.status == "success" and isinstance(image_id, str) else []
    if message.type == "ai":
        image_ids = (message.response_metadata or {}).get("image_ids") or []
        return [image_id for image_id in image_ids if isinstance(image_id, str)]
    if message.type == "human" and isinstance(message.content, str):  # ids named in it or attached to it
        return list(dict.fromkeys(IMAGE_ID_RE.findall(message.content)))
    return []


def _text_of(content: Any) -> str:
    """The text of a message content (a string, or a list of blocks whose image blocks are left out)."""
    if isinstance(content, str):
        return content
    parts = [block if isinstance(block, str) else block.get("text", "") for block in content or []]
    return "".join(part for part in parts if isinstance(part, str))


class _Handles:
    """The ``#1``, ``#2``, ... names the chat shows for the images of one conversation, in order of appearance.

    They stay fixed for the whole conversation (every turn, and a ``--thread`` continued later), so a later turn
    can say "make #1 blue": the handles in a user message are replaced by their memory ids before the planner
    sees it. Planners that keep handles of their own (``ChatSeedX`` with compact tool specs numbers the ids of
    the messages it is shown) expand those themselves; a tool argument still holding a handle afterwards (a
    scripted planner, or a planner that only saw the handle) is read as this conversation's handle.
    """

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, image_id: str) -> str:
        """The handle of ``image_id`` (a new one on first appearance)."""
        if image_id not in self._index:
            self._index[image_id] = len(self.ids)
            self.ids.append(image_id)
        return f"#{self._index[image_id] + 1}"

    def _id(self, number: str) -> str | None:
        index = int(number) - 1
        return self.ids[index] if 0 <= index < len(self.ids) else None

    def expand_text(self, text: str) -> tuple[str, list[str]]:
        """``text`` with every known handle replaced by its id, and the handles it names that are unknown."""
        unknown: list[str] = []

        def replace(match: re.Match[str]) -> str:
            image_id = self._id(match.group(1))
            if image_id is None:
                unknown.append(match.group(0))
                return match.group(0)
            return image_id

        return _HANDLE_IN_TEXT_RE.sub(replace, text), unknown

    def _resolve(self, key: str, value: Any) -> Any:
        if isinstance(value, list):
            return [self._resolve(key, item) for item in value]
        if isinstance(value, str) and key.endswith(("image_id", "image_ids")):
            whole = _WHOLE_HANDLE_RE.fullmatch(value)
            image_id = self._id(whole.group(1)) if whole else None
            return image_id or value
        return value

    def resolve_reply(self, reply: Any) -> Any:
        """The planner's reply with handles left in image-id arguments of its tool calls replaced by ids."""
        calls = getattr(reply, "tool_calls", None)
        if not calls:
            return reply
        resolved = [
            {**call, "args": {key: self._resolve(key, value) for key, value in call["args"].items()}} for call in calls
        ]
        return reply if resolved == calls else reply.model_copy(update={"tool_calls": resolved})

    def register(self, messages: list[Any]) -> list[Any]:
        """Give handles to the images of ``messages`` (in order); returns ``messages``."""
        for message in messages:
            for image_id in _pictures_of(message):
                self.add(image_id)
        return messages


class _HandlePlanner:
    """Wraps a planner so that handles in its tool calls resolve to this conversation's images (``_Handles``);
    ``create_chat_agent`` only needs ``bind_tools``."""

    def __init__(self, planner: Any, handles: _Handles) -> None:
        self.planner = planner
        self.handles = handles

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        from langchain_core.runnables import RunnableLambda

        bound = self.planner.bind_tools(tools, **kwargs)
        return RunnableLambda(self.handles.register) | bound | RunnableLambda(self.handles.resolve_reply)


def _interrupt_of(state: Any) -> Any:
    """The review request a thread is waiting on, or None."""
    return state.interrupts[0].value if state.interrupts else None


def _print_review(request: dict[str, Any]) -> None:
    print(f"review> {request['tool']} {json.dumps(request['args'])}: /approve or /reject REASON")


def cmd_chat(args: argparse.Namespace) -> int:
    """Chat with the agent; every turn runs with ``durability="sync"``, so a thread survives a crash.

    After each turn every new picture is written as PNG to ``--out`` (or ``outputs/chat``) and printed with
    its handle (``picture: PATH (img_..., #N)``); ``#N`` in a later message names that picture. With
    ``--script``, an input that fails stops the chat with a one-line error naming the script item; the
    transcript of what ran is still written to ``--out``. Interactively the error is printed and the chat goes on.
    """
    # Cheap arguments first: a typo costs a second, not a model load.
    check_namespace(args.namespace)
    check_model(args.model)
    check_output_folder(args.memory, "--memory")
    check_chroma(args.chroma)
    pictures_dir = check_output_folder(args.out if args.out else _DEFAULT_PICTURES, "--out")
    if args.checkpoints:
        check_file_folder(args.checkpoints, "--checkpoints")
    script = list(_script_inputs(args.script)) if args.script else None
    if args.planner_script:
        _read_json_list(args.planner_script, "planner script")

    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langgraph.types import Command

    from seedx_agent.errors import ConfigError, SeedXError
    from seedx_agent.graphs.chat_agent import create_chat_agent, seedx_agent_options, seedx_planner
    from seedx_agent.graphs.runtime import load_engine, open_memory
    from seedx_agent.graphs.scripted import ScriptedPlanner
    from seedx_agent.tools import make_seedx_tools

    engine = load_engine(args.model)
    with open_memory(args.memory, engine, chroma=args.chroma) as memory:
        show = _progress_printer(args.quiet, memory)
        options: dict[str, Any] = {}
        if args.planner_script:
            planner = ScriptedPlanner.from_json(args.planner_script)
        else:
            planner = seedx_planner(engine, memory, args.namespace)
            options = seedx_agent_options(engine)
        handles = _Handles()
        tools = make_seedx_tools(engine, memory, namespace=args.namespace, default_steps=args.num_inference_steps)
        saver_context = _checkpointer(args.checkpoints)
        with saver_context as checkpointer:
            graph = create_chat_agent(
                _HandlePlanner(planner, handles),
                tools,
                checkpointer=checkpointer,
                approve_edits=args.approve_edits,
                **options,
            )
            config = {"configurable": {"thread_id": args.thread or uuid.uuid4().hex}}
            state = graph.get_state(config)
            reported = len(handles.register(list(state.values.get("messages", []))))  # a continued thread
            pending: Any = _interrupt_of(state)  # the interrupt value of an edit waiting for review
            if pending is not None:
                _print_review(pending)
            attached: list[str] = []  # ids stored with /add, named in the next user message

            def report_pictures() -> None:
                """Save and print the pictures of the messages added since the last report."""
                nonlocal reported
                messages = graph.get_state(config).values.get("messages", [])
                for message in messages[reported:]:
                    for image_id in _pictures_of(message):
                        handle = handles.add(image_id)
                        if message.type == "human":
                            continue  # an /add input, announced when it was stored
                        path = pictures_dir / f"{image_id}.png"
                        if not path.is_file():
                            pictures_dir.mkdir(parents=True, exist_ok=True)
                            memory.load(image_id).save(path)
                        print(f"picture: {path} ({image_id}, {handle})")
                reported = len(messages)

            def run(graph_input: Any) -> Any:
                try:
                    for mode, chunk in graph.stream(
                        graph_input, config, stream_mode=["custom", "updates"], durability="sync"
                    ):
                        if mode == "custom":
                            show(chunk)
                finally:
                    report_pictures()
                state = graph.get_state(config)
                request = _interrupt_of(state)
                if request is not None:
                    _print_review(request)
                    return request
                final = state.values["messages"][-1]
                if isinstance(final, AIMessage):
                    print(f"assistant> {_text_of(final.content)}")
                return None

            def step(text: str) -> Any:
                """Act on one input line; returns the new pending review request."""
                if text.startswith("/add "):
                    record = memory.add(text[5:].strip(), kind="input", namespace=args.namespace)
                    attached.append(record.id)
                    handle = handles.add(record.id)
                    print(
                        f"stored {record.id} as {handle} ({record.width}x{record.height}); "
                        "it is attached to your next message"
                    )
                    return pending
                if text == "/approve" or text.startswith("/reject"):
                    if pending is None:
                        raise ConfigError(f"{text!r}: no edit is waiting for review")
                    decision = {"approved": text == "/approve", "reason": text[len("/reject") :].strip()}
                    return run(Command(resume=decision))
                if pending is not None:
                    raise ConfigError(f"an edit is waiting for review; answer /approve or /reject REASON, not {text!r}")
                if not text:
                    return pending
                text, unknown = handles.expand_text(text)
                if unknown:
                    known = {0: "none yet", 1: "#1"}.get(len(handles.ids), f"#1 to #{len(handles.ids)}")
                    print(
                        f"note: {', '.join(unknown)} names no picture of this chat (handles: {known})", file=sys.stderr
                    )
                unnamed = [image_id for image_id in attached if image_id not in text]
                if unnamed:  # a picture the message already names ('#1') needs no note: it misleads small models
                    text += "\n(attached images: " + ", ".join(unnamed) + ")"
                attached.clear()
                return run({"messages": [HumanMessage(text)]})

            try:
                inputs = iter(script) if script is not None else _interactive_inputs()
                for index, line in enumerate(inputs):
                    text = line.strip()
                    if text in {"/quit", "/exit"}:
                        break
                    try:
                        pending = step(text)
                    except SeedXError as error:
                        if args.script:
                            raise SeedXError(f"chat script item {index} ({line!r}): {_one_line(error)}") from error
                        print(f"error: {_one_line(error)}", file=sys.stderr)
                        pending = _interrupt_of(graph.get_state(config))
                if pending is not None:
                    raise ConfigError("the input ended while an edit was waiting for review; add /approve or /reject")
            finally:
                if args.out:
                    messages = graph.get_state(config).values.get("messages", [])
                    _write_transcript(pictures_dir, messages, memory, ToolMessage)
                    print(f"transcript: {pictures_dir / 'transcript.json'}")
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
        found = [image_id for image_id in _pictures_of(message) if message.type == "ai"]
        if isinstance(message, tool_message_type):
            entry.update(name=message.name, status=message.status, artifact=message.artifact)
            artifact = message.artifact if isinstance(message.artifact, dict) else {}
            found = [artifact[key] for key in ("image_id", "annotated_image_id") if isinstance(artifact.get(key), str)]
        image_ids += [image_id for image_id in found if image_id not in image_ids]
        transcript.append(entry)
    (out / "transcript.json").write_text(json.dumps(transcript, indent=2, default=str) + "\n", encoding="utf-8")
    for image_id in image_ids:
        path = out / f"{image_id}.png"
        if not path.is_file():
            memory.load(image_id).save(path)


# ---------------------------------------------------------------------------------------------- memory


def _no_image_embedder(images: list[Any]) -> Any:
    from seedx_agent.errors import CapabilityMissingError

    raise CapabilityMissingError(
        "`seedx-agent memory` runs without a model, so it cannot embed new images; use chat or refine to add images"
    )


def cmd_memory(args: argparse.Namespace) -> int:
    """Inspect or prune an image memory folder without loading a model."""
    from seedx_agent.errors import ConfigError
    from seedx_agent.memory import ImageMemory
    from seedx_agent.memory.records import validate_image_id

    # Cheap arguments first, before the memory opens (and before anything is written).
    check_namespace(getattr(args, "namespace", None))
    if args.action == "search":
        check_text(args.query, "the query")
    for image_id in [getattr(args, "image_id", None), *getattr(args, "image_ids", [])]:
        if image_id is not None:
            validate_image_id(image_id)
    out = check_output_folder(args.out, "--out") if args.action == "export" else None
    check_chroma(args.chroma)
    root = Path(args.memory).expanduser()
    if not root.is_dir():
        raise ConfigError(f"no image memory at {str(root)!r}; pass --memory DIR of an existing memory")
    from seedx_agent.graphs.runtime import resolve_chroma

    server = resolve_chroma(args.chroma)
    shared = {} if server is None else {"client": server, "shared": True}
    with ImageMemory.open(root, image_embedder=_no_image_embedder, **shared) as memory:
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
            _export(memory, args.image_ids, out)
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

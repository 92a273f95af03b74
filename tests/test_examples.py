"""Every example script and the README's main command run (the README test command is .ci/run)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_load_official_layout_example():
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples/load_official_layout.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "identical to the official one: True" in output and "detokenizer:2" in output


def test_cli_demo_writes_pngs_and_report(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "seedx_agent", "demo", "--out", str(tmp_path), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"describe", "vqa", "ground", "generate_image", "edit_image"} <= set(report)
    assert report["model"] == "mini" and "note" not in report  # the bundled trained weights, not random ones
    for name in ("input.png", "generated.png", "edited.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in (ROOT / ".ci/run").read_text().splitlines() if "pytest" in line]
    assert len(commands) == 2 and commands[1].endswith("-m pytest -q -m slow")
    assert commands[0] in readme  # .ci/run runs exactly the README's test command, then the slow tests
    assert "-m pytest -q -m slow" in readme  # which the README names too


def test_cli_errors_are_clean():
    done = subprocess.run(
        [sys.executable, "-m", "seedx_agent", "info", "--model", "/nonexistent/ckpt"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    import re

    import PIL.Image

    from seedx_agent.model import SeedX

    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    model = SeedX.from_pretrained("tiny-random", variants=("seed-x-i", "seed-x-edit"))
    model.save_pretrained(tmp_path / "converted/seed-x")
    PIL.Image.new("RGB", (64, 48), "orange").save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert isinstance(namespace["model"], SeedX)


# ---------------------------------------------------------------------------------------------- CLI vocabulary


def _parsers(parser=None):
    """The main parser and every sub-command parser below it."""
    import argparse

    from seedx_agent.cli.main import build_parser

    parser = parser or build_parser()
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_help_is_for_users_and_every_flag_has_help():
    import argparse

    for parser in _parsers():
        text = parser.format_help()
        assert "top floor" not in text and "``" not in text, parser.prog
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and action.help.strip(), f"{parser.prog} {action.option_strings or action.dest}"


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys; from seedx_agent.cli.main import build_parser; build_parser();"
        "heavy = sorted(m for m in ('torch', 'langgraph', 'chromadb', 'transformers') if m in sys.modules);"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_eval_tasks_list_their_choices():
    from seedx_agent.cli.main import EVAL_TASKS, WORKFLOW_TASKS, build_parser
    from seedx_agent.miniature import eval_model

    assert (EVAL_TASKS, WORKFLOW_TASKS) == (eval_model.EVAL_TASKS, eval_model.WORKFLOW_TASKS)  # the CLI's copies
    parser = build_parser()
    assert parser.parse_args(["eval", "mini", "--tasks", "vqa", "story"]).tasks == ["vqa", "story"]
    eval_help = " ".join(next(p for p in _parsers(parser) if p.prog.endswith(" eval")).format_help().split())
    assert "caption, vqa, grounding, text_to_image, edit, reconstruction, agent (default: these)" in eval_help
    assert "refine, story, slides (only when named)" in eval_help


def test_num_inference_steps_everywhere_and_steps_only_where_unambiguous():
    from seedx_agent.cli.main import build_parser

    parser = build_parser()
    commands = {"chat": [], "refine": ["x"], "eval": ["mini"], "demo": [], "story": ["x"], "slides": ["x"]}
    for command, positional in commands.items():
        args = parser.parse_args([command, *positional, "--num-inference-steps", "3"])
        assert args.num_inference_steps == 3, command
    for command in ("chat", "refine", "eval", "demo"):
        args = parser.parse_args([command, *commands[command], "--steps", "2"])
        assert args.num_inference_steps == 2, command
    story = parser.parse_args(["story", "x", "--steps", "7"])  # story: --steps is the old name of --beats
    assert (story.beats, story.num_inference_steps) == (7, None)


def test_verbosity_flags():
    from seedx_agent.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["info"]).verbose == 0
    assert parser.parse_args(["-v", "info"]).verbose == 1
    assert parser.parse_args(["info", "-vv"]).verbose == 2
    assert parser.parse_args(["-v", "memory", "list"]).verbose == 1  # not reset by the sub-commands
    assert parser.parse_args(["memory", "list", "-v"]).verbose == 1
    assert parser.parse_args(["info"]).model == "mini"  # the same default model as every other command


def test_logs_are_quiet_by_default_and_verbose_with_v():
    """``seedx_agent.cli.main`` (the console script) twice in one fresh process: quiet, then with ``-v``."""
    code = (
        "import logging, sys; from seedx_agent.cli import main;"
        "main(['info', '--model', 'mini']); print('-- now verbose --', file=sys.stderr, flush=True);"
        "logging.getLogger().handlers.clear(); sys.exit(main(['info', '-v', '--model', 'mini']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    quiet, _, verbose = done.stderr.partition("-- now verbose --")
    assert "INFO" not in quiet and "loaded" not in quiet
    assert "INFO seedx_agent.weights.native: loaded" in verbose


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["chat", "--namespace", "bad ns "], "error: --namespace 'bad ns ' is malformed"),
        (
            ["memory", "--memory", "{tmp}/nowhere", "export", "img_0123456789abcdef", "--out", "/proc/nope"],
            "error: --out '/proc/nope' cannot be created as a folder",
        ),
        (["chat", "--out", "{file}"], "error: --out '{file}' is a file, not a folder"),
        (["story", "a fox", "--out", "{file}/story"], "error: --out '{file}/story' cannot be created: '{file}' is a"),
        (["refine", "a fox", "--model", "{tmp}/no-model"], "error: --model '{tmp}/no-model' does not exist"),
        (["eval", "mini", "--json", "{file}/r.json"], "error: --json '{file}/r.json': its folder '{file}' is a file"),
        (["demo", "--out", "{file}"], "error: --out '{file}' is a file, not a folder"),
        (["slides", "tides", "--planner", "no_such_module_here:x"], "error: --planner 'no_such_module_here:x'"),
    ],
)
def test_bad_arguments_are_one_line_before_any_model_loads(argv, message, tmp_path):
    """Through the CLI entry point: exit code 2, one ``error:`` line, no traceback, nothing created."""
    (tmp_path / "file").write_text("x")
    values = {"tmp": str(tmp_path), "file": str(tmp_path / "file")}
    argv = [item.format(**values) for item in argv]
    if argv[0] in {"chat", "story", "slides", "refine"}:
        argv += ["--memory", str(tmp_path / "memory")]
    done = subprocess.run(
        [sys.executable, "-m", "seedx_agent", *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith(message.format(**values))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]  # no memory, no output folder


def test_examples_default_to_mini_and_name_diffusion_steps_like_the_cli():
    """examples/*.py: ``--model`` defaults to mini, diffusion steps are ``--num-inference-steps`` (``--steps`` only
    as its alias), and every flag has help."""
    import ast

    for path in sorted((ROOT / "examples").glob("*.py")):
        calls = [
            node
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
        ]
        for call in calls:
            flags = [arg.value for arg in call.args if isinstance(arg, ast.Constant)]
            keywords = {keyword.arg: keyword.value for keyword in call.keywords}
            assert "help" in keywords, f"{path.name} {flags}"
            if "--model" in flags:
                assert ast.literal_eval(keywords["default"]) == "mini", path.name
            if "--steps" in flags:
                assert flags[0] == "--num-inference-steps", f"{path.name}: --steps must be an alias"

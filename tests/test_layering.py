"""The floors of ARCHITECTURE.md: every import goes to the module's own floor or below; the core never pulls in
LangChain, LangGraph or chromadb; nothing below the CLI imports the miniature or the training code."""

import ast
import os
import subprocess
import sys
from pathlib import Path


def test_core_imports_no_agent_frameworks():
    code = (
        "import sys, seedx_agent.model, seedx_agent.engine, seedx_agent.weights, seedx_agent.cli;"
        "banned = {'langchain', 'langchain_core', 'langgraph', 'chromadb'};"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in banned);"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_importing_the_package_has_no_side_effects(tmp_path):
    code = "import seedx_agent, sys; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "False"
    assert list(tmp_path.iterdir()) == []  # nothing created in the working directory


# ---------------------------------------------------------------------------------------------- internal floors

ROOT = Path(__file__).resolve().parents[1]
# Installed package name -> folder in the work tree.
FOLDERS = {
    "seedx_agent": ROOT / "seedx_agent",
    "seedx_agent.tools": ROOT / "tools",
    "seedx_agent.memory": ROOT / "memory",
    "seedx_agent.graphs": ROOT / "graphs",
    "seedx_agent.serving": ROOT / "serving",
}
# The floors of ARCHITECTURE.md, bottom up: a module may import its own floor and the ones below, never above.
# speed/ is pure torch (below the pipeline); the SeedX facade (model.py) sits on pipeline, weights and speed.
FLOORS: dict[str, int] = {
    "seedx_agent.errors": 0,
    "seedx_agent.config": 0,
    "seedx_agent.speed": 1,
    "seedx_agent.pipeline": 2,
    "seedx_agent.weights": 3,
    "seedx_agent.model": 4,
    "seedx_agent.engine": 5,
    "seedx_agent.protocol": 5,
    "seedx_agent": 5,  # the package root re-exports the core's main names (lazily)
    "seedx_agent.memory": 6,
    "seedx_agent.tools": 7,
    "seedx_agent.graphs": 8,
    "seedx_agent.serving": 9,
    "seedx_agent.cli": 10,
    "seedx_agent.__main__": 10,
}
PLUG_INS = ("seedx_agent.miniature", "seedx_agent.training")
CLI = 10


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved against ``package``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def floor_of(module: str) -> int | None:
    """The floor of a project module (longest matching prefix), or None for plug-ins and third-party code."""
    if module.startswith(PLUG_INS) or not module.startswith("seedx_agent"):
        return None
    best = max((name for name in FLOORS if module == name or module.startswith(name + ".")), key=len)
    return FLOORS[best]


def module_files() -> list[tuple[Path, str]]:
    """Every product file with its dotted module name (the package root's plug-in folders excluded)."""
    files = []
    for package, folder in FOLDERS.items():
        for path in sorted(folder.glob("**/*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            module = ".".join((package, *parts)).removesuffix(".__init__")
            if module.startswith(PLUG_INS):
                continue
            files.append((path, module))
    return files


def floor_violations(path: Path, module: str) -> list[str]:
    """The imports of ``path`` that go up a floor, or into the miniature/training from below the CLI."""
    own = floor_of(module)
    assert own is not None, module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    bad = []
    for name in sorted(imported_modules(path, package)):
        if name.startswith(PLUG_INS):
            if own < CLI:
                bad.append(name)
            continue
        if name == "seedx_agent":
            continue  # the package itself, named by every ``from seedx_agent import x``: judged by x
        floor = floor_of(name)
        if floor is not None and floor > own and not (module == "seedx_agent" and path.name == "__init__.py"):
            bad.append(name)
    return bad


def test_every_module_imports_only_its_floor_and_below() -> None:
    offenders = {
        str(path.relative_to(ROOT)): found
        for path, module in module_files()
        if (found := floor_violations(path, module))
    }
    assert offenders == {}, f"imports that go up a floor (see ARCHITECTURE.md): {offenders}"
    assert len(module_files()) > 60  # the walk really saw the tree


def test_the_floor_check_catches_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "story.py"
    bad.write_text(
        "from seedx_agent.miniature import world\nfrom .planning import Check\nimport seedx_agent.training.loop\n"
        "from seedx_agent.serving.openai_api import build_app\n"
    )
    assert floor_violations(bad, "seedx_agent.graphs.story") == [
        "seedx_agent.miniature",
        "seedx_agent.miniature.world",
        "seedx_agent.serving.openai_api",
        "seedx_agent.serving.openai_api.build_app",
        "seedx_agent.training.loop",
    ]
    upward = tmp_path / "lvlm.py"
    upward.write_text("from seedx_agent.model import SeedX\nfrom ..speed.growing_kv import new_kv_cache\n")
    assert floor_violations(upward, "seedx_agent.pipeline.lvlm") == ["seedx_agent.model", "seedx_agent.model.SeedX"]
    wiring = tmp_path / "story.py"
    wiring.write_text("from seedx_agent.miniature import world\nfrom seedx_agent.serving import openai_api\n")
    assert floor_violations(wiring, "seedx_agent.cli.story") == []


# The miniature builds on training/, never the other way round: no training module imports the miniature.
TRAINING = ROOT / "seedx_agent" / "training"


def miniature_imports(path: Path, package: str) -> list[str]:
    return sorted(m for m in imported_modules(path, package) if m.startswith("seedx_agent.miniature"))


def test_training_does_not_import_the_miniature() -> None:
    files = sorted(TRAINING.glob("**/*.py"))
    offenders = {}
    for path in files:
        package = ".".join(("seedx_agent.training", *path.relative_to(TRAINING).parent.parts))
        if found := miniature_imports(path, package):
            offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}, f"training code imports the miniature (the miniature builds on training): {offenders}"
    assert len(files) >= 4  # the walk really saw the folder


def test_the_training_check_catches_a_miniature_import(tmp_path: Path) -> None:
    bad = tmp_path / "recipes.py"
    bad.write_text(
        "from seedx_agent.miniature import world\n"
        "from seedx_agent.training.loop import run_loop\n"
        "from ..miniature.world_data import WorldData\n"
        "def f():\n    import seedx_agent.miniature.recipe\n"
    )
    assert miniature_imports(bad, "seedx_agent.training") == [
        "seedx_agent.miniature",
        "seedx_agent.miniature.recipe",
        "seedx_agent.miniature.world",
        "seedx_agent.miniature.world_data",
        "seedx_agent.miniature.world_data.WorldData",
    ]


# ---------------------------------------------------------------------------------------------- package root


def test_main_names_import_from_the_package_root(tmp_path: Path) -> None:
    """``from seedx_agent import SeedX, ...`` works; a bare ``import seedx_agent`` stays torch-free and silent."""
    code = (
        "import sys, seedx_agent;"
        "assert 'torch' not in sys.modules and 'seedx_agent.model' not in sys.modules;"
        "from seedx_agent import SeedX, SeedXConfig, SeedXEngine, Box, GenerationOptions, SeedXError, ConfigError;"
        "import seedx_agent.model, seedx_agent.engine, seedx_agent.config, seedx_agent.errors;"
        "import seedx_agent.pipeline.tokens;"
        "assert SeedX is seedx_agent.model.SeedX and SeedXEngine is seedx_agent.engine.SeedXEngine;"
        "assert SeedXConfig is seedx_agent.config.SeedXConfig and Box is seedx_agent.pipeline.tokens.Box;"
        "assert issubclass(ConfigError, SeedXError) and SeedXError is seedx_agent.errors.SeedXError;"
        "assert set(seedx_agent.errors.__all__) <= set(seedx_agent.__all__) <= set(dir(seedx_agent))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    quiet = subprocess.run(
        [sys.executable, "-c", "import seedx_agent"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    import seedx_agent

    assert sorted([*seedx_agent._EXPORTS, *seedx_agent.errors.__all__]) == seedx_agent.__all__
    try:
        seedx_agent.NotAName  # noqa: B018
    except AttributeError as exc:
        assert "NotAName" in str(exc)
    else:
        raise AssertionError("unknown names must raise AttributeError")


FAKE_BNB = "import sys; print('FAKE BITSANDBYTES IMPORTED', flush=True)\n"


def test_bitsandbytes_is_imported_only_when_quantize_llm_asks(tmp_path: Path) -> None:
    """diffusers and peft import bitsandbytes whenever it is installed (it then probes the hub and logs, even
    offline); loading must not, only ``quantize_llm``. A fake, installed-looking bitsandbytes tells."""
    site = tmp_path / "site"
    (site / "bitsandbytes").mkdir(parents=True)
    (site / "bitsandbytes" / "__init__.py").write_text(FAKE_BNB)
    dist = site / "bitsandbytes-0.45.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.45.0\n")
    (dist / "top_level.txt").write_text("bitsandbytes\n")
    code = f"""
import sys
import seedx_agent.model
from seedx_agent.model import SeedX
assert 'bitsandbytes' not in sys.modules, 'import'
model = SeedX.from_pretrained('tiny-random', variants=('seed-x-i', 'seed-x-edit'))
assert 'bitsandbytes' not in sys.modules, 'from_preset'
model.save_pretrained({str(tmp_path / "ckpt")!r})
SeedX.from_pretrained({str(tmp_path / "ckpt")!r})
assert 'bitsandbytes' not in sys.modules, 'from_pretrained'
print('LOADED', flush=True)
from seedx_agent.weights import quantize_llm
from seedx_agent.errors import DependencyMissingError
try:
    quantize_llm(model.parts.lvlms['seed-x-i'], bits=4)
except DependencyMissingError:
    pass  # no CUDA GPU here; what matters is that the package was asked for
assert 'bitsandbytes' in sys.modules, 'quantize_llm'
"""
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    # the fake prints when imported: once, and only after loading finished
    assert done.stdout.split() == ["LOADED", "FAKE", "BITSANDBYTES", "IMPORTED"], done.stdout

"""The floors of ARCHITECTURE.md: the core never pulls in LangChain, LangGraph or chromadb."""

import subprocess
import sys


def test_core_imports_no_agent_frameworks():
    code = (
        "import sys, seedx_agent.model, seedx_agent.engine, seedx_agent.checkpoints, seedx_agent.cli;"
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

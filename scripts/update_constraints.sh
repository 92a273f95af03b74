#!/usr/bin/env bash
# Move constraints.txt forward: resolve the newest versions the pyproject ranges allow in a scratch venv, run the
# unit suite there, and rewrite constraints.txt only if it passes. Run it on a schedule (e.g. monthly) and
# commit the new file with the suite's result. Usage: scripts/update_constraints.sh [SCRATCH_VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/seedx-constraints-venv}
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -e ".[agent,dev]"   # no -c: the newest releases within pyproject's ranges
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pytest -q
{
  awk '/^#/{print; next} {exit}' constraints.txt
  "$VENV/bin/pip" freeze --exclude-editable | grep -v -i '^torch=='
} > constraints.txt.new
mv constraints.txt.new constraints.txt
git --no-pager diff --stat constraints.txt || true
echo "constraints.txt updated; the suite passed with these versions"

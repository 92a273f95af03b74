#!/bin/bash
# Reproduce the bundled miniature (seedx_agent/assets/mini) on a 2-core CPU machine, as it was trained:
# the ViT first, then the de-tokenizer stages and the LLM stages in two processes side by side (they only
# share the finished ViT), one torch thread each. Every stage checkpoints; re-running resumes.
# Usage: scripts/train_mini.sh [RUN_DIR]   (default runs/mini); the model lands in RUN_DIR/model.
set -euo pipefail
RUN=${1:-runs/mini}
BIN=${SEEDX_AGENT:-.venv/bin/seedx-agent}
export HF_HUB_OFFLINE=1
mkdir -p "$RUN"
"$BIN" train mini --out "$RUN" --stages vit --threads 1 --quiet
"$BIN" train mini --out "$RUN" --stages vit detokenizer-1 detokenizer-2 --threads 1 --quiet > "$RUN/A.log" 2>&1 &
"$BIN" train mini --out "$RUN" --stages lvlm-pretrain lvlm-sft --threads 1 --quiet > "$RUN/B.log" 2>&1 &
wait
"$BIN" train mini --out "$RUN" --threads 2 --quiet   # every stage finished: only assembles RUN/model

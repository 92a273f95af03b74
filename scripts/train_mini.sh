#!/bin/bash
# Reproduce the bundled miniature (seedx_agent/assets/mini) on a 2-core CPU machine, phase by phase as it
# was trained: the ViT first, then the de-tokenizer stages (process A) and the LLM stages (process B) side
# by side (they only share the finished ViT), one torch thread each. Every stage checkpoints; re-running
# resumes. Some stages ran in phases (a finished stage given more steps resumes on the longer cosine
# schedule); `seedx-agent train mini` alone trains the same totals with one cosine per stage.
# Usage: scripts/train_mini.sh [RUN_DIR]   (default runs/mini); the model lands in RUN_DIR/model.
set -euo pipefail
RUN=${1:-runs/mini}
BIN=${SEEDX_AGENT:-.venv/bin/seedx-agent}
export HF_HUB_OFFLINE=1
mkdir -p "$RUN"
train() { "$BIN" train mini --out "$RUN" --threads 1 --quiet --rec-loss-scale 6 "$@"; }  # the bundle predates the 1.0 default
train --stages vit
(
  train --stages detokenizer-1 --stage-steps detokenizer-1=1200
  train --stages detokenizer-1 detokenizer-2            # stage 1 continued to 2400, then stage 2 from it
) > "$RUN/A.log" 2>&1 &
(
  train --stages lvlm-pretrain --stage-steps lvlm-pretrain=1400
  train --stages lvlm-pretrain lvlm-sft --stage-steps lvlm-sft=1000
  train --stages lvlm-sft
  train --stages lvlm-agent                              # agent tuning: tool dialogs + the task mixture
) > "$RUN/B.log" 2>&1 &
wait
"$BIN" train mini --out "$RUN" --threads 2 --quiet --rec-loss-scale 6   # every stage finished: only assembles RUN/model

#!/bin/bash
# Reproduce the bundled miniature (seedx_agent/assets/mini) on a 2-core CPU machine, phase by phase as it
# was trained: the ViT first, then the de-tokenizer stages (process A) and the LLM stages (process B) side
# by side (they only share the finished ViT), one torch thread each. Every stage checkpoints; re-running
# resumes. Some stages ran in phases (a finished stage given more steps resumes on the longer cosine
# schedule); `seedx-agent train mini` alone trains the same totals with one cosine per stage.
# Then two continuations, one thread each (2026-12-05): three rounds of de-tokenizer training
# (scripts/continue_detokenizers.py) and three rounds of image-heavy LLM tuning (scripts/continue_llm.py).
# Usage: scripts/train_mini.sh [RUN_DIR]   (default runs/mini); the final model lands in RUN_DIR/llm4/model
# (RUN_DIR/model is the model `seedx-agent train mini` alone gives).
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
PY=${PYTHON:-.venv/bin/python}
# De-tokenizers: stage 1 continued on a fresh warm-up + cosine, stage 2 re-derived from it each round
# (1 thread: 34 + 9 min, 55 + 30 min, 61 + 32 min).
"$PY" scripts/continue_detokenizers.py "$RUN/detok" --model "$RUN/model" --stage1-steps 1800 --stage2-steps 500 --batch 32 --threads 1
"$PY" scripts/continue_detokenizers.py "$RUN/detok2" --model "$RUN/detok/model" --stage1-steps 3000 --stage2-steps 1500 --batch 32 --threads 1
"$PY" scripts/continue_detokenizers.py "$RUN/detok3" --model "$RUN/detok2/model" --stage1-steps 3000 --stage2-steps 1500 --batch 32 --threads 1
# LLM: a fresh LoRA per round on text-to-image/edit-heavy mixtures with tool dialogs every 3rd step (1 thread:
# about 18 min each). The de-tokenizers ride along untouched. The bundle ran these side by side with the de-
# tokenizer rounds, starting from RUN/detok2/model, and took detok3's de-tokenizers at the end (same recipe, order aside).
"$PY" scripts/continue_llm.py "$RUN/llm1" --model "$RUN/detok3/model" --steps 1200 --lr 1e-3 --data-seed 0 --threads 1
"$PY" scripts/continue_llm.py "$RUN/llm2" --model "$RUN/llm1/model" --steps 1200 --lr 1e-3 --data-seed 1 --threads 1
"$PY" scripts/continue_llm.py "$RUN/llm3" --model "$RUN/llm2/model" --steps 1200 --lr 1e-3 --data-seed 2 --threads 1 \
  --weights caption=0.1,vqa=0.15,grounding=0.15,text_to_image=0.2,edit=0.4
# Comprehension tuning (2026-12-06, issue 22's sized run): one more fresh LoRA at the rate the learning curves
# favour (3e-4), weighted towards caption/VQA/grounding; 28 min of one thread. The bundle is RUN/llm4/model
# (only its LLM differs from llm3's).
"$PY" scripts/continue_llm.py "$RUN/llm4" --model "$RUN/llm3/model" --steps 2400 --lr 3e-4 --data-seed 3 --threads 1 \
  --weights caption=0.25,vqa=0.25,grounding=0.25,text_to_image=0.125,edit=0.125

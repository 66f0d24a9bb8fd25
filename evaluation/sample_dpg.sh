#!/usr/bin/env bash
# Sample DPG-Bench 2x2 grids with the official protocol (4 images/prompt, guidance 10, 50 grid points,
# 432 px tiles), sharded over all local GPUs with accelerate. Resumable: rerun to finish.
#
#   bash evaluation/sample_dpg.sh MODEL_PATH [OUTDIR] [key=value ...]
#   e.g. bash evaluation/sample_dpg.sh showlab/show-o2-1.5B showo2_1.5b_dpg_samples vae_path=Wan2.1_VAE.pth
#
# Env: NUM_PROCESSES (default: number of GPUs, else 1), PYTHON (default: .venv/bin/python if present),
#      DRY_RUN=1 prints the command instead of running it.
# Then score with the external DPG-Bench scorer (see evaluation/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,10p' "$0"; exit 0
fi
MODEL="$1"; shift
OUTDIR="${1:-outputs/dpg_samples}"; [ $# -gt 0 ] && shift
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
NGPU=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
NPROC="${NUM_PROCESSES:-$(( NGPU > 0 ? NGPU : 1 ))}"
ARGS=(-m evaluation.dpg "model_path=$MODEL" "outdir=$OUTDIR"
      validation_prompts_file=prompts/dpg_bench_meta_data.json
      n_samples=4 batch_size=4 guidance_scale=10 num_inference_steps=50 resolution=432 "$@")
if [ "$NPROC" -gt 1 ]; then
  CMD=("$PY" -m accelerate.commands.launch --multi_gpu --num_processes "$NPROC" "${ARGS[@]}")
else
  CMD=("$PY" "${ARGS[@]}")
fi
if [ "${DRY_RUN:-0}" = "1" ]; then echo "${CMD[@]}"; else "${CMD[@]}"; fi

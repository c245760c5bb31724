#!/usr/bin/env bash
# GPU smoke: calibrate + distill a few steps in bf16 on a Qwen2.5-0.5B-shaped model (see bench/gpu_smoke.py).
# Works from a checkout with the package installed, or on a bare GPU image that already has torch/transformers/peft
# (PYTHONPATH is set to the checkout). Pass --tiny to check the script on CPU.
# --rollout: the scale figures instead (bench/gpu_rollout.py): vLLM vs HF generate rollout tokens/s (G=8, 256 new
# tokens) on Qwen2.5-0.5B- and Qwen3-8B-shaped random-weight models, calibrate step time, peak memory.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if [ "${1:-}" = "--rollout" ]; then
  shift
  exec timeout 570 "$PY" bench/gpu_rollout.py "$@"
fi
exec timeout 480 "$PY" bench/gpu_smoke.py "$@"

#!/usr/bin/env bash
# Create .venv and install everything the project needs. Idempotent: re-running on a healthy
# environment only checks it. CPU machines get the CPU torch build, CUDA machines a CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[build_env] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1090
source "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true

if python - <<'PYCHK' 2>/dev/null; then
import importlib, sys
for m in ["torch", "transformers", "diffusers", "accelerate", "deepspeed", "omegaconf", "safetensors",
          "huggingface_hub", "einops", "PIL", "decord", "av", "wandb", "tqdm", "pytest"]:
    importlib.import_module(m)
import torch, transformers
assert transformers.__version__.split(".")[0] == "5"
PYCHK
  echo "[build_env] .venv is healthy; nothing to install"
  exit 0
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[build_env] CUDA detected: installing a CUDA build of torch ${TORCH_VERSION}"
  pip install -q "torch==${TORCH_VERSION}" --index-url "${TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/cu128}" \
    || pip install -q "torch==${TORCH_VERSION}"
else
  echo "[build_env] no CUDA: installing the CPU build of torch ${TORCH_VERSION}"
  # On these machines pip resolves torch==2.13.0 to a local CPU wheel; elsewhere use the CPU index.
  pip install -q "torch==${TORCH_VERSION}" \
    || pip install -q "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
fi
# DeepSpeed must not try to compile CUDA/CPU ops at install time; they are JIT-built on first use.
export DS_BUILD_OPS=0 DS_BUILD_AIO=0 DS_BUILD_SPARSE_ATTN=0
pip install -q -r requirements.txt
# torchvision/timm break imports next to the CPU torch build; make sure nothing pulled them in.
pip uninstall -y -q torchvision timm >/dev/null 2>&1 || true
python -c "import torch, transformers, diffusers, accelerate, deepspeed; print('[build_env] torch', torch.__version__, '| transformers', transformers.__version__, '| diffusers', diffusers.__version__, '| cuda', torch.cuda.is_available())"

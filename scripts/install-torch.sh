#!/usr/bin/env bash
# Install PyTorch into the given Python's environment, unless it already imports:
# a CUDA build where an NVIDIA driver is present, a CPU build elsewhere.
set -euo pipefail
py="${1:-python3}"
if "$py" -c "import torch" 2>/dev/null; then
  exit 0
fi
pyver=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  echo "installing PyTorch (CUDA build)"
  "$py" -m pip install -q torch
  exit 0
fi
# A CPU wheel already on disk (some build machines carry one) saves a large download.
wheel=$(ls /opt/wheels/torch-*+cpu-"$pyver"-*.whl 2>/dev/null | sort -V | tail -n 1 || true)
if [ -n "$wheel" ]; then
  echo "installing PyTorch CPU build from $wheel"
  "$py" -m pip install -q "$wheel"
  exit 0
fi
echo "installing PyTorch (CPU build)"
"$py" -m pip install -q torch --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}" \
  || "$py" -m pip install -q torch

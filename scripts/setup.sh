#!/usr/bin/env bash
# Idempotent setup: a venv in .venv with torch, ComfyUI's requirements (when a ComfyUI is found),
# Visage's requirements, the test tools and this checkout installed editable as the package `visage`.
# Prints the ComfyUI it found (or why none).
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
# none found: unpack the pinned ComfyUI source that sits beside the repo (../shared/comfyui, the developers'
# and CI's machines) outside the repo, so every machine runs the comfy tier
SHARED_COMFY="$REPO/../shared/comfyui/ComfyUI-0.3.64.tar.gz"
if [ -z "$COMFY" ] && [ -f "$SHARED_COMFY" ]; then
  DEST="${VISAGE_COMFY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/visage}"
  if [ ! -f "$DEST/ComfyUI-0.3.64/main.py" ]; then
    echo "[visage] unpacking ComfyUI 0.3.64 from ../shared/comfyui into $DEST"
    mkdir -p "$DEST"
    tar -xzf "$SHARED_COMFY" -C "$DEST"
  fi
  COMFY=$(cd "$DEST/ComfyUI-0.3.64" && pwd)
fi
if [ -n "$COMFY" ]; then
  echo "[visage] ComfyUI: $COMFY"
  # ComfyUI's requirements without letting pip touch torch; the frontend version stays as ComfyUI pins it
  grep -vE '^(torch|torchvision|torchaudio)([^A-Za-z0-9_-]|$)' "$COMFY/requirements.txt" > .venv/comfy-requirements.txt
  "$VPY" -m pip install -q -r .venv/comfy-requirements.txt
else
  echo "[visage] no ComfyUI found (set COMFYUI_PATH, clone this pack into ComfyUI/custom_nodes, or lay ComfyUI out at /opt/ComfyUI)"
fi
"$VPY" -m pip install -q -r requirements.txt -r requirements-test.txt
# the optional batch extra (Ray) so the tests of `visage-run batch` run; the node pack never imports it
"$VPY" -m pip install -q -r requirements-batch.txt
# this checkout as the package `visage` (editable; pyproject.toml maps it to the repo root) and the
# `visage-run` command: tests, bench/ and tools/ `import visage...`; importing it registers no nodes
"$VPY" -m pip install -q --no-deps -e .
echo "$COMFY" > .venv/comfyui-path

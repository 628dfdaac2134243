#!/usr/bin/env bash
# Run the whole test suite (unit, real-fixture, real-ComfyUI and browser tiers; GPU tests skip without CUDA).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not comfy".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
COMFY=$(cat .venv/comfyui-path)
if [ -n "$COMFY" ]; then export COMFYUI_PATH="$COMFY"; fi
set +e
.venv/bin/python -m pytest "$@" 2>&1 | tee .venv/last-test-run.log
rc=${PIPESTATUS[0]}
set -e
if grep -q "COMFY TIER SKIPPED" .venv/last-test-run.log; then
  echo "################################################################################"
  echo "# WARNING: the comfy tier was SKIPPED: no real ComfyUI was found.               #"
  echo "# Set COMFYUI_PATH to a ComfyUI checkout to run the nodes inside ComfyUI.        #"
  echo "################################################################################"
fi
exit $rc

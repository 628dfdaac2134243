#!/usr/bin/env bash
# One command for a newcomer: set everything up, then run the face-analysis workflow headless on a
# real photo through a real ComfyUI (started with --cpu when there is no GPU), and print where the
# outputs went.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
bash scripts/setup.sh
COMFY=$(cat .venv/comfyui-path)
if [ -z "$COMFY" ]; then
  echo "[visage] cannot run a workflow without ComfyUI: git clone ComfyUI, put this folder in ComfyUI/custom_nodes/ (or set COMFYUI_PATH) and run again" >&2
  exit 2
fi
VPY="$REPO/.venv/bin/python"
# a face model pack: the user's own (buffalo_l / antelopev2 in ComfyUI's models), else the small
# real test models in ../shared/fixtures when present
MODELS="${VISAGE_MODELS_DIR:-$COMFY/models}"
PACK=""
for p in buffalo_l antelopev2; do
  if [ -d "$MODELS/insightface/models/$p" ]; then PACK=$p; break; fi
done
if [ -z "$PACK" ]; then
  FIX="$REPO/../shared/fixtures/models"
  if [ -f "$FIX/det_500m.onnx" ]; then
    MODELS="$REPO/.venv/quickstart-models"
    mkdir -p "$MODELS/insightface/models/fixtures_small"
    for f in det_500m.onnx mobileface_paddle_128d.onnx pfld_68pt.onnx; do
      ln -sf "$(cd "$FIX" && pwd)/$f" "$MODELS/insightface/models/fixtures_small/$f"
    done
    PACK=fixtures_small
    echo "[visage] no buffalo_l/antelopev2 in $COMFY/models/insightface/models: using the small real test models"
  else
    echo "[visage] no face model pack found. Put buffalo_l or antelopev2 into $MODELS/insightface/models/ (see README, Models)" >&2
    exit 2
  fi
fi
PHOTO=$("$VPY" -c "import insightface, os; print(os.path.join(os.path.dirname(insightface.__file__), 'data', 'images', 't1.jpg'))")
OUT="$REPO/visage_outputs/quickstart"
echo "[visage] analysing $PHOTO with pack '$PACK' through ComfyUI at $COMFY"
"$VPY" -m visage.runner workflows/api/face_analysis.json --comfyui "$COMFY" --models "$MODELS" \
  --image "Load Image=$PHOTO" --set "Load Face Analyzer.pack=$PACK" --output "$OUT"
echo "[visage] outputs written to: $OUT"
ls -1 "$OUT" | sed 's/^/  /'

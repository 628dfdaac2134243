#!/usr/bin/env bash
# One command for a newcomer: find (or obtain) a ComfyUI, install this pack into it, make sure a face model
# pack is there, and run the face-analysis workflow headless on insightface's group photo; print where the
# outputs went. Nothing long starts before every network need has been checked: offline, it says what to
# put where and exits 2.
#
#   bash scripts/quickstart.sh [--separate-venv] [--copy] [--comfyui DIR]
#
#   --separate-venv  build a separate environment in .venv (torch + ComfyUI's and Visage's requirements)
#                    instead of installing into ComfyUI's own environment
#   --copy           copy the pack into ComfyUI/custom_nodes/visage instead of linking it
#   --comfyui DIR    the ComfyUI to use, or where to put a new one (default: $COMFYUI_PATH, the ComfyUI this
#                    folder sits in, ~/ComfyUI, /opt/ComfyUI; a new one goes to ~/ComfyUI)
#
# Environment: COMFYUI_PATH, VISAGE_MODELS_DIR (a models/ folder other than ComfyUI's), PIP_INDEX_URL,
# VISAGE_COMFYUI_GIT (the git URL of ComfyUI), VISAGE_MODELS_BASE_URL (a mirror for tools/get_models.py),
# VISAGE_QUICKSTART_OUT (outputs; default visage_outputs/quickstart), VISAGE_QUICKSTART_PACK (the pack to
# fetch; default buffalo_l). For tests: VISAGE_SHARED_DIR (default ../shared), VISAGE_COMFYUI_SEARCH
# (colon-separated places to look for a ComfyUI instead of the defaults), VISAGE_SEPARATE_VENV (where
# --separate-venv builds), VISAGE_TORCH_INDEX (torch's CPU index), VISAGE_PIP_DRY=1 (print the pip and venv
# commands instead of running them).
#
# Exit codes: 0 done; 2 something is missing that this script cannot get (offline, no ComfyUI, no models:
# the message says what to do); otherwise the code of the step that failed (visage-run: 1 failed,
# 3 ComfyUI did not start, 4 timeout).
set -euo pipefail
ORIG_PWD=$(pwd)
cd "$(dirname "$0")/.."
REPO=$(pwd)
# shellcheck source=scripts/pins.sh
. scripts/pins.sh
T0=$SECONDS
say() { echo "[visage] $*"; }
die() { echo "[visage] $*" >&2; exit "${2:-2}"; }

SEPARATE=0
COPY=0
COMFY_ARG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --separate-venv) SEPARATE=1 ;;
    --copy) COPY=1 ;;
    --comfyui) COMFY_ARG=${2:?--comfyui needs a folder}; shift ;;
    --comfyui=*) COMFY_ARG=${1#*=} ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

PY3=${PYTHON:-python3}
command -v "$PY3" >/dev/null 2>&1 || die "no python3 on PATH: install Python 3.10 or newer (python.org or your system's package manager) and run again"
SHARED=${VISAGE_SHARED_DIR:-$REPO/../shared}
TARBALL="$SHARED/comfyui/ComfyUI-$VISAGE_COMFYUI_VERSION.tar.gz"
FIXTURES="$SHARED/fixtures/models"
COMFY_GIT=${VISAGE_COMFYUI_GIT:-$VISAGE_COMFYUI_GIT_DEFAULT}
PACK_WANTED=${VISAGE_QUICKSTART_PACK:-$VISAGE_DEFAULT_PACK}
OUT=${VISAGE_QUICKSTART_OUT:-$REPO/visage_outputs/quickstart}
INDEX=${PIP_INDEX_URL:-https://pypi.org/simple}
probe() { "$PY3" "$REPO/tools/get_models.py" --probe "$@" 2>/dev/null; }
run() { # a long step: printed, and only printed under VISAGE_PIP_DRY=1
  if [ "${VISAGE_PIP_DRY:-0}" = 1 ]; then say "would run: $*"; else "$@"; fi
}

# ------------------------------------------------------------------ where things are (nothing changes yet)
is_comfy() { [ -n "$1" ] && [ -f "$1/main.py" ] && [ -f "$1/folder_paths.py" ]; }
COMFY=""
if [ -n "$COMFY_ARG" ]; then
  [[ $COMFY_ARG == /* ]] || COMFY_ARG="$ORIG_PWD/$COMFY_ARG"
  if is_comfy "$COMFY_ARG"; then COMFY=$(cd "$COMFY_ARG" && pwd); fi
  NEW_COMFY=$COMFY_ARG
else
  NEW_COMFY="$HOME/ComfyUI"
  SEARCH=${VISAGE_COMFYUI_SEARCH-"${COMFYUI_PATH:-}:$(dirname "$(dirname "$REPO")"):$HOME/ComfyUI:/opt/ComfyUI"}
  IFS=: read -r -a PLACES <<<"$SEARCH"
  for c in "${PLACES[@]}"; do
    if is_comfy "$c"; then COMFY=$(cd "$c" && pwd); break; fi
  done
fi
if [ -z "$COMFY" ] && [ -e "$NEW_COMFY" ] && [ -n "$(ls -A "$NEW_COMFY" 2>/dev/null)" ]; then
  die "$NEW_COMFY exists and is not a ComfyUI (no main.py): move it away, or give --comfyui DIR (an existing ComfyUI, or an empty or new folder for a fresh one)"
fi
COMFY_DIR=${COMFY:-$NEW_COMFY}
if [ -z "$COMFY" ]; then
  if [ -f "$TARBALL" ]; then COMFY_FROM=tarball; else COMFY_FROM=git; fi
fi

# the Python environment: ComfyUI's own unless --separate-venv
ENV_NEW=0
if [ $SEPARATE = 1 ]; then
  PY="${VISAGE_SEPARATE_VENV:-$REPO/.venv}/bin/python"
  [ -x "$PY" ] || ENV_NEW=1
elif [ -x "$COMFY_DIR/venv/bin/python" ]; then
  PY="$COMFY_DIR/venv/bin/python"
elif [ -x "$COMFY_DIR/.venv/bin/python" ]; then
  PY="$COMFY_DIR/.venv/bin/python"
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  PY="$VIRTUAL_ENV/bin/python"
elif [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ]; then
  PY="$CONDA_PREFIX/bin/python"
elif [ -n "$COMFY" ] && "$PY3" -c "import torch" >/dev/null 2>&1; then
  PY=$(command -v "$PY3") # the interpreter this ComfyUI runs with (torch is there)
else
  PY="$COMFY_DIR/venv/bin/python" # ComfyUI's README puts its environment there
  ENV_NEW=1
fi
VENV_DIR=$(dirname "$(dirname "$PY")")

# what of ComfyUI's and Visage's requirements the environment lacks (names only; pins are pip's business)
missing_reqs() {
  [ $ENV_NEW = 1 ] && { echo "(new environment)"; return; }
  local files=("$REPO/requirements.txt")
  [ -n "${1:-}" ] && [ -f "$1/requirements.txt" ] && files+=("$1/requirements.txt")
  "$PY" - "${files[@]}" <<'PYEOF'
import re, sys
from importlib import metadata
miss = []
for path in sys.argv[1:]:
    for line in open(path, encoding="utf-8"):
        name = re.split(r"[<>=~!;\[ ]", line.split("#")[0].strip())[0]
        if name in ("torch", "torchvision", "torchaudio"):  # the torch family: checked apart, never replaced
            continue
        if name:
            try:
                metadata.version(name)
            except metadata.PackageNotFoundError:
                miss.append(name)
try:
    metadata.version("torch")
except metadata.PackageNotFoundError:
    miss.insert(0, "torch")
print(" ".join(dict.fromkeys(miss)))
PYEOF
}

# the face model pack
MODELS=${VISAGE_MODELS_DIR:-$COMFY_DIR/models}
PACKS_DIR="$MODELS/insightface/models"
PACK=""
OTHER_PACKS=$(cd "$PACKS_DIR" 2>/dev/null && ls -d -- */ 2>/dev/null | tr -d / | tr '\n' ' ' || true)
# shellcheck disable=SC2086
for p in "$PACK_WANTED" buffalo_l antelopev2 $OTHER_PACKS; do
  if ls "$PACKS_DIR/$p"/*.onnx >/dev/null 2>&1; then PACK=$p; break; fi
  if ls "$PACKS_DIR/$p/$p"/*.onnx >/dev/null 2>&1; then # antelopev2.zip unpacks nested: Visage reads it as is
    say "the $p pack is nested ($PACKS_DIR/$p/$p/): Visage reads it there (other packs may want the files one folder up)"
    PACK=$p
    break
  fi
done
MODELS_PLAN=have
if [ -z "$PACK" ]; then
  if "$PY3" tools/get_models.py --reachable "$PACK_WANTED" >/dev/null 2>&1; then
    MODELS_PLAN=fetch
  elif [ -f "$FIXTURES/det_500m.onnx" ]; then
    MODELS_PLAN=fixtures
  else
    MODELS_PLAN=none
  fi
fi

# ------------------------------------------------------------------ every network need, before anything long
PROBLEMS=()
if [ -z "$COMFY" ] && [ "$COMFY_FROM" = git ] && ! probe "$COMFY_GIT"; then
  PROBLEMS+=("ComfyUI $VISAGE_COMFYUI_VERSION: $COMFY_GIT cannot be reached. On a machine with network access run
      git clone --depth 1 --branch $VISAGE_COMFYUI_TAG $COMFY_GIT ComfyUI
    and copy that ComfyUI folder to $COMFY_DIR (or set COMFYUI_PATH to a ComfyUI you have), then run again.")
fi
MISSING=""
if [ $ENV_NEW = 1 ] || [ -n "$COMFY" ]; then MISSING=$(missing_reqs "$COMFY"); fi
if [ -z "$COMFY" ] && [ -z "$MISSING" ] && [ $ENV_NEW = 0 ]; then
  # the new ComfyUI's requirements are known once it is there: the tarball tells now, a clone after it
  if [ "$COMFY_FROM" = tarball ]; then
    tmpreq=$(mktemp -d)
    tar -xzf "$TARBALL" -C "$tmpreq" --strip-components=1 --wildcards "*/requirements.txt"
    MISSING=$(missing_reqs "$tmpreq")
    rm -rf "$tmpreq"
  fi
fi
if [ -n "$MISSING" ] && ! probe "$INDEX"; then
  if [ $ENV_NEW = 1 ] && [ $SEPARATE = 1 ]; then
    PROBLEMS+=("Python environment: building the separate environment $VENV_DIR (--separate-venv: torch + ComfyUI's and
    Visage's requirements) needs the package index $INDEX, which cannot be reached. Connect to the network (or set
    PIP_INDEX_URL to a mirror you can reach), or leave out --separate-venv to use ComfyUI's environment.")
  elif [ $ENV_NEW = 1 ]; then
    PROBLEMS+=("Python environment: none was found for ComfyUI (no venv in $COMFY_DIR, no active virtualenv or conda
    environment), and building one ($VENV_DIR: torch + ComfyUI's and Visage's requirements) needs the package index
    $INDEX, which cannot be reached. Connect to the network (or set PIP_INDEX_URL to a mirror you can reach), or
    activate an environment that has torch and those requirements (source .../bin/activate), then run again.")
  else
    PROBLEMS+=("Python packages: $PY lacks $MISSING, and the package index $INDEX cannot be reached. Connect to
    the network (or set PIP_INDEX_URL to a mirror you can reach), or install them into that environment by hand
    (its torch stays as it is), then run again.")
  fi
fi
TORCH_INDEX=()
if ! command -v nvidia-smi >/dev/null 2>&1 && [ "$(uname -s)" = Linux ]; then
  TORCH_INDEX=(--index-url "${VISAGE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}")
  if [[ " $MISSING " == *" torch "* || $ENV_NEW = 1 ]] && ! probe "${TORCH_INDEX[1]}"; then
    PROBLEMS+=("torch (CPU build; this machine has no NVIDIA GPU): ${TORCH_INDEX[1]} cannot be reached. Connect to the
    network, or set VISAGE_TORCH_INDEX to a mirror of it, or activate an environment that has torch, then run again.")
  fi
fi
if [ "$MODELS_PLAN" = none ]; then
  url=$("$PY3" tools/get_models.py --list | sed -n "s/^\[$PACK_WANTED\] .*  \(http[^ ]*\)$/\1/p" | head -1)
  PROBLEMS+=("Face models: no face model pack in $PACKS_DIR/ and ${VISAGE_MODELS_BASE_URL:-${url:-its published location}} cannot be reached.
    On a machine with network access download $url, unzip its .onnx files into
      $PACKS_DIR/$PACK_WANTED/
    (the files directly in that folder, not in a sub-folder), or run there: python tools/get_models.py --models <ComfyUI>/models $PACK_WANTED
    and copy the folder over; then run again.")
fi
if [ ${#PROBLEMS[@]} -gt 0 ]; then
  {
    echo "[visage] cannot set up: nothing was downloaded or installed. What is missing and where to put it:"
    for p in "${PROBLEMS[@]}"; do echo "  - $p"; done
  } >&2
  exit 2
fi

# ------------------------------------------------------------------ ComfyUI
if [ -z "$COMFY" ]; then
  mkdir -p "$COMFY_DIR"
  if [ "$COMFY_FROM" = tarball ]; then
    say "unpacking ComfyUI $VISAGE_COMFYUI_VERSION from $TARBALL into $COMFY_DIR"
    tar -xzf "$TARBALL" -C "$COMFY_DIR" --strip-components=1
  else
    say "cloning ComfyUI $VISAGE_COMFYUI_TAG from $COMFY_GIT into $COMFY_DIR"
    git -c advice.detachedHead=false clone -q --depth 1 --branch "$VISAGE_COMFYUI_TAG" "$COMFY_GIT" "$COMFY_DIR" ||
      die "git clone of $COMFY_GIT ($VISAGE_COMFYUI_TAG) failed; clone it by hand into $COMFY_DIR and run again" 1
  fi
  COMFY=$(cd "$COMFY_DIR" && pwd)
  is_comfy "$COMFY" || die "$COMFY holds no ComfyUI after unpacking (no main.py)" 1
  if [ $ENV_NEW = 0 ] && [ -z "$MISSING" ]; then
    MISSING=$(missing_reqs "$COMFY")
    if [ -n "$MISSING" ] && ! probe "$INDEX"; then
      die "ComfyUI is now in $COMFY, but its environment $PY lacks $MISSING and $INDEX cannot be reached: install them there ($PY -m pip install -r $COMFY/requirements.txt, keeping its torch) or set PIP_INDEX_URL to a mirror, then run again"
    fi
  fi
fi
say "ComfyUI: $COMFY"

# ------------------------------------------------------------------ the pack in custom_nodes
INSTALLED=""
for d in "$COMFY/custom_nodes"/*; do
  if [ -d "$d" ] && [ "$(cd "$d" && pwd -P)" = "$(pwd -P)" ]; then INSTALLED=$d; fi
done
if [ -z "$INSTALLED" ]; then
  DEST="$COMFY/custom_nodes/visage"
  [ -e "$DEST" ] && die "$DEST exists and is another folder: remove it, or put this checkout there, then run again"
  mkdir -p "$COMFY/custom_nodes"
  if [ $COPY = 1 ]; then
    say "copying the pack into $DEST"
    cp -a "$REPO" "$DEST"
  else
    say "linking the pack into ComfyUI: $DEST -> $REPO"
    ln -s "$REPO" "$DEST"
  fi
fi

# ------------------------------------------------------------------ Python environment
if [ $ENV_NEW = 1 ]; then
  say "creating the Python environment $VENV_DIR"
  run "$PY3" -m venv "$VENV_DIR"
fi
if [ -n "$MISSING" ]; then
  say "installing into $PY: $MISSING"
  CONS="$(mktemp -d)/constraints.txt"
  TORCH_NOW=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
  if [ -n "$TORCH_NOW" ]; then
    # keep this environment's torch: pin what is installed, and let ComfyUI's list not name torch at all
    "$PY" - >"$CONS" <<'PYEOF'
from importlib import metadata
for name in ("torch", "torchvision", "torchaudio"):
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
PYEOF
    say "keeping torch $TORCH_NOW (pip constraints: $(tr '\n' ' ' <"$CONS"))"
  else
    : >"$CONS"
    [ ${#TORCH_INDEX[@]} -gt 0 ] && say "no NVIDIA GPU: the CPU build of torch (no CUDA libraries)"
    # shellcheck disable=SC2086
    run "$PY" -m pip install -q ${TORCH_INDEX[@]+"${TORCH_INDEX[@]}"} $VISAGE_TORCH_PINS
  fi
  REQS="$(dirname "$CONS")/comfy-requirements.txt"
  grep -vE '^(torch|torchvision|torchaudio)([^A-Za-z0-9_-]|$)' "$COMFY/requirements.txt" >"$REQS"
  run "$PY" -m pip install -q -c "$CONS" -r "$REQS" -r "$REPO/requirements.txt"
else
  say "Python environment: $PY (everything needed is installed)"
fi
if [ "${VISAGE_PIP_DRY:-0}" = 1 ] && { [ $ENV_NEW = 1 ] || [ -n "$MISSING" ]; }; then
  say "VISAGE_PIP_DRY=1: the environment was not completed, so the workflow is not run"
  exit 0
fi

# ------------------------------------------------------------------ models
RUN_MODELS=$MODELS
case "$MODELS_PLAN" in
  fetch)
    say "no face model pack in $PACKS_DIR: fetching $PACK_WANTED (tools/get_models.py)"
    if "$PY3" tools/get_models.py --models "$MODELS" "$PACK_WANTED"; then
      PACK=$PACK_WANTED
    elif [ -f "$FIXTURES/det_500m.onnx" ]; then
      say "the download failed: using the small real test models in $SHARED/fixtures instead"
      MODELS_PLAN=fixtures
    else
      die "could not fetch the $PACK_WANTED pack (above); put its .onnx files into $PACKS_DIR/$PACK_WANTED/ and run again" 1
    fi
    ;;
esac
if [ "$MODELS_PLAN" = fixtures ]; then
  # the developers' small real models, linked into a models folder of our own (never into the user's)
  RUN_MODELS="${XDG_CACHE_HOME:-$HOME/.cache}/visage/quickstart-models"
  mkdir -p "$RUN_MODELS/insightface/models/fixtures_small"
  for f in det_500m.onnx mobileface_paddle_128d.onnx pfld_68pt.onnx; do
    ln -sf "$(cd "$FIXTURES" && pwd)/$f" "$RUN_MODELS/insightface/models/fixtures_small/$f"
  done
  PACK=fixtures_small
  say "no face model pack in $PACKS_DIR: using the small real test models of $SHARED/fixtures"
fi
say "face model pack: $PACK ($RUN_MODELS/insightface/models/$PACK)"

# ------------------------------------------------------------------ run
PHOTO=$("$PY" -c "import insightface, os; print(os.path.join(os.path.dirname(insightface.__file__), 'data', 'images', 't1.jpg'))" 2>/dev/null || true)
[ -f "$PHOTO" ] || PHOTO="$SHARED/fixtures/images/insightface/t1.jpg"
[ -f "$PHOTO" ] || die "no photo to analyse: insightface (in $PY) ships data/images/t1.jpg; install it there" 1
SETUP_S=$((SECONDS - T0))
say "setup took ${SETUP_S}s; analysing $PHOTO with pack '$PACK' (ComfyUI's input/output folders are not used)"
rm -rf "$OUT"
set +e
"$PY" "$REPO/scripts/visage_run.py" "$REPO/workflows/api/face_analysis.json" --comfyui "$COMFY" --python "$PY" \
  --models "$RUN_MODELS" --image "Load Image=$PHOTO" --set "Load Face Analyzer.pack=$PACK" --output "$OUT" >/dev/null
rc=$?
set -e
[ $rc = 0 ] || die "the workflow did not run (visage-run exit code $rc; its messages are above)" $rc
say "done in $((SECONDS - T0))s; outputs written to: $OUT"
(cd "$OUT" && find . -type f | sort | sed "s|^\./|  |")

# The versions the quickstart installs and the tests run (one place; sourced by scripts/quickstart.sh).
# ComfyUI: the tagged release cloned when no ComfyUI is found (VISAGE_COMFYUI_GIT overrides the URL).
VISAGE_COMFYUI_GIT_DEFAULT="https://github.com/comfyanonymous/ComfyUI.git"
VISAGE_COMFYUI_TAG="v0.3.64"
VISAGE_COMFYUI_VERSION="0.3.64"
# the frontend that ComfyUI 0.3.64 pins in its requirements.txt (installed with it)
VISAGE_FRONTEND_VERSION="1.27.10"
# torch for a new environment (an existing environment's torch is never touched)
VISAGE_TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
# the face model pack fetched when none is found (workflows/api/face_analysis.json uses buffalo_l)
VISAGE_DEFAULT_PACK="buffalo_l"

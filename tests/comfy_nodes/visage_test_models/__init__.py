"""Test-only ComfyUI node pack: tiny models built in the ComfyUI process with ComfyUI's own classes.

Loaded only by the test harness (``tests/comfy_harness.make_base_dir`` links every pack of
``tests/comfy_nodes/`` into ``custom_nodes``); never shipped. ComfyUI's model detection fixes the real
widths (Flux 3072, SDXL's depth), so small random models cannot come through its loaders: these nodes
build them in their place.

One file per model kind (``tiny_flux.py``; add ``tiny_sdxl.py``, ``tiny_controlnet.py`` ... beside it):
each module defines ``NODE_CLASS_MAPPINGS`` (ids ``Test*``: not ``Visage*``, so no test of the shipped nodes counts them) and ``NODE_DISPLAY_NAME_MAPPINGS``;
this file gathers every module of the folder. Weights are random and seeded: the same inputs build
the same model in every process.
"""

import importlib
import logging
import os
import pkgutil

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

for _m in sorted(pkgutil.iter_modules([os.path.dirname(__file__)]), key=lambda m: m.name):
    if _m.name.startswith("_"):
        continue
    try:
        _mod = importlib.import_module(f".{_m.name}", __name__)
    except Exception:  # a broken builder must not hide the others
        logging.getLogger("visage.tests").exception("visage_test_models: %s failed to import", _m.name)
        continue
    NODE_CLASS_MAPPINGS.update(getattr(_mod, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_mod, "NODE_DISPLAY_NAME_MAPPINGS", {}))

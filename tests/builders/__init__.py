"""Builders of test models in the released formats (random weights, real signatures / key names).

Each module here has ``build(models_dir, input_dir)``; :func:`build_all` runs them all so one real
ComfyUI server sees every family's models. Builders must be quick (seconds) and deterministic.
"""

import importlib
import logging
import os
import pkgutil

# builders import the pack's own code as `visage.…` (the editable install, scripts/setup.sh)
log = logging.getLogger("visage.tests")


def build_all(models_dir: str, input_dir: str) -> None:
    """Every family's builder, then ``released`` (the released file names, over the files built before)."""
    here = os.path.dirname(__file__)
    names = sorted(m.name for m in pkgutil.iter_modules([here]))
    for name in [n for n in names if n != "released"] + ["released"]:
        mod = importlib.import_module(f"builders.{name}")
        if hasattr(mod, "build"):
            mod.build(models_dir, input_dir)

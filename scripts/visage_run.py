#!/usr/bin/env python3
"""``python scripts/visage_run.py ...`` = ``visage-run ...`` from a clone, with or without the install.

The runner is the package ``runner/`` (``visage.runner``); it is loaded from this clone under that name
(it imports only the standard library and its own modules, so the root package is not needed).
"""

import importlib
import importlib.util
import os
import sys

_RUNNER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runner")
_spec = importlib.util.spec_from_file_location(
    "visage.runner", os.path.join(_RUNNER, "__init__.py"), submodule_search_locations=[_RUNNER]
)
sys.modules["visage.runner"] = _pkg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pkg)

if __name__ == "__main__":
    sys.exit(importlib.import_module("visage.runner.cli").main())

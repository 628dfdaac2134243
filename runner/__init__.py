"""The headless runner: ``visage-run`` (``python -m visage.runner``) runs a ComfyUI workflow over HTTP.

The code is in :mod:`visage.runner.cli` (standard library only: no torch, no ComfyUI). See docs/HEADLESS.md.
"""

"""Visage's pure core: face types, errors, the model manager, paths and the manifest, image helpers,
ONNX loading and routing helpers, face selection and the no-face policy.

Imports neither ComfyUI (``comfy``, ``folder_paths``, ``server``) nor any node family; ``kernels/``
builds on it, the families in ``nodes/`` build on both, and ``nodes/comfy_glue.py`` is the one place
that talks to ComfyUI.
"""

"""The identity methods, one entry each: what a method consumes and the function that applies it.

A method module in ``nodes/adapters/methods/`` registers itself with :func:`register`; ``node.py``
holds the node schemas and calls :func:`run`. Adding a method = one module in ``methods/``, its node
schema in ``node.py``, and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict


@dataclass(frozen=True)
class MethodSpec:
    """``trained_on``: the recognizer id (core.recognizers) whose embedding space the method's weights
    were trained on; ``normed``: whether it takes the L2-normalised (True) or the raw embedding."""

    key: str
    name: str
    trained_on: str
    normed: bool


METHODS: Dict[str, MethodSpec] = {}
_APPLY: Dict[str, Callable] = {}
_PASSTHROUGH: Dict[str, Callable] = {}

ON_NO_FACE = ("error", "passthrough")
ON_NO_FACE_TIP = (
    "The identity faces hold no face (e.g. Analyze Faces with on_no_face = passthrough on an empty frame): "
    "'error' stops naming the images; 'passthrough' returns the inputs unchanged (no identity), so headless "
    "batches never fail on an empty frame."
)


def register(spec: MethodSpec, apply: Callable, passthrough: Callable) -> MethodSpec:
    """Register a method: ``apply(glue, **node_inputs)`` returns the node's outputs;
    ``passthrough(glue, **node_inputs)`` the outputs without an identity (on_no_face = passthrough)."""
    if spec.key in METHODS and _APPLY[spec.key] is not apply:
        raise ValueError(f"identity method {spec.key!r} is registered twice")
    METHODS[spec.key] = spec
    _APPLY[spec.key] = apply
    _PASSTHROUGH[spec.key] = passthrough
    return spec


def run(key: str, glue, **inputs):
    """Apply method ``key``. ``glue`` provides what only ComfyUI can (nodes pass ``nodes.comfy_glue``):
    text_attention, load_lora, clip_vision_zero_hidden, intermediate_device."""
    from ...core.select import apply_on_no_face
    from . import methods  # noqa: F401 - registers every method module

    policy = inputs.pop("on_no_face", "error")
    faces = inputs.get("faces")
    if inputs.get("embeds") is None and faces is not None and faces.count == 0:
        apply_on_no_face(faces, policy, f"{METHODS[key].name} identity images")  # raises for 'error'
        return _PASSTHROUGH[key](glue, **inputs)
    return _APPLY[key](glue, **inputs)

"""The one dispatch point for Visage's kernels.

Every caller imports from here: ``from ...kernels import ops`` then ``ops.paste_back(...)``.
Signatures match the twins in :mod:`kernels.reference` (docs/DESIGN.md, "Kernels API").

Dispatch rule: the fused Triton kernel runs only when every tensor argument is on CUDA, Triton
imports, and ``VISAGE_DISABLE_TRITON`` is not ``1``. Otherwise the torch twin runs. Triton is
imported lazily, on the first CUDA call: a missing or broken Triton never breaks importing the
pack; it is logged once and the twins are used. A fused kernel that fails at launch (e.g. no
compiler on the machine, a shape the card lacks shared memory for) is logged once as a warning and
that op's variant (dtypes / flags / widths) falls back to its twin for the rest of the process. Input errors (VisageError) are raised before dispatch and never swallowed.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from typing import Optional, Sequence, Union

import torch

from ..core.errors import VisageError
from . import reference

log = logging.getLogger("visage")

_lock = threading.Lock()
_modules = {}  # name -> module or None (import failed)
_broken = set()  # (op, variant key) whose fused launch failed once
_triton_state = {"checked": False, "ok": False}

_FUSED_MODULE = {
    "paste_back": "triton_paste",
    "align_crops": "triton_align",
    "decoupled_attention": "triton_attention",
}


def triton_disabled() -> bool:
    return os.environ.get("VISAGE_DISABLE_TRITON", "").strip().lower() in ("1", "true", "yes", "on")


def triton_available() -> bool:
    """True when ``import triton`` works (checked once, logged once when it does not)."""
    with _lock:
        if not _triton_state["checked"]:
            _triton_state["checked"] = True
            try:
                import triton  # noqa: F401
                import triton.language  # noqa: F401

                _triton_state["ok"] = True
            except Exception as e:  # ImportError, or a broken install raising anything
                _triton_state["ok"] = False
                log.info(
                    "Visage: Triton is not usable (%s: %s); fused kernels are off, torch twins are used",
                    type(e).__name__,
                    e,
                )
        return _triton_state["ok"]


def _fused_module(op: str):
    name = _FUSED_MODULE[op]
    with _lock:
        if name in _modules:
            return _modules[name]
    mod = None
    try:
        mod = importlib.import_module(f".{name}", __package__)
    except Exception as e:
        log.info(
            "Visage: fused kernel module %s failed to import (%s: %s); using the torch twin", name, type(e).__name__, e
        )
    with _lock:
        _modules[name] = mod
    return mod


def use_fused(op: str, *tensors) -> bool:
    """Would ``op`` run fused for these tensors? (None entries are ignored.)"""
    ts = [t for t in tensors if isinstance(t, torch.Tensor)]
    if not ts or not all(t.is_cuda for t in ts):
        return False
    if triton_disabled():
        return False
    if not triton_available():
        return False
    return _fused_module(op) is not None


def _run(op: str, key, tensors, fused_call, twin_call):
    """Fused call, or the twin when the fused launch fails. A failure disables only this op's
    variant ``key`` (dtypes / flags / widths), so one shape a card cannot run (e.g. too much shared
    memory) does not take the fused path away from every other call."""
    if use_fused(op, *tensors) and (op, key) not in _broken:
        try:
            return fused_call(_fused_module(op))
        except VisageError:
            raise
        except Exception as e:  # a broken toolchain must not break the pack
            with _lock:
                first = (op, key) not in _broken
                _broken.add((op, key))
            if first:
                log.warning(
                    "Visage: fused %s %s failed (%s: %s); the torch twin runs this variant for the rest of the process",
                    op,
                    key,
                    type(e).__name__,
                    e,
                )
    return twin_call()


def paste_back(
    frames: torch.Tensor,
    crops: torch.Tensor,
    matrix: torch.Tensor,
    masks: torch.Tensor,
    frame_index: torch.Tensor,
    lab_stats: Optional[torch.Tensor] = None,
    inplace: bool = False,
) -> torch.Tensor:
    """See :func:`kernels.reference.paste_back`. Returns a new tensor (frames untouched) unless
    ``inplace=True``, which writes into ``frames`` and returns it."""
    args = (frames, crops, matrix, masks, frame_index, lab_stats, inplace)
    if not use_fused("paste_back", frames, crops, masks):
        return reference.paste_back(*args)
    m64, idx, stats = reference.check_paste_args(*args)
    key = (str(frames.dtype), str(crops.dtype), frames.shape[-1], lab_stats is not None)
    return _run(
        "paste_back",
        key,
        (frames, crops, masks),
        lambda m: m.paste_back_checked(frames, crops, masks, m64, idx, stats, inplace),
        lambda: reference.paste_back(*args),
    )


def lab_stats(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """See :func:`kernels.reference.lab_stats` (a reduction; the torch version is already one pass
    of elementwise maths plus sums, so it has no separate fused kernel)."""
    return reference.lab_stats(images, masks)


def align_crops(
    frames: torch.Tensor,
    matrix: torch.Tensor,
    frame_index: torch.Tensor,
    size: int,
    mean: Union[float, Sequence[float]] = 0.0,
    std: Union[float, Sequence[float]] = 1.0,
    bgr: bool = False,
    layout: str = "NCHW",
    out_dtype: torch.dtype = torch.float32,
    round_to_uint8: bool = False,
) -> torch.Tensor:
    """See :func:`kernels.reference.align_crops` (``round_to_uint8``: cv2-on-uint8 rounding of the
    0..255 sample before normalisation)."""
    args = (frames, matrix, frame_index, size, mean, std, bgr, layout, out_dtype, round_to_uint8)
    if not use_fused("align_crops", frames):
        return reference.align_crops(*args)
    m64, idx, mean_t, std_t = reference.check_align_args(*args)
    key = (str(frames.dtype), frames.shape[-1], str(out_dtype), layout, bool(bgr), bool(round_to_uint8))
    return _run(
        "align_crops",
        key,
        (frames,),
        lambda m: m.align_crops_checked(
            frames, m64, idx, size, mean_t, std_t, bgr, layout, out_dtype, bool(round_to_uint8)
        ),
        lambda: reference.align_crops(*args),
    )


def decoupled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_id: torch.Tensor,
    v_id: torch.Tensor,
    scale,
    region_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """See :func:`kernels.reference.decoupled_attention`. Off CUDA: two scaled-dot-product calls."""
    args = (q, k, v, k_id, v_id, scale, region_mask)
    fusable = isinstance(q, torch.Tensor) and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    if not (fusable and use_fused("decoupled_attention", q, k, v, k_id, v_id)):
        return reference.decoupled_attention(*args)
    key = (str(q.dtype), q.shape[-1], v.shape[-1], region_mask is not None)
    return _run(
        "decoupled_attention",
        key,
        (q, k, v, k_id, v_id),
        lambda m: m.decoupled_attention(*args),
        lambda: reference.decoupled_attention(*args),
    )


__all__ = [
    "paste_back",
    "lab_stats",
    "align_crops",
    "decoupled_attention",
    "use_fused",
    "triton_available",
    "triton_disabled",
]

"""Where and how PuLID-FLUX adds the identity to Flux's image tokens.

Pure torch, no state: every function takes the CA modules, the identity tokens and the weight, so a
ComfyUI ModelPatcher patch (a later step) can call it from a block wrapper.

The official ``flux/model.py`` (ToTheBeginning/PuLID):

* after double block ``i`` (0..18) with ``i % 2 == 0``: ``img = img + w * ca[k](id, img)``, ``k`` = i // 2
  (10 modules: blocks 0, 2, ..., 18);
* after single block ``j`` (0..37) with ``j % 4 == 0``: the block's output is ``cat(txt, img)``; only
  the image part (the tokens after the ``txt_len`` text tokens) is patched, the text part is kept:
  ``img = img + w * ca[k](id, img)``, ``k`` = 10 + j // 4 (10 modules: blocks 0, 4, ..., 36).

20 modules in all (``pulid_ca.0`` .. ``pulid_ca.19``), applied in that order. The official default
weight (``id_weight``) is 1.0 (its demo's slider runs 0..3).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from ...core.errors import VisageError

DOUBLE_INTERVAL = 2
SINGLE_INTERVAL = 4
FLUX_DOUBLE_BLOCKS = 19
FLUX_SINGLE_BLOCKS = 38
DEFAULT_WEIGHT = 1.0


def _count(blocks: int, interval: int) -> int:
    return (blocks + interval - 1) // interval


def num_ca(
    double_blocks: int = FLUX_DOUBLE_BLOCKS,
    single_blocks: int = FLUX_SINGLE_BLOCKS,
    double_interval: int = DOUBLE_INTERVAL,
    single_interval: int = SINGLE_INTERVAL,
) -> int:
    """How many CA modules a Flux of that depth takes (20 for Flux.1)."""
    return _count(double_blocks, double_interval) + _count(single_blocks, single_interval)


def ca_index(
    kind: str,
    block: int,
    double_blocks: int = FLUX_DOUBLE_BLOCKS,
    double_interval: int = DOUBLE_INTERVAL,
    single_interval: int = SINGLE_INTERVAL,
) -> Optional[int]:
    """The CA module applied after ``kind`` ('double' / 'single') block ``block``, or None."""
    if kind == "double":
        return block // double_interval if block % double_interval == 0 else None
    if kind == "single":
        if block % single_interval != 0:
            return None
        return _count(double_blocks, double_interval) + block // single_interval
    raise ValueError(f"kind must be 'double' or 'single', got {kind!r}")


def add_identity(ca: nn.Module, id_tokens: torch.Tensor, img: torch.Tensor, weight: float) -> torch.Tensor:
    """``img + weight * ca(id_tokens, img)``; ``img`` is returned unchanged (same object) for weight 0.

    ``id_tokens`` ``[1 or B, N_id, 2048]`` (a batch of 1 serves every item), ``img`` ``[B, N_img, 3072]``.
    The CA runs in its own parameters' dtype/device; the result has ``img``'s dtype.
    """
    if weight == 0:
        return img
    b = img.shape[0]
    if id_tokens.ndim != 3 or id_tokens.shape[0] not in (1, b):
        raise VisageError(
            "PuLID identity tokens do not fit the image batch",
            expected=f"identity tokens [1 or {b}, tokens, width]",
            got=f"shape {list(id_tokens.shape)}",
            fix="give one identity, or one per batch item",
        )
    p = next(ca.parameters())
    ids = id_tokens.to(device=p.device, dtype=p.dtype)
    if ids.shape[0] != b:
        ids = ids.expand(b, -1, -1)
    delta = ca(ids, img.to(device=p.device, dtype=p.dtype))
    return img + (weight * delta).to(device=img.device, dtype=img.dtype)


def patch_double(
    cas: Sequence[nn.Module], block: int, img: torch.Tensor, id_tokens: torch.Tensor, weight: float
) -> torch.Tensor:
    """Image tokens after double block ``block``, with the identity added where PuLID adds it."""
    k = ca_index("double", block)
    if k is None:
        return img
    return add_identity(cas[k], id_tokens, img, weight)


def patch_single(
    cas: Sequence[nn.Module], block: int, x: torch.Tensor, txt_len: int, id_tokens: torch.Tensor, weight: float
) -> torch.Tensor:
    """``cat(txt, img)`` after single block ``block``: the image part (after ``txt_len`` tokens) patched."""
    k = ca_index("single", block)
    if k is None or weight == 0:
        return x
    txt, img = x[:, :txt_len], x[:, txt_len:]
    return torch.cat((txt, add_identity(cas[k], id_tokens, img, weight)), dim=1)

"""CLIP-vision features for IP-Adapter FaceID Plus / Plus V2. Pure torch (no ComfyUI import).

The published pipeline (ip_adapter_faceid.py, ``IPAdapterFaceIDPlus.get_image_embeds``) uses the
CLIP-ViT-H-14 *penultimate* hidden states (``hidden_states[-2]``, [N, 257, 1280]) of

* the face crop (insightface ``norm_crop(image, kps, 224)``) -> the identity's features, and
* an all-zero *normalised* pixel tensor (``torch.zeros_like(clip_image)``) -> the negative's features.

The zero input is fed to the vision model as is: going through the image preprocessing with the CLIP
mean colour instead would round that colour to 8 bits first and miss zero by up to 0.004.

Encoding ViT-H is by far the slowest part of the node on a CPU, and the node re-runs whenever a
weight or window changes, so features are cached per vision model (held weakly: a model that is
unloaded takes its entries with it), keyed by the exact crop pixels.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from typing import Callable, Tuple

import torch


def crops_key(crops: torch.Tensor) -> str:
    """Identity of a crop batch: shape, dtype and the exact pixel bytes."""
    c = crops.detach().to("cpu").contiguous()
    h = hashlib.sha1(f"{tuple(c.shape)}|{c.dtype}".encode())
    h.update(c.numpy().tobytes() if c.dtype != torch.bfloat16 else c.float().numpy().tobytes())
    return h.hexdigest()


class ClipFeatureCache:
    """Per vision model (weak key), an LRU of feature tensors. Keys: 'zero' or a crops_key."""

    def __init__(self, max_items: int = 8):
        self.max_items = max_items
        self._by_model: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self.hits = 0
        self.misses = 0

    def get(self, model, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        try:
            entries = self._by_model.setdefault(model, OrderedDict())
        except TypeError:  # not weak-referenceable: no caching
            self.misses += 1
            return compute()
        if key in entries:
            entries.move_to_end(key)
            self.hits += 1
            return entries[key]
        self.misses += 1
        value = compute()
        entries[key] = value
        while len(entries) > self.max_items:
            entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._by_model = weakref.WeakKeyDictionary()


@torch.no_grad()
def zero_pixel_hidden(vision_model, size: int, device, intermediate_output: int = -2) -> torch.Tensor:
    """Penultimate hidden states [1, T, C] of an all-zero normalised input, through a ComfyUI-style
    CLIP vision module: ``vision_model(pixel_values=..., intermediate_output=-2)`` -> (last, penultimate, ...)."""
    out = vision_model(
        pixel_values=torch.zeros(1, 3, size, size, device=device), intermediate_output=intermediate_output
    )
    return out[1]


def faceid_plus_clip_features(
    crops: torch.Tensor,
    encode: Callable[[torch.Tensor], torch.Tensor],
    encode_zero: Callable[[], torch.Tensor],
    cache: ClipFeatureCache,
    model,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(cond [N, T, C], uncond [N, T, C]) float32 on the host: the crops' features and the zero input's
    features repeated per face. ``encode(crops [N, S, S, 3] 0..1)`` and ``encode_zero()`` return penultimate
    hidden states."""
    cond = cache.get(model, crops_key(crops), lambda: encode(crops).float().cpu())
    zero = cache.get(model, "zero", lambda: encode_zero().float().cpu())
    if cond.ndim != 3 or zero.ndim != 3 or cond.shape[1:] != zero.shape[1:]:
        from ...core.errors import VisageError

        raise VisageError(
            "The CLIP vision model gave features of an unexpected shape",
            expected="penultimate hidden states [N, tokens, width] (CLIP-ViT-H-14: [N, 257, 1280])",
            got=f"{tuple(cond.shape)} and {tuple(zero.shape)}",
            fix="load CLIP-ViT-H-14-laion2B-s32B-b79K with 'Load CLIP Vision'",
        )
    return cond, zero.expand(cond.shape[0], -1, -1).contiguous()


def check_clip_width(features: torch.Tensor, expected: int) -> None:
    """A FaceID Plus file's perceiver reads features of one width (ViT-H: 1280); another encoder is refused."""
    if expected and int(features.shape[-1]) != int(expected):
        from ...core.errors import VisageError

        names = {1024: "CLIP-ViT-L-14", 1280: "CLIP-ViT-H-14", 1664: "CLIP-ViT-bigG-14"}
        got = names.get(int(features.shape[-1]), "a CLIP vision model")
        raise VisageError(
            "The CLIP vision model does not fit this FaceID Plus file",
            expected=f"{names.get(int(expected), 'a CLIP vision model')} features ({expected} wide)",
            got=f"{got} features ({int(features.shape[-1])} wide)",
            fix="load CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors with 'Load CLIP Vision' "
            "(FaceID Plus / Plus V2 are trained on ViT-H)",
        )

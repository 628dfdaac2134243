"""Putting identity on ComfyUI's objects without importing ComfyUI: the model patch (through a
ModelPatcher clone and attn2 replacements only), IdentityNet and region masks on conditioning.

The ComfyUI functions these need (its attention, its devices) are passed in by the node layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.errors import VisageError
from .attention import IdentityAttentionPatch, IdentityEntry, cross_attention_blocks, match_layers, project_identity_kv
from .loaders import AdapterInfo


@dataclass
class AdapterRef:
    """The VISAGE_ID_ADAPTER payload: a model-manager handle and what the file is."""

    handle: object
    info: AdapterInfo
    name: str

    def module(self):
        return self.handle.model()


def apply_identity_patch(
    model,
    ref: AdapterRef,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    weights,
    start_at: float,
    end_at: float,
    masks,
    name: str,
    text_attention,
):
    """Clone the model (a ComfyUI ModelPatcher) and put one IdentityAttentionPatch on every
    cross-attention block; ``text_attention`` is ComfyUI's own attention (what attn2 runs unpatched)."""
    if end_at < start_at:
        raise VisageError(
            "end_at is before start_at",
            expected="start_at <= end_at",
            got=f"start_at={start_at}, end_at={end_at}",
            fix="swap the two values",
        )
    unet = model.get_model_object("diffusion_model")
    blocks = cross_attention_blocks(unet)
    layer_map = match_layers(ref.info, blocks, model_name=type(model.model).__name__)
    adapter = ref.module()
    kv = project_identity_kv(adapter.ip_layers, cond, uncond)
    ms = model.get_model_object("model_sampling")
    entry = IdentityEntry(
        kv,
        layer_map,
        weights,
        sigma_start=ms.percent_to_sigma(start_at),
        sigma_end=ms.percent_to_sigma(end_at),
        masks=masks,
        name=name,
    )
    m = model.clone()
    existing = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    ours, foreign = None, {}
    for key in layer_map:
        p = existing.get(key, existing.get(key[:2]))
        if isinstance(p, IdentityAttentionPatch):
            ours = p
        elif p is not None:
            foreign[key] = p
    patch = (
        ours.with_entry(entry, foreign)
        if ours is not None
        else IdentityAttentionPatch([entry], foreign, text_attention)
    )
    for key in layer_map:
        m.set_model_attn2_replace(patch, key[0], key[1], key[2])
    return m


def expect_kind(ref, kinds, expected):
    if not isinstance(ref, AdapterRef) or ref.info.kind not in kinds:
        got = ref.info.describe() if isinstance(ref, AdapterRef) else type(ref).__name__
        raise VisageError(
            "The adapter input holds the wrong kind of adapter",
            expected=expected,
            got=got,
            fix="connect the matching loader",
        )


def union_background(masks: torch.Tensor):
    bg = (1.0 - masks.amax(0)).clamp(0, 1)
    return bg if float(bg.max()) > 1e-3 else None


def cond_with(
    conditioning,
    control_net=None,
    hint=None,
    strength=1.0,
    window=(0.0, 1.0),
    tokens=None,
    mask=None,
    device="cpu",
    vae=None,
):
    """A copy of ComfyUI conditioning with IdentityNet (a ControlNet with the identity tokens as its context)
    and/or a region mask attached. ``vae``: for ControlNets that take the hint as a latent (Flux's
    InfuseNet), as ComfyUI's own apply node passes it."""
    out = []
    cache = {}
    dev = device
    for t in conditioning:
        d = t[1].copy()
        if control_net is not None:
            prev = d.get("control", None)
            c_net = cache.get(id(prev))
            if c_net is None:
                extra = {} if vae is None else {"vae": vae}
                c_net = control_net.copy().set_cond_hint(hint.movedim(-1, 1), strength, window, **extra)
                c_net.set_previous_controlnet(prev)
                cache[id(prev)] = c_net
            d["control"] = c_net
            d["control_apply_to_uncond"] = False
            d["cross_attn_controlnet"] = tokens.to(dev)
        if mask is not None:
            m = mask.unsqueeze(0) if mask.ndim == 2 else mask
            old = d.get("mask")
            if old is not None:
                old = old.unsqueeze(0) if old.ndim == 2 else old
                if old.shape[-2:] != m.shape[-2:]:
                    m = torch.nn.functional.interpolate(m.unsqueeze(1), size=old.shape[-2:], mode="bilinear").squeeze(1)
                m = m * old
            d["mask"] = m
            d["set_area_to_bounds"] = False
            d["mask_strength"] = d.get("mask_strength", 1.0)
        out.append([t[0], d])
    return out


def regional(conditioning, masks, per_identity, device="cpu"):
    """Per identity a copy of the conditioning confined to its mask (+ the rest of the image)."""
    out = []
    for i in range(masks.shape[0]):
        out += per_identity(i, masks[i])
    bg = union_background(masks)
    if bg is not None:
        out += cond_with(conditioning, mask=bg, device=device)
    return out

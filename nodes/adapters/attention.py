"""Decoupled cross-attention for identity tokens, as a ComfyUI ``attn2`` replace patch.

Pure torch: nothing here imports ComfyUI. ``node.py`` registers one :class:`IdentityAttentionPatch`
object for every cross-attention block key ``(block, block_id, transformer_index)`` of the UNet
(found by :func:`cross_attention_blocks` from the model itself) on a ``ModelPatcher.clone()``.

ComfyUI calls the patch as ``patch(q, k, v, extra_options)`` with ``q = to_q(x)``,
``k = to_k(context)``, ``v = to_v(context)`` ([B, L, heads*dim_head]) and applies ``to_out`` to
what it returns. The patch returns (IP-Adapter's decoupled attention, the published maths)::

    softmax(q kᵀ/√d) v  +  Σ_i  w_i · m_i ⊙ softmax(q k_iᵀ/√d) v_i,   k_i = to_k_ip(tokens_i), v_i = to_v_ip(tokens_i)

through ``kernels.ops.decoupled_attention`` (fused on CUDA, SDPA twin elsewhere). ``w_i`` is the
identity weight inside the sigma window and 0 outside it; ``m_i`` is identity i's region mask
resized to the block's resolution (``activations_shape``). Rows of the batch that ComfyUI marks
as unconditional (``cond_or_uncond``) get the unconditional identity tokens.

The patch is an ``nn.Module`` whose buffers are the identity keys/values of every layer -- projected
once, when the node runs (:func:`project_identity_kv`), not once per step -- and the region masks,
so ComfyUI's ``model_patches_to(device / dtype)`` moves it with the UNet and it holds none of the
adapter's weights. Casts to the step's device/dtype and mask resizes are cached inside the object.
``ModelPatcher.clone()`` deep-copies ``model_options``; the patch is immutable after construction,
so ``__deepcopy__`` returns the same object. A second adapter on the same model makes a new patch
holding both entries (:meth:`IdentityAttentionPatch.with_entry`); the first model is untouched.
"""

from __future__ import annotations

import logging
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.errors import VisageError
from ...kernels import ops

log = logging.getLogger("visage")

BlockKey = Tuple[str, int, int]


# ------------------------------------------------------------------------------ model structure


def cross_attention_blocks(unet: nn.Module) -> List[Tuple[BlockKey, int, int]]:
    """Every cross-attention of an openaimodel-style UNet, in diffusers' processor order.

    Returns ``[((block, block_id, transformer_index), width, context_dim), ...]``: input blocks,
    then output blocks, then the middle block -- the order in which the released adapters number
    their ``to_k_ip`` layers (diffusers registers down_blocks, up_blocks, mid_block). ``block`` /
    ``block_id`` are what the UNet's forward puts into ``transformer_options["block"]`` (the
    middle block is ``("middle", 0)``), ``transformer_index`` is ``block_index``.
    """
    out: List[Tuple[BlockKey, int, int]] = []
    groups = [("input", list(getattr(unet, "input_blocks", []) or []))]
    groups.append(("output", list(getattr(unet, "output_blocks", []) or [])))
    mid = getattr(unet, "middle_block", None)
    groups.append(("middle", [mid] if mid is not None else []))
    for name, blocks in groups:
        for bid, block in enumerate(blocks):
            subs = list(block) if isinstance(block, nn.Sequential) else [block]
            for sub in subs:
                tbs = getattr(sub, "transformer_blocks", None)
                if tbs is None:
                    continue
                for idx, tb in enumerate(tbs):
                    attn2 = getattr(tb, "attn2", None)
                    if attn2 is None or getattr(tb, "switch_temporal_ca_to_sa", False):
                        continue
                    w = attn2.to_k.weight
                    out.append(((name, bid, idx), int(w.shape[0]), int(w.shape[1])))
    return out


def match_layers(
    adapter_info, blocks: Sequence[Tuple[BlockKey, int, int]], model_name: str = "the model"
) -> Dict[BlockKey, int]:
    """block key -> index of the adapter's ip layer; a clear error when the file does not fit."""
    n_ad = len(adapter_info.layer_widths)
    ctx = {c for _, _, c in blocks}
    if not blocks:
        raise VisageError(
            "The model has no cross-attention blocks",
            expected="an SD1.5 or SDXL UNet",
            got=model_name,
            fix="connect a Stable Diffusion 1.5 / SDXL model",
        )
    model_desc = f"{len(blocks)} cross-attention layers with context {sorted(ctx)}"
    from .loaders import BASES

    model_base = BASES.get(next(iter(ctx)), "another architecture") if len(ctx) == 1 else "another architecture"
    if (
        n_ad != len(blocks)
        or ctx != {adapter_info.cross_attention_dim}
        or [w for _, w, _ in blocks] != list(adapter_info.layer_widths)
    ):
        raise VisageError(
            f"'{adapter_info.file}' does not fit this model: the adapter is {adapter_info.describe()}, "
            f"the model has {model_desc} ({model_base})",
            expected=f"a {adapter_info.base} model for this adapter",
            got=f"a {model_base} model ({model_desc})",
            fix=f"use the adapter made for {model_base} models, or load a {adapter_info.base} checkpoint",
        )
    return {key: i for i, (key, _, _) in enumerate(blocks)}


# ------------------------------------------------------------------------------ masks


def check_masks(masks: Optional[torch.Tensor], n_identities: int) -> Optional[torch.Tensor]:
    """[I, H, W] float 0..1 or None. One mask per identity; several identities need masks."""
    if masks is None:
        if n_identities > 1:
            raise VisageError(
                f"{n_identities} identities but no masks",
                expected="one MASK per identity (the region each face goes to)",
                got="no mask",
                fix="connect a mask batch with one mask per identity, or use one identity",
            )
        return None
    if masks.ndim == 2:
        masks = masks.unsqueeze(0)
    if masks.ndim != 3:
        raise VisageError(
            "The region masks have the wrong layout",
            expected="a MASK batch [N, H, W]",
            got=f"shape {tuple(masks.shape)}",
            fix="connect a MASK output",
        )
    if masks.shape[0] != n_identities:
        raise VisageError(
            f"{n_identities} identities but {masks.shape[0]} masks",
            expected="exactly one mask per identity, in identity order",
            got=f"{n_identities} identities and {masks.shape[0]} masks",
            fix="give as many masks as identities (batch masks with a 'Batch Masks' node)",
        )
    return masks.float().clamp(0, 1)


def check_mask_fits_latent(mask_hw: Tuple[int, int], latent_hw: Tuple[int, int]) -> None:
    """Masks are drawn at latent size or image size (latent x 8 or any whole multiple)."""
    mh, mw = mask_hw
    lh, lw = latent_hw
    ok = mh % lh == 0 and mw % lw == 0 and mh // lh == mw // lw
    if not ok:
        raise VisageError(
            f"The region masks are {mw}x{mh} but the latent is {lw}x{lh}",
            expected=f"masks the size of the image ({lw * 8}x{lh * 8}) or of the latent ({lw}x{lh})",
            got=f"{mw}x{mh} masks",
            fix="make the masks from an image of the generated size, or resize them (e.g. with "
            "'Upscale Image' before 'Convert Image to Mask')",
        )


def resize_masks(masks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[I, H, W] -> [I, h*w] (bilinear, area-like for large factors)."""
    if masks.shape[-2:] == (h, w):
        m = masks
    else:
        mode = "area" if masks.shape[-2] >= h and masks.shape[-1] >= w else "bilinear"
        kw = {} if mode == "area" else {"align_corners": False}
        m = F.interpolate(masks.unsqueeze(1), size=(h, w), mode=mode, **kw).squeeze(1)
    return m.reshape(m.shape[0], h * w)


# ------------------------------------------------------------------------------ the patch


def project_identity_kv(
    ip_layers: nn.ModuleList, cond_tokens: torch.Tensor, uncond_tokens: torch.Tensor
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Identity keys/values for every layer, computed once: [(k [2,I,T,W], v [2,I,T,W]), ...]
    (index 0 = conditional tokens, 1 = unconditional tokens)."""
    if cond_tokens.ndim == 2:
        cond_tokens = cond_tokens.unsqueeze(0)
    if uncond_tokens.ndim == 2:
        uncond_tokens = uncond_tokens.unsqueeze(0)
    if cond_tokens.shape != uncond_tokens.shape:
        raise ValueError("cond and uncond identity tokens must have the same shape")
    out = []
    with torch.no_grad():
        for ip in ip_layers:
            w = ip.to_k_ip.weight
            toks = torch.stack([cond_tokens, uncond_tokens]).to(device=w.device, dtype=w.dtype)
            out.append((ip.to_k_ip(toks).float().cpu(), ip.to_v_ip(toks).float().cpu()))
    return out


class IdentityEntry(nn.Module):
    """One application of an adapter: identity K/V per layer (projected once), weights, window, masks."""

    def __init__(
        self,
        kv: Sequence[Tuple[torch.Tensor, torch.Tensor]],
        layer_map: Dict[BlockKey, int],
        weights,
        sigma_start: float = float("inf"),
        sigma_end: float = 0.0,
        masks: Optional[torch.Tensor] = None,
        name: str = "identity",
    ):
        super().__init__()
        self.layer_map = dict(layer_map)
        self.n_layers = len(kv)
        for i, (k, v) in enumerate(kv):
            self.register_buffer(f"k_{i}", k.detach().clone(), persistent=False)  # [2, I, T, W]
            self.register_buffer(f"v_{i}", v.detach().clone(), persistent=False)
        n = int(kv[0][0].shape[1])
        self._n = n
        self._t = int(kv[0][0].shape[2])
        self.register_buffer("masks", None if masks is None else masks.detach().float().clone(), persistent=False)
        w = list(weights) if isinstance(weights, (list, tuple)) else [float(weights)] * n
        if len(w) == 1 and n > 1:
            w = w * n
        if len(w) != n:
            raise ValueError("one weight per identity")
        self.weights = [float(x) for x in w]
        self.sigma_start = float(sigma_start)
        self.sigma_end = float(sigma_end)
        self.name = name

    def kv(self, layer: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"k_{layer}"), getattr(self, f"v_{layer}")

    @property
    def n_identities(self) -> int:
        return self._n

    @property
    def n_tokens(self) -> int:
        return self._t

    def active(self, sigmas: Optional[torch.Tensor]) -> bool:
        if sigmas is None:
            return True
        s = float(sigmas.detach().reshape(-1).max())
        return self.sigma_end <= s <= self.sigma_start


class IdentityAttentionPatch(nn.Module):
    """The attn2 replace patch. ``entries``: identity applications (stacked when compatible).

    ``previous``: the patch that was at the block before (another pack's, or ComfyUI's default
    when None) computes the text attention when it is not ours -- our identity terms are added.
    """

    def __init__(
        self, entries: Sequence[IdentityEntry], previous: Optional[Dict[BlockKey, object]] = None, text_attention=None
    ):
        super().__init__()
        self.entries = nn.ModuleList(entries)
        self.previous = dict(previous or {})
        # attention used where no identity is live (outside the window / weight 0): the host's own
        # (ComfyUI's optimized_attention, given by node.py), so the result is bit-identical to the plain model
        self.text_attention = text_attention
        self._cache: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()
        self.projections = 0  # how many (layer, device, dtype) K/V copies were prepared (tests, logs)
        self._checked_latent: Optional[Tuple[int, int]] = None

    # ComfyUI deep-copies model_options on clone(): share the immutable patch instead.
    def __deepcopy__(self, memo):
        memo[id(self)] = self
        return self

    def _apply(self, fn, *args, **kwargs):  # .to() / .half() ...: cached projections are stale
        self._cache = {}
        return super()._apply(fn, *args, **kwargs)

    def models(self):  # ComfyUI: extra ModelPatchers to load with the UNet (none: we are moved by model_patches_to)
        return []

    def with_entry(
        self, entry: IdentityEntry, previous: Optional[Dict[BlockKey, object]] = None
    ) -> "IdentityAttentionPatch":
        """A new patch = this one + ``entry`` (this one is left untouched)."""
        prev = dict(self.previous)
        prev.update(previous or {})
        return IdentityAttentionPatch(list(self.entries) + [entry], prev, self.text_attention)

    # ---------------------------------------------------------------- identity K/V (cached casts)
    def _kv(self, e_idx: int, layer: int, device, dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """The entry's projected K/V on (device, dtype); cast once and cached, not per step."""
        e = self.entries[e_idx]
        k0, v0 = e.kv(layer)
        key = (e_idx, layer, str(device), str(dtype), k0.data_ptr())
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                hit = (k0.to(device=device, dtype=dtype), v0.to(device=device, dtype=dtype))
                self._cache[key] = hit
                self.projections += 1
            return hit

    # ---------------------------------------------------------------- the call
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = int(extra_options["n_heads"])
        block = extra_options.get("block")
        bkey: Optional[BlockKey] = None
        if block is not None:
            bkey = (block[0], int(block[1]), int(extra_options.get("block_index", 0)))
        B, Lq, inner = q.shape
        d = inner // heads
        sigmas = extra_options.get("sigmas")
        live = [
            (i, e)
            for i, e in enumerate(self.entries)
            if bkey in e.layer_map and e.active(sigmas) and any(w != 0 for w in e.weights)
        ]
        prev = self.previous.get(bkey)
        if prev is not None and not isinstance(prev, IdentityAttentionPatch):
            base = prev(q, k, v, extra_options)
            if not live:
                return base
        elif not live:
            if self.text_attention is not None:
                return self.text_attention(q, k, v, extra_options)
            return _sdpa_heads(q, k, v, heads)
        else:
            base = None

        cond_or_uncond = list(extra_options.get("cond_or_uncond") or [0])
        chunks = len(cond_or_uncond)
        if B % chunks:
            chunks, cond_or_uncond = 1, [0]
        hw = self._block_hw(extra_options, Lq)
        qh = q.view(B, Lq, heads, d).transpose(1, 2)
        out = None
        # The identity operands of one block depend only on the call's layout, never on the step:
        # assembled once (small gathers, host->device copies of weights) and reused every step, so a
        # sampling step adds no host->device copy and no stream synchronisation.
        akey = (
            "assembled",
            bkey,
            B,
            tuple(cond_or_uncond),
            tuple(i for i, _ in live),
            heads,
            hw,
            str(q.device),
            str(q.dtype),
        )
        groups = self._cache.get(akey)
        if groups is None:
            groups = self._assemble(live, bkey, B, cond_or_uncond, heads, hw, Lq, q.device, q.dtype)
            with self._lock:
                self._cache[akey] = groups
        for k_id, v_id, scale, region in groups:
            if out is None and base is None:
                kh = k.view(B, -1, heads, d).transpose(1, 2)
                vh = v.view(B, -1, heads, v.shape[-1] // heads).transpose(1, 2)
                o = ops.decoupled_attention(qh, kh, vh, k_id, v_id, scale, region)  # [B, H, Lq, D]
                out = o.transpose(1, 2).reshape(B, Lq, -1)
            else:
                # identity terms only: run the kernel with an empty text group and subtract nothing
                o = _identity_terms(qh, k_id, v_id, scale, region)
                acc = out if out is not None else base
                out = acc + o.transpose(1, 2).reshape(B, Lq, -1).to(acc.dtype)
        return out

    def _assemble(self, live, bkey, B, cond_or_uncond, heads, hw, Lq, device, dtype):
        """[(k_id [B,H,I,T,D], v_id, scale [B,I], region [B,I,Lq] or None)] per token count."""
        per = B // len(cond_or_uncond)
        sel = torch.tensor([int(cond_or_uncond[r // per] == 1) for r in range(B)], dtype=torch.long).to(device)
        groups: Dict[int, List[Tuple[int, IdentityEntry]]] = {}
        for i, e in live:  # entries with the same token count share one kernel call
            groups.setdefault(e.n_tokens, []).append((i, e))
        out = []
        for T, members in groups.items():
            ks, vs, scales, masks = [], [], [], []
            any_mask = any(e.masks is not None for _, e in members)
            for i, e in members:
                kk, vv = self._kv(i, e.layer_map[bkey], device, dtype)  # [2, I, T, W]
                ks.append(kk[sel])  # [B, I, T, W]
                vs.append(vv[sel])
                scales.append(torch.tensor(e.weights, dtype=torch.float32).to(device).expand(B, -1))
                if any_mask:
                    if e.masks is None:
                        masks.append(torch.ones(B, e.n_identities, Lq, device=device))
                    else:
                        m = resize_masks(e.masks.to(device), *hw)  # [I, Lq]
                        masks.append(m.unsqueeze(0).expand(B, -1, -1))
            k_id = torch.cat(ks, 1)
            v_id = torch.cat(vs, 1)
            I = k_id.shape[1]
            k_id = k_id.view(B, I, T, heads, -1).permute(0, 3, 1, 2, 4)  # [B, H, I, T, D]
            v_id = v_id.view(B, I, T, heads, -1).permute(0, 3, 1, 2, 4)
            scale = torch.cat(scales, 1).contiguous()
            region = torch.cat(masks, 1).to(dtype).contiguous() if any_mask else None
            out.append((k_id, v_id, scale, region))
        return out

    def _block_hw(self, extra_options: dict, lq: int) -> Tuple[int, int]:
        act = extra_options.get("activations_shape")
        if act is not None and len(act) == 4 and int(act[2]) * int(act[3]) == lq:
            h, w = int(act[2]), int(act[3])
        else:
            orig = extra_options.get("original_shape")
            h = w = None
            if orig is not None:
                H, W = int(orig[-2]), int(orig[-1])
                f = 1
                while f <= 64:
                    hh, ww = -(-H // f), -(-W // f)
                    if hh * ww == lq:
                        h, w = hh, ww
                        break
                    f *= 2
            if h is None:
                s = int(round(lq**0.5))
                h, w = s, lq // max(s, 1)
        orig = extra_options.get("original_shape")
        if orig is not None:
            lat = (int(orig[-2]), int(orig[-1]))
            if lat != self._checked_latent:
                for e in self.entries:
                    if e.masks is not None:
                        check_mask_fits_latent(tuple(e.masks.shape[-2:]), lat)
                self._checked_latent = lat
        return h, w


def _sdpa_heads(q, k, v, heads):
    B, Lq, inner = q.shape
    d = inner // heads
    qh = q.view(B, Lq, heads, d).transpose(1, 2)
    kh = k.view(B, -1, heads, d).transpose(1, 2)
    vh = v.view(B, -1, heads, v.shape[-1] // heads).transpose(1, 2)
    return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(B, Lq, -1)


def _identity_terms(qh, k_id, v_id, scale, region):
    """Σ_i w_i m_i softmax(q k_iᵀ/√d) v_i only (used when the text attention came from elsewhere)."""
    B, H, I, T, D = k_id.shape
    qi = qh.unsqueeze(2).expand(-1, -1, I, -1, -1)
    o = F.scaled_dot_product_attention(qi, k_id, v_id).float()  # [B,H,I,Lq,D]
    w = scale.to(o.device)[:, None, :, None, None]
    if region is not None:
        w = w * region.float()[:, None, :, :, None]
    return (o * w).sum(2).to(qh.dtype)

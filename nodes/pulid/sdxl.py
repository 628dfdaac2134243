"""PuLID SDXL (v1 ``pulid_v1.bin``, v1.1 ``pulid_v1.1.safetensors``, the IP-Adapter-named re-save):
identity tokens and the patched cross-attention. Pure torch, no ComfyUI.

Facts from ToTheBeginning/PuLID (``pulid/pipeline.py``, ``pipeline_v1_1.py``,
``attention_processor.py`` ``IDAttnProcessor2_0``, ``app.py``, ``app_v1_1.py``):

* **Tokens, v1** (IDEncoder): one reference gives 10 tokens; each supplementary reference adds its
  first 5 tokens (the ArcFace/pooled MLP's ``num_token``) (the official ``id_mix`` off; with ``id_mix`` all 10). The negative is the encoder on
  all-zero inputs, extended the same way.
* **Tokens, v1.1** (IDFormer): the references are stacked (``id_cond`` ``[1, N, 1280]``, the EVA-CLIP
  hidden states of the N images concatenated along the token axis) -> 32 tokens; the negative is the
  encoder on the zero inputs of one image -> 32 tokens.
* **Attention** (every UNet cross-attention; ``h`` = the text attention's output before ``to_out``,
  ``a`` = softmax(q k_idᵀ/√d) v_id with k_id = id_to_k(cat(tokens, zeros(num_zero))) (no bias, so the
  ``num_zero`` padding tokens have zero keys and values)):

  - none:      ``h + w a``
  - ortho:     ``h + w (a - p)``, ``p = Σ_L(h a) / Σ_L(h h) · h`` (per channel, sums over the image tokens)
  - ortho_v2:  ``h + w (a + (m - 1) p)``, ``m`` = the head-mean of softmax(q k_idᵀ) (no 1/√d) summed
    over the first 5 identity tokens, per image token.

  Official settings: v1 ``fidelity`` mode = num_zero 8 + ortho_v2, ``extremely style`` = num_zero 16 +
  ortho; v1.1 = num_zero 20 + ortho_v2; id_scale 0.8.

* **Community methods** (cubiq/PuLID_ComfyUI, for users who know them): ``fidelity`` = num_zero 8 +
  its ortho_v2 variant (``m`` from softmax(q k_idᵀ) over all heads' channels at once, averaged over
  the image tokens: one number per batch row), ``style`` = num_zero 16 + ortho (the official style
  mode), ``neutral`` = num_zero 0, none.
"""

from __future__ import annotations

import threading
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.errors import VisageError
from ..adapters.attention import IdentityAttentionPatch, IdentityEntry, resize_masks
from .loaders import SDXL_V1, SDXL_V1_1, PulidInfo

BlockKey = Tuple[str, int, int]

PROJECTIONS = ("none", "ortho", "ortho_v2", "ortho_v2_community")
METHODS = ("official", "official style", "fidelity", "style", "neutral")
DEFAULT_WEIGHT = 0.8  # the official demos' id_scale
ORTHO_V2_TOKENS = 5  # ortho_v2 sums the attention of the first 5 identity tokens


def method_settings(method: str, kind: str) -> Tuple[int, str]:
    """(num_zero, projection) of a method for a file kind (SDXL_V1 / SDXL_V1_1)."""
    if method == "official":
        return (20, "ortho_v2") if kind == SDXL_V1_1 else (8, "ortho_v2")
    if method in ("official style", "style"):
        return 16, "ortho"
    if method == "fidelity":
        return 8, "ortho_v2_community"
    if method == "neutral":
        return 0, "none"
    raise VisageError(
        f"Unknown PuLID method '{method}'", expected=", ".join(METHODS), got=method, fix="choose one of the list"
    )


# ------------------------------------------------------------------------------------- tokens


def _enc_args(p, id_cond: torch.Tensor, hidden: Sequence[torch.Tensor]):
    return id_cond.to(p.device, p.dtype), [h.to(p.device, p.dtype) for h in hidden]


@torch.no_grad()
def sdxl_tokens(
    encoder: nn.Module, kind: str, id_cond: torch.Tensor, vit_hidden: Sequence[torch.Tensor], id_mix: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One identity from N reference faces: (cond [1, T, C], uncond [1, T, C]) float32 on the CPU.

    ``id_cond`` ``[N, 1280]`` (raw glintr100 ++ normalised EVA-CLIP pooled), ``vit_hidden`` five
    ``[N, tokens, 1024]`` tensors.
    """
    if id_cond.ndim != 2 or any(h.shape[0] != id_cond.shape[0] for h in vit_hidden):
        raise VisageError(
            "PuLID identity inputs do not line up",
            expected="id_cond [N, 1280] and five EVA-CLIP hidden states [N, tokens, width]",
            got=f"id_cond {list(id_cond.shape)}, hidden {[list(h.shape) for h in vit_hidden]}",
        )
    n = id_cond.shape[0]
    p = next(encoder.parameters())
    zc = torch.zeros_like(id_cond[:1])
    zh = [torch.zeros_like(h[:1]) for h in vit_hidden]
    if kind == SDXL_V1_1:
        c, h = _enc_args(p, id_cond.unsqueeze(0), [x.reshape(1, -1, x.shape[-1]) for x in vit_hidden])
        cond = encoder(c if n > 1 else c[:, 0], h)
        uncond = encoder(*_enc_args(p, zc, zh))
        return cond.float().cpu(), uncond.float().cpu()
    if kind != SDXL_V1:
        raise VisageError("Not a PuLID SDXL file", expected="PuLID SDXL v1 or v1.1", got=kind)
    u = encoder(*_enc_args(p, zc, zh)).float().cpu()
    conds, unconds = [], []
    for i in range(n):
        t = encoder(*_enc_args(p, id_cond[i : i + 1], [x[i : i + 1] for x in vit_hidden])).float().cpu()
        keep = t.shape[1] if (i == 0 or id_mix) else encoder.num_token  # the official [:, :5] (released num_token)
        conds.append(t[:, :keep])
        unconds.append(u[:, :keep])
    return torch.cat(conds, 1), torch.cat(unconds, 1)


@torch.no_grad()
def project_kv(
    layers: nn.Module, cond: torch.Tensor, uncond: torch.Tensor, num_zero: int
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Per SDXL attention layer (the file's order): (k, v) ``[2, I, T + num_zero, W]`` (0 = cond, 1 = uncond).

    ``cond`` / ``uncond`` ``[I, T, C]``; the ``num_zero`` zero tokens are appended before ``id_to_k`` /
    ``id_to_v`` as the official processor does.
    """
    toks = torch.stack([cond, uncond])  # [2, I, T, C]
    if num_zero > 0:
        toks = torch.cat((toks, toks.new_zeros(*toks.shape[:2], num_zero, toks.shape[-1])), dim=2)
    out = []
    for name in sorted(layers.keys(), key=int) if isinstance(layers, nn.ModuleDict) else range(len(layers)):
        layer = layers[name]
        w = layer.id_to_k.weight
        t = toks.to(w.device, w.dtype)
        out.append((layer.id_to_k(t).float().cpu(), layer.id_to_v(t).float().cpu()))
    return out


# ---------------------------------------------------------------------------------- attention


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def identity_term(
    h: torch.Tensor, q: torch.Tensor, k_id: torch.Tensor, v_id: torch.Tensor, heads: int, projection: str
) -> torch.Tensor:
    """What PuLID adds to the text attention ``h`` for weight 1 (before the weight and the region mask).

    ``h``, ``q`` ``[B, L, inner]``; ``k_id``, ``v_id`` ``[B, T, inner]``. Returns ``[B, L, inner]``
    (float32 for the projections, ``h``'s dtype for 'none').
    """
    b, lq, inner = q.shape
    qh, kh, vh = _heads(q, heads), _heads(k_id, heads), _heads(v_id, heads)
    a = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, lq, inner)
    if projection == "none":
        return a.to(h.dtype)
    h32, a32 = h.float(), a.float()
    p = (h32 * a32).sum(-2, keepdim=True) / (h32 * h32).sum(-2, keepdim=True) * h32
    if projection == "ortho":
        return a32 - p
    if projection == "ortho_v2":
        m = torch.softmax(qh @ kh.transpose(-2, -1), dim=-1).mean(dim=1)  # [B, L, T]
        m = m[:, :, :ORTHO_V2_TOKENS].sum(-1, keepdim=True).float()
    elif projection == "ortho_v2_community":
        m = torch.softmax(q @ k_id.transpose(-2, -1), dim=-1).mean(dim=1, keepdim=True)  # [B, 1, T]
        m = m[:, :, :ORTHO_V2_TOKENS].sum(-1, keepdim=True).float()
    else:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    return a32 + (m - 1) * p


def match_sdxl_layers(info: PulidInfo, blocks, model_name: str = "the model") -> Dict[BlockKey, int]:
    """UNet cross-attention key -> index into the file's layers (diffusers processor order)."""
    widths = [w for _, w, _ in blocks]
    ctx = {c for _, _, c in blocks}
    if widths != list(info.layer_widths) or ctx != {info.token_dim}:
        raise VisageError(
            f"'{info.file}' does not fit this model: the file is {info.describe()}, the model has "
            f"{len(blocks)} cross-attention layers with context {sorted(ctx)}",
            expected="an SDXL model (70 cross-attentions, context 2048) for PuLID SDXL",
            got=f"{model_name} ({len(blocks)} cross-attentions, context {sorted(ctx)})",
            fix="load an SDXL checkpoint, or use the PuLID file made for this model",
        )
    return {key: i for i, (key, _, _) in enumerate(blocks)}


class PulidSDXLPatch(nn.Module):
    """The attn2 replace patch of Apply PuLID SDXL; one entry per node application.

    ``entries[j]`` is an :class:`IdentityEntry` (identity K/V per layer as buffers, weights per identity,
    sigma window, region masks) and ``projections[j]`` its projection. Where nothing is live (weight 0,
    outside the window) the previous patch or ComfyUI's own attention runs unchanged, so the output is
    exactly the unpatched model's. Clones share the object (``__deepcopy__`` returns self).
    """

    def __init__(self, entries, projections, previous=None, text_attention=None):
        super().__init__()
        self.entries = nn.ModuleList(entries)
        self.projections = list(projections)
        self.previous = dict(previous or {})
        self.text_attention = text_attention
        self._checked_latent = None
        self._lock = threading.Lock()
        self._cache: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}

    def __deepcopy__(self, memo):
        memo[id(self)] = self
        return self

    def _apply(self, fn, *args, **kwargs):
        self._cache = {}
        return super()._apply(fn, *args, **kwargs)

    def models(self):
        return []

    def with_entry(self, entry: IdentityEntry, projection: str, previous=None) -> "PulidSDXLPatch":
        prev = dict(self.previous)
        prev.update(previous or {})
        return PulidSDXLPatch(list(self.entries) + [entry], self.projections + [projection], prev, self.text_attention)

    def _kv(self, j: int, layer: int, device, dtype):
        k0, v0 = self.entries[j].kv(layer)
        key = (j, layer, str(device), str(dtype))
        hit = self._cache.get(key)
        if hit is None:
            with self._lock:
                hit = (k0.to(device=device, dtype=dtype), v0.to(device=device, dtype=dtype))
                self._cache[key] = hit
        return hit

    def _base(self, bkey, q, k, v, extra_options):
        prev = self.previous.get(bkey)
        if prev is not None:
            return prev(q, k, v, extra_options)
        if self.text_attention is not None:
            return self.text_attention(q, k, v, extra_options)
        heads = int(extra_options["n_heads"])
        b, lq, _ = q.shape
        o = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads))
        return o.transpose(1, 2).reshape(b, lq, -1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        block = extra_options.get("block")
        bkey = None if block is None else (block[0], int(block[1]), int(extra_options.get("block_index", 0)))
        sigmas = extra_options.get("sigmas")
        live = [
            j
            for j, e in enumerate(self.entries)
            if bkey in e.layer_map and e.active(sigmas) and any(w != 0 for w in e.weights)
        ]
        base = self._base(bkey, q, k, v, extra_options)
        if not live:
            return base
        heads = int(extra_options["n_heads"])
        B, Lq, _ = q.shape
        cou = list(extra_options.get("cond_or_uncond") or [0])
        if B % len(cou):
            cou = [0]
        per = B // len(cou)
        sel = torch.tensor([int(cou[r // per] == 1) for r in range(B)], dtype=torch.long, device=q.device)
        hw = IdentityAttentionPatch._block_hw(self, extra_options, Lq)
        acc = None
        for j in live:
            e, proj = self.entries[j], self.projections[j]
            kk, vv = self._kv(j, e.layer_map[bkey], q.device, q.dtype)  # [2, I, T, W]
            kk, vv = kk[sel], vv[sel]  # [B, I, T, W]
            masks = None if e.masks is None else resize_masks(e.masks.to(q.device), *hw)  # [I, Lq]
            for i, w in enumerate(e.weights):
                if w == 0:
                    continue
                t = identity_term(base, q, kk[:, i], vv[:, i], heads, proj) * w
                if masks is not None:
                    t = t * masks[i].to(t.dtype)[None, :, None]
                acc = t if acc is None else acc + t
        if acc is None:
            return base
        return (base.to(acc.dtype) + acc).to(base.dtype)


def apply_patch(
    model,
    info: PulidInfo,
    kv,
    weights,
    sigma_start: float,
    sigma_end: float,
    masks: Optional[torch.Tensor],
    projection: str,
    text_attention,
):
    """A clone of ComfyUI's ModelPatcher ``model`` with the PuLID patch on every cross-attention."""
    from ..adapters.attention import cross_attention_blocks

    unet = model.get_model_object("diffusion_model")
    blocks = cross_attention_blocks(unet)
    layer_map = match_sdxl_layers(info, blocks, type(model.model).__name__)
    entry = IdentityEntry(kv, layer_map, weights, sigma_start, sigma_end, masks, name="pulid_sdxl")
    m = model.clone()
    existing = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    ours, foreign = None, {}
    for key in layer_map:
        p = existing.get(key, existing.get(key[:2]))
        if isinstance(p, PulidSDXLPatch):
            ours = p
        elif p is not None:
            foreign[key] = p
    if ours is not None:
        patch = ours.with_entry(entry, projection, foreign)
    else:
        patch = PulidSDXLPatch([entry], [projection], foreign, text_attention)
    for key in layer_map:
        m.set_model_attn2_replace(patch, key[0], key[1], key[2])
    return m

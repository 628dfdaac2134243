"""PuLID's identity encoders and Flux cross-attention, with the released parameter names.

Pure torch (no ComfyUI). Written from the published architecture of ToTheBeginning/PuLID
(``pulid/encoders.py``, ``pulid/encoders_transformer.py``); the module and parameter names are the
ones the released files use, so ``load_state_dict(strict=True)`` takes them as they are.

Inputs of both encoders (the official ``get_id_embedding`` of every PuLID pipeline):

* ``id_cond`` ``[B, 1280]``: ``cat(antelopev2 embedding, EVA-CLIP pooled feature)``.
  The first 512 numbers are the **raw** (not normalised) embedding of insightface's ``antelopev2``
  recognizer ``glintr100.onnx`` (``face_info['embedding']`` of the largest face; on a miss,
  ``get_feat`` on facexlib's aligned crop, also raw). The last 768 are the pooled output of
  EVA02-CLIP-L-14-336's visual tower (head(norm(cls))), **L2-normalised**, computed on the aligned
  512 crop with the background (BiSeNet parsing) set to white and the face turned grey.
* ``vit_hidden``: five EVA-CLIP hidden states ``[B, 577, 1024]`` (CLS + 24x24 patches): the inputs
  of the visual tower's blocks 4, 8, 12, 16 and 20 (``0 < idx <= 20 and idx % 4 == 0``).
* The negative (unconditional) identity is the encoder on all-zero inputs of the same shapes.

:class:`IDEncoder` (PuLID v1, SDXL, ``pulid_v1.bin``): an MLP of ``id_cond`` -> 5 tokens, plus one
token per EVA-CLIP scale (``mapping_i`` of the CLS token + mean of ``mapping_patch_i`` over the patch
tokens) -> 10 tokens of 2048.

:class:`IDFormer` (PuLID v1.1 SDXL and PuLID-FLUX): a perceiver; ``id_cond`` is mapped to 5 id
tokens that are appended to 32 learned queries; each EVA-CLIP scale (mapped to ``dim``) joins the id
tokens as the context of two perceiver layers; the 32 queries, projected by ``proj_out``, are the
identity -> 32 tokens of 2048. Several reference images: ``id_cond`` ``[B, N, 1280]`` and the hidden
states of the N images concatenated along the token axis (as ``pipeline_v1_1`` does).

:class:`PerceiverAttentionCA` (PuLID-FLUX, ``pulid_ca.<n>``): the image tokens (3072 wide) attend to
the identity tokens (2048 wide); see :mod:`.flux_patch` for where it is applied.

The widths the official code hard-codes (EVA-CLIP hidden 1024, id input 1280, the 1024 hidden of the
mapping MLPs) are keyword arguments here with those values as defaults, so tests can build tiny
modules; released files always use the defaults.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

EVA_WIDTH = 1024  # EVA02-CLIP-L-14-336 hidden width (the 5 intermediate features)
ID_COND_WIDTH = 1280  # 512 antelopev2 + 768 EVA-CLIP pooled
NUM_VIT_SCALES = 5


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """Linear-LN-LeakyReLU x2 then Linear; indices 0, 1, 3, 4, 6 hold the parameters (released keys)."""
    return nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.LayerNorm(hidden),
        nn.LeakyReLU(),
        nn.Linear(hidden, hidden),
        nn.LayerNorm(hidden),
        nn.LeakyReLU(),
        nn.Linear(hidden, d_out),
    )


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """LN -> Linear (no bias) -> GELU -> Linear (no bias); keys ``0.*``, ``1.weight``, ``3.weight``."""
    inner = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )


def _heads_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax attention [B, Nq, H*d] x [B, Nk, H*d] -> [B, Nq, H*d]; scale 1/sqrt(d)."""
    b, nq, inner = q.shape
    nk = k.shape[1]
    d = inner // heads
    q = q.reshape(b, nq, heads, d).transpose(1, 2)
    k = k.reshape(b, nk, heads, d).transpose(1, 2)
    v = v.reshape(b, nk, heads, d).transpose(1, 2)
    if q.dtype in (torch.float16, torch.bfloat16):
        # the official code runs the softmax in float32 for half precision
        w = (q.float() @ k.float().transpose(-2, -1)) * d**-0.5
        out = torch.softmax(w, dim=-1).to(q.dtype) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, nq, inner)


class PerceiverAttention(nn.Module):
    """IDFormer's layer: the latents attend to ``cat(norm1(context), norm2(latents))``."""

    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8, kv_dim: Optional[int] = None):
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner = dim_head * heads
        kv = dim if kv_dim is None else kv_dim
        self.norm1 = nn.LayerNorm(kv)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(kv, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        return self.to_out(_heads_attention(q, k, v, self.heads))


class PerceiverAttentionCA(PerceiverAttention):
    """PuLID-FLUX cross-attention: ``latents`` (image tokens, ``dim``) attend to ``x`` (identity, ``kv_dim``).

    Released: dim 3072, 16 heads of 128, kv_dim 2048. Unlike :class:`PerceiverAttention` the keys
    come from the identity tokens only. Returns ``[B, N_img, dim]`` (the residual is added by the caller).
    """

    def __init__(self, *, dim: int = 3072, dim_head: int = 128, heads: int = 16, kv_dim: Optional[int] = 2048):
        super().__init__(dim=dim, dim_head=dim_head, heads=heads, kv_dim=kv_dim)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        return self.to_out(_heads_attention(q, k, v, self.heads))


class IDFormer(nn.Module):
    """PuLID v1.1 / PuLID-FLUX identity encoder (perceiver). Released: every default.

    ``forward(id_cond [B, 1280] or [B, N, 1280], vit_hidden: 5 x [B, T, 1024]) -> [B, num_queries, output_dim]``.
    """

    def __init__(
        self,
        dim: int = 1024,
        depth: int = 10,
        dim_head: int = 64,
        heads: int = 16,
        num_id_token: int = 5,
        num_queries: int = 32,
        output_dim: int = 2048,
        ff_mult: int = 4,
        *,
        vit_width: int = EVA_WIDTH,
        id_width: int = ID_COND_WIDTH,
        mlp_hidden: int = 1024,
    ):
        super().__init__()
        if depth % NUM_VIT_SCALES != 0:
            raise ValueError(f"IDFormer depth must be a multiple of {NUM_VIT_SCALES}, got {depth}")
        self.num_id_token = num_id_token
        self.dim = dim
        self.num_queries = num_queries
        self.layers_per_scale = depth // NUM_VIT_SCALES
        scale = dim**-0.5
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) * scale)
        self.proj_out = nn.Parameter(torch.randn(dim, output_dim) * scale)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads), feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )
        for i in range(NUM_VIT_SCALES):
            setattr(self, f"mapping_{i}", _mlp(vit_width, mlp_hidden, dim))
        self.id_embedding_mapping = _mlp(id_width, mlp_hidden, dim * num_id_token)

    def forward(self, id_cond: torch.Tensor, vit_hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(vit_hidden) != NUM_VIT_SCALES:
            raise ValueError(f"IDFormer takes {NUM_VIT_SCALES} EVA-CLIP hidden states, got {len(vit_hidden)}")
        b = id_cond.shape[0]
        n_images = id_cond.shape[1] if id_cond.ndim == 3 else 1
        ids = self.id_embedding_mapping(id_cond).reshape(b, self.num_id_token * n_images, self.dim)
        latents = torch.cat((self.latents.expand(b, -1, -1), ids), dim=1)
        per = self.layers_per_scale
        for i in range(NUM_VIT_SCALES):
            ctx = torch.cat((ids, getattr(self, f"mapping_{i}")(vit_hidden[i])), dim=1)
            for attn, ff in self.layers[i * per : (i + 1) * per]:
                latents = latents + attn(ctx, latents)
                latents = latents + ff(latents)
        return latents[:, : self.num_queries] @ self.proj_out


class IDEncoder(nn.Module):
    """PuLID v1 (SDXL) identity encoder (MLPs). Released: width 1280, context_dim 2048, num_token 5.

    ``forward(id_cond [B, 1280], vit_hidden: 5 x [B, T, 1024]) -> [B, num_token + 5, context_dim]``.
    """

    def __init__(
        self,
        width: int = ID_COND_WIDTH,
        context_dim: int = 2048,
        num_token: int = 5,
        *,
        vit_width: int = EVA_WIDTH,
        mlp_hidden: int = 1024,
    ):
        super().__init__()
        self.num_token = num_token
        self.context_dim = context_dim
        h1 = min((context_dim * num_token) // 4, 1024)
        h2 = min((context_dim * num_token) // 2, 1024)
        self.body = nn.Sequential(
            nn.Linear(width, h1),
            nn.LayerNorm(h1),
            nn.LeakyReLU(),
            nn.Linear(h1, h2),
            nn.LayerNorm(h2),
            nn.LeakyReLU(),
            nn.Linear(h2, context_dim * num_token),
        )
        for i in range(NUM_VIT_SCALES):
            setattr(self, f"mapping_{i}", _mlp(vit_width, mlp_hidden, context_dim))
            setattr(self, f"mapping_patch_{i}", _mlp(vit_width, mlp_hidden, context_dim))

    def forward(self, id_cond: torch.Tensor, vit_hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(vit_hidden) != NUM_VIT_SCALES:
            raise ValueError(f"IDEncoder takes {NUM_VIT_SCALES} EVA-CLIP hidden states, got {len(vit_hidden)}")
        x = self.body(id_cond).reshape(-1, self.num_token, self.context_dim)
        scales = [
            getattr(self, f"mapping_{i}")(h[:, :1]) + getattr(self, f"mapping_patch_{i}")(h[:, 1:]).mean(1, True)
            for i, h in enumerate(vit_hidden)
        ]
        return torch.cat([x] + scales, dim=1)


class IDAttnKV(nn.Module):
    """PuLID SDXL (v1 and v1.1) per cross-attention: identity keys/values (``id_to_k``, ``id_to_v``, no bias).

    ``hidden_size`` is the UNet block's width (640 / 1280 for SDXL), ``cross_attention_dim`` 2048.
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int = 2048):
        super().__init__()
        self.id_to_k = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.id_to_v = nn.Linear(cross_attention_dim, hidden_size, bias=False)

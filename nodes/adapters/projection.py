"""Identity projection models of InstantID and IP-Adapter FaceID, with the released key names.

Pure torch (no ComfyUI). Parameter names match the ``image_proj`` group of the released files,
so ``load_state_dict(strict=True)`` of the released tensors works unchanged:

* :class:`Resampler` -- InstantID ``image_proj`` (perceiver resampler: ``latents`` [1, Q, dim],
  ``proj_in``, ``layers.N.0`` = attention (``norm1``, ``norm2``, ``to_q``, ``to_kv``, ``to_out``),
  ``layers.N.1`` = feed-forward (``0`` LayerNorm, ``1`` Linear no bias, ``3`` Linear no bias),
  ``proj_out``, ``norm_out``). InstantID: Q=16, in 512 (ArcFace), dim 1280, 20 heads of 64, out 2048.
* :class:`MLPProjModel` -- IP-Adapter FaceID / FaceID Portrait: ``proj.0`` (in -> 2 in), GELU,
  ``proj.2`` (-> tokens * C), reshape, ``norm`` LayerNorm(C). FaceID: 4 tokens, Portrait: 16.
* :class:`ProjPlusModel` -- IP-Adapter FaceID Plus / Plus V2: the MLP above, then
  ``perceiver_resampler`` (a face perceiver over CLIP-vision penultimate features), and for V2
  the shortcut ``out = x + s * resampler(x, clip)``.

Maths follow the published IP-Adapter code (resampler.py / ip_adapter_faceid.py): the perceiver
attention concatenates the (normed) features and latents as keys/values, scales q and k by
``dim_head ** -0.25`` each (= ``1/sqrt(dim_head)`` overall) and takes a float softmax.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


class PerceiverAttention(nn.Module):
    """Latents attend to [features; latents]. Keys: norm1, norm2, to_q, to_kv, to_out."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.dim_head = dim_head
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        b, nl, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=-2)).chunk(2, dim=-1)
        q, k, v = (_heads(t, self.heads) for t in (q, k, v))
        w = (q @ k.transpose(-2, -1)) * (self.dim_head**-0.5)
        w = torch.softmax(w.float(), dim=-1).to(q.dtype)
        out = (w @ v).transpose(1, 2).reshape(b, nl, -1)
        return self.to_out(out)


def feed_forward(dim: int, mult: float = 4) -> nn.Sequential:
    """Keys 0 (LayerNorm), 1 (Linear, no bias), 3 (Linear, no bias); GELU (exact) at 2."""
    inner = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False)
    )


class _PerceiverStack(nn.Module):
    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, ff_mult: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)]) for _ in range(depth)
        )

    def run_layers(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return latents


class Resampler(_PerceiverStack):
    """IP-Adapter / InstantID resampler: learned queries over projected input tokens."""

    def __init__(
        self,
        dim: int = 1280,
        depth: int = 4,
        dim_head: int = 64,
        heads: int = 20,
        num_queries: int = 16,
        embedding_dim: int = 512,
        output_dim: int = 2048,
        ff_mult: float = 4,
    ):
        super().__init__(dim, depth, dim_head, heads, ff_mult)
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.embedding_dim = embedding_dim
        self.output_dim = output_dim
        self.num_tokens = num_queries

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, embedding_dim] (InstantID: N = 1 ArcFace embedding) -> [B, Q, output_dim]."""
        if x.ndim == 2:
            x = x.unsqueeze(1)
        latents = self.latents.to(x.dtype).repeat(x.shape[0], 1, 1)
        x = self.proj_in(x)
        latents = self.run_layers(x, latents)
        return self.norm_out(self.proj_out(latents))


class FacePerceiverResampler(_PerceiverStack):
    """FaceID Plus: the face tokens (latents) attend to CLIP-vision features."""

    def __init__(
        self,
        dim: int = 768,
        depth: int = 4,
        dim_head: int = 64,
        heads: int = 12,
        embedding_dim: int = 1280,
        output_dim: int = 768,
        ff_mult: float = 4,
    ):
        super().__init__(dim, depth, dim_head, heads, ff_mult)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)

    def forward(self, latents: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        latents = self.run_layers(x, latents)
        return self.norm_out(self.proj_out(latents))


class MLPProjModel(nn.Module):
    """IP-Adapter FaceID (4 tokens) / FaceID Portrait (16 tokens) projection."""

    def __init__(
        self,
        cross_attention_dim: int = 768,
        id_embeddings_dim: int = 512,
        num_tokens: int = 4,
        hidden_dim: Optional[int] = None,
    ):
        super().__init__()
        hidden_dim = hidden_dim or id_embeddings_dim * 2
        self.cross_attention_dim = cross_attention_dim
        self.num_tokens = num_tokens
        self.embedding_dim = id_embeddings_dim
        self.output_dim = cross_attention_dim
        self.proj = nn.Sequential(
            nn.Linear(id_embeddings_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, cross_attention_dim * num_tokens)
        )
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, id_embeds: torch.Tensor) -> torch.Tensor:
        """[B, D] (or [B, N, D]: N faces of one identity, tokens concatenated as Portrait does)."""
        b = id_embeds.shape[0]
        x = self.proj(id_embeds.reshape(-1, id_embeds.shape[-1]))
        x = self.norm(x.reshape(-1, self.num_tokens, self.cross_attention_dim))
        return x.reshape(b, -1, self.cross_attention_dim)


class ProjPlusModel(nn.Module):
    """IP-Adapter FaceID Plus (V1: no shortcut) / Plus V2 (shortcut with scale)."""

    def __init__(
        self,
        cross_attention_dim: int = 768,
        id_embeddings_dim: int = 512,
        clip_embeddings_dim: int = 1280,
        num_tokens: int = 4,
        heads: Optional[int] = None,
        hidden_dim: Optional[int] = None,
    ):
        super().__init__()
        hidden_dim = hidden_dim or id_embeddings_dim * 2
        self.cross_attention_dim = cross_attention_dim
        self.num_tokens = num_tokens
        self.embedding_dim = id_embeddings_dim
        self.clip_embeddings_dim = clip_embeddings_dim
        self.output_dim = cross_attention_dim
        self.proj = nn.Sequential(
            nn.Linear(id_embeddings_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, cross_attention_dim * num_tokens)
        )
        self.norm = nn.LayerNorm(cross_attention_dim)
        self.perceiver_resampler = FacePerceiverResampler(
            dim=cross_attention_dim,
            depth=4,
            dim_head=64,
            heads=heads or cross_attention_dim // 64,
            embedding_dim=clip_embeddings_dim,
            output_dim=cross_attention_dim,
            ff_mult=4,
        )

    def forward(
        self, id_embeds: torch.Tensor, clip_embeds: torch.Tensor, shortcut: bool = False, scale: float = 1.0
    ) -> torch.Tensor:
        """id_embeds [B, D]; clip_embeds [B, S, clip_dim] (CLIP-vision penultimate hidden states)."""
        x = self.proj(id_embeds)
        x = self.norm(x.reshape(-1, self.num_tokens, self.cross_attention_dim))
        out = self.perceiver_resampler(x, clip_embeds.to(x.dtype))
        if shortcut:
            out = x + scale * out
        return out

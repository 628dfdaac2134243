"""EVA-CLIP test checkpoints: the released ``EVA02_CLIP_L_336_psz14_s6B.pt`` key layout (the official
EVA-CLIP ``EVAVisionTransformer`` under ``visual.``, written out from ToTheBeginning/PuLID's
``eva_clip/eva_vit_model.py`` and ``EVA02-CLIP-L-14-336.json``), at any width, with random weights.

No ``build()`` of its own: ``tests/builders/pulid_flux.py`` writes the files the comfy tier needs.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

Layout = List[Tuple[str, Tuple[int, ...]]]

RELEASED = dict(width=1024, depth=24, mlp_hidden=2730, patch=14, image_size=336, embed_dim=768, text=True)
# small: depth 21 keeps all five taps (inputs of blocks 4..20); 2x2 patches of 14 px
TINY = dict(width=64, depth=21, mlp_hidden=170, patch=14, image_size=28, embed_dim=24, text=False)


def visual_layout(width, depth, mlp_hidden, patch, image_size, embed_dim, text=False) -> Layout:
    w = width
    grid = image_size // patch
    out: Layout = [
        ("visual.cls_token", (1, 1, w)),
        ("visual.pos_embed", (1, grid * grid + 1, w)),
        ("visual.patch_embed.proj.weight", (w, 3, patch, patch)),
        ("visual.patch_embed.proj.bias", (w,)),
    ]
    rope = (grid * grid, 64)  # head width 64: the rotary tables cover the whole head
    out += [("visual.rope.freqs_cos", rope), ("visual.rope.freqs_sin", rope)]
    for i in range(depth):
        p = f"visual.blocks.{i}."
        out += [(p + "norm1.weight", (w,)), (p + "norm1.bias", (w,))]
        out += [(p + "attn.q_bias", (w,)), (p + "attn.v_bias", (w,))]
        out += [(p + f"attn.{n}_proj.weight", (w, w)) for n in "qkv"]
        out += [(p + "attn.rope.freqs_cos", rope), (p + "attn.rope.freqs_sin", rope)]
        out += [(p + "attn.inner_attn_ln.weight", (w,)), (p + "attn.inner_attn_ln.bias", (w,))]
        out += [(p + "attn.proj.weight", (w, w)), (p + "attn.proj.bias", (w,))]
        out += [(p + "norm2.weight", (w,)), (p + "norm2.bias", (w,))]
        for n in ("w1", "w2"):
            out += [(p + f"mlp.{n}.weight", (mlp_hidden, w)), (p + f"mlp.{n}.bias", (mlp_hidden,))]
        out += [(p + "mlp.ffn_ln.weight", (mlp_hidden,)), (p + "mlp.ffn_ln.bias", (mlp_hidden,))]
        out += [(p + "mlp.w3.weight", (w, mlp_hidden)), (p + "mlp.w3.bias", (w,))]
    out += [("visual.norm.weight", (w,)), ("visual.norm.bias", (w,))]
    out += [("visual.head.weight", (embed_dim, w)), ("visual.head.bias", (embed_dim,))]
    if text:  # a few of the text tower's names, as in the full CLIP checkpoint (ignored by the loader)
        out += [("text.token_embedding.weight", (16, embed_dim)), ("logit_scale", ())]
    return out


def rope_tables(grid: int, pt_grid: int = 16, head_dim: int = 64) -> Tuple[torch.Tensor, torch.Tensor]:
    """The official VisionRotaryEmbeddingFast buffers (theta 10000, frequencies of dim head_dim/2 per axis,
    interpolated from the pre-training grid ``pt_grid`` to ``grid``), each [grid*grid, head_dim]."""
    half = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    t = torch.arange(grid) / grid * pt_grid
    f = torch.einsum("i,f->if", t, freqs).repeat_interleave(2, dim=-1)  # [grid, half]
    fh = f[:, None, :].expand(grid, grid, half)
    fw = f[None, :, :].expand(grid, grid, half)
    full = torch.cat((fh, fw), dim=-1).reshape(grid * grid, head_dim)
    return full.cos(), full.sin()


def random_checkpoint(seed: int = 0, **cfg) -> Dict[str, torch.Tensor]:
    cfg = {**TINY, **cfg}
    g = torch.Generator().manual_seed(seed)
    cos, sin = rope_tables(cfg["image_size"] // cfg["patch"])
    out = {}
    for k, s in visual_layout(**cfg):
        if k.endswith("freqs_cos"):
            out[k] = cos.clone()
        elif k.endswith("freqs_sin"):
            out[k] = sin.clone()
        elif len(s) == 1 and ("norm" in k or "_ln" in k) and k.endswith("weight"):
            out[k] = 1.0 + 0.1 * torch.randn(s, generator=g)
        elif len(s) == 0:
            out[k] = torch.tensor(4.6)
        else:
            fan = s[-1] if len(s) == 2 else (s[1] * s[2] * s[3] if len(s) == 4 else 1)
            out[k] = torch.randn(s, generator=g) * (fan**-0.5 if len(s) > 1 else 0.1)
    for k in ("visual.cls_token", "visual.pos_embed"):
        out[k] = torch.randn(out[k].shape, generator=g) * 0.5
    return out

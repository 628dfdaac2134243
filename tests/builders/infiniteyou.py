"""InfiniteYou test files: ``image_proj_model.bin`` = ``{'image_proj': resampler}`` in the released key/shape
layout, written out here from bytedance/InfiniteYou ``pipelines/resampler.py`` (independently of
``nodes/infiniteyou``). Released: dim 1280, depth 4, 20 heads of 64, ff_mult 4, 512 -> 8 (or 16) x 4096.
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

import torch

Layout = List[Tuple[str, Tuple[int, ...]]]

TINY = dict(dim=128, depth=2, heads=2, num_queries=4, embedding_dim=512, output_dim=48, ff_mult=2)


def resampler_layout(dim=1280, depth=4, heads=20, num_queries=8, embedding_dim=512, output_dim=4096, ff_mult=4):
    inner = 64 * heads
    out: Layout = [
        ("latents", (1, num_queries, dim)),
        ("proj_in.weight", (dim, embedding_dim)),
        ("proj_in.bias", (dim,)),
    ]
    out += [("proj_out.weight", (output_dim, dim)), ("proj_out.bias", (output_dim,))]
    out += [("norm_out.weight", (output_dim,)), ("norm_out.bias", (output_dim,))]
    for i in range(depth):
        p = f"layers.{i}."
        out += [(p + "0.norm1.weight", (dim,)), (p + "0.norm1.bias", (dim,))]
        out += [(p + "0.norm2.weight", (dim,)), (p + "0.norm2.bias", (dim,))]
        out += [(p + "0.to_q.weight", (inner, dim)), (p + "0.to_kv.weight", (inner * 2, dim))]
        out += [(p + "0.to_out.weight", (dim, inner))]
        out += [(p + "1.0.weight", (dim,)), (p + "1.0.bias", (dim,))]
        out += [(p + "1.1.weight", (dim * ff_mult, dim)), (p + "1.3.weight", (dim, dim * ff_mult))]
    return out


def random_state_dict(layout: Layout, seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in layout:
        if len(s) == 1 and k.endswith("weight"):
            out[k] = 1.0 + 0.1 * torch.randn(s, generator=g)
        else:
            out[k] = torch.randn(s, generator=g) * (s[-1] ** -0.5 if len(s) > 1 else 0.1)
    return out


def write(path: str, image_proj: Dict[str, torch.Tensor]) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save({"image_proj": image_proj}, path)
    return path

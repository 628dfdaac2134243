"""PuLID test files: the released key/shape layouts, written out here from the official code
(ToTheBeginning/PuLID ``pulid/encoders.py``, ``pulid/encoders_transformer.py``, the pipelines'
``load_pretrain`` / ``hack_unet_attn_layers``), independently of ``nodes/pulid``, and random state
dicts in those layouts.

* PuLID-FLUX ``pulid_flux_v0.9.1.safetensors``: ``pulid_encoder.`` + IDFormer, ``pulid_ca.<0..19>.`` +
  PerceiverAttentionCA(dim 3072, 16 heads of 128, kv 2048).
* ``pulid_v1.bin``: ``id_adapter.`` + IDEncoder, ``id_adapter_attn_layers.<n>.id_to_k/id_to_v.weight``.
* ``pulid_v1.1.safetensors``: ``id_adapter.`` + IDFormer, the same attention layers.

Every layout function takes the widths as arguments (defaults = the released files) so the unit
tests can write tiny files with the same names. No ``build()``: no node uses PuLID files yet.
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import torch

Layout = List[Tuple[str, Tuple[int, ...]]]

# diffusers' SDXL UNet attention processors in ``unet.attn_processors`` order: down_blocks.1 (2 attentions
# x 2 transformer layers, 640), down_blocks.2 (2 x 10, 1280), up_blocks.0 (3 x 10, 1280), up_blocks.1
# (3 x 2, 640), mid_block (1 x 10, 1280); each transformer layer = attn1 (self, no PuLID weights) then attn2.
SDXL_CROSS_WIDTHS: List[int] = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10

FLUX_NUM_CA = 20  # 10 after double blocks 0, 2, ..., 18 + 10 after single blocks 0, 4, ..., 36


def _ln(p: str, d: int) -> Layout:
    return [(p + "weight", (d,)), (p + "bias", (d,))]


def _lin(p: str, d_in: int, d_out: int, bias: bool = True) -> Layout:
    return [(p + "weight", (d_out, d_in))] + ([(p + "bias", (d_out,))] if bias else [])


def _mlp(p: str, d_in: int, hidden: int, d_out: int) -> Layout:
    # Sequential(Linear, LayerNorm, LeakyReLU, Linear, LayerNorm, LeakyReLU, Linear)
    return (
        _lin(p + "0.", d_in, hidden)
        + _ln(p + "1.", hidden)
        + _lin(p + "3.", hidden, hidden)
        + _ln(p + "4.", hidden)
        + _lin(p + "6.", hidden, d_out)
    )


def _attn(p: str, dim: int, inner: int, kv: int) -> Layout:
    return (
        _ln(p + "norm1.", kv)
        + _ln(p + "norm2.", dim)
        + _lin(p + "to_q.", dim, inner, False)
        + _lin(p + "to_kv.", kv, inner * 2, False)
        + _lin(p + "to_out.", inner, dim, False)
    )


def idformer_layout(
    dim=1024,
    depth=10,
    dim_head=64,
    heads=16,
    num_id_token=5,
    num_queries=32,
    output_dim=2048,
    ff_mult=4,
    vit_width=1024,
    id_width=1280,
    hidden=1024,
    prefix="",
) -> Layout:
    p = prefix
    out: Layout = [(p + "latents", (1, num_queries, dim)), (p + "proj_out", (dim, output_dim))]
    for i in range(depth):
        q = f"{p}layers.{i}."
        out += _attn(q + "0.", dim, dim_head * heads, dim)
        out += _ln(q + "1.0.", dim) + _lin(q + "1.1.", dim, dim * ff_mult, False)
        out += _lin(q + "1.3.", dim * ff_mult, dim, False)
    for i in range(5):
        out += _mlp(f"{p}mapping_{i}.", vit_width, hidden, dim)
    out += _mlp(p + "id_embedding_mapping.", id_width, hidden, dim * num_id_token)
    return out


def idencoder_layout(width=1280, context_dim=2048, num_token=5, vit_width=1024, hidden=1024, prefix="") -> Layout:
    p = prefix
    h1 = min(context_dim * num_token // 4, 1024)
    h2 = min(context_dim * num_token // 2, 1024)
    out = _lin(p + "body.0.", width, h1) + _ln(p + "body.1.", h1) + _lin(p + "body.3.", h1, h2)
    out += _ln(p + "body.4.", h2) + _lin(p + "body.6.", h2, context_dim * num_token)
    for i in range(5):
        out += _mlp(f"{p}mapping_{i}.", vit_width, hidden, context_dim)
        out += _mlp(f"{p}mapping_patch_{i}.", vit_width, hidden, context_dim)
    return out


def ca_layout(dim=3072, dim_head=128, heads=16, kv_dim=2048, prefix="") -> Layout:
    return _attn(prefix, dim, dim_head * heads, kv_dim)


def sdxl_attn_layout(widths: Sequence[int] = tuple(SDXL_CROSS_WIDTHS), context=2048, prefix="") -> Layout:
    out: Layout = []
    for b, w in enumerate(widths):
        n = 2 * b + 1  # attn2 of transformer layer b
        out += [(f"{prefix}{n}.id_to_k.weight", (w, context)), (f"{prefix}{n}.id_to_v.weight", (w, context))]
    return out


def flux_layout(encoder: dict = None, ca: dict = None, num_ca: int = FLUX_NUM_CA) -> Layout:
    out = idformer_layout(prefix="pulid_encoder.", **(encoder or {}))
    for i in range(num_ca):
        out += ca_layout(prefix=f"pulid_ca.{i}.", **(ca or {}))
    return out


def sdxl_v1_layout(encoder: dict = None, widths=tuple(SDXL_CROSS_WIDTHS), context=2048) -> Layout:
    return idencoder_layout(prefix="id_adapter.", **(encoder or {})) + sdxl_attn_layout(
        widths, context, "id_adapter_attn_layers."
    )


def sdxl_v1_1_layout(encoder: dict = None, widths=tuple(SDXL_CROSS_WIDTHS), context=2048) -> Layout:
    return idformer_layout(prefix="id_adapter.", **(encoder or {})) + sdxl_attn_layout(
        widths, context, "id_adapter_attn_layers."
    )


# tiny widths that keep every released name (the hard-coded 1024 / 1280 widths become small too)
TINY_IDFORMER = dict(
    dim=32,
    depth=5,
    dim_head=64,  # the loader reads heads as inner width / 64 (the released head width)
    heads=2,
    num_id_token=3,
    num_queries=6,
    output_dim=24,
    ff_mult=2,
    vit_width=16,
    id_width=20,
    hidden=12,
)
TINY_IDENCODER = dict(width=20, context_dim=24, num_token=3, vit_width=16, hidden=12)
TINY_CA = dict(dim=40, dim_head=128, heads=2, kv_dim=24)  # heads read as inner / 128
TINY_WIDTHS = (40, 48, 40)


def random_state_dict(layout: Layout, seed: int = 0, dtype=torch.float32, device=None) -> Dict[str, torch.Tensor]:
    """Random tensors in ``layout`` (norm weights near 1, others ~ fan-in scaled); device 'meta': shapes only."""
    if device == "meta":
        return {k: torch.empty(s, device="meta", dtype=dtype) for k, s in layout}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in layout:
        if len(s) == 1 and k.endswith("weight"):  # LayerNorm scale (1-D weights are LayerNorms only)
            t = 1.0 + 0.1 * torch.randn(s, generator=g)
        else:
            t = torch.randn(s, generator=g) * (s[-1] ** -0.5 if len(s) > 1 else 0.1)
        out[k] = t.to(dtype)
    return out


def write(path: str, sd: Dict[str, torch.Tensor]) -> str:
    """``.safetensors`` via safetensors, anything else via torch.save (a flat dict, as pulid_v1.bin)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)
    return path

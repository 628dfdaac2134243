"""PuLID SDXL test files for the comfy tier, under the released names (models/pulid/):

* ``pulid_v1.bin`` (IDEncoder, a flat torch state dict as released), ``pulid_v1.1.safetensors`` (IDFormer) and
  ``ip-adapter_pulid_sdxl_fp16.safetensors`` (the v1 tensors under the IP-Adapter names, fp16, as the
  community re-save): the released key layouts at tiny widths. The attention layers fit the test pack's
  ``TestTinySDXL`` at its defaults (``tests/comfy_nodes/visage_test_models/tiny_sdxl.py``: model
  channels 32, context 24); the encoders read the tiny EVA-CLIP's features (builders/eva_clip.py) and the
  512-d glintr100 embedding. The v1 tensors are fp16 in both v1 files, so both give the same tokens.
"""

from __future__ import annotations

import os

from . import eva_clip as EB
from . import pulid as PB

CONTEXT = 24  # TestTinySDXL's default context width
MODEL_CHANNELS = 32
ID_WIDTH = 512 + EB.TINY["embed_dim"]
V1_ENCODER = dict(PB.TINY_IDENCODER, context_dim=CONTEXT, vit_width=EB.TINY["width"], width=ID_WIDTH)
V11_ENCODER = dict(PB.TINY_IDFORMER, output_dim=CONTEXT, vit_width=EB.TINY["width"], id_width=ID_WIDTH)


def cross_widths(mc: int = MODEL_CHANNELS, depth: int = 1):
    """The tiny SDXL's cross-attention widths in diffusers' processor order (down, up, mid)."""
    return (
        [2 * mc] * (2 * depth)
        + [4 * mc] * (2 * depth)
        + [4 * mc] * (3 * depth)
        + [2 * mc] * (3 * depth)
        + [4 * mc] * depth
    )


def _scaled(sd, gain=4.0):
    # identity keys/values scaled up so the identity visibly moves a 2-step tiny sample (layout unchanged)
    return {k: (v * gain if ".id_to_" in k else v) for k, v in sd.items()}


def build(models_dir: str, input_dir: str) -> None:
    import torch

    d = os.path.join(models_dir, "pulid")
    v1 = _scaled(PB.random_state_dict(PB.sdxl_v1_layout(V1_ENCODER, cross_widths(), CONTEXT), seed=21))
    v1 = {k: v.to(torch.float16) for k, v in v1.items()}
    PB.write(os.path.join(d, "pulid_v1.bin"), v1)
    renamed = {
        k.replace("id_adapter_attn_layers.", "ip_adapter.")
        .replace("id_adapter.", "image_proj.")
        .replace(".id_to_k.", ".to_k_ip.")
        .replace(".id_to_v.", ".to_v_ip."): v
        for k, v in v1.items()
    }
    PB.write(os.path.join(d, "ip-adapter_pulid_sdxl_fp16.safetensors"), renamed)
    v11 = _scaled(PB.random_state_dict(PB.sdxl_v1_1_layout(V11_ENCODER, cross_widths(), CONTEXT), seed=22))
    PB.write(os.path.join(d, "pulid_v1.1.safetensors"), v11)

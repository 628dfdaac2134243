"""PuLID-FLUX test files for the comfy tier, under the released names the shipped workflow uses:

* ``pulid/pulid_flux_v0.9.1.safetensors``: the released key layout (``pulid_encoder.`` IDFormer +
  ``pulid_ca.0..19``) at tiny widths: the CA width is the test Flux's (``TINY_FLUX_WIDTH``, the
  ``TestTinyFlux`` node's default), the IDFormer reads the tiny EVA-CLIP's features;
* ``clip_vision/EVA02_CLIP_L_336_psz14_s6B.pt``: the EVA-CLIP checkpoint layout (``visual.*`` + a text
  key), tiny (:mod:`builders.eva_clip`);
* ``facexlib/parsing_bisenet.pth``: facexlib's BiSeNet layout, random (:mod:`builders.masks`), unless a
  builder already wrote one;
* ``pulid/visage-test-not-pulid.safetensors``: an InstantID-like file the loader must refuse.
"""

from __future__ import annotations

import os

import torch

from . import eva_clip as EB
from . import masks as MB
from . import pulid as PB

TINY_FLUX_WIDTH = 64
ID_WIDTH = 512  # glintr100
FLUX_ENCODER = dict(PB.TINY_IDFORMER, vit_width=EB.TINY["width"], id_width=ID_WIDTH + EB.TINY["embed_dim"])
FLUX_CA = dict(dim=TINY_FLUX_WIDTH, dim_head=128, heads=1, kv_dim=PB.TINY_IDFORMER["output_dim"])


def tiny_flux_pulid(seed: int = 11):
    sd = PB.random_state_dict(PB.flux_layout(FLUX_ENCODER, FLUX_CA), seed)
    # CA outputs scaled up so the identity visibly moves a 2-step tiny sample (the layout is unchanged)
    for k in sd:
        if k.endswith("to_out.weight") and k.startswith("pulid_ca."):
            sd[k] = sd[k] * 4.0
    return sd


def build(models_dir: str, input_dir: str) -> None:
    PB.write(os.path.join(models_dir, "pulid", "pulid_flux_v0.9.1.safetensors"), tiny_flux_pulid())
    eva = os.path.join(models_dir, "clip_vision", "EVA02_CLIP_L_336_psz14_s6B.pt")
    os.makedirs(os.path.dirname(eva), exist_ok=True)
    torch.save(EB.random_checkpoint(seed=4, text=True), eva)
    parsing = os.path.join(models_dir, "facexlib", "parsing_bisenet.pth")
    if not os.path.exists(parsing):
        MB.make_bisenet_pth(parsing, seed=2)
    g = torch.Generator().manual_seed(0)
    PB.write(
        os.path.join(models_dir, "pulid", "visage-test-not-pulid.safetensors"),
        {
            "image_proj.latents": torch.randn(1, 4, 8, generator=g),
            "image_proj.proj_in.weight": torch.randn(8, 8, generator=g),
            "ip_adapter.1.to_k_ip.weight": torch.randn(8, 8, generator=g),
        },
    )

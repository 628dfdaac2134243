"""InfiniteYou (FLUX.1-dev): the identity resampler and its tokens. Pure torch, no ComfyUI.

Facts from bytedance/InfiniteYou (``pipelines/pipeline_infu_flux.py``, ``pipelines/resampler.py``):

* ``infu_flux_v1.0/{sim_stage1,aes_stage2}/image_proj_model.bin`` = ``{'image_proj': state dict}`` of
  the InstantID resampler family (:class:`visage.nodes.adapters.projection.Resampler`): dim 1280,
  depth 4, 20 heads of 64, ff_mult 4, input 512, output 4096, 8 tokens (the released demo) or 16.
  Here every size is read from the shapes and the state dict is loaded strictly.
* The embedding: facexlib's IR-SE50 ArcFace (``recognition_arcface_ir_se50``) on the 112 crop aligned by
  the antelopev2 keypoints, L2-normalised (facexlib's output), ``[1, 1, 512]`` into the resampler.
* InfuseNet (a Flux ControlNet, diffusers layout) takes the tokens as its text context
  (``controlnet_prompt_embeds``) and a keypoint image of the target pose (InstantID's ``draw_kps`` on
  the control image) or an all-black image; ``infusenet_conditioning_scale`` 1.0, guidance window
  0..1. The transformer's own text context is the prompt.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, Mapping, Tuple

import torch

from ...core.errors import ModelFileInvalid, VisageError
from ..adapters.projection import Resampler

log = logging.getLogger("visage")

EXPECTED = (
    "InfiniteYou's image_proj_model.bin (infu_flux_v1.0/sim_stage1 or aes_stage2): "
    "{'image_proj': resampler 512 -> tokens of 4096}"
)
EMBED_DIM = 512


@dataclass
class InfiniteYouInfo:
    num_tokens: int
    output_dim: int
    embedding_dim: int
    file: str = ""

    def describe(self) -> str:
        return (
            f"InfiniteYou resampler: {self.embedding_dim}-d embedding -> {self.num_tokens} tokens of {self.output_dim}"
        )


def _looks_like(sd: Mapping) -> str:
    keys = [str(k) for k in sd]
    heads = {k.partition(".")[0] for k in keys}
    if "ip_adapter" in heads:
        return "looks like an InstantID / IP-Adapter file (it has ip_adapter attention layers), not InfiniteYou"
    if {"id_adapter", "pulid_encoder"} & heads:
        return "looks like a PuLID file, not InfiniteYou"
    if any("controlnet" in k or k.startswith("transformer_blocks.") for k in keys):
        return "looks like a ControlNet / transformer (InfuseNet goes to 'Load ControlNet Model'), not the resampler"
    return f"holds {len(keys)} entries, no 'image_proj' resampler"


def read_image_proj(path: str) -> Dict[str, torch.Tensor]:
    """The ``image_proj`` state dict of a file (``.bin`` via torch.load(weights_only=True), or safetensors
    with ``image_proj.`` keys)."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".safetensors", ".sft"):
            from safetensors.torch import load_file

            flat = load_file(path, device="cpu")
            obj = {"image_proj": {k[len("image_proj.") :]: v for k, v in flat.items() if k.startswith("image_proj.")}}
            if not obj["image_proj"]:
                obj = flat
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, pickle refused by weights_only ...
        raise ModelFileInvalid(path, f"cannot be read ({type(e).__name__}: {str(e)[:200]})", EXPECTED) from None
    if not isinstance(obj, Mapping):
        raise ModelFileInvalid(path, f"holds a {type(obj).__name__}, not a dict of tensors", EXPECTED)
    proj = obj.get("image_proj")
    if not isinstance(proj, Mapping) or not proj or "ip_adapter" in obj:
        raise ModelFileInvalid(path, _looks_like(obj), EXPECTED)
    return dict(proj)


def build_resampler(path: str, proj: Mapping[str, torch.Tensor]) -> Tuple[Resampler, InfiniteYouInfo]:
    """The resampler for ``proj`` (sizes from the shapes), loaded strictly; CPU, eval, no grad."""
    try:
        _, q, dim = proj["latents"].shape
        depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
        heads = int(proj["layers.0.0.to_q.weight"].shape[0]) // 64
        ff_mult = int(proj["layers.0.1.1.weight"].shape[0]) / dim
        emb = int(proj["proj_in.weight"].shape[1])
        out = int(proj["proj_out.weight"].shape[0])
    except (KeyError, ValueError, IndexError) as e:
        raise ModelFileInvalid(
            path, f"has an 'image_proj' group that is not a resampler ({type(e).__name__}: {e})", EXPECTED
        ) from None
    with torch.device("meta"):
        m = Resampler(
            dim=int(dim),
            depth=depth,
            dim_head=64,
            heads=heads,
            num_queries=int(q),
            embedding_dim=emb,
            output_dim=out,
            ff_mult=ff_mult,
        )
    try:
        m.load_state_dict(dict(proj), strict=True, assign=True)
    except RuntimeError as e:
        raise ModelFileInvalid(path, f"has resampler names but not its tensors ({str(e)[:300]})", EXPECTED) from None
    info = InfiniteYouInfo(int(q), out, emb, file=path)
    if emb != EMBED_DIM:
        raise ModelFileInvalid(path, f"takes {emb}-d embeddings", EXPECTED + " (512-d ArcFace input)")
    return m.eval().requires_grad_(False), info


def load_infiniteyou(path: str) -> Tuple[Resampler, InfiniteYouInfo]:
    return build_resampler(path, read_image_proj(path))


@torch.no_grad()
def identity_tokens(resampler: Resampler, emb: torch.Tensor) -> torch.Tensor:
    """[I, 512] normalised IR-SE50 embeddings (one per identity) -> [I, Q, 4096] float32 on the CPU.

    Each embedding goes through the resampler alone (``[1, 1, 512]``), as the official pipeline does.
    """
    if emb.ndim != 2 or emb.shape[1] != resampler.embedding_dim:
        raise VisageError(
            "InfiniteYou takes one 512-d embedding per identity",
            expected=f"embeddings [identities, {resampler.embedding_dim}]",
            got=f"shape {list(emb.shape)}",
            fix="give faces analysed with the IR-SE50 recognizer (Add Face Recognizer)",
        )
    p = next(resampler.parameters())
    return resampler(emb.to(p.device, p.dtype).unsqueeze(1)).float().cpu()

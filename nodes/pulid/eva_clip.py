"""EVA02-CLIP-L-14-336's vision tower for PuLID, on ``timm``'s EVA02, from the EVA-CLIP checkpoint.

PuLID (every pipeline: SDXL v1, v1.1 and FLUX) feeds the aligned, background-whitened, grey face to
the vision tower of EVA02-CLIP-L-14-336 (``QuanSun/EVA-CLIP`` file ``EVA02_CLIP_L_336_psz14_s6B.pt``;
its ``visual.*`` tensors) and takes:

* ``id_cond_vit``: the pooled, projected output ``head(norm(x)[:, 0])`` ([B, 768]; the tower's
  ``global_average_pool`` is off, so the CLS token), which the pipelines L2-normalise;
* ``id_vit_hidden``: the token sequences *entering* blocks 4, 8, 12, 16 and 20 (``0 < idx <= 20 and
  idx % 4 == 0``), i.e. the outputs of blocks 3, 7, 11, 15 and 19, before any norm ([B, 577, 1024]).

The architecture (24 pre-norm blocks of width 1024, 16 heads of 64, q/v biases and no k bias, a
LayerNorm inside attention before its projection, SwiGLU MLP of 2730 with a LayerNorm before its
output, 2-D rotary embedding on the patch tokens interpolated from a 16x16 to the 24x24 grid, all
LayerNorms eps 1e-6) is exactly ``timm``'s ``eva02_large_patch14_clip_336``. We build it with timm
(a standard, maintained implementation that already ships in ComfyUI environments) instead of
carrying a copy of the EVA-CLIP code, and convert the checkpoint's names to timm's here:

==================================  ==================================
EVA-CLIP ``visual.``                timm ``Eva``
==================================  ==================================
``blocks.i.attn.q_bias``            ``blocks.i.attn.q_proj.bias``
``blocks.i.attn.v_bias``            ``blocks.i.attn.v_proj.bias``
``blocks.i.attn.inner_attn_ln.*``   ``blocks.i.attn.norm.*``
``blocks.i.mlp.w1 / w2 / w3``       ``blocks.i.mlp.fc1_g / fc1_x / fc2``
``blocks.i.mlp.ffn_ln.*``           ``blocks.i.mlp.norm.*``
``rope.*``, ``blocks.i.attn.rope.*``  dropped (fixed buffers, rebuilt)
everything else                     same name
==================================  ==================================

Widths, depth, patch and image size are read from the tensors, so a small test checkpoint in the
same layout loads the same way. The text tower and ``logit_scale`` of a full CLIP checkpoint are
ignored.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn as nn

from ...core.errors import ModelFileInvalid

log = logging.getLogger("visage")

EVA_FILE = "EVA02_CLIP_L_336_psz14_s6B.pt"
EVA_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OPENAI_DATASET_MEAN (the official transform)
EVA_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_WIDTH = 64  # EVA02-CLIP-L's head_width (vision_heads = width // head_width)
PT_GRID = 16  # pt_hw_seq_len: the rotary grid the tower was pre-trained on (224 / 14)
HIDDEN_BLOCKS = (4, 8, 12, 16, 20)  # the official taps: the inputs of these blocks

EXPECTED = (
    "the EVA-CLIP checkpoint EVA02_CLIP_L_336_psz14_s6B.pt (QuanSun/EVA-CLIP): a state dict with the "
    "vision tower under 'visual.' (patch_embed, blocks.<i>.attn.q_proj / q_bias ..., head)"
)

_RENAMES = (
    (".attn.q_bias", ".attn.q_proj.bias"),
    (".attn.v_bias", ".attn.v_proj.bias"),
    (".attn.inner_attn_ln.", ".attn.norm."),
    (".mlp.ffn_ln.", ".mlp.norm."),
    (".mlp.w1.", ".mlp.fc1_g."),
    (".mlp.w2.", ".mlp.fc1_x."),
    (".mlp.w3.", ".mlp.fc2."),
)
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class EvaConfig:
    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_hidden: int = 2730
    patch: int = 14
    image_size: int = 336
    embed_dim: int = 768  # the projection (head) width

    @property
    def grid(self) -> int:
        return self.image_size // self.patch


def visual_state_dict(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The vision tower's tensors without the ``visual.`` prefix (a bare tower state dict passes as is)."""
    if any(k.startswith("visual.") for k in sd):
        return {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    return dict(sd)


def _looks_like(sd: Mapping[str, torch.Tensor]) -> str:
    keys = list(sd)
    if not keys:
        return "holds no tensors"
    if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        return "looks like a Hugging Face CLIP model (vision_model.* keys), not the EVA-CLIP checkpoint"
    if any(k.startswith(("visual.transformer.", "visual.conv1.", "transformer.resblocks.", "conv1.")) for k in keys):
        return "looks like an OpenAI / open_clip ViT checkpoint, not EVA02-CLIP"
    if any(k.startswith(("pulid_", "id_adapter")) for k in keys):
        return "looks like a PuLID file; it goes in 'Load PuLID Model'"
    if any(k.startswith(("double_blocks.", "model.diffusion_model.", "input_blocks.")) for k in keys):
        return "looks like a diffusion model, not EVA-CLIP"
    return f"holds {len(keys)} tensors, none laid out as EVA-CLIP's vision tower"


def config_from_state_dict(vis: Mapping[str, torch.Tensor], path: str = "") -> EvaConfig:
    """The tower's configuration, read from the shapes of its (``visual.``-stripped) tensors."""
    try:
        width, patch = vis["patch_embed.proj.weight"].shape[0], vis["patch_embed.proj.weight"].shape[-1]
        n_pos = vis["pos_embed"].shape[1] - 1
        grid = int(round(n_pos**0.5))
        if grid * grid != n_pos:
            raise ValueError(f"{n_pos} position tokens is not a square grid")
        depth = 1 + max(int(m.group(1)) for m in map(_BLOCK.match, vis) if m)
        hidden = vis["blocks.0.mlp.w1.weight"].shape[0]
        embed = vis["head.weight"].shape[0]
        if "blocks.0.attn.q_proj.weight" not in vis or "blocks.0.attn.q_bias" not in vis:
            raise KeyError("blocks.0.attn.q_proj.weight / q_bias")
    except (KeyError, ValueError, IndexError) as e:
        raise ModelFileInvalid(path, _looks_like(vis) + f" ({type(e).__name__}: {str(e)[:120]})", EXPECTED) from None
    if width % HEAD_WIDTH:
        raise ModelFileInvalid(path, f"has a {width}-wide tower, not a multiple of {HEAD_WIDTH}", EXPECTED)
    return EvaConfig(
        width=width,
        depth=depth,
        heads=width // HEAD_WIDTH,
        mlp_hidden=hidden,
        patch=patch,
        image_size=grid * patch,
        embed_dim=embed,
    )


def to_timm(vis: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """EVA-CLIP vision-tower names (``visual.``-stripped) -> timm ``Eva`` names; rotary buffers dropped."""
    out: Dict[str, torch.Tensor] = {}
    for k, v in vis.items():
        if k.startswith("rope.") or ".rope." in k:
            continue
        for a, b in _RENAMES:
            k = k.replace(a, b)
        out[k] = v
    return out


def build_tower(cfg: EvaConfig) -> nn.Module:
    """timm's EVA02 for ``cfg`` (``eva02_large_patch14_clip_336``'s arguments for the released file)."""
    from timm.models.eva import Eva

    ratio = cfg.mlp_hidden / cfg.width
    if int(cfg.width * ratio) != cfg.mlp_hidden:  # float rounding of an odd ratio: nudge up
        ratio = (cfg.mlp_hidden + 0.5) / cfg.width
    return Eva(
        img_size=cfg.image_size,
        patch_size=cfg.patch,
        num_classes=cfg.embed_dim,
        global_pool="token",
        embed_dim=cfg.width,
        depth=cfg.depth,
        num_heads=cfg.heads,
        qkv_bias=True,
        qkv_fused=False,
        mlp_ratio=ratio,
        swiglu_mlp=True,
        scale_mlp=True,
        scale_attn_inner=True,
        use_rot_pos_emb=True,
        ref_feat_shape=(PT_GRID, PT_GRID),
    )


class EvaClipVision(nn.Module):
    """The vision tower with PuLID's outputs: ``forward(x) -> (id_cond_vit [B, E], hidden: 5 x [B, 1+G*G, W])``.

    ``x``: [B, 3, S, S] normalised with :data:`EVA_MEAN` / :data:`EVA_STD`, S = the tower's image size.
    ``id_cond_vit`` is the projected CLS output, not yet L2-normalised (see :func:`pulid_vit_features`).
    """

    def __init__(self, cfg: EvaConfig, taps: Sequence[int] = HIDDEN_BLOCKS):
        super().__init__()
        self.cfg = cfg
        self.taps = tuple(t for t in taps if 0 < t < cfg.depth)  # the input of block t: t <= depth - 1
        self.tower = build_tower(cfg)

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        # the input of block t is the output of block t - 1
        final, inter = self.tower.forward_intermediates(
            x, indices=[t - 1 for t in self.taps], return_prefix_tokens=True, norm=False, output_fmt="NLC"
        )
        hidden = [torch.cat((prefix, spatial), dim=1) for spatial, prefix in inter]
        return self.tower.forward_head(final), hidden


def load_state_dict(sd: Mapping[str, torch.Tensor], path: str = "") -> EvaClipVision:
    """Build the tower for ``sd`` (EVA-CLIP layout, with or without ``visual.``) and load it strictly."""
    vis = visual_state_dict(sd)
    cfg = config_from_state_dict(vis, path)
    with torch.device("meta"):
        model = EvaClipVision(cfg)
    try:
        model.tower.load_state_dict(to_timm(vis), strict=True, assign=True)
    except RuntimeError as e:
        raise ModelFileInvalid(
            path, f"has EVA-CLIP's names but not all its tensors or shapes ({str(e)[:300]})", EXPECTED
        ) from None
    # the rotary tables are buffers computed at construction: build them for real (not on meta)
    with torch.device("cpu"):
        model.tower.rope = build_tower(EvaConfig(**{**cfg.__dict__, "depth": 1})).rope
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:  # pragma: no cover - a timm change that adds state we do not fill
        raise RuntimeError(f"EVA-CLIP tower: tensors left unfilled: {left[:5]}")
    return model.float().eval().requires_grad_(False)


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The checkpoint's tensors (``.pt``/``.bin`` via ``torch.load(weights_only=True)``, or safetensors)."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".safetensors", ".sft"):
            from safetensors.torch import load_file

            return dict(load_file(path, device="cpu"))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelFileInvalid(path, f"cannot be read ({type(e).__name__}: {str(e)[:200]})", EXPECTED) from None
    for k in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and k in obj and isinstance(obj[k], Mapping):
            obj = obj[k]
    if not isinstance(obj, Mapping):
        raise ModelFileInvalid(path, f"holds a {type(obj).__name__}, not a dict of tensors", EXPECTED)
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_eva_clip(path: str) -> EvaClipVision:
    return load_state_dict(read_state_dict(path), path)


def pulid_vit_features(tower: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """(L2-normalised ``id_cond_vit``, hidden states) as every PuLID pipeline uses them."""
    pooled, hidden = tower(x)
    return pooled / pooled.norm(p=2, dim=1, keepdim=True), hidden

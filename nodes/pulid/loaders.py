"""Loading the released PuLID files; which one a file is, from its keys and shapes.

Pure torch. The released layouts (ToTheBeginning/PuLID, files at huggingface guozinan/PuLID):

* **PuLID-FLUX** ``pulid_flux_v0.9.0/v0.9.1.safetensors``: ``pulid_encoder.*`` (:class:`IDFormer`) and
  ``pulid_ca.<0..19>.*`` (:class:`PerceiverAttentionCA`, see :mod:`.flux_patch`).
* **PuLID SDXL v1** ``pulid_v1.bin`` (a flat state dict): ``id_adapter.*`` (:class:`IDEncoder`) and
  ``id_adapter_attn_layers.<n>.id_to_k.weight`` / ``.id_to_v.weight``.
* **PuLID SDXL v1.1** ``pulid_v1.1.safetensors``: ``id_adapter.*`` (:class:`IDFormer`) and the same
  ``id_adapter_attn_layers``.

In the SDXL files ``<n>`` numbers *all* attention processors of the diffusers UNet (down, up, mid
blocks; ``attn1`` even, ``attn2`` odd), and only the 70 cross-attentions (odd ``n``) hold weights.

Also accepted: the same SDXL weights renamed to the IP-Adapter layout by ComfyUI PuLID packs
(``image_proj.*`` = the encoder, ``ip_adapter.<n>.to_k_ip/to_v_ip.weight``; e.g.
``ip-adapter_pulid_sdxl_fp16.safetensors``): the tensors are the same, only the names differ.

Anything else (an InstantID / IP-Adapter file, a checkpoint, a LoRA, random tensors) is refused with
:class:`ModelFileInvalid` saying what the file looks like. The configuration (widths, depth, number of
modules) is read from the shapes, then the state dict is loaded strictly.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import torch
import torch.nn as nn

from ...core.errors import ModelFileInvalid
from .encoders import IDAttnKV, IDEncoder, IDFormer, PerceiverAttentionCA

log = logging.getLogger("visage")

FLUX = "pulid_flux"
SDXL_V1 = "pulid_sdxl_v1"
SDXL_V1_1 = "pulid_sdxl_v1_1"

KIND_NAMES = {
    FLUX: "PuLID-FLUX (IDFormer + 20 Flux cross-attentions)",
    SDXL_V1: "PuLID SDXL v1 (IDEncoder + id_to_k/id_to_v per UNet cross-attention)",
    SDXL_V1_1: "PuLID SDXL v1.1 (IDFormer + id_to_k/id_to_v per UNet cross-attention)",
}

EXPECTED = (
    "a released PuLID file: pulid_flux_v0.9.x.safetensors (pulid_encoder + pulid_ca), "
    "pulid_v1.bin or pulid_v1.1.safetensors (id_adapter + id_adapter_attn_layers)"
)

_CA_KEY = re.compile(r"^pulid_ca\.(\d+)\.")
_ATTN_KEY = re.compile(r"^id_adapter_attn_layers\.(\d+)\.id_to_([kv])\.weight$")
_IPA_KEY = re.compile(r"^ip_adapter\.(\d+)\.to_([kv])_ip\.weight$")


@dataclass
class PulidInfo:
    kind: str
    encoder: str  # "IDFormer" / "IDEncoder"
    num_tokens: int  # identity tokens the encoder outputs
    token_dim: int  # their width (2048)
    num_ca: int = 0  # FLUX: CA modules
    ca_dim: int = 0  # FLUX: image-token width (3072)
    layer_indices: List[int] = field(default_factory=list)  # SDXL: processor numbers holding id_to_k/v
    layer_widths: List[int] = field(default_factory=list)  # SDXL: their hidden sizes
    converted: bool = False  # SDXL weights under the IP-Adapter names
    file: str = ""

    def describe(self) -> str:
        extra = f"{self.num_ca} CA modules" if self.kind == FLUX else f"{len(self.layer_indices)} cross-attentions"
        return f"{KIND_NAMES[self.kind]}: {self.num_tokens} identity tokens of {self.token_dim}, {extra}"


class PulidModel(nn.Module):
    """The released modules under their released names; ``state_dict()`` gives the file's keys back.

    FLUX: ``pulid_encoder`` + ``pulid_ca`` (ModuleList). SDXL: ``id_adapter`` + ``id_adapter_attn_layers``
    (ModuleDict keyed by the processor number, as in the file).
    """

    def __init__(self, info: PulidInfo, encoder: nn.Module, layers: nn.Module):
        super().__init__()
        self.info = info
        if info.kind == FLUX:
            self.pulid_encoder = encoder
            self.pulid_ca = layers
        else:
            self.id_adapter = encoder
            self.id_adapter_attn_layers = layers

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def encoder(self) -> nn.Module:
        return self.pulid_encoder if self.info.kind == FLUX else self.id_adapter

    @property
    def layers(self) -> nn.Module:
        return self.pulid_ca if self.info.kind == FLUX else self.id_adapter_attn_layers


# ------------------------------------------------------------------------------------- reading


def _flatten(obj: Mapping, prefix: str, out: Dict[str, torch.Tensor]) -> None:
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            out[key] = v
        elif isinstance(v, Mapping):
            _flatten(v, key + ".", out)


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A file's tensors as one flat dict (nested ``.bin`` groups joined with '.')."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".safetensors", ".sft"):
            from safetensors.torch import load_file

            return dict(load_file(path, device="cpu"))
        if ext in (".bin", ".pt", ".pth", ".ckpt"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, Mapping):
                raise ModelFileInvalid(path, f"holds a {type(obj).__name__}, not a dict of tensors", EXPECTED)
            flat: Dict[str, torch.Tensor] = {}
            _flatten(obj, "", flat)
            return flat
    except ModelFileInvalid:
        raise
    except Exception as e:  # truncated file, pickle refused by weights_only, header garbage ...
        raise ModelFileInvalid(
            path, f"cannot be read as {ext} ({type(e).__name__}: {str(e)[:200]})", EXPECTED
        ) from None
    raise ModelFileInvalid(path, f"has the extension '{ext}'", EXPECTED, fix="choose PuLID's .safetensors or .bin file")


# ------------------------------------------------------------------------------------ detecting


def _looks_like(sd: Mapping[str, torch.Tensor]) -> str:
    """What a file that is not a PuLID file looks like, in words (never its contents)."""
    keys = list(sd)
    heads = {k.partition(".")[0] for k in keys}
    if not keys:
        return "holds no tensors"
    if "image_proj" in heads or "ip_adapter" in heads:
        proj = {k[len("image_proj.") :] for k in keys if k.startswith("image_proj.")}
        if "latents" in proj and "proj_in.weight" in proj:
            what = "an InstantID / IP-Adapter Plus file (resampler image_proj + ip_adapter to_k_ip/to_v_ip)"
        elif any(k.startswith("proj.") for k in proj):
            what = "an IP-Adapter FaceID file (MLP image_proj + ip_adapter to_k_ip/to_v_ip)"
        else:
            what = "an IP-Adapter-style file (image_proj + ip_adapter groups)"
        return f"looks like {what}, not PuLID"
    if any(k.startswith(("double_blocks.", "single_blocks.")) or ".double_blocks." in k for k in keys):
        return "looks like a Flux diffusion model, not PuLID"
    if any("lora_" in k or ".lora." in k for k in keys):
        return "looks like a LoRA, not PuLID"
    if any(k.startswith(("input_blocks.", "model.diffusion_model.", "down_blocks.")) for k in keys):
        return "looks like a UNet / checkpoint, not PuLID"
    if any("input_hint_block" in k or k.startswith("controlnet") for k in keys):
        return "looks like a ControlNet, not PuLID"
    if "pulid_encoder" in heads:
        return "has PuLID-FLUX's encoder (pulid_encoder) but no pulid_ca modules (incomplete file)"
    if "pulid_ca" in heads:
        return "has PuLID-FLUX's pulid_ca modules but no encoder (incomplete file)"
    if "id_adapter" in heads:
        return "has PuLID SDXL's encoder (id_adapter) but no id_adapter_attn_layers (incomplete file)"
    if "id_adapter_attn_layers" in heads:
        return "has PuLID SDXL's id_adapter_attn_layers but no encoder (incomplete file)"
    return f"holds {len(keys)} tensors, none under PuLID's names (pulid_encoder / pulid_ca / id_adapter)"


def _unconvert(sd: Mapping[str, torch.Tensor]) -> Optional[Dict[str, torch.Tensor]]:
    """ComfyUI's renamed PuLID SDXL (image_proj / ip_adapter ... to_k_ip) back to the released names."""
    proj = {k[len("image_proj.") :]: v for k, v in sd.items() if k.startswith("image_proj.")}
    is_encoder = ("body.0.weight" in proj and "mapping_patch_0.0.weight" in proj) or (
        "id_embedding_mapping.0.weight" in proj and "latents" in proj
    )
    if not is_encoder:
        return None
    out = {f"id_adapter.{k}": v for k, v in proj.items()}
    for k, v in sd.items():
        m = _IPA_KEY.match(k)
        if m:
            out[f"id_adapter_attn_layers.{m.group(1)}.id_to_{m.group(2)}.weight"] = v
    return out


def _shape(sd, key) -> List[int]:
    return list(sd[key].shape)


def _idformer_config(sd: Mapping[str, torch.Tensor], p: str) -> dict:
    n_layers = len({int(k[len(p) :].split(".")[1]) for k in sd if k.startswith(p + "layers.")})
    _, num_queries, dim = _shape(sd, p + "latents")
    inner = _shape(sd, p + "layers.0.0.to_q.weight")[0]
    return dict(
        dim=dim,
        depth=n_layers,
        dim_head=64,
        heads=inner // 64,
        num_id_token=_shape(sd, p + "id_embedding_mapping.6.weight")[0] // dim,
        num_queries=num_queries,
        output_dim=_shape(sd, p + "proj_out")[1],
        ff_mult=_shape(sd, p + "layers.0.1.1.weight")[0] // dim,
        vit_width=_shape(sd, p + "mapping_0.0.weight")[1],
        id_width=_shape(sd, p + "id_embedding_mapping.0.weight")[1],
        mlp_hidden=_shape(sd, p + "id_embedding_mapping.0.weight")[0],
    )


def _idencoder_config(sd: Mapping[str, torch.Tensor], p: str) -> dict:
    context_dim = _shape(sd, p + "mapping_0.6.weight")[0]
    return dict(
        width=_shape(sd, p + "body.0.weight")[1],
        context_dim=context_dim,
        num_token=_shape(sd, p + "body.6.weight")[0] // context_dim,
        vit_width=_shape(sd, p + "mapping_0.0.weight")[1],
        mlp_hidden=_shape(sd, p + "mapping_0.0.weight")[0],
    )


def _build_encoder(path: str, sd: Mapping[str, torch.Tensor], p: str):
    """(encoder module on the meta device, name, tokens, width) for the encoder under prefix ``p``."""
    try:
        if p + "latents" in sd:
            cfg = _idformer_config(sd, p)
            with torch.device("meta"):
                enc = IDFormer(**cfg)
            return enc, "IDFormer", cfg["num_queries"], cfg["output_dim"]
        if p + "body.0.weight" in sd:
            cfg = _idencoder_config(sd, p)
            with torch.device("meta"):
                enc = IDEncoder(**cfg)
            return enc, "IDEncoder", cfg["num_token"] + 5, cfg["context_dim"]
    except (KeyError, ValueError, IndexError, ZeroDivisionError) as e:
        raise ModelFileInvalid(
            path, f"has PuLID encoder names but not its layout ({type(e).__name__}: {str(e)[:120]})", EXPECTED
        ) from None
    raise ModelFileInvalid(path, f"its '{p[:-1]}' group is neither an IDFormer nor an IDEncoder", EXPECTED)


def detect(sd: Mapping[str, torch.Tensor], path: str = "") -> PulidInfo:
    """Which released PuLID layout ``sd`` is; ModelFileInvalid naming what it looks like otherwise."""
    return _plan(sd, path)[0]


def _plan(sd: Mapping[str, torch.Tensor], path: str):
    heads = {k.partition(".")[0] for k in sd}
    converted = False
    if not ({"pulid_encoder", "pulid_ca"} <= heads or {"id_adapter", "id_adapter_attn_layers"} <= heads):
        renamed = _unconvert(sd) if "image_proj" in heads else None
        if renamed is None or not any(k.startswith("id_adapter_attn_layers.") for k in renamed):
            raise ModelFileInvalid(path, _looks_like(sd), EXPECTED)
        sd, heads, converted = renamed, {"id_adapter", "id_adapter_attn_layers"}, True
    if "pulid_encoder" in heads:
        enc, name, n_tok, width = _build_encoder(path, sd, "pulid_encoder.")
        if name != "IDFormer":
            raise ModelFileInvalid(path, "its pulid_encoder is not an IDFormer", EXPECTED)
        idx = sorted({int(m.group(1)) for m in map(_CA_KEY.match, sd) if m})
        if idx != list(range(len(idx))) or not idx:
            raise ModelFileInvalid(path, f"its pulid_ca modules are not numbered 0..n-1 (got {len(idx)})", EXPECTED)
        try:
            ca_dim = _shape(sd, "pulid_ca.0.to_q.weight")[1]
            kv_dim = _shape(sd, "pulid_ca.0.to_kv.weight")[1]
            inner = _shape(sd, "pulid_ca.0.to_q.weight")[0]
        except KeyError:
            raise ModelFileInvalid(path, "its pulid_ca modules lack to_q / to_kv", EXPECTED) from None
        if kv_dim != width:
            raise ModelFileInvalid(
                path, f"its pulid_ca take {kv_dim}-wide identity tokens but its encoder gives {width}", EXPECTED
            )
        with torch.device("meta"):
            layers = nn.ModuleList(
                PerceiverAttentionCA(dim=ca_dim, dim_head=128, heads=inner // 128, kv_dim=kv_dim) for _ in idx
            )
        info = PulidInfo(FLUX, name, n_tok, width, num_ca=len(idx), ca_dim=ca_dim, file=path)
        return info, enc, layers, sd
    enc, name, n_tok, width = _build_encoder(path, sd, "id_adapter.")
    ks: Dict[int, List[int]] = {}
    vs: Dict[int, List[int]] = {}
    for k, v in sd.items():
        m = _ATTN_KEY.match(k)
        if m:
            (ks if m.group(2) == "k" else vs)[int(m.group(1))] = list(v.shape)
    stray = [k for k in sd if k.startswith("id_adapter_attn_layers.") and not _ATTN_KEY.match(k)]
    if not ks or set(ks) != set(vs) or stray:
        raise ModelFileInvalid(
            path, "its id_adapter_attn_layers are not id_to_k / id_to_v pairs", "id_to_k and id_to_v per layer"
        )
    idx = sorted(ks)
    if any(ks[i][1] != width or vs[i] != ks[i] for i in idx):
        raise ModelFileInvalid(
            path, f"its id_to_k / id_to_v do not all take the encoder's {width}-wide tokens", EXPECTED
        )
    widths = [ks[i][0] for i in idx]
    with torch.device("meta"):
        layers = nn.ModuleDict({str(i): IDAttnKV(w, width) for i, w in zip(idx, widths)})
    kind = SDXL_V1 if name == "IDEncoder" else SDXL_V1_1
    info = PulidInfo(kind, name, n_tok, width, layer_indices=idx, layer_widths=widths, converted=converted, file=path)
    return info, enc, layers, sd


# -------------------------------------------------------------------------------------- loading


def load_state_dict(sd: Mapping[str, torch.Tensor], path: str = "", expect: str = "any") -> PulidModel:
    """Build the modules for ``sd`` (a released layout) and load it strictly; CPU, eval, no grad.

    ``expect``: "any", or one of FLUX / SDXL_V1 / SDXL_V1_1 / "sdxl" (either SDXL file).
    """
    info, enc, layers, flat = _plan(sd, path)
    if expect != "any" and not (expect == info.kind or (expect == "sdxl" and info.kind in (SDXL_V1, SDXL_V1_1))):
        want = KIND_NAMES.get(expect, "a PuLID SDXL file (v1 or v1.1)")
        raise ModelFileInvalid(path, f"is {KIND_NAMES[info.kind]}", want, fix="choose the PuLID file for this model")
    model = PulidModel(info, enc, layers)
    try:
        model.load_state_dict(flat, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelFileInvalid(
            path,
            f"has the {KIND_NAMES[info.kind]} names but not all its tensors or shapes ({str(e)[:300]})",
            EXPECTED,
        ) from None
    if info.converted:
        log.info("PuLID: %s holds the SDXL weights under the IP-Adapter names; read as the released layout", path)
    return model.eval().requires_grad_(False)


def load_pulid(path: str, expect: str = "any") -> PulidModel:
    """Read and load a PuLID file (.safetensors, or .bin via ``torch.load(weights_only=True)``)."""
    return load_state_dict(read_state_dict(path), path, expect)

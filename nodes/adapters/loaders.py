"""Loading the released identity-adapter files: InstantID ``ip-adapter.bin`` and IP-Adapter FaceID.

Pure torch. A released file holds two groups:

* ``image_proj``: the projection model (see :mod:`.projection`),
* ``ip_adapter``: ``"<n>.to_k_ip.weight"`` / ``"<n>.to_v_ip.weight"`` for every cross-attention of
  the UNet, ``n`` odd (1, 3, 5, ...) because the numbering runs over *all* attention processors
  (self-attention ``attn1`` takes the even numbers) in diffusers' order: down blocks, up blocks,
  mid block. FaceID files also carry the LoRA trained with the adapter there
  (``<n>.to_{q,k,v,out}_lora.{down,up}.weight`` for every attention processor n, attn1 and attn2):
  :func:`embedded_lora` keeps them and :func:`lora_to_unet_keys` names them as diffusers'
  attention-processor LoRA (``<module>.processor.to_q_lora.down.weight``), which ComfyUI's LoRA
  loader reads; the official pipelines apply it at scale 1.0 (Apply FaceID's ``lora_name`` =
  ``embedded``). Portrait files carry none.

``.bin`` files are ``{"image_proj": {...}, "ip_adapter": {...}}`` (read with
``torch.load(weights_only=True)``); ``.safetensors`` files use ``image_proj.`` / ``ip_adapter.``
key prefixes. The variant and the base model are detected from keys and shapes.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ...core.errors import ModelFileInvalid, VisageError
from .projection import MLPProjModel, ProjPlusModel, Resampler

log = logging.getLogger("visage")

INSTANTID = "instantid"
FACEID = "faceid"
FACEID_PORTRAIT = "faceid_portrait"
FACEID_PLUS = "faceid_plus"
# ip-adapter-faceid-portrait_sdxl_unnorm.bin: InstantID's exact layout (resampler 512 -> 16 tokens, SDXL),
# fed the raw (unnormalised) w600k_r50 embedding; told apart from InstantID only by the loader's variant
FACEID_PORTRAIT_UNNORM = "faceid_portrait_unnorm"
FACEID_KINDS = (FACEID, FACEID_PORTRAIT, FACEID_PLUS, FACEID_PORTRAIT_UNNORM)

# the FaceID loader's explicit variant -> the layout it needs
FACEID_VARIANTS = ("auto", "faceid", "plus", "plusv2", "portrait", "portrait_unnorm")
_VARIANT_KIND = {
    "faceid": FACEID,
    "plus": FACEID_PLUS,
    "plusv2": FACEID_PLUS,
    "portrait": FACEID_PORTRAIT,
    "portrait_unnorm": INSTANTID,  # the layout; the kind becomes FACEID_PORTRAIT_UNNORM
}
_LORA_KEY = re.compile(r"^(\d+)\.(to_q_lora|to_k_lora|to_v_lora|to_out_lora)\.(down|up)\.weight$")

KIND_NAMES = {
    INSTANTID: "InstantID (resampler, 16 tokens)",
    FACEID: "IP-Adapter FaceID (MLP, 4 tokens)",
    FACEID_PORTRAIT: "IP-Adapter FaceID Portrait (MLP, 16 tokens per face)",
    FACEID_PLUS: "IP-Adapter FaceID Plus (MLP + perceiver over CLIP-vision features)",
    FACEID_PORTRAIT_UNNORM: "IP-Adapter FaceID Portrait unnorm (resampler, 16 tokens per face, raw embedding)",
    "ipadapter_clip": "IP-Adapter (CLIP image, not a face-ID adapter)",
    "ipadapter_plus_clip": "IP-Adapter Plus (CLIP image resampler, not a face-ID adapter)",
}

# cross-attention context width -> base model family
BASES = {768: "SD1.5", 1024: "SD2.x", 2048: "SDXL"}

_IP_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")


@dataclass
class AdapterInfo:
    kind: str
    base: str  # "SD1.5" / "SDXL" / "SD2.x" / "unknown(<C>)"
    cross_attention_dim: int  # context width of the UNet's cross-attentions (= token width)
    num_tokens: int  # tokens per identity (Portrait: per face)
    embedding_dim: int  # face-embedding width (512 ArcFace)
    layer_keys: List[int] = field(default_factory=list)  # sorted ip_adapter indices
    layer_widths: List[int] = field(default_factory=list)  # to_k_ip out features per layer
    clip_embeddings_dim: int = 0  # FaceID Plus only
    file: str = ""
    raw_embedding: bool = False  # Portrait unnorm: the raw recognizer output, not the L2-normalised one
    plus_v2: Optional[bool] = None  # FaceID Plus: the loader's explicit variant (None = decide at apply)
    lora_layers: int = 0  # attention processors with an embedded LoRA (FaceID / Plus files)

    def describe(self) -> str:
        return (
            f"{KIND_NAMES.get(self.kind, self.kind)} for {self.base} ({len(self.layer_keys)} cross-attention "
            f"layers, context {self.cross_attention_dim})"
        )


def read_adapter_state(path: str) -> Dict[str, Dict[str, torch.Tensor]]:
    """The two groups of a released adapter file, as plain dicts of tensors."""
    ext = os.path.splitext(path)[1].lower()
    expected = "an adapter file (.bin / .safetensors) with 'image_proj' and 'ip_adapter' groups"
    try:
        if ext == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(path, device="cpu")
            groups: Dict[str, Dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
            for k, v in flat.items():
                head, _, rest = k.partition(".")
                if head in groups:
                    groups[head][rest] = v
        elif ext in (".bin", ".pt", ".pth", ".ckpt"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict):
                raise ModelFileInvalid(path, f"holds a {type(obj).__name__}, not a dict of tensors", expected)
            if "image_proj" in obj and "ip_adapter" in obj:
                groups = {"image_proj": dict(obj["image_proj"]), "ip_adapter": dict(obj["ip_adapter"])}
            else:  # flattened .bin (some re-uploads)
                groups = {"image_proj": {}, "ip_adapter": {}}
                for k, v in obj.items():
                    head, _, rest = str(k).partition(".")
                    if head in groups and isinstance(v, torch.Tensor):
                        groups[head][rest] = v
        else:
            raise ModelFileInvalid(
                path, f"has the extension '{ext}'", expected, fix="choose the adapter's .bin or .safetensors file"
            )
    except ModelFileInvalid:
        raise
    except Exception as e:  # truncated zip, pickle refused by weights_only, header garbage ...
        raise ModelFileInvalid(
            path, f"cannot be read as {ext} ({type(e).__name__}: {str(e)[:200]})", expected
        ) from None
    if not groups["image_proj"] or not groups["ip_adapter"]:
        missing = [g for g in ("image_proj", "ip_adapter") if not groups[g]]
        raise ModelFileInvalid(
            path,
            f"has no '{', '.join(missing)}' tensors (is it a checkpoint, LoRA or ControlNet rather than an adapter?)",
            expected,
        )
    return groups


def _ip_layers(path: str, ip: Dict[str, torch.Tensor]) -> Tuple[List[int], List[int], int]:
    ks: Dict[int, torch.Tensor] = {}
    vs: Dict[int, torch.Tensor] = {}
    for k, v in ip.items():
        m = _IP_KEY.match(k)
        if m:
            (ks if m.group(2) == "k" else vs)[int(m.group(1))] = v
    if not ks or set(ks) != set(vs):
        raise ModelFileInvalid(
            path,
            "its 'ip_adapter' group lacks matching '<n>.to_k_ip.weight' / '<n>.to_v_ip.weight' pairs",
            "to_k_ip and to_v_ip for every cross-attention",
        )
    keys = sorted(ks)
    ctx = {int(ks[k].shape[1]) for k in keys} | {int(vs[k].shape[1]) for k in keys}
    if len(ctx) != 1:
        raise ModelFileInvalid(
            path,
            f"its to_k_ip/to_v_ip layers disagree on the context width ({sorted(ctx)})",
            "one context width for all layers",
        )
    widths = [int(ks[k].shape[0]) for k in keys]
    return keys, widths, ctx.pop()


def detect(path: str, groups: Dict[str, Dict[str, torch.Tensor]]) -> AdapterInfo:
    """Variant + base model from keys and shapes."""
    proj = groups["image_proj"]
    keys, widths, ctx = _ip_layers(path, groups["ip_adapter"])
    base = BASES.get(ctx, f"unknown(context {ctx})")
    name = os.path.basename(path)
    if "latents" in proj and "proj_in.weight" in proj:
        q = int(proj["latents"].shape[1])
        emb = int(proj["proj_in.weight"].shape[1])
        if emb == 512:
            kind = INSTANTID
        else:
            kind = "ipadapter_plus_clip"
        return AdapterInfo(kind, base, ctx, q, emb, keys, widths, file=name)
    if "perceiver_resampler.proj_in.weight" in proj:
        out_c = int(proj["norm.weight"].shape[0])
        return AdapterInfo(
            FACEID_PLUS,
            base,
            ctx,
            int(proj["proj.2.weight"].shape[0]) // out_c,
            int(proj["proj.0.weight"].shape[1]),
            keys,
            widths,
            clip_embeddings_dim=int(proj["perceiver_resampler.proj_in.weight"].shape[1]),
            file=name,
        )
    if "norm.weight" in proj and "proj.0.weight" in proj and "proj.2.weight" in proj:
        out_c = int(proj["norm.weight"].shape[0])
        tokens = int(proj["proj.2.weight"].shape[0]) // out_c
        kind = FACEID_PORTRAIT if tokens >= 16 else FACEID
        return AdapterInfo(kind, base, ctx, tokens, int(proj["proj.0.weight"].shape[1]), keys, widths, file=name)
    if "proj.weight" in proj or "proj.3.weight" in proj:
        return AdapterInfo(
            "ipadapter_clip",
            base,
            ctx,
            4,
            int(proj.get("proj.weight", proj.get("proj.0.weight")).shape[-1]),
            keys,
            widths,
            file=name,
        )
    raise ModelFileInvalid(
        path,
        f"its 'image_proj' keys ({sorted(proj)[:6]}...) match no known adapter",
        "InstantID or IP-Adapter FaceID / FaceID Plus / Portrait weights",
    )


class IPLayer(nn.Module):
    """to_k_ip / to_v_ip of one cross-attention (no bias, as released)."""

    def __init__(self, context_dim: int, width: int):
        super().__init__()
        self.to_k_ip = nn.Linear(context_dim, width, bias=False)
        self.to_v_ip = nn.Linear(context_dim, width, bias=False)


class IdentityAdapter(nn.Module):
    """``image_proj`` + the per-cross-attention K/V projections of one released file."""

    def __init__(self, info: AdapterInfo, image_proj: nn.Module):
        super().__init__()
        self.info = info
        self.image_proj = image_proj
        self.ip_layers = nn.ModuleList(IPLayer(info.cross_attention_dim, w) for w in info.layer_widths)
        self.lora: Dict[int, Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = {}

    def load_released(self, groups: Dict[str, Dict[str, torch.Tensor]]) -> None:
        self.image_proj.load_state_dict(groups["image_proj"], strict=True)
        ip = groups["ip_adapter"]
        for layer, n in zip(self.ip_layers, self.info.layer_keys):
            layer.to_k_ip.weight.data.copy_(ip[f"{n}.to_k_ip.weight"])
            layer.to_v_ip.weight.data.copy_(ip[f"{n}.to_v_ip.weight"])

    @property
    def kind(self) -> str:
        return self.info.kind


def build_image_proj(info: AdapterInfo, proj: Dict[str, torch.Tensor]) -> nn.Module:
    if info.kind in (INSTANTID, FACEID_PORTRAIT_UNNORM):
        dim = int(proj["latents"].shape[2])
        depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
        heads = int(proj["layers.0.0.to_q.weight"].shape[0]) // 64
        ff_mult = int(proj["layers.0.1.1.weight"].shape[0]) / dim
        return Resampler(
            dim=dim,
            depth=depth,
            dim_head=64,
            heads=heads,
            num_queries=info.num_tokens,
            embedding_dim=info.embedding_dim,
            output_dim=int(proj["proj_out.weight"].shape[0]),
            ff_mult=ff_mult,
        )
    if info.kind in (FACEID, FACEID_PORTRAIT):
        return MLPProjModel(
            cross_attention_dim=int(proj["norm.weight"].shape[0]),
            id_embeddings_dim=info.embedding_dim,
            num_tokens=info.num_tokens,
            hidden_dim=int(proj["proj.0.weight"].shape[0]),
        )
    if info.kind == FACEID_PLUS:
        c = int(proj["norm.weight"].shape[0])
        return ProjPlusModel(
            cross_attention_dim=c,
            id_embeddings_dim=info.embedding_dim,
            clip_embeddings_dim=info.clip_embeddings_dim,
            num_tokens=info.num_tokens,
            heads=int(proj["perceiver_resampler.layers.0.0.to_q.weight"].shape[0]) // 64,
            hidden_dim=int(proj["proj.0.weight"].shape[0]),
        )
    raise AssertionError(info.kind)


def _incomplete(path: str, kind: str, e: Exception) -> ModelFileInvalid:
    """A released layout with a tensor missing (a KeyError from the key-driven builders) or of the wrong
    rank (IndexError): name the tensor, what the file should be, and the fix."""
    what = KIND_NAMES.get(kind, "an identity adapter")
    if isinstance(e, KeyError):
        problem = f"it lacks the tensor 'image_proj.{e.args[0] if e.args else '?'}'"
    else:
        problem = "one of its 'image_proj' tensors has the wrong number of dimensions"
    return ModelFileInvalid(
        path,
        f"{problem} (incomplete or edited file)",
        f"the complete released {what} file (every 'image_proj' and 'ip_adapter' tensor)",
        fix="replace it with an intact copy of the released file"
        + (" (InstantID: ip-adapter.bin from huggingface.co/InstantX/InstantID)" if kind == INSTANTID else ""),
    )


def embedded_lora(ip: Dict[str, torch.Tensor]) -> Dict[int, Dict[str, Tuple[torch.Tensor, torch.Tensor]]]:
    """The LoRA a FaceID file carries: {processor n: {"to_q_lora": (down, up), ...}} (pairs only)."""
    found: Dict[Tuple[int, str], Dict[str, torch.Tensor]] = {}
    for k, v in ip.items():
        m = _LORA_KEY.match(k)
        if m:
            found.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = v
    out: Dict[int, Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = {}
    for (n, proj), du in found.items():
        if "down" in du and "up" in du:
            out.setdefault(n, {})[proj] = (du["down"], du["up"])
    return out


def _attention_order(name: str):
    """diffusers' attention-processor order: down blocks, up blocks, mid block (UNet2DConditionModel registers
    up_blocks before mid_block), then the numbers in the module path, attn1 before attn2."""
    head = name.split(".", 1)[0]
    rank = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}.get(head, 3)
    return (rank, [int(x) for x in re.findall(r"\d+", name)])


def diffusers_attention_order(names) -> List[str]:
    """Attention module names (``down_blocks.0.attentions.0.transformer_blocks.0.attn1`` ...) in the order of
    ``unet.attn_processors`` -- the numbering of the released ``ip_adapter`` group."""
    return sorted(set(names), key=_attention_order)


def lora_to_unet_keys(
    lora: Dict[int, Dict[str, Tuple[torch.Tensor, torch.Tensor]]], attention_names: List[str], file: str = "adapter"
) -> Dict[str, torch.Tensor]:
    """The embedded LoRA under diffusers' attention-processor names (what ComfyUI's LoRA loader reads as a
    diffusers LoRA): processor n -> ``<attention_names[n]>.processor.<proj>_lora.{down,up}.weight``. No alpha
    (ComfyUI then scales by 1, as LoRALinearLayer without network_alpha)."""
    if not lora:
        return {}
    top = max(lora)
    if top >= len(attention_names):
        raise VisageError(
            f"the LoRA embedded in '{file}' has {top + 1} attention layers, the model has {len(attention_names)}",
            expected="the base model the FaceID file was trained for (SD1.5 / SDXL)",
            got=f"a model with {len(attention_names)} attention layers",
            fix="connect the matching checkpoint, or set lora_name to 'none'",
        )
    sd = {}
    for n, projs in sorted(lora.items()):
        for proj, (down, up) in projs.items():
            base = f"{attention_names[n]}.processor.{proj}"
            sd[f"{base}.down.weight"] = down
            sd[f"{base}.up.weight"] = up
    return sd


def _check_variant(path: str, info: AdapterInfo, variant: str) -> AdapterInfo:
    """Apply the FaceID loader's explicit variant to the detected layout (the file name never decides)."""
    name = os.path.basename(path)
    if variant in ("", "auto"):
        if info.kind == INSTANTID and info.embedding_dim == 512:
            hint = (
                "; the name says Portrait unnorm: set variant = portrait_unnorm"
                if "unnorm" in name.lower()
                else "; if it is ip-adapter-faceid-portrait_sdxl_unnorm.bin (the same layout), set variant = "
                "portrait_unnorm"
            )
            raise VisageError(
                f"'{name}' has InstantID's layout (resampler, 16 tokens)",
                expected="an IP-Adapter FaceID / FaceID Plus / Portrait file (models/ipadapter)",
                got=info.describe(),
                fix="load InstantID's ip-adapter.bin with 'Load InstantID'" + hint,
            )
        return info
    if variant not in _VARIANT_KIND:
        raise VisageError(
            f"unknown FaceID variant {variant!r}", expected=" | ".join(FACEID_VARIANTS), got=variant, fix="pick one"
        )
    need = _VARIANT_KIND[variant]
    if info.kind != need or (variant == "portrait_unnorm" and info.embedding_dim != 512):
        raise VisageError(
            f"'{name}' is not a FaceID {variant} file: its layout is {info.describe()}",
            expected=f"the layout of {variant}: {KIND_NAMES[need]}",
            got=info.describe(),
            fix="set variant to auto (detected from the keys) or choose the matching file",
        )
    if variant == "portrait_unnorm":
        info.kind = FACEID_PORTRAIT_UNNORM
        info.raw_embedding = True
    elif variant in ("plus", "plusv2"):
        info.plus_v2 = variant == "plusv2"
    return info


def load_identity_adapter(path: str, expect: str = "any", variant: str = "auto") -> IdentityAdapter:
    """Load a released file; ``expect`` = 'instantid', 'faceid' (any FaceID variant) or 'any'.

    A file of the other family is rejected with a message naming what the file is. ``variant`` (FaceID only,
    see FACEID_VARIANTS) makes the kind explicit; 'portrait_unnorm' is the only way to load
    ip-adapter-faceid-portrait_sdxl_unnorm.bin, whose keys are InstantID's.
    """
    groups = read_adapter_state(path)
    try:
        info = detect(path, groups)
    except (KeyError, IndexError) as e:
        raise _incomplete(path, "any", e) from None
    if expect == "faceid":
        info = _check_variant(path, info, variant)
    wanted = {"instantid": (INSTANTID,), "faceid": FACEID_KINDS, "any": (INSTANTID,) + FACEID_KINDS}[expect]
    if info.kind not in wanted:
        what = {
            "instantid": "an InstantID ip-adapter file (models/instantid)",
            "faceid": "an IP-Adapter FaceID / FaceID Plus / Portrait file (models/ipadapter)",
            "any": "an InstantID or IP-Adapter FaceID file",
        }[expect]
        fix = {
            "instantid": "load FaceID files with 'Apply IP-Adapter FaceID'; InstantID needs InstantID's ip-adapter.bin",
            "faceid": "load InstantID's ip-adapter.bin with 'Apply InstantID'; this node needs an "
            "ip-adapter-faceid*.bin",
            "any": "choose a face-ID adapter file",
        }[expect]
        raise VisageError(
            f"'{os.path.basename(path)}' is {info.describe()}", expected=what, got=info.describe(), fix=fix
        )
    try:
        image_proj = build_image_proj(info, groups["image_proj"])
    except (KeyError, IndexError) as e:
        raise _incomplete(path, info.kind, e) from None
    module = IdentityAdapter(info, image_proj)
    try:
        module.load_released(groups)
    except RuntimeError as e:
        raise ModelFileInvalid(
            path,
            f"its tensors do not fit {KIND_NAMES[info.kind]} ({str(e)[:300]})",
            "the released key names and shapes",
        ) from None
    module.info.file = os.path.basename(path)
    if info.kind in (FACEID, FACEID_PLUS):
        module.lora = embedded_lora(groups["ip_adapter"])  # plain CPU tensors, not module state
        info.lora_layers = len(module.lora)
    log.info("Visage: %s -> %s", os.path.basename(path), info.describe())
    return module

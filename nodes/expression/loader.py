"""Load LivePortrait's released files into :mod:`.networks`, through the shared model manager.

Files (``models/liveportrait/``, ComfyUI folder name ``liveportrait``), the layout of the widely
used safetensors conversion:

==========================================  ======================================================
``appearance_feature_extractor.safetensors``  F, keys ``first.*``, ``down_blocks.*``, ``second.*``, ``resblocks_3d.3dr*``
``motion_extractor.safetensors``              M, keys ``detector.*`` (ConvNeXt-V2-tiny + fc heads)
``warping_module.safetensors``                W, keys ``dense_motion_network.*``, ``third.*``, ``fourth.*``
``spade_generator.safetensors``               G, ``fc``, ``G_middle_0..5``, ``up_0``, ``up_1``, ``conv_img.0``;
                                              spectral-norm convs as ``weight_orig/_u/_v``
``stitching_retargeting_module.safetensors``  ``retarget_shoulder_module.mlp.*``, ``retarget_mouth_module.mlp.*``,
                                              ``retarget_eye_module.mlp.*``
==========================================  ======================================================

The original ``.pth`` releases load too (plain state dicts; the stitching file's nested
``{'retarget_shoulder': {'module.mlp.0.weight': ...}}`` is flattened to the same names).

Validation is strict: every released key must be present with its released shape, and nothing
else may be there (``num_batches_tracked`` is optional). Anything else raises
:class:`ModelFileInvalid` naming what the file looks like (another LivePortrait part, an
unrelated architecture, a narrower/wider variant) with example keys.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ...core.errors import ModelFileInvalid, VisageError
from ...core.model_manager import MANAGER, ModelHandle
from ...core.paths import find_file
from . import landmark203 as L203
from . import networks as N

log = logging.getLogger("visage")

FOLDER = "liveportrait"
FILES = {
    "appearance_feature_extractor": "appearance_feature_extractor.safetensors",
    "motion_extractor": "motion_extractor.safetensors",
    "warping_module": "warping_module.safetensors",
    "spade_generator": "spade_generator.safetensors",
    "stitching_retargeting_module": "stitching_retargeting_module.safetensors",
}
SOURCE = "https://huggingface.co/Kijai/LivePortrait_safetensors (or KwaiVGI/LivePortrait's pretrained_weights)"

# key prefixes that identify each LivePortrait part (used to name what a wrong file holds)
SIGNATURES = {
    "appearance_feature_extractor": ("resblocks_3d.",),
    "motion_extractor": ("detector.",),
    "warping_module": ("dense_motion_network.",),
    "spade_generator": ("G_middle_0.",),
    "stitching_retargeting_module": ("retarget_shoulder_module.", "retarget_shoulder."),
}
OTHER_SIGNATURES = {
    "a Stable Diffusion / diffusion UNet": ("model.diffusion_model.", "down_blocks.0.resnets.", "input_blocks."),
    "an IP-Adapter": ("image_proj.", "ip_adapter."),
    "a VAE": ("encoder.down.", "decoder.up."),
    "a CLIP / text encoder": ("text_model.", "vision_model."),
}


def _is_spectral(kind: str, key: str) -> bool:
    if kind != "spade_generator":
        return False
    parts = key.split(".")
    return len(parts) == 3 and parts[1] in N.SPADEDecoder.SPECTRAL and parts[2] == "weight"


def expected_layout(kind: str, cfg: N.LivePortraitCfg = N.RELEASED) -> Dict[str, Tuple[int, ...]]:
    """Released key -> shape for ``kind`` (``num_batches_tracked`` included; it is optional)."""
    with torch.device("meta"):
        m = N.build(kind, cfg)
    out: Dict[str, Tuple[int, ...]] = {}
    for k, v in m.state_dict().items():
        shape = tuple(v.shape)
        if _is_spectral(kind, k):
            base = k[: -len("weight")]
            out[base + "weight_orig"] = shape
            out[base + "weight_u"] = (shape[0],)
            out[base + "weight_v"] = (int(torch.Size(shape[1:]).numel()),)
        else:
            out[k] = shape
    return out


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """safetensors or a torch checkpoint (weights_only) -> flat {key: tensor} on the CPU."""
    try:
        if path.lower().endswith((".safetensors", ".sft")):
            from safetensors.torch import load_file

            sd = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelFileInvalid(
            path,
            f"it cannot be read as a checkpoint ({type(e).__name__}: {str(e)[:200]})",
            "an intact LivePortrait .safetensors (or released .pth) file",
        )
    if not isinstance(sd, dict):
        raise ModelFileInvalid(path, f"it holds a {type(sd).__name__}, not a state dict", "a state dict")
    flat: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if isinstance(v, dict):  # original stitching .pth: {'retarget_shoulder': {'module.mlp.0.weight': ...}}
            for k2, v2 in v.items():
                flat[f"{k}_{k2}" if k2.startswith("module.") else f"{k}.{k2}"] = v2
        elif isinstance(v, torch.Tensor):
            flat[k] = v
    if not flat:
        raise ModelFileInvalid(path, "it holds no tensors", "a LivePortrait state dict")
    return flat


def _looks_like(sd: Dict[str, torch.Tensor]) -> str:
    keys = list(sd.keys())
    for kind, prefixes in SIGNATURES.items():
        if any(k.startswith(p) for k in keys for p in prefixes):
            return f"LivePortrait's {kind}"
    for name, prefixes in OTHER_SIGNATURES.items():
        if any(k.startswith(p) or ("." + p) in k for k in keys for p in prefixes):
            return name
    return "an unknown architecture"


def validate(kind: str, sd: Dict[str, torch.Tensor], path: str) -> None:
    """Raise ModelFileInvalid unless ``sd`` has exactly the released keys and shapes of ``kind``."""
    exp = expected_layout(kind)
    required = {k for k in exp if not k.endswith("num_batches_tracked")}
    missing = sorted(required - sd.keys())
    unexpected = sorted(k for k in sd.keys() - exp.keys())
    name = os.path.basename(path)
    if missing or unexpected:
        found = _looks_like(sd)
        if found != f"LivePortrait's {kind}":
            problem = f"it holds {found} ({len(sd)} tensors, e.g. {', '.join(list(sd)[:3])}), not LivePortrait's {kind}"
        else:
            problem = (
                f"it is a different variant of LivePortrait's {kind}: {len(missing)} released key(s) missing"
                f"{' (e.g. ' + ', '.join(missing[:3]) + ')' if missing else ''}, {len(unexpected)} unexpected"
                f"{' (e.g. ' + ', '.join(unexpected[:3]) + ')' if unexpected else ''}"
            )
        raise ModelFileInvalid(
            path,
            problem,
            f"'{name}' with the {len(required)} released keys of {kind}",
            fix=f"put the released {FILES[kind]} into models/{FOLDER}/ (from {SOURCE})",
        )
    bad = [(k, tuple(sd[k].shape), exp[k]) for k in sorted(required) if tuple(sd[k].shape) != exp[k]]
    if bad:
        k, got, want = bad[0]
        raise ModelFileInvalid(
            path,
            f"{len(bad)} tensor(s) have other shapes than the released {kind} "
            f"(e.g. '{k}' is {list(got)}, released {list(want)}): another width/variant",
            f"the released shapes of {kind}",
            fix=f"use the released {FILES[kind]} (from {SOURCE})",
        )
    nonfloat = [k for k in required if not sd[k].is_floating_point()]
    if nonfloat:
        raise ModelFileInvalid(
            path,
            f"tensor '{nonfloat[0]}' is {sd[nonfloat[0]].dtype}, not floating point",
            "float16/bfloat16/float32 weights",
        )


def fold_spectral(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Replace ``X.weight_orig/_u/_v`` by ``X.weight = weight_orig / (u . (W v))`` (torch eval maths)."""
    out: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith(".weight_u") or k.endswith(".weight_v"):
            continue
        if k.endswith(".weight_orig"):
            base = k[: -len("weight_orig")]
            w = v.float()
            u = sd[base + "weight_u"].float()
            vv = sd[base + "weight_v"].float()
            sigma = torch.dot(u, torch.mv(w.reshape(w.shape[0], -1), vv))
            out[base + "weight"] = w / sigma
        else:
            out[k] = v
    return out


def to_module_state(kind: str, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    if kind == "spade_generator":
        sd = fold_spectral(sd)
    return sd


def load_network(
    kind: str, path: str, device="cpu", dtype=torch.float32, cfg: Optional[N.LivePortraitCfg] = None, check: bool = True
) -> torch.nn.Module:
    """Build ``kind`` and load ``path`` into it (strict). ``cfg``/``check=False`` only for test twins."""
    sd = read_state_dict(path)
    if check:
        validate(kind, sd, path)
    module = N.build(kind, cfg or N.RELEASED)
    state = to_module_state(kind, sd)
    res = module.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in res.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or res.unexpected_keys:
        raise ModelFileInvalid(
            path,
            f"keys do not fit {kind}: missing {missing[:3]}, unexpected {res.unexpected_keys[:3]}",
            f"the released keys of {kind}",
        )
    return module.to(dtype=dtype).eval()


@dataclass(frozen=True)
class LivePortraitModels:
    """The ``VISAGE_LIVEPORTRAIT`` port: handles of the five networks (call ``.model()`` right before use)."""

    appearance: ModelHandle
    motion: ModelHandle
    warping: ModelHandle
    spade: ModelHandle
    stitching: ModelHandle
    device: torch.device
    dtype: torch.dtype
    folder: str = ""
    landmark: Optional[ModelHandle] = None  # LivePortrait's 203-point landmark.onnx, when present

    def __repr__(self):
        return f"LivePortraitModels({self.folder}, {self.device}, {self.dtype})"


def load_models(
    device="cpu",
    dtype=torch.float32,
    folder_name: str = FOLDER,
    cfg: Optional[N.LivePortraitCfg] = None,
    files: Optional[Dict[str, str]] = None,
) -> LivePortraitModels:
    """Find the five files (never downloads) and load them through the model manager."""
    files = dict(FILES, **(files or {}))
    device = torch.device(device)
    handles = {}
    for kind, name in files.items():
        try:
            path = find_file(folder_name, name)
        except VisageError as missing:
            # the original release layout: base_models/*.pth, retargeting_models/*.pth
            sub = "retargeting_models" if kind.startswith("stitching") else "base_models"
            try:
                path = find_file(folder_name, f"{sub}/{name.replace('.safetensors', '.pth')}")
            except VisageError:
                raise missing from None
        handles[kind] = MANAGER.get(
            f"liveportrait:{kind}" + ("" if cfg is None else ":test"),
            path,
            lambda p, d, t, _k=kind: load_network(_k, p, "cpu", t, cfg=cfg, check=cfg is None),
            device=device,
            dtype=dtype,
            name=f"LivePortrait {kind}",
        )
    folder = os.path.dirname(handles["appearance_feature_extractor"].key[1][0])
    landmark = None
    lm_path = L203.find(lambda name: find_file(folder_name, name))
    if lm_path is not None:
        landmark = MANAGER.get(
            "liveportrait:landmark203", lm_path, L203.load_landmark203, device=torch.device("cpu"), name=L203.FILE
        )
    else:
        log.info(
            "Visage: no %s in models/%s: eye/lip retargeting uses 68-point approximations of LivePortrait's "
            "203-point ratios",
            L203.FILE,
            folder_name,
        )
    return LivePortraitModels(
        handles["appearance_feature_extractor"],
        handles["motion_extractor"],
        handles["warping_module"],
        handles["spade_generator"],
        handles["stitching_retargeting_module"],
        device,
        dtype,
        folder,
        landmark,
    )

"""PuLID nodes: Load PuLID Model, Load EVA-CLIP, Apply PuLID Flux.

The only file of the pulid family that imports ComfyUI (through comfy_glue): schemas and one-line calls
into loaders.py / eva_clip.py / flux_apply.py.
"""

from __future__ import annotations

import logging
import os

import torch

from ...core import paths
from ...core.model_manager import MANAGER
from ...core.numbers import finite_floats
from ...core.recognizers import RECOGNIZER_OVERRIDE_TIP
from ...core.select import ON_NO_FACE, ON_NO_FACE_TIP
from ...core.types import VISAGE_FACES
from .. import comfy_glue
from ..face import parsing
from . import eva_clip as EC
from .flux_apply import TRAINED_ON, EvaRef, PulidRef, apply_pulid_flux
from .loaders import load_pulid

log = logging.getLogger("visage")

VISAGE_PULID = "VISAGE_PULID"
VISAGE_EVA_CLIP = "VISAGE_EVA_CLIP"
CATEGORY = "Visage/adapters"


def _files(folder, exts):
    try:
        files = paths.list_files(folder, extensions=exts)
    except Exception:  # pragma: no cover
        files = []
    return files or [f"(no files in models/{paths.FOLDERS[folder]})"]


def _dtype(dev: torch.device) -> torch.dtype:
    """The official pipelines run PuLID and EVA-CLIP in bfloat16 on a GPU; fp32 on the CPU."""
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class VisageLoadPuLID:
    DESCRIPTION = (
        "Loads a PuLID file from models/pulid: PuLID-FLUX (pulid_flux_v0.9.0 / v0.9.1.safetensors: IDFormer + "
        "20 cross-attentions), PuLID SDXL v1 (pulid_v1.bin) or v1.1 (pulid_v1.1.safetensors). What the file is "
        "comes from its keys and shapes; any other file is refused naming what it looks like. Never downloads. "
        "The model is held by ComfyUI's memory management (loaded with the diffusion model, freed by it)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VISAGE_PULID, "STRING")
    RETURN_NAMES = ("pulid", "kind")
    OUTPUT_TOOLTIPS = ("The PuLID model, for 'Apply PuLID Flux'.", "What the file was detected as.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pulid_file": (
                    _files("pulid", {".safetensors", ".bin"}),
                    {"tooltip": "pulid_flux_v0.9.1.safetensors (or another released PuLID file) in models/pulid."},
                )
            }
        }

    @finite_floats
    def load(self, pulid_file):
        path = paths.find_file("pulid", pulid_file)
        dev = comfy_glue.torch_device("auto")
        dt = _dtype(dev)
        h = MANAGER.get(
            "pulid",
            path,
            lambda p, d, t: load_pulid(p).to(t),
            device=dev,
            dtype=dt,
            name=f"pulid:{os.path.basename(path)}",
        )
        info = h.module.info
        return (PulidRef(h, info, os.path.basename(path)), info.describe())


class VisageLoadEvaClip:
    DESCRIPTION = (
        "Loads the EVA02-CLIP-L-14-336 vision tower PuLID uses, from the EVA-CLIP checkpoint "
        "EVA02_CLIP_L_336_psz14_s6B.pt (QuanSun/EVA-CLIP; models/clip_vision). Only the vision tower is kept; "
        "it runs as timm's EVA02. Never downloads; a file of another layout is refused naming what it is."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VISAGE_EVA_CLIP,)
    RETURN_NAMES = ("eva_clip",)
    OUTPUT_TOOLTIPS = ("The EVA-CLIP vision tower, for 'Apply PuLID Flux'.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "eva_clip_file": (
                    _files("eva_clip", {".pt", ".bin", ".safetensors"}),
                    {"tooltip": f"{EC.EVA_FILE} (the EVA-CLIP checkpoint) in models/clip_vision."},
                )
            }
        }

    @finite_floats
    def load(self, eva_clip_file):
        path = paths.find_file("eva_clip", eva_clip_file)
        dev = comfy_glue.torch_device("auto")
        h = MANAGER.get(
            "eva_clip",
            path,
            lambda p, d, t: EC.load_eva_clip(p).to(t),
            device=dev,
            dtype=_dtype(dev),
            name=f"eva_clip:{os.path.basename(path)}",
        )
        return (EvaRef(h, os.path.basename(path)),)


class VisageApplyPuLIDFlux:
    DESCRIPTION = (
        "PuLID-FLUX, to the published maths: each reference face (one identity each, in order) becomes 32 "
        "identity tokens (its raw antelopev2 glintr100 embedding and EVA-CLIP features of the aligned face, "
        "background whitened by face parsing, turned grey), and 20 cross-attentions add weight x CA(identity, "
        "image tokens) after every 2nd double block and every 4th single block, inside the start/end window. "
        "Several people: one mask each, one node. The model is a patched clone: the input model is unchanged. "
        "Needs facexlib's parsing_bisenet.pth in models/facexlib."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The Flux model with the identity patch (a clone; the input model is unchanged).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A FLUX.1 model (FLUX.1-dev: what PuLID-FLUX was trained with)."}),
                "pulid": (VISAGE_PULID, {"tooltip": "From 'Load PuLID Model' (pulid_flux_v0.9.1.safetensors)."}),
                "eva_clip": (VISAGE_EVA_CLIP, {"tooltip": "From 'Load EVA-CLIP'."}),
                "faces": (
                    VISAGE_FACES,
                    {"tooltip": "Reference faces from 'Analyze Faces' (antelopev2 pack); each face is one identity."},
                ),
                "image": ("IMAGE", {"tooltip": "The image(s) the reference faces were found in."}),
                "weight": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": -1.0,
                        "max": 5.0,
                        "step": 0.05,
                        "tooltip": "Identity strength (the official id_weight: 1.0 default, its demo runs 0..3). "
                        "0 gives exactly the unpatched model's output.",
                    },
                ),
                "start_at": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.001,
                        "tooltip": "Fraction of the sampling where the identity starts (0 = first step).",
                    },
                ),
                "end_at": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.001,
                        "tooltip": "Fraction of the sampling where the identity stops (1 = last step).",
                    },
                ),
            },
            "optional": {
                "masks": (
                    "MASK",
                    {
                        "tooltip": "One mask per identity (in face order): each identity only where its mask is. "
                        "Any size; resized to the image's token grid."
                    },
                ),
                "on_no_face": (list(ON_NO_FACE), {"default": "error", "tooltip": ON_NO_FACE_TIP}),
                "recognizer_override": (
                    "STRING",
                    {"default": "", "tooltip": RECOGNIZER_OVERRIDE_TIP.format(trained=TRAINED_ON)},
                ),
            },
        }

    @finite_floats
    @comfy_glue.cancellable()
    def apply(
        self,
        model,
        pulid,
        eva_clip,
        faces,
        image,
        weight,
        start_at,
        end_at,
        masks=None,
        on_no_face="error",
        recognizer_override="",
    ):
        dev = comfy_glue.torch_device("auto")
        parser = parsing.load_parsing(paths.find_file(parsing.FOLDER, parsing.FILE_NAME), device=dev)
        out = apply_pulid_flux(
            model,
            pulid,
            eva_clip,
            parser,
            faces,
            image,
            weight,
            start_at,
            end_at,
            masks=masks,
            on_no_face=on_no_face,
            recognizer_override=recognizer_override,
            progress=comfy_glue.Progress(max(1, faces.count)),
        )
        return (out,)


NODE_CLASS_MAPPINGS = {
    "VisageLoadPuLID": VisageLoadPuLID,
    "VisageLoadEvaClip": VisageLoadEvaClip,
    "VisageApplyPuLIDFlux": VisageApplyPuLIDFlux,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "VisageLoadPuLID": "Load PuLID Model",
    "VisageLoadEvaClip": "Load EVA-CLIP",
    "VisageApplyPuLIDFlux": "Apply PuLID Flux",
}

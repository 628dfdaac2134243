"""InfiniteYou nodes: Load InfiniteYou (the identity resampler), Apply InfiniteYou (InfuseNet through
ComfyUI's own ControlNet). The only file of the family that imports ComfyUI (through comfy_glue)."""

from __future__ import annotations

import os

import torch

from ...core import paths
from ...core.model_manager import MANAGER
from ...core.numbers import finite_floats
from ...core.recognizers import RECOGNIZER_OVERRIDE_TIP
from ...core.select import apply_on_no_face
from ...core.types import VISAGE_EMBEDS, VISAGE_FACES
from .. import comfy_glue
from ..adapters.registry import ON_NO_FACE, ON_NO_FACE_TIP
from .apply import TRAINED_ON, InfiniteYouRef, apply_infiniteyou
from .model import load_infiniteyou

VISAGE_INFINITEYOU = "VISAGE_INFINITEYOU"
CATEGORY = "Visage/adapters"


def _files():
    try:
        files = paths.list_files("infiniteyou", extensions={".bin", ".safetensors"})
    except Exception:  # pragma: no cover
        files = []
    return files or ["(no files in models/infiniteyou)"]


def _float(default, lo, hi, step, tip):
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tip})


class VisageLoadInfiniteYou:
    DESCRIPTION = (
        "Loads InfiniteYou's identity resampler (image_proj_model.bin of infu_flux_v1.0/aes_stage2 or "
        "sim_stage1) from models/infiniteyou: 512-d IR-SE50 embedding -> 8 (or 16) tokens of 4096 for InfuseNet. "
        "InfuseNet itself is loaded with ComfyUI's 'Load ControlNet Model'. Other files are refused naming what "
        "they look like. Never downloads."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VISAGE_INFINITEYOU, "STRING")
    RETURN_NAMES = ("infiniteyou", "kind")
    OUTPUT_TOOLTIPS = ("The InfiniteYou resampler, for 'Apply InfiniteYou'.", "What the file was detected as.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image_proj_file": (
                    _files(),
                    {
                        "tooltip": "image_proj_model.bin (e.g. infu_flux_v1.0/aes_stage2/image_proj_model.bin) in "
                        "models/infiniteyou."
                    },
                )
            }
        }

    @finite_floats
    def load(self, image_proj_file):
        path = paths.find_file("infiniteyou", image_proj_file)
        h = MANAGER.get(
            "infiniteyou",
            path,
            lambda p, d, t: load_infiniteyou(p)[0],
            device=comfy_glue.torch_device("auto"),
            dtype=torch.float32,
            name=f"infiniteyou:{os.path.basename(path)}",
        )
        m = h.module
        from .model import InfiniteYouInfo

        info = InfiniteYouInfo(m.num_tokens, m.output_dim, m.embedding_dim, file=path)
        return (InfiniteYouRef(h, info, os.path.basename(path)), info.describe())


class VisageApplyInfiniteYou:
    DESCRIPTION = (
        "InfiniteYou (FLUX.1-dev), to the published pipeline: the normalised IR-SE50 embedding of each identity "
        "face goes through the resampler to identity tokens, which InfuseNet (ComfyUI's ControlNet, from "
        "'Load ControlNet Model') takes as its text context, driven by a keypoint image of the target pose "
        "(pose_faces) or an empty one. Add the IR-SE50 recognizer to the faces with 'Add Face Recognizer'. "
        "Several identities: one mask each."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "IMAGE")
    RETURN_NAMES = ("positive", "negative", "keypoints")
    OUTPUT_TOOLTIPS = (
        "Positive conditioning with InfuseNet attached.",
        "Negative conditioning with InfuseNet attached (the same identity tokens).",
        "The keypoint image(s) given to InfuseNet (black when no pose is given).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "Positive prompt conditioning (Flux)."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt conditioning."}),
                "control_net": (
                    "CONTROL_NET",
                    {"tooltip": "InfuseNet (single-file Flux ControlNet) from ComfyUI's 'Load ControlNet Model'."},
                ),
                "infiniteyou": (VISAGE_INFINITEYOU, {"tooltip": "From 'Load InfiniteYou'."}),
                "vae": ("VAE", {"tooltip": "The Flux VAE: InfuseNet takes its keypoint image as a latent."}),
                "weight": _float(
                    1.0, 0.0, 10.0, 0.01, "InfuseNet strength (the official infusenet_conditioning_scale, 1.0)."
                ),
                "start_at": _float(0.0, 0.0, 1.0, 0.001, "Start of InfuseNet's window (fraction of the schedule)."),
                "end_at": _float(1.0, 0.0, 1.0, 0.001, "End of InfuseNet's window (fraction of the schedule)."),
            },
            "optional": {
                "faces": (
                    VISAGE_FACES,
                    {
                        "tooltip": "The identity face(s) from 'Analyze Faces' + 'Add Face Recognizer' (IR-SE50). "
                        "Each face (in order) is one identity."
                    },
                ),
                "pose_faces": (
                    VISAGE_FACES,
                    {"tooltip": "Faces analysed in a pose image: their keypoints drive InfuseNet (one per identity)."},
                ),
                "keypoints_image": (
                    "IMAGE",
                    {"tooltip": "A ready keypoint image for InfuseNet (overrides pose_faces)."},
                ),
                "masks": ("MASK", {"tooltip": "One mask per identity (the region each face goes to)."}),
                "embeds": (
                    VISAGE_EMBEDS,
                    {"tooltip": "Identity embeddings (one row per identity) used instead of the faces' own."},
                ),
                "on_no_face": (list(ON_NO_FACE), {"default": "error", "tooltip": ON_NO_FACE_TIP}),
                "recognizer_override": (
                    "STRING",
                    {"default": "", "tooltip": RECOGNIZER_OVERRIDE_TIP.format(trained=TRAINED_ON)},
                ),
            },
        }

    @finite_floats
    def apply(
        self,
        positive,
        negative,
        control_net,
        infiniteyou,
        vae,
        weight,
        start_at,
        end_at,
        faces=None,
        pose_faces=None,
        keypoints_image=None,
        masks=None,
        embeds=None,
        on_no_face="error",
        recognizer_override="",
    ):
        if embeds is None and faces is not None and faces.count == 0:
            apply_on_no_face(faces, on_no_face, "InfiniteYou identity images")  # raises for 'error'
            return (positive, negative, torch.zeros(1, 64, 64, 3))
        return apply_infiniteyou(
            positive,
            negative,
            control_net,
            infiniteyou,
            weight,
            start_at,
            end_at,
            faces=faces,
            embeds=embeds,
            pose_faces=pose_faces,
            keypoints_image=keypoints_image,
            masks=masks,
            recognizer_override=recognizer_override,
            device=comfy_glue.intermediate_device(),
            vae=vae,
        )


NODE_CLASS_MAPPINGS = {"VisageLoadInfiniteYou": VisageLoadInfiniteYou, "VisageApplyInfiniteYou": VisageApplyInfiniteYou}
NODE_DISPLAY_NAME_MAPPINGS = {
    "VisageLoadInfiniteYou": "Load InfiniteYou",
    "VisageApplyInfiniteYou": "Apply InfiniteYou",
}

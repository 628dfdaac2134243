"""Apply PuLID SDXL (the SDXL half of the PuLID family; its own module so the Flux nodes in node.py stay
apart). Loading the file and EVA-CLIP: 'Load PuLID Model' and 'Load EVA-CLIP' of the family (VISAGE_PULID,
VISAGE_EVA_CLIP). The only ComfyUI contact is comfy_glue."""

from __future__ import annotations

from ...core import paths
from ...core.numbers import finite_floats
from ...core.recognizers import RECOGNIZER_OVERRIDE_TIP
from ...core.select import ON_NO_FACE, ON_NO_FACE_TIP
from ...core.types import VISAGE_FACES
from .. import comfy_glue
from ..face import parsing
from .sdxl import DEFAULT_WEIGHT, METHODS
from .sdxl_apply import TRAINED_ON, apply_pulid_sdxl

VISAGE_PULID = "VISAGE_PULID"
VISAGE_EVA_CLIP = "VISAGE_EVA_CLIP"
CATEGORY = "Visage/adapters"

METHOD_TIP = (
    "official: the published attention (v1: num_zero 8 + ortho_v2, the demo's 'fidelity' mode; v1.1: num_zero 20 "
    "+ ortho_v2). official style: v1's 'extremely style' mode (num_zero 16 + ortho). fidelity / style / neutral: "
    "the community PuLID_ComfyUI methods of the same names (fidelity's ortho_v2 averages the attention over the "
    "whole image; style = official style; neutral = plain added attention)."
)


def _float(default, lo, hi, step, tip):
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tip})


class VisageApplyPuLIDSDXL:
    DESCRIPTION = (
        "PuLID for SDXL (pulid_v1.bin, pulid_v1.1.safetensors or ip-adapter_pulid_sdxl_fp16.safetensors), to the "
        "published maths: the reference faces' raw antelopev2 embedding and EVA-CLIP features of the aligned, "
        "background-removed face become identity tokens (v1.1 stacks several photos; v1 adds 5 tokens per extra "
        "photo) that every cross-attention attends to, with the official orthogonal projection. Several "
        "identities: one mask each, the faces split in order into equal groups. The model is a clone."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the PuLID attention patch (a clone: the input model is unchanged).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SDXL model."}),
                "pulid": (VISAGE_PULID, {"tooltip": "From 'Load PuLID Model' (a PuLID SDXL file)."}),
                "eva_clip": (VISAGE_EVA_CLIP, {"tooltip": "From 'Load EVA-CLIP'."}),
                "faces": (
                    VISAGE_FACES,
                    {
                        "tooltip": "Reference faces from 'Analyze Faces' (antelopev2). Without masks they are all "
                        "photos of one identity."
                    },
                ),
                "image": ("IMAGE", {"tooltip": "The image(s) the faces were analysed in."}),
                "method": (list(METHODS), {"default": "official", "tooltip": METHOD_TIP}),
                "weight": _float(DEFAULT_WEIGHT, -1.0, 5.0, 0.01, "Identity strength (official id_scale 0.8)."),
                "start_at": _float(0.0, 0.0, 1.0, 0.001, "Start of the sampling window (fraction of the schedule)."),
                "end_at": _float(1.0, 0.0, 1.0, 0.001, "End of the sampling window (fraction of the schedule)."),
            },
            "optional": {
                "masks": (
                    "MASK",
                    {"tooltip": "One mask per identity (image or latent size); the faces split in order into groups."},
                ),
                "num_zero": (
                    "INT",
                    {
                        "default": -1,
                        "min": -1,
                        "max": 80,
                        "tooltip": "Zero tokens appended to the identity (more = more editable, less similar); "
                        "-1 = the method's own.",
                    },
                ),
                "id_mix": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "v1 only: extra reference photos add all 10 tokens (mixing), not 5."},
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
        method,
        weight,
        start_at,
        end_at,
        masks=None,
        num_zero=-1,
        id_mix=False,
        on_no_face="error",
        recognizer_override="",
    ):
        dev = comfy_glue.torch_device("auto")
        parser = parsing.load_parsing(paths.find_file(parsing.FOLDER, parsing.FILE_NAME), device=dev)
        out = apply_pulid_sdxl(
            model,
            pulid,
            eva_clip,
            parser,
            faces,
            image,
            weight,
            start_at,
            end_at,
            method=method,
            masks=masks,
            num_zero=num_zero,
            id_mix=id_mix,
            on_no_face=on_no_face,
            recognizer_override=recognizer_override,
            text_attention=comfy_glue.text_attention,
            progress=comfy_glue.Progress(max(1, faces.count)),
        )
        return (out,)


NODE_CLASS_MAPPINGS = {"VisageApplyPuLIDSDXL": VisageApplyPuLIDSDXL}
NODE_DISPLAY_NAME_MAPPINGS = {"VisageApplyPuLIDSDXL": "Apply PuLID SDXL"}

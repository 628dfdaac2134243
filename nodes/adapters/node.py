"""Identity-adapter nodes: InstantID, IP-Adapter FaceID (Plus V2 / Portrait), Arc2Face.

The only file of the adapters family that imports ComfyUI: node schemas and one-line calls into the
registry (registry.py); each method lives in methods/<method>.py, the maths in projection.py,
loaders.py, attention.py, identity.py and patching.py.
"""

from __future__ import annotations

import logging
import os

import folder_paths
import torch

from ...core import paths
from ...core.model_manager import MANAGER
from ...core.numbers import finite_floats
from ...core.recognizers import RECOGNIZER_OVERRIDE_TIP
from ...core.types import VISAGE_EMBEDS, VISAGE_FACES
from .. import comfy_glue
from . import methods  # noqa: F401 - registers every identity method
from .identity import ARC2FACE_PROMPT
from .loaders import FACEID_VARIANTS, load_identity_adapter
from .methods.faceid import EMBEDDED
from .patching import AdapterRef
from .registry import METHODS, ON_NO_FACE, ON_NO_FACE_TIP, run

log = logging.getLogger("visage")

VISAGE_ID_ADAPTER = "VISAGE_ID_ADAPTER"
CATEGORY = "Visage/adapters"


def _files(folder):
    try:
        files = paths.list_files(folder, extensions={".bin", ".safetensors"})
    except Exception:  # pragma: no cover
        files = []
    return files or [f"(no files in models/{paths.FOLDERS[folder]})"]


def _load_adapter(folder: str, name: str, expect: str, variant: str = "auto") -> AdapterRef:
    path = paths.find_file(folder, name)
    dev = comfy_glue.torch_device("auto")
    kind = expect if variant in ("", "auto") else f"{expect}:{variant}"
    h = MANAGER.get(
        f"id_adapter:{kind}",
        path,
        lambda p, d, dt: load_identity_adapter(p, expect=expect, variant=variant),
        device=dev,
        dtype=torch.float32,
        name=f"{kind}:{os.path.basename(path)}",
    )
    return AdapterRef(h, h.module.info, os.path.basename(path))


def _loras():
    return ["none", EMBEDDED] + folder_paths.get_filename_list("loras")


# ============================================================================ loaders


class VisageInstantIDLoader:
    DESCRIPTION = (
        "Loads InstantID's ip-adapter (.bin or .safetensors) from models/instantid: the 16-token "
        "resampler over the ArcFace embedding and the per-cross-attention K/V layers (SDXL). "
        "A FaceID file is refused with a message naming what it is. Never downloads."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VISAGE_ID_ADAPTER,)
    RETURN_NAMES = ("instantid",)
    OUTPUT_TOOLTIPS = ("The InstantID adapter, for 'Apply InstantID'.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "instantid_file": (
                    _files("instantid"),
                    {
                        "tooltip": "InstantID's ip-adapter.bin (or a .safetensors with image_proj./ip_adapter. keys) in "
                        "models/instantid."
                    },
                )
            }
        }

    @finite_floats
    def load(self, instantid_file):
        return (_load_adapter("instantid", instantid_file, "instantid"),)


class VisageFaceIDLoader:
    DESCRIPTION = (
        "Loads an IP-Adapter FaceID file from models/ipadapter. The variant (FaceID, FaceID Plus / "
        "Plus V2, Portrait) and the base model (SD1.5 / SDXL) are detected from the keys and shapes; "
        "an InstantID or CLIP-image IP-Adapter file is refused naming what it is. "
        "ip-adapter-faceid-portrait_sdxl_unnorm.bin has InstantID's exact keys: load it with variant = "
        "portrait_unnorm."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VISAGE_ID_ADAPTER, "STRING")
    RETURN_NAMES = ("faceid", "variant")
    OUTPUT_TOOLTIPS = ("The FaceID adapter, for 'Apply IP-Adapter FaceID'.", "What the file was detected as.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "faceid_file": (
                    _files("ipadapter"),
                    {"tooltip": "ip-adapter-faceid*.bin / .safetensors in models/ipadapter."},
                )
            },
            "optional": {
                "variant": (
                    list(FACEID_VARIANTS),
                    {
                        "default": "auto",
                        "tooltip": "auto: detected from the file's keys and shapes (the file name never decides). "
                        "faceid / plus / plusv2 / portrait: say it explicitly (checked against the keys; plus / "
                        "plusv2 also set Apply's shortcut when its plus_version is auto). portrait_unnorm: "
                        "ip-adapter-faceid-portrait_sdxl_unnorm.bin, whose keys are InstantID's (resampler, 16 "
                        "tokens per face), fed the raw, unnormalised w600k_r50 embedding as published; no LoRA.",
                    },
                ),
            },
        }

    @finite_floats
    def load(self, faceid_file, variant="auto"):
        ref = _load_adapter("ipadapter", faceid_file, "faceid", variant)
        return (ref, ref.info.describe())


# ============================================================================ InstantID


class VisageApplyInstantID:
    DESCRIPTION = (
        "InstantID, to the published maths: the ArcFace embedding (raw) goes through the resampler to "
        "16 identity tokens that every SDXL cross-attention attends to (decoupled attention, weighted "
        "by ip_weight inside the start/end window), and IdentityNet (a ControlNet loaded with "
        "ComfyUI's 'Load ControlNet Model') is driven by the face keypoints with the identity tokens as "
        "its context. Several identities: one mask each; every identity's tokens and keypoints stay "
        "in its own region."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING", "IMAGE")
    RETURN_NAMES = ("model", "positive", "negative", "keypoints")
    OUTPUT_TOOLTIPS = (
        "The model with the identity attention patch (a clone: the input model is unchanged).",
        "Positive conditioning with IdentityNet attached.",
        "Negative conditioning with IdentityNet attached (negative identity tokens).",
        "The keypoint image(s) given to IdentityNet.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SDXL model (InstantID is made for SDXL)."}),
                "positive": ("CONDITIONING", {"tooltip": "Positive prompt conditioning."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt conditioning."}),
                "instantid": (VISAGE_ID_ADAPTER, {"tooltip": "From 'Load InstantID'."}),
                "ip_weight": (
                    "FLOAT",
                    {
                        "default": 0.8,
                        "min": 0.0,
                        "max": 3.0,
                        "step": 0.01,
                        "tooltip": "Strength of the identity attention.",
                    },
                ),
                "cn_strength": (
                    "FLOAT",
                    {
                        "default": 0.8,
                        "min": 0.0,
                        "max": 10.0,
                        "step": 0.01,
                        "tooltip": "IdentityNet (ControlNet) strength.",
                    },
                ),
                "start_at": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.001,
                        "tooltip": "Start of the sampling window (fraction of the schedule).",
                    },
                ),
                "end_at": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.001,
                        "tooltip": "End of the sampling window (fraction of the schedule).",
                    },
                ),
                "noise": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.05,
                        "tooltip": "Negative identity tokens. 0 (default for new nodes) = zeros through the "
                        "resampler, as InstantX's official pipeline does; > 0 = seeded uniform noise of this "
                        "amplitude, ComfyUI_InstantID's community default (0.35), which its users may expect "
                        "(workflows saved with 0.35 keep it).",
                    },
                ),
            },
            "optional": {
                "faces": (
                    VISAGE_FACES,
                    {
                        "tooltip": "The identity face(s) from 'Analyze Faces'. Each face "
                        "(in order) is one identity; their keypoints drive IdentityNet "
                        "unless a pose is given."
                    },
                ),
                "control_net": (
                    "CONTROL_NET",
                    {
                        "tooltip": "IdentityNet from ComfyUI's 'Load ControlNet Model' "
                        "(models/controlnet). Without it only the attention "
                        "part is applied."
                    },
                ),
                "pose_faces": (
                    VISAGE_FACES,
                    {
                        "tooltip": "Faces analysed in a pose image: their keypoints (one "
                        "per identity, same order) and image size drive "
                        "IdentityNet instead of the identity faces'."
                    },
                ),
                "keypoints_image": (
                    "IMAGE",
                    {"tooltip": "A ready keypoint image used as-is for IdentityNet (overrides pose_faces)."},
                ),
                "masks": (
                    "MASK",
                    {
                        "tooltip": "One mask per identity (the region each face goes to), in the "
                        "size of the generated image or of the latent."
                    },
                ),
                "embeds": (
                    VISAGE_EMBEDS,
                    {
                        "tooltip": "Identity embeddings (one row per identity) used instead "
                        "of the faces' own (e.g. several photos fused)."
                    },
                ),
                "on_no_face": (list(ON_NO_FACE), {"default": "error", "tooltip": ON_NO_FACE_TIP}),
                "recognizer_override": (
                    "STRING",
                    {"default": "", "tooltip": RECOGNIZER_OVERRIDE_TIP.format(trained=METHODS["instantid"].trained_on)},
                ),
            },
        }

    @finite_floats
    def apply(self, **inputs):
        return run("instantid", comfy_glue, **inputs)


# ============================================================================ IP-Adapter FaceID


class VisageApplyFaceID:
    DESCRIPTION = (
        "IP-Adapter FaceID, to the published maths: the normalised ArcFace embedding is projected to "
        "identity tokens (FaceID: 4, Portrait: 16 per reference face, Plus/V2: perceiver over "
        "CLIP-vision features of the aligned face, V2 with the shortcut; Portrait unnorm: the raw "
        "embedding through a resampler, 16 per face) and every cross-attention adds weight x attention "
        "over them inside the start/end window. The LoRA trained with the adapter (embedded in the "
        ".bin, or a file) is applied with ComfyUI's LoRA loader. Several identities: one mask each."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the identity attention patch (and LoRA); the input model is unchanged.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "SD1.5 or SDXL model matching the FaceID file."}),
                "faceid": (VISAGE_ID_ADAPTER, {"tooltip": "From 'Load IP-Adapter FaceID'."}),
                "weight": (
                    "FLOAT",
                    {
                        "default": 0.85,
                        "min": 0.0,
                        "max": 3.0,
                        "step": 0.01,
                        "tooltip": "Strength of the identity attention.",
                    },
                ),
                "start_at": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.001,
                        "tooltip": "Start of the sampling window (fraction of the schedule).",
                    },
                ),
                "end_at": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.001,
                        "tooltip": "End of the sampling window (fraction of the schedule).",
                    },
                ),
                "plus_version": (
                    ["auto", "v1", "v2"],
                    {
                        "tooltip": "FaceID Plus only: v2 adds the shortcut "
                        "(tokens + s * resampler). 'auto' = v2 when "
                        "the file name says 'v2'."
                    },
                ),
                "shortcut_scale": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 5.0,
                        "step": 0.05,
                        "tooltip": "FaceID Plus V2 shortcut scale (s_scale).",
                    },
                ),
                "lora_name": (
                    _loras(),
                    {
                        "default": EMBEDDED,
                        "tooltip": "The LoRA trained with the adapter. 'embedded' (default for new nodes): the "
                        "one stored in the FaceID .bin itself, which the official pipelines always apply at "
                        "scale 1.0; a file from models/loras (e.g. the released *_lora.safetensors) works "
                        "too; 'none' skips it (workflows saved with 'none' keep it). Applied with ComfyUI's "
                        "LoRA loader on a clone of the model. Portrait files carry no LoRA: 'embedded' is "
                        "then a logged no-op.",
                    },
                ),
                "lora_strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": -5.0,
                        "max": 5.0,
                        "step": 0.01,
                        "tooltip": "Strength of the LoRA on the UNet (the official pipelines: 1.0; "
                        "ComfyUI_IPAdapter_plus suggests 0.6 for its separate LoRA files).",
                    },
                ),
            },
            "optional": {
                "faces": (
                    VISAGE_FACES,
                    {
                        "tooltip": "Identity face(s) from 'Analyze Faces'; each face is "
                        "one identity (Portrait: see faces_per_identity)."
                    },
                ),
                "embeds": (
                    VISAGE_EMBEDS,
                    {
                        "tooltip": "Identity embeddings, one row per identity (instead of "
                        "faces; not for FaceID Plus, which needs the face image)."
                    },
                ),
                "image": (
                    "IMAGE",
                    {
                        "tooltip": "FaceID Plus: the image the faces were analysed in (the face "
                        "is aligned to 224 px for CLIP vision)."
                    },
                ),
                "clip_vision": ("CLIP_VISION", {"tooltip": "FaceID Plus: CLIP-ViT-H-14 vision model."}),
                "masks": ("MASK", {"tooltip": "One mask per identity, image- or latent-sized."}),
                "faces_per_identity": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 64,
                        "tooltip": "Portrait: how many consecutive faces form one "
                        "identity (0 = all faces are one identity).",
                    },
                ),
                "on_no_face": (list(ON_NO_FACE), {"default": "error", "tooltip": ON_NO_FACE_TIP}),
                "recognizer_override": (
                    "STRING",
                    {"default": "", "tooltip": RECOGNIZER_OVERRIDE_TIP.format(trained=METHODS["faceid"].trained_on)},
                ),
            },
        }

    @finite_floats
    def apply(self, **inputs):
        return run("faceid", comfy_glue, **inputs)


# ============================================================================ Arc2Face


class VisageArc2FaceEncode:
    DESCRIPTION = (
        "Arc2Face conditioning, to the published maths: the L2-normalised ArcFace embedding, "
        "zero-padded to 768, replaces the 'id' token of 'photo of a id person' in Arc2Face's "
        "fine-tuned CLIP text encoder (load it with 'Load CLIP', type stable_diffusion); the output "
        "drives the Arc2Face UNet (load it with 'Load Diffusion Model'). Negative = the empty prompt. "
        "Several identities: one mask each (regional conditioning)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("Identity conditioning for the Arc2Face UNet.", "Empty-prompt conditioning.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": (
                    "CLIP",
                    {
                        "tooltip": "Arc2Face's CLIP text encoder (arc2face/encoder), loaded with 'Load "
                        "CLIP' type stable_diffusion."
                    },
                ),
            },
            "optional": {
                "faces": (VISAGE_FACES, {"tooltip": "Identity face(s); each face is one identity."}),
                "embeds": (VISAGE_EMBEDS, {"tooltip": "Identity embeddings, one row per identity (wins over faces)."}),
                "masks": ("MASK", {"tooltip": "One mask per identity (regional conditioning)."}),
                "prompt": (
                    "STRING",
                    {
                        "default": ARC2FACE_PROMPT,
                        "tooltip": "Arc2Face's prompt; the word "
                        "'id' is where the identity goes. Keep the default for the published maths.",
                    },
                ),
                "on_no_face": (list(ON_NO_FACE), {"default": "error", "tooltip": ON_NO_FACE_TIP}),
                "recognizer_override": (
                    "STRING",
                    {"default": "", "tooltip": RECOGNIZER_OVERRIDE_TIP.format(trained=METHODS["arc2face"].trained_on)},
                ),
            },
        }

    @finite_floats
    def encode(self, **inputs):
        return run("arc2face", comfy_glue, **inputs)


NODE_CLASS_MAPPINGS = {
    "VisageInstantIDLoader": VisageInstantIDLoader,
    "VisageFaceIDLoader": VisageFaceIDLoader,
    "VisageApplyInstantID": VisageApplyInstantID,
    "VisageApplyFaceID": VisageApplyFaceID,
    "VisageArc2FaceEncode": VisageArc2FaceEncode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "VisageInstantIDLoader": "Load InstantID",
    "VisageFaceIDLoader": "Load IP-Adapter FaceID",
    "VisageApplyInstantID": "Apply InstantID",
    "VisageApplyFaceID": "Apply IP-Adapter FaceID",
    "VisageArc2FaceEncode": "Arc2Face Encode",
}

"""Identity-adapter nodes: InstantID, IP-Adapter FaceID (Plus V2 / Portrait), Arc2Face.

The only file of the adapters family that imports ComfyUI. All maths live in projection.py,
loaders.py, attention.py and identity.py.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
import torch

from ...core import paths
from ...core.errors import VisageError
from ...core.images import check_image
from ...core.model_manager import MANAGER
from ...core.recognizers import RECOGNIZER_OVERRIDE_TIP
from ...core.select import frames_for
from ...core.types import VISAGE_EMBEDS, VISAGE_FACES
from .. import comfy_glue
from .attention import (
    IdentityAttentionPatch,
    IdentityEntry,
    check_masks,
    cross_attention_blocks,
    match_layers,
    project_identity_kv,
)
from .clip_features import ClipFeatureCache, check_clip_width, faceid_plus_clip_features, zero_pixel_hidden
from .identity import (
    ARC2FACE_PLACEHOLDER,
    ARC2FACE_PROMPT,
    METHODS,
    arc2face_tokens,
    clip_crops_uncond,
    faceid_plus_crops,
    faceid_tokens,
    identity_embeddings,
    instantid_tokens,
    keypoint_hints,
)
from .loaders import FACEID_KINDS, FACEID_PLUS, FACEID_PORTRAIT, INSTANTID, AdapterInfo, load_identity_adapter

log = logging.getLogger("visage")

VISAGE_ID_ADAPTER = "VISAGE_ID_ADAPTER"
CATEGORY = "Visage/adapters"
CLIP_CACHE = ClipFeatureCache()  # FaceID Plus: CLIP-vision features per vision model (weak) and crop


@dataclass
class AdapterRef:
    """The VISAGE_ID_ADAPTER payload: a model-manager handle and what the file is."""

    handle: object
    info: AdapterInfo
    name: str

    def module(self):
        return self.handle.model()


def _files(folder):
    try:
        files = paths.list_files(folder, extensions={".bin", ".safetensors"})
    except Exception:  # pragma: no cover
        files = []
    return files or [f"(no files in models/{paths.FOLDERS[folder]})"]


def _load_adapter(folder: str, name: str, expect: str) -> AdapterRef:
    path = paths.find_file(folder, name)
    dev = comfy_glue.torch_device("auto")
    h = MANAGER.get(
        f"id_adapter:{expect}",
        path,
        lambda p, d, dt: load_identity_adapter(p, expect=expect),
        device=dev,
        dtype=torch.float32,
        name=f"{expect}:{os.path.basename(path)}",
    )
    return AdapterRef(h, h.module.info, os.path.basename(path))


def _loras():
    return ["none"] + folder_paths.get_filename_list("loras")


def comfy_text_attention(q, k, v, extra_options):
    """ComfyUI's own attention (what attn2 runs unpatched)."""
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))


def apply_identity_patch(
    model,
    ref: AdapterRef,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    weights,
    start_at: float,
    end_at: float,
    masks,
    name: str,
):
    """Clone the model and put one IdentityAttentionPatch on every cross-attention block."""
    if end_at < start_at:
        raise VisageError(
            "end_at is before start_at",
            expected="start_at <= end_at",
            got=f"start_at={start_at}, end_at={end_at}",
            fix="swap the two values",
        )
    unet = model.get_model_object("diffusion_model")
    blocks = cross_attention_blocks(unet)
    layer_map = match_layers(ref.info, blocks, model_name=type(model.model).__name__)
    adapter = ref.module()
    kv = project_identity_kv(adapter.ip_layers, cond, uncond)
    ms = model.get_model_object("model_sampling")
    entry = IdentityEntry(
        kv,
        layer_map,
        weights,
        sigma_start=ms.percent_to_sigma(start_at),
        sigma_end=ms.percent_to_sigma(end_at),
        masks=masks,
        name=name,
    )
    m = model.clone()
    existing = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    ours, foreign = None, {}
    for key in layer_map:
        p = existing.get(key, existing.get(key[:2]))
        if isinstance(p, IdentityAttentionPatch):
            ours = p
        elif p is not None:
            foreign[key] = p
    patch = (
        ours.with_entry(entry, foreign)
        if ours is not None
        else IdentityAttentionPatch([entry], foreign, comfy_text_attention)
    )
    for key in layer_map:
        m.set_model_attn2_replace(patch, key[0], key[1], key[2])
    return m


def _expect_kind(ref, kinds, expected):
    if not isinstance(ref, AdapterRef) or ref.info.kind not in kinds:
        got = ref.info.describe() if isinstance(ref, AdapterRef) else type(ref).__name__
        raise VisageError(
            "The adapter input holds the wrong kind of adapter",
            expected=expected,
            got=got,
            fix="connect the matching loader",
        )


def _union_background(masks: torch.Tensor):
    bg = (1.0 - masks.amax(0)).clamp(0, 1)
    return bg if float(bg.max()) > 1e-3 else None


def _cond_with(conditioning, control_net=None, hint=None, strength=1.0, window=(0.0, 1.0), tokens=None, mask=None):
    out = []
    cache = {}
    dev = comfy_glue.intermediate_device()
    for t in conditioning:
        d = t[1].copy()
        if control_net is not None:
            prev = d.get("control", None)
            c_net = cache.get(id(prev))
            if c_net is None:
                c_net = control_net.copy().set_cond_hint(hint.movedim(-1, 1), strength, window)
                c_net.set_previous_controlnet(prev)
                cache[id(prev)] = c_net
            d["control"] = c_net
            d["control_apply_to_uncond"] = False
            d["cross_attn_controlnet"] = tokens.to(dev)
        if mask is not None:
            m = mask.unsqueeze(0) if mask.ndim == 2 else mask
            old = d.get("mask")
            if old is not None:
                old = old.unsqueeze(0) if old.ndim == 2 else old
                if old.shape[-2:] != m.shape[-2:]:
                    m = torch.nn.functional.interpolate(m.unsqueeze(1), size=old.shape[-2:], mode="bilinear").squeeze(1)
                m = m * old
            d["mask"] = m
            d["set_area_to_bounds"] = False
            d["mask_strength"] = d.get("mask_strength", 1.0)
        out.append([t[0], d])
    return out


def _regional(conditioning, masks, per_identity):
    """Per identity a copy of the conditioning confined to its mask (+ the rest of the image)."""
    out = []
    for i in range(masks.shape[0]):
        out += per_identity(i, masks[i])
    bg = _union_background(masks)
    if bg is not None:
        out += _cond_with(conditioning, mask=bg)
    return out


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
    OUTPUT_TOOLTIPS = ("The InstantID adapter, for 'Visage Apply InstantID'.",)

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

    def load(self, instantid_file):
        return (_load_adapter("instantid", instantid_file, "instantid"),)


class VisageFaceIDLoader:
    DESCRIPTION = (
        "Loads an IP-Adapter FaceID file from models/ipadapter. The variant (FaceID, FaceID Plus / "
        "Plus V2, Portrait) and the base model (SD1.5 / SDXL) are detected from the keys and shapes; "
        "an InstantID or CLIP-image IP-Adapter file is refused naming what it is."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VISAGE_ID_ADAPTER, "STRING")
    RETURN_NAMES = ("faceid", "variant")
    OUTPUT_TOOLTIPS = ("The FaceID adapter, for 'Visage Apply IP-Adapter FaceID'.", "What the file was detected as.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "faceid_file": (
                    _files("ipadapter"),
                    {"tooltip": "ip-adapter-faceid*.bin / .safetensors in models/ipadapter."},
                )
            }
        }

    def load(self, faceid_file):
        ref = _load_adapter("ipadapter", faceid_file, "faceid")
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
                "instantid": (VISAGE_ID_ADAPTER, {"tooltip": "From 'Visage InstantID Loader'."}),
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
                        "default": 0.35,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.05,
                        "tooltip": "Negative identity: 0 = zeros through the resampler (InstantID "
                        "pipeline); > 0 = seeded uniform noise of this amplitude "
                        "(ComfyUI_InstantID's default 0.35).",
                    },
                ),
            },
            "optional": {
                "faces": (
                    VISAGE_FACES,
                    {
                        "tooltip": "The identity face(s) from 'Visage Analyze Faces'. Each face "
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
                "recognizer_override": (
                    "STRING",
                    {"default": "", "tooltip": RECOGNIZER_OVERRIDE_TIP.format(trained=METHODS["instantid"].trained_on)},
                ),
            },
        }

    def apply(
        self,
        model,
        positive,
        negative,
        instantid,
        ip_weight,
        cn_strength,
        start_at,
        end_at,
        noise,
        faces=None,
        control_net=None,
        pose_faces=None,
        keypoints_image=None,
        masks=None,
        embeds=None,
        recognizer_override="",
    ):
        _expect_kind(instantid, (INSTANTID,), "an InstantID adapter from 'Visage InstantID Loader'")
        emb = identity_embeddings("instantid", faces, embeds, instantid.info.embedding_dim, recognizer_override)
        n = emb.shape[0]
        masks = check_masks(masks, n)
        ad = instantid.module()
        cond, uncond = instantid_tokens(ad.image_proj, emb, noise)
        m = apply_identity_patch(model, instantid, cond, uncond, ip_weight, start_at, end_at, masks, "instantid")

        # keypoints for IdentityNet
        regional = masks is not None and n > 1
        hints = None
        src = pose_faces if pose_faces is not None else faces
        flat = src.flat() if src is not None else ()
        if keypoints_image is not None:
            kimg = check_image(keypoints_image, "keypoints_image")[:1]
            hints = kimg.expand(n, -1, -1, -1) if regional else kimg
        elif flat:
            if len(flat) < n:
                raise VisageError(
                    f"{n} identities but only {len(flat)} pose face(s)",
                    expected="one pose face per identity",
                    got=f"{len(flat)} face(s)",
                    fix="analyse a pose image with as many faces as identities",
                )
            flat = flat[:n]
            size = src.image_sizes[flat[0].image_index]
            hints = keypoint_hints([f.kps.numpy() for f in flat], size, per_identity=regional)
        if control_net is None:
            return (m, positive, negative, hints if hints is not None else torch.zeros(1, 64, 64, 3))
        if hints is None:
            raise VisageError(
                "InstantID has no keypoints for IdentityNet",
                expected="faces (or pose_faces) with keypoints, or a keypoints_image",
                got="only embeddings",
                fix="connect the analysed faces, pose faces or a keypoints image",
            )
        window = (float(start_at), float(end_at))
        if not regional:
            pos = _cond_with(positive, control_net, hints[:1], cn_strength, window, cond[:1])
            neg = _cond_with(negative, control_net, hints[:1], cn_strength, window, uncond[:1])
        else:
            pos = _regional(
                positive,
                masks,
                lambda i, mk: _cond_with(
                    positive, control_net, hints[i : i + 1], cn_strength, window, cond[i : i + 1], mk
                ),
            )
            neg = _regional(
                negative,
                masks,
                lambda i, mk: _cond_with(
                    negative, control_net, hints[i : i + 1], cn_strength, window, uncond[i : i + 1], mk
                ),
            )
        return (m, pos, neg, hints)


# ============================================================================ IP-Adapter FaceID


class VisageApplyFaceID:
    DESCRIPTION = (
        "IP-Adapter FaceID, to the published maths: the normalised ArcFace embedding is projected to "
        "identity tokens (FaceID: 4, Portrait: 16 per reference face, Plus/V2: perceiver over "
        "CLIP-vision features of the aligned face, V2 with the shortcut) and every cross-attention "
        "adds weight x attention over them inside the start/end window. The paired LoRA is applied "
        "with ComfyUI's LoRA loader. Several identities: one mask each."
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
                "faceid": (VISAGE_ID_ADAPTER, {"tooltip": "From 'Visage FaceID Loader'."}),
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
                        "tooltip": "The FaceID LoRA paired with the file (models/loras), "
                        "applied with ComfyUI's LoRA loader; 'none' to skip."
                    },
                ),
                "lora_strength": (
                    "FLOAT",
                    {
                        "default": 0.6,
                        "min": -5.0,
                        "max": 5.0,
                        "step": 0.01,
                        "tooltip": "Strength of the paired LoRA on the UNet.",
                    },
                ),
            },
            "optional": {
                "faces": (
                    VISAGE_FACES,
                    {
                        "tooltip": "Identity face(s) from 'Visage Analyze Faces'; each face is "
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
                "recognizer_override": (
                    "STRING",
                    {"default": "", "tooltip": RECOGNIZER_OVERRIDE_TIP.format(trained=METHODS["faceid"].trained_on)},
                ),
            },
        }

    def apply(
        self,
        model,
        faceid,
        weight,
        start_at,
        end_at,
        plus_version,
        shortcut_scale,
        lora_name,
        lora_strength,
        faces=None,
        embeds=None,
        image=None,
        clip_vision=None,
        masks=None,
        faces_per_identity=0,
        recognizer_override="",
    ):
        _expect_kind(faceid, FACEID_KINDS, "an IP-Adapter FaceID adapter from 'Visage FaceID Loader'")
        info = faceid.info
        emb = identity_embeddings("faceid", faces, embeds, info.embedding_dim, recognizer_override)
        groups = None
        if info.kind == FACEID_PORTRAIT:
            total = emb.shape[0]
            per = faces_per_identity or total
            if total % per:
                raise VisageError(
                    f"{total} faces do not split into identities of {per}",
                    expected="a multiple of faces_per_identity",
                    got=str(total),
                    fix="set faces_per_identity to a divisor of the face count (0 = one identity)",
                )
            groups = [per] * (total // per)
        n = len(groups) if groups else emb.shape[0]
        masks = check_masks(masks, n)
        clip_c = clip_u = None
        shortcut = False
        if info.kind == FACEID_PLUS:
            shortcut = plus_version == "v2" or (plus_version == "auto" and "v2" in faceid.name.lower())
            clip_c, clip_u = self._clip_features(faces, image, clip_vision, embeds, info.clip_embeddings_dim)
            if clip_c.shape[0] != emb.shape[0]:
                raise VisageError(
                    f"FaceID Plus got {emb.shape[0]} identity embedding(s) but {clip_c.shape[0]} face(s)",
                    expected="one analysed face per identity",
                    got=f"{clip_c.shape[0]} faces",
                    fix="give the faces of the identities (embeds, when used, one row per face)",
                )
        ad = faceid.module()
        cond, uncond = faceid_tokens(ad.image_proj, info.kind, emb, clip_c, clip_u, shortcut, shortcut_scale, groups)
        m = model
        if lora_name and lora_name != "none":
            lora = comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise("loras", lora_name), safe_load=True)
            m, _ = comfy.sd.load_lora_for_models(m, None, lora, lora_strength, 0)
        return (apply_identity_patch(m, faceid, cond, uncond, weight, start_at, end_at, masks, info.kind),)

    @staticmethod
    def _clip_features(faces, image, clip_vision, embeds, clip_dim=0):
        if clip_vision is None or image is None or faces is None:
            raise VisageError(
                "FaceID Plus needs the face image and a CLIP vision model",
                expected="'faces', the 'image' they were analysed in and 'clip_vision' (ViT-H)",
                got="missing "
                + ", ".join(
                    n for n, v in (("faces", faces), ("image", image), ("clip_vision", clip_vision)) if v is None
                ),
                fix="connect 'Visage Analyze Faces' faces, its image and 'Load CLIP Vision'",
            )
        crops = faceid_plus_crops(frames_for(check_image(image, "image"), faces), faces)
        hits = CLIP_CACHE.hits
        cc, cu = faceid_plus_clip_features(
            crops,
            lambda x: clip_vision.encode_image(x).penultimate_hidden_states,
            lambda: _clip_zero_hidden(clip_vision),
            CLIP_CACHE,
            clip_vision,
        )
        log.info(
            "Visage: FaceID Plus CLIP-vision features of %d face(s) %s, %s",
            crops.shape[0],
            tuple(cc.shape),
            "from cache" if CLIP_CACHE.hits - hits >= 2 else "encoded",
        )
        check_clip_width(cc, clip_dim)
        return cc, cu


def _clip_zero_hidden(clip_vision):
    """Penultimate hidden states of the all-zero normalised input (the published negative), fed to ComfyUI's
    vision model directly (its preprocessing would round the CLIP mean colour to 8 bits)."""
    size = int(getattr(clip_vision, "image_size", 224))
    model, patcher = getattr(clip_vision, "model", None), getattr(clip_vision, "patcher", None)
    if model is None or patcher is None or getattr(clip_vision, "return_all_hidden_states", False):
        return clip_vision.encode_image(clip_crops_uncond(1, size)).penultimate_hidden_states
    mm = comfy.model_management
    mm.load_model_gpu(patcher)
    dev = getattr(clip_vision, "load_device", None) or mm.text_encoder_device()
    return zero_pixel_hidden(model, size, dev).to(mm.intermediate_device())


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
                "recognizer_override": (
                    "STRING",
                    {"default": "", "tooltip": RECOGNIZER_OVERRIDE_TIP.format(trained=METHODS["arc2face"].trained_on)},
                ),
            },
        }

    def encode(self, clip, faces=None, embeds=None, masks=None, prompt=ARC2FACE_PROMPT, recognizer_override=""):
        emb = identity_embeddings("arc2face", faces, embeds, 512, recognizer_override)
        masks = check_masks(masks, emb.shape[0])
        tokens = clip.tokenize(prompt)
        if "l" not in tokens:
            raise VisageError(
                "Arc2Face needs an SD1.5-type CLIP text encoder",
                expected="a CLIP-L text encoder",
                got=f"a text encoder with token groups {sorted(tokens)}",
                fix="load Arc2Face's encoder with 'Load CLIP', type stable_diffusion",
            )
        placeholder = clip.tokenize(ARC2FACE_PLACEHOLDER)["l"][0][1][0]
        width = self._width(clip)
        pos = []
        for i in range(emb.shape[0]):
            tk = dict(tokens)
            tk["l"] = arc2face_tokens(tokens["l"], placeholder, emb[i], width)
            c, pooled = clip.encode_from_tokens(tk, return_pooled=True)
            d = {"pooled_output": pooled}
            if masks is not None:
                d.update({"mask": masks[i : i + 1], "set_area_to_bounds": False, "mask_strength": 1.0})
            pos.append([c, d])
        if masks is not None:  # the rest of the image: the prompt without an identity
            bg = _union_background(masks)
            if bg is not None:
                c, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
                pos.append(
                    [
                        c,
                        {
                            "pooled_output": pooled,
                            "mask": bg.unsqueeze(0),
                            "set_area_to_bounds": False,
                            "mask_strength": 1.0,
                        },
                    ]
                )
        nc, npooled = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
        return (pos, [[nc, {"pooled_output": npooled}]])

    @staticmethod
    def _width(clip) -> int:
        try:
            return int(clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight.shape[-1])
        except Exception:
            return 768


NODE_CLASS_MAPPINGS = {
    "VisageInstantIDLoader": VisageInstantIDLoader,
    "VisageFaceIDLoader": VisageFaceIDLoader,
    "VisageApplyInstantID": VisageApplyInstantID,
    "VisageApplyFaceID": VisageApplyFaceID,
    "VisageArc2FaceEncode": VisageArc2FaceEncode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "VisageInstantIDLoader": "Visage InstantID Loader",
    "VisageFaceIDLoader": "Visage FaceID Loader",
    "VisageApplyInstantID": "Visage Apply InstantID",
    "VisageApplyFaceID": "Visage Apply IP-Adapter FaceID",
    "VisageArc2FaceEncode": "Visage Arc2Face Encode",
}

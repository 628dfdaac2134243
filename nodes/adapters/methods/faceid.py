"""IP-Adapter FaceID (SD1.5 / SDXL): FaceID, FaceID Plus / Plus V2, Portrait, Portrait unnorm. The
normalised w600k_r50 (buffalo_l) embedding is projected to identity tokens (Plus: a perceiver over CLIP-vision
features of the aligned face, V2 with the shortcut) that every cross-attention attends to; the LoRA trained
with the adapter (stored in the .bin: lora_name 'embedded', the default) or a LoRA file, through ComfyUI's
LoRA loader. Facts from h94/IP-Adapter-FaceID's model card and tencent-ailab/IP-Adapter:
FaceAnalysis('buffalo_l'), faces[0].normed_embedding, the LoRA attention processors at scale 1.0.
Portrait unnorm (ip-adapter-faceid-portrait_sdxl_unnorm.bin): InstantID's resampler layout (16 tokens, SDXL),
fed the raw buffalo_l embedding (ComfyUI_IPAdapter_plus: face.embedding); no LoRA."""

from __future__ import annotations

import logging

from ....core.errors import VisageError
from ....core.images import check_image
from ....core.select import frames_for
from ..attention import check_masks
from ..clip_features import ClipFeatureCache, check_clip_width, faceid_plus_clip_features, zero_pixel_hidden
from ..identity import clip_crops_uncond, faceid_plus_crops, faceid_tokens, identity_embeddings
from ..loaders import (
    FACEID_KINDS,
    FACEID_PLUS,
    FACEID_PORTRAIT,
    FACEID_PORTRAIT_UNNORM,
    diffusers_attention_order,
    lora_to_unet_keys,
)
from ..patching import apply_identity_patch, expect_kind
from ..registry import MethodSpec, register

log = logging.getLogger("visage")

EMBEDDED = "embedded"  # lora_name: the LoRA stored in the FaceID file itself
CLIP_CACHE = ClipFeatureCache()  # FaceID Plus: CLIP-vision features per vision model (weak) and crop


def apply(
    glue,
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
    expect_kind(faceid, FACEID_KINDS, "an IP-Adapter FaceID adapter from 'Load IP-Adapter FaceID'")
    info = faceid.info
    # Portrait unnorm takes the raw w600k_r50 rows (ComfyUI_IPAdapter_plus: face.embedding), the rest normed
    emb = identity_embeddings(
        "faceid", faces, embeds, info.embedding_dim, recognizer_override, normed=not info.raw_embedding
    )
    groups = None
    if info.kind in (FACEID_PORTRAIT, FACEID_PORTRAIT_UNNORM):
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
        if plus_version == "auto" and info.plus_v2 is not None:  # the loader's explicit variant
            shortcut = info.plus_v2
        else:
            shortcut = plus_version == "v2" or (plus_version == "auto" and "v2" in faceid.name.lower())
        clip_c, clip_u = clip_features(glue, faces, image, clip_vision, info.clip_embeddings_dim)
        if clip_c.shape[0] != emb.shape[0]:
            raise VisageError(
                f"FaceID Plus got {emb.shape[0]} identity embedding(s) but {clip_c.shape[0]} face(s)",
                expected="one analysed face per identity",
                got=f"{clip_c.shape[0]} faces",
                fix="give the faces of the identities (embeds, when used, one row per face)",
            )
    ad = faceid.module()
    cond, uncond = faceid_tokens(ad.image_proj, info.kind, emb, clip_c, clip_u, shortcut, shortcut_scale, groups)
    m = apply_lora(glue, model, faceid, lora_name, lora_strength)
    return (
        apply_identity_patch(m, faceid, cond, uncond, weight, start_at, end_at, masks, info.kind, glue.text_attention),
    )


def apply_lora(glue, model, faceid, lora_name, strength):
    """'none': the model as given; 'embedded': the LoRA stored in the FaceID .bin itself (what the official
    pipelines always apply, at scale 1.0), named for this UNet and applied through ComfyUI's LoRA machinery on
    a clone; any other name: that file from models/loras. Portrait files carry no LoRA (the published Portrait
    pipeline applies none): 'embedded' is then a logged no-op."""
    if not lora_name or lora_name == "none":
        return model
    if lora_name != EMBEDDED:
        return glue.load_lora(model, lora_name, strength)
    ad = faceid.module()
    if not ad.lora:
        log.info(
            "Visage: %s carries no LoRA (%s); lora_name = embedded applies nothing",
            faceid.name,
            "Portrait files have none"
            if faceid.info.kind in (FACEID_PORTRAIT, FACEID_PORTRAIT_UNNORM)
            else "none stored",
        )
        return model
    sd = lora_to_unet_keys(ad.lora, diffusers_attention_order(glue.unet_attention_names(model)), faceid.name)
    return glue.load_lora_state_dict(model, sd, strength)


def clip_features(glue, faces, image, clip_vision, clip_dim=0):
    """FaceID Plus: the vision model's second-to-last layer on insightface's norm_crop(224) of each face,
    and the negative (exact zero normalised pixels); cached per vision model and crop."""
    if clip_vision is None or image is None or faces is None:
        raise VisageError(
            "FaceID Plus needs the face image and a CLIP vision model",
            expected="'faces', the 'image' they were analysed in and 'clip_vision' (ViT-H)",
            got="missing "
            + ", ".join(n for n, v in (("faces", faces), ("image", image), ("clip_vision", clip_vision)) if v is None),
            fix="connect Analyze Faces' faces, its image and 'Load CLIP Vision'",
        )
    crops = faceid_plus_crops(frames_for(check_image(image, "image"), faces), faces)
    hits = CLIP_CACHE.hits
    cc, cu = faceid_plus_clip_features(
        crops,
        lambda x: clip_vision.encode_image(x).penultimate_hidden_states,
        lambda: _zero_hidden(glue, clip_vision),
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


def _zero_hidden(glue, clip_vision):
    """Penultimate hidden states of the all-zero normalised input (the published negative), fed to ComfyUI's
    vision model directly (its preprocessing would round the CLIP mean colour to 8 bits)."""
    size = int(getattr(clip_vision, "image_size", 224))
    model, patcher = getattr(clip_vision, "model", None), getattr(clip_vision, "patcher", None)
    if model is None or patcher is None or getattr(clip_vision, "return_all_hidden_states", False):
        return clip_vision.encode_image(clip_crops_uncond(1, size)).penultimate_hidden_states
    dev = glue.load_text_encoder_model(clip_vision)
    return zero_pixel_hidden(model, size, dev).to(glue.intermediate_device())


def passthrough(glue, model, **_):
    return (model,)


SPEC = register(MethodSpec("faceid", "IP-Adapter FaceID", trained_on="w600k_r50", normed=True), apply, passthrough)

"""IP-Adapter FaceID (SD1.5 / SDXL): FaceID, FaceID Plus / Plus V2, Portrait. The normalised
w600k_r50 (buffalo_l) embedding is projected to identity tokens (Plus: a perceiver over CLIP-vision
features of the aligned face, V2 with the shortcut) that every cross-attention attends to; the paired
LoRA through ComfyUI's LoRA loader. Facts from h94/IP-Adapter-FaceID's model card and
tencent-ailab/IP-Adapter: FaceAnalysis('buffalo_l'), faces[0].normed_embedding."""

from __future__ import annotations

import logging

from ....core.errors import VisageError
from ....core.images import check_image
from ....core.select import frames_for
from ..attention import check_masks
from ..clip_features import ClipFeatureCache, check_clip_width, faceid_plus_clip_features, zero_pixel_hidden
from ..identity import clip_crops_uncond, faceid_plus_crops, faceid_tokens, identity_embeddings
from ..loaders import FACEID_KINDS, FACEID_PLUS, FACEID_PORTRAIT
from ..patching import apply_identity_patch, expect_kind
from ..registry import MethodSpec, register

log = logging.getLogger("visage")

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
    m = model
    if lora_name and lora_name != "none":
        m = glue.load_lora(m, lora_name, lora_strength)
    return (
        apply_identity_patch(m, faceid, cond, uncond, weight, start_at, end_at, masks, info.kind, glue.text_attention),
    )


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

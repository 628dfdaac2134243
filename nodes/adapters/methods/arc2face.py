"""Arc2Face (SD1.5): the L2-normalised embedding of Arc2Face's own recognizer (arcface.onnx, put in the
antelopev2 folder as its README says), zero-padded to the text encoder's width, replaces the 'id' token
of "photo of a id person" in Arc2Face's fine-tuned CLIP text encoder. Negative: the empty prompt."""

from __future__ import annotations

from ....core.errors import VisageError
from ..attention import check_masks
from ..identity import ARC2FACE_PLACEHOLDER, ARC2FACE_PROMPT, arc2face_tokens, identity_embeddings
from ..patching import union_background
from ..registry import MethodSpec, register


def _width(clip) -> int:
    try:
        return int(clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight.shape[-1])
    except Exception:
        return 768


def _masked(c, pooled, mask):
    return [c, {"pooled_output": pooled, "mask": mask, "set_area_to_bounds": False, "mask_strength": 1.0}]


def apply(glue, clip, faces=None, embeds=None, masks=None, prompt=ARC2FACE_PROMPT, recognizer_override=""):
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
    width = _width(clip)
    pos = []
    for i in range(emb.shape[0]):
        tk = dict(tokens)
        tk["l"] = arc2face_tokens(tokens["l"], placeholder, emb[i], width)
        c, pooled = clip.encode_from_tokens(tk, return_pooled=True)
        pos.append(_masked(c, pooled, masks[i : i + 1]) if masks is not None else [c, {"pooled_output": pooled}])
    if masks is not None:  # the rest of the image: the prompt without an identity
        bg = union_background(masks)
        if bg is not None:
            c, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
            pos.append(_masked(c, pooled, bg.unsqueeze(0)))
    nc, npooled = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
    return (pos, [[nc, {"pooled_output": npooled}]])


def passthrough(glue, clip, prompt=ARC2FACE_PROMPT, **_):
    """The prompt as text, without an identity; the negative as always."""
    c, pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
    nc, npooled = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
    return ([[c, {"pooled_output": pooled}]], [[nc, {"pooled_output": npooled}]])


SPEC = register(MethodSpec("arc2face", "Arc2Face", trained_on="arcface", normed=True), apply, passthrough)

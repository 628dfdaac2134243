"""Apply PuLID SDXL: reference faces -> identity tokens (v1 / v1.1) -> the attn2 patch on a ModelPatcher
clone. No ComfyUI import: ``model`` is a ComfyUI ModelPatcher used through its public methods only, and
ComfyUI's own attention comes in as ``text_attention``.

Identities and references: without masks every face of ``faces`` is a reference photo of one identity
(v1.1 stacks them into one set of tokens, v1 adds 5 tokens per extra photo, as the official demos). With
M masks (one region per identity) the faces are split, in order, into M equal groups: identity i takes
group i as its references.

The face image each reference gives EVA-CLIP is the official one, prepared as for PuLID-FLUX
(:mod:`.preprocess`): the FFHQ-512 crop aligned from the analysis keypoints, BiSeNet parsing, background
white, face grey; bicubic to 336, OpenAI-CLIP normalisation.
"""

from __future__ import annotations

import logging
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ...core.errors import VisageError
from ...core.recognizers import method_embeddings
from ...core.select import apply_on_no_face, frames_for
from ..face.parsing import parse_faces
from . import sdxl as S
from .eva_clip import pulid_vit_features
from .loaders import KIND_NAMES, SDXL_V1, SDXL_V1_1
from .preprocess import aligned_faces, eva_input, face_features_image

log = logging.getLogger("visage")

METHOD = "PuLID SDXL"
TRAINED_ON = "glintr100"


def face_images(images: torch.Tensor, faces, parser) -> torch.Tensor:
    """[N, 3, 512, 512]: white background, grey face (the official EVA-CLIP input before resizing)."""
    crops = aligned_faces(images, faces)
    return face_features_image(crops, parse_faces(parser, crops))


@torch.no_grad()
def reference_inputs(
    tower, emb: torch.Tensor, images: torch.Tensor, progress: Optional[Callable[[int, int], None]] = None
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """(id_cond [N, 1280], five hidden states [N, T, W]) of N reference face images [N, 3, S, S]."""
    p = next(tower.parameters())
    size = int(tower.image_size)
    conds, hiddens = [], []
    for i in range(images.shape[0]):
        x = eva_input(images[i : i + 1].to(p.device, torch.float32), size).to(p.dtype)
        vit, hidden = pulid_vit_features(tower, x)
        conds.append(torch.cat((emb[i : i + 1].float().cpu(), vit.float().cpu()), dim=-1))
        hiddens.append([h.float().cpu() for h in hidden])
        if progress is not None:
            progress(i + 1, images.shape[0])
    return torch.cat(conds), [torch.cat([h[j] for h in hiddens]) for j in range(len(hiddens[0]))]


def groups_for(n_faces: int, masks: Optional[torch.Tensor]) -> List[Tuple[int, int]]:
    """[(start, end)] face ranges, one per identity (see the module note)."""
    m = 1 if masks is None else int(masks.shape[0] if masks.ndim == 3 else 1)
    if n_faces % m:
        raise VisageError(
            f"{n_faces} reference faces cannot be split into {m} identities",
            expected=f"a multiple of {m} faces (each identity the same number of reference photos, in order)",
            got=f"{n_faces} faces",
            fix="give each identity the same number of reference faces, or one mask per identity",
        )
    k = n_faces // m
    return [(i * k, (i + 1) * k) for i in range(m)]


def identity_kv(
    module, kind: str, id_cond: torch.Tensor, hidden: Sequence[torch.Tensor], groups, num_zero: int, id_mix=False
):
    """Per layer (k, v) [2, I, T + num_zero, W] for the identities of ``groups``."""
    conds, unconds = [], []
    for a, b in groups:
        c, u = S.sdxl_tokens(module.encoder, kind, id_cond[a:b], [h[a:b] for h in hidden], id_mix=id_mix)
        conds.append(c)
        unconds.append(u)
    return S.project_kv(module.layers, torch.cat(conds), torch.cat(unconds), num_zero)


def _module(pulid):
    ready = getattr(pulid, "ready", None)
    return ready() if callable(ready) else pulid.handle.model()


def apply_pulid_sdxl(
    model,
    pulid,
    eva,
    parser,
    faces,
    image: torch.Tensor,
    weight: float,
    start_at: float,
    end_at: float,
    method: str = "official",
    masks: Optional[torch.Tensor] = None,
    num_zero: int = -1,
    id_mix: bool = False,
    on_no_face: str = "error",
    recognizer_override: str = "",
    text_attention=None,
    progress: Optional[Callable[[int, int], None]] = None,
):
    """The patched clone of ``model`` (``model`` itself when no face is left under passthrough / skip)."""
    info = getattr(pulid, "info", None)
    if info is None or info.kind not in (SDXL_V1, SDXL_V1_1):
        raise VisageError(
            "Apply PuLID SDXL needs a PuLID SDXL file",
            expected="pulid_v1.bin, pulid_v1.1.safetensors or ip-adapter_pulid_sdxl_fp16.safetensors",
            got=KIND_NAMES.get(getattr(info, "kind", ""), type(pulid).__name__),
            fix="load a PuLID SDXL file with 'Load PuLID Model' (PuLID-FLUX has its own apply node)",
        )
    if end_at < start_at:
        raise VisageError(
            "end_at is before start_at",
            expected="start_at <= end_at",
            got=f"start_at={start_at}, end_at={end_at}",
            fix="swap the two values",
        )
    nz, projection = S.method_settings(method, info.kind)
    if num_zero >= 0:
        nz = int(num_zero)
    faces, _ = apply_on_no_face(faces, on_no_face, f"{METHOD} reference images")
    flat = faces.flat()
    if not flat:
        log.warning("Visage: %s: no reference face (on_no_face=%s): the model is passed through", METHOD, on_no_face)
        return model
    if masks is not None:
        masks = (masks.unsqueeze(0) if masks.ndim == 2 else masks).float().clamp(0, 1)
    groups = groups_for(len(flat), masks)
    emb = method_embeddings(METHOD, TRAINED_ON, faces, None, normed=False, dim=512, override=recognizer_override)
    images = frames_for(image, faces, "image")
    tower = eva.handle.model()
    dev = next(tower.parameters()).device
    face_img = face_images(images.to(dev).float(), faces, parser)
    id_cond, hidden = reference_inputs(tower, emb, face_img, progress)
    module = _module(pulid)
    kv = identity_kv(module, info.kind, id_cond, hidden, groups, nz, id_mix)
    ms = model.get_model_object("model_sampling")
    out = S.apply_patch(
        model,
        info,
        kv,
        float(weight),
        ms.percent_to_sigma(start_at),
        ms.percent_to_sigma(end_at),
        masks,
        projection,
        text_attention,
    )
    log.info(
        "Visage: %s (%s, num_zero %d, %s): %d identit%s from %d reference face(s), weight %.2f",
        METHOD,
        method,
        nz,
        projection,
        len(groups),
        "y" if len(groups) == 1 else "ies",
        len(flat),
        weight,
    )
    return out

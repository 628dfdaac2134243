"""Per-face identity for the detailer: which reference row each face gets, and the hook that puts that
identity on the MODEL / conditioning for the face's own sampling (no ComfyUI imports: ComfyUI's side
comes in through ``glue``, as for the adapters).

A hook is ``hook(glue, model, positive, negative, adapter, embeds, weight, job, **extra)`` returning
``(model, positive, negative)`` for one face: ``embeds`` is a one-row FaceEmbeds (the face's identity),
``job`` the face's crop (``job.kps_crop`` its keypoints in crop pixels, ``job.size`` the crop side) so
keypoint-driven methods (InstantID's IdentityNet, InfiniteYou) draw their keypoint image in the crop.
Hooks are registered per adapter kind (``AdapterRef.info.kind``) with :func:`register_hook`; InstantID
and IP-Adapter FaceID (from embeds), PuLID SDXL and PuLID-FLUX (from the reference face image: PuLID needs
EVA-CLIP features of the parsed face as well as the embedding) and InfiniteYou (from embeds; its keypoint
image drawn in the crop, InfuseNet = the detailer's control_net) are here.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ...core.errors import VisageError
from ...core.select import similarities
from ...core.types import Face, FaceEmbeds
from ..adapters import methods as _methods  # noqa: F401 - registers every identity method
from ..adapters import registry
from ..adapters.identity import keypoint_hints
from ..adapters.loaders import FACEID, FACEID_PLUS, FACEID_PORTRAIT, FACEID_PORTRAIT_UNNORM, INSTANTID
from ..pulid.loaders import FLUX as PULID_FLUX
from ..pulid.loaders import SDXL_V1 as PULID_SDXL_V1
from ..pulid.loaders import SDXL_V1_1 as PULID_SDXL_V1_1

HOOKS: Dict[str, Callable] = {}
INFINITEYOU = "infiniteyou"
IDENTITY_MAPS = ("index", "most_similar")


def register_hook(kinds: Sequence[str], hook: Callable) -> None:
    for k in kinds:
        HOOKS[k] = hook


def adapter_kind(adapter) -> Optional[str]:
    """The hook key of an identity payload: ``info.kind`` (adapters, PuLID), 'infiniteyou' for InfiniteYou."""
    from ..infiniteyou.apply import InfiniteYouRef

    if isinstance(adapter, InfiniteYouRef):
        return INFINITEYOU
    return getattr(getattr(adapter, "info", None), "kind", None)


def hook_for(adapter) -> Callable:
    kind = adapter_kind(adapter)
    if kind not in HOOKS:
        raise VisageError(
            "The detailer cannot apply this identity adapter per face",
            expected="an adapter of kind " + " / ".join(sorted(HOOKS)),
            got=str(kind or type(adapter).__name__),
            fix="apply the adapter to the MODEL before the detailer (one identity for every face), or use "
            "InstantID / IP-Adapter FaceID",
        )
    return HOOKS[kind]


def embeds_row(embeds: FaceEmbeds, row: int) -> FaceEmbeds:
    """Row ``row`` of ``embeds`` as a one-identity FaceEmbeds (every recognizer it carries)."""
    return FaceEmbeds(
        raw=embeds.raw[row : row + 1],
        normed=embeds.normed[row : row + 1],
        encoder=embeds.encoder,
        sources=(embeds.sources[row],) if len(embeds.sources) > row else (1,),
        fusion=embeds.fusion,
        extra={k: v[row : row + 1] for k, v in embeds.extra.items()},
    )


def map_identities(
    faces: Sequence[Sequence[Face]], reference: Optional[FaceEmbeds], mode: str = "index"
) -> Tuple[List[List[Optional[int]]], List[List[Optional[str]]]]:
    """Reference row per face (and a skip reason where a face has none). 'index': face j of each image
    takes row j (one row: every face takes it); 'most_similar': the row the face's own embedding is
    closest to (the faces must carry a recognizer the reference has)."""
    if mode not in IDENTITY_MAPS:
        raise VisageError(f"Unknown identity_map '{mode}'", expected=" / ".join(IDENTITY_MAPS), got=repr(mode))
    ids: List[List[Optional[int]]] = []
    skip: List[List[Optional[str]]] = []
    for per in faces:
        ids.append([])
        skip.append([])
        for j, f in enumerate(per):
            if reference is None:
                ids[-1].append(None)
                skip[-1].append(None)
            elif mode == "most_similar":
                ids[-1].append(int(torch.argmax(similarities(f, reference))))
                skip[-1].append(None)
            elif reference.count == 1 or j < reference.count:
                ids[-1].append(0 if reference.count == 1 else j)
                skip[-1].append(None)
            else:
                ids[-1].append(None)
                skip[-1].append(
                    f"no identity for face {j}: the reference has {reference.count} row(s) "
                    "(identity_map = index; use most_similar or give one row per face)"
                )
    return ids, skip


def _instantid(glue, model, positive, negative, adapter, embeds, weight, job, control_net=None, cn_strength=0.8, **_):
    hints = keypoint_hints([job.kps_crop], (job.size, job.size), per_identity=False)
    m, pos, neg, _ = registry.run(
        "instantid",
        glue,
        model=model,
        positive=positive,
        negative=negative,
        instantid=adapter,
        ip_weight=weight,
        cn_strength=cn_strength,
        start_at=0.0,
        end_at=1.0,
        noise=0.0,
        embeds=embeds,
        control_net=control_net,
        keypoints_image=hints,
    )
    return m, pos, neg


def _faceid(glue, model, positive, negative, adapter, embeds, weight, job, **_):
    if adapter.info.kind == FACEID_PLUS:
        raise VisageError(
            "FaceID Plus needs CLIP-vision features of the face image; the detailer does not apply it per face",
            expected="IP-Adapter FaceID / Portrait, or InstantID",
            got=adapter.info.describe(),
            fix="apply FaceID Plus to the MODEL before the detailer",
        )
    (m,) = registry.run(
        "faceid",
        glue,
        model=model,
        faceid=adapter,
        weight=weight,
        start_at=0.0,
        end_at=1.0,
        plus_version="auto",
        shortcut_scale=1.0,
        lora_name="embedded",
        lora_strength=1.0,
        embeds=embeds,
    )
    return m, positive, negative


register_hook((INSTANTID,), _instantid)
register_hook((FACEID, FACEID_PORTRAIT, FACEID_PORTRAIT_UNNORM, FACEID_PLUS), _faceid)


def reference_face(ref_faces, ref_image: torch.Tensor, row: int):
    """(one-face FaceSet, its frame [1,H,W,3]) of reference face ``row`` (the faces of ``ref_faces`` in
    order, image by image): the reference image of identity row ``row`` for image-based methods (PuLID)."""
    from ...core.types import FaceSet

    k = 0
    for b, per in enumerate(ref_faces.faces):
        for f in per:
            if k == row:
                frame = ref_image[b : b + 1] if ref_image.shape[0] > b else ref_image[:1]
                return FaceSet(((f,),), (tuple(int(v) for v in frame.shape[1:3]),)), frame
            k += 1
    raise VisageError(
        "No reference face for this identity row",
        expected=f"reference_faces with at least {row + 1} face(s) (one per identity row, in order)",
        got=f"{ref_faces.count} face(s)",
        fix="give PuLID the same reference faces the Face Embeds were made from",
    )


def _need_images(kw, what):
    missing = [k for k in ("eva_clip", "parser", "ref_faces", "ref_image") if kw.get(k) is None]
    if missing:
        raise VisageError(
            f"The detailer needs the reference face images to apply {what} per face",
            expected="eva_clip (Load EVA-CLIP), reference_image and reference_faces (the faces the reference "
            "embeds were made from, one per identity row)",
            got="missing: " + ", ".join(missing),
        )


def _pulid_sdxl(glue, model, positive, negative, adapter, embeds, weight, job, **kw):
    from ..pulid.sdxl_apply import apply_pulid_sdxl

    _need_images(kw, "PuLID SDXL")
    faces, frame = reference_face(kw["ref_faces"], kw["ref_image"], job.identity)
    m = apply_pulid_sdxl(
        model,
        adapter,
        kw["eva_clip"],
        kw["parser"],
        faces,
        frame,
        weight,
        0.0,
        1.0,
        text_attention=kw.get("text_attention"),
    )
    return m, positive, negative


def _pulid_flux(glue, model, positive, negative, adapter, embeds, weight, job, **kw):
    from ..pulid.flux_apply import apply_pulid_flux

    _need_images(kw, "PuLID-FLUX")
    faces, frame = reference_face(kw["ref_faces"], kw["ref_image"], job.identity)
    m = apply_pulid_flux(model, adapter, kw["eva_clip"], kw["parser"], faces, frame, weight, 0.0, 1.0)
    return m, positive, negative


register_hook((PULID_SDXL_V1, PULID_SDXL_V1_1), _pulid_sdxl)
register_hook((PULID_FLUX,), _pulid_flux)


def _infiniteyou(glue, model, positive, negative, adapter, embeds, weight, job, control_net=None, vae=None, **_):
    from ..infiniteyou.apply import apply_infiniteyou

    if control_net is None:
        raise VisageError(
            "InfiniteYou needs its InfuseNet",
            expected="the InfuseNet ControlNet on the detailer's control_net input",
            got="no control_net",
            fix="load InfiniteYou's infusenet file with 'Load ControlNet Model' and connect it",
        )
    hints = keypoint_hints([job.kps_crop], (job.size, job.size), per_identity=False)
    pos, neg, _ = apply_infiniteyou(
        positive,
        negative,
        control_net,
        adapter,
        weight,
        0.0,
        1.0,
        embeds=embeds,
        keypoints_image=hints,
        device=glue.intermediate_device() if glue is not None else "cpu",
        vae=vae,
    )
    return model, pos, neg


register_hook((INFINITEYOU,), _infiniteyou)

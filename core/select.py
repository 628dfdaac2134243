"""Choosing faces: order, filter, pick — and fusing several faces into one identity.

The analysis node orders every detected face of an image (the order is what the preview numbers
and what the face picker clicks), then ``face_index`` picks one (-1 keeps all) and ``max_faces``
caps the count.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .errors import VisageError
from .types import Face, FaceEmbeds, FaceSet

ORDERS = (
    "largest",
    "left_to_right",
    "right_to_left",
    "top_to_bottom",
    "bottom_to_top",
    "score",
    "most_similar",
    "detector",
)
GENDERS = ("any", "female", "male")
FUSIONS = ("norm_mean", "mean", "median", "outlier_rejection", "none")


def similarity(face: Face, reference: FaceEmbeds) -> float:
    """Best cosine similarity between ``face`` and any reference identity."""
    if face.normed_embedding is None:
        raise VisageError(
            "A face has no embedding to compare",
            expected="faces analysed with a recognition model",
            got="faces without embeddings",
            fix="use a model pack with a recognizer (e.g. buffalo_l)",
        )
    e = face.normed_embedding.float().cpu()
    if e.shape[-1] != reference.dim:
        raise VisageError(
            "The reference embedding comes from another recognizer",
            expected=f"{e.shape[-1]}-d embeddings ({face.encoder})",
            got=f"{reference.dim}-d embeddings ({reference.encoder})",
            fix="build the reference with the same analysis pack as the faces",
        )
    return float((reference.normed.float() @ e).max())


def order_faces(faces: Sequence[Face], order: str, reference: Optional[FaceEmbeds] = None) -> List[Face]:
    if order not in ORDERS:
        raise VisageError(f"Unknown face order '{order}'", expected=" / ".join(ORDERS), got=order)
    faces = list(faces)
    if order == "detector":
        return faces
    if order == "largest":
        return sorted(faces, key=lambda f: -f.area)
    if order == "left_to_right":
        return sorted(faces, key=lambda f: f.center[0])
    if order == "right_to_left":
        return sorted(faces, key=lambda f: -f.center[0])
    if order == "top_to_bottom":
        return sorted(faces, key=lambda f: f.center[1])
    if order == "bottom_to_top":
        return sorted(faces, key=lambda f: -f.center[1])
    if order == "score":
        return sorted(faces, key=lambda f: -f.score)
    if reference is None:
        raise VisageError(
            "Face order 'most_similar' needs a reference identity",
            expected="a VISAGE_EMBEDS connected to 'reference'",
            got="nothing connected",
            fix="connect Face Embeds / Load Face Embeds to 'reference', or choose another order",
        )
    return sorted(faces, key=lambda f: -similarity(f, reference))


def filter_faces(faces: Sequence[Face], gender: str = "any", min_score: float = 0.0) -> List[Face]:
    if gender not in GENDERS:
        raise VisageError(f"Unknown gender filter '{gender}'", expected=" / ".join(GENDERS), got=gender)
    out = [f for f in faces if f.score >= min_score]
    if gender != "any":
        want = "F" if gender == "female" else "M"
        if any(f.gender is None for f in out):
            raise VisageError(
                "Gender filtering needs a gender/age model",
                expected="a pack with genderage.onnx",
                got="faces without gender",
                fix="use a full pack (antelopev2 / buffalo_l) or set gender to 'any'",
            )
        out = [f for f in out if f.gender == want]
    return out


def select(
    faceset: FaceSet,
    order: str = "largest",
    gender: str = "any",
    face_index: int = -1,
    max_faces: int = 0,
    min_score: float = 0.0,
    reference: Optional[FaceEmbeds] = None,
) -> Tuple[FaceSet, List[List[Face]]]:
    """Returns (selected FaceSet, ordered candidates per image).

    ``face_index`` >= 0 keeps only that position of the ordering (an image with fewer faces keeps
    none); ``max_faces`` > 0 keeps at most that many.
    """
    chosen, ordered_all = [], []
    for faces in faceset.faces:
        cands = order_faces(filter_faces(faces, gender, min_score), order, reference)
        ordered_all.append(cands)
        if face_index >= 0:
            pick = [cands[face_index]] if face_index < len(cands) else []
        else:
            pick = list(cands)
        if max_faces > 0:
            pick = pick[:max_faces]
        chosen.append(tuple(pick))
    sel = f"order={order} gender={gender} face_index={face_index} max_faces={max_faces} min_score={min_score}"
    return FaceSet(
        faces=tuple(chosen), image_sizes=faceset.image_sizes, analyzer=faceset.analyzer, selection=sel
    ), ordered_all


def drop_images(faceset: FaceSet, keep: Sequence[int]) -> FaceSet:
    """A FaceSet of only the images ``keep`` (re-indexed 0..len(keep)-1)."""
    faces = []
    for new_i, old_i in enumerate(keep):
        faces.append(tuple(f.with_(image_index=new_i) for f in faceset.faces[old_i]))
    return FaceSet(
        faces=tuple(faces),
        image_sizes=tuple(faceset.image_sizes[i] for i in keep),
        analyzer=faceset.analyzer,
        selection=faceset.selection,
    )


# ----------------------------------------------------------------------------- fusion


def embeds_from_faces(faceset: FaceSet, fusion: str = "norm_mean", outlier_threshold: float = 0.3) -> FaceEmbeds:
    faces = [f for f in faceset.flat()]
    if not faces:
        raise VisageError(
            "No face to take an identity from",
            expected="at least one analysed face",
            got="0 faces",
            fix="check the images, or the face selection of Analyze Faces",
        )
    missing = [i for i, f in enumerate(faces) if f.embedding is None]
    if missing:
        raise VisageError(
            "Faces have no embeddings",
            expected="faces analysed with a recognition model",
            got=f"{len(missing)} face(s) without an embedding",
            fix="use a model pack with a recognizer (antelopev2 / buffalo_l)",
        )
    encoders = {f.encoder for f in faces}
    if len(encoders) > 1:
        raise VisageError(
            "Faces come from different recognizers",
            expected="one recognizer",
            got=str(sorted(encoders)),
            fix="analyse all reference images with one pack",
        )
    raw = torch.stack([f.embedding.float().cpu() for f in faces])
    return fuse(raw, faces[0].encoder or "unknown", fusion, outlier_threshold)


def fuse(raw: torch.Tensor, encoder: str, fusion: str = "norm_mean", outlier_threshold: float = 0.3) -> FaceEmbeds:
    """Fuse K raw embeddings [K,D] into one identity (or keep them all with 'none').

    norm_mean: mean of the unit vectors (the raw row keeps the mean raw norm, so InstantID-style
    consumers see the magnitude they expect); mean: mean of raw vectors; median: element-wise
    median of unit vectors; outlier_rejection: drop faces whose cosine to the robust mean is below
    ``outlier_threshold`` (keeps at least the closest one), then norm_mean.
    """
    if fusion not in FUSIONS:
        raise VisageError(f"Unknown fusion '{fusion}'", expected=" / ".join(FUSIONS), got=fusion)
    raw = raw.float()
    k = raw.shape[0]
    if fusion == "none":
        return FaceEmbeds.from_raw(raw, encoder, (1,) * k, "none")
    norms = raw.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    unit = raw / norms
    if fusion == "mean":
        return FaceEmbeds.from_raw(raw.mean(0, keepdim=True), encoder, (k,), "mean")
    if fusion == "median":
        d = unit.median(0).values
    else:
        used = unit
        if fusion == "outlier_rejection" and k > 2:
            robust = unit.median(0).values
            robust = robust / robust.norm().clamp_min(1e-12)
            cos = unit @ robust
            keep = cos >= outlier_threshold
            if not bool(keep.any()):
                keep = cos == cos.max()
            used = unit[keep]
            norms = norms[keep]
        d = used.mean(0)
    d = d / d.norm().clamp_min(1e-12)
    raw_f = (d * norms.mean()).unsqueeze(0)
    return FaceEmbeds.from_raw(raw_f, encoder, (int(norms.shape[0]),), fusion)

"""Choosing faces: order, filter, pick — and fusing several faces into one identity.

The analysis node orders every detected face of an image (the order is what the preview numbers
and what the face picker clicks), then ``face_index`` picks one (-1 keeps all) and ``max_faces``
caps the count.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple

import torch

from .errors import NoFaceError, VisageError
from .types import Face, FaceEmbeds, FaceSet

log = logging.getLogger("visage")

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


def similarities(face: Face, reference: FaceEmbeds) -> torch.Tensor:
    """Cosine similarity [K] between ``face`` and each reference identity, in the reference's recognizer
    space (or another recognizer both carry)."""
    if not face.recognizers:
        raise VisageError(
            "A face has no embedding to compare",
            expected="faces analysed with a recognition model",
            got="faces without embeddings",
            fix="use a model pack with a recognizer (e.g. buffalo_l)",
        )
    for rid in reference.recognizers:
        raw = face.embedding_for(rid)
        if raw is not None:
            ref = reference.for_recognizer(rid, normed=True).float()
            e = raw.float().cpu()
            e = e / e.norm().clamp_min(1e-12)
            if e.shape[-1] == ref.shape[-1]:
                return ref @ e
    unknown = (None, "", "unknown")
    if face.embedding is not None and (face.encoder in unknown or reference.encoder in unknown):
        e = face.embedding.float().cpu()  # one side does not say its recognizer: compare what both have
        if e.shape[-1] == reference.dim:
            return reference.normed.float() @ (e / e.norm().clamp_min(1e-12))
    raise VisageError(
        "The reference embedding comes from another recognizer",
        expected=f"embeddings of a recognizer the faces carry ({', '.join(face.recognizers)})",
        got=f"embeddings of {', '.join(reference.recognizers)}",
        fix="build the reference from faces analysed with the same recognizer as these faces",
    )


def similarity(face: Face, reference: FaceEmbeds) -> float:
    """Best cosine similarity between ``face`` and any reference identity."""
    return float(similarities(face, reference).max())


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


PICKS = ("largest", "index", "center", "identity")


def pick_face(
    faces: Sequence[Face],
    mode: str = "largest",
    index: int = 0,
    reference: Optional[FaceEmbeds] = None,
    image_size: Optional[Tuple[int, int]] = None,
) -> Optional[Face]:
    """One face of one image, in the vocabulary of Analyze Faces: the largest; the one at ``index`` of the
    faces' order (face_index: the number the preview shows); the one nearest the image centre; the one
    most like ``reference`` (order 'most_similar'). None when the image has no face (or ``index`` is out
    of range)."""
    if mode not in PICKS:
        raise VisageError("Unknown face selection", expected=", ".join(PICKS), got=repr(mode))
    if not faces:
        return None
    if mode == "index":
        return faces[index] if -len(faces) <= index < len(faces) else None
    if mode == "largest":
        return order_faces(faces, "largest")[0]
    if mode == "center":
        if image_size is None:
            raise VisageError("center selection needs the image size", expected="image_size", got="None")
        h, w = image_size
        return min(faces, key=lambda f: (f.center[0] - w / 2) ** 2 + (f.center[1] - h / 2) ** 2)
    if reference is None:
        raise VisageError(
            "Face selection 'identity' needs a reference",
            expected="a VISAGE_EMBEDS input (reference)",
            got="nothing connected",
            fix="connect Face Embeds of the person, or pick another selection",
        )
    return order_faces(faces, "most_similar", reference)[0]


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
    """A FaceSet of only the images ``keep`` (re-indexed 0..len(keep)-1); it remembers which images of
    the analysed batch it kept, so consumers given the whole batch follow its indices."""
    faces = []
    for new_i, old_i in enumerate(keep):
        faces.append(tuple(f.with_(image_index=new_i) for f in faceset.faces[old_i]))
    rows = faceset.source_indices or tuple(range(faceset.batch_size))
    return FaceSet(
        faces=tuple(faces),
        image_sizes=tuple(faceset.image_sizes[i] for i in keep),
        analyzer=faceset.analyzer,
        selection=faceset.selection,
        source_indices=tuple(rows[i] for i in keep),
        source_batch=faceset.analysed_batch,
    )


# ----------------------------------------------------------------------------- no-face policy

ON_NO_FACE = ("error", "skip", "passthrough")
ON_NO_FACE_TIP = (
    "What to do when an image has no face: 'error' stops the run naming the images; 'skip' leaves those "
    "images out (Analyze Faces' 'image' output holds the kept ones; every Visage node given the whole batch "
    "follows the kept indices); 'passthrough' keeps them (no faces, count 0) so headless servers never fail "
    "on an empty frame."
)


def apply_on_no_face(faceset: FaceSet, policy: str, where: str = "image batch") -> Tuple[FaceSet, List[int]]:
    """The one on_no_face rule: returns (faces, kept image indices). 'error' raises NoFaceError naming
    the images; 'skip' drops images without a face (all of them kept when none has a face, with a
    warning, so a graph never receives an empty batch); 'passthrough' keeps everything."""
    if policy not in ON_NO_FACE:
        raise VisageError(f"Unknown on_no_face '{policy}'", expected=" / ".join(ON_NO_FACE), got=repr(policy))
    empty = faceset.images_without_face()
    everything = list(range(faceset.batch_size))
    if not empty:
        return faceset, everything
    if policy == "error":
        raise NoFaceError(empty, where=where)
    if policy == "skip":
        keep = [i for i in everything if faceset.faces[i]]
        if keep:
            return drop_images(faceset, keep), keep
        log.warning("Visage: no image of the %s has a face; 'skip' leaves nothing, passing the batch through", where)
    log.info("Visage: no face in %s item(s) %s (on_no_face=%s)", where, list(empty), policy)
    return faceset, everything


def rows_for(faceset: FaceSet, n_images: int, what: str = "image") -> Tuple[int, ...]:
    """Which image of an ``n_images`` batch each entry of ``faceset`` describes (the same batch, or the
    whole analysed batch when Analyze Faces skipped images without a face); a clear error otherwise."""
    rows = faceset.rows_for(int(n_images))
    if rows is None:
        expected = f"{faceset.batch_size} image(s) (the batch the faces describe)"
        if faceset.source_indices:
            expected += f" or the {faceset.source_batch} analysed"
        raise VisageError(
            f"'{what}' is not the one the faces were found in",
            expected=expected,
            got=f"{n_images} image(s)",
            fix="connect the IMAGE that went into Analyze Faces (or Analyze Faces' 'image' output)",
        )
    return rows


def expand_to(faceset: FaceSet, n_images: int, what: str = "image") -> FaceSet:
    """Faces for every image of an ``n_images`` batch: after 'skip' the left-out images get no face
    (so they pass through), and each face's image_index is its frame in that batch."""
    rows = rows_for(faceset, n_images, what)
    if list(rows) == list(range(n_images)):
        return faceset
    per = [()] * n_images
    sizes = [faceset.image_sizes[0] if faceset.image_sizes else (0, 0)] * n_images
    for k, r in enumerate(rows):
        per[r] = tuple(f.with_(image_index=r) for f in faceset.faces[k])
        sizes[r] = faceset.image_sizes[k]
    return FaceSet(faces=tuple(per), image_sizes=tuple(sizes), analyzer=faceset.analyzer, selection=faceset.selection)


def frames_for(images: torch.Tensor, faceset: FaceSet, what: str = "image") -> torch.Tensor:
    """The frames of ``images`` the faces describe, in the faces' order."""
    rows = rows_for(faceset, int(images.shape[0]), what)
    if list(rows) == list(range(images.shape[0])):
        return images
    return images[list(rows)]


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
    primary = fuse(raw, faces[0].encoder or "unknown", fusion, outlier_threshold)
    # every other recognizer all the faces carry, fused the same way (one identity, several spaces)
    extra = {}
    for rid in faces[0].recognizers:
        if rid == primary.encoder or any(f.embedding_for(rid) is None for f in faces):
            continue
        other = torch.stack([f.embedding_for(rid).float().cpu() for f in faces])
        extra[rid] = fuse(other, rid, fusion, outlier_threshold).raw
    if not extra:
        return primary
    return FaceEmbeds.from_raw(primary.raw, primary.encoder, primary.sources, primary.fusion, extra=extra)


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

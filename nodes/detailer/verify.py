"""Identity scores of faces in an image against reference identities (no ComfyUI): the recognizer's
embedding of each face (at its re-detected keypoints, or at its known position when detection does not
find it there) against the face's reference row, a pass/fail per face and an overlay."""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch

from ...core.errors import VisageError
from ...core.images import from_uint8_np, to_uint8_np
from ...core.types import Face, FaceEmbeds


def reference_rows(reference: FaceEmbeds, recognizer_id: str) -> torch.Tensor:
    """[K,D] normalised rows of ``reference`` in the scoring recognizer's space."""
    ref = reference.for_recognizer(recognizer_id, normed=True)
    if ref is None:
        raise VisageError(
            f"The reference identities carry no {recognizer_id} embedding",
            expected=f"embeds made from faces that carry {recognizer_id}",
            got="recognizers " + ", ".join(reference.recognizers),
            fix=f"run 'Add Face Recognizer' with {recognizer_id} on the reference faces (or pick a recognizer "
            "the reference has)",
        )
    return ref.float()


def embed_at(recognizer, frame: torch.Tensor, kps: Sequence[np.ndarray]) -> torch.Tensor:
    """[N,D] normalised embeddings of the faces at ``kps`` (each [5,2]) in ``frame`` [1,H,W,3] 0..1."""
    if not len(kps):
        return torch.zeros((0, 1))
    img_u8 = (frame[:1].float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    k = np.stack([np.asarray(p, np.float32)[:5, :2] for p in kps])
    e = torch.from_numpy(recognizer.embed_crops(img_u8, k, torch.zeros(len(k), dtype=torch.long)))
    return e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def make_scorer(recognizer, reference: FaceEmbeds):
    """score(frame [1,H,W,3], job) -> cosine of the face at its known keypoints to its reference row."""
    ref = reference_rows(reference, recognizer.id)

    def score(frame, job):
        e = embed_at(recognizer, frame, [job.face.kps.detach().cpu().numpy()])[0]
        return float(ref[job.identity] @ e)

    return score


def iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = [float(v) for v in a]
    bx1, by1, bx2, by2 = [float(v) for v in b]
    iw, ih = max(0.0, min(ax2, bx2) - max(ax1, bx1)), max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def verify(
    images: torch.Tensor,
    faces: Sequence[Sequence[Face]],
    identities: Sequence[Sequence[Optional[int]]],
    recognizer,
    reference: FaceEmbeds,
    threshold: float,
    detected: Optional[Sequence[Sequence[Face]]] = None,
    min_iou: float = 0.3,
    progress=None,
) -> List[dict]:
    """One row per face: its score against its reference row at the re-detected face (``detected``: the
    faces found again in ``images``, matched by box overlap >= ``min_iou``) or at its known position."""
    ref = reference_rows(reference, recognizer.id)
    rows = []
    for b, per in enumerate(faces):
        if progress is not None:
            progress(b, len(faces))
        kps, where = [], []
        for f in per:
            found = None
            if detected is not None:
                cands = [(iou(f.bbox, d.bbox), d) for d in detected[b]]
                cands = [c for c in cands if c[0] >= min_iou]
                if cands:
                    found = max(cands, key=lambda c: c[0])[1]
            src = found if found is not None else f
            kps.append(src.kps.detach().cpu().numpy())
            where.append(("redetected", src) if found is not None else ("known_position", src))
        emb = embed_at(recognizer, images[b : b + 1], kps) if kps else None
        for j in range(len(per)):
            ident = identities[b][j]
            row = {"image": b, "face": j, "identity": ident, "located": where[j][0]}
            row["bbox"] = [round(float(v), 1) for v in where[j][1].bbox]
            if ident is None:
                row.update(score=None, passed=None, reason="no reference identity for this face")
            else:
                s = float(ref[ident] @ emb[j])
                row.update(score=round(s, 4), passed=bool(s >= threshold))
            rows.append(row)
    return rows


def overlay(images: torch.Tensor, rows: Sequence[dict], threshold: float) -> torch.Tensor:
    """The images with each face's box and score (green: passed, red: failed, grey: no reference)."""
    import cv2

    out = []
    for b in range(images.shape[0]):
        img = np.ascontiguousarray(to_uint8_np(images[b]))
        for r in rows:
            if r["image"] != b:
                continue
            x1, y1, x2, y2 = [int(round(v)) for v in r["bbox"]]
            col = (170, 170, 170) if r["score"] is None else (40, 220, 90) if r["passed"] else (230, 80, 60)
            cv2.rectangle(img, (x1, y1), (x2, y2), col, 2)
            label = "-" if r["score"] is None else f"{r['score']:.2f}"
            cv2.putText(img, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, col, 2)
        out.append(from_uint8_np(img))
    return torch.stack(out) if out else images.clone()

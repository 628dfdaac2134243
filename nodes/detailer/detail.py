"""The identity-guarded face detailer, as plain maths (no ComfyUI).

For each selected face: crop with context at the working resolution (``geometry``), re-sample the face
region with an injected ``sample`` function (node.py: VAE encode -> ComfyUI's sampler with a noise mask ->
VAE decode, with the face's own identity patch), paste back with feather and colour transfer, and - when a
``score`` function is given (a recognizer against the face's reference identity) - verify and retry:
attempt ``a`` samples with seed ``seed + a``; the loop stops at the first attempt whose score reaches
``min_similarity`` or after ``attempts``; the input face is candidate 0, so the kept result never scores
below it. ``progress(done, total)`` is called before every face and every attempt (ComfyUI's progress
raises there on cancel).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from ...core.errors import VisageError
from ...core.types import Face
from ..paste import color_stats, feather_masks
from .geometry import MIN_SIZE, crop_keypoints, crop_with_context, noise_mask, paste_crop, plan_crop, region_noise_mask

log = logging.getLogger("visage")

SEED_MAX = 0xFFFFFFFFFFFFFFFF


@dataclass
class FaceJob:
    """What the sample / score functions get for one face."""

    image_index: int  # frame of the batch
    face_index: int  # position of the face among its frame's selected faces
    face: Face
    identity: Optional[int]  # reference row (None: no reference)
    matrix: np.ndarray  # [2,3] image px -> crop px
    size: int
    kps_crop: np.ndarray  # [5,2] keypoints in crop pixels
    state: dict = field(default_factory=dict)  # per-face cache for the sample function (patched models)


@dataclass
class Settings:
    size: int = 512
    context: float = 1.0
    max_upscale: float = 8.0
    seed: int = 0
    attempts: int = 1
    min_similarity: float = 0.0
    feather: float = 0.05
    mask_grow: float = 0.08
    color_transfer: bool = False
    paste_mode: str = "full"  # full | residual (geometry.paste_crop)


def seed_for(seed: int, attempt: int) -> int:
    """Attempt ``attempt`` (1-based) samples with seed + attempt - 1 (wrapping like ComfyUI's 64-bit seeds)."""
    return (int(seed) + int(attempt) - 1) & SEED_MAX


def detail(
    images: torch.Tensor,
    faces: Sequence[Sequence[Face]],
    identities: Sequence[Sequence[Optional[int]]],
    sample: Callable[[torch.Tensor, torch.Tensor, FaceJob, int], torch.Tensor],
    settings: Settings,
    score: Optional[Callable[[torch.Tensor, FaceJob], float]] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    skip: Optional[Sequence[Sequence[Optional[str]]]] = None,
    mask_fn: Optional[Callable[[torch.Tensor, Face, np.ndarray, int], Optional[torch.Tensor]]] = None,
):
    """images [B,H,W,3] float 0..1; faces[b] the faces to detail in frame b; identities[b][j] the reference
    row of face j (None: no reference, then no scoring). ``sample(crop [1,S,S,3], mask [1,S,S], job, seed)``
    -> new crop [1,S,S,3]; ``score(frame [1,H,W,3], job)`` -> similarity of the face in that frame to its
    reference. ``skip[b][j]``: a reason decided by the caller (no identity for that face). ``mask_fn(frame
    [1,H,W,3], face, matrix, size)`` -> [1,S,S] noise mask in crop space (face parsing), or None for the
    landmark mask.

    Returns (images [B,H,W,3], rows): one row per face - image, face, identity, status (detailed | kept_input
    | skipped), reason, input score, every attempt's seed and score, the winning attempt (0 = the input) and
    its score."""
    if settings.size < MIN_SIZE or settings.size % 8:
        raise VisageError(
            "The working resolution cannot be sampled",
            expected=f"a multiple of 8, at least {MIN_SIZE}",
            got=str(settings.size),
            fix="use 512 for SD1.5, 1024 for SDXL / Flux",
        )
    attempts = max(int(settings.attempts), 1)
    out = images.clone()
    rows: List[dict] = []
    total = sum(len(f) for f in faces) * attempts
    done = 0
    for b, frame_faces in enumerate(faces):
        for j, face in enumerate(frame_faces):
            if progress is not None:
                progress(done, total)  # cancel between faces
            ident = identities[b][j] if identities is not None else None
            row = {"image": b, "face": j, "identity": ident, "bbox": [round(float(v), 1) for v in face.bbox]}
            reason = skip[b][j] if skip is not None else None
            plan = plan_crop(face, settings.size, settings.context, settings.max_upscale)
            reason = reason or plan.skip_reason
            if reason:
                row.update(status="skipped", reason=reason, attempts=[], winner=None, score=None, input_score=None)
                if score is not None and ident is not None:
                    row["input_score"] = row["score"] = round(
                        float(score(out[b : b + 1], _job(b, j, face, ident, plan))), 4
                    )
                rows.append(row)
                log.info("Visage: detailer skipped face %d of image %d: %s", j, b, reason)
                done += attempts
                continue
            job = _job(b, j, face, ident, plan)
            crop = crop_with_context(out[b], plan.matrix, plan.size)
            mask = None if mask_fn is None else mask_fn(out[b : b + 1], face, plan.matrix, plan.size)
            if mask is None:
                mask = noise_mask(face, plan.matrix, plan.size, settings.mask_grow)
            else:
                mask = region_noise_mask(mask.to(out.device), plan.size, settings.mask_grow)
            scoring = score is not None and ident is not None
            best_frame, best_score, winner = None, None, None
            tried = []
            if scoring:
                best_frame, best_score, winner = out[b : b + 1], float(score(out[b : b + 1], job)), 0
                row["input_score"] = round(best_score, 4)
            else:
                row["input_score"] = None
            for a in range(1, attempts + 1):
                if a > 1 and progress is not None:
                    progress(done, total)  # cancel between attempts
                s = seed_for(settings.seed, a)
                new = sample(crop, mask, job, s).to(out.device, out.dtype).clamp(0, 1)
                if new.shape != crop.shape:
                    raise VisageError(
                        "The sampled face crop has another size than the crop",
                        expected=str(tuple(crop.shape)),
                        got=str(tuple(new.shape)),
                    )
                weights = feather_masks(1, plan.size, mask, erode_frac=settings.feather, blur_frac=settings.feather)
                stats = color_stats(new.float(), crop.float(), weights)[0] if settings.color_transfer else None
                cand = paste_crop(out[b : b + 1], new, plan.matrix, weights, crop, settings.paste_mode, stats)
                done += 1
                if not scoring:
                    best_frame, winner = cand, a
                    tried.append({"attempt": a, "seed": s, "score": None})
                    break
                sc = float(score(cand, job))
                tried.append({"attempt": a, "seed": s, "score": round(sc, 4)})
                if sc > best_score:
                    best_frame, best_score, winner = cand, sc, a
                if sc >= settings.min_similarity:
                    break
            done += attempts - len(tried)
            out[b : b + 1] = best_frame
            row.update(
                status="detailed" if winner else "kept_input",
                reason="" if winner else "no attempt scored above the input face",
                attempts=tried,
                winner=winner,
                score=None if best_score is None else round(best_score, 4),
                passed=None if best_score is None else bool(best_score >= settings.min_similarity),
            )
            rows.append(row)
    if progress is not None:
        progress(total, total)
    return out, rows


def masker_mask_fn(masker):
    """``detail``'s ``mask_fn`` from a Load Face Masker payload (``nodes.face.masks.FaceMasker``): its
    regions (face parsing) x occlusion on the face's crop, or None (landmark mask) without a masker."""
    if masker is None or not masker.active:
        return None
    from ..face.masks import crop_masks

    def mask_fn(frame, face, matrix, size):
        m = torch.from_numpy(np.asarray(matrix, np.float32)).unsqueeze(0)
        return crop_masks(masker, frame, m, [0], size, kps=[face.kps])

    return mask_fn


def _job(b, j, face, ident, plan) -> FaceJob:
    return FaceJob(b, j, face, ident, plan.matrix, plan.size, crop_keypoints(face, plan.matrix))

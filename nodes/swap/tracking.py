"""Face tracks across video frames and temporal smoothing of keypoints/boxes.

Tracking: frame by frame, each face is matched to the track whose last face overlaps it most
(IoU) and, when both have embeddings, looks most alike (cosine); greedy on the best pair first.
A face that matches nothing starts a new track; tracks survive ``max_gap`` frames without a face.

Smoothing: per track, a motion-adaptive exponential smoother run forwards and backwards
(zero phase, so no lag on a moving head): small frame-to-frame moves (detector jitter) are averaged
away, large moves (real motion) pass through. ``strength`` 0 = off, 1 = strongest.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ...core.types import FaceSet


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N,4] x [M,4] -> [N,M] IoU."""
    a = a[:, None, :]
    b = b[None, :, :]
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def track_faces(
    faceset: FaceSet, iou_weight: float = 1.0, embed_weight: float = 0.5, min_score: float = 0.2, max_gap: int = 5
) -> List[List[int]]:
    """Track id of every face: ``ids[i][j]`` for ``faceset.faces[i][j]``."""
    ids: List[List[int]] = []
    tracks: Dict[int, Tuple[np.ndarray, Optional[np.ndarray], int]] = {}  # id -> (box, emb, last frame)
    next_id = 0
    for i, faces in enumerate(faceset.faces):
        cur = [-1] * len(faces)
        live = [t for t, (_, _, last) in tracks.items() if i - last <= max_gap + 1]
        if faces and live:
            boxes = np.stack([f.bbox.detach().cpu().numpy().astype(np.float64) for f in faces])
            tboxes = np.stack([tracks[t][0] for t in live])
            score = iou_weight * box_iou(boxes, tboxes)
            for a, f in enumerate(faces):
                if f.normed_embedding is None:
                    continue
                e = f.normed_embedding.detach().cpu().numpy().astype(np.float64)
                for b, t in enumerate(live):
                    te = tracks[t][1]
                    if te is not None and te.shape == e.shape:
                        score[a, b] += embed_weight * float(e @ te)
            pairs = sorted(((score[a, b], a, b) for a in range(len(faces)) for b in range(len(live))), reverse=True)
            used_a, used_b = set(), set()
            for s, a, b in pairs:
                if s < min_score or a in used_a or b in used_b:
                    continue
                # a pair needs some overlap: identity alone must not teleport a track across the frame
                if box_iou(boxes[a : a + 1], tboxes[b : b + 1])[0, 0] <= 0.0:
                    continue
                cur[a] = live[b]
                used_a.add(a)
                used_b.add(b)
        for a, f in enumerate(faces):
            if cur[a] < 0:
                cur[a] = next_id
                next_id += 1
            e = f.normed_embedding.detach().cpu().numpy().astype(np.float64) if f.normed_embedding is not None else None
            tracks[cur[a]] = (f.bbox.detach().cpu().numpy().astype(np.float64), e, i)
        ids.append(cur)
    return ids


def smooth_series(x: np.ndarray, scale: np.ndarray, strength: float) -> np.ndarray:
    """Zero-phase motion-adaptive smoothing of a [T, D] series; ``scale`` [T] = face size (px)."""
    if strength <= 0 or x.shape[0] < 2:
        return x.copy()
    strength = min(float(strength), 1.0)
    a_min = 1.0 - 0.9 * strength  # weight of the new sample when the face holds still
    knee = 0.05 + 0.25 * strength  # mean move (fraction of face size) treated as real motion

    def one_pass(seq, sc):
        out = seq.copy()
        for t in range(1, seq.shape[0]):
            move = np.abs(seq[t] - out[t - 1]).mean() / max(sc[t], 1e-6)
            a = min(1.0, a_min + (1.0 - a_min) * (move / knee) ** 2)
            out[t] = out[t - 1] + a * (seq[t] - out[t - 1])
        return out

    fwd = one_pass(x, scale)
    bwd = one_pass(x[::-1], scale[::-1])[::-1]
    return 0.5 * (fwd + bwd)


def smooth_faceset(faceset: FaceSet, strength: float, track_ids: Optional[List[List[int]]] = None) -> FaceSet:
    """FaceSet with kps, bbox (and 106/68 landmarks when present) smoothed along each track."""
    if strength <= 0 or faceset.batch_size < 2:
        return faceset
    ids = track_ids if track_ids is not None else track_faces(faceset)
    members: Dict[int, List[Tuple[int, int]]] = {}
    for i, row in enumerate(ids):
        for j, t in enumerate(row):
            members.setdefault(t, []).append((i, j))
    new = [list(f) for f in faceset.faces]
    for mem in members.values():
        if len(mem) < 2:
            continue
        faces = [faceset.faces[i][j] for i, j in mem]
        scale = np.array([max(f.width, f.height, 1.0) for f in faces])
        fields = ["kps", "bbox"] + [
            k
            for k in ("landmarks_2d_106", "landmarks_3d_68", "landmarks_2d_68")
            if all(getattr(f, k) is not None for f in faces)
        ]
        sm = {}
        for k in fields:
            arr = np.stack([getattr(f, k).detach().cpu().numpy().astype(np.float64).reshape(-1) for f in faces])
            sm[k] = smooth_series(arr, scale, strength)
        for n, (i, j) in enumerate(mem):
            f = faceset.faces[i][j]
            ch = {k: torch.from_numpy(sm[k][n].reshape(getattr(f, k).shape).astype(np.float32)) for k in fields}
            new[i][j] = f.with_(**ch)
    return FaceSet(
        faces=tuple(tuple(r) for r in new),
        image_sizes=faceset.image_sizes,
        analyzer=faceset.analyzer,
        selection=faceset.selection,
    )

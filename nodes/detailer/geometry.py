"""Crop-with-context geometry of the face detailer (no ComfyUI).

A face is cut out of its image by one similarity transform (rotation undone, uniform scale, shift) that
puts its five keypoints on the FFHQ template scaled to the working resolution ``size`` (the framing of
face-restoration crops: the whole head with some context), optionally zoomed out by ``context``. The
crop is sampled bilinearly through :func:`kernels.ops.align_crops` from the image padded by edge
replication, so a face at the image border sees its own edge pixels rather than black (what the sampler
would otherwise paint over, and what the paste-back would blend in on the border row). Paste-back goes
through ``nodes.paste.paste_faces`` (feather, colour transfer) with the same matrix.

Conventions as ``nodes.face.align``: a matrix [2,3] maps image pixels to crop pixels, pixel centres at
integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...kernels import ops as kops
from ..face.align import FFHQ_512, invert_affine, transform_points, umeyama
from ..paste import blur, hull_masks

MIN_SIZE = 64


@dataclass(frozen=True)
class CropPlan:
    """Where one face's crop comes from: matrix (image px -> crop px), its scale (crop px per image px)
    and, when the face cannot be detailed at this working resolution, why."""

    matrix: np.ndarray  # [2,3] float32
    size: int
    scale: float
    skip_reason: Optional[str] = None


def context_matrix(kps, size: int, context: float = 1.0) -> np.ndarray:
    """[2,3] similarity taking the face's 5 keypoints onto the FFHQ template of a ``size`` crop, zoomed
    out about the crop centre by ``context`` (1 = the FFHQ framing; 1.5 = 1.5x more surroundings)."""
    kps = np.asarray(kps.detach().cpu() if isinstance(kps, torch.Tensor) else kps, np.float64)[:5, :2]
    c = (size - 1) / 2.0
    dst = (FFHQ_512.astype(np.float64) * (size / 512.0) - c) / max(float(context), 1e-3) + c
    return umeyama(kps, dst)[:2].astype(np.float32)


def matrix_scale(matrix) -> float:
    """Crop pixels per image pixel of a similarity matrix."""
    m = np.asarray(matrix, np.float64)
    return float(math.sqrt(abs(np.linalg.det(m[:2, :2]))))


def plan_crop(face, size: int, context: float = 1.0, max_upscale: float = 8.0) -> CropPlan:
    """The crop of ``face`` at working resolution ``size``; skipped (with the reason) when the face is so
    small that the crop would magnify its pixels more than ``max_upscale`` times (the sampler would only
    invent detail on a blur)."""
    m = context_matrix(face.kps, size, context)
    s = matrix_scale(m)
    reason = None
    if not np.isfinite(m).all() or s <= 0:
        reason = "degenerate keypoints (no similarity transform)"
    elif s > max_upscale:
        reason = (
            f"face too small for working resolution {size}: {face.width:.0f}x{face.height:.0f} px would be "
            f"magnified {s:.1f}x (max_upscale {max_upscale:g}); lower the working resolution or raise max_upscale"
        )
    return CropPlan(m, int(size), s, reason)


def crop_with_context(frame: torch.Tensor, matrix, size: int) -> torch.Tensor:
    """[1,S,S,C] float crop of ``frame`` [H,W,C] (0..1) through ``matrix`` [2,3]; where the crop reaches
    past the image, the image's edge pixels are replicated (bilinear sampling as cv2.warpAffine with
    BORDER_REPLICATE)."""
    H, W = int(frame.shape[0]), int(frame.shape[1])
    m = np.asarray(matrix, np.float64).reshape(2, 3)
    inv = invert_affine(m.astype(np.float32)).astype(np.float64)
    corners = np.array([[-1, -1], [size, -1], [-1, size], [size, size]], np.float64)
    pre = corners @ inv[:, :2].T + inv[:, 2]
    x0, y0 = math.floor(pre[:, 0].min()) - 2, math.floor(pre[:, 1].min()) - 2
    x1, y1 = math.ceil(pre[:, 0].max()) + 2, math.ceil(pre[:, 1].max()) + 2
    # the window of the image the crop reads, then edge replication for the part beyond the image
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, W - 1), min(y1, H - 1)
    if cx0 > cx1 or cy0 > cy1:  # the crop lies wholly outside: the nearest edge pixel everywhere
        cx0 = cx1 = min(max(x0, 0), W - 1)
        cy0 = cy1 = min(max(y0, 0), H - 1)
    win = frame[cy0 : cy1 + 1, cx0 : cx1 + 1].permute(2, 0, 1).unsqueeze(0).float()
    pads = (cx0 - x0, x1 - cx1, cy0 - y0, y1 - cy1)
    if any(p > 0 for p in pads):
        win = F.pad(win, tuple(max(p, 0) for p in pads), mode="replicate")
    win = win[0].permute(1, 2, 0).unsqueeze(0).contiguous()
    shifted = m.copy()
    shifted[:, 2] = m[:, :2] @ np.array([x0, y0], np.float64) + m[:, 2]
    mat = torch.from_numpy(shifted.astype(np.float32)).unsqueeze(0)
    out = kops.align_crops(win, mat, torch.zeros(1, dtype=torch.long), int(size), mean=0.0, std=255.0, layout="NHWC")
    return out.clamp_(0, 1).to(frame.dtype if frame.is_floating_point() else torch.float32)


def face_points(face) -> np.ndarray:
    """The outline points a face's mask is the hull of: dense landmarks when the analysis has them,
    else the detector box (as a quadrilateral)."""
    for pts in (face.landmarks_2d_106, face.landmarks_68):
        if pts is not None:
            return np.asarray(pts.detach().cpu() if isinstance(pts, torch.Tensor) else pts, np.float32)[:, :2]
    x1, y1, x2, y2 = [float(v) for v in face.bbox]
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)


def dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """[N,S,S] -> dilation by a (2r+1)^2 square (outside the crop counts as 0)."""
    if radius <= 0:
        return masks
    k = 2 * radius + 1
    x = F.pad(masks.unsqueeze(1), (radius,) * 4, value=0.0)
    x = F.max_pool2d(x, (1, k), stride=1)
    x = F.max_pool2d(x, (k, 1), stride=1)
    return x.squeeze(1)


def noise_mask(face, matrix, size: int, grow: float = 0.08, soften: float = 0.02) -> torch.Tensor:
    """[1,S,S] 0..1 region the sampler re-draws: the hull of the face's landmarks (box without them) in
    crop pixels, grown by ``grow`` x crop side, softened by a blur of ``soften`` x crop side."""
    pts = transform_points(face_points(face), np.asarray(matrix, np.float32))
    r = float(round(grow * size))
    if r > 0:  # a convex hull grown by a square = the hull of the points moved to the square's corners
        pts = np.concatenate([pts + np.array([dx, dy], np.float32) for dx in (-r, r) for dy in (-r, r)])
    m = hull_masks([pts], size)
    return blur(m, int(round(soften * size))).clamp_(0, 1)


def crop_keypoints(face, matrix) -> np.ndarray:
    """The face's 5 keypoints in crop pixels (InstantID / InfiniteYou keypoint images in the crop)."""
    kps = face.kps.detach().cpu().numpy() if isinstance(face.kps, torch.Tensor) else np.asarray(face.kps)
    return transform_points(np.asarray(kps, np.float32)[:, :2], np.asarray(matrix, np.float32))

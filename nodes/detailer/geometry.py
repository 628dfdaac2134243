"""Crop-with-context geometry of the face detailer (no ComfyUI).

A face is cut out of its image by one similarity transform (rotation undone, uniform scale, shift) that
puts its five keypoints on the FFHQ template scaled to the working resolution ``size`` (the framing of
face-restoration crops: the whole head with some context), optionally zoomed out by ``context``. The
crop is sampled bicubically from the image padded by edge replication, so a face at the image border
sees its own edge pixels rather than black (what the sampler would otherwise paint over, and what the
paste-back would blend in on the border row). Paste-back (:func:`paste_crop`) warps the new crop back
with the same matrix, bicubically, blended by the feathered mask (``nodes.paste.feather_masks``), with
optional LAB colour transfer.

Why bicubic both ways: a detailer magnifies the face (2.5-3x at 512 for a typical face), and the round
trip image -> crop -> image is two resamplings. Bilinear twice is an interpolation of a piecewise-linear
interpolant sampled exactly at its kinks: on a real photo (t1.jpg, six faces, 512) it returns the input
only within 14/255 inside the mask. Bicubic (Keys, as ``torch.grid_sample``) both ways: within 2.6/255
(1.4/255 at 1024). Two paste modes: ``full`` (out = frame + w * (new - frame), the default) and
``residual`` (out = frame + w * warp_back(new - crop): only the change is pasted, exact where the sampler
changed nothing, see :func:`paste_crop`).

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

from ...core.errors import VisageError
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
    # crop pixel (x, y) reads window pixel inv @ (x, y, 1) - (x0, y0): bicubic, edge-replicated beyond
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    u = inv[0, 0] * xs + inv[0, 1] * ys + (inv[0, 2] - x0)
    v = inv[1, 0] * xs + inv[1, 1] * ys + (inv[1, 2] - y0)
    out = sample_bicubic(win[0].to(frame.device), u.to(frame.device), v.to(frame.device))
    return out.clamp_(0, 1).unsqueeze(0).to(frame.dtype if frame.is_floating_point() else torch.float32)


def sample_bicubic(img: torch.Tensor, u: torch.Tensor, v: torch.Tensor, mode: str = "bicubic") -> torch.Tensor:
    """Sample ``img`` [h,w,C] at pixel coordinates (u = x, v = y; any shape, pixel centres at integers)
    -> [..., C]; Keys bicubic (a = -0.75, ``torch.grid_sample``), edge pixels replicated beyond the image.
    The coordinates are normalised in float64, then handed to grid_sample in float32 (~1e-4 px at 2048)."""
    h, w = int(img.shape[0]), int(img.shape[1])
    shape = tuple(u.shape)
    gx = (2.0 * u.double().reshape(-1) + 1.0) / w - 1.0
    gy = (2.0 * v.double().reshape(-1) + 1.0) / h - 1.0
    grid = torch.stack((gx, gy), -1).to(torch.float32).view(1, 1, -1, 2)
    src = img.float().permute(2, 0, 1).unsqueeze(0)
    out = F.grid_sample(src, grid.to(src.device), mode=mode, padding_mode="border", align_corners=False)
    return out[0, :, 0].permute(1, 0).reshape(*shape, int(img.shape[-1]))


PASTE_MODES = ("full", "residual")


def paste_crop(
    frame: torch.Tensor,
    new: torch.Tensor,
    matrix,
    weights: torch.Tensor,
    crop: Optional[torch.Tensor] = None,
    mode: str = "full",
    color_stats: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Paste the crop ``new`` [1,S,S,3] back into ``frame`` [1,H,W,3] (0..1) through ``matrix`` [2,3]
    (image px -> crop px), blended by the crop-space ``weights`` [1,S,S] (feathered, 0 on the crop border).

    ``full``: out = frame + w * (warp_back(new) - frame). ``residual``: out = frame + w * warp_back(new -
    crop), ``crop`` being what the sampler was given - only the change is pasted, so what the sampler left
    alone returns exactly, and detail finer than the working resolution (a face larger than the crop) is
    kept; but where the sampler redrew the face, the original's detail the crop could not hold shows through
    (a faint ghost of the old face when the face is larger than the crop). ``color_stats`` [2,2,3]: LAB
    transfer of the new crop (``kernels.reference.lab_transfer``) before pasting. Pixels whose warped weight
    is 0 are returned bit for bit."""
    from ...kernels.reference import lab_transfer

    if mode not in PASTE_MODES:
        raise VisageError(f"Unknown paste mode '{mode}'", expected=" / ".join(PASTE_MODES), got=repr(mode))
    out = frame.clone()
    H, W = int(frame.shape[1]), int(frame.shape[2])
    size = int(new.shape[1])
    m = np.asarray(matrix, np.float64).reshape(2, 3)
    inv = invert_affine(m.astype(np.float32)).astype(np.float64)
    corners = np.array([[-1, -1], [size, -1], [-1, size], [size, size]], np.float64)
    pre = corners @ inv[:, :2].T + inv[:, 2]
    x0, y0 = max(math.floor(pre[:, 0].min()), 0), max(math.floor(pre[:, 1].min()), 0)
    x1, y1 = min(math.ceil(pre[:, 0].max()), W - 1), min(math.ceil(pre[:, 1].max()), H - 1)
    if x0 > x1 or y0 > y1:
        return out
    dev = frame.device
    ys, xs = torch.meshgrid(
        torch.arange(y0, y1 + 1, dtype=torch.float64), torch.arange(x0, x1 + 1, dtype=torch.float64), indexing="ij"
    )
    u = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]).to(dev)
    v = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]).to(dev)
    src = new[0].float().to(dev)
    if color_stats is not None:
        src = lab_transfer(src, color_stats.to(dev)).clamp(0, 1)
    if mode == "residual":
        if crop is None:
            raise VisageError("A residual paste needs the crop the sampler was given", expected="crop", got="None")
        src = src - crop[0].float().to(dev)
    # the weights: bilinear with a zero border (a mask must not overshoot or reach past the crop)
    wk = weights[0].float().to(dev).clamp(0, 1)
    wpad = F.pad(wk, (1, 1, 1, 1))  # sampled with +1 offset: outside the crop reads 0
    w = sample_bicubic(wpad.unsqueeze(-1), u + 1.0, v + 1.0, mode="bilinear")[..., 0].clamp_(0, 1)
    c = sample_bicubic(src, u, v)
    region = out[0, y0 : y1 + 1, x0 : x1 + 1, :].float()
    if mode == "residual":
        blended = (region + w.unsqueeze(-1) * c).clamp(0, 1)
    else:
        blended = region + w.unsqueeze(-1) * (c.clamp(0, 1) - region)
    blended = torch.where((w > 0).unsqueeze(-1), blended, region)  # weight 0: untouched, bit for bit
    out[0, y0 : y1 + 1, x0 : x1 + 1, :] = blended.to(out.dtype)
    return out


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


def region_noise_mask(weights: torch.Tensor, size: int, grow: float = 0.08, soften: float = 0.02) -> torch.Tensor:
    """[1,S,S] noise mask from a face masker's crop-space weights (parsing regions x occlusion,
    ``nodes.face.masks.crop_masks``): grown by ``grow`` x crop side (a square dilation) and softened by a
    blur of ``soften`` x crop side, as the landmark mask."""
    m = dilate(weights.float().clamp(0, 1).reshape(1, size, size), int(round(grow * size)))
    return blur(m, int(round(soften * size))).clamp_(0, 1)


def crop_keypoints(face, matrix) -> np.ndarray:
    """The face's 5 keypoints in crop pixels (InstantID / InfiniteYou keypoint images in the crop)."""
    kps = face.kps.detach().cpu().numpy() if isinstance(face.kps, torch.Tensor) else np.asarray(face.kps)
    return transform_points(np.asarray(kps, np.float32)[:, :2], np.asarray(matrix, np.float32))

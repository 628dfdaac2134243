"""Paste-back front shared by the swap and expression families.

What it adds over ``kernels.ops.paste_back`` (which does the warp + blend, only inside each face's box):

* the feathered mask, built in CROP space so its size follows the face: a box mask eroded by
  ``erode`` x crop side and blurred by a Gaussian of radius ``blur`` x crop side (both with a zero
  border outside the crop), or a landmark mask (convex hull of the face's landmarks in crop space,
  then the same erosion/blur, intersected with the box mask so the crop edge never shows);
* optional colour transfer: mean/std in CIE LAB of the new crop and of the original crop under the
  mask (``kernels.ops.lab_stats``), handed to the kernel which transfers before blending;
* a frame-space MASK of what was pasted (for the node's mask output).

Exact maths (the cv2 reference in tests/unit/test_paste.py reproduces it):
    erode: 1 - maxpool(1 - m) with a (2r+1)^2 square, r = max(round(erode * S / 2), blur radius + 1),
           outside = 0 (so the feathered mask is exactly 0 on the crop border: no seam)
    blur:  separable Gaussian, ksize k = 2 * round(blur * S) + 1,
           sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8 (OpenCV's rule for sigma = 0), zero border
    paste: out = frame * (1 - w * m) + transfer(crop) * (w * m), crop/m sampled bilinearly.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

try:  # the one dispatch point (fused kernels on CUDA, torch twins elsewhere)
    from ..kernels import ops as _kops
except ImportError:  # pragma: no cover - until kernels/ops.py exists the twins are the spec
    from ..kernels import reference as _kops

from ..core.errors import VisageError, describe_tensor

log = logging.getLogger("visage")


def gaussian_kernel1d(ksize: int, device=None) -> torch.Tensor:
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2.0
    k = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return (k / k.sum()).to(device=device, dtype=torch.float32)


def erode(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """[N,S,S] -> erosion by a (2r+1)^2 square; everything outside the crop counts as 0."""
    if radius <= 0:
        return masks
    # a square structuring element is separable: two 1-D min-pools (O(r) per pixel, not O(r^2))
    k = 2 * radius + 1
    x = F.pad(masks.unsqueeze(1), (radius,) * 4, value=0.0)
    x = -F.max_pool2d(-x, (1, k), stride=1)
    x = -F.max_pool2d(-x, (k, 1), stride=1)
    return x.squeeze(1)


def blur(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """[N,S,S] -> separable Gaussian (ksize 2r+1, OpenCV sigma rule), zero border."""
    if radius <= 0:
        return masks
    k = gaussian_kernel1d(2 * radius + 1, masks.device)
    x = masks.unsqueeze(1).float()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0)), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius)), k.view(1, 1, -1, 1))
    return x.squeeze(1)


def mask_radii(size: int, erode_frac: float, blur_frac: float):
    """(erosion radius, blur radius) in crop pixels. The erosion is at least blur radius + 1, so the
    blurred mask is exactly 0 on the crop's border: the crop edge can never show as a seam."""
    r_b = int(round(max(blur_frac, 0.0) * size))
    r_e = int(round(max(erode_frac, 0.0) * size / 2.0))
    if r_b > 0:
        r_e = max(r_e, r_b + 1)
    return r_e, r_b


_BOX_CACHE: dict = {}


def box_masks(n: int, size: int, erode_frac: float = 0.1, blur_frac: float = 0.1, device=None) -> torch.Tensor:
    """[n,S,S] feathered box masks (the whole crop, eroded then blurred). Cached per size/radii/device."""
    r_e, r_b = mask_radii(size, erode_frac, blur_frac)
    key = (int(size), r_e, r_b, str(torch.device(device or "cpu")))
    m = _BOX_CACHE.get(key)
    if m is None:
        m = torch.ones((1, size, size), device=device)
        m = blur(erode(m, r_e), r_b).clamp(0, 1)
        if len(_BOX_CACHE) > 64:
            _BOX_CACHE.clear()
        _BOX_CACHE[key] = m
    return m.expand(n, size, size).contiguous()


def hull_masks(points_crop: Sequence, size: int) -> torch.Tensor:
    """[N,S,S] filled convex hulls of per-face landmark sets given in crop pixels (cv2, CPU)."""
    import cv2

    out = np.zeros((len(points_crop), size, size), np.float32)
    for i, pts in enumerate(points_crop):
        if pts is None:
            out[i] = 1.0
            continue
        p = np.asarray(pts.detach().cpu() if isinstance(pts, torch.Tensor) else pts, np.float64)[:, :2]
        hull = cv2.convexHull(np.round(p * 16).astype(np.int32))
        m = np.zeros((size, size), np.uint8)
        cv2.fillConvexPoly(m, hull, 255, lineType=cv2.LINE_8, shift=4)
        out[i] = m / 255.0
    return torch.from_numpy(out)


def landmark_masks(
    points_crop: Sequence, size: int, erode_frac: float = 0.1, blur_frac: float = 0.1, device=None
) -> torch.Tensor:
    """Landmark hull masks, eroded + blurred like the box mask, intersected with the box mask."""
    r_e, r_b = mask_radii(size, erode_frac, blur_frac)
    hull = hull_masks(points_crop, size).to(device)
    # the hull is only eroded a little (a third of the box erosion): landmarks already sit inside the face
    m = blur(erode(hull, r_e // 3), r_b)
    box = box_masks(len(points_crop), size, erode_frac, blur_frac, device)
    return torch.minimum(m, box).clamp(0, 1)


def to_crop_points(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """[K,2] image px -> crop px with one [2,3] matrix."""
    m = torch.as_tensor(matrix, dtype=torch.float32)
    p = torch.as_tensor(points, dtype=torch.float32)[:, :2]
    return p @ m[:, :2].T + m[:, 2]


def color_stats(new_crops: torch.Tensor, original_crops: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """[N,2,2,3] ((new mean, new std), (original mean, original std)) in LAB under the masks."""
    a = _kops.lab_stats(new_crops, masks)
    b = _kops.lab_stats(original_crops.to(new_crops.device), masks)
    return torch.stack((a, b), 1)


def paste_faces(
    frames: torch.Tensor,
    crops: torch.Tensor,
    matrix: torch.Tensor,
    frame_index: torch.Tensor,
    masks: Optional[torch.Tensor] = None,
    *,
    erode_frac: float = 0.1,
    blur_frac: float = 0.1,
    landmarks_crop: Optional[Sequence] = None,
    color_transfer: bool = False,
    original_crops: Optional[torch.Tensor] = None,
    strength=1.0,
    want_mask: bool = True,
):
    """Blend crops [N,S,S,3] (0..1) back into frames [B,H,W,3].

    masks: optional [N,S,S] extra crop-space masks (e.g. a swapper's own mask), multiplied into the
    feathered mask. strength: float or [N] opacity. Returns (frames, frame_mask [B,H,W] or None).
    """
    if crops.ndim != 4 or crops.shape[1] != crops.shape[2]:
        raise VisageError("paste_faces: crops must be [N,S,S,C]", expected="square crops", got=describe_tensor(crops))
    n, s = crops.shape[0], crops.shape[1]
    dev = frames.device
    if n == 0:
        fm = torch.zeros(frames.shape[:3], device=dev) if want_mask else None
        return frames.clone(), fm
    feather = feather_masks(
        n,
        s,
        masks,
        erode_frac=erode_frac,
        blur_frac=blur_frac,
        landmarks_crop=landmarks_crop,
        strength=strength,
        device=dev,
    )
    crops = crops.to(dev)
    stats = None
    if color_transfer:
        if original_crops is None:
            raise VisageError(
                "colour transfer needs the original crops", expected="original_crops [N,S,S,3]", got="None"
            )
        stats = color_stats(crops.float(), original_crops.float(), feather)
    idx = torch.as_tensor(frame_index, dtype=torch.long)
    out = _kops.paste_back(
        frames, crops.to(frames.dtype) if frames.is_floating_point() else crops, matrix, feather, idx.to(dev), stats
    )
    frame_mask = paste_masks(frames.shape, matrix, feather, idx) if want_mask else None
    return out, frame_mask


def feather_masks(
    n: int,
    size: int,
    masks: Optional[torch.Tensor] = None,
    *,
    erode_frac: float = 0.1,
    blur_frac: float = 0.1,
    landmarks_crop: Optional[Sequence] = None,
    strength=1.0,
    device=None,
) -> torch.Tensor:
    """[n,S,S] crop-space blend weights exactly as :func:`paste_faces` uses them: the feathered box
    (or landmark) mask, times the optional extra masks, times strength (float or [n])."""
    if landmarks_crop is not None:
        feather = landmark_masks(landmarks_crop, size, erode_frac, blur_frac, device)
    else:
        feather = box_masks(n, size, erode_frac, blur_frac, device)
    if masks is not None:
        feather = feather * masks.to(feather.device).float().clamp(0, 1)
    w = torch.as_tensor(strength, dtype=torch.float32, device=feather.device).reshape(-1)
    return feather * (w.view(-1, 1, 1) if w.numel() == n else w.view(1, 1, 1))


def host_paste(frames: torch.Tensor, layers: torch.Tensor, matrix, weights: torch.Tensor, frame_index) -> torch.Tensor:
    """``paste_back`` (no colour transfer) for float frames on the host, one cv2.warpAffine per face.

    out = frame * (1 - w) + crop * w inside each face's box (:func:`kernels.reference.face_boxes`), crop
    (``layers`` [N,S,S,C]) and weights [N,S,S] sampled together at ``matrix`` (frame -> crop) with
    cv2's INTER_LINEAR + zero border: the convention of the torch twin, whose per-tap gathers cost ~60 %
    of a 4-face restore's pastes on 2 cores; cv2's bilinear weights step in 1/32 of a pixel."""
    from ..kernels.reference import face_boxes

    out = frames.clone()
    n, s = layers.shape[0], layers.shape[1]
    if n == 0:
        return out
    m64 = np.asarray(torch.as_tensor(matrix).detach().cpu().double().numpy(), np.float64).reshape(n, 2, 3)
    H, W = frames.shape[1], frames.shape[2]
    boxes = face_boxes(m64, s, H, W)
    o = out.numpy()
    lay = np.concatenate(
        [layers.detach().float().cpu().numpy(), weights.detach().float().cpu().clamp(0, 1).numpy()[..., None]], -1
    )
    idx = torch.as_tensor(frame_index, dtype=torch.long).tolist()
    c = lay.shape[-1] - 1
    for i, box in enumerate(boxes):
        if box is None:
            continue
        x0, y0, x1, y1 = box
        m = m64[i].copy()
        m[:, 2] += m[:, 0] * x0 + m[:, 1] * y0  # box pixel (0, 0) is frame pixel (x0, y0)
        w = cv2.warpAffine(
            lay[i], m, (x1 - x0 + 1, y1 - y0 + 1), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0.0
        ).reshape(y1 - y0 + 1, x1 - x0 + 1, c + 1)
        a = w[..., c:]
        region = o[idx[i], y0 : y1 + 1, x0 : x1 + 1]
        region *= 1.0 - a
        region += w[..., :c] * a
    return out


def host_float(frames: torch.Tensor) -> bool:
    """Frames :func:`host_paste` takes: float32 on the host, at most 3 channels (crop + weight <= 4)."""
    return frames.device.type == "cpu" and frames.dtype == torch.float32 and frames.shape[-1] + 1 <= 4


def paste_weighted(
    frames: torch.Tensor, crops: torch.Tensor, matrix: torch.Tensor, weights: torch.Tensor, frame_index: torch.Tensor
) -> torch.Tensor:
    """out = frame * (1 - w) + crop * w with caller-made crop-space weights [N,S,S] (already feathered,
    0 on the crop border): one ``paste_back``, for callers that build their own blend weights."""
    if crops.shape[0] == 0:
        return frames.clone()
    dev = frames.device
    idx = torch.as_tensor(frame_index, dtype=torch.long).to(dev)
    return _kops.paste_back(
        frames,
        crops.to(dev, frames.dtype) if frames.is_floating_point() else crops.to(dev),
        matrix,
        weights.to(dev).float().clamp(0, 1),
        idx,
        None,
    )


def paste_masks(frame_shape, matrix: torch.Tensor, feather: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
    """Frame-space [B,H,W] coverage of crop-space weights ``feather`` [N,S,S] warped with ``matrix``
    (the node's MASK output). A one-channel warp of the mask only: no image is resampled here."""
    n, s = feather.shape[0], feather.shape[-1]
    dev = feather.device
    B, H, W = int(frame_shape[0]), int(frame_shape[1]), int(frame_shape[2])
    if n == 0:
        return torch.zeros((B, H, W), device=dev)
    ones = torch.ones((n, s, s, 1), device=dev)
    zero = torch.zeros((B, H, W, 1), device=dev)
    idx = torch.as_tensor(frame_index, dtype=torch.long).to(dev)
    return _kops.paste_back(zero, ones, matrix, feather, idx, None)[..., 0]

"""Similarity-transform alignment (templates, umeyama, insightface's matrices) and face crops.

Conventions: a matrix ``M`` [2,3] maps source-image pixels to crop pixels (x' = M @ [x, y, 1]);
pixel centres sit at integer coordinates; bilinear sampling; zero outside the source — exactly what
``cv2.warpAffine(img, M, (S, S), borderValue=0)`` does, so insightface's crops are reproduced.
Every warp goes through :func:`kernels.ops.align_crops` (the one dispatch point: the fused Triton
kernel on CUDA, its torch twin elsewhere); ``warp_affine`` (grid_sample) was folded into it.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ...core.types import AlignedFaces, FaceSet
from ...kernels import ops as kops

# insightface's ArcFace 5-point template for 112x112 crops
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)

# FFHQ 512 5-point template (as used by facexlib / GFPGAN / CodeFormer face helpers)
FFHQ_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float32,
)

TEMPLATES = {"arcface_112": (ARCFACE_112, 112), "ffhq_512": (FFHQ_512, 512)}


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation + uniform scale + translation) src -> dst.

    Returns a 3x3 matrix; the same estimate skimage's SimilarityTransform.estimate computes.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n, d = src.shape
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / n
    sign = np.ones(d)
    if np.linalg.det(cov) < 0:
        sign[-1] = -1
    u, s, vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    T = np.eye(d + 1)
    if rank == 0:
        return np.full((d + 1, d + 1), np.nan)
    if rank == d - 1:
        if np.linalg.det(u) * np.linalg.det(vt) > 0:
            T[:d, :d] = u @ vt
        else:
            s_ = sign[-1]
            sign[-1] = -1
            T[:d, :d] = u @ np.diag(sign) @ vt
            sign[-1] = s_
    else:
        T[:d, :d] = u @ np.diag(sign) @ vt
    var_s = sc.var(0).sum()
    scale = (s @ sign) / var_s if var_s > 0 else 1.0
    T[:d, d] = mu_d - scale * (T[:d, :d] @ mu_s)
    T[:d, :d] *= scale
    return T


def template_for(template: str, image_size: Optional[int] = None) -> Tuple[np.ndarray, int]:
    """Template points scaled to ``image_size`` (insightface's rule for arcface sizes)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template '{template}' (expected one of {sorted(TEMPLATES)})")
    pts, base = TEMPLATES[template]
    size = int(image_size or base)
    if template == "arcface_112":
        if size % 112 == 0:
            ratio, diff_x = size / 112.0, 0.0
        elif size % 128 == 0:
            ratio = size / 128.0
            diff_x = 8.0 * ratio
        else:
            ratio, diff_x = size / 112.0, 0.0
        dst = pts * ratio
        dst = dst.copy()
        dst[:, 0] += diff_x
        return dst.astype(np.float32), size
    return (pts * (size / base)).astype(np.float32), size


def estimate_norm(kps, image_size: int = 112, mode: str = "arcface") -> np.ndarray:
    """insightface's face_align.estimate_norm: [2,3] matrix taking the image into the template crop."""
    kps = np.asarray(kps.detach().cpu() if isinstance(kps, torch.Tensor) else kps, dtype=np.float32)
    template = "arcface_112" if mode == "arcface" else mode
    dst, _ = template_for(template, image_size)
    return umeyama(kps, dst)[:2].astype(np.float32)


def crop_matrix(center: Sequence[float], output_size: int, scale: float, rotation_deg: float = 0.0) -> np.ndarray:
    """insightface's face_align.transform matrix: scale about the origin, move ``center`` to the
    crop centre, rotate by ``rotation_deg``."""
    rot = float(rotation_deg) * np.pi / 180.0
    c, s = np.cos(rot), np.sin(rot)
    cx, cy = float(center[0]) * scale, float(center[1]) * scale
    # x' = R (scale*x - c) + out/2
    m = np.array(
        [
            [scale * c, -scale * s, -(c * cx - s * cy) + output_size / 2.0],
            [scale * s, scale * c, -(s * cx + c * cy) + output_size / 2.0],
        ],
        dtype=np.float64,
    )
    return m.astype(np.float32)


def invert_affine(m):
    """Inverse of [..., 2, 3] affine matrices (numpy or torch)."""
    if isinstance(m, torch.Tensor):
        A = m[..., :2, :2]
        t = m[..., :2, 2:]
        Ai = torch.linalg.inv(A.double()).to(m.dtype)
        return torch.cat([Ai, -(Ai @ t)], dim=-1)
    m = np.asarray(m, dtype=np.float64)
    A, t = m[..., :2, :2], m[..., :2, 2:]
    Ai = np.linalg.inv(A)
    return np.concatenate([Ai, -(Ai @ t)], axis=-1).astype(np.float32)


def transform_points(pts, m):
    """Apply [2,3] matrix to [..., 2] points (numpy or torch)."""
    if isinstance(pts, torch.Tensor):
        m = torch.as_tensor(m, dtype=pts.dtype, device=pts.device)
        return pts @ m[:, :2].T + m[:, 2]
    pts = np.asarray(pts, dtype=np.float32)
    m = np.asarray(m, dtype=np.float32)
    return pts @ m[:, :2].T + m[:, 2]


def warp_crops(images: torch.Tensor, matrix, image_index, size: int) -> torch.Tensor:
    """Crops [N,size,size,C] (float 0..1, ``images``' float dtype) of ``images`` [B,H,W,C] (float 0..1
    or uint8) with matrices [N,2,3] (image px -> crop px), cv2.warpAffine semantics: one batched
    :func:`kernels.ops.align_crops` call (the fused kernel on CUDA)."""
    dtype = images.dtype if images.is_floating_point() else torch.float32
    return kops.align_crops(images, matrix, image_index, int(size), mean=0.0, std=255.0, layout="NHWC", out_dtype=dtype)


def align_faces(
    images: torch.Tensor, faceset: FaceSet, template: str = "arcface_112", size: Optional[int] = None
) -> AlignedFaces:
    """Aligned crops of every face in ``faceset`` (images [B,H,W,C] float 0..1)."""
    _, size = template_for(template, size)
    faces = faceset.flat()
    mats = [estimate_norm(f.kps, size, template if template != "arcface_112" else "arcface") for f in faces]
    if mats:
        matrix = torch.from_numpy(np.stack(mats)).float()
    else:
        matrix = torch.zeros((0, 2, 3))
    index = torch.tensor([f.image_index for f in faces], dtype=torch.long)
    crops = warp_crops(images, matrix, index, size).clamp_(0, 1)
    return AlignedFaces(
        crops=crops,
        matrix=matrix,
        inverse=invert_affine(matrix) if len(mats) else matrix.clone(),
        image_index=index,
        template=template,
        size=size,
        image_sizes=faceset.image_sizes,
    )

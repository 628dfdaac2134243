"""LivePortrait-style crops of any face from a :class:`FaceSet`, and which face to use.

Crop maths (LivePortrait ``crop_image`` with its source-image defaults: dsize 512, scale 2.3,
vx_ratio 0, vy_ratio -0.125, rotation on): two anchor points (eye centre, lip centre) give the
face's up axis; the landmarks' extent in that rotated frame gives the centre and side; the side is
scaled by ``scale`` and the centre shifted by ``vy_ratio * side`` along the up axis. Landmarks: the
106-point set when the analyzer has it (what LivePortrait uses), else the 68-point set, else the
5 keypoints plus the detector box corners.

Matrices follow ``AlignedFaces``: ``matrix`` maps frame pixels to crop pixels, ``inverse`` back.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from ...core.errors import VisageError
from ...core.types import Face, FaceSet

CROP_SIZE = 512
NET_SIZE = 256
from ...core.select import PICKS as SELECT_MODES  # noqa: E402,F401 - the one selection vocabulary
from ...core.select import pick_face as select_face  # noqa: E402,F401


def anchor_points(face: Face) -> Tuple[np.ndarray, np.ndarray]:
    """(points [P,2] used for the extent, (eye centre, lip centre) [2,2])."""
    if face.landmarks_2d_106 is not None:
        p = face.landmarks_2d_106.detach().cpu().double().numpy()
        eye_l = p[[33, 35, 40, 39]].mean(0)
        eye_r = p[[87, 89, 94, 93]].mean(0)
        lip = (p[52] + p[61]) / 2
        return p, np.stack([(eye_l + eye_r) / 2, lip])
    lm68 = face.landmarks_68
    if lm68 is not None:
        p = lm68.detach().cpu().double().numpy()[:, :2]
        eye_l = p[[36, 39]].mean(0)  # LivePortrait: mean of points 37 and 40 (1-based)
        eye_r = p[[42, 45]].mean(0)
        lip = (p[48] + p[54]) / 2
        return p, np.stack([(eye_l + eye_r) / 2, lip])
    k = face.kps.detach().cpu().double().numpy()
    b = face.bbox.detach().cpu().double().numpy()
    corners = np.array([[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]])
    return np.concatenate([k, corners]), np.stack([(k[0] + k[1]) / 2, (k[3] + k[4]) / 2])


def crop_matrix(
    face: Face,
    size: int = CROP_SIZE,
    scale: float = 2.3,
    vx_ratio: float = 0.0,
    vy_ratio: float = -0.125,
    rotate: bool = True,
) -> np.ndarray:
    """[2,3] float64 frame px -> crop px for a LivePortrait crop of ``face``."""
    pts, pt2 = anchor_points(face)
    uy = pt2[1] - pt2[0]
    n = np.linalg.norm(uy)
    uy = np.array([0.0, 1.0]) if n <= 1e-3 else uy / n
    ux = np.array([uy[1], -uy[0]])
    rot = np.stack([ux, uy])  # rows: face x axis, face y axis
    c0 = pts.mean(0)
    r = (pts - c0) @ rot.T
    lo, hi = r.min(0), r.max(0)
    c1 = (lo + hi) / 2
    side = float(max(hi - lo)) * scale
    if side <= 1e-6:
        raise VisageError(
            "The face is too small to crop", expected="a face a few pixels wide", got=f"landmark extent {side:.3g} px"
        )
    center = c0 + ux * c1[0] + uy * c1[1] + ux * (vx_ratio * side) + uy * (vy_ratio * side)
    s = size / side
    if rotate:
        cos_t, sin_t = ux[0], ux[1]
    else:
        cos_t, sin_t = 1.0, 0.0
    cx, cy = center
    t = size / 2.0
    return np.array(
        [
            [s * cos_t, s * sin_t, t - s * (cos_t * cx + sin_t * cy)],
            [-s * sin_t, s * cos_t, t - s * (-sin_t * cx + cos_t * cy)],
        ],
        dtype=np.float64,
    )


def invert(m: np.ndarray) -> np.ndarray:
    h = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(h)[:2]


def check_faceset(faces: FaceSet, images: torch.Tensor, name: str) -> None:
    """The FaceSet must describe this IMAGE batch (same count, same sizes)."""
    b, h, w = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
    sizes = set(tuple(s) for s in faces.image_sizes)
    if faces.batch_size != b or sizes != {(h, w)}:
        raise VisageError(
            f"'{name}' faces were analysed on another image batch",
            expected=f"faces of {b} image(s) of {w}x{h}",
            got=f"faces of {faces.batch_size} image(s) of sizes {sorted(sizes)[:3]}",
            fix=f"connect Analyze Faces run on the same images as '{name}'",
        )


def face_mask(size: int = CROP_SIZE, inner: float = 0.55, outer: float = 0.85, power: float = 4.0) -> torch.Tensor:
    """[S,S] soft rounded-square mask in crop space (1 in the face region, 0 well before the crop edge).

    d = (|u|^p + |v|^p)^(1/p) with u, v in -1..1 across the crop; 1 for d <= inner, 0 for d >= outer,
    smoothstep between: the crop box never shows in the result.
    """
    g = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    v, u = torch.meshgrid(g, g, indexing="ij")
    # the face sits slightly above the crop centre (vy_ratio), so the mask keeps a little more below
    v = torch.where(v > 0, v * 0.9, v)
    d = (u.abs() ** power + v.abs() ** power) ** (1.0 / power)
    x = ((outer - d) / max(outer - inner, 1e-6)).clamp(0, 1)
    return x * x * (3 - 2 * x)

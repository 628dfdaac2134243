"""Pictures made from faces: preview with numbered boxes, InstantID keypoint image, face masks.

Pure numpy/cv2/torch. IMAGE in/out is float [B,H,W,3] 0..1; MASK is [B,H,W].
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from ...core.errors import VisageError
from ...core.images import from_uint8_np, to_uint8_np
from ...core.types import Face, FaceSet

SELECTED = (40, 220, 90)
OTHER = (170, 170, 170)

# InstantID keypoint rendering (published facts): one colour per keypoint, limbs from each eye and
# mouth corner to the nose, limbs drawn as filled ellipses of width 4 and dimmed to 60 %, then
# keypoint discs of radius 10.
KPS_COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
KPS_LIMBS = [(0, 2), (1, 2), (3, 2), (4, 2)]


def preview(images: torch.Tensor, ordered: Sequence[Sequence[Face]], selected: FaceSet) -> torch.Tensor:
    """Each candidate face boxed and numbered by its position in the ordering; selected ones green."""
    out = []
    for i in range(images.shape[0]):
        img = np.ascontiguousarray(to_uint8_np(images[i]))
        h, w = img.shape[:2]
        thick = max(1, int(round(min(h, w) / 300)))
        chosen = {id(f) for f in selected.faces[i]} if i < len(selected.faces) else set()
        for k, f in enumerate(ordered[i] if i < len(ordered) else []):
            col = SELECTED if id(f) in chosen else OTHER
            x1, y1, x2, y2 = [int(round(float(v))) for v in f.bbox]
            cv2.rectangle(img, (x1, y1), (x2, y2), col, thick)
            for p in f.kps.numpy():
                cv2.circle(img, (int(round(p[0])), int(round(p[1]))), thick + 1, col, -1)
            label = str(k)
            scale = max(0.4, min(h, w) / 600)
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
            ty = max(th + 2, y1 - 4)
            cv2.rectangle(img, (x1, ty - th - 3), (x1 + tw + 4, ty + base - 1), col, -1)
            cv2.putText(img, label, (x1 + 2, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
        out.append(from_uint8_np(img))
    return torch.stack(out)


def keypoints_image(faceset: FaceSet, size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """InstantID-style keypoint image per image of the batch (black canvas, the image's size)."""
    out = []
    for i, faces in enumerate(faceset.faces):
        h, w = size if size is not None else faceset.image_sizes[i]
        canvas = np.zeros((int(h), int(w), 3), np.uint8)
        for f in faces:
            canvas = draw_kps(canvas, f.kps.numpy())
        out.append(from_uint8_np(canvas))
    return torch.stack(out)


def draw_kps(canvas: np.ndarray, kps: np.ndarray, stickwidth: int = 4) -> np.ndarray:
    limbs = np.zeros_like(canvas)
    for a, b in KPS_LIMBS:
        color = KPS_COLORS[a]
        x = kps[[a, b], 0]
        y = kps[[a, b], 1]
        length = math.hypot(x[0] - x[1], y[0] - y[1])
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        poly = cv2.ellipse2Poly(
            (int(np.mean(x)), int(np.mean(y))), (int(length / 2), stickwidth), int(angle), 0, 360, 1
        )
        cv2.fillConvexPoly(limbs, poly, color)
    limbs = (limbs * 0.6).astype(np.uint8)
    out = np.maximum(canvas, limbs)
    for k, (x, y) in enumerate(kps):
        cv2.circle(out, (int(x), int(y)), 10, KPS_COLORS[k % len(KPS_COLORS)], -1)
    return out


MASK_SHAPES = ("hull", "ellipse", "box")


def face_points(f: Face) -> np.ndarray:
    for lm in (f.landmarks_2d_106, f.landmarks_68):
        if lm is not None:
            return lm[:, :2].float().numpy()
    # no dense landmarks: the box corners bound the face
    x1, y1, x2, y2 = f.bbox.tolist()
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)


def face_mask(faceset: FaceSet, shape: str = "hull", grow: int = 0, feather: int = 0) -> torch.Tensor:
    """MASK [B,H,W] covering every face of each image.

    hull: convex hull of the dense landmarks (106 or 68; box corners when the pack has none);
    ellipse: the ellipse inscribed in the face box; box: the box. ``grow`` > 0 dilates, < 0 erodes
    (pixels); ``feather`` blurs the edge over that many pixels.
    """
    if shape not in MASK_SHAPES:
        raise VisageError(f"Unknown mask shape '{shape}'", expected=" / ".join(MASK_SHAPES), got=shape)
    masks = []
    for i, faces in enumerate(faceset.faces):
        h, w = faceset.image_sizes[i]
        m = np.zeros((h, w), np.uint8)
        for f in faces:
            if shape == "box":
                x1, y1, x2, y2 = [int(round(v)) for v in f.bbox.tolist()]
                cv2.rectangle(m, (x1, y1), (x2, y2), 255, -1)
            elif shape == "ellipse":
                x1, y1, x2, y2 = f.bbox.tolist()
                c = (int(round((x1 + x2) / 2)), int(round((y1 + y2) / 2)))
                ax = (max(1, int(round((x2 - x1) / 2))), max(1, int(round((y2 - y1) / 2))))
                cv2.ellipse(m, c, ax, 0, 0, 360, 255, -1)
            else:
                hull = cv2.convexHull(np.round(face_points(f)).astype(np.int32))
                cv2.fillConvexPoly(m, hull, 255)
        if grow:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(grow) + 1, 2 * abs(grow) + 1))
            m = cv2.dilate(m, k) if grow > 0 else cv2.erode(m, k)
        mf = m.astype(np.float32) / 255.0
        if feather > 0:
            ks = 2 * int(feather) + 1
            mf = np.clip(cv2.GaussianBlur(mf, (ks, ks), feather / 2.0), 0.0, 1.0)
        masks.append(torch.from_numpy(mf))
    return torch.stack(masks)

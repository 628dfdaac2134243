"""Helpers shared by the face unit tests."""

import numpy as np
import torch


def bgr_to_batch(*imgs_bgr):
    """uint8 BGR images (same size) -> IMAGE batch float [B,H,W,3] RGB 0..1."""
    return torch.stack([torch.from_numpy(np.ascontiguousarray(i[..., ::-1])).float() / 255.0 for i in imgs_bgr])


def iou(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def cosine(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def match_reference(ours, ref):
    """Pair our faces (one image) with insightface's by best IoU; returns [(ours, ref, iou)]."""
    pairs = []
    for r in ref:
        best = max(ours, key=lambda f: iou(f.bbox.numpy(), r.bbox))
        pairs.append((best, r, iou(best.bbox.numpy(), r.bbox)))
    return pairs


def insightface_app(pack_dir, det_size=(640, 640)):
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=pack_dir, providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=det_size)
    return app

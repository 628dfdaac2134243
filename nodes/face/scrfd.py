"""SCRFD detection in torch: letterbox, batched forward, anchor decoding, NMS.

The maths follow insightface's SCRFD (the reference our tests compare against): the image is
resized keeping its aspect ratio into the top-left of a ``det_size`` canvas, normalised
(x - 127.5) / 128 in RGB, and each stride's outputs decode as distances from anchor centres.
NMS is greedy with the "+1" pixel-area convention at IoU 0.4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ...core.onnx import CPU_CHUNK_DETECTOR, OnnxSignature, effective_fixed_batch, fixed_batch, run_batched, torch_chunk


@dataclass(frozen=True)
class ScrfdLayout:
    fmc: int
    strides: Tuple[int, ...]
    num_anchors: int
    use_kps: bool

    @staticmethod
    def from_outputs(n_outputs: int) -> "ScrfdLayout":
        table = {
            6: (3, (8, 16, 32), 2, False),
            9: (3, (8, 16, 32), 2, True),
            10: (5, (8, 16, 32, 64, 128), 1, False),
            15: (5, (8, 16, 32, 64, 128), 1, True),
        }
        if n_outputs not in table:
            raise ValueError(f"not an SCRFD output layout: {n_outputs} outputs (expected 6, 9, 10 or 15)")
        return ScrfdLayout(*table[n_outputs])


def letterbox_size(h: int, w: int, det_w: int, det_h: int) -> Tuple[int, int, float]:
    """insightface's resize rule: (new_h, new_w, det_scale)."""
    im_ratio = float(h) / w
    model_ratio = float(det_h) / det_w
    if im_ratio > model_ratio:
        new_h = det_h
        new_w = int(new_h / im_ratio)
    else:
        new_w = det_w
        new_h = int(new_w * im_ratio)
    new_w, new_h = max(new_w, 1), max(new_h, 1)
    return new_h, new_w, float(new_h) / h


def letterbox(images: torch.Tensor, det_size: Tuple[int, int], scale255: bool = True) -> Tuple[torch.Tensor, float]:
    """images [B,H,W,3] (RGB) -> canvas [B,3,det_h,det_w] float with integer values 0..255, det_scale.

    ``images`` is a float IMAGE 0..1 (``scale255``) or 0..255 values (uint8 or float, ``scale255=False``).
    The frame is resized FIRST and only the resized pixels are brought to 8-bit values, so no step
    touches the full frame more than the resize's own taps (a 3000 px photo: a few ms instead of a
    full-frame conversion). On the host: cv2.resize (INTER_LINEAR) of the float frame, then
    floor(x + 0.5), what cv2's 8-bit resize of the 8-bit frame gives up to one level on a few pixels
    (exact on a 2x reduction). On a GPU: bilinear ``F.interpolate``, the same rounding.
    """
    B, H, W, _ = images.shape
    det_w, det_h = det_size
    new_h, new_w, scale = letterbox_size(H, W, det_w, det_h)
    k = 255.0 if (scale255 and images.dtype.is_floating_point) else 1.0
    if (new_h, new_w) == (H, W):
        x = images.permute(0, 3, 1, 2).float()
        if k != 1.0:
            x = torch.floor(x * k + 0.5).clamp_(0, 255)
    elif images.device.type == "cpu":
        if images.dtype == torch.uint8:
            arr = images.numpy()
            x = torch.from_numpy(np.stack([cv2.resize(a, (new_w, new_h), interpolation=cv2.INTER_LINEAR) for a in arr]))
            x = x.permute(0, 3, 1, 2).float()
        else:
            arr = images.detach().float().contiguous().numpy()  # a view of a float32 IMAGE, no copy
            small = np.stack([cv2.resize(a, (new_w, new_h), interpolation=cv2.INTER_LINEAR) for a in arr])
            small = np.clip(np.floor(small * np.float32(k) + np.float32(0.5)), 0, 255)
            x = torch.from_numpy(small).permute(0, 3, 1, 2)
    else:
        # frames already on the GPU stay there; bilinear + round-half-up differs from cv2's
        # fixed-point resize by at most one 8-bit level
        x = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(new_h, new_w), mode="bilinear", align_corners=False)
        x = torch.floor(x * k + 0.5).clamp_(0, 255)
    canvas = torch.zeros((B, 3, det_h, det_w), dtype=torch.float32, device=x.device)
    canvas[:, :, :new_h, :new_w] = x
    return canvas, scale


def host_blob(images: torch.Tensor, det_size: Tuple[int, int], scale255: bool = True) -> Tuple[np.ndarray, float]:
    """Host frames -> the detector's input [B,3,det_h,det_w] float32 (x - 127.5) / 128 and det_scale, in
    numpy: the resized image (:func:`letterbox`'s rule and rounding) normalised straight into a canvas whose
    padding holds the normalised 0 (insightface's blobFromImage of its zero-padded canvas)."""
    B, H, W, _ = images.shape
    det_w, det_h = det_size
    new_h, new_w, scale = letterbox_size(H, W, det_w, det_h)
    blob = np.full((B, 3, det_h, det_w), -127.5 / 128.0, np.float32)
    if images.dtype == torch.uint8 or (new_h, new_w) == (H, W):
        arr = images.numpy() if images.dtype == torch.uint8 else None
        for b in range(B):
            if arr is None:
                small = letterbox(images[b : b + 1], det_size, scale255)[0][0, :, :new_h, :new_w].numpy()
            else:
                a = (
                    arr[b]
                    if (new_h, new_w) == (H, W)
                    else cv2.resize(arr[b], (new_w, new_h), interpolation=cv2.INTER_LINEAR)
                )
                small = a.transpose(2, 0, 1)
            blob[b, :, :new_h, :new_w] = (small.astype(np.float32) - np.float32(127.5)) / np.float32(128.0)
    else:
        canvas = letterbox(images, det_size, scale255)[0].numpy()
        blob[:, :, :new_h, :new_w] = (canvas[:, :, :new_h, :new_w] - np.float32(127.5)) / np.float32(128.0)
    return blob, scale


_CENTERS = {}


def _centers_np(height: int, width: int, stride: int, num_anchors: int) -> np.ndarray:
    key = (height, width, stride, num_anchors)
    c = _CENTERS.get(key)
    if c is None:
        ys, xs = np.mgrid[:height, :width]
        c = (np.stack([xs, ys], -1).reshape(-1, 2) * stride).astype(np.float32)
        if num_anchors > 1:
            c = np.repeat(c, num_anchors, axis=0)
        if len(_CENTERS) > 64:
            _CENTERS.clear()
        _CENTERS[key] = c
    return c


def _decode_host(outs, B: int, L: "ScrfdLayout", det_h: int, det_w: int, thresh: float):
    """SCRFD outputs (numpy) -> per image lists of (scores, boxes [K,4], kps [K,5,2]) above ``thresh``;
    only the candidates above the threshold are decoded (insightface decodes every anchor first)."""
    per_scores, per_boxes, per_kps = [[] for _ in range(B)], [[] for _ in range(B)], [[] for _ in range(B)]
    for idx, stride in enumerate(L.strides):
        scores = outs[idx].reshape(B, -1)
        n = scores.shape[1]
        boxes = outs[idx + L.fmc].reshape(B, n, 4)
        kps = outs[idx + 2 * L.fmc].reshape(B, n, -1, 2) if L.use_kps else None
        centers = _centers_np(det_h // stride, det_w // stride, stride, L.num_anchors)
        for b in range(B):
            pos = np.nonzero(scores[b] >= thresh)[0]
            c = centers[pos]
            d = boxes[b, pos] * np.float32(stride)
            per_scores[b].append(scores[b, pos])
            per_boxes[b].append(np.concatenate([c - d[:, :2], c + d[:, 2:]], 1))
            if kps is not None:
                per_kps[b].append(c[:, None, :] + kps[b, pos] * np.float32(stride))
    return per_scores, per_boxes, per_kps


def anchor_centers(height: int, width: int, stride: int, num_anchors: int, device) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    c = torch.stack([xs, ys], -1).reshape(-1, 2).float() * stride
    if num_anchors > 1:
        c = c.repeat_interleave(num_anchors, dim=0)
    return c


def nms(dets: np.ndarray, thresh: float) -> List[int]:
    """Greedy NMS on [K,5] (x1,y1,x2,y2,score), insightface's '+1' area convention."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


class ScrfdDetector:
    """Batched SCRFD on a torch module (from the model manager)."""

    def __init__(
        self,
        handle,
        signature: OnnxSignature,
        det_size: Tuple[int, int] = (640, 640),
        det_thresh: float = 0.5,
        nms_thresh: float = 0.4,
    ):
        self.handle = handle
        self.signature = signature
        self.layout = ScrfdLayout.from_outputs(len(signature.outputs))
        h, w = signature.input_hw()
        # a detector exported with a fixed input size runs only at that size
        self.det_size = (w, h) if (h and w) else tuple(int(v) for v in det_size)
        self.det_thresh = det_thresh
        self.nms_thresh = nms_thresh
        self.fixed = fixed_batch(signature)

    def detect(
        self, images: torch.Tensor, det_thresh: Optional[float] = None, max_num: int = 0, scale255: bool = True
    ) -> List[Tuple[np.ndarray, Optional[np.ndarray]]]:
        """images [B,H,W,3] RGB float 0..1 (``scale255``; else 0..255 values, e.g. uint8), on the host or
        the model's device -> per image (det [K,5], kps [K,5,2]). See :func:`letterbox`."""
        thresh = self.det_thresh if det_thresh is None else float(det_thresh)
        model = self.handle.model()
        dev, dtype = self.handle.device, self.handle.dtype
        B = images.shape[0]
        L = self.layout
        host = images.device.type == "cpu" and torch.device(dev).type == "cpu"
        if host:
            # frames and model on the host: blob and decoding in numpy/cv2 (one pass each, no torch op
            # per stride and image: those were thread start-ups that a busy machine made expensive)
            blob_np, det_scale = host_blob(images, self.det_size, scale255)
            blob = torch.from_numpy(blob_np)
            if dtype != torch.float32:
                blob = blob.to(dtype)
        else:
            canvas, det_scale = letterbox(images, self.det_size, scale255)
            blob = ((canvas.to(dev) - 127.5) / 128.0).to(dtype)
        chunk = torch_chunk(dev, 16, CPU_CHUNK_DETECTOR)
        fixed = self.fixed
        if B > 1 and chunk > 1:
            fixed = effective_fixed_batch(model, self.signature, tuple(blob.shape[1:]))
        with torch.inference_mode():
            outs = run_batched(model, blob, chunk=chunk, fixed=fixed)
        det_h, det_w = blob.shape[2], blob.shape[3]
        if host:
            per_scores, per_boxes, per_kps = _decode_host([o.float().numpy() for o in outs], B, L, det_h, det_w, thresh)
            return self._finish(images, per_scores, per_boxes, per_kps, det_scale, max_num)
        outs = [o.float() for o in outs]
        per_scores, per_boxes, per_kps = [[] for _ in range(B)], [[] for _ in range(B)], [[] for _ in range(B)]
        for idx, stride in enumerate(L.strides):
            scores = outs[idx].reshape(B, -1)
            boxes = outs[idx + L.fmc].reshape(B, -1, 4) * stride
            centers = anchor_centers(det_h // stride, det_w // stride, stride, L.num_anchors, scores.device)
            x1y1 = centers[None] - boxes[..., :2]
            x2y2 = centers[None] + boxes[..., 2:]
            bb = torch.cat([x1y1, x2y2], -1)
            if L.use_kps:
                k = outs[idx + 2 * L.fmc].reshape(B, scores.shape[1], -1, 2) * stride
                kp = centers[None, :, None, :] + k
            for b in range(B):
                pos = (scores[b] >= thresh).nonzero().flatten()
                per_scores[b].append(scores[b, pos].cpu().numpy())
                per_boxes[b].append(bb[b, pos].cpu().numpy())
                if L.use_kps:
                    per_kps[b].append(kp[b, pos].cpu().numpy())
        return self._finish(images, per_scores, per_boxes, per_kps, det_scale, max_num)

    def _finish(self, images, per_scores, per_boxes, per_kps, det_scale, max_num):
        """Per image: candidates (numpy, detector canvas pixels) -> NMS, max_num -> (det [K,5], kps [K,5,2])."""
        B = images.shape[0]
        L = self.layout
        results = []
        H, W = images.shape[1], images.shape[2]
        for b in range(B):
            s = np.concatenate(per_scores[b])
            if s.size == 0:
                results.append((np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32) if L.use_kps else None))
                continue
            bx = np.concatenate(per_boxes[b]) / det_scale
            order = np.argsort(-s, kind="stable")
            pre = np.hstack([bx, s[:, None]]).astype(np.float32)[order]
            kps = None
            if L.use_kps:
                kps = (np.concatenate(per_kps[b]) / det_scale).astype(np.float32)[order]
            keep = nms(pre, self.nms_thresh)
            det = pre[keep]
            if kps is not None:
                kps = kps[keep]
            if max_num > 0 and det.shape[0] > max_num:
                area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
                cy, cx = H // 2, W // 2
                off = ((det[:, 0] + det[:, 2]) / 2 - cx) ** 2 + ((det[:, 1] + det[:, 3]) / 2 - cy) ** 2
                pick = np.argsort(area - off * 2.0)[::-1][:max_num]
                det = det[pick]
                if kps is not None:
                    kps = kps[pick]
            results.append((det, kps))
        return results

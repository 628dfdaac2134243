"""LivePortrait's own 203-point landmark model (``landmark.onnx``) and the eye / lip ratios its
retargeting networks were trained on.

Facts from KwaiVGI/LivePortrait (src/utils/landmark_runner.py, src/utils/retargeting_utils.py,
src/live_portrait_wrapper.py):

* the model runs on a 224x224 crop of the face (LivePortrait's crop: scale 1.5, vy_ratio -0.1, rotated
  upright), RGB, values / 255, NCHW; the third output holds the 203 points in crop-relative 0..1, so
  ``pts * 224`` then the crop's inverse transform gives frame pixels;
* eye close ratio (per eye) = |p6 - p18| / |p0 - p12| (image-left eye), |p30 - p42| / |p24 - p36|
  (image-right eye); lip close ratio = |p90 - p102| / |p48 - p66|; each denominator + 1e-6.

Without the file the expression nodes fall back to 68-point approximations of these ratios
(motion.eye_open_ratios / lip_open_ratio); docs/DESIGN.md says so.
"""

from __future__ import annotations

import logging
from typing import Optional

import cv2
import numpy as np
import torch

from ...core.errors import ModelFileInvalid
from ...core.onnx import OrtCpuModule, onnx_signature
from ...core.types import Face
from . import crop as C

log = logging.getLogger("visage")

FILE = "landmark.onnx"
SIZE = 224
SCALE = 1.5
VY_RATIO = -0.1
EXPECTED = "LivePortrait's landmark.onnx: input [1,3,224,224], three outputs, the third with 203 points (406 values)"


def check_signature(path: str) -> None:
    sig = onnx_signature(path)
    h, w = sig.input_hw()
    n_out = len(sig.outputs)
    third = sig.output_dim(2) if n_out >= 3 else None
    if len(sig.inputs) != 1 or (h, w) != (SIZE, SIZE) or n_out < 3 or third not in (406, None):
        raise ModelFileInvalid(
            path,
            f"it has {len(sig.inputs)} input(s) of size {sig.input_shape} and {n_out} output(s)"
            + (f" (the third with {third} values)" if n_out >= 3 else ""),
            EXPECTED,
        )


def load_landmark203(path: str, device=None, dtype=None):
    """The landmark model as an onnxruntime CPU session (a small network run once per face)."""
    check_signature(path)
    return OrtCpuModule(path)


def landmarks_203(model, image: torch.Tensor, face: Face) -> np.ndarray:
    """[203,2] frame-pixel landmarks of ``face`` in ``image`` ([H,W,3] float 0..1, RGB)."""
    m = C.crop_matrix(face, SIZE, SCALE, 0.0, VY_RATIO).astype(np.float64)
    img = (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    crop = cv2.warpAffine(img, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR)
    x = torch.from_numpy(crop.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    outs = model(x)
    if not isinstance(outs, (list, tuple)) or len(outs) < 3:
        raise ModelFileInvalid(getattr(model, "path", FILE), "it did not return three outputs", EXPECTED)
    pts = np.asarray(outs[2].detach().float().cpu() if torch.is_tensor(outs[2]) else outs[2], np.float64)
    pts = pts.reshape(-1, 2) * SIZE
    inv = cv2.invertAffineTransform(m)
    return (pts @ inv[:, :2].T + inv[:, 2]).astype(np.float32)


def _ratio(p: np.ndarray, a: int, b: int, c: int, d: int) -> float:
    return float(np.linalg.norm(p[a] - p[b]) / (np.linalg.norm(p[c] - p[d]) + 1e-6))


def eye_close_ratios(p203: np.ndarray) -> torch.Tensor:
    """[2]: (image-left eye, image-right eye), LivePortrait's calc_eye_close_ratio."""
    return torch.tensor([_ratio(p203, 6, 18, 0, 12), _ratio(p203, 30, 42, 24, 36)], dtype=torch.float32)


def lip_close_ratio(p203: np.ndarray) -> torch.Tensor:
    """[1]: LivePortrait's calc_lip_close_ratio."""
    return torch.tensor([_ratio(p203, 90, 102, 48, 66)], dtype=torch.float32)


def find(folder_paths_find) -> Optional[str]:
    """Path of landmark.onnx through ``folder_paths_find(name)`` (raises when absent), or None."""
    try:
        return folder_paths_find(FILE)
    except Exception:
        return None

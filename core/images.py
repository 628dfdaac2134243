"""ComfyUI IMAGE / MASK conventions and conversions (pure torch/numpy).

IMAGE: float tensor [B, H, W, C], 0..1, C = 3 (RGB) — sometimes 4 (RGBA) from loaders.
MASK:  float tensor [B, H, W], 0..1.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import VisageError, describe_tensor

MIN_SIDE = 16  # smaller images cannot hold a detectable face
MAX_PIXELS = 8192 * 8192 + 1  # 8K square and below; above we refuse (memory) with a clear message


def check_image(image, name: str = "image") -> torch.Tensor:
    """Validate an IMAGE batch and return it as RGB float [B,H,W,3] (alpha dropped)."""
    if isinstance(image, (list, tuple)) and image and all(isinstance(i, torch.Tensor) for i in image):
        shapes = {tuple(i.shape[-3:]) for i in image}
        if len(shapes) > 1:
            raise VisageError(
                f"The images of '{name}' differ in size",
                expected="one size for every image of a batch",
                got=f"sizes {sorted(shapes)}",
                fix="resize them to one size first (e.g. Upscale Image), or analyse them in separate runs",
            )
        image = torch.cat([i if i.ndim == 4 else i.unsqueeze(0) for i in image])
    if not isinstance(image, torch.Tensor):
        raise VisageError(
            f"'{name}' is not an IMAGE",
            expected="a ComfyUI IMAGE tensor [B,H,W,C]",
            got=type(image).__name__,
            fix="connect an IMAGE output (e.g. Load Image)",
        )
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise VisageError(
            f"'{name}' has the wrong layout",
            expected="[B,H,W,C] with C = 1, 3 or 4",
            got=describe_tensor(image),
            fix="connect an IMAGE output, not a MASK or latent",
        )
    if image.shape[0] == 0:
        raise VisageError(
            f"'{name}' is an empty batch",
            expected="at least one image",
            got="0 images",
            fix="check the node that produces the batch",
        )
    h, w = int(image.shape[1]), int(image.shape[2])
    if h == 0 or w == 0:
        raise VisageError(
            f"'{name}' has no pixels ({w}x{h})",
            expected="an image at least 1 pixel wide and high (faces need far more)",
            got=f"width {w}, height {h}",
            fix="check the node that makes the image (a crop, resize or batch split of size 0)",
        )
    if h * w > MAX_PIXELS:
        raise VisageError(
            f"'{name}' is too large to analyse ({w}x{h})",
            expected="at most 8192x8192 pixels",
            got=f"{w}x{h}",
            fix="downscale the image first (e.g. ImageScale)",
        )
    if image.shape[-1] == 4:
        image = image[..., :3]
    elif image.shape[-1] == 1:
        image = image.expand(-1, -1, -1, 3)
    if not image.is_floating_point():
        image = image.float() / 255.0
    return image


def to_uint8_np(image: torch.Tensor) -> np.ndarray:
    """[H,W,3] float 0..1 tensor -> uint8 numpy (RGB)."""
    return (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


def from_uint8_np(arr: np.ndarray) -> torch.Tensor:
    """uint8 numpy [H,W,3] -> float tensor 0..1 [H,W,3]."""
    return torch.from_numpy(np.ascontiguousarray(arr)).float() / 255.0


def to_255(image: torch.Tensor) -> torch.Tensor:
    """float 0..1 -> float 0..255 rounded to whole values (the 8-bit pipeline references use)."""
    return (image.float().clamp(0, 1) * 255.0).round()

"""Torch twins of Visage's fused kernels. These functions ARE the spec.

They run on any device (CPU in CI, CUDA for the "twin on the same GPU" benchmark); the Triton
kernels in ``triton_*.py`` must agree with them (``tests/gpu``), and the twins themselves are
checked against straightforward cv2 / loop / SDPA implementations (``tests/unit/test_kernels.py``).

Conventions shared with the fused kernels (see docs/DESIGN.md, "Kernels API"):

* Images are channels-last ``[B, H, W, C]``; float images hold 0..1, uint8 images 0..255.
* Pixel centres sit at integer coordinates (OpenCV / insightface convention).
* ``matrix`` maps frame pixels to crop pixels (``AlignedFaces.matrix``). Inverses are taken in
  float64 on the host and used as float32 coefficients by every implementation.
* Bilinear sampling with a zero border: a sample at crop coordinate ``u`` mixes the two
  neighbouring pixels; neighbours outside the image count as 0 (``cv2.BORDER_CONSTANT`` 0).
  A crop of side S therefore influences the frame only where ``-1 < u, v < S``: paste-back touches
  exactly the box covering the inverse image of the square ``[-1, S]^2`` (clipped to the frame),
  which gives the same result as a full-frame warp at a fraction of the cost.
* Several faces in one frame are pasted one after another in face order (later faces on top);
  uint8 frames are rounded after each face (the fused kernel does the same, one launch per layer).
* Colour transfer (``lab_stats``) is applied per output pixel to the bilinearly sampled crop colour:
  sRGB -> CIE LAB (OpenCV's constants, D65) -> ``(lab - crop_mean) * target_std / max(crop_std,
  1e-3) + target_mean`` -> sRGB, clamped to 0..1.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import VisageError, describe_tensor

# --------------------------------------------------------------------------------------------
# CIE LAB (OpenCV's float maths: sRGB gamma, D65 white, cv2's sRGB->XYZ matrix)
# --------------------------------------------------------------------------------------------
RGB2XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
WHITE_D65 = (0.950456, 1.0, 1.088754)
XYZ2RGB = tuple(tuple(float(x) for x in row) for row in np.linalg.inv(np.array(RGB2XYZ, np.float64)))
LAB_STD_EPS = 1e-3
LAB_T0 = 0.008856  # cv2's threshold on X/Xn, Y, Z/Zn
LAB_K = 7.787  # linear segment slope
LAB_F0 = 6.0 / 29.0  # threshold on f (inverse direction)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] sRGB 0..1 (float) -> [..., 3] LAB (L 0..100), float32, OpenCV COLOR_RGB2LAB maths."""
    c = rgb.float().clamp(0.0, 1.0)
    lin = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    r, g, b = lin.unbind(-1)
    m = RGB2XYZ
    x = (m[0][0] * r + m[0][1] * g + m[0][2] * b) / WHITE_D65[0]
    y = (m[1][0] * r + m[1][1] * g + m[1][2] * b) / WHITE_D65[1]
    z = (m[2][0] * r + m[2][1] * g + m[2][2] * b) / WHITE_D65[2]

    def f(t):
        return torch.where(t > LAB_T0, t.clamp_min(0.0) ** (1.0 / 3.0), LAB_K * t + 16.0 / 116.0)

    fx, fy, fz = f(x), f(y), f(z)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), -1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`; result clamped to 0..1, float32."""
    L, a, bb = lab.float().unbind(-1)
    fy = (L + 16.0) / 116.0
    fx = fy + a / 500.0
    fz = fy - bb / 200.0

    def finv(t):
        return torch.where(t > LAB_F0, t * t * t, (t - 16.0 / 116.0) / LAB_K)

    x = finv(fx) * WHITE_D65[0]
    y = finv(fy) * WHITE_D65[1]
    z = finv(fz) * WHITE_D65[2]
    m = XYZ2RGB
    lin = torch.stack(
        (
            m[0][0] * x + m[0][1] * y + m[0][2] * z,
            m[1][0] * x + m[1][1] * y + m[1][2] * z,
            m[2][0] * x + m[2][1] * y + m[2][2] * z,
        ),
        -1,
    ).clamp(0.0, 1.0)
    srgb = torch.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin.clamp_min(1e-12) ** (1.0 / 2.4) - 0.055)
    return srgb.clamp(0.0, 1.0)


def lab_transfer(rgb: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """rgb [..., 3] 0..1; stats [2, 2, 3] ((src mean, src std), (dst mean, dst std)) broadcastable
    from the left (e.g. [P, 2, 2, 3] for rgb [P, 3])."""
    stats = stats.float()
    lab = rgb_to_lab(rgb)
    src_m, src_s = stats[..., 0, 0, :], stats[..., 0, 1, :]
    dst_m, dst_s = stats[..., 1, 0, :], stats[..., 1, 1, :]
    lab = (lab - src_m) * (dst_s / src_s.clamp_min(LAB_STD_EPS)) + dst_m
    return lab_to_rgb(lab)


# --------------------------------------------------------------------------------------------
# validation helpers (shared with ops.py and the fused wrappers)
# --------------------------------------------------------------------------------------------
def _require(cond: bool, what: str, expected: str, got, fix: Optional[str] = None) -> None:
    """Raise VisageError unless ``cond``. ``got`` may be a callable, evaluated only on failure (these
    checks run on every kernel call; describing tensors for messages nobody reads costs microseconds)."""
    if not cond:
        raise VisageError(what, expected=expected, got=got() if callable(got) else got, fix=fix)


def _as_index(frame_index, n: int, batch: int) -> np.ndarray:
    """frame_index -> host int64 array [n] (validated)."""
    if isinstance(frame_index, torch.Tensor):
        idx = frame_index.detach().reshape(-1).to("cpu", torch.int64).numpy()
    else:
        idx = np.asarray(frame_index, dtype=np.int64).reshape(-1)
    _require(idx.size == n, "frame_index must hold one frame number per face", f"{n} entries", f"{idx.size} entries")
    if n:
        lo, hi = int(idx.min()), int(idx.max())
        _require(
            lo >= 0 and hi < batch,
            "frame_index points outside the frame batch",
            f"values in 0..{batch - 1}",
            f"values in {lo}..{hi}",
        )
    return idx


def _as_matrix(matrix, n: Optional[int] = None) -> np.ndarray:
    """matrix -> host float64 array [N, 2, 3] (validated; N checked when given)."""
    if isinstance(matrix, torch.Tensor):
        m = matrix.detach().to("cpu", torch.float64).numpy()
    else:
        m = np.asarray(matrix, dtype=np.float64)
    want = f"({n if n is not None else 'N'}, 2, 3)"
    _require(
        m.ndim == 3 and m.shape[1:] == (2, 3) and (n is None or m.shape[0] == n),
        "matrix must be one 2x3 affine per face",
        f"shape {want}",
        f"shape {tuple(m.shape)}",
    )
    _require(
        bool(np.isfinite(m).all()), "matrix holds NaN or infinite values", "finite affine matrices", "non-finite values"
    )
    return m


def invert_affine64(m) -> np.ndarray:
    """[N, 2, 3] affines (float64 numpy or tensor) -> inverses [N, 2, 3] float64 numpy;
    VisageError when singular."""
    m = np.asarray(m.detach().cpu().double() if isinstance(m, torch.Tensor) else m, dtype=np.float64)
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    det = a * e - b * d
    bad = np.abs(det) < 1e-12
    _require(
        not bool(bad.any()),
        "an affine matrix is singular (it squashes the face to a line)",
        "invertible face transforms",
        f"determinant ~0 for face(s) {np.flatnonzero(bad).tolist()}",
    )
    ia, ib = e / det, -b / det
    id_, ie = -d / det, a / det
    ic = -(ia * c + ib * f)
    if_ = -(id_ * c + ie * f)
    return np.stack((np.stack((ia, ib, ic), -1), np.stack((id_, ie, if_), -1)), 1)


def face_boxes(matrix64, size: int, height: int, width: int) -> List[Optional[Tuple[int, int, int, int]]]:
    """Inclusive frame boxes (x0, y0, x1, y1) that a crop of side ``size`` can touch, or None.

    The box covers the inverse image of the square [-1, size]^2 (the open support of a zero-border
    bilinear sample), floored/ceiled and clipped to the frame.
    """
    m = np.asarray(matrix64, dtype=np.float64)
    if m.shape[0] <= 16:
        return [_face_box(row, size, height, width, i) for i, row in enumerate(m.reshape(-1, 6).tolist())]
    inv = invert_affine64(m)
    s = float(size)
    corners = np.array([[-1.0, -1.0, 1.0], [s, -1.0, 1.0], [-1.0, s, 1.0], [s, s, 1.0]])
    pts = np.einsum("nij,kj->nki", inv, corners)  # [N, 4, 2]
    lo = np.floor(pts.min(1))
    hi = np.ceil(pts.max(1))
    out: List[Optional[Tuple[int, int, int, int]]] = []
    for i in range(pts.shape[0]):
        x0 = max(int(lo[i, 0]), 0)
        y0 = max(int(lo[i, 1]), 0)
        x1 = min(int(hi[i, 0]), width - 1)
        y1 = min(int(hi[i, 1]), height - 1)
        out.append((x0, y0, x1, y1) if (x0 <= x1 and y0 <= y1) else None)
    return out


def _face_box(m6, size: int, height: int, width: int, face: int = 0) -> Optional[Tuple[int, int, int, int]]:
    """face_boxes for one affine given as 6 Python floats (a few microseconds: no numpy on tiny arrays).
    Same float64 arithmetic as the vectorised path."""
    a, b, c, d, e, f = m6
    det = a * e - b * d
    _require(
        abs(det) >= 1e-12,
        "an affine matrix is singular (it squashes the face to a line)",
        "invertible face transforms",
        f"determinant ~0 for face(s) [{face}]",
    )
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    ic = -(ia * c + ib * f)
    if_ = -(id_ * c + ie * f)
    s = float(size)
    xs = [ia * u + ib * v + ic for u, v in ((-1.0, -1.0), (s, -1.0), (-1.0, s), (s, s))]
    ys = [id_ * u + ie * v + if_ for u, v in ((-1.0, -1.0), (s, -1.0), (-1.0, s), (s, s))]
    x0 = max(math.floor(min(xs)), 0)
    y0 = max(math.floor(min(ys)), 0)
    x1 = min(math.ceil(max(xs)), width - 1)
    y1 = min(math.ceil(max(ys)), height - 1)
    return (x0, y0, x1, y1) if (x0 <= x1 and y0 <= y1) else None


def _check_images(t, name: str, ndim: int = 4) -> None:
    _require(isinstance(t, torch.Tensor), f"{name} must be a torch tensor", "torch.Tensor", type(t).__name__)
    _require(
        t.dim() == ndim,
        f"{name} has the wrong number of dimensions",
        f"{ndim} dimensions (channels-last)",
        lambda: describe_tensor(t),
    )
    _require(
        t.dtype == torch.uint8 or t.is_floating_point(),
        f"{name} has an unsupported dtype",
        "uint8 or a float dtype",
        lambda: describe_tensor(t),
    )


def check_paste_args(frames, crops, matrix, masks, frame_index, lab_stats, inplace=False):
    """Validate paste_back arguments; returns (matrix [N,2,3] float64 numpy, frame_index [N] int64
    numpy, lab_stats float32 [N,2,2,3] on the frames' device or None)."""
    _check_images(frames, "frames")
    if inplace:
        _require(
            frames.is_contiguous(),
            "inplace paste_back needs contiguous frames",
            "a contiguous [B,H,W,C] tensor",
            "a non-contiguous view",
            fix="call frames.contiguous() first, or paste with inplace=False",
        )
    _check_images(crops, "crops")
    n, s, s2, c = crops.shape
    _require(s == s2, "crops must be square", "crops [N, S, S, C]", lambda: describe_tensor(crops))
    _require(
        c == frames.shape[-1],
        "crops and frames must have the same channel count",
        f"{frames.shape[-1]} channels",
        lambda: describe_tensor(crops),
    )
    _require(
        isinstance(masks, torch.Tensor) and tuple(masks.shape) == (n, s, s),
        "masks must be one crop-sized mask per face",
        f"shape ({n}, {s}, {s})",
        lambda: describe_tensor(masks),
    )
    _require(masks.is_floating_point(), "masks must be float 0..1", "a float tensor", lambda: describe_tensor(masks))
    m64 = _as_matrix(matrix, n)
    idx = _as_index(frame_index, n, frames.shape[0])
    stats = None
    if lab_stats is not None:
        stats = torch.as_tensor(lab_stats)
        _require(
            tuple(stats.shape) == (n, 2, 2, 3),
            "lab_stats must be ((crop mean, crop std), (target mean, target std)) in LAB per face",
            f"shape ({n}, 2, 2, 3)",
            lambda: describe_tensor(stats),
        )
        _require(c == 3, "colour transfer needs RGB images", "3 channels", f"{c} channels")
        stats = stats.to(frames.device, torch.float32)
    return m64, idx, stats


def _to_unit_float(t: torch.Tensor) -> torch.Tensor:
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


def _store(values01: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.uint8:
        return (values01 * 255.0).round().clamp(0, 255).to(torch.uint8)
    return values01.to(dtype)


def bilinear_zero(img: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Sample ``img`` [h, w, C] (float) at pixel coordinates (u=x, v=y) of any shape -> [..., C].
    Zero border, pixel centres at integers (cv2.warpAffine INTER_LINEAR + BORDER_CONSTANT 0)."""
    h, w = img.shape[0], img.shape[1]
    x0f = torch.floor(u)
    y0f = torch.floor(v)
    fx = (u - x0f).unsqueeze(-1)
    fy = (v - y0f).unsqueeze(-1)
    x0 = x0f.to(torch.int64)
    y0 = y0f.to(torch.int64)
    flat = img.reshape(h * w, -1)

    def tap(yy, xx):
        ok = ((xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)).unsqueeze(-1)
        lin = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).reshape(-1)
        val = flat.index_select(0, lin).reshape(*xx.shape, flat.shape[-1])
        return val * ok

    top = tap(y0, x0) * (1.0 - fx) + tap(y0, x0 + 1) * fx
    bot = tap(y0 + 1, x0) * (1.0 - fx) + tap(y0 + 1, x0 + 1) * fx
    return top * (1.0 - fy) + bot * fy


# --------------------------------------------------------------------------------------------
# paste_back
# --------------------------------------------------------------------------------------------
def paste_back(
    frames: torch.Tensor,
    crops: torch.Tensor,
    matrix: torch.Tensor,
    masks: torch.Tensor,
    frame_index: torch.Tensor,
    lab_stats: Optional[torch.Tensor] = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Blend each aligned crop back into its frame, only inside the face's box.

    frames [B,H,W,C] float 0..1 or uint8; crops [N,S,S,C] float 0..1 or uint8; matrix [N,2,3] frame px
    -> crop px; masks [N,S,S] float 0..1 (feathered, crop space); frame_index [N] int64; lab_stats
    optional [N,2,2,3]. out = frame * (1 - m) + transfer(crop) * m, with crop and m bilinearly sampled.
    Returns a new tensor, or with ``inplace=True`` writes into ``frames`` (which must be contiguous;
    only the face boxes are touched) and returns it - for callers that own their frames.
    """
    m64, idx, stats = check_paste_args(frames, crops, matrix, masks, frame_index, lab_stats, inplace)
    out = frames if inplace else frames.clone()
    n, s = crops.shape[0], crops.shape[1]
    if n == 0:
        return out
    H, W = frames.shape[1], frames.shape[2]
    boxes = face_boxes(m64, s, H, W)
    m32 = m64.astype(np.float32)
    idx_host = idx.tolist()
    dev = frames.device
    for i in range(n):
        box = boxes[i]
        if box is None:
            continue
        x0, y0, x1, y1 = box
        ys = torch.arange(y0, y1 + 1, device=dev, dtype=torch.float32)
        xs = torch.arange(x0, x1 + 1, device=dev, dtype=torch.float32)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        a = m32[i].tolist()
        u = a[0][0] * gx + a[0][1] * gy + a[0][2]
        v = a[1][0] * gx + a[1][1] * gy + a[1][2]
        crop = _to_unit_float(crops[i].to(dev))
        c = bilinear_zero(crop, u, v)
        mk = bilinear_zero(masks[i].to(dev).float().unsqueeze(-1), u, v)
        if stats is not None:
            c = lab_transfer(c, stats[i])
        b = idx_host[i]
        region = _to_unit_float(out[b, y0 : y1 + 1, x0 : x1 + 1, :])
        blended = region * (1.0 - mk) + c * mk
        out[b, y0 : y1 + 1, x0 : x1 + 1, :] = _store(blended, frames.dtype)
    return out


# --------------------------------------------------------------------------------------------
# lab_stats
# --------------------------------------------------------------------------------------------
def lab_stats(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """images [N,S,S,3] 0..1 (or uint8), masks [N,S,S] 0..1 -> [N,2,3]: (mean, std) of LAB under the
    mask, the mask values being the weights. An all-zero mask gives mean 0, std 0."""
    _check_images(images, "images")
    _require(images.shape[-1] == 3, "lab_stats needs RGB images", "3 channels", lambda: describe_tensor(images))
    _require(
        isinstance(masks, torch.Tensor) and tuple(masks.shape) == tuple(images.shape[:3]),
        "masks must match the images",
        f"shape {tuple(images.shape[:3])}",
        lambda: describe_tensor(masks),
    )
    lab = rgb_to_lab(_to_unit_float(images))  # [N,S,S,3]
    w = masks.float().clamp(0.0, 1.0).unsqueeze(-1)  # [N,S,S,1]
    tot = w.sum((1, 2)).clamp_min(1e-12)  # [N,1]
    mean = (lab * w).sum((1, 2)) / tot
    var = ((lab - mean[:, None, None, :]) ** 2 * w).sum((1, 2)) / tot
    empty = w.sum((1, 2)) <= 0
    mean = torch.where(empty, torch.zeros_like(mean), mean)
    return torch.stack((mean, var.clamp_min(0.0).sqrt()), 1)


# --------------------------------------------------------------------------------------------
# align_crops
# --------------------------------------------------------------------------------------------
def check_align_args(frames, matrix, frame_index, size, mean, std, bgr, layout, out_dtype, round_to_uint8=False):
    _check_images(frames, "frames")
    _require(
        isinstance(round_to_uint8, (bool, np.bool_)),
        "round_to_uint8 must be True or False",
        "a bool",
        lambda: repr(round_to_uint8),
    )
    m64 = _as_matrix(matrix)
    n = m64.shape[0]
    idx = _as_index(frame_index, n, frames.shape[0])
    _require(isinstance(size, int) and size > 0, "size must be a positive integer", "e.g. 112, 128 or 512", repr(size))
    _require(layout in ("NCHW", "NHWC"), "layout must be 'NCHW' or 'NHWC'", "'NCHW' or 'NHWC'", repr(layout))
    c = frames.shape[-1]
    _require(not bgr or c == 3, "bgr=True needs RGB frames", "3 channels", f"{c} channels")
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
    _require(
        mean_t.numel() in (1, c) and std_t.numel() in (1, c),
        "mean/std must be one number or one per channel",
        f"1 or {c} values",
        f"{mean_t.numel()} and {std_t.numel()} values",
    )
    _require(bool((std_t != 0).all()), "std must not be zero", "non-zero std", str(std_t.tolist()))
    _require(
        isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point,
        "out_dtype must be a float dtype",
        "e.g. torch.float32 or torch.float16",
        repr(out_dtype),
    )
    return m64, idx, mean_t.expand(c).contiguous(), std_t.expand(c).contiguous()


def align_crops(
    frames: torch.Tensor,
    matrix: torch.Tensor,
    frame_index: torch.Tensor,
    size: int,
    mean: Union[float, Sequence[float]] = 0.0,
    std: Union[float, Sequence[float]] = 1.0,
    bgr: bool = False,
    layout: str = "NCHW",
    out_dtype: torch.dtype = torch.float32,
    round_to_uint8: bool = False,
) -> torch.Tensor:
    """Warp, normalise and lay out model-ready crops in one pass.

    Crop pixel (x, y) samples frame point inverse(matrix) @ (x, y, 1) bilinearly (zero outside the
    frame, as cv2.warpAffine with BORDER_CONSTANT 0), giving a value p in 0..255: for uint8 frames
    the four taps are the raw 0..255 values, for float frames (0..1) the interpolated value times 255.
    round_to_uint8=True then emulates cv2.warpAffine on a uint8 image (what insightface feeds its
    models): p = clamp(floor(p + 0.5), 0, 255). value = (p - mean) / std. bgr=True swaps R and B
    first; mean/std (one or per channel) apply in the output channel order. layout 'NCHW' ->
    [N,C,S,S]; 'NHWC' -> [N,S,S,C].
    """
    m64, idx, mean_t, std_t = check_align_args(
        frames, matrix, frame_index, size, mean, std, bgr, layout, out_dtype, round_to_uint8
    )
    n, c = m64.shape[0], frames.shape[-1]
    dev = frames.device
    if n == 0:
        shape = (0, c, size, size) if layout == "NCHW" else (0, size, size, c)
        return torch.empty(shape, dtype=out_dtype, device=dev)
    inv = torch.from_numpy(invert_affine64(m64).astype(np.float32)).to(dev)  # crop px -> frame px
    mean_t, std_t = mean_t.to(dev), std_t.to(dev)
    shape = (n, c, size, size) if layout == "NCHW" else (n, size, size, c)
    out = torch.empty(shape, dtype=out_dtype, device=dev)
    step = max(1, ALIGN_CHUNK_PIXELS // (size * size))  # bounded temporaries for big batches
    for s0 in range(0, n, step):
        _align_into(
            out[s0 : s0 + step],
            frames,
            inv[s0 : s0 + step],
            idx[s0 : s0 + step],
            size,
            mean_t,
            std_t,
            bgr,
            layout,
            round_to_uint8,
        )
    return out


ALIGN_CHUNK_PIXELS = 1 << 18  # crop pixels per chunk: some tens of MB of temporaries, cache-friendlier


def _align_into(out, frames, inv, idx, size, mean_t, std_t, bgr, layout, round_to_uint8):
    """align_crops for one chunk of faces, written into ``out`` (a slice of the result)."""
    n, dev = inv.shape[0], frames.device
    B, H, W, c = frames.shape
    g = torch.arange(size, device=dev, dtype=torch.float32)
    gy, gx = torch.meshgrid(g, g, indexing="ij")
    a = inv[:, None, None, :, :]
    u = a[..., 0, 0] * gx + a[..., 0, 1] * gy + a[..., 0, 2]  # [n,S,S]
    v = a[..., 1, 0] * gx + a[..., 1, 1] * gy + a[..., 1, 2]
    x0f, y0f = torch.floor(u), torch.floor(v)
    fx, fy = u - x0f, v - y0f
    # The zero border is folded into the weights (a tap outside the frame weighs 0), which gives the
    # same value as zeroing the tap: ((t00*(1-fx) + t01*fx)*(1-fy) + (t10*(1-fx) + t11*fx)*fy.
    wx0 = (1.0 - fx) * ((x0f >= 0) & (x0f < W))
    wx1 = fx * ((x0f >= -1) & (x0f < W - 1))
    wy0 = (1.0 - fy) * ((y0f >= 0) & (y0f < H))
    wy1 = fy * ((y0f >= -1) & (y0f < H - 1))
    # one batch-aware gather of the 2x2 neighbourhoods (indices clamped; the weights zero the outside)
    base = torch.from_numpy(idx * (H * W)).to(dev).view(n, 1, 1)
    xc0, xc1 = x0f.clamp(0, W - 1).to(torch.int64), (x0f + 1.0).clamp(0, W - 1).to(torch.int64)
    r0 = base + y0f.clamp(0, H - 1).to(torch.int64) * W
    r1 = base + (y0f + 1.0).clamp(0, H - 1).to(torch.int64) * W
    lin = torch.stack((r0 + xc0, r0 + xc1, r1 + xc0, r1 + xc1), 0).reshape(-1)  # [4*P]
    P = n * size * size
    taps = torch.empty((c, 4, P), dtype=torch.float32, device=dev)  # channel planes
    taps.copy_(frames.reshape(B * H * W, c).index_select(0, lin).view(4, P, c).permute(2, 0, 1))  # uint8: raw
    wx0, wx1, wy0, wy1 = (w.reshape(P) for w in (wx0, wx1, wy0, wy1))
    for oc in range(c):
        t = taps[c - 1 - oc if bgr else oc]  # [4, P]; bgr swaps R and B
        pix = (t[0] * wx0 + t[1] * wx1) * wy0 + (t[2] * wx0 + t[3] * wx1) * wy1
        if frames.dtype != torch.uint8:
            pix.mul_(255.0)  # 0..255
        if round_to_uint8:
            pix.add_(0.5).floor_().clamp_(0.0, 255.0)  # cv2 on uint8: round half up, saturate
        val = ((pix - mean_t[oc : oc + 1]) / std_t[oc : oc + 1]).view(n, size, size)
        (out[:, oc] if layout == "NCHW" else out[..., oc]).copy_(val)


# --------------------------------------------------------------------------------------------
# decoupled_attention
# --------------------------------------------------------------------------------------------
def check_attention_args(q, k, v, k_id, v_id, scale, region_mask):
    for name, t, nd in (("q", q, 4), ("k", k, 4), ("v", v, 4), ("k_id", k_id, 5), ("v_id", v_id, 5)):
        _require(
            isinstance(t, torch.Tensor) and t.dim() == nd,
            f"{name} has the wrong shape",
            f"{nd} dimensions",
            lambda: describe_tensor(t),
        )
    B, Hh, Lq, D = q.shape
    _require(
        k.shape[:2] == (B, Hh) and k.shape[3] == D and v.shape[:3] == k.shape[:3],
        "text keys/values do not match the queries",
        f"k [{B},{Hh},Lt,{D}], v [{B},{Hh},Lt,Dv]",
        lambda: f"k {tuple(k.shape)}, v {tuple(v.shape)}",
    )
    Dv = v.shape[3]
    I, T = k_id.shape[2], k_id.shape[3]
    _require(
        k_id.shape[:2] == (B, Hh) and k_id.shape[4] == D and tuple(v_id.shape) == (B, Hh, I, T, Dv),
        "identity keys/values do not match the queries",
        f"k_id [{B},{Hh},I,T,{D}], v_id [{B},{Hh},I,T,{Dv}]",
        lambda: f"k_id {tuple(k_id.shape)}, v_id {tuple(v_id.shape)}",
    )
    if isinstance(scale, torch.Tensor):
        st = scale.to(q.device, torch.float32)
        if st.dim() == 0:
            st = st.expand(B, I)
        elif st.dim() == 1:
            _require(st.shape[0] == I, "scale must be a number, [I] or [B, I]", f"[{I}]", lambda: describe_tensor(st))
            st = st.unsqueeze(0).expand(B, I)
        else:
            _require(
                tuple(st.shape) == (B, I),
                "scale must be a number, [I] or [B, I]",
                f"[{B}, {I}]",
                lambda: describe_tensor(st),
            )
    elif isinstance(scale, (list, tuple)):
        return check_attention_args(q, k, v, k_id, v_id, torch.tensor(scale, dtype=torch.float32), region_mask)
    else:
        st = torch.full((B, I), float(scale), device=q.device, dtype=torch.float32)
    mask = None
    if region_mask is not None:
        _require(
            isinstance(region_mask, torch.Tensor) and tuple(region_mask.shape) == (B, I, Lq),
            "region_mask must give one weight per identity and query position",
            f"[{B}, {I}, {Lq}]",
            lambda: describe_tensor(region_mask),
        )
        mask = region_mask.to(q.device, torch.float32)
    return st.contiguous(), mask


def decoupled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_id: torch.Tensor,
    v_id: torch.Tensor,
    scale,
    region_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """out = softmax(q k^T / sqrt(D)) v + sum_i scale_i * m_i * softmax(q k_i^T / sqrt(D)) v_i.

    q [B,H,Lq,D]; k, v [B,H,Lt,D(v)]; k_id, v_id [B,H,I,T,D(v)]; scale float, [I] or [B,I];
    region_mask None or [B,I,Lq] in 0..1. Each group has its own softmax. Output dtype = q.dtype.
    """
    st, mask = check_attention_args(q, k, v, k_id, v_id, scale, region_mask)
    out = F.scaled_dot_product_attention(q, k, v).float()
    I = k_id.shape[2]
    if I == 0 or k_id.shape[3] == 0:
        return out.to(q.dtype)
    qi = q.unsqueeze(2).expand(-1, -1, I, -1, -1)  # [B,H,I,Lq,D]
    ido = F.scaled_dot_product_attention(qi, k_id, v_id).float()  # [B,H,I,Lq,Dv]
    w = st[:, None, :, None, None]  # [B,1,I,1,1]
    if mask is not None:
        w = w * mask[:, None, :, :, None]  # [B,1,I,Lq,1]
    out = out + (ido * w).sum(2)
    return out.to(q.dtype)

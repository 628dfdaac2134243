"""Fused batched face alignment (Triton). Same contract as :func:`kernels.reference.align_crops`.

One program writes BLOCK crop pixels of one face: inverse-affine to frame coordinates, bilinear
sample with a zero border (cv2.warpAffine BORDER_CONSTANT 0), optional RGB->BGR, optional cv2-on-uint8
rounding (ROUND: floor(p + 0.5) clamped to 0..255), (p - mean)/std, and the requested layout and
dtype - frames read once, model-ready crops written once. int64 offsets. The float operations are
the twin's, in the twin's order (taps, bilinear mix, then *255 for float frames), and the kernel is
compiled without FMA contraction, so the rounding decision matches the twin's.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from . import reference
from .triton_common import bilinear, sample_coords


@triton.jit
def _align_kernel(
    frames_ptr,
    out_ptr,
    inv_ptr,
    fidx_ptr,
    mean_ptr,
    std_ptr,
    H,
    W,
    S,
    C: tl.constexpr,
    IS_U8: tl.constexpr,
    BGR: tl.constexpr,
    NCHW: tl.constexpr,
    BLOCK: tl.constexpr,
    ROUND: tl.constexpr = False,
):
    n = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    # per face, 7 int32 words: 6 float32 inverse-matrix coefficients (bit patterns), frame index
    b = tl.load(fidx_ptr + n * 7 + 6).to(tl.int64)
    a0 = tl.load(inv_ptr + n * 7 + 0)
    a1 = tl.load(inv_ptr + n * 7 + 1)
    a2 = tl.load(inv_ptr + n * 7 + 2)
    a3 = tl.load(inv_ptr + n * 7 + 3)
    a4 = tl.load(inv_ptr + n * 7 + 4)
    a5 = tl.load(inv_ptr + n * 7 + 5)
    S64 = n * 0 + S
    H64 = n * 0 + H
    W64 = n * 0 + W
    p = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    ok = p < S64 * S64
    y = p // S64
    x = p - y * S64
    xf = x.to(tl.float32)
    yf = y.to(tl.float32)
    cx, cy, fx, fy = sample_coords(a0, a1, a2, a3, a4, a5, xf, yf, W64, H64, True)
    base = b * H64 * W64 * C
    for oc in tl.static_range(C):
        if BGR:
            c = C - 1 - oc
        else:
            c = oc
        val = bilinear(frames_ptr, base, cx, cy, fx, fy, H64, W64, C, c, ok, False)  # uint8: 0..255 already
        if not IS_U8:
            val = val * 255.0
        if ROUND:  # cv2.warpAffine on uint8: round half up, saturate
            val = tl.minimum(tl.maximum(tl.floor(val + 0.5), 0.0), 255.0)
        val = (val - tl.load(mean_ptr + oc)) / tl.load(std_ptr + oc)
        if NCHW:
            off = ((n * C + oc) * S64 + y) * S64 + x
        else:
            off = p * C + n * S64 * S64 * C + oc
        tl.store(out_ptr + off, val.to(out_ptr.dtype.element_ty), mask=ok)


BLOCK = 256


def align_crops(
    frames,
    matrix,
    frame_index,
    size,
    mean=0.0,
    std=1.0,
    bgr=False,
    layout="NCHW",
    out_dtype=torch.float32,
    round_to_uint8=False,
):
    """Fused alignment; arguments as :func:`kernels.reference.align_crops`."""
    m64, idx, mean_t, std_t = reference.check_align_args(
        frames, matrix, frame_index, size, mean, std, bgr, layout, out_dtype, round_to_uint8
    )
    return align_crops_checked(frames, m64, idx, size, mean_t, std_t, bgr, layout, out_dtype, round_to_uint8)


def align_crops_checked(frames, m64, idx, size, mean_t, std_t, bgr, layout, out_dtype, round_to_uint8=False):
    """align_crops on arguments already validated by reference.check_align_args."""
    n, c = m64.shape[0], frames.shape[-1]
    dev = frames.device
    shape = (n, c, size, size) if layout == "NCHW" else (n, size, size, c)
    out = torch.empty(shape, dtype=out_dtype, device=dev)
    if n == 0:
        return out
    B, H, W = frames.shape[:3]
    # one host buffer -> one copy: per-face records (inverse matrix bits + frame), then mean, std
    rec = np.zeros((n, 7), np.int32)
    rec[:, :6] = reference.invert_affine64(m64).astype(np.float32).reshape(n, 6).view(np.int32)
    rec[:, 6] = idx
    stats = np.concatenate([mean_t.numpy().astype(np.float32), std_t.numpy().astype(np.float32)]).view(np.int32)
    host = torch.from_numpy(np.concatenate([rec.reshape(-1), stats]))
    # pinned + non-blocking: the copy is queued, the stream is never synchronised (tests/gpu checks)
    buf = host.pin_memory().to(dev, non_blocking=True) if frames.is_cuda else host
    fbuf = buf.view(torch.float32)
    grid = (n, triton.cdiv(size * size, BLOCK))
    _align_kernel[grid](
        frames.contiguous(),
        out,
        fbuf,
        buf,
        fbuf[n * 7 :],
        fbuf[n * 7 + c :],
        H,
        W,
        size,
        C=c,
        IS_U8=frames.dtype == torch.uint8,
        BGR=bool(bgr),
        NCHW=layout == "NCHW",
        BLOCK=BLOCK,
        ROUND=bool(round_to_uint8),
        enable_fp_fusion=False,
    )
    return out

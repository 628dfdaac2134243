"""Triton helpers shared by the fused paste-back and alignment kernels: the affine-to-sample
prologue and the zero-border bilinear sample (cv2 BORDER_CONSTANT 0, pixel centres on integers).

Same float operations in the same order as the torch twins (kernels/reference.py: ``bilinear_zero``
and ``align_crops``); both kernels are compiled without FMA contraction so results match the twins.
Imported lazily with the kernels (requires Triton).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sample_coords(a0, a1, a2, a3, a4, a5, xf, yf, W, H, CLAMP: tl.constexpr):
    """Source point of (xf, yf) under the affine (a0 a1 a2; a3 a4 a5): integer corner (int64) and
    fractional weights. CLAMP: clamp the corner to [-2, W+1] x [-2, H+1] first (samples that far out
    are zero anyway; it keeps the int cast defined when points can lie anywhere, as in alignment;
    paste-back only visits its box, where the source point is always within the crop's support)."""
    u = a0 * xf + a1 * yf + a2
    v = a3 * xf + a4 * yf + a5
    uf = tl.floor(u)
    vf = tl.floor(v)
    fx = u - uf
    fy = v - vf
    if CLAMP:
        uf = tl.minimum(tl.maximum(uf, -2.0), W.to(tl.float32) + 1.0)
        vf = tl.minimum(tl.maximum(vf, -2.0), H.to(tl.float32) + 1.0)
    return uf.to(tl.int64), vf.to(tl.int64), fx, fy


@triton.jit
def tap(ptr, base, xi, yi, H, W, C, c, ok, UNIT_U8: tl.constexpr):
    """One channel-last pixel as float32; 0 outside the image. UNIT_U8: divide by 255 (uint8 -> 0..1)."""
    inside = ok & (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
    v = tl.load(ptr + base + (yi * W + xi) * C + c, mask=inside, other=0).to(tl.float32)
    if UNIT_U8:
        v = v / 255.0
    return v


@triton.jit
def bilinear(ptr, base, x0, y0, fx, fy, H, W, C, c, ok, UNIT_U8: tl.constexpr):
    """Zero-border bilinear sample of channel c at (x0 + fx, y0 + fy)."""
    v00 = tap(ptr, base, x0, y0, H, W, C, c, ok, UNIT_U8)
    v01 = tap(ptr, base, x0 + 1, y0, H, W, C, c, ok, UNIT_U8)
    v10 = tap(ptr, base, x0, y0 + 1, H, W, C, c, ok, UNIT_U8)
    v11 = tap(ptr, base, x0 + 1, y0 + 1, H, W, C, c, ok, UNIT_U8)
    top = v00 * (1.0 - fx) + v01 * fx
    bot = v10 * (1.0 - fx) + v11 * fx
    return top * (1.0 - fy) + bot * fy

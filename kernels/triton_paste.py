"""Fused paste-back (Triton). Same contract as :func:`kernels.reference.paste_back` (the spec).

One program handles BLOCK frame pixels of one face's box: it samples the crop and the mask
bilinearly (zero border), applies the optional LAB colour transfer, blends and stores - one read
and one write of each box pixel, nothing outside the boxes. Faces that share a frame are pasted in
order, one launch per "layer" (layer k = the k-th face of every frame), so overlapping faces compose
exactly like the twin. All offsets are computed in int64.

Imported lazily by kernels/ops.py on the first CUDA call; importing it requires Triton.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from . import reference
from .triton_common import bilinear, sample_coords

# LAB constants (kept in sync with reference.py; test_kernels_triton_interp checks the results)
_M = reference.RGB2XYZ
_MI = reference.XYZ2RGB
_WX, _WY, _WZ = reference.WHITE_D65


@triton.jit
def _pow(x, e):
    # x >= 0 expected (tiny floor keeps log2 finite; callers only use x well above it)
    return tl.exp2(tl.log2(tl.maximum(x, 1e-30)) * e)


@triton.jit
def _srgb_to_lab(r, g, b, m00, m01, m02, m10, m11, m12, m20, m21, m22, wx, wy, wz):
    r = tl.minimum(tl.maximum(r, 0.0), 1.0)
    g = tl.minimum(tl.maximum(g, 0.0), 1.0)
    b = tl.minimum(tl.maximum(b, 0.0), 1.0)
    r = tl.where(r <= 0.04045, r / 12.92, _pow((r + 0.055) / 1.055, 2.4))
    g = tl.where(g <= 0.04045, g / 12.92, _pow((g + 0.055) / 1.055, 2.4))
    b = tl.where(b <= 0.04045, b / 12.92, _pow((b + 0.055) / 1.055, 2.4))
    x = (m00 * r + m01 * g + m02 * b) / wx
    y = (m10 * r + m11 * g + m12 * b) / wy
    z = (m20 * r + m21 * g + m22 * b) / wz
    fx = tl.where(x > 0.008856, _pow(tl.maximum(x, 0.0), 1.0 / 3.0), 7.787 * x + 16.0 / 116.0)
    fy = tl.where(y > 0.008856, _pow(tl.maximum(y, 0.0), 1.0 / 3.0), 7.787 * y + 16.0 / 116.0)
    fz = tl.where(z > 0.008856, _pow(tl.maximum(z, 0.0), 1.0 / 3.0), 7.787 * z + 16.0 / 116.0)
    return 116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)


@triton.jit
def _finv(t):
    return tl.where(t > 6.0 / 29.0, t * t * t, (t - 16.0 / 116.0) / 7.787)


@triton.jit
def _gamma(c):
    c = tl.minimum(tl.maximum(c, 0.0), 1.0)
    v = tl.where(c <= 0.0031308, 12.92 * c, 1.055 * _pow(tl.maximum(c, 1e-12), 1.0 / 2.4) - 0.055)
    return tl.minimum(tl.maximum(v, 0.0), 1.0)


@triton.jit
def _lab_to_srgb(L, a, bb, i00, i01, i02, i10, i11, i12, i20, i21, i22, wx, wy, wz):
    fy = (L + 16.0) / 116.0
    fx = fy + a / 500.0
    fz = fy - bb / 200.0
    x = _finv(fx) * wx
    y = _finv(fy) * wy
    z = _finv(fz) * wz
    r = i00 * x + i01 * y + i02 * z
    g = i10 * x + i11 * y + i12 * z
    b = i20 * x + i21 * y + i22 * z
    return _gamma(r), _gamma(g), _gamma(b)


@triton.jit
def _blend_store(out_ptr, off, val, m, ok, OUT_U8: tl.constexpr):
    f = tl.load(out_ptr + off, mask=ok, other=0).to(tl.float32)
    if OUT_U8:
        f = f / 255.0
    res = f * (1.0 - m) + val * m
    if OUT_U8:
        res = tl.minimum(tl.maximum(tl.floor(res * 255.0 + 0.5), 0.0), 255.0)
    tl.store(out_ptr + off, res.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _paste_kernel(
    out_ptr,
    crops_ptr,
    masks_ptr,
    params_ptr,
    fparams_ptr,
    lab_ptr,
    faces_ptr,
    H,
    W,
    S,
    m00,
    m01,
    m02,
    m10,
    m11,
    m12,
    m20,
    m21,
    m22,
    i00,
    i01,
    i02,
    i10,
    i11,
    i12,
    i20,
    i21,
    i22,
    wx,
    wy,
    wz,
    C: tl.constexpr,
    CROP_U8: tl.constexpr,
    OUT_U8: tl.constexpr,
    HAS_LAB: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid_t = tl.program_id(0)
    j = tl.program_id(1)
    face = tl.load(faces_ptr + j).to(tl.int64)
    # per face, 11 int32 words: 6 float32 matrix coefficients (bit patterns), frame, x0, y0, w, h
    rec = face * 11
    a0 = tl.load(fparams_ptr + rec + 0)
    a1 = tl.load(fparams_ptr + rec + 1)
    a2 = tl.load(fparams_ptr + rec + 2)
    a3 = tl.load(fparams_ptr + rec + 3)
    a4 = tl.load(fparams_ptr + rec + 4)
    a5 = tl.load(fparams_ptr + rec + 5)
    b = tl.load(params_ptr + rec + 6).to(tl.int64)
    x0 = tl.load(params_ptr + rec + 7).to(tl.int64)
    y0 = tl.load(params_ptr + rec + 8).to(tl.int64)
    bw = tl.load(params_ptr + rec + 9).to(tl.int64)
    bh = tl.load(params_ptr + rec + 10).to(tl.int64)

    p = pid_t.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    ok = p < bw * bh
    py = p // bw
    px = p - py * bw
    x = x0 + px
    y = y0 + py
    xf = x.to(tl.float32)
    yf = y.to(tl.float32)
    S64 = face * 0 + S  # int64 (scalar args may arrive as int32)
    cx, cy, fx, fy = sample_coords(a0, a1, a2, a3, a4, a5, xf, yf, S64, S64, False)
    mbase = face * S64 * S64
    m = bilinear(masks_ptr, mbase, cx, cy, fx, fy, S64, S64, 1, 0, ok, False)
    cbase = face * S64 * S64 * C
    obase = ((b * H + y) * W + x) * C
    if HAS_LAB:
        r = bilinear(crops_ptr, cbase, cx, cy, fx, fy, S64, S64, C, 0, ok, CROP_U8)
        g = bilinear(crops_ptr, cbase, cx, cy, fx, fy, S64, S64, C, 1, ok, CROP_U8)
        bl = bilinear(crops_ptr, cbase, cx, cy, fx, fy, S64, S64, C, 2, ok, CROP_U8)
        L, A, Bb = _srgb_to_lab(r, g, bl, m00, m01, m02, m10, m11, m12, m20, m21, m22, wx, wy, wz)
        lb = lab_ptr + face * 12
        L = (L - tl.load(lb + 0)) * (tl.load(lb + 9) / tl.maximum(tl.load(lb + 3), 1e-3)) + tl.load(lb + 6)
        A = (A - tl.load(lb + 1)) * (tl.load(lb + 10) / tl.maximum(tl.load(lb + 4), 1e-3)) + tl.load(lb + 7)
        Bb = (Bb - tl.load(lb + 2)) * (tl.load(lb + 11) / tl.maximum(tl.load(lb + 5), 1e-3)) + tl.load(lb + 8)
        r, g, bl = _lab_to_srgb(L, A, Bb, i00, i01, i02, i10, i11, i12, i20, i21, i22, wx, wy, wz)
        _blend_store(out_ptr, obase + 0, r, m, ok, OUT_U8)
        _blend_store(out_ptr, obase + 1, g, m, ok, OUT_U8)
        _blend_store(out_ptr, obase + 2, bl, m, ok, OUT_U8)
    else:
        for c in tl.static_range(C):
            val = bilinear(crops_ptr, cbase, cx, cy, fx, fy, S64, S64, C, c, ok, CROP_U8)
            _blend_store(out_ptr, obase + c, val, m, ok, OUT_U8)


BLOCK = 256
_CONSTS = [*(_M[0] + _M[1] + _M[2]), *(_MI[0] + _MI[1] + _MI[2]), _WX, _WY, _WZ]


def paste_back(frames, crops, matrix, masks, frame_index, lab_stats=None, inplace=False):
    """Fused paste-back; arguments as :func:`kernels.reference.paste_back`."""
    m64, idx, stats = reference.check_paste_args(frames, crops, matrix, masks, frame_index, lab_stats, inplace)
    return paste_back_checked(frames, crops, masks, m64, idx, stats, inplace)


def paste_back_checked(frames, crops, masks, m64, idx, stats, inplace=False):
    """paste_back on arguments already validated by reference.check_paste_args (host matrix/index).

    Host work is kept to a few tens of microseconds (it bounds small pastes on a fast GPU): boxes in
    Python floats, one packed parameter buffer, one pinned non-blocking copy to the device (no
    stream synchronisation), one launch per layer of faces.
    """
    out = frames if inplace else frames.contiguous().clone()
    n = crops.shape[0]
    if n == 0:
        return out
    B, H, W, C = frames.shape
    S = crops.shape[1]
    boxes = reference.face_boxes(m64, S, H, W)
    mats = m64.reshape(n, 6).tolist()
    frame_of = idx.tolist()
    # per face 11 words: 6 float32 matrix coefficients, then frame, x0, y0, w, h (int32);
    # then the face numbers of each layer (layer k = the k-th face of every frame)
    recs = bytearray(44 * n)
    layers, seen, tiles = {}, {}, {}
    for i, box in enumerate(boxes):
        if box is None:
            continue
        x0, y0, x1, y1 = box
        b = frame_of[i]
        w, h = x1 - x0 + 1, y1 - y0 + 1
        _REC.pack_into(recs, 44 * i, *mats[i], b, x0, y0, w, h)
        k = seen.get(b, 0)
        seen[b] = k + 1
        layers.setdefault(k, []).append(i)
        tiles[i] = -(-(w * h) // BLOCK)
    if not layers:
        return out
    order = sorted(layers)
    flat = [i for k in order for i in layers[k]]
    host = torch.frombuffer(recs + struct.pack(f"<{len(flat)}i", *flat), dtype=torch.int32)
    if frames.is_cuda:
        buf = host.pin_memory().to(frames.device, non_blocking=True)
    else:  # (compile-only tooling on the CPU) an aligned copy, as a device buffer is
        buf = host.clone()
    fbuf = buf.view(torch.float32)
    crops_c = crops.contiguous()
    masks_c = masks.contiguous()
    lab = stats.reshape(n, 12).contiguous() if stats is not None else fbuf  # dummy pointer when unused
    crop_u8, out_u8, has_lab = crops.dtype == torch.uint8, frames.dtype == torch.uint8, stats is not None
    pos = n * 11
    for k in order:
        faces = layers[k]
        grid = (max(tiles[i] for i in faces), len(faces))
        _paste_kernel[grid](
            out,
            crops_c,
            masks_c,
            buf,
            fbuf,
            lab,
            buf[pos : pos + len(faces)],
            H,
            W,
            S,
            *_CONSTS,
            C=C,
            CROP_U8=crop_u8,
            OUT_U8=out_u8,
            HAS_LAB=has_lab,
            BLOCK=BLOCK,
            enable_fp_fusion=False,
        )
        pos += len(faces)
    return out


_REC = struct.Struct("<6f5i")

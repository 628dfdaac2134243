"""Fused decoupled cross-attention (Triton). Same contract as
:func:`kernels.reference.decoupled_attention`:

    out = softmax(q k^T / sqrt(D)) v + sum_i scale[b, i] * mask[b, i, :] * softmax(q k_i^T / sqrt(D)) v_i

One program owns BLOCK_M queries of one (batch, head): it loads them once, runs an online softmax
over the text keys (state m, l, acc), then a separate online softmax per identity group (its own
m, l, acc - exact, never one softmax over concatenated keys), weights each identity result by its
scale and optional region mask, and writes the sum once. Offsets in int64; float32 inputs use IEEE
dot products (no TF32), half inputs accumulate in float32.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from . import reference


@triton.jit
def _attend(
    acc,
    m_i,
    l_i,
    q,
    k_base,
    v_base,
    L,
    s_kl,
    s_kd,
    s_vl,
    s_vd,
    offs_d,
    offs_dv,
    qk_scale,
    D,
    DV,
    BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Online softmax of q against L keys at k_base/v_base (strided), accumulated into (acc, m_i, l_i)."""
    for start in range(0, L, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < L
        kt = tl.load(
            k_base + offs_n[None, :].to(tl.int64) * s_kl + offs_d[:, None].to(tl.int64) * s_kd,
            mask=nmask[None, :] & (offs_d[:, None] < D),
            other=0.0,
        )
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee") * qk_scale
        else:
            s = tl.dot(q, kt) * qk_scale
        s = tl.where(nmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vv = tl.load(
            v_base + offs_n[:, None].to(tl.int64) * s_vl + offs_dv[None, :].to(tl.int64) * s_vd,
            mask=nmask[:, None] & (offs_dv[None, :] < DV),
            other=0.0,
        )
        if IEEE:
            pv = tl.dot(p.to(vv.dtype), vv, input_precision="ieee")
        else:
            pv = tl.dot(p.to(vv.dtype), vv)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _decoupled_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    kid_ptr,
    vid_ptr,
    o_ptr,
    scale_ptr,
    mask_ptr,
    NH,
    Lq,
    Lt,
    I,
    T,
    D,
    DV,
    qk_scale,
    s_qb,
    s_qh,
    s_qm,
    s_qd,
    s_kb,
    s_kh,
    s_kl,
    s_kd,
    s_vb,
    s_vh,
    s_vl,
    s_vd,
    s_ib,
    s_ih,
    s_ii,
    s_it,
    s_id,
    s_jb,
    s_jh,
    s_ji,
    s_jt,
    s_jd,
    s_ob,
    s_oh,
    s_om,
    s_od,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // NH
    h = pid_bh - b * NH
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mmask = offs_m < Lq
    q = tl.load(
        q_ptr + b * s_qb + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :].to(tl.int64) * s_qd,
        mask=mmask[:, None] & (offs_d[None, :] < D),
        other=0.0,
    )

    # text group
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = _attend(
        acc,
        m_i,
        l_i,
        q,
        k_ptr + b * s_kb + h * s_kh,
        v_ptr + b * s_vb + h * s_vh,
        Lt,
        s_kl,
        s_kd,
        s_vl,
        s_vd,
        offs_d,
        offs_dv,
        qk_scale,
        D,
        DV,
        BLOCK_N,
        IEEE,
    )
    out = acc / l_i[:, None]

    # identity groups, each with its own softmax state
    for i in range(I):
        w = tl.load(scale_ptr + b * I + i)
        acc_i = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        mi = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        li = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc_i, mi, li = _attend(
            acc_i,
            mi,
            li,
            q,
            kid_ptr + b * s_ib + h * s_ih + i * s_ii,
            vid_ptr + b * s_jb + h * s_jh + i * s_ji,
            T,
            s_it,
            s_id,
            s_jt,
            s_jd,
            offs_d,
            offs_dv,
            qk_scale,
            D,
            DV,
            BLOCK_T,
            IEEE,
        )
        contrib = acc_i / li[:, None]
        if HAS_MASK:
            rm = tl.load(mask_ptr + (b * I + i) * Lq + offs_m, mask=mmask, other=0.0)
            out += contrib * (w * rm)[:, None]
        else:
            out += contrib * w

    tl.store(
        o_ptr + b * s_ob + h * s_oh + offs_m[:, None] * s_om + offs_dv[None, :].to(tl.int64) * s_od,
        out.to(o_ptr.dtype.element_ty),
        mask=mmask[:, None] & (offs_dv[None, :] < DV),
    )


def _pow2(x, lo=16):
    return max(lo, triton.next_power_of_2(int(x)))


@functools.lru_cache(maxsize=256)
def _launch_config(dtype: torch.dtype, D: int, DV: int, Lt: int, T: int) -> tuple:
    return tuple(launch_config(dtype, D, DV, Lt, T).items())


def launch_config(dtype: torch.dtype, D: int, DV: int, Lt: int, T: int) -> dict:
    """Block sizes / warps / pipeline stages for one call (a pure function of dtype and widths).

    Chosen with ``tools/kernel_compile.py`` (real ptxas reports, no GPU needed): no register spills
    and shared memory within 99 KiB (the smallest per-block limit among sm_80..sm_120) for every
    variant it compiles. Half inputs use tensor-core tiles of 64 queries; float32 uses IEEE dot
    products on the FMA units, whose fp32 operand tiles need smaller blocks to stay in registers.
    ``bench/bench_kernels.py --attention-sweep`` times alternatives on a GPU.
    """
    BD, BDV = _pow2(D), _pow2(DV)
    wide = max(BD, BDV)
    if dtype == torch.float32:
        BM = 32 if wide <= 64 else 16
        BN = 32
        warps = 4
        stages = 1 if wide > 64 else 2
    else:
        # 8 warps over 64 queries: ~100 registers/thread at head dim 64 on sm_90 (4 warps: ~133)
        BM, BN, warps, stages = 64, 64, 8, 2
    BT = min(_pow2(T), BN) if T else 16
    return dict(
        BLOCK_M=BM,
        BLOCK_N=min(BN, _pow2(Lt)) if Lt else BN,
        BLOCK_T=BT,
        BLOCK_D=BD,
        BLOCK_DV=BDV,
        num_warps=warps,
        num_stages=stages,
    )


def decoupled_attention(q, k, v, k_id, v_id, scale, region_mask=None, config=None):
    """Fused decoupled attention; arguments as :func:`kernels.reference.decoupled_attention`.

    ``config`` (optional dict, keys as :func:`launch_config` returns) overrides the launch
    configuration - for benchmark sweeps; results do not depend on it.
    """
    st, mask = reference.check_attention_args(q, k, v, k_id, v_id, scale, region_mask)
    B, NH, Lq, D = q.shape
    Lt, DV = k.shape[2], v.shape[3]
    I, T = k_id.shape[2], k_id.shape[3]
    dt = q.dtype
    k, v, k_id, v_id = (t.to(dt) for t in (k, v, k_id, v_id))
    out = torch.empty((B, NH, Lq, DV), dtype=dt, device=q.device)
    if Lq == 0 or B * NH == 0:
        return out
    if T == 0:
        I = 0
    cfg = dict(_launch_config(dt, D, DV, Lt, T))
    if config:
        cfg.update(config)
    mask_t = mask.contiguous() if mask is not None else st
    grid = (triton.cdiv(Lq, cfg["BLOCK_M"]), B * NH)
    qk_scale = (1.0 / math.sqrt(D)) * 1.4426950408889634  # exp2 domain
    _decoupled_kernel[grid](
        q,
        k,
        v,
        k_id,
        v_id,
        out,
        st,
        mask_t,
        NH,
        Lq,
        Lt,
        I,
        T,
        D,
        DV,
        qk_scale,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *k_id.stride(),
        *v_id.stride(),
        *out.stride(),
        HAS_MASK=mask is not None,
        IEEE=dt == torch.float32,
        **cfg,
    )
    return out

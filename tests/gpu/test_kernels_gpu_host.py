"""Fused kernels on CUDA, host side: in-place paste, no hidden stream synchronisation, launch
configurations of the fused attention. Skipped without CUDA."""

import pytest
import torch

from visage.kernels import ops, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (fused kernels run on CUDA only)"),
]


def _scene(dtype, seed=0, B=2, H=181, W=263, S=64):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(B, H, W, 3, generator=g)
    crops = torch.rand(3, S, S, 3, generator=g)
    if dtype == torch.uint8:
        frames, crops = (frames * 255).round().to(torch.uint8), (crops * 255).round().to(torch.uint8)
    else:
        frames = frames.to(dtype)
    masks = torch.rand(3, S, S, generator=g)
    m = torch.tensor(
        [
            [[0.8, 0.1, -40.0], [-0.1, 0.8, -20.0]],
            [[0.6, 0.0, -10.0], [0.0, 0.6, -8.0]],
            [[0.7, 0.2, -60.0], [-0.2, 0.7, -30.0]],
        ]
    )
    return frames.cuda(), crops.cuda(), m, masks.cuda(), torch.tensor([0, 1, 1])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float16])
def test_inplace_equals_new_tensor(dtype):
    frames, crops, m, masks, fi = _scene(dtype)
    assert ops.use_fused("paste_back", frames, crops, masks)
    want = reference.paste_back(frames, crops, m, masks, fi)
    untouched = frames.clone()
    out = ops.paste_back(frames, crops, m, masks, fi)
    assert torch.equal(frames, untouched)
    got = ops.paste_back(frames, crops, m, masks, fi, inplace=True)
    torch.cuda.synchronize()
    assert got.data_ptr() == frames.data_ptr() and torch.equal(got, out)
    tol = 1.0 if dtype == torch.uint8 else (2e-3 if dtype == torch.float16 else 1e-5)
    assert float((out.float() - want.float()).abs().max()) <= tol
    assert not ops._broken


def test_fused_calls_do_not_synchronise():
    """torch's sync debug mode raises on any call that waits for the GPU (e.g. a pageable host->device
    copy): the fused paths must queue work and return."""
    frames, crops, m, masks, fi = _scene(torch.float32, 1)
    q = torch.randn(2, 10, 1024, 64, device="cuda", dtype=torch.float16)
    k = torch.randn(2, 10, 77, 64, device="cuda", dtype=torch.float16)
    kid = torch.randn(2, 10, 1, 16, 64, device="cuda", dtype=torch.float16)
    ops.paste_back(frames, crops, m, masks, fi)  # compile outside the check
    ops.decoupled_attention(q, k, k, kid, kid, 0.7)
    ops.align_crops(frames, m, fi, 112, mean=127.5, std=128.0, round_to_uint8=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ops.paste_back(frames, crops, m, masks, fi)
        ops.paste_back(frames, crops, m, masks, fi, inplace=True)
        ops.decoupled_attention(q, k, k, kid, kid, 0.7)
        ops.align_crops(frames, m, fi, 112, mean=127.5, std=128.0, round_to_uint8=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert not ops._broken


@pytest.mark.parametrize(
    "cfg", [(64, 64, 4, 3), (64, 64, 8, 2), (128, 64, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2), (64, 128, 8, 2)]
)
def test_attention_configs_agree(cfg):
    """Results never depend on the launch configuration (the bench sweeps these)."""
    from visage.kernels import triton_attention as ta

    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g).cuda().half()
    q, k, v, kid, vid = r(2, 4, 333, 64), r(2, 4, 77, 64), r(2, 4, 77, 64), r(2, 4, 2, 16, 64), r(2, 4, 2, 16, 64)
    mask = torch.rand(2, 2, 333, generator=g).cuda()
    want = reference.decoupled_attention(q.float(), k.float(), v.float(), kid.float(), vid.float(), 0.6, mask)
    bm, bn, w, s = cfg
    got = ta.decoupled_attention(
        q, k, v, kid, vid, 0.6, mask, config=dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
    )
    assert float((got.float() - want).abs().max()) < 2e-2

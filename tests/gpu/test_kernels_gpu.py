"""Fused Triton kernels (through kernels.ops, the one dispatch point) against their torch twins on
the same GPU: odd sizes, boxes touching the frame edges, faces partly/fully outside, float16 /
bfloat16 / float32 / uint8, batch 1 and 64, and offsets past 2**31. Skipped without CUDA."""

import math
import os

import pytest
import torch

from visage.kernels import ops, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (fused kernels run on CUDA only)"),
]

DEV = os.environ.get(
    "VISAGE_GPU_TEST_DEVICE", "cuda"
)  # "cpu" only for checking the test logic under TRITON_INTERPRET=1


@pytest.fixture(autouse=True)
def _fused_really_runs(monkeypatch):
    monkeypatch.delenv("VISAGE_DISABLE_TRITON", raising=False)
    x = torch.zeros(1, device=DEV)
    if not ops.triton_available():
        pytest.fail("CUDA is present but Triton does not import: the fused kernels cannot be checked")
    assert ops.use_fused("paste_back", x), "dispatch would not pick the fused kernel on CUDA"
    yield
    assert not ops._broken, f"a fused kernel failed and fell back to its twin: {ops._broken}"


def mat(cx, cy, face_px, s, ang):
    a = math.radians(ang)
    sc = s / face_px
    c, sn = math.cos(a) * sc, math.sin(a) * sc
    m = torch.tensor([[c, -sn, 0.0], [sn, c, 0.0]], dtype=torch.float64)
    centre = m[:, :2] @ torch.tensor([float(cx), float(cy)], dtype=torch.float64)
    m[:, 2] = s / 2.0 - centre
    return m.float()


def paste_case(B, H, W, S, faces_per_frame, seed, dtype, crop_u8=False):
    g = torch.Generator().manual_seed(seed)
    faces = []
    for b in range(B):
        for j in range(faces_per_frame):
            kind = (b + j) % 5
            if kind == 0:
                cx, cy = 0.0, 0.0  # touching the top-left corner
            elif kind == 1:
                cx, cy = W - 1.0, H - 1.0  # bottom-right corner
            elif kind == 2:
                cx, cy = -0.3 * S, H * 0.5  # partly outside
            elif kind == 3:
                cx, cy = W + 5.0 * S, -5.0 * S  # fully outside
            else:
                cx, cy = float(torch.rand(1, generator=g)) * W, float(torch.rand(1, generator=g)) * H
            px = S * (0.6 + float(torch.rand(1, generator=g)) * 1.5)
            faces.append((b, cx, cy, px, float(torch.rand(1, generator=g)) * 360 - 180))
    M = torch.stack([mat(cx, cy, px, S, a) for (_, cx, cy, px, a) in faces])
    fi = torch.tensor([f[0] for f in faces], dtype=torch.int64)
    frames = torch.rand(B, H, W, 3, generator=g)
    crops = torch.rand(len(faces), S, S, 3, generator=g)
    masks = torch.rand(len(faces), S, S, generator=g)
    if dtype == torch.uint8:
        frames = (frames * 255).round().to(torch.uint8)
    else:
        frames = frames.to(dtype)
    if crop_u8 or dtype == torch.uint8:
        crops = (crops * 255).round().to(torch.uint8)
    return frames.to(DEV), crops.to(DEV), M.to(DEV), masks.to(DEV), fi.to(DEV)


TOL = {torch.float32: 2e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.uint8: 1.0}


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16, torch.uint8], ids=["f32", "f16", "bf16", "u8"]
)
@pytest.mark.parametrize("B,faces", [(1, 1), (1, 3), (64, 2)])
@pytest.mark.parametrize("lab", [False, True])
def test_paste_back_fused_matches_twin(dtype, B, faces, lab):
    H, W, S = (1081, 1919, 129) if B == 1 else (181, 243, 57)  # odd sizes
    fr, cr, M, mk, fi = paste_case(B, H, W, S, faces, seed=B * 10 + faces, dtype=dtype)
    stats = None
    if lab:
        cf = cr.float() / 255 if cr.dtype == torch.uint8 else cr
        stats = torch.stack([reference.lab_stats(cf, mk), reference.lab_stats(cf * 0.6 + 0.2, mk)], 1)
    before = fr.clone()
    got = ops.paste_back(fr, cr, M, mk, fi, stats)
    want = reference.paste_back(fr, cr, M, mk, fi, stats)
    torch.cuda.synchronize()
    assert torch.equal(fr, before)
    assert got.dtype == fr.dtype and got.shape == fr.shape
    diff = (got.float() - want.float()).abs()
    tol = TOL[dtype] * (2 if lab else 1)
    assert diff.max().item() <= tol, (diff.max().item(), (diff > tol).sum().item())
    # mismatches beyond float noise are rare rounding ties, never whole regions
    if dtype == torch.uint8:
        assert (diff > 0).float().mean().item() < 1e-3
    assert (got.float() - fr.float()).abs().max().item() > 0.05 * (255 if dtype == torch.uint8 else 1)


def test_paste_back_uint8_crops_into_half_frames():
    fr, cr, M, mk, fi = paste_case(3, 97, 131, 33, 2, seed=5, dtype=torch.float16, crop_u8=True)
    got = ops.paste_back(fr, cr, M, mk, fi)
    want = reference.paste_back(fr, cr, M, mk, fi)
    assert (got.float() - want.float()).abs().max().item() <= 1e-3


def align_case(B, H, W, S, per_frame, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    faces = []
    for b in range(B):
        for j in range(per_frame):
            edge = (b + j) % 3
            cx = 0.0 if edge == 0 else float(torch.rand(1, generator=g)) * W
            cy = H - 1.0 if edge == 1 else float(torch.rand(1, generator=g)) * H
            faces.append(
                (b, cx, cy, 40 + float(torch.rand(1, generator=g)) * 200, float(torch.rand(1, generator=g)) * 360 - 180)
            )
    M = torch.stack([mat(cx, cy, px, S, a) for (_, cx, cy, px, a) in faces])
    fi = torch.tensor([f[0] for f in faces], dtype=torch.int64)
    frames = torch.rand(B, H, W, 3, generator=g)
    frames = (frames * 255).round().to(torch.uint8) if dtype == torch.uint8 else frames.to(dtype)
    return frames.to(DEV), M.to(DEV), fi.to(DEV)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16, torch.uint8], ids=["f32", "f16", "bf16", "u8"]
)
@pytest.mark.parametrize("B", [1, 64])
@pytest.mark.parametrize("preset", ["arcface112", "inswapper128", "ffhq512_nhwc_f16"])
def test_align_crops_fused_matches_twin(dtype, B, preset):
    size, kw = {
        "arcface112": (112, dict(mean=127.5, std=127.5, bgr=True)),
        "inswapper128": (128, dict(mean=0.0, std=255.0, bgr=True)),
        "ffhq512_nhwc_f16": (
            512,
            dict(mean=(1.0, 2.0, 3.0), std=(50.0, 60.0, 70.0), layout="NHWC", out_dtype=torch.float16),
        ),
    }[preset]
    H, W = (1081, 1919) if B == 1 else (241, 321)
    fr, M, fi = align_case(B, H, W, size, 2 if B == 1 else 1, seed=B, dtype=dtype)
    got = ops.align_crops(fr, M, fi, size, **kw)
    want = reference.align_crops(fr, M, fi, size, **kw)
    assert got.shape == want.shape and got.dtype == want.dtype
    # In 0..255 pixel units: both sides compute sample coordinates with the same float32 operations
    # (the kernel is compiled without FMA contraction), so only summation order differs (~1e-4 px);
    # half outputs add their own rounding (relative 2**-10 for float16).
    std = torch.as_tensor(kw.get("std", 1.0), dtype=torch.float32, device=DEV).reshape(-1)
    std = std.reshape((1, -1, 1, 1) if kw.get("layout", "NCHW") == "NCHW" else (1, 1, 1, -1))
    diff_px = (got.float() - want.float()).abs() * std.abs()
    half = kw.get("out_dtype", torch.float32) != torch.float32
    allowed = 0.02 + (want.float().abs() * std.abs() * 2.0**-10 if half else 0.0)
    assert bool((diff_px <= allowed).all()), diff_px.max().item()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float16], ids=["u8", "f32", "f16"])
@pytest.mark.parametrize("B", [1, 64])
@pytest.mark.parametrize("preset", ["arcface112_bgr", "genderage96", "box192_nhwc_f16"])
def test_align_crops_fused_round_to_uint8_matches_twin(dtype, B, preset):
    """round_to_uint8=True (the analyser's cv2-on-uint8 crops): the kernel's ROUND flag against the
    twin, compared in 0..255 gray levels. The pre-rounding values agree to float noise, so a level
    differs only on a rare tie (a sample within float noise of a half); every value is a whole level
    in 0..255 (float frames are pushed outside 0..1 to exercise the clamp)."""
    size, kw = {
        "arcface112_bgr": (112, dict(mean=127.5, std=127.5, bgr=True)),
        "genderage96": (96, dict(mean=127.5, std=128.0)),
        "box192_nhwc_f16": (
            192,
            dict(mean=(1.0, 2.0, 3.0), std=(50.0, 60.0, 70.0), layout="NHWC", out_dtype=torch.float16),
        ),
    }[preset]
    H, W = (1081, 1919) if B == 1 else (241, 321)
    fr, M, fi = align_case(B, H, W, size, 2 if B == 1 else 1, seed=B + 100, dtype=dtype)
    if dtype != torch.uint8:
        fr = (fr.float() * 1.2 - 0.1).to(dtype)
    got = ops.align_crops(fr, M, fi, size, round_to_uint8=True, **kw)
    want = reference.align_crops(fr, M, fi, size, round_to_uint8=True, **kw)
    assert got.shape == want.shape and got.dtype == want.dtype
    shp = (1, -1, 1, 1) if kw.get("layout", "NCHW") == "NCHW" else (1, 1, 1, -1)
    std = torch.as_tensor(kw.get("std", 1.0), dtype=torch.float32, device=DEV).reshape(shp)
    mean = torch.as_tensor(kw.get("mean", 0.0), dtype=torch.float32, device=DEV).reshape(shp)
    lg, lw = got.float() * std + mean, want.float() * std + mean
    half = kw.get("out_dtype", torch.float32) != torch.float32
    slack = 255.0 * 2.0**-11 if half else 1e-3  # float16 output: relative 2**-11 of the value
    diff = (lg - lw).abs()
    assert diff.max().item() <= 1.0 + slack, diff.max().item()
    assert (diff > 0.5).float().mean().item() < 1e-4
    assert (lg - lg.round()).abs().max().item() <= slack
    assert lg.min().item() >= -slack and lg.max().item() <= 255.0 + slack


def attn_case(B, Hh, Lq, Lt, I, T, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(DEV, dtype)
    return r(B, Hh, Lq, D), r(B, Hh, Lt, D), r(B, Hh, Lt, D), r(B, Hh, I, T, D), r(B, Hh, I, T, D)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("shape", ["sdxl_1024", "sd15_head40", "batch64", "batch1_odd"])
@pytest.mark.parametrize("masked", [False, True])
def test_decoupled_attention_fused_matches_twin(dtype, shape, masked):
    B, Hh, Lq, Lt, I, T, D = {
        "sdxl_1024": (2, 10, 4096, 77, 2, 16, 64),
        "sd15_head40": (2, 8, 1024, 77, 1, 4, 40),
        "batch64": (64, 2, 256, 77, 3, 4, 64),
        "batch1_odd": (1, 3, 333, 154, 2, 70, 80),
    }[shape]
    q, k, v, kid, vid = attn_case(B, Hh, Lq, Lt, I, T, D, dtype, seed=len(shape))
    g = torch.Generator().manual_seed(7)
    scale = (torch.rand(B, I, generator=g) * 1.5).to(DEV)
    mask = torch.rand(B, I, Lq, generator=g).to(DEV) if masked else None
    got = ops.decoupled_attention(q, k, v, kid, vid, scale, mask)
    exact = reference.decoupled_attention(q.double(), k.double(), v.double(), kid.double(), vid.double(), scale, mask)
    twin = reference.decoupled_attention(q, k, v, kid, vid, scale, mask)
    assert got.dtype == dtype and got.shape == q.shape
    err = (got.double() - exact).abs().max().item()
    twin_err = (twin.double() - exact).abs().max().item()
    floor = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    assert err <= max(2.0 * twin_err, floor), (err, twin_err)


def test_disable_env_forces_twins(monkeypatch):
    x = torch.zeros(1, device=DEV)
    monkeypatch.setenv("VISAGE_DISABLE_TRITON", "1")
    assert not ops.use_fused("paste_back", x)
    monkeypatch.setenv("VISAGE_DISABLE_TRITON", "0")
    assert ops.use_fused("paste_back", x)


def test_offsets_beyond_int32():
    """A uint8 frame batch of > 2**31 elements; faces pasted into / aligned from the LAST frame."""
    B, H, W = 87, 2160, 3840  # 87 * 2160 * 3840 * 3 = 2.16e9 > 2**31
    free, _ = torch.cuda.mem_get_info()
    if free < 8 * B * H * W * 3 // 3:  # frames + clone + slack
        pytest.skip(f"needs ~{B * H * W * 3 * 2.7 / 2**30:.0f} GiB of free GPU memory")
    frames = torch.zeros(B, H, W, 3, dtype=torch.uint8, device=DEV)
    g = torch.Generator().manual_seed(3)
    last = (torch.rand(1, H, W, 3, generator=g) * 255).to(torch.uint8).to(DEV)
    frames[-1:] = last
    S = 128
    M = torch.stack([mat(W - 10.0, H - 10.0, 150, S, 12.0), mat(1000.0, 900.0, 200, S, -7.0)]).to(DEV)
    fi = torch.tensor([B - 1, B - 1], device=DEV)
    crops = torch.randint(0, 256, (2, S, S, 3), dtype=torch.uint8, generator=g).to(DEV)
    masks = torch.rand(2, S, S, generator=g).to(DEV)
    got = ops.paste_back(frames, crops, M, masks, fi)
    want = reference.paste_back(last, crops, M, masks, torch.zeros(2, dtype=torch.int64, device=DEV))
    assert (got[-1:].int() - want.int()).abs().max().item() <= 1
    assert torch.equal(got[:-1], frames[:-1])
    del got
    a = ops.align_crops(frames, M, fi, 112, mean=127.5, std=127.5, bgr=True)
    b = reference.align_crops(
        last, M, torch.zeros(2, dtype=torch.int64, device=DEV), 112, mean=127.5, std=127.5, bgr=True
    )
    assert (a - b).abs().max().item() <= 1e-4

"""Alignment maths against skimage / cv2 / insightface's face_align (the references)."""

import cv2
import numpy as np
import pytest
import torch
from skimage.transform import SimilarityTransform

from visage.core.types import Face, FaceSet
from visage.nodes.face import align as align_mod
from visage.nodes.face.align import (
    ARCFACE_112,
    align_faces,
    crop_matrix,
    estimate_norm,
    invert_affine,
    template_for,
    transform_points,
    umeyama,
    warp_crops,
)


def test_umeyama_matches_skimage():
    rng = np.random.RandomState(0)
    for _ in range(20):
        src = rng.rand(5, 2) * 200
        ang, s, t = rng.rand() * 6, 0.3 + rng.rand(), rng.rand(2) * 50
        R = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        dst = s * src @ R.T + t + rng.randn(5, 2)
        ref = SimilarityTransform()
        ref.estimate(src, dst)
        assert np.allclose(umeyama(src, dst), ref.params, atol=1e-8)


@pytest.mark.parametrize("size", [112, 128, 224, 256])
def test_estimate_norm_matches_insightface(size):
    from insightface.utils import face_align

    kps = ARCFACE_112 * 1.7 + np.array([40.0, 25.0], np.float32)
    assert np.allclose(estimate_norm(kps, size), face_align.estimate_norm(kps, size), atol=1e-4)


def test_crop_matrix_matches_insightface_transform():
    from insightface.utils import face_align

    img = np.zeros((300, 400, 3), np.uint8)
    for rot in (0, 15, -30):
        _, M = face_align.transform(img, (210.3, 140.7), 192, 0.83, rot)
        assert np.allclose(crop_matrix((210.3, 140.7), 192, 0.83, rot), M, atol=1e-4)


def test_warp_crops_matches_cv2():
    rng = np.random.RandomState(1)
    # a smooth image (cv2 quantises sub-pixel positions to 1/32 px; smooth content keeps that small)
    yy, xx = np.mgrid[:240, :320]
    img = np.stack([128 + 100 * np.sin(xx / 17.0), 128 + 100 * np.cos(yy / 13.0), (xx + yy) % 255], -1).astype(
        np.float32
    )
    mats = []
    for k in range(4):
        kps = ARCFACE_112 * (1 + 0.3 * k) + rng.rand(5, 2) * 3 + np.array([30 * k - 20, 10.0 * k], np.float32)
        mats.append(estimate_norm(kps, 112))
    mats = np.stack(mats)
    ours = (
        warp_crops(
            torch.from_numpy(img / 255.0)[None].float(), torch.from_numpy(mats), torch.zeros(4, dtype=torch.long), 112
        ).numpy()
        * 255.0
    )
    assert ours.shape == (4, 112, 112, 3) and ours.dtype == np.float32
    for k in range(4):
        ref = cv2.warpAffine(img, mats[k], (112, 112), borderValue=0.0)
        inside = cv2.warpAffine(np.ones_like(img[..., 0]), mats[k], (112, 112), borderValue=0.0) > 0.999
        assert np.abs(ours[k] - ref)[inside].max() < 1.0  # 1/32 px quantisation of cv2 on a smooth image
        assert np.abs(ours[k] - ref).mean() < 0.1  # including the border (zeros outside)


def test_warp_several_images_and_inverse():
    imgs = torch.rand(3, 50, 60, 3)
    m = torch.tensor([[[1.0, 0, -5], [0, 1.0, -7]], [[0.5, 0, 0], [0, 0.5, 0]]])
    out = warp_crops(imgs, m, torch.tensor([2, 0]), 20)
    assert torch.allclose(out[0], imgs[2, 7:27, 5:25], atol=1e-5)
    # 2x downscale about the origin: crop (x, y) samples image (2x, 2y), a pixel centre
    assert torch.allclose(out[1], imgs[0, 0:40:2, 0:40:2], atol=1e-5)
    # uint8 images give the same crops (0..1) as their float twin
    u8 = (imgs * 255).round().to(torch.uint8)
    assert torch.allclose(
        warp_crops(u8, m, torch.tensor([2, 0]), 20),
        warp_crops(u8.float() / 255, m, torch.tensor([2, 0]), 20),
        atol=1e-5,
    )
    inv = invert_affine(m)
    pts = torch.tensor([[3.0, 4.0], [10.0, 2.0]])
    assert torch.allclose(transform_points(transform_points(pts, m[1]), inv[1]), pts, atol=1e-5)


def test_align_faces_returns_crops_and_matrices():
    img = torch.rand(2, 200, 220, 3)
    kps = torch.from_numpy(ARCFACE_112 + 40)
    f0 = Face(image_index=1, bbox=torch.tensor([30.0, 30, 160, 170]), score=0.9, kps=kps)
    fs = FaceSet(faces=((), (f0,)), image_sizes=((200, 220),) * 2)
    for template, size in (("arcface_112", 112), ("ffhq_512", 512)):
        al = align_faces(img, fs, template)
        assert al.crops.shape == (1, size, size, 3) and al.size == size and al.image_index.tolist() == [1]
        dst, _ = template_for(template, size)
        mode = "arcface" if template == "arcface_112" else template
        assert np.allclose(al.matrix[0].numpy(), estimate_norm(kps, size, mode), atol=1e-5)
        mapped = transform_points(kps.numpy(), al.matrix[0].numpy())
        # keypoints land on the template (exactly for ArcFace: they were built from it)
        assert np.abs(mapped - dst).max() < (1e-2 if template == "arcface_112" else 25.0)
        back = transform_points(torch.from_numpy(mapped), al.inverse[0])
        assert torch.allclose(back, kps, atol=1e-3)


def test_warps_go_through_the_kernel_dispatch(monkeypatch):
    """align_faces (and so VisageAlignFaces) crops through kernels.ops.align_crops, the one dispatch
    point (the fused Triton kernel on CUDA); the grid_sample warp_affine is gone."""
    assert not hasattr(align_mod, "warp_affine")
    calls = []
    real = align_mod.kops.align_crops

    def spy(*a, **k):
        calls.append((a[3], k))
        return real(*a, **k)

    monkeypatch.setattr(align_mod.kops, "align_crops", spy)
    img = torch.rand(1, 150, 160, 3)
    kps = torch.from_numpy(ARCFACE_112 + 20)
    fs = FaceSet(
        faces=((Face(image_index=0, bbox=torch.tensor([20.0, 20, 130, 140]), score=0.9, kps=kps),),),
        image_sizes=((150, 160),),
    )
    al = align_faces(img, fs, "arcface_112")
    assert len(calls) == 1 and calls[0][0] == 112 and calls[0][1]["layout"] == "NHWC"
    assert al.crops.shape == (1, 112, 112, 3) and float(al.crops.min()) >= 0 and float(al.crops.max()) <= 1
    # the ArcFace crop of keypoints built from the template is the identity window shifted by 20 px
    assert torch.allclose(al.crops[0], img[0, 20:132, 20:132], atol=1e-4)


def test_analyzer_host_crops_are_insightface_crops(tmp_path, monkeypatch):
    """On the CPU, FaceAnalyzer makes every per-face model input with ONE host_crops call per model, on
    the 8-bit frame (one cv2 pass from the float IMAGE, no torch op per crop), and those inputs are
    exactly what insightface builds: cv2.warpAffine on the uint8 image, then blobFromImages."""
    from builders.face import build_face_pack
    from conftest import insightface_image

    from visage.nodes.face import analyzer as an_mod

    img_bgr = cv2.imread(insightface_image("t1.jpg"))
    an = an_mod.load_analyzer(build_face_pack(str(tmp_path / "pack")), "cpu", torch.float32)
    calls = []
    real = an_mod.host_crops

    def spy(frames, matrix, owners, size, mean, std, bgr, dtype):
        out = real(frames, matrix, owners, size, mean, std, bgr, dtype)
        calls.append((frames, np.asarray(matrix).copy(), size, (mean, std, bgr), out))
        return out

    def no_torch_crops(*a, **k):
        raise AssertionError("host frames must not be cropped with torch ops")

    rgb = torch.from_numpy(np.ascontiguousarray(img_bgr[..., ::-1])).float()[None] / 255.0
    monkeypatch.setattr(an_mod, "host_crops", spy)
    monkeypatch.setattr(an_mod.kops, "align_crops", no_torch_crops)
    fs = an.analyze(rgb)
    assert fs.count > 0
    per_face = [t for t in an.routed if t != "detection"]
    assert len(calls) == len(per_face) == 4
    for frames, mats, size, (mean, std, bgr), out in calls:
        assert frames.dtype == torch.uint8 and np.array_equal(frames[0].numpy(), img_bgr[..., ::-1])
        r = next(r for r in an.routed.values() if r.input_size == size and (r.mean, r.std, r.bgr) == (mean, std, bgr))
        assert out.shape == (fs.count, 3, size, size)
        crops = [cv2.warpAffine(img_bgr, m.astype(np.float64), (size, size), borderValue=0) for m in mats]
        blob = cv2.dnn.blobFromImages(crops, 1.0 / r.std, (size, size), (r.mean,) * 3, swapRB=not r.bgr)
        assert np.abs(out.numpy() - blob).max() <= 1e-4, r.task


def test_host_crops_agree_with_the_align_crops_kernel_path():
    """Frames on a GPU are cropped by ONE batched kops.align_crops call (round_to_uint8, the model's
    mean/std/channel order fused in); the host's cv2 crops give the same inputs within one gray level."""
    from visage.nodes.face import analyzer as an_mod

    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 256, (192, 120, 3), dtype=np.uint8), (5, 5), 2)
    frames = torch.from_numpy(img.reshape(2, 96, 120, 3).copy())
    mats = np.array([[[0.9, 0.1, -5.0], [-0.1, 0.9, 3.0]], [[1.1, 0.0, -20.0], [0.0, 1.1, -10.0]]], np.float32)
    owners = torch.tensor([1, 0])
    host = an_mod.host_crops(frames, mats, owners.tolist(), 32, 127.5, 127.5, True, torch.float32)
    kern = an_mod.kops.align_crops(
        frames, torch.from_numpy(mats), owners, 32, mean=127.5, std=127.5, bgr=True, layout="NCHW",
        out_dtype=torch.float32, round_to_uint8=True,
    )  # fmt: skip
    assert host.shape == kern.shape == (2, 3, 32, 32)
    assert (kern - host).abs().max() <= 1.0 / 127.5 + 1e-5
    assert host.abs().sum() > 0

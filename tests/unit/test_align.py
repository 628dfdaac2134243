"""Alignment maths against skimage / cv2 / insightface's face_align (the references)."""
import cv2
import numpy as np
import pytest
import torch
from skimage.transform import SimilarityTransform

from visage.nodes.face.align import (ARCFACE_112, align_faces, crop_matrix, estimate_norm, invert_affine, template_for,
                                     transform_points, umeyama, warp_affine)
from visage.nodes.common.types import Face, FaceSet


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


def test_warp_affine_matches_cv2():
    rng = np.random.RandomState(1)
    # a smooth image (cv2 quantises sub-pixel positions to 1/32 px; smooth content keeps that small)
    yy, xx = np.mgrid[:240, :320]
    img = np.stack([128 + 100 * np.sin(xx / 17.0), 128 + 100 * np.cos(yy / 13.0), (xx + yy) % 255], -1).astype(np.float32)
    mats = []
    for k in range(4):
        kps = ARCFACE_112 * (1 + 0.3 * k) + rng.rand(5, 2) * 3 + np.array([30 * k - 20, 10.0 * k], np.float32)
        mats.append(estimate_norm(kps, 112))
    mats = np.stack(mats)
    ours = warp_affine(torch.from_numpy(img)[None], torch.from_numpy(mats), torch.zeros(4, dtype=torch.long), 112).numpy()
    for k in range(4):
        ref = cv2.warpAffine(img, mats[k], (112, 112), borderValue=0.0)
        inside = cv2.warpAffine(np.ones_like(img[..., 0]), mats[k], (112, 112), borderValue=0.0) > 0.999
        assert np.abs(ours[k] - ref)[inside].max() < 1.0      # 1/32 px quantisation of cv2 on a smooth image
        assert np.abs(ours[k] - ref).mean() < 0.1              # including the border (zeros outside)


def test_warp_several_images_and_inverse():
    imgs = torch.rand(3, 50, 60, 3)
    m = torch.tensor([[[1.0, 0, -5], [0, 1.0, -7]], [[0.5, 0, 0], [0, 0.5, 0]]])
    out = warp_affine(imgs, m, torch.tensor([2, 0]), 20)
    assert torch.allclose(out[0], imgs[2, 7:27, 5:25], atol=1e-5)
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

"""nodes/paste.py against an independent cv2 implementation of the same maths (within 2/255)."""

import math

import cv2
import numpy as np
import pytest
import torch

from visage.nodes import paste as P


def smooth_image(h, w, seed):
    rng = np.random.default_rng(seed)
    small = rng.random((max(h // 16, 2), max(w // 16, 2), 3)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def similarity(angle_deg, scale, tx, ty):
    a = math.radians(angle_deg)
    return np.array(
        [[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]], np.float32
    )


def cv2_mask(size, erode_frac, blur_frac):
    r_e, r_b = P.mask_radii(size, erode_frac, blur_frac)
    m = np.ones((size, size), np.float32)
    if r_e:
        m = cv2.erode(m, np.ones((2 * r_e + 1, 2 * r_e + 1), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    if r_b:
        k = 2 * r_b + 1
        sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
        m = cv2.GaussianBlur(m, (k, k), sigma, borderType=cv2.BORDER_CONSTANT)
    return m


def cv2_lab_stats(img, mask):
    lab = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64)
    w = mask.reshape(-1, 1).astype(np.float64)
    mean = (lab * w).sum(0) / w.sum()
    std = np.sqrt((((lab - mean) ** 2) * w).sum(0) / w.sum())
    return mean, std


def cv2_paste(frame, crops, mats, masks, color=None):
    out = frame.astype(np.float32).copy()
    H, W = frame.shape[:2]
    for i, (crop, M, m) in enumerate(zip(crops, mats, masks)):
        IM = cv2.invertAffineTransform(M)
        wc = cv2.warpAffine(crop, IM, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        wm = cv2.warpAffine(m, IM, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if color is not None:
            (cm, cs), (tm, ts) = color[i]
            lab = cv2.cvtColor(wc, cv2.COLOR_RGB2LAB).astype(np.float64)
            lab = (lab - cm) * (ts / np.maximum(cs, 1e-3)) + tm
            wc = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB).clip(0, 1)
        wm = wm[..., None]
        out = out * (1 - wm) + wc * wm
    return out


@pytest.mark.parametrize("erode_frac,blur_frac", [(0.1, 0.1), (0.0, 0.05), (0.2, 0.0)])
def test_box_mask_matches_cv2(erode_frac, blur_frac):
    ours = P.box_masks(1, 128, erode_frac, blur_frac)[0].numpy()
    ref = cv2_mask(128, erode_frac, blur_frac)
    assert np.abs(ours - ref).max() < 1e-4
    # feathered: the edge is 0, the centre 1, and it really ramps
    assert ours[0, :].max() == 0.0 and ours[:, -1].max() == 0.0 and ours[64, 64] > 0.99
    if blur_frac:
        assert 0.2 < ours[64, P.mask_radii(128, erode_frac, blur_frac)[0]] < 0.8


def test_paste_two_faces_matches_cv2():
    H, W, S = 220, 260, 128
    frame = smooth_image(H, W, 0)
    crops = [smooth_image(S, S, 1), smooth_image(S, S, 2)]
    mats = [similarity(12, 1.3, -20, -30), similarity(-25, 0.9, -100, 10)]
    ours, fmask = P.paste_faces(
        torch.from_numpy(frame)[None],
        torch.from_numpy(np.stack(crops)),
        torch.from_numpy(np.stack(mats)),
        torch.tensor([0, 0]),
        erode_frac=0.1,
        blur_frac=0.1,
    )
    m = cv2_mask(S, 0.1, 0.1)
    ref = cv2_paste(frame, crops, mats, [m, m])
    diff = np.abs(ours[0].numpy() - ref)
    assert diff.max() < 2 / 255, diff.max()
    assert np.abs(ours[0].numpy() - frame).max() > 0.2  # something was pasted
    # the frame mask is the union of the warped feathered masks
    assert fmask.shape == (1, H, W) and float(fmask.max()) > 0.99 and float(fmask[0, -1, -1]) == 0.0


def test_paste_only_inside_the_box():
    H, W, S = 300, 300, 64
    frame = smooth_image(H, W, 3)
    M = similarity(0, 1.0, -100, -100)  # crop covers 100..164
    out, _ = P.paste_faces(
        torch.from_numpy(frame)[None],
        torch.zeros(1, S, S, 3),
        torch.from_numpy(M[None]),
        torch.tensor([0]),
        erode_frac=0.0,
        blur_frac=0.0,
    )
    out = out[0].numpy()
    assert np.array_equal(out[:98], frame[:98]) and np.array_equal(out[:, 170:], frame[:, 170:])
    assert out[110:150, 110:150].max() == 0.0


def test_colour_transfer_matches_cv2_and_moves_colour():
    H, W, S = 200, 200, 128
    # skin-like, in-gamut colours (out-of-gamut LAB is clipped differently by cv2 and the kernel spec)
    frame = 0.3 + 0.4 * smooth_image(H, W, 4)
    crop = (0.25 + 0.3 * smooth_image(S, S, 5) + np.array([0.3, 0.1, 0.0], np.float32)).clip(0, 1)  # orange cast
    M = similarity(5, 1.2, -30, -40)
    original = cv2.warpAffine(frame, M, (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ours, _ = P.paste_faces(
        torch.from_numpy(frame)[None],
        torch.from_numpy(crop)[None],
        torch.from_numpy(M[None]),
        torch.tensor([0]),
        erode_frac=0.1,
        blur_frac=0.1,
        color_transfer=True,
        original_crops=torch.from_numpy(original)[None],
    )
    m = cv2_mask(S, 0.1, 0.1)
    stats = [(cv2_lab_stats(crop, m), cv2_lab_stats(original, m))]
    ref = cv2_paste(frame, [crop], [M], [m], color=stats)
    diff = np.abs(ours[0].numpy() - ref)
    assert diff.max() < 2 / 255, diff.max()
    # colour moved towards the frame: the pasted region's LAB mean is closer to the original's
    plain, _ = P.paste_faces(
        torch.from_numpy(frame)[None],
        torch.from_numpy(crop)[None],
        torch.from_numpy(M[None]),
        torch.tensor([0]),
        erode_frac=0.1,
        blur_frac=0.1,
    )
    reg = (slice(60, 120), slice(60, 120))
    lab = lambda im: cv2.cvtColor(np.ascontiguousarray(im[reg]), cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(0)
    assert np.abs(lab(ours[0].numpy()) - lab(frame)).sum() < np.abs(lab(plain[0].numpy()) - lab(frame)).sum() * 0.5


def test_landmark_mask_follows_the_hull():
    S = 128
    pts = np.array([[40, 40], [88, 40], [96, 80], [64, 110], [32, 80]], np.float32)
    m = P.landmark_masks([torch.from_numpy(pts)], S, 0.1, 0.05)[0].numpy()
    assert m[70, 64] > 0.95  # inside the hull
    assert m[10, 10] < 0.01 and m[120, 10] < 0.01  # outside the hull, inside the crop
    assert m.max() <= 1.0 and m.min() >= 0.0


def test_paste_several_frames_and_strength():
    H, W, S = 120, 120, 64
    frames = torch.from_numpy(np.stack([smooth_image(H, W, 6), smooth_image(H, W, 7)]))
    crops = torch.ones(2, S, S, 3)
    mats = torch.from_numpy(np.stack([similarity(0, 1, -20, -20)] * 2))
    out, _ = P.paste_faces(
        frames, crops, mats, torch.tensor([1, 0]), erode_frac=0.0, blur_frac=0.0, strength=torch.tensor([1.0, 0.5])
    )
    # face 0 -> frame 1 at full strength, face 1 -> frame 0 at half
    assert torch.allclose(out[1, 40, 40], torch.ones(3), atol=1e-5)
    assert torch.allclose(out[0, 40, 40], frames[0, 40, 40] * 0.5 + 0.5, atol=1e-5)

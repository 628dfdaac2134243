"""The torch twins (kernels/reference.py = the spec) against straightforward cv2 / loop / SDPA /
diffusers implementations written here, and the dispatch rules of kernels/ops.py. CPU, always run."""

import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visage.core.errors import VisageError
from visage.kernels import ops, reference


# ----------------------------------------------------------------------------------------------
# builders
# ----------------------------------------------------------------------------------------------
def smooth_image(rng, h, w, c=3, cells=6):
    """Smooth random image 0..1 float32 [h, w, c] (low-res noise upsampled), so cv2's 1/32-pixel
    coordinate quantisation stays far below the tolerances below."""
    small = rng.random((cells, cells, c)).astype(np.float32)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img.reshape(h, w, c), 0.0, 1.0)


def feather_mask(s, margin=0.12, blur=0.08):
    """A feathered square mask [s, s] float32 (zero near the crop edge, 1 in the middle)."""
    m = np.zeros((s, s), np.float32)
    a = int(round(s * margin))
    m[a : s - a, a : s - a] = 1.0
    k = max(3, int(s * blur) | 1)
    return cv2.GaussianBlur(m, (k, k), 0)


def similarity(scale, angle_deg, tx, ty):
    """Frame px -> crop px: rotate+scale then translate (float32 [2, 3])."""
    a = math.radians(angle_deg)
    c, s = math.cos(a) * scale, math.sin(a) * scale
    return np.array([[c, -s, tx], [s, c, ty]], np.float32)


def face_matrix(cx, cy, face_px, s, angle_deg):
    """Matrix mapping a face of about face_px pixels centred at (cx, cy) onto an s x s crop."""
    scale = s / face_px
    m = similarity(scale, angle_deg, 0.0, 0.0)
    centre = m[:, :2] @ np.array([cx, cy], np.float32)
    m[:, 2] = np.array([s / 2.0, s / 2.0], np.float32) - centre
    return m


# ----------------------------------------------------------------------------------------------
# cv2 / loop references
# ----------------------------------------------------------------------------------------------
def cv2_box(m, s, h, w):
    """Independent box: inverse image of [-1, s]^2 via cv2.invertAffineTransform, clipped."""
    inv = cv2.invertAffineTransform(m.astype(np.float64))
    pts = np.array([[-1, -1, 1], [s, -1, 1], [-1, s, 1], [s, s, 1]], np.float64) @ inv.T
    x0, y0 = max(int(np.floor(pts[:, 0].min())), 0), max(int(np.floor(pts[:, 1].min())), 0)
    x1, y1 = min(int(np.ceil(pts[:, 0].max())), w - 1), min(int(np.ceil(pts[:, 1].max())), h - 1)
    return None if (x0 > x1 or y0 > y1) else (x0, y0, x1, y1)


def cv2_paste(frames, crops, mats, masks, fidx, full_frame=False):
    """Box-limited cv2 paste: warpAffine(WARP_INVERSE_MAP) of crop and mask over the box, float blend,
    one face after another. frames/crops numpy (uint8 or float 0..1)."""
    out = frames.copy()
    u8 = frames.dtype == np.uint8
    B, H, W, C = frames.shape
    for i in range(len(mats)):
        s = crops.shape[1]
        m = mats[i].astype(np.float64)
        if full_frame:
            box = (0, 0, W - 1, H - 1)
        else:
            box = cv2_box(mats[i], s, H, W)
            if box is None:
                continue
        x0, y0, x1, y1 = box
        mb = m.copy()
        mb[:, 2] = m[:, 2] + m[:, 0] * x0 + m[:, 1] * y0  # box-local dst px -> crop px
        size = (x1 - x0 + 1, y1 - y0 + 1)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        crop = crops[i].astype(np.float32) / 255.0 if crops.dtype == np.uint8 else crops[i].astype(np.float32)
        wc = cv2.warpAffine(crop, mb, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        wm = cv2.warpAffine(
            masks[i].astype(np.float32), mb, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        wc = wc.reshape(size[1], size[0], C)
        wm = wm.reshape(size[1], size[0], 1)
        b = int(fidx[i])
        reg = out[b, y0 : y1 + 1, x0 : x1 + 1].astype(np.float32)
        if u8:
            reg = reg / 255.0
        res = reg * (1.0 - wm) + wc * wm
        out[b, y0 : y1 + 1, x0 : x1 + 1] = np.clip(np.round(res * 255.0), 0, 255).astype(np.uint8) if u8 else res
    return out


def loop_bilinear(img, u, v):
    """Float64 scalar bilinear with zero border (the textbook formula)."""
    h, w = img.shape[:2]
    x0, y0 = math.floor(u), math.floor(v)
    fx, fy = u - x0, v - y0
    acc = np.zeros(img.shape[2:], np.float64)
    for yy, xx, wt in (
        (y0, x0, (1 - fx) * (1 - fy)),
        (y0, x0 + 1, fx * (1 - fy)),
        (y0 + 1, x0, (1 - fx) * fy),
        (y0 + 1, x0 + 1, fx * fy),
    ):
        if 0 <= xx < w and 0 <= yy < h:
            acc = acc + wt * img[yy, xx].astype(np.float64)
    return acc


def make_paste_case(seed, B=2, H=61, W=83, S=31, dtype=np.float32, faces=None):
    rng = np.random.default_rng(seed)
    frames = np.stack([smooth_image(rng, H, W) for _ in range(B)])
    if faces is None:
        faces = [(0, W * 0.5, H * 0.5, 30, 12.0), (1, W * 0.3, H * 0.4, 25, -20.0), (1, W * 0.45, H * 0.55, 28, 40.0)]
    crops = np.stack([smooth_image(rng, S, S, cells=5) for _ in faces])
    masks = np.stack([feather_mask(S) for _ in faces])
    mats = np.stack([face_matrix(cx, cy, px, S, ang) for (_, cx, cy, px, ang) in faces])
    fidx = np.array([f[0] for f in faces], np.int64)
    if dtype == np.uint8:
        frames = np.round(frames * 255).astype(np.uint8)
        crops = np.round(crops * 255).astype(np.uint8)
    return frames, crops, mats, masks, fidx


def run_twin_paste(frames, crops, mats, masks, fidx, lab=None):
    return reference.paste_back(
        torch.from_numpy(frames),
        torch.from_numpy(crops),
        torch.from_numpy(mats),
        torch.from_numpy(masks),
        torch.from_numpy(fidx),
        lab,
    ).numpy()


def units(a):
    """0..1 float view of uint8 or float arrays."""
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# paste_back
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_paste_back_matches_cv2_box_limited_paste(dtype):
    frames, crops, mats, masks, fidx = make_paste_case(0, dtype=dtype)
    ours = run_twin_paste(frames, crops, mats, masks, fidx)
    ref = cv2_paste(frames, crops, mats, masks, fidx)
    assert ours.dtype == frames.dtype and ours.shape == frames.shape
    diff = np.abs(units(ours) - units(ref))
    assert diff.max() <= 2.0 / 255.0, diff.max()
    # the paste did something: a large part of each face box changed
    assert np.abs(units(ours) - units(frames)).max() > 0.2


def test_paste_back_box_limited_equals_full_frame_warp():
    """The box covers the whole support: a full-frame cv2 warp gives the same frame."""
    frames, crops, mats, masks, fidx = make_paste_case(1)
    masks = np.ones_like(masks)  # hard-edged mask: support reaches the crop border
    full = cv2_paste(frames, crops, mats, masks, fidx, full_frame=True)
    ours = run_twin_paste(frames, crops, mats, masks, fidx)
    assert np.abs(ours - full).max() <= 2.0 / 255.0
    # ... and pixels outside every box are bit-identical to the input
    H, W = frames.shape[1:3]
    untouched = np.ones(frames.shape[:3], bool)
    for i, m in enumerate(mats):
        box = cv2_box(m, crops.shape[1], H, W)
        if box:
            untouched[fidx[i], box[1] : box[3] + 1, box[0] : box[2] + 1] = False
    assert untouched.any()
    assert np.array_equal(ours[untouched], frames[untouched])


def test_paste_back_exact_bilinear_against_float64_loop():
    """Tight check of the sampling maths (cv2 quantises coordinates to 1/32 px; this loop does not)."""
    rng = np.random.default_rng(2)
    H, W, S = 19, 23, 9
    frame = rng.random((1, H, W, 3)).astype(np.float32)
    crop = rng.random((1, S, S, 3)).astype(np.float32)  # sharp noise on purpose
    mask = rng.random((1, S, S)).astype(np.float32)
    m = face_matrix(10.3, 8.7, 11.0, S, 23.0)[None]
    ours = run_twin_paste(frame, crop, m, mask, np.zeros(1, np.int64))
    m64 = m[0].astype(np.float32).astype(np.float64)
    ref = frame[0].astype(np.float64).copy()
    for y in range(H):
        for x in range(W):
            u = m64[0, 0] * x + m64[0, 1] * y + m64[0, 2]
            v = m64[1, 0] * x + m64[1, 1] * y + m64[1, 2]
            c = loop_bilinear(crop[0], u, v)
            a = loop_bilinear(mask[0][..., None], u, v)
            ref[y, x] = ref[y, x] * (1 - a) + c * a
    assert np.abs(ours[0] - ref).max() < 2e-5


@pytest.mark.parametrize("where", ["left_top", "right_bottom", "outside", "straddle"])
def test_paste_back_boxes_at_and_beyond_frame_edges(where):
    H, W, S = 37, 53, 21  # odd sizes
    spots = {
        "left_top": (0.0, 0.0),
        "right_bottom": (W - 1.0, H - 1.0),
        "outside": (W + 40.0, -30.0),
        "straddle": (-3.0, H * 0.5),
    }
    cx, cy = spots[where]
    frames, crops, mats, masks, fidx = make_paste_case(3, B=1, H=H, W=W, S=S, faces=[(0, cx, cy, 24, 17.0)])
    ours = run_twin_paste(frames, crops, mats, masks, fidx)
    ref = cv2_paste(frames, crops, mats, masks, fidx, full_frame=True)
    assert np.abs(ours - ref).max() <= 2.0 / 255.0
    if where == "outside":
        assert np.array_equal(ours, frames)
    else:
        assert np.abs(ours - frames).max() > 0.05


def test_paste_back_many_faces_many_frames_overlapping_order():
    """Several faces per frame, overlapping: later faces land on top, like sequential cv2 pastes."""
    H, W, S = 64, 72, 27
    faces = [
        (0, 30, 30, 30, 5.0),
        (0, 36, 34, 30, -15.0),
        (2, 20, 50, 26, 80.0),
        (1, 70, 10, 24, 0.0),
        (2, 24, 46, 28, 33.0),
    ]
    for dtype in (np.float32, np.uint8):
        frames, crops, mats, masks, fidx = make_paste_case(4, B=3, H=H, W=W, S=S, faces=faces, dtype=dtype)
        ours = run_twin_paste(frames, crops, mats, masks, fidx)
        ref = cv2_paste(frames, crops, mats, masks, fidx)
        assert np.abs(units(ours) - units(ref)).max() <= 2.0 / 255.0
        # order matters where faces overlap: pasting in reverse order gives a different frame
        rev = run_twin_paste(frames, crops[::-1].copy(), mats[::-1].copy(), masks[::-1].copy(), fidx[::-1].copy())
        assert np.abs(units(rev) - units(ours)).max() > 0.05


def test_paste_back_half_precision_frames_and_input_untouched():
    frames, crops, mats, masks, fidx = make_paste_case(5)
    ft = torch.from_numpy(frames).to(torch.float16)
    before = ft.clone()
    out = reference.paste_back(
        ft, torch.from_numpy(crops), torch.from_numpy(mats), torch.from_numpy(masks), torch.from_numpy(fidx)
    )
    assert out.dtype == torch.float16
    assert torch.equal(ft, before)  # a new tensor, input not modified
    ref = cv2_paste(frames, crops, mats, masks, fidx)
    assert np.abs(out.float().numpy() - ref).max() <= 2.0 / 255.0


def test_paste_back_colour_transfer():
    frames, crops, mats, masks, fidx = make_paste_case(6)
    tc = torch.from_numpy(crops)
    tm = torch.from_numpy(masks)
    crop_stats = reference.lab_stats(tc, tm)
    target = reference.lab_stats(torch.from_numpy(np.clip(crops * 0.5 + 0.3, 0, 1)), tm)
    stats = torch.stack((crop_stats, target), 1)
    ours = run_twin_paste(frames, crops, mats, masks, fidx, stats)
    # reference: cv2 LAB transfer of the crop pixels (float32 maths), then the cv2 paste; the twin
    # transfers the sampled colour instead, which differs only where bilinear mixes neighbours.
    moved = []
    for i in range(len(crops)):
        lab = cv2.cvtColor(crops[i], cv2.COLOR_RGB2LAB)
        s = stats[i].numpy()
        lab = (lab - s[0, 0]) * (s[1, 1] / np.maximum(s[0, 1], 1e-3)) + s[1, 0]
        moved.append(np.clip(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB), 0, 1))
    ref = cv2_paste(frames, np.stack(moved), mats, masks, fidx)
    assert np.abs(ours - ref).max() <= 4.0 / 255.0
    plain = run_twin_paste(frames, crops, mats, masks, fidx)
    assert np.abs(ours - plain).max() > 0.1  # the transfer changed the colours
    # identity stats leave the paste unchanged (LAB round trip)
    same = torch.stack((crop_stats, crop_stats), 1)
    assert np.abs(run_twin_paste(frames, crops, mats, masks, fidx, same) - plain).max() < 1e-4


def test_paste_back_rejects_bad_input():
    frames, crops, mats, masks, fidx = make_paste_case(7)
    f, c, m, k, i = map(torch.from_numpy, (frames, crops, mats, masks, fidx))
    with pytest.raises(VisageError, match="frame_index"):
        ops.paste_back(f, c, m, k, torch.tensor([0, 1, 5]))
    with pytest.raises(VisageError, match="masks"):
        ops.paste_back(f, c, m, k[:, :-1], i)
    with pytest.raises(VisageError, match="singular"):
        ops.paste_back(f, c, torch.zeros_like(m), k, i)
    with pytest.raises(VisageError, match="lab_stats"):
        ops.paste_back(f, c, m, k, i, torch.zeros(3, 2, 3))


# ----------------------------------------------------------------------------------------------
# align_crops
# ----------------------------------------------------------------------------------------------
def cv2_align(frames, mats, fidx, size, mean, std, bgr, layout):
    outs = []
    for i in range(len(mats)):
        fr = frames[fidx[i]]
        w = cv2.warpAffine(
            fr,
            mats[i].astype(np.float64),
            (size, size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        w = w.astype(np.float32) * (1.0 if fr.dtype == np.uint8 else 255.0)
        if bgr:
            w = w[..., ::-1]
        w = (w - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        outs.append(w.transpose(2, 0, 1) if layout == "NCHW" else w)
    return np.stack(outs)


ALIGN_CASES = [
    # (size, mean, std, bgr, layout): ArcFace 112, inswapper 128, FFHQ 512-style, per-channel stats
    (112, 127.5, 127.5, True, "NCHW"),
    (128, 0.0, 255.0, True, "NCHW"),
    (96, 0.0, 1.0, False, "NHWC"),
    (57, (123.7, 116.3, 103.5), (58.4, 57.1, 57.4), False, "NCHW"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
@pytest.mark.parametrize("case", ALIGN_CASES, ids=[f"s{c[0]}_{c[4]}" for c in ALIGN_CASES])
def test_align_crops_matches_per_face_cv2(case, dtype):
    """Tolerance, in 0..255 pixel units before normalisation: 1.0 for uint8 frames (cv2 rounds its
    uint8 output and uses 15-bit fixed-point weights: 0.5 + a hair), 0.1 for float32 frames (cv2 still
    quantises sample coordinates to 1/32 px; on these smooth frames that moves values by < 0.1)."""
    size, mean, std, bgr, layout = case
    rng = np.random.default_rng(10)
    H, W = 91, 133
    frames = np.stack([smooth_image(rng, H, W, cells=8) for _ in range(3)])
    if dtype == np.uint8:
        frames = np.round(frames * 255).astype(np.uint8)
    faces = [(0, 60, 45, 50, 10.0), (2, 5, 80, 60, -35.0), (1, 120, 20, 40, 90.0), (2, 66, 44, 200, 3.0)]
    mats = np.stack([face_matrix(cx, cy, px, size, a) for (_, cx, cy, px, a) in faces])
    fidx = np.array([f[0] for f in faces], np.int64)
    ours = reference.align_crops(
        torch.from_numpy(frames),
        torch.from_numpy(mats),
        torch.from_numpy(fidx),
        size,
        mean=mean,
        std=std,
        bgr=bgr,
        layout=layout,
    ).numpy()
    ref = cv2_align(frames, mats, fidx, size, mean, std, bgr, layout)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    std_arr = np.asarray(std, np.float32).reshape(-1)
    std_b = std_arr.reshape((1, -1, 1, 1) if layout == "NCHW" else (1, 1, 1, -1))
    diff_px = np.abs(ours - ref) * np.abs(std_b)
    tol = 1.0 if dtype == np.uint8 else 0.1
    assert diff_px.max() <= tol, diff_px.max()
    # faces partly outside the frame get zero-pixel borders (= -mean/std), like cv2
    assert np.isclose(ref[1].min(), ours[1].min(), atol=1e-3)


def test_align_crops_dtype_and_matches_blob_from_images():
    """ArcFace preprocessing = cv2.dnn.blobFromImages(1/127.5, mean 127.5, swapRB) of cv2 crops."""
    rng = np.random.default_rng(11)
    frames = np.round(np.stack([smooth_image(rng, 80, 90)]) * 255).astype(np.uint8)
    mats = np.stack([face_matrix(45, 40, 60, 112, 7.0)])
    crops = [cv2.warpAffine(frames[0], mats[0].astype(np.float64), (112, 112), borderValue=0)]
    blob = cv2.dnn.blobFromImages(crops, 1.0 / 127.5, (112, 112), (127.5, 127.5, 127.5), swapRB=True)
    ours = ops.align_crops(
        torch.from_numpy(frames),
        torch.from_numpy(mats),
        torch.zeros(1, dtype=torch.int64),
        112,
        mean=127.5,
        std=127.5,
        bgr=True,
    )
    assert np.abs(ours.numpy() - blob).max() <= 1.0 / 127.5 + 1e-6
    half = ops.align_crops(
        torch.from_numpy(frames),
        torch.from_numpy(mats),
        torch.zeros(1, dtype=torch.int64),
        112,
        mean=127.5,
        std=127.5,
        bgr=True,
        out_dtype=torch.float16,
    )
    assert half.dtype == torch.float16 and torch.allclose(half.float(), ours, atol=2e-3)


def test_align_crops_rejects_bad_input():
    f = torch.rand(1, 20, 20, 3)
    m = torch.from_numpy(face_matrix(10, 10, 10, 16, 0))[None]
    with pytest.raises(VisageError, match="layout"):
        ops.align_crops(f, m, torch.zeros(1, dtype=torch.int64), 16, layout="CHW")
    with pytest.raises(VisageError, match="std"):
        ops.align_crops(f, m, torch.zeros(1, dtype=torch.int64), 16, std=0.0)
    with pytest.raises(VisageError, match="frame_index"):
        ops.align_crops(f, m, torch.ones(1, dtype=torch.int64), 16)


ROUND_CASES = [
    # (size, mean, std, bgr, layout): plain 0..255 NHWC crops, ArcFace, genderage/landmark, per-channel
    (112, 0.0, 1.0, False, "NHWC"),
    (112, 127.5, 127.5, True, "NCHW"),
    (96, 127.5, 128.0, False, "NCHW"),
    (57, (123.7, 116.3, 103.5), (58.4, 57.1, 57.4), True, "NHWC"),
]


@pytest.mark.parametrize("case", ROUND_CASES, ids=[f"s{c[0]}_{c[4]}_{'bgr' if c[3] else 'rgb'}" for c in ROUND_CASES])
def test_align_crops_round_to_uint8_matches_cv2_on_uint8(case):
    """round_to_uint8=True reproduces cv2.warpAffine run on the uint8 image (what insightface feeds
    its models), then (x - mean) / std: at most 1 gray level anywhere (cv2's own interpolation
    arithmetic: fixed point before OpenCV 4.11, float in another order since), and the SAME gray
    level on >= 99 % of the pixels - whereas the unrounded crop is off by a fraction of a level
    almost everywhere."""
    size, mean, std, bgr, layout = case
    rng = np.random.default_rng(21)
    frames = np.round(np.stack([smooth_image(rng, 97, 141, cells=7) for _ in range(2)]) * 255).astype(np.uint8)
    faces = [(0, 70, 48, 60, 12.0), (1, 10, 85, 70, -33.0), (1, 100, 40, 45, 90.0), (0, 30, 30, 150, 2.5)]
    mats = np.stack([face_matrix(cx, cy, px, size, a) for (_, cx, cy, px, a) in faces])
    fidx = np.array([f[0] for f in faces], np.int64)
    args = (torch.from_numpy(frames), torch.from_numpy(mats), torch.from_numpy(fidx), size)
    ours = ops.align_crops(*args, mean=mean, std=std, bgr=bgr, layout=layout, round_to_uint8=True).numpy()
    ref = cv2_align(frames, mats, fidx, size, mean, std, bgr, layout)  # cv2 on the uint8 frames
    std_b = np.asarray(std, np.float32).reshape((1, -1, 1, 1) if layout == "NCHW" else (1, 1, 1, -1))
    mean_b = np.asarray(mean, np.float32).reshape(std_b.shape)
    levels = ours * std_b + mean_b  # back to 0..255 levels
    assert np.abs(levels - np.round(levels)).max() < 1e-3  # whole gray levels only
    diff = np.abs(ours - ref) * np.abs(std_b)
    assert diff.max() <= 1.0 + 1e-3, diff.max()
    assert (diff > 0.5).mean() <= 0.01, (diff > 0.5).mean()
    plain = ops.align_crops(*args, mean=mean, std=std, bgr=bgr, layout=layout).numpy()
    assert (np.abs(plain - ref) * np.abs(std_b) > 1e-3).mean() > 0.5  # the flag is what makes it exact


def test_align_crops_rounding_is_half_up_saturating_and_before_normalisation():
    """The spec: floor(p + 0.5) (half up, as OpenCV's fixed-point warps before 4.11 did; OpenCV >= 4.11
    interpolates in float and rounds exact halves to even - those differ on exact halves only, about
    1e-5 of the pixels of a photo's face crops), clamped to 0..255 like cv2's saturate_cast, applied
    to the 0..255 sample BEFORE (p - mean) / std, in the output channel order."""
    # a 0.5 px shift: 100.5 -> 101, 101.5 -> 102, 102.5 -> 103 (half up; torch.round gives 100, 102, 102)
    fr = np.zeros((1, 1, 4, 3), np.uint8)
    fr[0, 0, :, 0] = [100, 101, 102, 103]
    fr[0, 0, :, 1] = [10, 11, 12, 13]
    M = np.array([[[1.0, 0.0, -0.5], [0.0, 1.0, 0.0]]], np.float32)
    ours = ops.align_crops(
        torch.from_numpy(fr),
        torch.from_numpy(M),
        torch.zeros(1, dtype=torch.int64),
        3,
        layout="NHWC",
        round_to_uint8=True,
    )[0, 0]
    ref = cv2.warpAffine(fr[0], M[0].astype(np.float64), (3, 3), borderValue=0)[0].astype(np.float32)
    assert ours[:, 0].tolist() == [101.0, 102.0, 103.0]
    assert ours[:, 1].tolist() == [11.0, 12.0, 13.0]
    assert np.abs(ours.numpy() - ref).max() <= 1.0  # whichever cv2 rounds halves
    # float frames outside 0..1 saturate to 0..255 before normalisation
    f = torch.tensor([[[[1.5, -0.2, 0.5]]]]).expand(1, 2, 2, 3).contiguous()
    Mi = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    out = ops.align_crops(
        f, Mi, torch.zeros(1, dtype=torch.int64), 2, mean=10.0, std=2.0, layout="NHWC", round_to_uint8=True
    )
    assert torch.equal(out[0, 0, 0], torch.tensor([(255 - 10) / 2.0, (0 - 10) / 2.0, (128 - 10) / 2.0]))
    # on any input: rounded+normalised == normalise(clamp(floor(unrounded 0..255 sample + 0.5)))
    rng = np.random.default_rng(22)
    frames = torch.from_numpy(np.round(np.stack([smooth_image(rng, 60, 70)]) * 255).astype(np.uint8))
    mats = torch.from_numpy(np.stack([face_matrix(35, 30, 40, 112, 17.0), face_matrix(5, 50, 80, 112, -60.0)]))
    fi = torch.zeros(2, dtype=torch.int64)
    raw = reference.align_crops(frames, mats, fi, 112, layout="NHWC")  # 0..255, unrounded
    want = (
        (torch.floor(raw + 0.5).clamp(0, 255).flip(-1) - torch.tensor([1.0, 2.0, 3.0]))
        / torch.tensor([50.0, 60.0, 70.0])
    ).permute(0, 3, 1, 2)
    got = reference.align_crops(
        frames, mats, fi, 112, mean=(1.0, 2.0, 3.0), std=(50.0, 60.0, 70.0), bgr=True, round_to_uint8=True
    )
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    half = reference.align_crops(
        frames,
        mats,
        fi,
        112,
        mean=(1.0, 2.0, 3.0),
        std=(50.0, 60.0, 70.0),
        bgr=True,
        round_to_uint8=True,
        out_dtype=torch.float16,
    )
    assert half.dtype == torch.float16 and torch.equal(half, got.half())


def test_align_crops_without_rounding_is_unchanged():
    """The default (round_to_uint8=False) path: the same call as before the flag existed, unrounded
    (fractional levels), uint8 frames == their float 0..1 twin, and still within 0.1 level of cv2 on
    float frames (test_align_crops_matches_per_face_cv2 keeps its tolerances)."""
    rng = np.random.default_rng(23)
    f32 = np.stack([smooth_image(rng, 80, 90)])
    u8 = np.round(f32 * 255).astype(np.uint8)
    mats = np.stack([face_matrix(45, 40, 60, 112, 7.0), face_matrix(80, 5, 70, 112, 40.0)])
    fi = torch.zeros(2, dtype=torch.int64)
    kw = dict(mean=127.5, std=127.5, bgr=True)
    default = ops.align_crops(torch.from_numpy(u8), torch.from_numpy(mats), fi, 112, **kw)
    explicit = ops.align_crops(torch.from_numpy(u8), torch.from_numpy(mats), fi, 112, **kw, round_to_uint8=False)
    assert torch.equal(default, explicit)
    levels = default.numpy() * 127.5 + 127.5
    assert np.abs(levels - np.round(levels)).max() > 0.1  # not rounded
    as_float = ops.align_crops(torch.from_numpy(u8.astype(np.float32) / 255.0), torch.from_numpy(mats), fi, 112, **kw)
    assert (default - as_float).abs().max().item() * 127.5 < 1e-3
    ours = ops.align_crops(torch.from_numpy(f32), torch.from_numpy(mats), fi, 112, mean=0.0, std=1.0, layout="NHWC")
    ref = cv2_align(f32, mats, [0, 0], 112, 0.0, 1.0, False, "NHWC")
    assert np.abs(ours.numpy() - ref).max() <= 0.1


def test_align_crops_chunks_faces_without_changing_results(monkeypatch):
    """Big batches are processed in chunks of faces (bounded temporaries); chunking is invisible."""
    rng = np.random.default_rng(24)
    frames = torch.from_numpy(np.round(np.stack([smooth_image(rng, 50, 60) for _ in range(2)]) * 255).astype(np.uint8))
    mats = torch.from_numpy(np.stack([face_matrix(5 + 9 * k, 4 + 7 * k, 30 + k, 24, 20.0 * k) for k in range(7)]))
    fi = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    kw = dict(mean=(1.0, 2.0, 3.0), std=(50.0, 60.0, 70.0), bgr=True, round_to_uint8=True)
    whole = reference.align_crops(frames, mats, fi, 24, **kw)
    monkeypatch.setattr(reference, "ALIGN_CHUNK_PIXELS", 2 * 24 * 24)  # 2 faces per chunk
    assert torch.equal(reference.align_crops(frames, mats, fi, 24, **kw), whole)
    assert torch.equal(
        reference.align_crops(frames, mats, fi, 24, layout="NHWC")[3],
        reference.align_crops(frames, mats[3:4], fi[3:4], 24, layout="NHWC")[0],
    )


def test_align_crops_round_flag_is_validated():
    f = torch.rand(1, 20, 20, 3)
    m = torch.from_numpy(face_matrix(10, 10, 10, 16, 0))[None]
    with pytest.raises(VisageError, match="round_to_uint8"):
        ops.align_crops(f, m, torch.zeros(1, dtype=torch.int64), 16, round_to_uint8="yes")


# ----------------------------------------------------------------------------------------------
# lab_stats and the LAB maths
# ----------------------------------------------------------------------------------------------
def test_rgb_to_lab_matches_cv2_float32():
    """cv2 5 computes float LAB through its own tables (values land on 1/64 steps for a, b); our
    exact formula agrees within 0.5 LAB units at worst and 0.1 on average (L 0..100, a/b about
    -128..127); a wrong constant or a missing gamma step moves values by several units."""
    rng = np.random.default_rng(12)
    rgb = rng.random((64, 64, 3)).astype(np.float32)
    ref = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    ours = reference.rgb_to_lab(torch.from_numpy(rgb)).numpy()
    assert np.abs(ours - ref).max() < 0.5
    assert np.abs(ours - ref).mean() < 0.1
    back = reference.lab_to_rgb(torch.from_numpy(ours)).numpy()
    assert np.abs(back - rgb).max() < 1e-4
    assert (
        np.abs(
            reference.lab_to_rgb(torch.from_numpy(ref)).numpy() - np.clip(cv2.cvtColor(ref, cv2.COLOR_LAB2RGB), 0, 1)
        ).max()
        < 2e-3
    )


def test_lab_stats_weighted_mean_std_matches_cv2():
    rng = np.random.default_rng(13)
    imgs = np.stack([smooth_image(rng, 40, 40) for _ in range(3)])
    masks = np.stack([feather_mask(40), np.ones((40, 40), np.float32), rng.random((40, 40)).astype(np.float32)])
    ours = ops.lab_stats(torch.from_numpy(imgs), torch.from_numpy(masks)).numpy()
    assert ours.shape == (3, 2, 3)
    for i in range(3):
        lab = cv2.cvtColor(imgs[i], cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64)
        w = masks[i].reshape(-1, 1).astype(np.float64)
        mean = (lab * w).sum(0) / w.sum()
        std = np.sqrt(((lab - mean) ** 2 * w).sum(0) / w.sum())
        assert np.abs(ours[i, 0] - mean).max() < 0.3
        assert np.abs(ours[i, 1] - std).max() < 0.3
    # the mask really weights: stats under disjoint halves differ
    half = np.zeros((1, 40, 40), np.float32)
    half[:, :, :20] = 1
    a = ops.lab_stats(torch.from_numpy(imgs[:1]), torch.from_numpy(half))
    b = ops.lab_stats(torch.from_numpy(imgs[:1]), torch.from_numpy(1 - half))
    assert (a - b).abs().max() > 1.0
    # uint8 input = the same stats as its float view
    u8 = np.round(imgs * 255).astype(np.uint8)
    s8 = ops.lab_stats(torch.from_numpy(u8), torch.from_numpy(masks))
    sf = ops.lab_stats(torch.from_numpy(u8.astype(np.float32) / 255), torch.from_numpy(masks))
    assert torch.allclose(s8, sf, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# decoupled_attention
# ----------------------------------------------------------------------------------------------
def attention_case(seed, B=2, Hh=3, Lq=20, Lt=11, I=3, T=4, D=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)
    return r(B, Hh, Lq, D), r(B, Hh, Lt, D), r(B, Hh, Lt, D), r(B, Hh, I, T, D), r(B, Hh, I, T, D)


def loop_attention(q, k, v, k_id, v_id, scale_bi, mask):
    """Two plain SDPA calls per (batch, identity), summed in a Python loop."""
    B, Hh, Lq, D = q.shape
    out = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    for b in range(B):
        for i in range(k_id.shape[2]):
            o = F.scaled_dot_product_attention(q[b].double(), k_id[b, :, i].double(), v_id[b, :, i].double())
            w = float(scale_bi[b][i])
            if mask is not None:
                o = o * mask[b, i].double()[None, :, None]
            out[b] = out[b] + w * o
    return out


def manual_softmax_attention(q, k, v, k_id, v_id, scale_bi, mask):
    """Explicit softmax maths, float64, no SDPA at all."""
    D = q.shape[-1]
    q, k, v, k_id, v_id = (t.double() for t in (q, k, v, k_id, v_id))
    out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), -1) @ v
    for i in range(k_id.shape[2]):
        p = torch.softmax(q @ k_id[:, :, i].transpose(-1, -2) / math.sqrt(D), -1)
        o = p @ v_id[:, :, i]
        w = torch.tensor([float(scale_bi[b][i]) for b in range(q.shape[0])], dtype=torch.float64)[:, None, None, None]
        if mask is not None:
            o = o * mask[:, i].double()[:, None, :, None]
        out = out + w * o
    return out


@pytest.mark.parametrize("scale_kind", ["float", "per_identity", "per_batch_identity"])
@pytest.mark.parametrize("masked", [False, True])
def test_decoupled_attention_matches_two_sdpa_calls(scale_kind, masked):
    q, k, v, k_id, v_id = attention_case(20)
    B, I, Lq = q.shape[0], k_id.shape[2], q.shape[2]
    scale = {
        "float": 0.8,
        "per_identity": torch.tensor([0.5, 1.2, -0.3]),
        "per_batch_identity": torch.tensor([[0.5, 1.2, 0.0], [1.0, 0.25, 0.7]]),
    }[scale_kind]
    sb = torch.as_tensor(scale).expand(B, I) if not isinstance(scale, float) else torch.full((B, I), scale)
    mask = torch.rand(B, I, Lq, generator=torch.Generator().manual_seed(1)) if masked else None
    ours = ops.decoupled_attention(q, k, v, k_id, v_id, scale, mask)
    ref = loop_attention(q, k, v, k_id, v_id, sb, mask)
    man = manual_softmax_attention(q, k, v, k_id, v_id, sb, mask)
    assert ours.dtype == q.dtype and ours.shape == q.shape
    assert (ours.double() - ref).abs().max() < 1e-5
    assert (ours.double() - man).abs().max() < 1e-5
    # separate softmax states: NOT one softmax over the concatenated keys
    cat = F.scaled_dot_product_attention(
        q, torch.cat([k, k_id.flatten(2, 3)], 2), torch.cat([v, v_id.flatten(2, 3)], 2)
    )
    assert (ours - cat).abs().max() > 0.05


def test_decoupled_attention_identity_weight_zero_is_text_attention():
    q, k, v, k_id, v_id = attention_case(21, I=2)
    out = ops.decoupled_attention(q, k, v, k_id, v_id, 0.0)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-6)
    m = torch.zeros(q.shape[0], 2, q.shape[2])
    out = ops.decoupled_attention(q, k, v, k_id, v_id, 1.0, m)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-6)


def test_decoupled_attention_bfloat16_close_to_float64():
    q, k, v, k_id, v_id = attention_case(22, dtype=torch.bfloat16)
    out = ops.decoupled_attention(q, k, v, k_id, v_id, 0.7)
    ref = manual_softmax_attention(q, k, v, k_id, v_id, torch.full((2, 3), 0.7), None)
    assert out.dtype == torch.bfloat16
    assert (out.double() - ref).abs().max() < 0.05


def test_decoupled_attention_rejects_bad_shapes():
    q, k, v, k_id, v_id = attention_case(23)
    with pytest.raises(VisageError, match="identity keys"):
        ops.decoupled_attention(q, k, v, k_id[..., :8], v_id, 1.0)
    with pytest.raises(VisageError, match="scale"):
        ops.decoupled_attention(q, k, v, k_id, v_id, torch.ones(5))
    with pytest.raises(VisageError, match="region_mask"):
        ops.decoupled_attention(q, k, v, k_id, v_id, 1.0, torch.ones(2, 3, 7))


def test_decoupled_attention_equals_diffusers_ip_adapter_processor():
    """diffusers' IPAdapterAttnProcessor2_0 (one adapter, two masked images, per-image scales) and two
    unmasked adapters: after the same projections our function gives the same hidden states."""
    from diffusers.image_processor import IPAdapterMaskProcessor
    from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

    torch.manual_seed(0)
    B, C, Cx, heads, dh, T, Lt = 2, 32, 24, 2, 16, 4, 7
    h_, w_ = 4, 6
    Lq = h_ * w_
    attn = Attention(query_dim=C, cross_attention_dim=Cx, heads=heads, dim_head=dh).eval()
    x = torch.randn(B, Lq, C)
    enc = torch.randn(B, Lt, Cx)

    def project(hs, lin):
        return lin(hs).view(B, -1, heads, dh).transpose(1, 2)

    # (a) masked: one adapter, two images, per-image scales
    proc = IPAdapterAttnProcessor2_0(
        hidden_size=heads * dh, cross_attention_dim=Cx, num_tokens=(T,), scale=[[0.6, 0.9]]
    ).eval()
    attn.set_processor(proc)
    ip = torch.randn(B, 2, T, Cx)
    masks = torch.zeros(1, 2, 16, 24)
    masks[:, 0, :, :12] = 1.0
    masks[:, 1, :, 12:] = 1.0
    with torch.no_grad():
        ref = attn(x, encoder_hidden_states=(enc, [ip]), ip_adapter_masks=[masks])
        q = project(x, attn.to_q)
        k, v = project(enc, attn.to_k), project(enc, attn.to_v)
        kid = torch.stack([project(ip[:, i], proc.to_k_ip[0]) for i in range(2)], 2)
        vid = torch.stack([project(ip[:, i], proc.to_v_ip[0]) for i in range(2)], 2)
        region = torch.stack(
            [IPAdapterMaskProcessor.downsample(masks[:, i], B, Lq, heads * dh)[..., 0] for i in range(2)], 1
        )
        out = ops.decoupled_attention(q, k, v, kid, vid, torch.tensor([0.6, 0.9]), region)
        ours = attn.to_out[0](out.transpose(1, 2).reshape(B, Lq, heads * dh))
    assert (ours - ref).abs().max() < 1e-5
    # (b) unmasked: two adapters (identities) with their own projections and scales
    proc2 = IPAdapterAttnProcessor2_0(
        hidden_size=heads * dh, cross_attention_dim=Cx, num_tokens=(T, T), scale=[0.5, 1.3]
    ).eval()
    attn.set_processor(proc2)
    ips = [torch.randn(B, T, Cx), torch.randn(B, T, Cx)]
    with torch.no_grad():
        ref2 = attn(x, encoder_hidden_states=(enc, ips))
        kid = torch.stack([project(ips[i], proc2.to_k_ip[i]) for i in range(2)], 2)
        vid = torch.stack([project(ips[i], proc2.to_v_ip[i]) for i in range(2)], 2)
        out = ops.decoupled_attention(q, k, v, kid, vid, [0.5, 1.3])
        ours2 = attn.to_out[0](out.transpose(1, 2).reshape(B, Lq, heads * dh))
    assert (ours2 - ref2).abs().max() < 1e-5


# ----------------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------------
def test_dispatch_uses_twins_off_cuda_and_when_disabled(monkeypatch):
    q, k, v, k_id, v_id = attention_case(30)
    assert not ops.use_fused("decoupled_attention", q, k, v)  # CPU tensors: never fused
    monkeypatch.setenv("VISAGE_DISABLE_TRITON", "1")
    assert ops.triton_disabled()
    monkeypatch.setenv("VISAGE_DISABLE_TRITON", "0")
    assert not ops.triton_disabled()


def test_broken_triton_never_breaks_import():
    """With an unimportable Triton, importing kernels.ops works and the ops still run (twins)."""
    code = (
        "import sys, logging\n"
        "import torch\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "for name in [m for m in sys.modules if m == 'triton' or m.startswith('triton.')]:\n"
        "    del sys.modules[name]\n"
        "class Boom:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise RuntimeError('triton is broken on purpose')\n"
        "sys.meta_path.insert(0, Boom())\n"
        "from visage.kernels import ops\n"
        "import torch\n"
        "assert ops.triton_available() is False\n"
        "assert ops.triton_available() is False\n"
        "q = torch.randn(1, 1, 4, 8)\n"
        "k = torch.randn(1, 1, 3, 8)\n"
        "kid = torch.randn(1, 1, 1, 2, 8)\n"
        "print('OK', tuple(ops.decoupled_attention(q, k, k, kid, kid, 1.0).shape))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "OK (1, 1, 4, 8)" in r.stdout
    assert r.stderr.count("Triton is not usable") == 1  # logged once

"""Kernels benchmark: paste-back, batched alignment, decoupled attention - ours against the
reference pipelines, measured in the same run on the same machine.

References (written here from the published maths, not copied):
* insightface ``INSwapper.get(paste_back=True)``: three full-frame cv2.warpAffine (face, white mask,
  diff mask), threshold, erode (k = max(size//10, 10)), dilate, two Gaussian blurs, float blend.
* a FaceFusion-style box-limited cv2 paste: warp crop and mask only into the face's bounding box.
* a torch ``grid_sample`` paste, box-limited (affine_grid over the box), on our device.
* our torch twin (kernels.reference) on the same device (CUDA only: on CPU "ours" IS the twin).
* a device-to-device copy of the whole frame (the floor for a paste that returns a new frame).
* alignment: per-face cv2.warpAffine + cv2.dnn.blobFromImage (what insightface does per face).
* attention: two F.scaled_dot_product_attention calls (text + identity), and one text-only call.
"""

from __future__ import annotations

import math

import common
import cv2
import numpy as np
import torch
import torch.nn.functional as F

common.ensure_package()
from visage.kernels import ops, reference  # noqa: E402


# --------------------------------------------------------------------------------------------
# scene builders
# --------------------------------------------------------------------------------------------
def face_matrix(cx, cy, face_px, s, angle_deg):
    a = math.radians(angle_deg)
    sc = s / face_px
    c, sn = math.cos(a) * sc, math.sin(a) * sc
    m = np.array([[c, -sn, 0.0], [sn, c, 0.0]], np.float64)
    m[:, 2] = np.array([s / 2.0, s / 2.0]) - m[:, :2] @ np.array([cx, cy])
    return m.astype(np.float32)


def feather(s):
    m = np.zeros((s, s), np.float32)
    a = s // 8
    m[a : s - a, a : s - a] = 1.0
    k = (s // 8) | 1
    return cv2.GaussianBlur(m, (k, k), 0)


def scene(rng, B, H, W, S, faces_per_frame=1, angle=12.0):
    frames = rng.integers(0, 256, (B, H, W, 3), dtype=np.uint8)
    mats, fidx = [], []
    for b in range(B):
        for j in range(faces_per_frame):
            cx = W * (0.3 + 0.4 * rng.random())
            cy = H * (0.3 + 0.4 * rng.random())
            mats.append(face_matrix(cx, cy, 2.0 * S, S, angle + 5 * j))
            fidx.append(b)
    n = len(mats)
    crops = rng.integers(0, 256, (n, S, S, 3), dtype=np.uint8)
    masks = np.stack([feather(S)] * n)
    return frames, crops, np.stack(mats), masks, np.array(fidx, np.int64)


# --------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------
def insightface_paste(target_img, bgr_fake, aimg, M):
    """insightface inswapper paste_back=True maths on one face (uint8 BGR frame, uint8 crop)."""
    H, W = target_img.shape[:2]
    fake_diff = np.abs(bgr_fake.astype(np.float32) - aimg.astype(np.float32)).mean(axis=2)
    fake_diff[:2, :] = 0
    fake_diff[-2:, :] = 0
    fake_diff[:, :2] = 0
    fake_diff[:, -2:] = 0
    IM = cv2.invertAffineTransform(M)
    white = np.full(aimg.shape[:2], 255, dtype=np.float32)
    warped = cv2.warpAffine(bgr_fake, IM, (W, H), borderValue=0.0)
    white = cv2.warpAffine(white, IM, (W, H), borderValue=0.0)
    fake_diff = cv2.warpAffine(fake_diff, IM, (W, H), borderValue=0.0)
    white[white > 20] = 255
    fake_diff[fake_diff < 10] = 0
    fake_diff[fake_diff >= 10] = 255
    ys, xs = np.where(white == 255)
    size = int(np.sqrt((ys.max() - ys.min()) * (xs.max() - xs.min())))
    k = max(size // 10, 10)
    mask = cv2.erode(white, np.ones((k, k), np.uint8), iterations=1)
    fake_diff = cv2.dilate(fake_diff, np.ones((2, 2), np.uint8), iterations=1)
    k = max(size // 20, 5)
    mask = cv2.GaussianBlur(mask, (2 * k + 1, 2 * k + 1), 0)
    fake_diff = cv2.GaussianBlur(fake_diff, (11, 11), 0)
    mask = (mask / 255.0).reshape(H, W, 1)
    return (mask * warped + (1 - mask) * target_img.astype(np.float32)).astype(np.uint8)


def facefusion_paste(frame, crop, mask, M):
    """Box-limited cv2 paste (FaceFusion style): inverse-warp crop and mask into the face's box."""
    H, W = frame.shape[:2]
    S = crop.shape[0]
    inv = cv2.invertAffineTransform(M)
    corners = np.array([[0, 0], [S, 0], [S, S], [0, S]], np.float32)
    pts = cv2.transform(corners[None], inv)[0]
    x0, y0 = np.floor(pts.min(0)).astype(int)
    x1, y1 = np.ceil(pts.max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    paste = inv.copy()
    paste[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(crop, paste, size, borderMode=cv2.BORDER_REPLICATE)
    wmask = cv2.warpAffine(mask, paste, size).clip(0, 1)[..., None]
    out = frame.copy()
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = (region * (1 - wmask) + warped.astype(np.float32) * wmask).astype(np.uint8)
    return out


def grid_sample_paste(frames, crops, mats, masks, fidx):
    """Box-limited torch paste with affine_grid + grid_sample (bilinear, zeros), one face at a time."""
    out = frames.clone()
    B, H, W, C = frames.shape
    S = crops.shape[1]
    m64 = mats.detach().cpu().double()
    boxes = reference.face_boxes(m64, S, H, W)
    for i, box in enumerate(boxes):
        if box is None:
            continue
        x0, y0, x1, y1 = box
        ys = torch.arange(y0, y1 + 1, device=frames.device, dtype=torch.float32)
        xs = torch.arange(x0, x1 + 1, device=frames.device, dtype=torch.float32)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        a = m64[i].float().tolist()
        u = a[0][0] * gx + a[0][1] * gy + a[0][2]
        v = a[1][0] * gx + a[1][1] * gy + a[1][2]
        grid = torch.stack((u * (2.0 / (S - 1)) - 1.0, v * (2.0 / (S - 1)) - 1.0), -1)[None]
        src = torch.cat(
            (
                crops[i].float().permute(2, 0, 1) / (255.0 if crops.dtype == torch.uint8 else 1.0),
                masks[i][None].float(),
            ),
            0,
        )[None]
        smp = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
        c, m = smp[:C].permute(1, 2, 0), smp[C:].permute(1, 2, 0)
        b = int(fidx[i])
        reg = out[b, y0 : y1 + 1, x0 : x1 + 1].float()
        if frames.dtype == torch.uint8:
            out[b, y0 : y1 + 1, x0 : x1 + 1] = (
                ((reg / 255.0 * (1 - m) + c * m) * 255.0).round().clamp(0, 255).to(torch.uint8)
            )
        else:
            out[b, y0 : y1 + 1, x0 : x1 + 1] = (reg * (1 - m) + c * m).to(frames.dtype)
    return out


def cv2_align(frames_np, mats, fidx, size, mean, std):
    crops = [cv2.warpAffine(frames_np[fidx[i]], mats[i], (size, size), borderValue=0.0) for i in range(len(mats))]
    return cv2.dnn.blobFromImages(crops, 1.0 / std, (size, size), (mean, mean, mean), swapRB=True)


# --------------------------------------------------------------------------------------------
def _paste_bytes(frames, crops, masks, boxes):
    el = frames.element_size()
    box_px = sum((b[2] - b[0] + 1) * (b[3] - b[1] + 1) for b in boxes if b)
    return (
        2 * frames.numel() * el
        + 2 * box_px * frames.shape[-1] * el
        + crops.numel() * crops.element_size()
        + masks.numel() * masks.element_size()
    )


def bench_paste(args, dev, q):
    rows = []
    rng = np.random.default_rng(0)
    cuda = dev.type == "cuda"
    H, W, S = 1080, 1920, 128
    frames, crops, mats, masks, fidx = scene(rng, 1, H, W, S)
    tf = torch.from_numpy(frames).to(dev)
    tc = torch.from_numpy(crops).to(dev)
    tm = torch.from_numpy(mats)  # matrices live on the host (as AlignedFaces)
    tk = torch.from_numpy(masks).to(dev)
    ti = torch.from_numpy(fidx)
    boxes = reference.face_boxes(tm.cpu().double(), S, H, W)
    shape = "1x1080x1920 u8, 1 face 128^2 @12deg"
    ours = common.timeit(lambda: ops.paste_back(tf, tc, tm, tk, ti), dev, q)
    nb = _paste_bytes(tf, tc, tk, boxes)
    aimg = cv2.warpAffine(frames[0], mats[0], (S, S), borderValue=0.0)
    ins = common.timeit(
        lambda: insightface_paste(frames[0], crops[0], aimg, mats[0]), torch.device("cpu"), q, max_reps=20
    )
    rows.append(common.row("paste_back", shape, ours, ins, "insightface paste_back=True (cv2, CPU)", nb, True))
    ff = common.timeit(lambda: facefusion_paste(frames[0], crops[0], masks[0], mats[0]), torch.device("cpu"), q)
    rows.append(common.row("paste_back", shape, ours, ff, "box-limited cv2 (FaceFusion-style, CPU)", nb, True))
    gs = common.timeit(lambda: grid_sample_paste(tf, tc, tm, tk, ti), dev, q)
    rows.append(common.row("paste_back", shape, ours, gs, f"torch grid_sample box paste ({dev.type})", nb, True))
    if cuda:
        tw = common.timeit(lambda: reference.paste_back(tf, tc, tm, tk, ti), dev, q)
        rows.append(common.row("paste_back", shape, ours, tw, "torch twin (same GPU)", nb, True))
    cp = common.timeit(lambda: tf.clone(), dev, q)
    rows.append(
        common.row(
            "paste_back",
            shape,
            ours,
            cp,
            "copy of the whole frame",
            nb,
            True,
            note="ratio vs copy: goal >= 1/1.5 = 0.67x on GPU" if cuda else "",
        )
    )
    # in place (callers that own their frames): no frame copy at all, only the face box is touched
    work = tf.clone()
    inpl = common.timeit(lambda: ops.paste_back(work, tc, tm, tk, ti, inplace=True), dev, q)
    nb_in = nb - 2 * tf.numel() * tf.element_size()
    rows.append(common.row("paste_back inplace", shape, inpl, cp, "copy of the whole frame", nb_in, True))
    if cuda:
        rows.append(common.row("paste_back inplace", shape, inpl, tw, "torch twin (same GPU)", nb_in, True))

    # float32 frames (ComfyUI IMAGE), one face, and a batch of frames
    for B in [1, 64] if cuda else [1, 2 if q else 4]:
        frames, crops, mats, masks, fidx = scene(rng, B, H, W, S)
        tf = torch.from_numpy(frames).to(dev).float().div_(255.0)
        tc = torch.from_numpy(crops).to(dev).float().div_(255.0)
        tm = torch.from_numpy(mats)  # matrices live on the host (as AlignedFaces)
        tk = torch.from_numpy(masks).to(dev)
        ti = torch.from_numpy(fidx)
        boxes = reference.face_boxes(tm.cpu().double(), S, H, W)
        nb = _paste_bytes(tf, tc, tk, boxes)
        shape = f"{B}x1080x1920 f32, {B} face(s) 128^2"
        ours = common.timeit(lambda: ops.paste_back(tf, tc, tm, tk, ti), dev, q)
        if cuda:
            tw = common.timeit(lambda: reference.paste_back(tf, tc, tm, tk, ti), dev, q, max_reps=50)
            rows.append(common.row("paste_back", shape, ours, tw, "torch twin (same GPU)", nb, True))
        gs = common.timeit(lambda: grid_sample_paste(tf, tc, tm, tk, ti), dev, q, max_reps=50)
        rows.append(common.row("paste_back", shape, ours, gs, f"torch grid_sample box paste ({dev.type})", nb, True))
        cp = common.timeit(lambda: tf.clone(), dev, q)
        rows.append(common.row("paste_back", shape, ours, cp, "copy of the whole batch", nb, True))
        if B == 1:
            stats = torch.stack([reference.lab_stats(tc, tk), reference.lab_stats(tc * 0.7 + 0.1, tk)], 1)
            lab = common.timeit(lambda: ops.paste_back(tf, tc, tm, tk, ti, stats), dev, q)
            rows.append(common.row("paste_back+lab", shape, lab, ours, "same paste without colour transfer", nb, True))
    return rows


def bench_align(args, dev, q):
    rows = []
    rng = np.random.default_rng(1)
    cuda = dev.type == "cuda"
    H, W = 1080, 1920
    for size, mean, std, n_frames, per in (
        (112, 127.5, 127.5, 16, 4),
        (128, 0.0, 255.0, 16, 4),
        (512, 0.0, 255.0, 4, 4),
    ):
        if not cuda:
            n_frames, per = (2, 2) if q else (4, 4)
        frames = rng.integers(0, 256, (n_frames, H, W, 3), dtype=np.uint8)
        mats = np.stack(
            [
                face_matrix(
                    W * (0.2 + 0.6 * rng.random()),
                    H * (0.2 + 0.6 * rng.random()),
                    1.8 * size / 1.0,
                    size,
                    rng.random() * 40 - 20,
                )
                for _ in range(n_frames * per)
            ]
        )
        fidx = np.repeat(np.arange(n_frames), per)
        tf = torch.from_numpy(frames).to(dev)
        tm = torch.from_numpy(mats)  # matrices live on the host (as AlignedFaces)
        ti = torch.from_numpy(fidx)
        n = len(mats)
        shape = f"{n} faces -> {size}^2 NCHW (from {n_frames} 1080p u8)"
        ours = common.timeit(lambda: ops.align_crops(tf, tm, ti, size, mean=mean, std=std, bgr=True), dev, q)
        nb = n * size * size * 3 * (4 + 1)  # crops written (f32) + about one frame byte read per crop value
        ref = common.timeit(
            lambda: cv2_align(frames, mats.astype(np.float64), fidx, size, mean, std), torch.device("cpu"), q
        )
        rows.append(
            common.row("align_crops", shape, ours, ref, "per-face cv2.warpAffine + blobFromImages (CPU)", nb, True)
        )
        if cuda:
            tw = common.timeit(lambda: reference.align_crops(tf, tm, ti, size, mean=mean, std=std, bgr=True), dev, q)
            rows.append(common.row("align_crops", shape, ours, tw, "torch twin (same GPU)", nb, True))
    return rows


def bench_attention(args, dev, q):
    rows = []
    cuda = dev.type == "cuda"
    if cuda:
        shapes = [
            (2, 10, 4096, 77, 1, 16, 64, torch.float16),
            (2, 20, 1024, 77, 1, 16, 64, torch.float16),
            (2, 10, 4096, 77, 2, 4, 64, torch.bfloat16),
        ]
    else:
        shapes = [(1, 10, 256 if q else 1024, 77, 1, 16, 64, torch.float32)]
    g = torch.Generator().manual_seed(0)
    for B, Hh, Lq, Lt, I, T, D, dt in shapes:
        r = lambda *s: torch.randn(*s, generator=g).to(dev, dt)
        qq, k, v, kid, vid = r(B, Hh, Lq, D), r(B, Hh, Lt, D), r(B, Hh, Lt, D), r(B, Hh, I, T, D), r(B, Hh, I, T, D)
        el = qq.element_size()
        nb = (2 * qq.numel() + k.numel() + v.numel() + kid.numel() + vid.numel()) * el
        shape = f"B{B} H{Hh} Lq{Lq} Lt{Lt} I{I}xT{T} D{D} {str(dt)[6:]}"
        ours = common.timeit(lambda: ops.decoupled_attention(qq, k, v, kid, vid, 0.8), dev, q)
        two = common.timeit(lambda: reference.decoupled_attention(qq, k, v, kid, vid, 0.8), dev, q)
        one = common.timeit(lambda: F.scaled_dot_product_attention(qq, k, v), dev, q)
        rows.append(common.row("decoupled_attention", shape, ours, two, "text SDPA + identity SDPA", nb, True))
        rows.append(
            common.row(
                "decoupled_attention",
                shape,
                ours,
                one,
                "ONE text-only SDPA",
                nb,
                True,
                note="goal on GPU: ours <= 1.1x one text SDPA, i.e. ratio >= 0.91x" if cuda else "",
            )
        )
        if cuda and ops.use_fused("decoupled_attention", qq) and (Lq, dt) == (4096, torch.float16):
            rows += attention_sweep(qq, k, v, kid, vid, shape, nb, one, two, dev, q)
    return rows


# launch configurations tried on a GPU (each compiles without spills for sm_80..sm_120:
# tools/kernel_compile.py); the default is kernels.triton_attention.launch_config
SWEEP = [
    (64, 64, 4, 3),
    (64, 64, 8, 2),
    (128, 64, 8, 2),
    (32, 64, 4, 2),
    (64, 32, 4, 2),
    (128, 32, 8, 2),
    (64, 128, 8, 2),
    (128, 128, 8, 1),
]


def attention_sweep(qq, k, v, kid, vid, shape, nb, one, two, dev, q):
    """Time alternative launch configurations of the fused attention (checked against the twin)."""
    from visage.kernels import triton_attention as ta

    rows = []
    want = reference.decoupled_attention(qq, k, v, kid, vid, 0.8).float()
    default = ta.launch_config(qq.dtype, qq.shape[-1], v.shape[-1], k.shape[2], kid.shape[3])
    for bm, bn, w, st in SWEEP:
        cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
        label = f"{shape} cfg M{bm} N{bn} w{w} s{st}"
        if all(default[key] == val for key, val in cfg.items()):
            label += " (default)"
        try:
            got = ta.decoupled_attention(qq, k, v, kid, vid, 0.8, config=cfg)
            err = float((got.float() - want).abs().max())
            ms = common.timeit(lambda: ta.decoupled_attention(qq, k, v, kid, vid, 0.8, config=cfg), dev, q)
        except Exception as e:  # a config the card cannot run is a finding, not a crash
            rows.append(
                common.row(
                    "attention sweep",
                    label,
                    float("nan"),
                    one,
                    "ONE text-only SDPA",
                    nb,
                    True,
                    note=f"failed: {type(e).__name__}: {str(e)[:120]}",
                )
            )
            continue
        rows.append(
            common.row(
                "attention sweep",
                label,
                ms,
                one,
                "ONE text-only SDPA",
                nb,
                True,
                note=f"max|diff| vs twin {err:.1e}" + ("  WRONG" if err > 3e-2 else ""),
            )
        )
    return rows


def run(args):
    dev = getattr(args, "torch_device", torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    q = bool(getattr(args, "quick", False))
    rows = []
    for part in (bench_paste, bench_align, bench_attention):
        rows += part(args, dev, q)
    fused = ops.use_fused("paste_back", torch.zeros(1, device=dev))
    for r in rows:
        r["fused"] = fused
    if not fused:
        rows[0]["note"] = (
            rows[0]["note"] + "; " if rows[0]["note"] else ""
        ) + f"'ours' ran the torch twins on {dev.type} (fused kernels need CUDA + Triton)"
    return rows

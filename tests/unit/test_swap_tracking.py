"""Face tracks across frames and temporal smoothing (jitter down, motion kept)."""

import numpy as np
import torch

from visage.core.types import Face, FaceSet
from visage.nodes.swap.tracking import box_iou, smooth_faceset, smooth_series, track_faces

KPS = np.array([[-20, -15], [20, -15], [0, 5], [-15, 25], [15, 25]], np.float32)


def face(i, cx, cy, size=100.0, emb=None):
    kps = KPS * (size / 100.0) + np.array([cx, cy], np.float32)
    box = np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], np.float32)
    e = None if emb is None else torch.from_numpy(emb / np.linalg.norm(emb)).float()
    return Face(
        image_index=i, bbox=torch.from_numpy(box), score=0.9, kps=torch.from_numpy(kps), embedding=e, normed_embedding=e
    )


def sequence(T, centers, jitter=3.0, seed=0, embs=None, order=None):
    rng = np.random.default_rng(seed)
    faces = []
    for t in range(T):
        row = []
        for k, c in enumerate(centers(t)):
            f = face(t, *c, emb=None if embs is None else embs[k])
            j = rng.normal(0, jitter, (5, 2)).astype(np.float32)
            jb = rng.normal(0, jitter, 4).astype(np.float32)
            row.append(f.with_(kps=f.kps + torch.from_numpy(j), bbox=f.bbox + torch.from_numpy(jb)))
        if order is not None and order(t):
            row = row[::-1]  # the detector lists the faces in another order on some frames
        faces.append(tuple(row))
    return FaceSet(faces=tuple(faces), image_sizes=((480, 640),) * T)


def test_iou():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], float)
    assert np.allclose(box_iou(a, b), [[50 / 150, 0.0]])


def test_tracks_follow_faces_when_detector_order_flips():
    rng = np.random.default_rng(1)
    embs = [rng.standard_normal(512), rng.standard_normal(512)]
    fs = sequence(12, lambda t: [(150 + 2 * t, 200), (450 - 2 * t, 220)], embs=embs, order=lambda t: t % 3 == 1)
    ids = track_faces(fs)
    for t, row in enumerate(ids):
        for j, tid in enumerate(row):
            x = float(fs.faces[t][j].center[0])
            assert tid == (0 if x < 300 else 1)


def test_static_head_jitter_drops():
    T = 40
    fs = sequence(T, lambda t: [(320, 240)], jitter=3.0)
    sm = smooth_faceset(fs, 0.8)
    raw = np.stack([f[0].kps.numpy() for f in fs.faces])
    out = np.stack([f[0].kps.numpy() for f in sm.faces])
    v_raw = raw.var(0).mean()
    v_out = out.var(0).mean()
    assert v_out < v_raw / 4, (v_raw, v_out)
    # frame-to-frame motion (what the eye sees as jitter) drops even more
    assert np.abs(np.diff(out, axis=0)).mean() < np.abs(np.diff(raw, axis=0)).mean() / 4
    # strength 0 leaves the faces as they are
    assert smooth_faceset(fs, 0.0) is fs


def test_moving_head_is_not_lagged():
    T = 30
    truth = lambda t: (100 + 15 * t, 240)  # 15 px per frame: real motion
    fs = sequence(T, lambda t: [truth(t)], jitter=2.0, seed=3)
    sm = smooth_faceset(fs, 0.8)
    centre = np.array([np.asarray(sm.faces[t][0].kps.numpy()[2]) - (KPS[2]) for t in range(T)])
    err = np.abs(centre[:, 0] - np.array([truth(t)[0] for t in range(T)]))
    assert err.mean() < 3.0, err.mean()


def test_smooth_series_constant_is_fixed_point():
    x = np.tile(np.array([[5.0, 7.0]]), (10, 1))
    assert np.allclose(smooth_series(x, np.full(10, 100.0), 1.0), x)


def test_two_tracks_smoothed_separately():
    fs = sequence(20, lambda t: [(150, 200), (450, 220)], jitter=3.0, order=lambda t: t % 2 == 0)
    sm = smooth_faceset(fs, 0.8)
    for t in range(20):
        xs = sorted(float(f.center[0]) for f in sm.faces[t])
        assert abs(xs[0] - 150) < 6 and abs(xs[1] - 450) < 6

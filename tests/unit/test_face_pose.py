"""Head pose without insightface at run time: the 68-point mean shape is read from nodes/face/meanshape_68.npy
(no pickle), and the pose equals insightface's own (its landmark model's pose maths on its meanshape_68.pkl)."""

import importlib.util
import math

import numpy as np
import pytest

from visage.nodes.face import analyzer


def _rot(pitch, yaw, roll):
    a, b, c = (math.radians(v) for v in (pitch, yaw, roll))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _landmarks(mean, pitch, yaw, roll, seed=0):
    """68 3D landmarks as the landmark model gives them: the mean shape rotated, scaled to pixels, moved,
    plus a little noise."""
    rng = np.random.default_rng(seed)
    pts = (mean @ _rot(pitch, yaw, roll).T) * 80.0 + np.array([200.0, 150.0, 10.0])
    return (pts + rng.normal(0, 0.5, pts.shape)).astype(np.float32)


def test_mean_shape_is_a_plain_array():
    m = analyzer._mean_shape_68()
    assert m.shape == (68, 3) and m.dtype == np.float64 and np.isfinite(m).all()


@pytest.mark.parametrize("angles", [(0.0, 0.0, 0.0), (12.0, -25.0, 8.0), (-20.0, 40.0, -15.0)])
def test_pose_equals_insightface(angles):
    mean = analyzer._mean_shape_68()
    lmk = _landmarks(mean, *angles)
    ours = analyzer.pose_from_3d68(lmk, mean)
    assert np.all(np.abs(ours) < 90)
    if importlib.util.find_spec("insightface") is None:
        pytest.skip("insightface (the reference) is not installed")
    from insightface.data import get_object
    from insightface.utils import transform

    ref_mean = get_object("meanshape_68.pkl")
    assert np.array_equal(np.asarray(ref_mean, dtype=np.float64), mean)  # the same numbers as the pkl
    # insightface/model_zoo/landmark.py, require_pose
    P = transform.estimate_affine_matrix_3d23d(ref_mean, lmk)
    _s, R, _t = transform.P2sRt(P)
    want = np.array(transform.matrix2angle(R), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), want, atol=1e-3)

"""LivePortrait's 203-point landmark model: the crop it runs on, the points mapped back to the frame, the
official eye / lip close ratios, and its use by the expression pipeline (68-point fallback without it)."""

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from builders.expression import make_landmark203
from unit.test_expression import make_face  # tests/ is on sys.path (conftest)

from visage.core.errors import ModelFileInvalid
from visage.nodes.expression import crop as C
from visage.nodes.expression import landmark203 as L203
from visage.nodes.expression import pipeline as PL


def test_points_are_the_third_output_on_livePortraits_crop(tmp_path):
    path = make_landmark203(str(tmp_path / "landmark.onnx"))
    face = make_face(120, 110, 40, roll_deg=12)
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.random((240, 260, 3)).astype(np.float32))
    got = L203.landmarks_203(L203.load_landmark203(path), img, face)
    # reference: the same crop LivePortrait's landmark runner makes (scale 1.5, vy -0.1, 224), its third output
    m = C.crop_matrix(face, 224, 1.5, 0.0, -0.1)
    u8 = (img.numpy() * 255).round().astype(np.uint8)
    crop = cv2.warpAffine(u8, m, (224, 224), flags=cv2.INTER_LINEAR)
    x = (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[2]
    pts = out.reshape(-1, 2) * 224
    inv = cv2.invertAffineTransform(m)
    want = pts @ inv[:, :2].T + inv[:, 2]
    assert got.shape == (203, 2)
    np.testing.assert_allclose(got, want, atol=1e-3)
    # the crop is rotated upright: a point at the crop centre maps to the crop centre's frame position
    centre = np.array([112.0, 112.0]) @ inv[:, :2].T + inv[:, 2]
    assert np.linalg.norm(centre - np.array(face.center)) < 40


def test_official_ratio_formulas():
    p = np.zeros((203, 2), np.float32)
    p[0], p[12] = (0, 0), (10, 0)  # image-left eye width 10
    p[6], p[18] = (5, -1), (5, 2)  # its lid gap 3
    p[24], p[36] = (20, 0), (40, 0)  # image-right eye width 20
    p[30], p[42] = (30, 0), (30, 5)  # gap 5
    p[48], p[66] = (0, 50), (16, 50)  # mouth width 16
    p[90], p[102] = (8, 49), (8, 53)  # inner-lip gap 4
    torch.testing.assert_close(L203.eye_close_ratios(p), torch.tensor([0.3, 0.25]), atol=1e-5, rtol=0)
    torch.testing.assert_close(L203.lip_close_ratio(p), torch.tensor([0.25]), atol=1e-5, rtol=0)


def test_pipeline_uses_203_points_when_present_else_68():
    face = make_face(100, 100, 50)
    p = np.random.default_rng(1).random((203, 2)).astype(np.float32) * 100
    torch.testing.assert_close(PL._ratios(face, "eye", p), L203.eye_close_ratios(p))
    torch.testing.assert_close(PL._ratios(face, "lip", p), L203.lip_close_ratio(p))
    from visage.nodes.expression import motion as M

    torch.testing.assert_close(PL._ratios(face, "eye"), M.eye_open_ratios(face.landmarks_68))


def test_wrong_file_is_refused(tmp_path):
    from builders.face import make_per_face

    make_per_face(str(tmp_path / "landmark.onnx"), 112, 512, in_name="input.1", out_name="683")  # a recognizer
    with pytest.raises(ModelFileInvalid, match="203 points"):
        L203.load_landmark203(str(tmp_path / "landmark.onnx"))

"""Our torch face analysis against insightface + onnxruntime (the reference), on models built here
with the released signatures and on the real small pretrained models in ../shared/fixtures."""

import os

import cv2
import numpy as np
import pytest
import torch
from builders.face import build_face_pack
from conftest import fixture_path, insightface_image
from face_helpers import bgr_to_batch, cosine, insightface_app, match_reference

from visage.nodes.face.analyzer import load_analyzer


def assert_parity(ours_faces, ref_faces, check_landmarks=True):
    assert len(ours_faces) == len(ref_faces) > 0
    for f, r, ov in match_reference(list(ours_faces), ref_faces):
        assert ov >= 0.99, (f.bbox, r.bbox)
        assert np.abs(f.kps.numpy() - r.kps).max() <= 0.5
        assert abs(f.score - float(r.det_score)) < 1e-3
        if r.get("embedding") is not None:
            assert cosine(f.embedding.numpy(), r.embedding) >= 0.9999
        if check_landmarks and r.get("landmark_2d_106") is not None:
            assert np.abs(f.landmarks_2d_106.numpy() - r.landmark_2d_106).max() <= 0.5
        if check_landmarks and r.get("landmark_3d_68") is not None:
            assert np.abs(f.landmarks_3d_68.numpy()[:, :2] - r.landmark_3d_68[:, :2]).max() <= 0.5
            assert np.abs(f.pose.numpy() - r.pose).max() <= 0.5
        if r.get("gender") is not None:
            assert f.gender == r.sex and f.age == r.age


@pytest.fixture(scope="module")
def t1_bgr():
    return cv2.imread(insightface_image("t1.jpg"))


@pytest.mark.parametrize("batched", [False, True], ids=["folded-batch-outputs", "batched-outputs"])
def test_built_pack_matches_insightface(tmp_path, t1_bgr, batched):
    pack = build_face_pack(str(tmp_path / "pack"), batched_detector=batched)
    ours = load_analyzer(pack, "cpu", torch.float32).analyze(bgr_to_batch(t1_bgr))
    ref = insightface_app(pack).get(t1_bgr)
    assert_parity(ours.faces[0], ref)
    f = ours.faces[0][0]
    assert f.embedding.shape == (512,) and abs(float(f.normed_embedding.norm()) - 1) < 1e-5
    assert f.landmarks_2d_106.shape == (106, 2) and f.landmarks_3d_68.shape == (68, 3) and f.pose.shape == (3,)


def test_self_normalising_recognizer_uses_insightface_rule(tmp_path, t1_bgr):
    pack = build_face_pack(str(tmp_path / "pack"), with_landmarks=False, with_genderage=False, sub_mul_recognizer=True)
    an = load_analyzer(pack, "cpu", torch.float32)
    assert (an.routed["recognition"].mean, an.routed["recognition"].std) == (0.0, 1.0)
    assert_parity(an.analyze(bgr_to_batch(t1_bgr)).faces[0], insightface_app(pack).get(t1_bgr))


def test_non_integer_resize_and_det_size(tmp_path, t1_bgr):
    """A resize that is not an exact 2x (cv2 fixed-point vs torch float) and a non-square det size."""
    img = cv2.resize(t1_bgr, (1000, 693), interpolation=cv2.INTER_AREA)
    pack = build_face_pack(str(tmp_path / "pack"), with_landmarks=False, with_genderage=False)
    ours = load_analyzer(pack, "cpu", torch.float32, det_size=(640, 480)).analyze(bgr_to_batch(img))
    ref = insightface_app(pack, det_size=(640, 480)).get(img)
    assert_parity(ours.faces[0], ref)


def test_batch_equals_single_images(tmp_path, t1_bgr):
    pack = build_face_pack(str(tmp_path / "pack"), with_landmarks=False, with_genderage=False)
    an = load_analyzer(pack, "cpu", torch.float32)
    flipped = np.ascontiguousarray(t1_bgr[:, ::-1])
    both = an.analyze(bgr_to_batch(t1_bgr, flipped, t1_bgr), chunk=2)
    for i, img in enumerate((t1_bgr, flipped, t1_bgr)):
        single = an.analyze(bgr_to_batch(img)).faces[0]
        assert len(both.faces[i]) == len(single) > 0
        for a, b in zip(both.faces[i], single):
            assert a.image_index == i
            assert torch.allclose(a.bbox, b.bbox, atol=1e-3)
            assert cosine(a.embedding, b.embedding) > 0.99999


# ----------------------------------------------------------------------------- real fixture models

REAL = ["det_500m.onnx", "scrfd_2.5g_bnkps.onnx"]


def real_pack(tmp_path, detector, recognizer_name="recognizer.onnx"):
    """A pack of real fixture models. The recognizer is linked under a neutral name so insightface's
    defaults (RGB) apply — for parity; Visage's own name-based BGR fix is tested separately."""
    d = tmp_path / f"real_{detector}"
    d.mkdir()
    os.symlink(fixture_path("models", detector), d / detector)
    os.symlink(fixture_path("models", "mobileface_paddle_128d.onnx"), d / recognizer_name)
    return str(d)


@pytest.mark.fixtures
@pytest.mark.parametrize("detector", REAL)
def test_real_models_match_insightface_and_count_faces(tmp_path, t1_bgr, detector):
    pack = real_pack(tmp_path, detector)
    an = load_analyzer(pack, "cpu", torch.float32)
    ref_app = insightface_app(pack)
    friends = cv2.imread(fixture_path("images", "friends", "query", "friends1.jpg"))
    for img, expected in ((t1_bgr, 6), (friends, 6)):
        ours = an.analyze(bgr_to_batch(img))
        assert len(ours.faces[0]) == expected
        assert_parity(ours.faces[0], ref_app.get(img))
    lfw = fixture_path("images", "lfw")
    for name in sorted(os.listdir(lfw)):
        img = cv2.imread(os.path.join(lfw, name))
        assert an.analyze(bgr_to_batch(img)).count == 1, name
    no_face = cv2.imread(fixture_path("images", "misc", "no_face.png"))
    assert an.analyze(bgr_to_batch(no_face)).count == 0


def _pad(img, frac=0.25):
    h, w = img.shape[:2]
    py, px = int(h * frac), int(w * frac)
    return cv2.copyMakeBorder(img, py, py, px, px, cv2.BORDER_CONSTANT, value=0)


@pytest.mark.fixtures
def test_real_recognizer_tells_identities_apart(tmp_path):
    """With the recognizer's own conventions (BGR, known by file name), identities separate."""
    d = tmp_path / "pack"
    d.mkdir()
    os.symlink(fixture_path("models", "scrfd_2.5g_bnkps.onnx"), d / "scrfd_2.5g_bnkps.onnx")
    os.symlink(fixture_path("models", "mobileface_paddle_128d.onnx"), d / "mobileface_paddle_128d.onnx")
    an = load_analyzer(str(d), "cpu", torch.float32)
    assert an.routed["recognition"].bgr

    def emb(path):
        fs = an.analyze(bgr_to_batch(cv2.imread(path)))
        assert fs.count >= 1, path
        return max(fs.faces[0], key=lambda f: f.area).normed_embedding.numpy()

    lfw = fixture_path("images", "lfw")
    rob1, rob2 = emb(os.path.join(lfw, "Rob_Lowe_0001.jpg")), emb(os.path.join(lfw, "Rob_Lowe_0002.jpg"))
    nat = emb(os.path.join(lfw, "Nathalie_Baye_0002.jpg"))
    assert cosine(rob1, rob2) > 0.5
    assert cosine(rob1, nat) < 0.2 and cosine(rob2, nat) < 0.2

    gallery = fixture_path("images", "friends", "gallery")
    means = {}
    for person in sorted(os.listdir(gallery)):
        embs = []
        for f in sorted(os.listdir(os.path.join(gallery, person))):
            img = _pad(cv2.imread(os.path.join(gallery, person, f)))
            fs = an.analyze(bgr_to_batch(img))
            assert fs.count >= 1, f
            embs.append(max(fs.faces[0], key=lambda x: x.area).normed_embedding.numpy())
        m = np.mean(embs, 0)
        means[person] = m / np.linalg.norm(m)
    t1 = an.analyze(bgr_to_batch(cv2.imread(fixture_path("images", "insightface", "t1.jpg")))).faces[0]
    names = [
        max(means, key=lambda p: means[p] @ f.normed_embedding.numpy()) for f in sorted(t1, key=lambda f: f.center[0])
    ]
    assert names == ["Rachel", "Monica", "Ross", "Chandler", "Joey", "Phoebe"]


def test_onnxruntime_engine_matches_torch_engine(tmp_path, t1_bgr):
    pack = build_face_pack(str(tmp_path / "pack"), batched_detector=False)
    batch = bgr_to_batch(t1_bgr, t1_bgr[:, ::-1].copy())
    a = load_analyzer(pack, "cpu", torch.float32, engine="torch").analyze(batch)
    b = load_analyzer(pack, "cpu", torch.float32, engine="auto").analyze(batch)  # auto on CPU = onnxruntime
    assert a.counts() == b.counts() and a.count > 0
    for fa, fb in zip(a.flat(), b.flat()):
        assert torch.allclose(fa.bbox, fb.bbox, atol=1e-2)
        assert cosine(fa.embedding, fb.embedding) > 0.99999
        assert np.abs(fa.landmarks_2d_106.numpy() - fb.landmarks_2d_106.numpy()).max() < 0.05


def test_engine_choice_is_validated():
    from visage.core.errors import VisageError
    from visage.nodes.face.analyzer import pick_engine

    assert pick_engine("auto", torch.device("cpu")) == "onnxruntime"
    assert pick_engine("auto", torch.device("cuda")) == "torch"
    with pytest.raises(VisageError, match="CPU only"):
        pick_engine("onnxruntime", torch.device("cuda"))
    with pytest.raises(VisageError):
        pick_engine("tensorrt", torch.device("cpu"))

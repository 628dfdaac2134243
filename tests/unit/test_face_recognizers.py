"""Several recognizers from one analysis, against insightface + onnxruntime run with each recognizer
alone; Add Face Recognizer (no second detection) equal to the analysis; facexlib's IR-SE50 on the crop
InfiniteYou makes (insightface norm_crop of the BGR image, x/255*2-1)."""

import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from builders.face import build_face_pack, make_irse50, make_per_face
from conftest import fixture_path, insightface_image
from face_helpers import bgr_to_batch, cosine, insightface_app, match_reference

from visage.core.recognizers import pick_primary
from visage.core.types import FaceSet
from visage.nodes.face.analyzer import load_analyzer
from visage.nodes.face.recognizer import load_recognizer

RECOGNIZERS = {"w600k_r50": 11, "glintr100": 12, "arcface": 13}


def _pack(tmp_path, name, recognizers):
    d = str(tmp_path / name)
    build_face_pack(d, with_recognizer=False, with_landmarks=False, with_genderage=False)
    for rid in recognizers:
        make_per_face(
            os.path.join(d, rid + ".onnx"), 112, 512, in_name="input.1", out_name="683", seed=RECOGNIZERS[rid]
        )
    return d


@pytest.fixture(scope="module")
def t1_bgr():
    return cv2.imread(insightface_image("t1.jpg"))


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_every_recognizer_of_the_pack_runs_once_per_face(tmp_path, t1_bgr, engine):
    pack = _pack(tmp_path, "antelopev2", list(RECOGNIZERS))
    an = load_analyzer(pack, "cpu", torch.float32, engine=engine)
    assert an.encoder == "glintr100" and set(an.recognizers) == set(RECOGNIZERS)
    fs = an.analyze(bgr_to_batch(t1_bgr))
    faces = fs.faces[0]
    assert len(faces) > 0
    for f in faces:
        assert set(f.recognizers) == set(RECOGNIZERS) and f.recognizers[0] == "glintr100"
        torch.testing.assert_close(f.embedding, f.embeddings["glintr100"])  # the primary, as before
    # each embedding equals insightface's with that recognizer alone in the pack
    for rid in RECOGNIZERS:
        one = str(tmp_path / f"only_{rid}")
        os.makedirs(one)
        for fn in os.listdir(pack):
            if fn.endswith(".onnx") and (fn.startswith("det") or fn == rid + ".onnx"):
                shutil.copy(os.path.join(pack, fn), one)
        ref = insightface_app(one).get(t1_bgr)
        for f, r, ov in match_reference(list(faces), ref):
            assert ov >= 0.99
            assert cosine(f.embedding_for(rid).numpy(), r.embedding) >= 0.9999, rid
    # different recognizers give different embeddings (the test would not tell them apart otherwise)
    f = faces[0]
    assert cosine(f.embeddings["arcface"].numpy(), f.embeddings["w600k_r50"].numpy()) < 0.9


def test_primary_keeps_the_pack_recognizer():
    assert pick_primary(["arcface", "glintr100"]) == "glintr100"  # Arc2Face's file beside antelopev2's
    assert pick_primary(["arcface", "w600k_r50"]) == "w600k_r50"
    assert pick_primary(["mobileface_paddle_128d"]) == "mobileface_paddle_128d"


def test_add_face_recognizer_equals_the_analysis(tmp_path, t1_bgr):
    """Faces analysed without arcface.onnx, then Add Face Recognizer: the same embedding as when the pack
    held it, with no second detection (boxes and keypoints untouched)."""
    full = load_analyzer(_pack(tmp_path, "full", ["glintr100", "arcface"]), "cpu", torch.float32)
    part = load_analyzer(_pack(tmp_path, "part", ["glintr100"]), "cpu", torch.float32)
    img = bgr_to_batch(t1_bgr)
    want = full.analyze(img)
    got = part.analyze(img)
    assert all("arcface" not in f.recognizers for f in got.flat())
    rec = load_recognizer(str(tmp_path / "full" / "arcface.onnx"), "cpu", torch.float32, engine="torch")
    added = rec.add_to(img, got)
    for a, w in zip(added.flat(), want.flat()):
        torch.testing.assert_close(a.bbox, w.bbox)
        assert cosine(a.embedding_for("arcface").numpy(), w.embedding_for("arcface").numpy()) >= 0.9999
        assert a.encoder == "glintr100"  # the primary does not change
    # after on_no_face='skip' the kept faces follow their frames in the whole batch
    from visage.core.select import drop_images

    blank = torch.zeros_like(img)
    batch = torch.cat([blank, img])
    two = part.analyze(batch)
    kept = drop_images(two, [1])
    assert kept.source_indices == (1,) and kept.source_batch == 2
    via_whole = rec.add_to(batch, kept)
    via_kept = rec.add_to(img, kept)
    for a, b in zip(via_whole.flat(), via_kept.flat()):
        torch.testing.assert_close(a.embedding_for("arcface"), b.embedding_for("arcface"))
    with pytest.raises(Exception, match="not the one the faces were found in"):
        rec.add_to(torch.cat([batch, img]), kept)


def test_irse50_recognizer_on_infiniteyou_crop(tmp_path):
    """facexlib's IR-SE50 .pth through Add Face Recognizer: the embedding of the crop InfiniteYou makes."""
    from insightface.utils.face_align import norm_crop

    from visage.nodes.face.irse50 import load_irse50

    path = make_irse50(str(tmp_path / "facexlib" / "recognition_arcface_ir_se50.pth"), seed=3)
    bgr = cv2.imread(fixture_path("images", "lfw", "Rob_Lowe_0001.jpg"))
    an = load_analyzer(_pack(tmp_path, "p", ["glintr100"]), "cpu", torch.float32)
    img = bgr_to_batch(bgr)
    fs = an.analyze(img)
    face = max(fs.faces[0], key=lambda f: f.area)
    one = FaceSet(faces=((face,),), image_sizes=fs.image_sizes)
    rec = load_recognizer(path, "cpu", torch.float32)
    assert rec.id == "recognition_arcface_ir_se50"
    got = rec.add_to(img, one).flat()[0].embedding_for("recognition_arcface_ir_se50")
    crop = norm_crop(bgr, face.kps.numpy(), image_size=112)  # BGR, as InfiniteYou's pipeline
    x = torch.from_numpy(crop.astype(np.float32)).permute(2, 0, 1)[None] / 255.0 * 2 - 1
    with torch.inference_mode():
        ref = load_irse50(path)(x)[0]
    assert got.shape == (512,)
    assert cosine(got.numpy(), ref.numpy()) >= 0.9999

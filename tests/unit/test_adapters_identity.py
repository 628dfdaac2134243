"""Faces/embeddings -> identities, tokens, keypoint hints, Arc2Face token injection."""

import numpy as np
import pytest
import torch

from visage.core.errors import VisageError
from visage.core.types import Face, FaceEmbeds, FaceSet
from visage.nodes.adapters import identity as I
from visage.nodes.adapters.projection import MLPProjModel, Resampler


def _face(i=0, emb=True, x=20.0, encoder="glintr100", extra=()):
    kps = torch.tensor([[x, 30], [x + 20, 30], [x + 10, 40], [x + 2, 50], [x + 18, 50]], dtype=torch.float32)
    e = torch.randn(512) * 10 if emb else None
    embs = {encoder: e} if emb else {}
    embs.update({r: torch.randn(512) * 10 for r in extra})
    return Face(
        image_index=i,
        bbox=torch.tensor([x - 5, 20, x + 25, 60.0]),
        score=0.9,
        kps=kps,
        embedding=e,
        normed_embedding=None if e is None else e / e.norm(),
        encoder=encoder if emb else None,
        embeddings=embs,
    )


def test_identity_embeddings_raw_normed_and_order():
    f1, f2 = _face(x=10), _face(x=60)
    fs = FaceSet(faces=((f1, f2),), image_sizes=((100, 100),))
    raw = I.identity_embeddings("instantid", fs, None)  # InstantID: raw glintr100
    torch.testing.assert_close(raw, torch.stack([f1.embedding, f2.embedding]))
    g1, g2 = _face(x=10, encoder="w600k_r50"), _face(x=60, encoder="w600k_r50")
    nrm = I.identity_embeddings("faceid", FaceSet(faces=((g1, g2),), image_sizes=((100, 100),)), None)
    torch.testing.assert_close(nrm.norm(dim=-1), torch.ones(2))  # FaceID: normalised w600k_r50
    torch.testing.assert_close(nrm[0], g1.embedding / g1.embedding.norm())
    emb = FaceEmbeds.from_raw(torch.randn(3, 512) * 4, "glintr100")
    torch.testing.assert_close(I.identity_embeddings("instantid", fs, emb), emb.raw)  # embeds win


def test_each_method_takes_its_own_recognizer_from_one_face():
    """One analysed face carrying three recognizers: each method gets the embedding it was trained on."""
    f = _face(encoder="glintr100", extra=("w600k_r50", "arcface"))
    fs = FaceSet(faces=((f,),), image_sizes=((100, 100),))
    torch.testing.assert_close(I.identity_embeddings("instantid", fs, None)[0], f.embeddings["glintr100"])
    for method, rid in (("faceid", "w600k_r50"), ("arc2face", "arcface")):
        e = f.embeddings[rid]
        torch.testing.assert_close(I.identity_embeddings(method, fs, None)[0], e / e.norm())
    # fused embeds keep every recognizer: the same holds through Face Embeds
    from visage.core.select import embeds_from_faces

    two = FaceSet(faces=((f, _face(encoder="glintr100", extra=("w600k_r50", "arcface"))),), image_sizes=((1, 1),))
    fused = embeds_from_faces(two, "norm_mean")
    assert set(fused.recognizers) == {"glintr100", "w600k_r50", "arcface"}
    a = I.identity_embeddings("arc2face", None, fused)
    b = I.identity_embeddings("faceid", None, fused)
    assert a.shape == b.shape == (1, 512) and (a - b).abs().max() > 1e-3


def test_wrong_recognizer_stops_naming_file_and_folder():
    fs = FaceSet(faces=((_face(encoder="glintr100"),),), image_sizes=((100, 100),), analyzer="antelopev2")
    with pytest.raises(VisageError) as e:
        I.identity_embeddings("arc2face", fs, None)
    msg = str(e.value)
    assert "arcface.onnx" in msg and "insightface/models/antelopev2" in msg and "glintr100" in msg
    with pytest.raises(VisageError) as e:
        I.identity_embeddings("faceid", fs, None)
    assert "w600k_r50.onnx" in str(e.value) and "insightface/models/buffalo_l" in str(e.value)
    # saved embeds record their recognizer: the same rule applies to them
    emb = FaceEmbeds.from_raw(torch.randn(1, 512), "w600k_r50")
    with pytest.raises(VisageError, match="InstantID needs glintr100"):
        I.identity_embeddings("instantid", None, emb)


def test_override_uses_another_recognizer_with_a_warning(caplog):
    f = _face(encoder="glintr100")
    fs = FaceSet(faces=((f,),), image_sizes=((100, 100),))
    with caplog.at_level("WARNING", logger="visage"):
        e = I.identity_embeddings("arc2face", fs, None, override="glintr100")
    torch.testing.assert_close(e[0], f.embedding / f.embedding.norm())
    assert any("recognizer override" in r.message for r in caplog.records)
    with pytest.raises(VisageError, match="needs w600k_r50"):
        I.identity_embeddings("arc2face", fs, None, override="w600k_r50")  # not on the faces: still an error


def test_identity_errors():
    empty = FaceSet(faces=((),), image_sizes=((64, 64),))
    with pytest.raises(VisageError, match="has no face"):
        I.identity_embeddings("faceid", empty, None)
    noemb = FaceSet(faces=((_face(emb=False),),), image_sizes=((64, 64),))
    with pytest.raises(VisageError, match="no embedding"):
        I.identity_embeddings("faceid", noemb, None)
    with pytest.raises(VisageError, match="No IP-Adapter FaceID identity"):
        I.identity_embeddings("faceid", None, None)
    with pytest.raises(VisageError, match="128-d"):
        I.identity_embeddings("faceid", None, FaceEmbeds.from_raw(torch.randn(1, 128), "w600k_r50"))


def test_instantid_tokens_negative_zero_or_seeded_noise():
    rs = Resampler(dim=64, depth=1, heads=2, num_queries=16, embedding_dim=512, output_dim=96).eval()
    emb = torch.randn(2, 512) * 10
    cond, unc0 = I.instantid_tokens(rs, emb, noise=0.0)
    with torch.no_grad():
        torch.testing.assert_close(cond, rs(emb.unsqueeze(1)))
        torch.testing.assert_close(unc0, rs(torch.zeros(2, 1, 512)))
    _, unc_a = I.instantid_tokens(rs, emb, noise=0.35)
    _, unc_b = I.instantid_tokens(rs, emb, noise=0.35)
    torch.testing.assert_close(unc_a, unc_b)  # deterministic
    assert (unc_a - unc0).abs().max() > 1e-4  # and really noise, not zeros
    assert (unc_a[0] - unc_a[1]).abs().max() > 1e-4  # seeded per identity


def test_faceid_tokens_uncond_is_zero_input():
    m = MLPProjModel(768, 512, 4).eval()
    emb = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    cond, unc = I.faceid_tokens(m, "faceid", emb)
    with torch.no_grad():
        torch.testing.assert_close(unc, m(torch.zeros(2, 512)))
    assert cond.shape == (2, 4, 768)
    # Portrait: 4 faces, 2 per identity -> 2 identities of 32 tokens
    p = MLPProjModel(768, 512, 16).eval()
    e4 = torch.randn(4, 512)
    c, u = I.faceid_tokens(p, "faceid_portrait", e4, portrait_groups=[2, 2])
    assert c.shape == (2, 32, 768)
    with torch.no_grad():
        torch.testing.assert_close(c[1], torch.cat([p(e4[2:3])[0], p(e4[3:4])[0]]))
    with pytest.raises(VisageError, match="CLIP"):
        I.faceid_tokens(m, "faceid_plus", emb)


def test_keypoint_hints_per_identity_and_combined():
    k1 = np.array([[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]], np.float32)
    k2 = k1 + np.array([50, 0], np.float32)
    both = I.keypoint_hints([k1, k2], (64, 100), per_identity=False)
    per = I.keypoint_hints([k1, k2], (64, 100), per_identity=True)
    assert both.shape == (1, 64, 100, 3) and per.shape == (2, 64, 100, 3)
    # identity 0's hint has nothing on the right half, identity 1's nothing on the left
    assert per[0, :, 60:].max() == 0 and per[0, :, :45].max() > 0
    assert per[1, :, :45].max() == 0 and per[1, :, 60:].max() > 0
    torch.testing.assert_close(both[0], torch.maximum(per[0], per[1]))
    # InstantID colours: left eye red, right eye green, nose blue
    assert torch.allclose(per[0, 20, 10], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(per[0, 20, 30], torch.tensor([0, 1.0, 0]))
    assert torch.allclose(per[0, 30, 20], torch.tensor([0, 0, 1.0]))


def test_arc2face_tokens():
    rows = [[(49406, 1.0), (1125, 1.0), (539, 1.0), (320, 1.0), (1192, 1.0), (2533, 1.0)] + [(49407, 1.0)] * 71]
    e = torch.randn(512) * 20
    out = I.arc2face_tokens(rows, 1192, e, 768)
    t = out[0][4][0]
    assert torch.is_tensor(t) and t.shape == (768,)
    torch.testing.assert_close(t[:512], e / e.norm())
    assert t[512:].abs().max() == 0
    assert [x for i, x in enumerate(out[0]) if i != 4] == [x for i, x in enumerate(rows[0]) if i != 4]
    with pytest.raises(VisageError, match="placeholder"):
        I.arc2face_tokens([[(49406, 1.0), (49407, 1.0)]], 1192, e, 768)


def test_faceid_plus_crops_match_insightface_norm_crop():
    import cv2
    from insightface.utils import face_align

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (180, 240, 3), dtype=np.uint8), (7, 7), 0)
    kps = np.array([[90, 80], [140, 78], [115, 105], [95, 130], [138, 128]], np.float32)
    f = _face(x=0).with_(kps=torch.from_numpy(kps))
    fs = FaceSet(faces=((f,),), image_sizes=((180, 240),))
    ours = I.faceid_plus_crops(torch.from_numpy(img).float().unsqueeze(0) / 255.0, fs)
    ref = face_align.norm_crop(img, landmark=kps, image_size=224).astype(np.float32) / 255.0
    assert ours.shape == (1, 224, 224, 3)
    diff = ours[0].numpy() - ref
    assert np.abs(diff).mean() < 2e-3 and np.abs(diff).max() < 0.02

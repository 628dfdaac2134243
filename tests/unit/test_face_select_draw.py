"""Face ordering/selection, identity fusion, embeddings files, previews, masks, keypoint images."""

import pytest
import torch

from visage.core.errors import ModelFileInvalid, VisageError
from visage.core.select import drop_images, embeds_from_faces, fuse, select
from visage.core.types import Face, FaceEmbeds, FaceSet
from visage.nodes.face.draw import KPS_COLORS, face_mask, keypoints_image, preview
from visage.nodes.face.embeds_io import load_embeds, save_embeds


def face(i, x, y, w, score=0.9, gender="F", emb=None, idx=0):
    kps = torch.tensor(
        [
            [x + 0.3 * w, y + 0.4 * w],
            [x + 0.7 * w, y + 0.4 * w],
            [x + 0.5 * w, y + 0.6 * w],
            [x + 0.35 * w, y + 0.8 * w],
            [x + 0.65 * w, y + 0.8 * w],
        ]
    )
    e = emb if emb is not None else torch.randn(8, generator=torch.Generator().manual_seed(idx))
    return Face(
        image_index=i,
        bbox=torch.tensor([x, y, x + w, y + w], dtype=torch.float32),
        score=score,
        kps=kps,
        gender=gender,
        age=30,
        embedding=e * 20,
        normed_embedding=e / e.norm(),
        encoder="enc",
    )


@pytest.fixture
def fs():
    a = face(0, 10, 10, 40, score=0.8, idx=1)
    b = face(0, 100, 20, 80, score=0.95, gender="M", idx=2)
    c = face(0, 60, 90, 20, score=0.6, idx=3)
    return FaceSet(faces=((a, b, c), ()), image_sizes=((200, 220), (200, 220)))


def test_orders_and_picks(fs):
    sel, ordered = select(fs, order="largest")
    assert [f.width for f in ordered[0]] == [80, 40, 20] and sel.count == 3 and ordered[1] == []
    sel, ordered = select(fs, order="left_to_right", face_index=1)
    assert sel.faces[0][0].bbox[0] == 60 and sel.faces[1] == ()
    sel, _ = select(fs, order="score", max_faces=2)
    assert [f.score for f in sel.faces[0]] == [0.95, 0.8]
    sel, _ = select(fs, order="top_to_bottom", gender="male")
    assert sel.count == 1 and sel.faces[0][0].gender == "M"
    sel, _ = select(fs, min_score=0.7, face_index=5)
    assert sel.count == 0
    ref = FaceEmbeds.from_raw(fs.faces[0][2].embedding[None], "enc")
    sel, ordered = select(fs, order="most_similar", face_index=0, reference=ref)
    assert sel.faces[0][0] is fs.faces[0][2]
    with pytest.raises(VisageError, match="reference"):
        select(fs, order="most_similar")
    with pytest.raises(VisageError, match="another recognizer"):
        select(fs, order="most_similar", reference=FaceEmbeds.from_raw(torch.randn(1, 4), "other"))


def test_drop_images_reindexes(fs):
    out = drop_images(fs, [0])
    assert out.batch_size == 1 and all(f.image_index == 0 for f in out.flat())


def test_fusion_methods():
    base = torch.randn(64)
    close = torch.stack([base + 0.1 * torch.randn(64) for _ in range(5)])
    outlier = torch.randn(1, 64) * 3
    raw = torch.cat([close, outlier]) * 15
    e_mean = fuse(raw, "enc", "norm_mean")
    e_rej = fuse(raw, "enc", "outlier_rejection", 0.5)
    assert e_rej.sources == (5,) and e_mean.sources == (6,)
    cos = lambda a, b: float(a @ b / a.norm() / b.norm())
    assert cos(e_rej.normed[0], base) > cos(e_mean.normed[0], base)
    assert abs(float(e_mean.raw[0].norm()) - float(raw.norm(dim=1).mean())) < 1e-3
    assert torch.allclose(fuse(raw, "enc", "mean").raw[0], raw.mean(0), atol=1e-5)
    med = fuse(raw, "enc", "median")
    assert med.count == 1 and abs(float(med.normed.norm()) - 1) < 1e-5
    assert fuse(raw, "enc", "none").count == 6
    with pytest.raises(VisageError):
        fuse(raw, "enc", "bogus")


def test_embeds_from_faces_errors(fs):
    assert embeds_from_faces(fs).count == 1
    with pytest.raises(VisageError, match="No face"):
        embeds_from_faces(FaceSet(faces=((),), image_sizes=((10, 10),)))
    nof = FaceSet(faces=((fs.faces[0][0].with_(embedding=None),),), image_sizes=((10, 10),))
    with pytest.raises(VisageError, match="no embeddings"):
        embeds_from_faces(nof)


def test_embeds_roundtrip_and_wrong_file(tmp_path):
    e = fuse(torch.randn(3, 16), "glintr100", "none")
    p = save_embeds(e, str(tmp_path / "x.safetensors"))
    back = load_embeds(p)
    assert torch.equal(back.raw, e.raw) and torch.equal(back.normed, e.normed)
    assert (back.encoder, back.dim, back.fusion, back.sources) == ("glintr100", 16, "none", (1, 1, 1))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelFileInvalid, match="not a Visage embeddings file"):
        load_embeds(str(tmp_path / "other.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelFileInvalid):
        load_embeds(str(tmp_path / "junk.safetensors"))


def test_masks(fs):
    box = face_mask(fs, "box")
    assert box.shape == (2, 200, 220) and box[1].sum() == 0
    area = float(box[0].sum())
    assert abs(area - (41 * 41 + 81 * 81 + 21 * 21)) < 50
    ell = face_mask(fs, "ellipse")
    assert float(ell[0].sum()) < area * 0.85
    hull = face_mask(fs, "hull")
    assert 0 < float(hull[0].sum()) <= area
    grown = face_mask(fs, "box", grow=5)
    shrunk = face_mask(fs, "box", grow=-5)
    assert float(grown.sum()) > area > float(shrunk.sum())
    soft = face_mask(fs, "box", feather=6)
    vals = soft[0][(soft[0] > 0.01) & (soft[0] < 0.99)]
    assert vals.numel() > 100 and float(soft.max()) <= 1.0


def test_keypoints_image_and_preview(fs):
    k = keypoints_image(fs)
    assert k.shape == (2, 200, 220, 3) and float(k[1].sum()) == 0
    f = fs.faces[0][1]
    for j, (x, y) in enumerate(f.kps.numpy()):
        px = (k[0, int(y), int(x)] * 255).round().tolist()
        assert px == list(KPS_COLORS[j]), (j, px)
    img = torch.rand(2, 200, 220, 3)
    sel, ordered = select(fs, face_index=0)
    p = preview(img, ordered, sel)
    diff = (p - img).abs().sum(-1) > 0.02
    assert diff[0].any() and not diff[1].any()
    # pixels far from any box are untouched
    assert not diff[0, 190:, :5].any()

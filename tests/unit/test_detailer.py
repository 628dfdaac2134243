"""Face detailer maths (nodes/detailer): crop/paste geometry with an identity stand-in for VAE and sampler,
small faces skipped with a reason, the verify-and-retry loop, cancel between faces and attempts."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visage.core.errors import VisageError
from visage.core.types import Face
from visage.nodes.detailer.detail import Settings, detail, seed_for
from visage.nodes.detailer.geometry import FFHQ_512, context_matrix, crop_with_context, matrix_scale, plan_crop
from visage.nodes.face.align import invert_affine, transform_points

TOL = 3.0 / 255.0


def smooth_image(h, w, seed=0):
    """A photo-like smooth image: random colours low-pass filtered (features of ~8 px)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h // 8 + 2, w // 8 + 2, generator=g)
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return x[0].permute(1, 2, 0).contiguous()


def make_face(center, eye_dist, roll_deg, index=0):
    """A face whose 5 keypoints follow the FFHQ template, rotated by ``roll_deg`` about ``center``."""
    t = FFHQ_512.astype(np.float64)
    t = (t - t[:2].mean(0)) * (eye_dist / (t[1, 0] - t[0, 0]))
    a = math.radians(roll_deg)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    kps = t @ r.T + np.asarray(center, np.float64)
    half = eye_dist * 1.2
    bbox = torch.tensor([center[0] - half, center[1] - half, center[0] + half, center[1] + half * 1.3])
    return Face(image_index=index, bbox=bbox, score=0.9, kps=torch.from_numpy(kps).float())


def identity_sample(crop, mask, job, seed):
    return crop.clone()


CASES = {
    "upright": ((160.0, 130.0), 40.0, 0.0),
    "rotated_35": ((150.0, 140.0), 44.0, 35.0),
    "rotated_-120": ((170.0, 120.0), 36.0, -120.0),
    "at_left_top_border": ((18.0, 14.0), 40.0, 20.0),
    "at_right_bottom_border": ((310.0, 236.0), 46.0, -15.0),
}


ROUND_TRIPS = [(c, 512, False) for c in sorted(CASES)] + [
    ("rotated_35", 1024, False),
    ("at_right_bottom_border", 1024, False),
    ("upright", 512, True),
    ("at_left_top_border", 512, True),
]


@pytest.mark.parametrize("case,size,color", ROUND_TRIPS)
def test_identity_round_trip(case, size, color):
    """With VAE and sampler replaced by the identity, the detailed image equals the input within 3/255
    inside the pasted mask (two bicubic resamplings) and exactly outside it. The faces (36-46 px between
    the eyes) are magnified 2.7-3.5x at 512 (what a detailer does: the working resolution is larger than
    the face); the real photo: test_identity_round_trip_real_photo."""
    img = smooth_image(256, 320, seed=sorted(CASES).index(case)).unsqueeze(0)
    center, eye, roll = CASES[case]
    face = make_face(center, eye, roll)
    st = Settings(size=size, context=1.0, max_upscale=64, color_transfer=color)
    out, rows = detail(img, [[face]], [[None]], identity_sample, st)
    assert rows[0]["status"] == "detailed", rows
    diff = (out - img).abs().amax(-1)[0]
    # where the paste weight is 0 the frame is untouched, bit for bit; the weight covers the face
    from visage.nodes.detailer.geometry import noise_mask
    from visage.nodes.paste import feather_masks, paste_masks

    plan = plan_crop(face, size, 1.0, 64)
    nm = noise_mask(face, plan.matrix, size)
    w = feather_masks(1, size, nm, erode_frac=0.05, blur_frac=0.05)
    cover = paste_masks(img.shape, torch.from_numpy(plan.matrix)[None], w, torch.zeros(1, dtype=torch.long))[0]
    assert cover.max() > 0.99, "the mask does not cover the face"
    inside, outside = cover > 0, cover == 0
    assert outside.any() and inside.sum() > 200
    assert torch.equal(out[0][outside], img[0][outside])
    assert float(diff[inside].max()) <= TOL, f"max error inside the mask {float(diff[inside].max()) * 255:.2f}/255"
    # and it really did a round trip: the identity sampler saw the face, rotated upright
    kps_crop = transform_points(face.kps.numpy(), plan.matrix)
    assert abs(kps_crop[1, 1] - kps_crop[0, 1]) < 1e-3 * size  # eyes level in the crop: rotation undone


# The six faces of the real photo t1.jpg (1280x886): bbox and 5 keypoints as det_500m finds them (the
# fixture detector; fixed here so the geometry test needs no detector run).
T1_FACES = [
    ([55.6, 260.8, 168.6, 397.9], [[82.8, 328.1], [124.4, 302.6], [117.9, 335.1], [114.3, 369.7], [148.9, 347.7]]),
    ([270.0, 144.9, 371.9, 270.3], [[285.4, 206.1], [318.3, 190.0], [302.7, 223.9], [311.3, 244.7], [339.7, 230.5]]),
    ([463.5, 266.5, 572.7, 415.4], [[495.6, 321.6], [545.6, 335.6], [513.6, 361.8], [484.5, 368.0], [530.7, 380.2]]),
    ([745.3, 342.2, 847.3, 480.1], [[761.1, 400.1], [803.8, 399.8], [774.6, 429.0], [767.2, 444.4], [805.0, 443.5]]),
    ([906.0, 59.5, 1011.1, 206.3], [[916.7, 118.8], [948.1, 115.6], [920.3, 150.9], [935.2, 169.9], [961.6, 166.1]]),
    (
        [1130.3, 272.8, 1227.3, 400.6],
        [[1149.3, 324.8], [1194.5, 319.8], [1170.6, 344.2], [1156.5, 366.9], [1197.2, 362.7]],
    ),
]


def _t1():
    import cv2
    from conftest import fixture_path

    bgr = cv2.imread(fixture_path("images", "insightface", "t1.jpg"))
    img = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).float().div(255.0).unsqueeze(0)
    faces = [Face(image_index=0, bbox=torch.tensor(b), score=0.9, kps=torch.tensor(k)) for b, k in T1_FACES]
    return img, faces


def _coverage(img, faces, size, feather=0.05):
    """Frame pixels any face's paste weight reaches (the bilinear support of the feathered mask)."""
    from visage.nodes.detailer.geometry import noise_mask
    from visage.nodes.paste import feather_masks, paste_masks

    cover = torch.zeros(img.shape[1:3])
    for f in faces:
        plan = plan_crop(f, size, 1.0, 64)
        w = feather_masks(1, size, noise_mask(f, plan.matrix, size), erode_frac=feather, blur_frac=feather)
        cover = torch.maximum(
            cover, paste_masks(img.shape, torch.from_numpy(plan.matrix)[None], w, torch.zeros(1, dtype=torch.long))[0]
        )
    return cover


@pytest.mark.fixtures
@pytest.mark.parametrize("size", [512, 1024])
def test_identity_round_trip_real_photo(size):
    """The same bound on a real photo (sharp edges, hair, JPEG texture), six faces magnified 2.5-3x at 512:
    within 3/255 inside the mask (bicubic both ways; bilinear both ways gave 14/255), exact outside."""
    img, faces = _t1()
    out, rows = detail(img, [faces], [[None] * 6], identity_sample, Settings(size=size, max_upscale=64))
    assert [r["status"] for r in rows] == ["detailed"] * 6
    cover = _coverage(img, faces, size)
    inside, outside = cover > 0, cover == 0
    assert inside.sum() > 6 * 2000 and outside.any()
    assert torch.equal(out[0][outside], img[0][outside])
    err = float((out - img).abs().amax(-1)[0][inside].max())
    assert err <= TOL, f"max error inside the mask {err * 255:.2f}/255"


@pytest.mark.fixtures
def test_residual_paste_real_photo():
    """paste_mode = residual pastes only the change: the identity sampler returns the photo bit for bit, and a
    sampler that brightens the crop by 0.1 brightens the photo by 0.1 x the paste weight, where the mask is."""
    img, faces = _t1()
    face = faces[2]
    st = Settings(size=512, max_upscale=64, paste_mode="residual")
    out, _ = detail(img, [[face]], [[None]], identity_sample, st)
    assert torch.equal(out, img)
    lifted, _ = detail(img, [[face]], [[None]], lambda c, m, j, s: (c + 0.1).clamp(0, 1), st)
    cover = _coverage(img, [face], 512)
    d = (lifted - img)[0].mean(-1)
    core = (cover > 0.99) & (img[0].amax(-1) < 0.85)  # full weight, not clipped at white
    assert core.sum() > 2000
    assert float((d[core] - 0.1).abs().max()) < 2e-3  # where the weight is full: the change, whole
    assert torch.equal(lifted[0][cover == 0], img[0][cover == 0])
    # the weight fades out: half-way pixels got part of the change
    edge = (cover > 0.2) & (cover < 0.8) & (img[0].amax(-1) < 0.85)
    assert edge.any() and float((d[edge] - 0.1 * cover[edge]).abs().max()) < 0.02


def test_full_paste_places_the_crop():
    """paste_mode = full puts the sampler's crop where the face is: a sampler that paints the crop one colour
    gives frame * (1 - w) + colour * w, w the warped paste weight."""
    img = smooth_image(256, 320, seed=3).unsqueeze(0)
    face = make_face((150.0, 140.0), 44.0, 35.0)
    red = torch.tensor([1.0, 0.0, 0.0])
    out, _ = detail(img, [[face]], [[None]], lambda c, m, j, s: red.expand_as(c).clone(), Settings(max_upscale=64))
    w = _coverage(img, [face], 512)
    want = img[0] * (1 - w[..., None]) + red * w[..., None]
    assert float((out[0] - want).abs().max()) < 0.01
    assert float(w.max()) > 0.99 and torch.equal(out[0][w == 0], img[0][w == 0])


def test_paste_mode_validated():
    with pytest.raises(VisageError):
        detail(
            smooth_image(64, 64)[None],
            [[make_face((32.0, 32.0), 16.0, 0.0)]],
            [[None]],
            identity_sample,
            Settings(size=128, max_upscale=64, paste_mode="bogus"),
        )


def test_border_crop_replicates_edge():
    """Beyond the image the crop holds the image's edge pixels (not black)."""
    img = torch.zeros(64, 80, 3)
    img[:, :, 0] = 0.8
    img[:, :, 1] = torch.linspace(0.1, 0.9, 80)
    face = make_face((4.0, 4.0), 12.0, 30.0)
    m = context_matrix(face.kps, 128, 1.5)
    crop = crop_with_context(img, m, 128)
    assert crop.shape == (1, 128, 128, 3)
    assert float(crop[..., 0].min()) > 0.79 and float(crop[..., 0].max()) < 0.81
    # a pixel whose preimage is well outside the image takes the nearest edge colour
    inv = invert_affine(m)
    p = np.array([0.0, 0.0]) @ inv[:, :2].T + inv[:, 2]
    assert p[0] < 0 or p[1] < 0
    nx = min(max(p[0], 0), 79)
    assert abs(float(crop[0, 0, 0, 1]) - (0.1 + 0.8 * nx / 79)) < 0.02


def test_context_and_scale():
    face = make_face((100.0, 100.0), 40.0, 0.0)
    s1 = matrix_scale(context_matrix(face.kps, 512, 1.0))
    s2 = matrix_scale(context_matrix(face.kps, 512, 2.0))
    assert s1 == pytest.approx((318.90277 - 192.98138) / 40.0, rel=1e-4)
    assert s2 == pytest.approx(s1 / 2, rel=1e-4)


def test_small_face_skipped_with_reason():
    img = smooth_image(128, 128).unsqueeze(0)
    small = make_face((40.0, 40.0), 6.0, 0.0)  # 6 px between the eyes: x21 at 512
    big = make_face((90.0, 80.0), 30.0, 0.0)
    calls = []

    def sample(crop, mask, job, seed):
        calls.append(job.face_index)
        return crop * 0.5

    out, rows = detail(img, [[small, big]], [[None, None]], sample, Settings(size=512, max_upscale=8))
    assert rows[0]["status"] == "skipped" and "too small" in rows[0]["reason"] and "512" in rows[0]["reason"]
    assert rows[1]["status"] == "detailed"
    assert calls == [1]
    assert not torch.equal(out, img)


def test_bad_working_resolution():
    with pytest.raises(VisageError, match="working resolution"):
        detail(torch.zeros(1, 64, 64, 3), [[]], [[]], identity_sample, Settings(size=100))


def _scored_loop(attempt_scores, min_similarity, input_score=0.3, attempts=None):
    """The loop with a sampler that writes the attempt number into the crop and a score that reads it
    back from the frame (at the face), so what the table says can be checked against the pixels."""
    img = torch.full((1, 128, 128, 3), 0.5)
    face = make_face((64.0, 60.0), 24.0, 0.0)
    seeds = []

    def sample(crop, mask, job, seed):
        seeds.append(seed)
        a = seed - 100 + 1
        return torch.full_like(crop, a / 100.0)

    def score(frame, job):
        v = float(frame[0, 62, 64, 0])  # the face centre
        if abs(v - 0.5) < 1e-6:
            return input_score
        a = int(round(v * 100))
        return attempt_scores[a - 1]

    out, rows = detail(
        img,
        [[face]],
        [[0]],
        sample,
        Settings(size=128, seed=100, attempts=attempts or len(attempt_scores), min_similarity=min_similarity),
        score=score,
    )
    return out, rows[0], seeds, score


def test_retry_keeps_the_best_attempt():
    out, row, seeds, score = _scored_loop([0.2, 0.6, 0.4], min_similarity=0.9)
    assert seeds == [100, 101, 102]  # deterministic: seed + attempt - 1
    assert [a["score"] for a in row["attempts"]] == [0.2, 0.6, 0.4]
    assert row["winner"] == 2 and row["score"] == 0.6 and row["status"] == "detailed" and row["passed"] is False
    assert score(out, None) == 0.6  # the image holds the winner


def test_retry_stops_when_passing():
    out, row, seeds, _ = _scored_loop([0.2, 0.7, 0.9], min_similarity=0.5)
    assert seeds == [100, 101] and row["winner"] == 2 and row["passed"] is True


def test_input_is_a_candidate():
    out, row, seeds, _ = _scored_loop([0.1, 0.2], min_similarity=0.9, input_score=0.35)
    assert row["winner"] == 0 and row["status"] == "kept_input" and row["score"] == 0.35
    assert torch.equal(out, torch.full((1, 128, 128, 3), 0.5))  # the input face untouched


class Cancelled(Exception):
    pass


def test_cancel_between_faces_and_attempts():
    img = smooth_image(128, 160).unsqueeze(0)
    faces = [[make_face((40.0, 60.0), 20.0, 0.0), make_face((120.0, 60.0), 20.0, 0.0)]]
    sampled = []

    def sample(crop, mask, job, seed):
        sampled.append((job.face_index, seed))
        return crop

    for stop_after, expect in ((1, [(0, 0)]), (2, [(0, 0), (0, 1)])):
        sampled.clear()
        calls = [0]

        def progress(done, total, calls=calls, stop_after=stop_after):
            calls[0] += 1
            if calls[0] > stop_after:
                raise Cancelled()

        with pytest.raises(Cancelled):
            detail(
                img,
                faces,
                [[0, 0]],
                sample,
                Settings(size=128, attempts=3, min_similarity=2.0),
                score=lambda fr, job: 0.0,
                progress=progress,
            )
        assert sampled == expect


def test_seed_wraps():
    assert seed_for(2**64 - 1, 2) == 0


# ----------------------------------------------------------------------------- identity mapping, verify
def _with_emb(face, vec, rid="rec"):
    v = torch.tensor(vec, dtype=torch.float32)
    return face.with_embedding(rid, v)


def test_map_identities_index_and_most_similar():
    from visage.core.types import FaceEmbeds
    from visage.nodes.detailer.identity import map_identities

    ref = FaceEmbeds.from_raw(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), "rec")
    fs = [
        _with_emb(make_face((30.0 * k + 20, 40.0), 10.0, 0.0), v)
        for k, v in enumerate(([0, 1, 0], [1, 0.1, 0], [0, 0.9, 0.1]))
    ]
    ids, skip = map_identities([fs], ref, "index")
    assert ids == [[0, 1, None]] and skip[0][:2] == [None, None] and "2 row(s)" in skip[0][2]
    ids, skip = map_identities([fs], ref, "most_similar")
    assert ids == [[1, 0, 1]] and skip == [[None, None, None]]
    one = FaceEmbeds.from_raw(torch.tensor([[1.0, 0.0, 0.0]]), "rec")
    assert map_identities([fs], one, "index")[0] == [[0, 0, 0]]
    assert map_identities([fs], None, "index")[0] == [[None, None, None]]


def test_unknown_adapter_kind_refused():
    from visage.nodes.detailer.identity import hook_for

    with pytest.raises(VisageError, match="per face"):
        hook_for(object())


class _FakeRecognizer:
    """Embeds a face as the mean colour of a 9x9 patch at its nose keypoint (enough to tell crops apart)."""

    id = "rec"

    def embed_crops(self, img_u8, kpss, owners):
        out = []
        for k, o in zip(kpss, owners.tolist()):
            x, y = int(round(k[2, 0])), int(round(k[2, 1]))
            patch = img_u8[o, max(y - 4, 0) : y + 5, max(x - 4, 0) : x + 5].float().mean((0, 1))
            out.append(torch.cat([patch, torch.ones(1) * 10]).numpy())
        return np.stack(out)


def test_verify_redetected_or_known_position():
    from visage.core.types import FaceEmbeds
    from visage.nodes.detailer.verify import overlay, verify

    img = torch.zeros(1, 96, 128, 3)
    img[0, :, :64, 0] = 1.0  # left half red, right half green
    img[0, :, 64:, 1] = 1.0
    left, right = make_face((32.0, 48.0), 14.0, 0.0), make_face((96.0, 48.0), 14.0, 0.0)
    ref = FaceEmbeds.from_raw(torch.tensor([[255.0, 0.0, 0.0, 10.0], [0.0, 255.0, 0.0, 10.0]]), "rec")
    rec = _FakeRecognizer()
    rows = verify(img, [[left, right]], [[0, 1]], rec, ref, 0.9)
    assert [r["located"] for r in rows] == ["known_position"] * 2
    assert all(r["passed"] and r["score"] > 0.99 for r in rows)
    # re-detected: the detector found the right face moved a little; the left one is not found again
    moved = make_face((99.0, 50.0), 14.0, 0.0)
    rows = verify(img, [[left, right]], [[1, 1]], rec, ref, 0.9, detected=[[moved]])
    assert [r["located"] for r in rows] == ["known_position", "redetected"]
    assert (
        rows[0]["passed"] is False
        and rows[1]["passed"] is True
        and rows[1]["bbox"][0] == pytest.approx(float(moved.bbox[0]), abs=0.1)
    )
    ov = overlay(img, rows, 0.9)
    assert ov.shape == img.shape and not torch.equal(ov, img)
    with pytest.raises(VisageError, match="carry no other"):
        verify(img, [[left]], [[0]], type("R", (), {"id": "other"})(), ref, 0.5)


@pytest.mark.parametrize("kind", ["pulid_sdxl_v1", "pulid_sdxl_v1_1", "pulid_flux"])
def test_pulid_hooks_take_the_face_s_own_reference(monkeypatch, kind):
    """PuLID is applied per face from reference face j (and the frame it is in), not from the whole set."""
    from types import SimpleNamespace

    from visage.core.types import FaceSet
    from visage.nodes.detailer import identity as I
    from visage.nodes.pulid import flux_apply, sdxl_apply

    seen = []

    def fake(model, pulid, eva, parser, faces, frame, weight, start, end, **kw):
        seen.append((faces, frame, weight))
        return ("patched", model)

    monkeypatch.setattr(sdxl_apply, "apply_pulid_sdxl", fake)
    monkeypatch.setattr(flux_apply, "apply_pulid_flux", fake)
    f = [make_face((40.0 + 30 * i, 40.0), 16.0, 0.0, index=i // 2) for i in range(3)]
    ref_faces = FaceSet(((f[0], f[1]), (f[2],)), ((96, 128), (96, 128)))
    ref_image = torch.stack([torch.full((96, 128, 3), 0.1), torch.full((96, 128, 3), 0.9)])
    hook = I.hook_for(SimpleNamespace(info=SimpleNamespace(kind=kind)))
    kw = dict(eva_clip="eva", parser="parser", ref_faces=ref_faces, ref_image=ref_image)
    for row, (want_face, want_level) in enumerate(((f[0], 0.1), (f[1], 0.1), (f[2], 0.9))):
        job = SimpleNamespace(identity=row)
        m, pos, neg = hook(None, "model", "pos", "neg", "adapter", None, 0.7, job, **kw)
        assert m == ("patched", "model") and (pos, neg) == ("pos", "neg")
        faces, frame, weight = seen[-1]
        assert faces.flat() == (want_face,) and frame.shape == (1, 96, 128, 3) and weight == 0.7
        assert float(frame.mean()) == pytest.approx(want_level)
    with pytest.raises(VisageError, match="reference face"):
        hook(None, "model", "pos", "neg", "adapter", None, 0.7, SimpleNamespace(identity=3), **kw)
    with pytest.raises(VisageError, match="eva_clip"):
        hook(None, "model", "pos", "neg", "adapter", None, 0.7, SimpleNamespace(identity=0), **{**kw, "eva_clip": None})


def test_noise_mask_from_face_parsing(tmp_path):
    """With a masker (face parsing, regions = skin) the sampler redraws the parsed skin, not the landmark hull:
    a painted class map (the test parser labels pixels by colour) with skin around the face and hair above it;
    a sampler that paints its crop red changes the skin, leaves the hair and the background alone."""
    from builders import masks as MB

    from visage.nodes.detailer.detail import masker_mask_fn
    from visage.nodes.face import masks as FM
    from visage.nodes.face import parsing as PR

    parser = PR.load_parsing(MB.make_controlled_parser_onnx(str(tmp_path / "bisenet_resnet_18.onnx")), engine="torch")
    lab = np.zeros((256, 256), np.int64)
    lab[40:90, 60:196] = PR.CLASS_INDEX["hair"]
    lab[90:200, 80:176] = PR.CLASS_INDEX["skin"]
    img = torch.from_numpy(MB.paint_classes(lab[None])).float()
    face = make_face((128.0, 130.0), 36.0, 0.0)
    red = torch.tensor([1.0, 0.0, 0.0])

    def paint(c, m, j, s):
        return c * (1 - m[..., None]) + red * m[..., None]  # what a sampler with that noise mask does

    masker = FM.FaceMasker(parser=parser, regions=("skin",))
    st = Settings(size=256, max_upscale=64, mask_grow=0.0, feather=0.02)
    out, rows = detail(img, [[face]], [[None]], paint, st, mask_fn=masker_mask_fn(masker))
    changed = (out - img)[0].abs().amax(-1) > 0.1
    assert rows[0]["status"] == "detailed"
    skin = torch.from_numpy(lab == PR.CLASS_INDEX["skin"])
    hair = torch.from_numpy(lab == PR.CLASS_INDEX["hair"])
    assert float(changed[skin].float().mean()) > 0.95  # the skin block was redrawn
    assert not changed[~skin].any()  # and nothing else: not the hair, not the background
    # without the masker the landmark hull decides: it misses skin and reaches into the hair
    out2, _ = detail(img, [[face]], [[None]], paint, st)
    changed2 = (out2 - img)[0].abs().amax(-1) > 0.1
    assert changed2[hair].any() and float(changed2[skin].float().mean()) < 0.9
    assert masker_mask_fn(None) is None and masker_mask_fn(FM.FaceMasker()) is None


def test_infiniteyou_hook_draws_keypoints_in_the_crop(monkeypatch):
    """InfiniteYou per face: the face's own embeds row, its keypoint image drawn at the crop's keypoints (not
    the frame's), the detailer's VAE; refused without InfuseNet."""
    from types import SimpleNamespace

    from visage.nodes.detailer import identity as I
    from visage.nodes.infiniteyou import apply as IA

    seen = {}

    def fake(positive, negative, control_net, iy, weight, start, end, embeds=None, keypoints_image=None, **kw):
        seen.update(embeds=embeds, hints=keypoints_image, vae=kw.get("vae"), cn=control_net, weight=weight)
        return ("pos+", "neg+", keypoints_image)

    monkeypatch.setattr(IA, "apply_infiniteyou", fake)
    ref = IA.InfiniteYouRef(None, SimpleNamespace(), "iy")
    hook = I.hook_for(ref)
    face = make_face((150.0, 140.0), 44.0, 35.0)
    plan = plan_crop(face, 256, 1.0, 64)
    from visage.nodes.detailer.geometry import crop_keypoints

    job = SimpleNamespace(identity=0, size=256, kps_crop=crop_keypoints(face, plan.matrix))
    m, pos, neg = hook(None, "model", "pos", "neg", ref, "row0", 0.9, job, control_net="infusenet", vae="vae")
    assert (m, pos, neg) == ("model", "pos+", "neg+")
    assert seen["embeds"] == "row0" and seen["vae"] == "vae" and seen["cn"] == "infusenet" and seen["weight"] == 0.9
    hint = seen["hints"][0]
    assert hint.shape == (256, 256, 3)
    lit = hint.amax(-1) > 0.5
    for x, y in job.kps_crop:  # a keypoint dot at each crop keypoint (eyes level: the rotation is undone)
        assert lit[int(round(y)), int(round(x))], (x, y)
    assert abs(job.kps_crop[0][1] - job.kps_crop[1][1]) < 0.5
    with pytest.raises(VisageError, match="InfuseNet"):
        hook(None, "model", "pos", "neg", ref, "row0", 0.9, job, control_net=None)

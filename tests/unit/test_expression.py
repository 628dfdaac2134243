"""Expression family maths and pipeline (narrow test twins of the networks, real 256x256 inputs)."""

import math

import numpy as np
import pytest
import torch

from visage.core.errors import NoFaceError, VisageError
from visage.core.types import Face, FaceEmbeds, FaceSet
from visage.nodes.expression import crop as C
from visage.nodes.expression import motion as M
from visage.nodes.expression import networks as N
from visage.nodes.expression import pipeline as PL

# ----------------------------------------------------------------------------------- helpers


class Models:
    def __init__(self, seed=0):
        torch.manual_seed(seed)
        cfg = N.tiny_cfg()
        m = {k: N.build(k, cfg) for k in N.KINDS}
        self.appearance = PL.Direct(m["appearance_feature_extractor"])
        self.motion = PL.Direct(m["motion_extractor"])
        self.warping = PL.Direct(m["warping_module"])
        self.spade = PL.Direct(m["spade_generator"])
        self.stitching = PL.Direct(m["stitching_retargeting_module"])
        self.device, self.dtype = torch.device("cpu"), torch.float32


@pytest.fixture(scope="module")
def engine():
    return PL.Engine(Models())


def landmarks68(cx, cy, s, eye_open=0.3, mouth_open=0.2):
    """A plausible iBUG-68 layout around (cx, cy), face width ~ 2s."""
    p = np.zeros((68, 2), np.float32)
    for i in range(17):  # jaw
        a = math.pi * (i / 16.0)
        p[i] = (cx - s * math.cos(a), cy + s * 0.2 + s * 0.9 * math.sin(a))
    for i in range(5):
        p[17 + i] = (cx - s * 0.8 + i * s * 0.15, cy - s * 0.55)
        p[22 + i] = (cx + s * 0.2 + i * s * 0.15, cy - s * 0.55)
    for i in range(9):
        p[27 + i] = (cx + (i - 4) * s * 0.05 if i >= 4 else cx, cy - s * 0.4 + i * s * 0.08)
    for side, ex in ((0, cx - s * 0.4), (1, cx + s * 0.4)):
        b = 36 + 6 * side
        w, h = s * 0.3, s * 0.3 * eye_open
        p[b + 0] = (ex - w / 2, cy - s * 0.3)
        p[b + 1] = (ex - w / 6, cy - s * 0.3 - h / 2)
        p[b + 2] = (ex + w / 6, cy - s * 0.3 - h / 2)
        p[b + 3] = (ex + w / 2, cy - s * 0.3)
        p[b + 4] = (ex + w / 6, cy - s * 0.3 + h / 2)
        p[b + 5] = (ex - w / 6, cy - s * 0.3 + h / 2)
    my, mw = cy + s * 0.45, s * 0.8
    for i in range(12):
        a = 2 * math.pi * i / 12
        p[48 + i] = (cx - mw / 2 * math.cos(a), my - s * 0.15 * math.sin(a))
    for i in range(8):
        a = 2 * math.pi * i / 8
        p[60 + i] = (cx - mw / 3 * math.cos(a), my - mw * mouth_open / 2 * math.sin(a))
    return torch.from_numpy(p)


def make_face(cx, cy, s, image_index=0, with_lm=True, emb=None, roll_deg=0.0):
    kps = torch.tensor(
        [
            [cx - 0.4 * s, cy - 0.3 * s],
            [cx + 0.4 * s, cy - 0.3 * s],
            [cx, cy],
            [cx - 0.3 * s, cy + 0.45 * s],
            [cx + 0.3 * s, cy + 0.45 * s],
        ]
    )
    lm = landmarks68(cx, cy, s) if with_lm else None
    if roll_deg:
        a = math.radians(roll_deg)
        r = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        c = torch.tensor([cx, cy])
        kps = (kps - c) @ r.T + c
        lm = None if lm is None else (lm - c) @ r.T + c
    bbox = torch.tensor([cx - s, cy - s, cx + s, cy + 1.1 * s])
    e = None if emb is None else torch.tensor(emb, dtype=torch.float32)
    return Face(
        image_index,
        bbox,
        0.9,
        kps,
        landmarks_2d_68=lm,
        embedding=e,
        normed_embedding=None if e is None else e / e.norm(),
    )


def faceset(per_image, size):
    return FaceSet(
        tuple(tuple(f.with_(image_index=i) for f in fs) for i, fs in enumerate(per_image)), (size,) * len(per_image)
    )


# ----------------------------------------------------------------------------------- pose maths


def test_headpose_bins_to_degrees():
    uniform = torch.zeros(1, 66)
    assert abs(float(M.headpose_to_degree(uniform)[0])) < 1e-4  # mean bin 32.5 -> 0 deg
    onehot = torch.full((3, 66), -1e4)
    for i, k in enumerate((0, 10, 65)):
        onehot[i, k] = 0
    torch.testing.assert_close(M.headpose_to_degree(onehot), torch.tensor([-97.5, -67.5, 97.5]))


def test_rotation_matrix_convention():
    r = M.rotation_matrix(torch.tensor([10.0]), torch.tensor([-20.0]), torch.tensor([30.0]))[0]
    torch.testing.assert_close(r @ r.T, torch.eye(3), atol=1e-6, rtol=0)
    assert abs(float(torch.det(r)) - 1) < 1e-5
    # pure yaw: row-vector convention x @ R with R = Ry^T
    a = math.radians(25.0)
    ry = M.rotation_matrix(torch.zeros(1), torch.tensor([25.0]), torch.zeros(1))[0]
    expect = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]).T
    torch.testing.assert_close(ry, expect.float())
    # composition order (Rz Ry Rx)^T
    rx = M.rotation_matrix(torch.tensor([10.0]), torch.zeros(1), torch.zeros(1))[0]
    rz = M.rotation_matrix(torch.zeros(1), torch.zeros(1), torch.tensor([30.0]))[0]
    ry2 = M.rotation_matrix(torch.zeros(1), torch.tensor([-20.0]), torch.zeros(1))[0]
    torch.testing.assert_close(r, (rz.T @ ry2.T @ rx.T).T, atol=1e-6, rtol=0)


def _info(b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return M.KeypointInfo(
        kp=torch.randn(b, 21, 3, generator=g) * 0.3,
        exp=torch.randn(b, 21, 3, generator=g) * 0.02,
        pitch=torch.randn(b, generator=g) * 5,
        yaw=torch.randn(b, generator=g) * 5,
        roll=torch.randn(b, generator=g) * 5,
        scale=1.5 + 0.1 * torch.rand(b, 1, generator=g),
        t=torch.randn(b, 3, generator=g) * 0.05,
    )


def test_transform_is_scale_rotate_plus_expression_plus_txy():
    info = _info()
    x = M.transform_keypoints(info)
    r = info.rotation()[0]
    ref = info.scale[0, 0] * (info.kp[0] @ r + info.exp[0])
    ref[:, :2] += info.t[0, :2]  # t_z is dropped
    torch.testing.assert_close(x[0], ref)


# ----------------------------------------------------------------------------------- sliders

# the footprint of each slider in AdvancedLivePortrait's calc_fe: (keypoint, axis) entries and angles
FOOTPRINT = {
    "smile": ({(20, 1), (14, 1), (17, 1), (17, 2), (13, 1), (16, 1), (3, 1), (7, 1)}, set()),
    "aaa": ({(19, 1), (19, 2), (17, 1)}, {0}),
    "eee": ({(20, 2), (20, 1), (14, 1)}, set()),
    "woo": ({(14, 1), (3, 1), (7, 1), (17, 2)}, set()),
    "wink": ({(11, 1), (13, 1), (17, 0), (17, 1), (3, 1)}, {1, 2}),
    "pupil_x": ({(11, 0), (15, 0)}, set()),
    "pupil_y": ({(11, 1), (15, 1), (13, 1), (16, 1), (1, 1), (2, 1)}, set()),
    "blink": ({(11, 1), (13, 1), (15, 1), (16, 1), (1, 1), (2, 1)}, set()),
    "eyebrow": ({(1, 1), (2, 1)}, set()),
    "rotate_pitch": (set(), {0}),
    "rotate_yaw": (set(), {1}),
    "rotate_roll": (set(), {2}),
}


@pytest.mark.parametrize("name", sorted(M.SLIDERS))
def test_each_slider_moves_only_its_parameters(name):
    _d, lo, hi, _s = M.SLIDERS[name]
    v = hi if hi > 0 else lo
    e = M.slider_expression({name: v})
    changed = {(int(k), int(a)) for k, a in (e.exp != 0).nonzero().tolist()}
    angles = {int(a) for a in (e.rotation != 0).nonzero().flatten().tolist()}
    assert (changed, angles) == FOOTPRINT[name]
    assert e.scale == 0 and bool((e.t == 0).all())
    # and the driving keypoints move only where the expression changed (when no rotation is involved)
    info = _info()
    x0 = M.transform_keypoints(info)
    x1 = M.edited_keypoints(info, e)
    moved = set((x1 - x0).abs().amax(-1)[0].nonzero().flatten().tolist())
    if not angles:
        assert moved == {k for k, _ in changed}
    else:
        assert len(moved) == 21  # a head rotation moves every keypoint


def test_slider_values_match_advanced_liveportrait():
    e = M.slider_expression({"smile": 1.0, "aaa": 10.0, "eyebrow": -5.0, "pupil_x": -2.0, "rotate_yaw": 5.0})
    assert float(e.exp[20, 1]) == pytest.approx(-0.01)
    assert float(e.exp[19, 1]) == pytest.approx(0.01)
    assert float(e.exp[17, 1]) == pytest.approx(0.0065 - 0.001)
    assert float(e.exp[1, 0]) == pytest.approx(0.005) and float(e.exp[1, 1]) == pytest.approx(-0.0015)
    assert float(e.exp[11, 0]) == pytest.approx(-0.002) and float(e.exp[15, 0]) == pytest.approx(-0.0014)
    assert e.rotation.tolist() == pytest.approx([-0.5, -5.0, 0.0])
    assert M.slider_expression({k: 0.0 for k in M.SLIDERS}).is_zero()
    with pytest.raises(VisageError, match="Unknown expression slider"):
        M.slider_expression({"grin": 1.0})


def test_zero_offset_keypoints_are_bitwise_the_source():
    info = _info(b=2)
    assert torch.equal(M.edited_keypoints(info, M.Expression.zero()), M.transform_keypoints(info))


def test_sample_parts_copy_only_their_keypoints():
    sample = _info(seed=3)
    mouth = M.sample_expression(sample, "mouth", 1.0)
    rows = set((mouth.exp != 0).any(-1).nonzero().flatten().tolist())
    assert rows == set(M.MOUTH_KPS) and mouth.rotation.abs().sum() == 0
    eyes = M.sample_expression(sample, "eyes", 0.5)
    assert set((eyes.exp != 0).any(-1).nonzero().flatten().tolist()) == set(M.EYE_KPS)
    rot = M.sample_expression(sample, "rotation", 1.0)
    assert rot.exp.abs().sum() == 0
    torch.testing.assert_close(rot.rotation, sample.angles()[0])
    allp = M.sample_expression(sample, "all", 1.0)
    assert float(allp.exp[5, 0]) == 0 and float(allp.exp[5, 1]) == 0  # AdvancedLivePortrait zeroes kp 5 x/y


# ----------------------------------------------------------------------------------- expression type


def test_expression_save_load_add_interpolate(tmp_path):
    a = M.slider_expression({"smile": 1.0, "rotate_pitch": 4.0})
    b = M.slider_expression({"blink": -10.0})
    p = a.save(str(tmp_path / "x" / "a.safetensors"))
    a2 = M.Expression.load(p)
    assert torch.equal(a2.exp, a.exp) and torch.equal(a2.rotation, a.rotation)
    mid = a.lerp(b, 0.25)
    torch.testing.assert_close(mid.exp, 0.75 * a.exp + 0.25 * b.exp)
    torch.testing.assert_close(mid.rotation, 0.75 * a.rotation)
    torch.testing.assert_close((a + b).exp, a.exp + b.exp)
    assert a.lerp(b, 0.0).exp.equal(a.exp * 1.0)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(VisageError, match="not a Visage expression"):
        M.Expression.load(str(tmp_path / "other.safetensors"))
    with pytest.raises(VisageError, match="21x3"):
        M.Expression(torch.zeros(20, 3), torch.zeros(3))


# ----------------------------------------------------------------------------------- transfer maths


def test_relative_motion_identity_and_deltas():
    src, drv = _info(seed=1), _info(b=4, seed=2)
    d0 = drv.select(0)
    x = M.driven_keypoints(src, drv, d0, "relative")
    torch.testing.assert_close(x[0], M.transform_keypoints(src)[0])  # first driving frame = no motion
    # expression-only region keeps pose: rotation/scale/t of the source
    xe = M.driven_keypoints(src, drv, d0, "relative", "expression")
    exp = src.exp + (drv.exp - d0.exp)
    ref = M.compose(
        src.kp.expand(4, -1, -1), src.rotation().expand(4, -1, -1), exp, src.scale.expand(4, -1), src.t.expand(4, -1)
    )
    torch.testing.assert_close(xe, ref)
    # lips region moves only the lip keypoints
    xl = M.driven_keypoints(src, drv, d0, "relative", "lips")
    moved = set((xl - M.transform_keypoints(src)).abs().amax(-1).amax(0).nonzero().flatten().tolist())
    assert moved <= set(M.LIP_KPS) and moved
    # absolute: the driving's own pose
    xa = M.driven_keypoints(src, drv, d0, "absolute", "pose")
    ref = M.compose(src.kp.expand(4, -1, -1), drv.rotation(), src.exp.expand(4, -1, -1), src.scale.expand(4, -1), drv.t)
    torch.testing.assert_close(xa, ref)
    with pytest.raises(VisageError):
        M.driven_keypoints(src, drv, d0, "sideways")


def test_smoothing_reduces_frame_to_frame_jitter():
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 2 * math.pi, 60)
    clean = torch.stack([torch.sin(t), torch.cos(2 * t) * 0.5, t * 0.1], -1)[:, None, :].expand(60, 21, 3) * 0.05
    noisy = clean + torch.randn(60, 21, 3, generator=g) * 0.01
    assert torch.equal(M.smooth_sequence(noisy, 0.0), noisy)
    prev_var = torch.diff(noisy, dim=0).var().item()
    for s in (0.3, 0.6, 0.9):
        sm = M.smooth_sequence(noisy, s)
        var = torch.diff(sm, dim=0).var().item()
        assert var < prev_var  # stronger smoothing -> smaller frame-to-frame variance
        prev_var = var
    sm = M.smooth_sequence(noisy, 0.5)
    assert (sm - clean).pow(2).mean() < (noisy - clean).pow(2).mean()  # closer to the clean motion
    const = torch.full((10, 3), 0.7)
    torch.testing.assert_close(M.smooth_sequence(const, 0.8), const)
    # on keypoints composed from smoothed parameters too
    info = M.KeypointInfo(
        kp=torch.zeros(60, 21, 3) + 0.1,
        exp=noisy,
        pitch=torch.randn(60, generator=g) * 2,
        yaw=torch.randn(60, generator=g) * 2,
        roll=torch.zeros(60),
        scale=torch.ones(60, 1),
        t=torch.zeros(60, 3),
    )
    raw = M.transform_keypoints(info)
    smo = M.transform_keypoints(M.smooth_info(info, 0.6))
    assert torch.diff(smo, dim=0).var() < 0.5 * torch.diff(raw, dim=0).var()


def test_open_ratios_from_68_landmarks():
    lm_open = landmarks68(100, 100, 50, eye_open=0.4, mouth_open=0.3)
    lm_shut = landmarks68(100, 100, 50, eye_open=0.05, mouth_open=0.0)
    eo, es = M.eye_open_ratios(lm_open), M.eye_open_ratios(lm_shut)
    assert eo.shape == (2,) and bool((eo > es).all())
    assert float(M.lip_open_ratio(lm_open)) > float(M.lip_open_ratio(lm_shut)) + 0.05
    assert float(M.lip_open_ratio(lm_shut)) < 1e-4


# ----------------------------------------------------------------------------------- crop / selection


@pytest.mark.parametrize("with_lm", [True, False])
def test_crop_is_rotation_aligned_and_centred(with_lm):
    f = make_face(200, 180, 60, with_lm=with_lm, roll_deg=20)
    m = C.crop_matrix(f)
    k = f.kps.double().numpy()
    eye = (k[0] + k[1]) / 2
    lip = (k[3] + k[4]) / 2
    to = lambda p: m[:, :2] @ p + m[:, 2]
    e, l = to(eye), to(lip)
    assert abs(np.degrees(np.arctan2(l[0] - e[0], l[1] - e[1]))) < 3.0  # eyes -> lips is vertical in the crop
    assert 0.3 * 512 < e[0] < 0.7 * 512 and 0.3 * 512 < l[1] < 0.8 * 512
    inv = C.invert(m)
    np.testing.assert_allclose(inv[:, :2] @ to(eye) + inv[:, 2], eye, atol=1e-6)


def test_select_face_modes():
    small = make_face(50, 50, 10, emb=[1.0, 0.0, 0.0])
    big = make_face(200, 120, 40, emb=[0.0, 1.0, 0.0])
    centre = make_face(160, 125, 20, emb=[0.0, 0.0, 1.0])
    faces = (small, big, centre)
    assert C.select_face(faces, "largest") is big
    assert C.select_face(faces, "index", 2) is centre
    assert C.select_face(faces, "index", 7) is None
    assert C.select_face(faces, "center", image_size=(250, 320)) is centre
    ref = FaceEmbeds.from_raw(torch.tensor([[0.9, 0.1, 0.0]]), "test")
    assert C.select_face(faces, "identity", reference=ref) is small
    assert C.select_face((), "largest") is None
    with pytest.raises(VisageError, match="reference"):
        C.select_face(faces, "identity")


def test_face_mask_fades_before_the_crop_edge():
    m = C.face_mask(512)
    assert float(m[256, 256]) == 1.0
    edge = torch.cat([m[0], m[-1], m[:, 0], m[:, -1]])
    assert float(edge.max()) == 0.0
    assert float(m[:8].max()) == 0.0 and float(m[:, :8].max()) == 0.0


# ----------------------------------------------------------------------------------- pipeline


def _source(seed=0, size=(260, 240)):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(1, *size, 3, generator=g) * 0.2 + 0.4
    return img


def test_zero_edit_returns_the_source_reconstruction(engine):
    img = _source()
    fs = faceset([[make_face(120, 120, 35)]], (260, 240))
    res = PL.edit(engine, img, fs, M.Expression.zero(), color_transfer=False)
    jobs = PL.find_jobs(img, fs, "largest", 0, None, 2.3, -0.125)
    rec = PL.reconstruct(engine, engine.crops(img, jobs))
    assert torch.equal(res.crops, rec.permute(0, 2, 3, 1))  # same tensors as the unedited pass
    assert res.images.shape == img.shape and res.masks.shape == (1, 260, 240)
    # outside the face mask nothing changes; inside, the generated face was pasted
    outside = res.masks[0] == 0
    assert torch.equal(res.images[0][outside], img[0][outside])
    assert float((res.images - img).abs().amax()) > 0.01
    # a slider edit changes the generated crop
    smile = PL.edit(engine, img, fs, M.slider_expression({"smile": 1.3, "aaa": 60}), color_transfer=False)
    assert float((smile.crops - res.crops).abs().amax()) > 1e-4
    assert torch.equal(smile.expression.exp, M.slider_expression({"smile": 1.3, "aaa": 60}).exp)


def test_edit_any_face_and_no_face_policies(engine):
    img = torch.cat([_source(0), _source(1)])
    left, right = make_face(60, 120, 25), make_face(180, 120, 30)
    fs = faceset([[left, right], []], (260, 240))
    with pytest.raises(NoFaceError):
        PL.edit(engine, img, fs, M.Expression.zero())
    res = PL.edit(
        engine, img, fs, M.Expression.zero(), select="index", index=0, on_no_face="passthrough", color_transfer=False
    )
    assert res.images.shape[0] == 2 and torch.equal(res.images[1], img[1]) and float(res.masks[1].max()) == 0
    cols = res.masks[0].amax(0).nonzero().flatten()
    assert float(cols.float().mean()) < 120  # the left face was edited
    res2 = PL.edit(engine, img, fs, M.Expression.zero(), select="largest", on_no_face="skip", color_transfer=False)
    assert res2.images.shape[0] == 1
    assert float(res2.masks[0].amax(0).nonzero().flatten().float().mean()) > 120
    with pytest.raises(VisageError, match="another image batch"):
        PL.edit(engine, img[:1], fs, M.Expression.zero())


def test_transfer_passthrough_other_sizes_and_errors(engine):
    src = _source()
    sfs = faceset([[make_face(120, 120, 35)]], (260, 240))
    drv = torch.rand(3, 200, 300, 3)  # driving frames of another size than the source
    d_face = make_face(150, 100, 30)
    dfs = faceset([[d_face], [], [d_face]], (200, 300))
    res = PL.transfer(engine, src, sfs, drv, dfs, on_no_face="passthrough", smoothing=0.5, color_transfer=False)
    assert res.images.shape == (3, 260, 240, 3) and res.generated == 2 and res.crops.shape == (2, 512, 512, 3)
    assert torch.equal(res.images[1], src[0]) and float(res.masks[1].max()) == 0  # no face -> passthrough
    assert float(res.masks[0].max()) > 0.99 and float(res.masks[2].max()) > 0.99
    # frame 0 is the first driving frame: relative motion = none, so it is the source's reconstruction
    jobs = PL.find_jobs(src, sfs, "largest", 0, None, 2.3, -0.125)
    rec = PL.reconstruct(engine, engine.crops(src, jobs))
    torch.testing.assert_close(res.crops[0], rec[0].permute(1, 2, 0))
    skip = PL.transfer(engine, src, sfs, drv, dfs, on_no_face="skip", color_transfer=False)
    assert skip.images.shape[0] == 2
    with pytest.raises(NoFaceError, match="driving"):
        PL.transfer(engine, src, sfs, drv, dfs, on_no_face="error")
    # no face in the source
    empty = faceset([[]], (260, 240))
    with pytest.raises(NoFaceError, match="source"):
        PL.transfer(engine, src, empty, drv, dfs, on_no_face="error")
    through = PL.transfer(engine, src, empty, drv, dfs, on_no_face="passthrough")
    assert through.generated == 0 and torch.equal(through.images, src.expand(3, -1, -1, -1))
    # faces of the wrong batch
    with pytest.raises(VisageError, match="another image batch"):
        PL.transfer(engine, src, sfs, drv, sfs)
    with pytest.raises(VisageError, match="one image or as long"):
        PL.transfer(engine, torch.cat([src, src]), faceset([[make_face(120, 120, 35)]] * 2, (260, 240)), drv, dfs)


def test_transfer_retargeting_needs_landmarks_and_uses_ratios(engine):
    src = _source()
    sfs = faceset([[make_face(120, 120, 35)]], (260, 240))
    drv = torch.rand(2, 200, 300, 3)
    dfs = faceset([[make_face(150, 100, 30)], [make_face(150, 100, 30)]], (200, 300))
    res = PL.transfer(engine, src, sfs, drv, dfs, eye_retargeting=True, lip_retargeting=True, color_transfer=False)
    assert res.generated == 2
    nolm = faceset([[make_face(150, 100, 30, with_lm=False)]] * 2, (200, 300))
    with pytest.raises(VisageError, match="landmarks"):
        PL.transfer(engine, src, sfs, drv, nolm, eye_retargeting=True)


def test_colour_transfer_matches_the_original_face_colour(engine):
    from visage.kernels import reference as K

    img = _source()
    img[..., 0] = img[..., 0] * 0.5 + 0.45  # a warm frame: the twin's output colours are unrelated
    fs = faceset([[make_face(120, 120, 35)]], (260, 240))
    plain = PL.edit(engine, img, fs, M.Expression.zero(), color_transfer=False)
    matched = PL.edit(engine, img, fs, M.Expression.zero(), color_transfer=True)
    w = plain.masks[0] > 0.99
    lab = lambda x: K.rgb_to_lab(x[0][w]).mean(0)
    ref = lab(img)
    assert float((lab(matched.images) - ref).norm()) < 0.5 * float((lab(plain.images) - ref).norm())


def test_net_input_is_cv2_inter_area():
    """512 -> 256 network input = OpenCV INTER_AREA (the official LivePortrait resize): for 2x the mean of
    each 2x2 block. A sharp-edged crop (checkerboard + hard step) is where a bilinear filter differs most."""
    import cv2

    rng = np.random.default_rng(0)
    img = rng.random((512, 512, 3)).astype(np.float32)
    img[::2, ::2] = 1.0
    img[1::2, 1::2] = 0.0
    img[:, 301:] = 0.0  # an edge that does not fall on a 2x2 block boundary
    want = cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)
    got = PL.Engine.net_input(torch.from_numpy(img)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got, img.reshape(256, 2, 256, 2, 3).mean((1, 3)), atol=1e-6)

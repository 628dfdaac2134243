"""Swap quality options on a real photo with test-built models: occlusion and region masks, GPEN ONNX,
pixel boost, identity strength."""

import cv2
import numpy as np
import pytest
import torch
from builders import masks as MB
from builders import swap as SB
from builders.face import build_face_pack
from conftest import insightface_image

from visage.core.errors import ModelFileInvalid, VisageError
from visage.core.model_manager import MANAGER
from visage.nodes.face import masks as FM
from visage.nodes.face import parsing as PR
from visage.nodes.face.analyzer import load_analyzer
from visage.nodes.swap import models as SM
from visage.nodes.swap import pipeline as PL
from visage.nodes.swap.models import load_swapper
from visage.nodes.swap.restore import Restorer, load_restorer


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("swapquality")
    an = load_analyzer(build_face_pack(str(d / "pack")))
    files = {
        "in128": SB.make_inswapper(str(d / "inswapper_128.onnx"), 128),
        "hyper": SB.make_hyperswap(str(d / "hyperswap_1a_256.onnx"), 256),
        "xseg": MB.make_controlled_xseg_onnx(str(d / "xseg_1.onnx")),
        "parser": MB.make_controlled_parser_onnx(str(d / "bisenet_resnet_18.onnx")),
        "gpen512": MB.make_gpen_onnx(str(d / "GPEN-BFR-512.onnx"), 512),
        "gpen256": MB.make_gpen_onnx(str(d / "GPEN-BFR-256.onnx"), 256, seed=1),
    }
    sw = MANAGER.get("swap:swapper", files["in128"], lambda p, dv, dt: load_swapper(p, "cpu", dt))
    img = cv2.imread(insightface_image("t1.jpg"))[:, :, ::-1]
    img = cv2.resize(img, (640, 443), interpolation=cv2.INTER_AREA)
    frame = torch.from_numpy(img.copy()).float()[None] / 255.0
    faces = an.analyze(frame)
    assert faces.count >= 2
    return dict(an=an, files=files, sw=sw, frame=frame, faces=faces, dir=d)


def _source(seed=0):
    e = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, 512)).astype(np.float32))
    return torch.nn.functional.normalize(e, dim=-1)


def _hand(frame, face):
    """A green hand (palm + four fingers + thumb) drawn over the lower half of ``face``; its mask."""
    img = (frame[0].numpy() * 255).round().astype(np.uint8).copy()
    mask = np.zeros(img.shape[:2], np.uint8)
    x1, y1, x2, y2 = face.bbox.tolist()
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, y1 + 0.72 * h
    cv2.ellipse(mask, (int(cx), int(cy)), (int(0.22 * w), int(0.16 * h)), 0, 0, 360, 255, -1)
    for k in range(4):  # fingers up and to the right
        fx = int(cx - 0.18 * w + k * 0.12 * w)
        cv2.rectangle(mask, (fx, int(cy - 0.38 * h)), (fx + int(0.08 * w), int(cy)), 255, -1)
    cv2.line(mask, (int(cx + 0.15 * w), int(cy)), (int(cx + 0.35 * w), int(cy - 0.15 * h)), 255, int(0.08 * w))
    img[mask > 0] = np.round(np.array(MB.OCCLUDER_RGB) * 255).astype(np.uint8)
    return torch.from_numpy(img).float()[None] / 255.0, torch.from_numpy(mask > 0)


def test_occlusion_mask_keeps_a_hand_over_the_face(env):
    faces = env["faces"]
    face = max(faces.faces[0], key=lambda f: f.area)
    frame, hand = _hand(env["frame"], face)
    plan = [a for a in PL.plan(faces, [1], "by_order") if a.face is face]
    inner = torch.from_numpy(cv2.erode(hand.numpy().astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
    plain, pmask, _ = PL.swap_frames(frame, plan, env["sw"], [_source()])
    assert (plain[0][inner] - frame[0][inner]).abs().mean() > 0.05  # without the mask the hand is pasted over
    for engine in ("torch", "onnxruntime"):
        masker = FM.FaceMasker(occluder=FM.load_occluder(env["files"]["xseg"], engine=engine))
        out, mask, n = PL.swap_frames(frame, plan, env["sw"], [_source()], masker=masker)
        assert n == 1
        assert (out[0][inner] - frame[0][inner]).abs().max() <= 2e-3, engine  # the hand stays
        assert float(mask[0][inner].max()) <= 2e-3
        face_px = (pmask[0] > 0.9) & ~torch.from_numpy(cv2.dilate(hand.numpy().astype(np.uint8), np.ones((25, 25))) > 0)
        assert face_px.sum() > 300
        assert (out[0][face_px] - frame[0][face_px]).abs().mean() > 0.02  # the rest of the face is swapped
        torch.testing.assert_close(out[0][face_px], plain[0][face_px], atol=2e-3, rtol=0)


def test_occluder_engines_agree_and_wrong_files_are_named(env):
    x = torch.rand(3, 256, 256, 3, generator=torch.Generator().manual_seed(0))
    x[1, 40:90, 60:200] = torch.tensor(MB.OCCLUDER_RGB[::-1])  # BGR input
    a = FM.load_occluder(env["files"]["xseg"], engine="torch")(x)
    b = FM.load_occluder(env["files"]["xseg"], engine="onnxruntime")(x)
    assert a.shape == (3, 256, 256) and (a - b).abs().max() <= 1e-3
    assert float(a[1, 50:80, 70:190].max()) < 1e-3 and float(a[0].mean()) > 0.9
    with pytest.raises(ModelFileInvalid, match="face swapper"):
        FM.load_occluder(env["files"]["in128"])
    with pytest.raises(ModelFileInvalid, match="19-class parser"):
        FM.load_occluder(env["files"]["parser"])
    with pytest.raises(ModelFileInvalid, match="occluder such as XSeg"):
        PR.load_parsing(env["files"]["xseg"])


def test_region_masks_select_the_right_classes(env):
    parser = PR.load_parsing(env["files"]["parser"], engine="torch")
    lab = np.zeros((512, 512), np.int64)
    blocks = {  # class -> (y0, y1, x0, x1) blocks of a synthetic face map
        "hair": (0, 100, 0, 512),
        "skin": (100, 420, 60, 452),
        "left_brow": (150, 170, 140, 220),
        "right_brow": (150, 170, 292, 372),
        "left_eye": (190, 215, 150, 210),
        "right_eye": (190, 215, 302, 362),
        "nose": (220, 300, 230, 282),
        "upper_lip": (325, 345, 200, 312),
        "mouth": (345, 365, 200, 312),
        "lower_lip": (365, 385, 200, 312),
        "left_ear": (200, 300, 20, 60),
        "right_ear": (200, 300, 452, 492),
        "neck": (420, 512, 150, 362),
        "glasses": (230, 300, 100, 170),
    }
    for name, (y0, y1, x0, x1) in blocks.items():
        lab[y0:y1, x0:x1] = PR.CLASS_INDEX[name]
    frame = torch.from_numpy(MB.paint_classes(lab[None]))  # [1,512,512,3]: the parser's colours
    mats = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # frame -> 512 crop (the identity)
    idx = torch.zeros(1, dtype=torch.long)
    r = FM.smooth_radius(512)
    k = np.ones((2 * r + 3, 2 * r + 3), np.uint8)  # farther than the smoothing radius from a border
    for region, classes in FM.REGIONS.items():
        want = np.isin(lab, classes)
        if region == "upper_face":
            want &= np.arange(512)[:, None] < 260
        if region == "lower_face":
            want &= np.arange(512)[:, None] >= 260
        nose = torch.tensor([260.0])
        m = FM.region_masks(parser, [region], frame, mats, idx, 512, nose_rows=nose)[0].numpy()
        # (the smoothing has a zero border: the crop's edge counts as a border)
        inside = cv2.erode(want.astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        outside = cv2.erode((~want).astype(np.uint8), k) > 0
        assert inside.any() and outside.any(), region
        assert m[inside].min() == 1.0 and m[outside].max() == 0.0, region
    both = FM.region_masks(parser, ["eyes", "lips"], frame, mats, idx, 512)[0].numpy()
    eyes = FM.region_masks(parser, ["eyes"], frame, mats, idx, 512)[0].numpy()
    lips = FM.region_masks(parser, ["lips"], frame, mats, idx, 512)[0].numpy()
    assert np.abs(both - np.maximum(eyes, lips)).max() < 1e-5  # a union of regions
    with pytest.raises(VisageError, match="Unknown face region"):
        FM.parse_regions("skin, beard")
    assert FM.parse_regions("Skin; upper-face") == ("skin", "upper_face")
    with pytest.raises(VisageError, match="need a face parser"):
        FM.FaceMasker(regions=("skin",))


def test_swap_with_region_mask_intersects_the_box(env):
    faces, frame = env["faces"], env["frame"]
    plan = PL.plan(faces, [1], "by_order")
    parser = PR.load_parsing(env["files"]["parser"], engine="onnxruntime")
    _, box, _ = PL.swap_frames(frame, plan, env["sw"], [_source()])
    masker = FM.FaceMasker(parser=parser, regions=("skin",))
    out, m, n = PL.swap_frames(frame, plan, env["sw"], [_source()], masker=masker)
    assert n == len(plan) and float(m.max()) <= float(box.max()) + 1e-6
    assert bool(((m - box) <= 1e-5).all())  # intersection: never more than the box
    # on a photo the controlled parser labels most skin tones as something other than its skin colour:
    # the mask is a strict subset
    assert float(m.sum()) < 0.999 * float(box.sum())
    fm = FM.frame_masks(masker, frame, faces)
    assert fm.shape == frame.shape[:3] and 0 <= float(fm.min()) and float(fm.max()) <= 1


def test_pixel_boost_tiles_and_resolution(env):
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    t = SM.implode_tiles(x, 2)
    assert t.shape == (8, 3, 4, 4)
    assert torch.equal(t[1], x[0, :, 0::2, 1::2]) and torch.equal(t[6], x[1, :, 1::2, 0::2])
    assert torch.equal(SM.explode_tiles(t, 2), x)
    for key, size in (("in128", 128), ("hyper", 256)):
        mod = load_swapper(env["files"][key])
        lat = SM.source_latent(mod, _source())
        for b in (1, 2, 4):
            crops = torch.rand(1, 3, size * b, size * b, generator=torch.Generator().manual_seed(b))
            faces, mask = SM.run_swapper_boosted(mod, crops, lat, b)
            assert faces.shape == (1, 3, size * b, size * b)
            assert (mask is None) == (key == "in128") and (mask is None or mask.shape == (1, size * b, size * b))
            if b == 2:  # tile (i, j) of the result is the swap of tile (i, j) of the input
                one, _ = SM.run_swapper(mod, crops[:, :, 1::2, 0::2], lat)
                torch.testing.assert_close(faces[:, :, 1::2, 0::2], one, atol=1e-5, rtol=0)
    with pytest.raises(VisageError, match="pixel boost"):
        SM.run_swapper_boosted(mod, crops, lat, 3)


def test_pixel_boost_1_and_identity_strength_1_are_todays_swap(env):
    faces, frame = env["faces"], env["frame"]
    plan = PL.plan(faces, [1], "by_order")
    ref, rm, _ = PL.swap_frames(frame, plan, env["sw"], [_source()])
    out, m, _ = PL.swap_frames(frame, plan, env["sw"], [_source()], pixel_boost=1, identity_strength=1.0, masker=None)
    assert torch.equal(out, ref) and torch.equal(m, rm)
    boosted, bm, _ = PL.swap_frames(frame, plan, env["sw"], [_source()], pixel_boost=2)
    assert boosted.shape == frame.shape and (boosted - ref).abs().max() > 1e-3
    src = _source()
    assert SM.mix_identity(src, _source(5), 1.0) is src


def test_identity_strength_mixes_embeddings(env):
    faces, frame = env["faces"], env["frame"]
    g = torch.Generator().manual_seed(3)
    own = [torch.nn.functional.normalize(torch.randn(512, generator=g), dim=0) for _ in faces.faces[0]]
    tf = faces.__class__(
        faces=(tuple(f.with_embedding(PL.SWAP_TRAINED_ON, e) for f, e in zip(faces.faces[0], own)),),
        image_sizes=faces.image_sizes,
    )
    plan = PL.plan(tf, [1], "by_order")
    src = _source()
    mixed = SM.mix_identity(src.expand(2, -1), torch.stack(own[:2]), 0.5)
    assert torch.allclose(mixed.norm(dim=-1), torch.ones(2))
    want = torch.nn.functional.normalize(src + torch.stack(own[:2]), dim=-1)
    torch.testing.assert_close(mixed, want)
    full, _, _ = PL.swap_frames(frame, plan, env["sw"], [src])
    half, _, _ = PL.swap_frames(frame, plan, env["sw"], [src], identity_strength=0.5)
    zero, _, _ = PL.swap_frames(frame, plan, env["sw"], [src], identity_strength=0.0)
    assert (half - full).abs().max() > 1e-3 and (zero - half).abs().max() > 1e-3
    # 0 = each target swapped with its own embedding: the same as a swap whose source IS that embedding
    for a in plan:
        e = a.face.embedding_for(PL.SWAP_TRAINED_ON)
        self_swap, _, _ = PL.swap_frames(frame, [a], env["sw"], [e[None]])
        one, _, _ = PL.swap_frames(frame, [a], env["sw"], [src], identity_strength=0.0)
        torch.testing.assert_close(one, self_swap, atol=1e-5, rtol=0)
    bare = faces.__class__(
        faces=(
            tuple(f.with_(embedding=None, normed_embedding=None, encoder=None, embeddings={}) for f in tf.faces[0]),
        ),
        image_sizes=faces.image_sizes,
    )
    with pytest.raises(VisageError, match=PL.SWAP_TRAINED_ON):  # faces without the swap embedding
        PL.swap_frames(frame, PL.plan(bare, [1], "by_order"), env["sw"], [src], identity_strength=0.5)


def test_gpen_onnx_engines_templates_and_refusals(env):
    x = torch.rand(2, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    t = load_restorer(env["files"]["gpen512"], engine="torch")
    o = load_restorer(env["files"]["gpen512"], engine="onnxruntime")
    a, b = t(x), o(x)
    assert a.shape == x.shape and (a - b).abs().max() <= 1e-3 and (a - x).abs().mean() > 1e-3
    assert t.size == 512 and t.template == "ffhq_512" and t.arch == "GPEN"
    t256 = load_restorer(env["files"]["gpen256"])
    assert t256.size == 256 and t256.template == "arcface"
    with pytest.raises(ModelFileInvalid, match="face swapper"):
        load_restorer(env["files"]["in128"])
    with pytest.raises(ModelFileInvalid, match="occluder"):
        load_restorer(env["files"]["xseg"])
    with pytest.raises(ModelFileInvalid, match="19-class parser"):
        load_restorer(env["files"]["parser"])
    for engine in ("torch", "onnxruntime"):
        h = MANAGER.get(
            f"test:gpen:{engine}",
            env["files"]["gpen256"],
            lambda p, dv, dt, e=engine: load_restorer(p, "cpu", torch.float32, engine=e),
        )
        rest = Restorer(handle=h, name="GPEN-BFR-256.onnx")
        assert rest.template == "arcface"
        faces, frame = env["faces"], env["frame"]
        idx = torch.zeros(faces.count, dtype=torch.long)
        out = PL.restore_pass(frame, list(faces.faces[0]), idx, rest)
        assert out.shape == frame.shape and (out - frame).abs().max() > 1e-3
        sw, mask, n = PL.swap_frames(frame, PL.plan(faces, [1], "by_order"), env["sw"], [_source()], restorer=rest)
        assert n == faces.count and (sw[0][mask[0] > 0.5] - frame[0][mask[0] > 0.5]).abs().mean() > 0.02


class _TinyLivePortrait:
    """Narrow LivePortrait twins (same structure and keypoint layout), random weights: fast on a CPU."""

    def __init__(self):
        from visage.nodes.expression import networks as N
        from visage.nodes.expression import pipeline as EP

        torch.manual_seed(0)
        m = {k: N.build(k, N.tiny_cfg()) for k in N.KINDS}
        self.appearance = EP.Direct(m["appearance_feature_extractor"])
        self.motion = EP.Direct(m["motion_extractor"])
        self.warping = EP.Direct(m["warping_module"])
        self.spade = EP.Direct(m["spade_generator"])
        self.stitching = EP.Direct(m["stitching_retargeting_module"])
        self.device, self.dtype = torch.device("cpu"), torch.float32


def test_expression_restore(env):
    from visage.nodes.swap.expression_restore import ExpressionRestore, expression_option

    Models = _TinyLivePortrait

    assert expression_option(None, 0.0) is None  # off: no LivePortrait needed
    with pytest.raises(VisageError, match="LivePortrait"):
        expression_option(None, 0.5)
    models = Models()
    opt = expression_option(models, 0.7)
    assert isinstance(opt, ExpressionRestore) and opt.factor == 0.7
    faces, frame = env["faces"], env["frame"]
    plan = PL.plan(faces, [1], "by_order")[:1]
    plain, mask, _ = PL.swap_frames(frame, plan, env["sw"], [_source()])
    out, mask2, n = PL.swap_frames(frame, plan, env["sw"], [_source()], expression=opt)
    assert n == 1 and torch.equal(mask, mask2) and out.shape == frame.shape
    changed = (out - plain).abs().amax(-1)[0] > 1e-4
    assert changed.sum() > 100  # the face was re-rendered
    x1, y1, x2, y2 = plan[0].face.bbox.tolist()
    w = x2 - x1
    far = torch.ones_like(changed)
    far[max(0, int(y1 - 2 * w)) : int(y2 + 2 * w), max(0, int(x1 - 2 * w)) : int(x2 + 2 * w)] = False
    assert not changed[far].any()  # only around the face


def test_expression_restore_keeps_the_hand_the_occlusion_mask_kept(env):
    """The LivePortrait re-render is pasted inside the swap's own mask (box x occlusion): the hand the
    occlusion mask excluded from the swap is not covered again by the expression restore."""
    from visage.nodes.swap.expression_restore import expression_option

    faces = env["faces"]
    face = max(faces.faces[0], key=lambda f: f.area)
    frame, hand = _hand(env["frame"], face)
    plan = [a for a in PL.plan(faces, [1], "by_order") if a.face is face]
    inner = torch.from_numpy(cv2.erode(hand.numpy().astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
    opt = expression_option(_TinyLivePortrait(), 1.0)
    masker = FM.FaceMasker(occluder=FM.load_occluder(env["files"]["xseg"], engine="torch"))
    swapped, smask, _ = PL.swap_frames(frame, plan, env["sw"], [_source()], masker=masker)
    nomask, _, _ = PL.swap_frames(frame, plan, env["sw"], [_source()], expression=opt)
    # without the masker the re-render covers the hand (so the check below can fail)
    assert (nomask[0][inner] - frame[0][inner]).abs().mean() > 0.02
    out, mask, n = PL.swap_frames(frame, plan, env["sw"], [_source()], masker=masker, expression=opt)
    assert n == 1 and torch.equal(mask, smask)
    assert (out[0][inner] - frame[0][inner]).abs().max() <= 2e-3  # the hand stays
    changed = (out - swapped).abs().amax(-1)[0] > 1e-4
    assert changed[~inner].sum() > 100  # the rest of the face was re-rendered
    # nothing outside the swap paste's mask changes
    assert not changed[smask[0] <= 0].any()


def test_bench_identity_zero_runs_on_a_builders_models_dir(env, tmp_path, monkeypatch):
    """``bench/bench_swap.py --identity-zero MODELS_DIR`` end to end on test-built files (the layout a user
    with the released inswapper_128 + buffalo_l has): it measures, and says the swapper is not the
    released one, so its figures are not read as the released model's."""
    import importlib.util
    import os
    import shutil

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.syspath_prepend(os.path.join(root, "bench"))  # bench_swap imports bench/common.py
    spec = importlib.util.spec_from_file_location("bench_swap_t", os.path.join(root, "bench", "bench_swap.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.identity_zero_rows(str(tmp_path))[0]["note"].startswith("skipped: needs")
    ins = tmp_path / "insightface"
    (ins / "models").mkdir(parents=True)
    shutil.copy(env["files"]["in128"], ins / "inswapper_128.onnx")
    build_face_pack(str(ins / "models" / "buffalo_l"))
    (row,) = bench.identity_zero_rows(str(tmp_path))
    assert row["released"] is False and "NOT the released model" in row["note"], row
    assert " 0 face" not in row["shape"] and "mean |diff| under the mask" in row["note"], row
    diff = float(row["note"].split("mean |diff| under the mask ")[1].split("/255")[0])
    assert 0.0 < diff < 255.0

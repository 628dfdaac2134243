"""Restoration inside the swap: restore the swapped crop BEFORE pasting (one resampling, one paste).

The old path (swap, paste, re-take the FFHQ crop from the pasted frame, restore, paste again) is still
reachable as swap_frames(restorer=None) + restore_pass and serves as the comparison.
"""

import cv2
import numpy as np
import pytest
import torch
from builders import swap as SB
from builders.face import build_face_pack
from conftest import insightface_image

from visage.core.model_manager import MANAGER
from visage.nodes import paste as P
from visage.nodes.face.analyzer import load_analyzer
from visage.nodes.swap import pipeline as PL
from visage.nodes.swap.models import load_swapper
from visage.nodes.swap.restore import Restorer, RestorerModule, load_restorer


class _IdNet(torch.nn.Module):
    """A 'restoration network' that returns its input (spandrel networks work in -1..1)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x


class _Handle:
    def __init__(self, module):
        self.module = module
        self.device = torch.device("cpu")

    def model(self):
        return self.module


def identity_restorer(size=512, strength=1.0):
    return Restorer(
        handle=_Handle(RestorerModule(_IdNet(), "RestoreFormer", size).eval()), name="identity", strength=strength
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("swaprestore")
    an = load_analyzer(build_face_pack(str(d / "pack")))
    sw = MANAGER.get(
        "swap:swapper",
        SB.make_inswapper(str(d / "inswapper_128.onnx"), 128),
        lambda p, dv, dt: load_swapper(p, "cpu", dt),
    )
    rf = SB.make_restoreformer(str(d / "RestoreFormer.pth"))
    img = cv2.imread(insightface_image("t1.jpg"))[:, :, ::-1]
    img = cv2.resize(img, (640, 443), interpolation=cv2.INTER_AREA)
    frame = torch.from_numpy(img.copy()).float()[None] / 255.0
    faces = an.analyze(frame)
    assert faces.count >= 2
    src = torch.nn.functional.normalize(
        torch.from_numpy(np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)), dim=-1
    )
    return dict(sw=sw, rf=rf, frame=frame, faces=faces, src=src)


def _count_image_pastes(monkeypatch):
    calls = []
    real = P._kops.paste_back

    def spy(frames, crops, *a, **k):
        if frames.shape[-1] == 3:  # image pastes (the 1-channel MASK output is not an image)
            calls.append(int(crops.shape[1]))
        return real(frames, crops, *a, **k)

    monkeypatch.setattr(P._kops, "paste_back", spy)
    real_host = P.host_paste

    def host_spy(frames, layers, *a, **k):  # host frames: the restore's one paste runs through cv2
        if frames.shape[-1] == 3:
            calls.append(int(layers.shape[1]))
        return real_host(frames, layers, *a, **k)

    monkeypatch.setattr(P, "host_paste", host_spy)
    return calls


def _old_path(env, plan, restorer, **kw):
    out, mask, n = PL.swap_frames(env["frame"], plan, env["sw"], [env["src"]], **kw)
    idx = torch.tensor([a.image_index for a in plan])
    return PL.restore_pass(out, [a.face for a in plan], idx, restorer, kw.get("erode", 0.1), kw.get("blur", 0.1))


def test_restore_before_paste_pastes_once(env, monkeypatch):
    plan = PL.plan(env["faces"], [1], "by_order")[:1]
    calls = _count_image_pastes(monkeypatch)
    PL.swap_frames(env["frame"], plan, env["sw"], [env["src"]], restorer=identity_restorer())
    assert calls == [512]  # one image paste, of the 512-px restored FFHQ crop
    calls.clear()
    _old_path(env, plan, identity_restorer())
    assert calls == [128, 512]  # the old path: swap paste, then restore paste


def _errors(env, plan, **kw):
    """Gray-level differences from the plain swap: (new mean, new max in the face core, old mean, old max)
    over the pasted region (swap MASK > 0.01); the core is where the swap mask is > 0.99."""
    plain, pmask, _ = PL.swap_frames(env["frame"], plan, env["sw"], [env["src"]], **kw)
    new, nmask, _ = PL.swap_frames(env["frame"], plan, env["sw"], [env["src"]], restorer=identity_restorer(), **kw)
    old = _old_path(env, plan, identity_restorer(), **kw)
    assert torch.equal(pmask, nmask)  # the MASK output is the swap's, as before
    region, core = pmask[0] > 0.01, pmask[0] > 0.99 * float(pmask.max())
    e_new, e_old = (new - plain)[0].abs() * 255, (old - plain)[0].abs() * 255
    return (
        float(e_new[region].mean()),
        float(e_new[core].max()),
        float(e_old[region].mean()),
        float(e_old[core].max()),
    )


@pytest.mark.parametrize(
    "faces,kw",
    [(1, {}), (0, {}), (0, dict(color_transfer=True)), (0, dict(mask_type="landmarks")), (1, dict(blend=0.6))],
)
def test_identity_restorer_matches_plain_swap(env, faces, kw):
    plan = PL.plan(env["faces"], [1], "by_order")
    plan = plan[:faces] if faces else plan  # 0 = every face of t1.jpg (neighbouring FFHQ crops overlap)
    mn, mx, omn, omx = _errors(env, plan, **kw)
    print(
        f"identity restorer vs plain swap (gray levels): new mean {mn:.3f} core max {mx:.2f}; "
        f"old mean {omn:.3f} core max {omx:.2f}"
    )
    # The new path still resamples the swapped face twice in total (128 -> FFHQ 512 -> frame, bilinear)
    # against once for the plain swap, and the unswapped ring around it goes frame -> FFHQ -> frame (the
    # restorer's crop is bigger than the swap's, the old path does the same there): a fraction of a gray
    # level on average, a few levels at the sharpest edges of the (random-weight) swapper's output.
    # Colour transfer multiplies every resampling difference by the transfer's gain, in both paths.
    ct = kw.get("color_transfer", False)
    assert mn < 0.5 and mn < omn
    if ct:
        assert mx < 20
    else:
        assert mx < 8 and omx > 1.5 * mx  # the old path (one more resampling, two pastes) is further off


def test_real_restorer_in_the_swap_path(env):
    """A test-built RestoreFormer (spandrel) restores the swapped face; nothing outside the FFHQ crops
    changes; strength 0 gives the identity-restorer result."""
    from visage.nodes.face.align import estimate_norm

    h = MANAGER.get("swap:restorer", env["rf"], lambda p, dv, dt: load_restorer(p, "cpu", dt))
    h.module.size = 128  # the same network on 128-px FFHQ crops keeps this test fast on a CPU
    plan = PL.plan(env["faces"], [1], "by_order")[:2]
    plain, pm, _ = PL.swap_frames(env["frame"], plan, env["sw"], [env["src"]])
    out, m2, n = PL.swap_frames(env["frame"], plan, env["sw"], [env["src"]], restorer=Restorer(h, "rf", 1.0))
    assert n == 2 and torch.equal(pm, m2)
    assert float((out - plain)[0][pm[0] > 0.5].abs().mean()) > 0.02  # the faces were restored
    MF = torch.from_numpy(np.stack([estimate_norm(a.face.kps, 128, "ffhq_512") for a in plan]).astype(np.float32))
    cover = P.paste_masks(env["frame"].shape, MF, P.box_masks(2, 128), torch.zeros(2, dtype=torch.long))
    outside = (cover[0] == 0) & (pm[0] == 0)
    assert torch.equal(out[0][outside], env["frame"][0][outside])
    zero, _, _ = PL.swap_frames(env["frame"], plan, env["sw"], [env["src"]], restorer=Restorer(h, "rf", 0.0))
    ident, _, _ = PL.swap_frames(env["frame"], plan, env["sw"], [env["src"]], restorer=identity_restorer(size=128))
    assert float((zero - ident).abs().max()) < 1e-5


def test_batch_with_restorer_matches_single_frames(env):
    """Faces of different frames never mix: a 3-frame batch (face, no face, face) gives the single-frame
    result on the face frames and the untouched frame in between."""
    from visage.core.types import FaceSet

    faces = env["faces"].faces[0]
    fs = FaceSet(
        faces=(tuple(f.with_(image_index=0) for f in faces), (), tuple(f.with_(image_index=2) for f in faces)),
        image_sizes=env["faces"].image_sizes * 3,
    )
    frames = env["frame"].repeat(3, 1, 1, 1)
    r = identity_restorer()
    out, mask, n = PL.swap_frames(frames, PL.plan(fs, [1], "by_order"), env["sw"], [env["src"]], restorer=r)
    one, _, n1 = PL.swap_frames(
        env["frame"], PL.plan(env["faces"], [1], "by_order"), env["sw"], [env["src"]], restorer=r
    )
    assert n == 2 * n1
    assert float((out[0] - one[0]).abs().max()) < 1e-5 and float((out[2] - one[0]).abs().max()) < 1e-5
    assert torch.equal(out[1], frames[1]) and float(mask[1].max()) == 0.0

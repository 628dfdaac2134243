"""PuLID-FLUX glue without ComfyUI: the block-replace patches (schedule, text/image split, masks, sigma
window, chaining, weight 0), the diffusion-model wrapper, and the face preprocessing (parsing classes,
grey face, facexlib's border colour, the EVA-CLIP input)."""

import copy

import numpy as np
import pytest
import torch
from builders import pulid as PB

from visage.core.errors import VisageError
from visage.core.types import Face, FaceSet
from visage.nodes.pulid import encoders as E
from visage.nodes.pulid import patching as P
from visage.nodes.pulid import preprocess as PP
from visage.nodes.pulid.flux_patch import ca_index


def _cas(n=20, dim=40, kv=24, seed=0):
    torch.manual_seed(seed)
    cas = torch.nn.ModuleList(E.PerceiverAttentionCA(dim=dim, dim_head=128, heads=2, kv_dim=kv) for _ in range(n))
    for p in cas.parameters():
        p.data.normal_(0, 0.2)
    return cas.eval()


class _Module(torch.nn.Module):
    def __init__(self, cas):
        super().__init__()
        self.pulid_ca = cas


def _run(cas, identities, s0=1e9, s1=0.0):
    m = _Module(cas)
    return P.PulidRun(lambda: m, lambda: [], identities, s0, s1)


def _ident(seed=1, w=1.0, mask=None, kv=24):
    g = torch.Generator().manual_seed(seed)
    return P.Identity(torch.randn(1, 6, kv, generator=g), w, mask)


def _double_args(seed=0, b=2, n_img=12, n_txt=5, dim=40, **to):
    g = torch.Generator().manual_seed(seed)
    img, txt = torch.randn(b, n_img, dim, generator=g), torch.randn(b, n_txt, dim, generator=g)
    return {"img": img, "txt": txt, "transformer_options": dict(to)}


def _block(args):
    return {"img": args["img"] * 0.5 + 1.0, "txt": args["txt"] - 1.0}


def test_double_block_adds_the_identity_after_the_block():
    cas = _cas()
    ident = _ident()
    patch = P.PulidBlockPatch("double", 2, [_run(cas, [ident])])
    args = _double_args()
    out = patch(args, {"original_block": _block})
    ref = _block(args)
    k = ca_index("double", 2)
    with torch.no_grad():
        want = ref["img"] + cas[k](ident.tokens.expand(2, -1, -1), ref["img"])
    assert torch.allclose(out["img"], want, atol=1e-6)
    assert torch.equal(out["txt"], ref["txt"])


def test_unscheduled_block_and_weight_zero_are_the_block_exactly():
    cas = _cas()
    args = _double_args()
    ref = _block(args)
    odd = P.PulidBlockPatch("double", 3, [_run(cas, [_ident()])])
    assert torch.equal(odd(args, {"original_block": _block})["img"], ref["img"])
    zero = P.PulidBlockPatch("double", 2, [_run(cas, [_ident(w=0.0)])])
    assert torch.equal(zero(args, {"original_block": _block})["img"], ref["img"])


def test_single_block_patches_image_tokens_only():
    cas = _cas()
    ident = _ident()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 5 + 12, 40, generator=g)
    args = {"img": x, "transformer_options": {P.TXT_LEN: 5}}
    patch = P.PulidBlockPatch("single", 4, [_run(cas, [ident])])
    out = patch(args, {"original_block": lambda a: {"img": a["img"] + 2.0}})["img"]
    base = x + 2.0
    assert torch.equal(out[:, :5], base[:, :5])
    with torch.no_grad():
        want = base[:, 5:] + cas[ca_index("single", 4)](ident.tokens, base[:, 5:])
    assert torch.allclose(out[:, 5:], want, atol=1e-6)
    with pytest.raises(VisageError, match="text tokens"):
        patch({"img": x, "transformer_options": {}}, {"original_block": lambda a: {"img": a["img"]}})


def test_sigma_window():
    cas = _cas()
    run = _run(cas, [_ident()], s0=0.8, s1=0.2)
    patch = P.PulidBlockPatch("double", 0, [run])
    for sigma, active in ((0.9, False), (0.5, True), (0.1, False)):
        args = _double_args(sigmas=torch.tensor([sigma]))
        out = patch(args, {"original_block": _block})["img"]
        assert torch.equal(out, _block(args)["img"]) != active


def test_masks_confine_each_identity_to_its_region():
    cas = _cas()
    left = torch.zeros(8, 8)
    left[:, :4] = 1.0
    a, b = _ident(1, mask=left), _ident(2, mask=1.0 - left)
    args = _double_args(b=1, n_img=16, **{P.GRID: (4, 4)})
    base = _block(args)["img"]
    both = P.PulidBlockPatch("double", 0, [_run(cas, [a, b])])(args, {"original_block": _block})["img"]
    only_a = P.PulidBlockPatch("double", 0, [_run(cas, [P.Identity(a.tokens, 1.0)])])(args, {"original_block": _block})[
        "img"
    ]
    cols = torch.arange(16) % 4
    # the left half of the 4x4 token grid gets identity a exactly; the right half does not
    assert torch.allclose(both[:, cols < 2], only_a[:, cols < 2], atol=1e-6)
    assert not torch.allclose(both[:, cols >= 2], only_a[:, cols >= 2], atol=1e-3)
    assert not torch.allclose(both, base)
    with pytest.raises(VisageError, match="token grid"):
        P.PulidBlockPatch("double", 0, [_run(cas, [a])])(_double_args(b=1, n_img=16), {"original_block": _block})


def test_chaining_runs_previous_patch_and_clones_share_the_patch():
    cas = _cas()
    calls = []

    def foreign(args, extra):
        calls.append(1)
        return extra["original_block"](args)

    p1 = P.PulidBlockPatch("double", 0, [_run(cas, [_ident(1)])], previous=foreign)
    p2 = p1.with_run(_run(cas, [_ident(2)]))
    args = _double_args()
    out2 = p2(args, {"original_block": _block})["img"]
    out1 = p1(args, {"original_block": _block})["img"]
    assert len(calls) == 2 and not torch.allclose(out1, out2)
    assert copy.deepcopy(p2) is p2


class _FakePatcher:
    def __init__(self):
        self.model_options = {"transformer_options": {}}
        self.wrappers = {}

    def get_wrappers(self, t, k):
        return self.wrappers.get(t, {}).get(k, [])

    def add_wrapper_with_key(self, t, k, fn):
        self.wrappers.setdefault(t, {}).setdefault(k, []).append(fn)


def test_install_puts_patches_on_the_schedule_and_one_wrapper():
    m = _FakePatcher()
    run = _run(_cas(), [_ident()])
    P.install(m, run, 19, 38)
    dit = m.model_options["transformer_options"]["patches_replace"]["dit"]
    assert sorted(k for k in dit if k[0] == "double_block") == [("double_block", i) for i in range(0, 19, 2)]
    assert sorted(k for k in dit if k[0] == "single_block") == [("single_block", j) for j in range(0, 38, 4)]
    assert len(dit) == 20
    P.install(m, _run(_cas(), [_ident(3)]), 19, 38)
    assert all(len(p.runs) == 2 for p in dit.values())
    assert len(m.get_wrappers("diffusion_model", P.WRAPPER_KEY)) == 1


def test_wrapper_records_text_length_and_grid_in_a_copy():
    seen = {}

    def executor(x, t, ctx, y, guidance, ref, control, to, **kw):
        seen.update(to)
        return x

    to = {"a": 1}
    P.record_shapes(executor, torch.zeros(1, 16, 7, 10), None, torch.zeros(1, 9, 4), None, None, None, None, to)
    assert seen[P.TXT_LEN] == 9 and seen[P.GRID] == (4, 5) and seen["a"] == 1
    assert P.TXT_LEN not in to


# ---------------------------------------------------------------------------------- preprocessing


def test_background_classes_become_white_and_the_face_grey():
    crops = torch.rand(1, 4, 4, 3)
    labels = torch.tensor([[[0, 1, 16, 18], [7, 8, 9, 14], [15, 2, 10, 13], [17, 4, 5, 6]]], dtype=torch.uint8)
    img = PP.face_features_image(crops, labels)
    x = crops.permute(0, 3, 1, 2)
    grey = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for r in range(4):
        for c in range(4):
            if int(labels[0, r, c]) in PP.BG_LABELS:
                assert torch.equal(img[0, :, r, c], torch.ones(3))
            else:
                assert torch.allclose(img[0, :, r, c], grey[0, r, c].expand(3))
    assert PP.BG_LABELS == (0, 16, 18, 7, 8, 9, 14, 15)


def test_eva_input_matches_torchvision_resize_and_openai_norm():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode

    x = torch.rand(1, 3, 64, 64)
    ours = PP.eva_input(x, 28)
    ref = tvf.normalize(tvf.resize(x, 28, InterpolationMode.BICUBIC, antialias=True), PP.EVA_MEAN, PP.EVA_STD)
    assert torch.allclose(ours, ref, atol=1e-5)


def _face(kps, i=0):
    return Face(
        image_index=i,
        bbox=torch.tensor([0.0, 0.0, 10.0, 10.0]),
        score=0.9,
        kps=torch.as_tensor(kps, dtype=torch.float32),
        embedding=torch.ones(512),
        normed_embedding=torch.ones(512) / 512**0.5,
    )


def test_aligned_face_uses_facexlib_border_colour():
    from visage.nodes.face.align import FFHQ_512

    img = torch.full((1, 600, 600, 3), 0.25)
    inside = FaceSet(faces=((_face(FFHQ_512 + 44.0),),), image_sizes=((600, 600),))
    crops = PP.aligned_faces(img, inside)
    assert crops.shape == (1, 512, 512, 3)
    assert torch.allclose(crops[0, 256, 256], torch.full((3,), 0.25), atol=1e-4)
    # the face near the corner: the crop reaches outside the image -> facexlib's border colour there
    corner = FaceSet(faces=((_face(FFHQ_512 - 250.0),),), image_sizes=((600, 600),))
    c = PP.aligned_faces(img, corner)
    assert torch.allclose(c[0, 5, 5], torch.tensor(PP.BORDER_RGB), atol=1e-4)
    assert torch.allclose(c[0, 500, 500], torch.full((3,), 0.25), atol=1e-4)


def test_identity_tokens_one_per_face():
    cfg = dict(PB.TINY_IDFORMER)
    cfg["mlp_hidden"] = cfg.pop("hidden")
    cfg.update(vit_width=64, id_width=512 + 24)
    enc = E.IDFormer(**cfg).eval()
    from builders import eva_clip as EB

    from visage.nodes.pulid import eva_clip as EC

    eva = EC.load_state_dict(EB.random_checkpoint(seed=2))
    emb = torch.randn(2, 512)
    imgs = torch.rand(2, 3, 512, 512)
    toks = PP.identity_tokens(enc, eva, emb, imgs)
    assert len(toks) == 2 and toks[0].shape == (1, cfg["num_queries"], cfg["output_dim"])
    # each face's tokens depend on its own inputs only
    again = PP.identity_tokens(enc, eva, emb[1:], imgs[1:])
    assert torch.allclose(again[0], toks[1], atol=1e-5)
    assert not torch.allclose(toks[0], toks[1])
    assert np.isfinite(toks[0].numpy()).all()


# ------------------------------------------------------------------------------ apply's checks


class _DM:
    def __init__(self, double=19, single=38, width=40):
        self.double_blocks = [None] * double
        self.single_blocks = [None] * single
        self.params = type("P", (), {"hidden_size": width})()


class _Model:
    def __init__(self, dm):
        self.dm = dm

    def get_model_object(self, name):
        return self.dm


def _ref(kind="pulid_flux", ca_dim=40, num_ca=20):
    from visage.nodes.pulid.flux_apply import PulidRef
    from visage.nodes.pulid.loaders import PulidInfo

    return PulidRef(None, PulidInfo(kind, "IDFormer", 32, 2048, num_ca=num_ca, ca_dim=ca_dim), "x")


def _apply(model, ref, faces=None, **kw):
    from visage.nodes.pulid.flux_apply import apply_pulid_flux

    faces = faces or FaceSet(faces=((),), image_sizes=((64, 64),))
    args = dict(weight=1.0, start_at=0.0, end_at=1.0, on_no_face="passthrough")
    args.update(kw)
    return apply_pulid_flux(model, ref, None, None, faces, torch.zeros(1, 64, 64, 3), **args)


def test_apply_refuses_what_does_not_fit():
    flux = _Model(_DM())
    with pytest.raises(VisageError, match="PuLID-FLUX file"):
        _apply(flux, _ref(kind="pulid_sdxl_v1_1"))
    with pytest.raises(VisageError, match="needs a Flux model"):
        _apply(_Model(object()), _ref())
    with pytest.raises(VisageError, match="does not fit the model"):
        _apply(_Model(_DM(width=64)), _ref())
    with pytest.raises(VisageError, match="end_at is before start_at"):
        _apply(flux, _ref(), start_at=0.6, end_at=0.2)


def test_apply_without_a_face_passes_the_model_through_or_stops():
    flux = _Model(_DM())
    assert _apply(flux, _ref()) is flux
    with pytest.raises(VisageError):
        _apply(flux, _ref(), on_no_face="error")

"""PuLID SDXL on a tiny SDXL UNet built with ComfyUI's own classes (in-process, no server): the patch goes
on a ModelPatcher clone only, changes the sampled latent, and weight 0, a window outside the schedule or
sampling the input model again give the unpatched latent exactly; regional identities stay in their masks.

The identity tokens come from a tiny PuLID file (released names, tiny widths matching the tiny UNet) on
random inputs: this tier checks the ComfyUI side; the token and attention maths are the unit tier's.
"""

import os
import sys

import pytest
import torch
from builders import pulid as B

COMFY = os.environ.get("COMFYUI_PATH", "/opt/ComfyUI")
NODES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "comfy_nodes")
CTX = 24  # the tiny PuLID token width = the tiny UNet's context width


@pytest.fixture(scope="module")
def comfy():
    if not os.path.isfile(os.path.join(COMFY, "comfy", "sample.py")):
        pytest.skip("ComfyUI not found")
    for p in (COMFY, NODES):
        if p not in sys.path:
            sys.path.insert(0, p)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.sample
    from comfy.ldm.modules.attention import optimized_attention
    from visage_test_models import tiny_sdxl

    def text_attention(q, k, v, eo):
        return optimized_attention(q, k, v, eo["n_heads"], attn_precision=eo.get("attn_precision"))

    return comfy, tiny_sdxl, text_attention


@pytest.fixture(scope="module")
def setup(comfy):
    c, tiny, text_attention = comfy
    from visage.nodes.pulid import loaders as L

    model, _ = tiny.build_tiny_sdxl(seed=0, model_channels=32, context_dim=CTX)
    widths = tiny.cross_attention_widths(32)
    pulid = {}
    for kind, layout in (
        (L.SDXL_V1, B.sdxl_v1_layout(B.TINY_IDENCODER, widths, CTX)),
        (L.SDXL_V1_1, B.sdxl_v1_1_layout(B.TINY_IDFORMER, widths, CTX)),
    ):
        pulid[kind] = L.load_state_dict(B.random_state_dict(layout, seed=7))
    pos = tiny.tiny_conditioning(1, CTX)
    neg = tiny.tiny_conditioning(2, CTX)
    return model, pulid, pos, neg, text_attention


@pytest.fixture(scope="module")
def plain(comfy, setup):
    model, _, pos, neg, _ = setup
    return _sample(comfy, model, pos, neg)


def _sample(comfy, model, pos, neg):
    c = comfy[0]
    latent = torch.zeros(1, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(3))
    return c.sample.sample(model, noise, 2, 3.0, "euler", "normal", pos, neg, latent, disable_pbar=True, seed=3)


def _kv(module, kind, n_refs=2, groups=((0, 2),), num_zero=8, seed=5):
    from visage.nodes.pulid import sdxl_apply as A

    g = torch.Generator().manual_seed(seed)
    idc = torch.randn(n_refs, 20, generator=g)
    hid = [torch.randn(n_refs, 9, 16, generator=g) for _ in range(5)]
    return A.identity_kv(module, kind, idc, hid, groups, num_zero)


def _patched(setup, kind, weight=0.8, start=0.0, end=1.0, projection="ortho_v2", masks=None, groups=((0, 2),)):
    from visage.nodes.pulid import sdxl as S

    model, pulid, _, _, text_attention = setup
    m = pulid[kind]
    ms = model.get_model_object("model_sampling")
    kv = _kv(m, kind, n_refs=groups[-1][1], groups=groups)
    return S.apply_patch(
        model,
        m.info,
        kv,
        weight,
        ms.percent_to_sigma(start),
        ms.percent_to_sigma(end),
        masks,
        projection,
        text_attention,
    )


def test_patch_changes_output_and_weight_zero_or_removal_is_exact(comfy, setup, plain):
    # v1.1 here (v1 changes the sample in test_other_methods and through the server in test_pulid_sdxl_nodes)
    kind = "pulid_sdxl_v1_1"
    model, _, pos, neg, _ = setup
    patched = _patched(setup, kind)
    assert patched is not model
    assert "patches_replace" not in model.model_options.get("transformer_options", {})
    out = _sample(comfy, patched, pos, neg)
    assert not torch.allclose(out, plain, atol=1e-5)
    assert torch.equal(_sample(comfy, _patched(setup, kind, weight=0.0), pos, neg), plain)
    # outside the window: the patch stays installed but never runs; a window over the first step only
    # (2 steps: sigma_max, then sigma_min) differs from both the plain and the whole-schedule output
    assert torch.equal(_sample(comfy, _patched(setup, kind, start=1.0, end=1.0), pos, neg), plain)
    early = _sample(comfy, _patched(setup, kind, start=0.0, end=0.3), pos, neg)
    assert not torch.allclose(early, plain, atol=1e-5) and not torch.allclose(early, out, atol=1e-5)
    # the input model after all that: exactly the unpatched output (nothing global, nothing left behind)
    assert torch.equal(_sample(comfy, model, pos, neg), plain)


@pytest.mark.parametrize("projection", ["none", "ortho"])
def test_other_methods_change_the_output(comfy, setup, plain, projection):
    model, _, pos, neg, _ = setup
    out = _sample(comfy, _patched(setup, "pulid_sdxl_v1", projection=projection), pos, neg)
    assert not torch.allclose(out, plain, atol=1e-5)


def test_two_identities_with_masks_and_stacking(comfy, setup, plain):
    model, _, pos, neg, _ = setup
    masks = torch.zeros(2, 64, 64)
    masks[0, :, :32] = 1
    masks[1, :, 32:] = 1
    two = _patched(setup, "pulid_sdxl_v1_1", masks=masks, groups=((0, 1), (1, 2)))
    out = _sample(comfy, two, pos, neg)
    assert not torch.allclose(out, plain, atol=1e-5)
    # a second application on the patched clone stacks (one patch object holding both entries)
    from visage.nodes.pulid import sdxl as S

    _, pulid, _, _, text_attention = setup
    m = pulid["pulid_sdxl_v1"]
    ms = two.get_model_object("model_sampling")
    again = S.apply_patch(
        two, m.info, _kv(m, "pulid_sdxl_v1"), 0.5, ms.percent_to_sigma(0), 0.0, None, "none", text_attention
    )
    patches = set(map(id, again.model_options["transformer_options"]["patches_replace"]["attn2"].values()))
    assert len(patches) == 1
    (p,) = {id(v): v for v in again.model_options["transformer_options"]["patches_replace"]["attn2"].values()}.values()
    assert isinstance(p, S.PulidSDXLPatch) and len(p.entries) == 2
    assert not torch.equal(_sample(comfy, again, pos, neg), out)
    assert torch.equal(_sample(comfy, two, pos, neg), out)


def test_wrong_model_is_refused(comfy, setup):
    from visage.core.errors import VisageError

    c, tiny, _ = comfy
    other, _ = tiny.build_tiny_sdxl(seed=1, model_channels=64, context_dim=CTX)
    from visage.nodes.pulid import sdxl as S

    _, pulid, _, _, text_attention = setup
    m = pulid["pulid_sdxl_v1"]
    with pytest.raises(VisageError, match="does not fit"):
        S.apply_patch(other, m.info, _kv(m, "pulid_sdxl_v1"), 1.0, 1e9, 0.0, None, "none", text_attention)

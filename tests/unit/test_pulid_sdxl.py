"""PuLID SDXL maths: token counts of v1 / v1.1 with several references, the K/V of the zero tokens, the
projections' invariants, the attn2 patch (weight 0 / outside the window = the unpatched attention,
cond/uncond rows, masks), the IP-Adapter re-save giving the same tokens.

Parity with the official modules (IDAttnProcessor2_0 in a diffusers Attention, IDEncoder / IDFormer and
the demos' reference stacking) and with the community pack's pulid_attention was measured locally
(see the closing note of the branch); these tests hold layouts, shapes and invariants.
"""

import pytest
import torch
import torch.nn.functional as F
from builders import pulid as B

from visage.core.errors import VisageError
from visage.nodes.adapters.attention import IdentityEntry
from visage.nodes.pulid import loaders as L
from visage.nodes.pulid import sdxl as S

TOK = 24  # TINY token width (context of the tiny layers)


def _model(kind, seed=0):
    layout = (
        B.sdxl_v1_layout(B.TINY_IDENCODER, B.TINY_WIDTHS, TOK)
        if kind == L.SDXL_V1
        else B.sdxl_v1_1_layout(B.TINY_IDFORMER, B.TINY_WIDTHS, TOK)
    )
    return L.load_state_dict(B.random_state_dict(layout, seed)), layout


def _inputs(n, seed=1, tokens=9):
    g = torch.Generator().manual_seed(seed)
    idc = torch.randn(n, 20, generator=g)
    return idc, [torch.randn(n, tokens, 16, generator=g) for _ in range(5)]


def test_v1_tokens_first_reference_whole_then_five_each():
    m, _ = _model(L.SDXL_V1)
    idc, hid = _inputs(3)
    c, u = S.sdxl_tokens(m.encoder, m.kind, idc, hid)
    assert c.shape == u.shape == (1, 8 + 3 + 3, TOK)  # num_token 3 + 5 scales = 8, then 3 per extra ref
    one, _ = S.sdxl_tokens(m.encoder, m.kind, idc[1:2], [h[1:2] for h in hid])
    torch.testing.assert_close(c[:, 8:11], one[:, :3])
    mixed, umixed = S.sdxl_tokens(m.encoder, m.kind, idc, hid, id_mix=True)
    assert mixed.shape == umixed.shape == (1, 24, TOK)
    # the negative is the encoder on zeros: the same for every reference
    z, _ = S.sdxl_tokens(m.encoder, m.kind, torch.zeros(1, 20), [torch.zeros(1, 9, 16)] * 5)
    torch.testing.assert_close(u[:, :8], z)


def test_v1_1_tokens_stack_references():
    m, _ = _model(L.SDXL_V1_1)
    idc, hid = _inputs(3)
    c, u = S.sdxl_tokens(m.encoder, m.kind, idc, hid)
    nq = B.TINY_IDFORMER["num_queries"]
    assert c.shape == u.shape == (1, nq, TOK)
    # stacking = the encoder on [1, N, 1280] and the hidden states concatenated along the tokens
    ref = m.encoder(idc.unsqueeze(0), [h.reshape(1, -1, 16) for h in hid])
    torch.testing.assert_close(c, ref)
    # the order of references matters only through the concatenation, and 2 refs differ from 1
    c1, _ = S.sdxl_tokens(m.encoder, m.kind, idc[:1], [h[:1] for h in hid])
    assert not torch.allclose(c, c1)


def test_tokens_refuse_misaligned_inputs():
    m, _ = _model(L.SDXL_V1)
    idc, hid = _inputs(2)
    with pytest.raises(VisageError):
        S.sdxl_tokens(m.encoder, m.kind, idc, [h[:1] for h in hid])


def test_zero_tokens_have_zero_keys_and_values():
    m, _ = _model(L.SDXL_V1)
    c, u = S.sdxl_tokens(m.encoder, m.kind, *_inputs(1))
    kv = S.project_kv(m.layers, c, u, num_zero=4)
    assert len(kv) == len(B.TINY_WIDTHS)
    for (k, v), w in zip(kv, B.TINY_WIDTHS):
        assert k.shape == v.shape == (2, 1, 8 + 4, w)
        assert torch.count_nonzero(k[:, :, 8:]) == 0 and torch.count_nonzero(v[:, :, 8:]) == 0
        assert torch.count_nonzero(k[:, :, :8]) > 0


@pytest.mark.parametrize(
    "method, kind, want",
    [
        ("official", L.SDXL_V1, (8, "ortho_v2")),
        ("official", L.SDXL_V1_1, (20, "ortho_v2")),
        ("official style", L.SDXL_V1, (16, "ortho")),
        ("fidelity", L.SDXL_V1, (8, "ortho_v2_community")),
        ("style", L.SDXL_V1_1, (16, "ortho")),
        ("neutral", L.SDXL_V1, (0, "none")),
    ],
)
def test_method_settings(method, kind, want):
    assert S.method_settings(method, kind) == want


def _qkv(b=2, lq=12, t=6, heads=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return r(b, lq, heads * d), r(b, lq, heads * d), r(b, t, heads * d), r(b, t, heads * d)


def test_projections_formulas():
    h, q, k, v = _qkv()
    heads = 2
    a = S.identity_term(h, q, k, v, heads, "none")
    qh = q.view(2, 12, 2, 8).transpose(1, 2)
    kh, vh = (x.view(2, 6, 2, 8).transpose(1, 2) for x in (k, v))
    ref = (torch.softmax(qh @ kh.transpose(-1, -2) / 8**0.5, -1) @ vh).transpose(1, 2).reshape(2, 12, 16)
    torch.testing.assert_close(a, ref)
    # ortho: per channel, orthogonal to h over the image tokens
    o = S.identity_term(h, q, k, v, heads, "ortho")
    assert float((o * h).sum(-2).abs().max()) < 1e-4
    # ortho_v2: a + (m - 1) p with m in [0, 1] per image token
    p = a - o
    o2 = S.identity_term(h, q, k, v, heads, "ortho_v2")
    m = ((o2 - a) / p + 1)[..., :1]  # (m - 1) p = o2 - a
    m_ref = torch.softmax(qh @ kh.transpose(-1, -2), -1).mean(1)[..., :5].sum(-1, keepdim=True)
    torch.testing.assert_close(m, m_ref, rtol=1e-3, atol=1e-4)
    # community variant: one m per batch row
    o3 = S.identity_term(h, q, k, v, heads, "ortho_v2_community")
    mc = (o3 - a) / p + 1
    assert float(mc.std(dim=(1, 2)).max()) < 1e-3
    with pytest.raises(ValueError):
        S.identity_term(h, q, k, v, heads, "bogus")


def _patch(weights=0.8, projection="ortho_v2", masks=None, sigma_start=float("inf"), sigma_end=0.0, n=1, seed=3):
    g = torch.Generator().manual_seed(seed)
    kv = [(torch.randn(2, n, 5, 16, generator=g), torch.randn(2, n, 5, 16, generator=g))]
    entry = IdentityEntry(kv, {("input", 1, 0): 0}, weights, sigma_start, sigma_end, masks)
    return S.PulidSDXLPatch([entry], [projection], text_attention=None)


def _eo(**kw):
    eo = {"n_heads": 2, "block": ("input", 1), "block_index": 0, "cond_or_uncond": [1, 0]}
    eo.update(kw)
    return eo


def _sdpa(q, k, v):
    b, lq, _ = q.shape
    h = lambda x: x.view(b, -1, 2, 8).transpose(1, 2)  # noqa: E731
    return F.scaled_dot_product_attention(h(q), h(k), h(v)).transpose(1, 2).reshape(b, lq, -1)


def test_patch_weight_zero_window_and_foreign_block_are_the_plain_attention():
    _, q, k, v = _qkv(t=7)
    plain = _sdpa(q, k, v)
    assert torch.equal(_patch(0.0)(q, k, v, _eo()), plain)
    assert torch.equal(_patch(sigma_start=5.0, sigma_end=1.0)(q, k, v, _eo(sigmas=torch.tensor([9.0]))), plain)
    assert torch.equal(_patch()(q, k, v, _eo(block=("output", 2))), plain)
    assert not torch.allclose(_patch()(q, k, v, _eo()), plain)
    assert not torch.allclose(_patch(sigma_start=5.0)(q, k, v, _eo(sigmas=torch.tensor([3.0]))), plain)


def test_patch_rows_take_cond_or_uncond_tokens():
    _, q, k, v = _qkv(t=7)
    p = _patch(projection="none")
    out = p(q, k, v, _eo(cond_or_uncond=[1, 0]))
    e = p.entries[0]
    kk, vv = e.kv(0)
    plain = _sdpa(q, k, v)
    for row, which in ((0, 1), (1, 0)):
        term = S.identity_term(plain[row : row + 1], q[row : row + 1], kk[which], vv[which], 2, "none")
        torch.testing.assert_close(out[row : row + 1], plain[row : row + 1] + 0.8 * term)


def test_patch_masks_confine_each_identity():
    _, q, k, v = _qkv(lq=16, t=7)  # 4x4 tokens
    masks = torch.zeros(2, 4, 4)
    masks[0, :, :2] = 1
    masks[1, :, 2:] = 1
    eo = _eo(original_shape=[2, 4, 4, 4], activations_shape=[2, 16, 4, 4])
    both = _patch(projection="none", masks=masks, n=2)(q, k, v, eo)
    plain = _sdpa(q, k, v)
    left = _patch(projection="none", weights=[0.8, 0.0], masks=masks, n=2)(q, k, v, eo)
    cols = torch.arange(16) % 4
    # identity 0 only changes the left half, identity 1 only the right half
    torch.testing.assert_close(left[:, cols >= 2], plain[:, cols >= 2])
    assert not torch.allclose(left[:, cols < 2], plain[:, cols < 2])
    torch.testing.assert_close(both[:, cols < 2], left[:, cols < 2])


def test_patch_is_shared_by_clones_and_stacks():
    import copy

    p = _patch()
    assert copy.deepcopy(p) is p
    _, q, k, v = _qkv(t=7)
    p2 = p.with_entry(p.entries[0], "none")
    assert len(p.entries) == 1 and len(p2.entries) == 2
    one = p(q, k, v, _eo())
    two = p2(q, k, v, _eo())
    assert not torch.allclose(one, two)


def test_match_layers_refuses_another_model():
    m, _ = _model(L.SDXL_V1)
    blocks = [(("input", i, 0), w, TOK) for i, w in enumerate(B.TINY_WIDTHS)]
    assert S.match_sdxl_layers(m.info, blocks) == {("input", i, 0): i for i in range(3)}
    with pytest.raises(VisageError, match="does not fit"):
        S.match_sdxl_layers(m.info, [(("input", 1, 0), 40, 768)])


def test_ip_adapter_resave_gives_the_same_tokens_and_kv(tmp_path):
    layout = B.sdxl_v1_layout(B.TINY_IDENCODER, B.TINY_WIDTHS, TOK)
    sd = B.random_state_dict(layout, seed=5)
    renamed = {
        k.replace("id_adapter_attn_layers.", "ip_adapter.")
        .replace("id_adapter.", "image_proj.")
        .replace(".id_to_k.", ".to_k_ip.")
        .replace(".id_to_v.", ".to_v_ip."): v.half()
        for k, v in sd.items()
    }
    a = L.load_pulid(B.write(str(tmp_path / "pulid_v1.bin"), {k: v.half() for k, v in sd.items()}))
    b = L.load_pulid(B.write(str(tmp_path / "ip-adapter_pulid_sdxl_fp16.safetensors"), renamed))
    x = _inputs(2)
    ta = S.sdxl_tokens(a.encoder.float(), a.kind, *x)
    tb = S.sdxl_tokens(b.encoder.float(), b.kind, *x)
    assert all(torch.equal(i, j) for i, j in zip(ta, tb))
    ka = S.project_kv(a.layers.float(), *ta, 8)
    kb = S.project_kv(b.layers.float(), *tb, 8)
    assert all(torch.equal(i[0], j[0]) and torch.equal(i[1], j[1]) for i, j in zip(ka, kb))


# ------------------------------------------------------------------------------ apply (no ComfyUI)


def test_groups_split_faces_per_identity():
    from visage.nodes.pulid import sdxl_apply as A

    assert A.groups_for(3, None) == [(0, 3)]
    assert A.groups_for(4, torch.zeros(2, 8, 8)) == [(0, 2), (2, 4)]
    assert A.groups_for(2, torch.zeros(8, 8)) == [(0, 2)]
    with pytest.raises(VisageError, match="cannot be split"):
        A.groups_for(3, torch.zeros(2, 8, 8))


def test_identity_kv_stacks_identities_with_zero_tokens():
    from visage.nodes.pulid import sdxl_apply as A

    m, _ = _model(L.SDXL_V1_1)
    idc, hid = _inputs(4)
    kv = A.identity_kv(m, m.kind, idc, hid, [(0, 2), (2, 4)], num_zero=3)
    nq = B.TINY_IDFORMER["num_queries"]
    for (k, v), w in zip(kv, B.TINY_WIDTHS):
        assert k.shape == v.shape == (2, 2, nq + 3, w)
    # identity 1 = its two references alone
    one = A.identity_kv(m, m.kind, idc[2:], [h[2:] for h in hid], [(0, 2)], num_zero=3)
    torch.testing.assert_close(kv[0][0][:, 1], one[0][0][:, 0])


def test_apply_refuses_a_flux_file_and_a_reversed_window():
    from types import SimpleNamespace

    from visage.nodes.pulid import sdxl_apply as A

    flux = SimpleNamespace(info=SimpleNamespace(kind=L.FLUX))
    with pytest.raises(VisageError, match="PuLID SDXL"):
        A.apply_pulid_sdxl(None, flux, None, None, None, None, 1.0, 0.0, 1.0)
    m, _ = _model(L.SDXL_V1)
    with pytest.raises(VisageError, match="end_at"):
        A.apply_pulid_sdxl(None, m, None, None, None, None, 1.0, 0.6, 0.2)

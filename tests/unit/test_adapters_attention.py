"""Our attn2 patch vs diffusers' IPAdapterAttnProcessor2_0 (float32, tol 1e-4), SD1.5 / SDXL shapes."""

import copy

import pytest
import torch

from visage.core.errors import VisageError
from visage.nodes.adapters import attention as A
from visage.nodes.adapters.loaders import IPLayer

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0  # noqa: E402

BLOCK = ("input", 4, 1)

SHAPES = {  # query width, context width, heads, (h, w) of the block's latent
    "sd15": (320, 768, 8, (16, 12)),
    "sdxl": (640, 2048, 10, (12, 16)),
}


def _setup(kind, n_id=1, tokens=4, seed=0):
    torch.manual_seed(seed)
    qd, cd, heads, hw = SHAPES[kind]
    attn = Attention(query_dim=qd, cross_attention_dim=cd, heads=heads, dim_head=qd // heads).eval()
    proc = IPAdapterAttnProcessor2_0(hidden_size=qd, cross_attention_dim=cd, num_tokens=(tokens,), scale=1.0)
    ip = IPLayer(cd, qd)
    with torch.no_grad():
        for p in list(attn.parameters()) + list(ip.parameters()):
            p.normal_(0, 0.05)
        proc.to_k_ip[0].weight.copy_(ip.to_k_ip.weight)
        proc.to_v_ip[0].weight.copy_(ip.to_v_ip.weight)
    attn.set_processor(proc)
    cond = torch.randn(n_id, tokens, cd)
    uncond = torch.randn(n_id, tokens, cd) * 0.1
    return attn, proc, torch.nn.ModuleList([ip]), cond, uncond, heads, hw


def _ours(attn, patch, x, ctx, heads, hw, cond_or_uncond, sigmas=None):
    q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
    B = x.shape[0]
    extra = {
        "n_heads": heads,
        "dim_head": q.shape[-1] // heads,
        "block": BLOCK[:2],
        "block_index": BLOCK[2],
        "cond_or_uncond": cond_or_uncond,
        "activations_shape": [B, q.shape[-1], hw[0], hw[1]],
        "original_shape": [B, 4, hw[0], hw[1]],
    }
    if sigmas is not None:
        extra["sigmas"] = sigmas
    return attn.to_out[0](patch(q, k, v, extra))


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_single_identity_cond_uncond_matches_diffusers(kind):
    attn, proc, ip, cond, uncond, heads, hw = _setup(kind, tokens=16 if kind == "sdxl" else 4)
    kv = A.project_identity_kv(ip, cond, uncond)
    entry = A.IdentityEntry(kv, {BLOCK: 0}, weights=0.8)
    patch = A.IdentityAttentionPatch([entry])
    B = 4  # ComfyUI batch: [uncond x2, cond x2] when cond_or_uncond = [1, 0]
    x = torch.randn(B, hw[0] * hw[1], SHAPES[kind][0])
    ctx = torch.randn(B, 77, SHAPES[kind][1])
    with torch.no_grad():
        ours = _ours(attn, patch, x, ctx, heads, hw, [1, 0])
        proc.scale = [0.8]
        ip_tokens = torch.cat([uncond.expand(2, -1, -1), cond.expand(2, -1, -1)])
        theirs = attn(x, encoder_hidden_states=(ctx, [ip_tokens]))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # and the identity really changes the output
    with torch.no_grad():
        plain = attn.to_out[0](A._sdpa_heads(attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx), heads))
    assert (ours - plain).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_two_identities_with_region_masks_match_diffusers(kind):
    attn, proc, ip, cond, uncond, heads, hw = _setup(kind, n_id=2, seed=1)
    masks = torch.zeros(2, *hw)
    masks[0, :, : hw[1] // 2] = 1.0
    masks[1, :, hw[1] // 2 :] = 1.0
    masks[1, 0, 0] = 0.5  # soft value somewhere
    kv = A.project_identity_kv(ip, cond, uncond)
    patch = A.IdentityAttentionPatch([A.IdentityEntry(kv, {BLOCK: 0}, weights=[1.0, 0.7], masks=masks)])
    B = 2
    x = torch.randn(B, hw[0] * hw[1], SHAPES[kind][0])
    ctx = torch.randn(B, 77, SHAPES[kind][1])
    with torch.no_grad():
        ours = _ours(attn, patch, x, ctx, heads, hw, [0, 1])  # row 0 cond, row 1 uncond
        proc.scale = [[1.0, 0.7]]
        ip_tokens = torch.stack([cond, uncond])  # [B, I, T, C]
        theirs = attn(x, encoder_hidden_states=(ctx, [ip_tokens]), ip_adapter_masks=[masks.unsqueeze(0)])
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_calls_kernel_op_and_projects_once(monkeypatch):
    attn, proc, ip, cond, uncond, heads, hw = _setup("sd15")
    calls = []
    real = A.ops.decoupled_attention

    def spy(*a, **k):
        calls.append(a[3].shape)
        return real(*a, **k)

    monkeypatch.setattr(A.ops, "decoupled_attention", spy)
    patch = A.IdentityAttentionPatch([A.IdentityEntry(A.project_identity_kv(ip, cond, uncond), {BLOCK: 0}, 1.0)])
    x = torch.randn(2, hw[0] * hw[1], 320)
    ctx = torch.randn(2, 77, 768)
    with torch.no_grad():
        for _ in range(5):  # five sampling steps
            _ours(attn, patch, x, ctx, heads, hw, [0, 1])
    assert len(calls) == 5 and calls[0] == (2, heads, 1, 4, 40)
    assert patch.projections == 1  # identity K/V prepared once, reused every step


def test_sigma_window_and_weight_zero():
    attn, proc, ip, cond, uncond, heads, hw = _setup("sd15")
    kv = A.project_identity_kv(ip, cond, uncond)
    patch = A.IdentityAttentionPatch([A.IdentityEntry(kv, {BLOCK: 0}, 1.0, sigma_start=10.0, sigma_end=2.0)])
    x = torch.randn(1, hw[0] * hw[1], 320)
    ctx = torch.randn(1, 77, 768)
    with torch.no_grad():
        plain = attn.to_out[0](A._sdpa_heads(attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx), heads))
        inside = _ours(attn, patch, x, ctx, heads, hw, [0], sigmas=torch.tensor([5.0]))
        before = _ours(attn, patch, x, ctx, heads, hw, [0], sigmas=torch.tensor([14.0]))
        after = _ours(attn, patch, x, ctx, heads, hw, [0], sigmas=torch.tensor([1.0]))
    assert (inside - plain).abs().max() > 1e-3
    torch.testing.assert_close(before, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, plain, atol=1e-5, rtol=1e-5)
    # a block the adapter does not know is left alone
    other = {"n_heads": heads, "block": ("output", 0), "block_index": 0, "cond_or_uncond": [0]}
    q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
    torch.testing.assert_close(patch(q, k, v, other), A._sdpa_heads(q, k, v, heads))


def test_stacking_two_applications_equals_sum_and_leaves_first_untouched():
    attn, proc, ip, cond, uncond, heads, hw = _setup("sd15", tokens=4)
    _, _, ip2, cond2, uncond2, _, _ = _setup("sd15", tokens=16, seed=7)
    e1 = A.IdentityEntry(A.project_identity_kv(ip, cond, uncond), {BLOCK: 0}, 0.5)
    e2 = A.IdentityEntry(A.project_identity_kv(ip2, cond2, uncond2), {BLOCK: 0}, 0.9)
    p1 = A.IdentityAttentionPatch([e1])
    p12 = p1.with_entry(e2)
    assert len(p1.entries) == 1 and len(p12.entries) == 2
    x = torch.randn(1, hw[0] * hw[1], 320)
    ctx = torch.randn(1, 77, 768)
    q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
    ex = {"n_heads": heads, "block": BLOCK[:2], "block_index": BLOCK[2], "cond_or_uncond": [0]}
    with torch.no_grad():
        base = A._sdpa_heads(q, k, v, heads)
        only2 = A.IdentityAttentionPatch([e2])(q, k, v, ex) - base
        both = p12(q, k, v, ex)
        torch.testing.assert_close(both, p1(q, k, v, ex) + only2, atol=1e-5, rtol=1e-5)


def test_foreign_previous_patch_is_kept():
    attn, proc, ip, cond, uncond, heads, hw = _setup("sd15")
    seen = []

    def foreign(q, k, v, extra):
        seen.append(1)
        return A._sdpa_heads(q, k, v, extra["n_heads"]) * 0.0

    e = A.IdentityEntry(A.project_identity_kv(ip, cond, uncond), {BLOCK: 0}, 1.0)
    patch = A.IdentityAttentionPatch([e], previous={BLOCK: foreign})
    x = torch.randn(1, hw[0] * hw[1], 320)
    ctx = torch.randn(1, 77, 768)
    q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
    ex = {"n_heads": heads, "block": BLOCK[:2], "block_index": BLOCK[2], "cond_or_uncond": [0]}
    with torch.no_grad():
        out = patch(q, k, v, ex)
        ident_only = A.IdentityAttentionPatch([e])(q, k, v, ex) - A._sdpa_heads(q, k, v, heads)
    assert seen == [1]
    torch.testing.assert_close(out, ident_only, atol=1e-5, rtol=1e-5)


def test_deepcopy_shares_patch_and_to_moves_buffers():
    attn, proc, ip, cond, uncond, heads, hw = _setup("sd15")
    patch = A.IdentityAttentionPatch([A.IdentityEntry(A.project_identity_kv(ip, cond, uncond), {BLOCK: 0}, 1.0)])
    opts = {"transformer_options": {"patches_replace": {"attn2": {BLOCK: patch}}}}
    assert copy.deepcopy(opts)["transformer_options"]["patches_replace"]["attn2"][BLOCK] is patch
    patch.to(torch.float16)
    assert patch.entries[0].kv(0)[0].dtype == torch.float16
    assert isinstance(patch, torch.nn.Module)


def test_mask_errors():
    with pytest.raises(VisageError, match="no masks"):
        A.check_masks(None, 2)
    with pytest.raises(VisageError, match="2 identities but 1 masks"):
        A.check_masks(torch.ones(1, 64, 64), 2)
    with pytest.raises(VisageError, match="3 identities but 2 masks"):
        A.check_masks(torch.ones(2, 64, 64), 3)
    A.check_mask_fits_latent((512, 768), (64, 96))  # image size: fine
    A.check_mask_fits_latent((64, 96), (64, 96))  # latent size: fine
    with pytest.raises(VisageError, match="latent"):
        A.check_mask_fits_latent((512, 512), (64, 96))
    # and the patch raises it at the first step
    attn, proc, ip, cond, uncond, heads, hw = _setup("sd15", n_id=2)
    kv = A.project_identity_kv(ip, cond, uncond)
    patch = A.IdentityAttentionPatch([A.IdentityEntry(kv, {BLOCK: 0}, 1.0, masks=torch.ones(2, 100, 100))])
    x = torch.randn(1, hw[0] * hw[1], 320)
    ctx = torch.randn(1, 77, 768)
    with pytest.raises(VisageError, match="100x100"):
        _ours(attn, patch, x, ctx, heads, hw, [0])


class _FakeAttn2(torch.nn.Module):
    def __init__(self, w, c):
        super().__init__()
        self.to_k = torch.nn.Linear(c, w, bias=False)


class _FakeTB(torch.nn.Module):
    def __init__(self, w, c):
        super().__init__()
        self.attn2 = _FakeAttn2(w, c)


class _FakeST(torch.nn.Module):
    def __init__(self, w, c, depth):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(_FakeTB(w, c) for _ in range(depth))


def test_match_layers_rejects_sdxl_adapter_on_sd15_model():
    from builders import adapters as B

    from visage.nodes.adapters.loaders import AdapterInfo

    sd15_blocks = [(("input", i, 0), w, 768) for i, w in enumerate(B.SD15_WIDTHS)]
    sdxl = AdapterInfo("instantid", "SDXL", 2048, 16, 512, list(range(1, 141, 2)), B.SDXL_WIDTHS, file="ip-adapter.bin")
    with pytest.raises(VisageError) as e:
        A.match_layers(sdxl, sd15_blocks)
    msg = str(e.value)
    assert "SDXL" in msg and "SD1.5" in msg and "16 cross-attention layers" in msg
    sd15 = AdapterInfo("faceid", "SD1.5", 768, 4, 512, list(range(1, 33, 2)), B.SD15_WIDTHS, file="f.bin")
    m = A.match_layers(sd15, sd15_blocks)
    assert m[("input", 5, 0)] == 5


def test_identity_operands_assembled_once_per_layout(monkeypatch):
    """Steps with the same layout reuse the assembled identity operands (no per-step host->device
    copies); a new layout (batch / cond order) assembles again and stays correct."""
    attn, proc, ip, cond, uncond, heads, hw = _setup("sd15", n_id=2, seed=3)
    masks = torch.zeros(2, *hw)
    masks[0, :, : hw[1] // 2] = 1.0
    masks[1, :, hw[1] // 2 :] = 1.0
    patch = A.IdentityAttentionPatch(
        [A.IdentityEntry(A.project_identity_kv(ip, cond, uncond), {BLOCK: 0}, weights=[0.9, 0.6], masks=masks)]
    )
    n = []
    real = patch._assemble
    monkeypatch.setattr(patch, "_assemble", lambda *a, **k: (n.append(1), real(*a, **k))[1])
    x = torch.randn(2, hw[0] * hw[1], 320)
    ctx = torch.randn(2, 77, 768)
    with torch.no_grad():
        first = [_ours(attn, patch, x, ctx, heads, hw, [0, 1]) for _ in range(4)]
        assert len(n) == 1
        swapped = _ours(attn, patch, x, ctx, heads, hw, [1, 0])
        assert len(n) == 2
        fresh = A.IdentityAttentionPatch(
            [A.IdentityEntry(A.project_identity_kv(ip, cond, uncond), {BLOCK: 0}, weights=[0.9, 0.6], masks=masks)]
        )
        want = _ours(attn, fresh, x, ctx, heads, hw, [1, 0])
    for o in first[1:]:
        assert torch.equal(o, first[0])
    torch.testing.assert_close(swapped, want)
    assert (swapped - first[0]).abs().max() > 1e-4  # cond order matters: rows got other tokens

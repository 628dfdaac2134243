"""EVA02-CLIP vision tower (timm's EVA02 + our converter) against the EVA-CLIP maths, on random weights.

The reference below is written here from the official EVA-CLIP vision transformer as PuLID builds it
(ToTheBeginning/PuLID ``eva_clip/eva_vit_model.py`` with ``EVA02-CLIP-L-14-336.json``: pre-norm blocks,
q/v biases, rotary embedding on the patch tokens with interleaved pairs, inner attention LayerNorm,
SwiGLU with a LayerNorm before w3, final norm, CLS -> head; hidden states = inputs of blocks 4..20),
directly on the checkpoint's tensors under their EVA-CLIP names. It never calls timm.
"""

import pytest
import torch
import torch.nn.functional as F
from builders import eva_clip as EB

from visage.core.errors import ModelFileInvalid
from visage.nodes.pulid import eva_clip as EC

EPS = 1e-6


def _ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[p + "weight"], sd[p + "bias"], EPS)


def _rotate_pairs(x):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def reference(sd, x, heads, taps=(4, 8, 12, 16, 20)):
    """(head(norm(x)[:, 0]), [inputs of the tapped blocks]) with the official maths."""
    v = {k[len("visual.") :]: t for k, t in sd.items() if k.startswith("visual.")}
    h = F.conv2d(
        x, v["patch_embed.proj.weight"], v["patch_embed.proj.bias"], stride=v["patch_embed.proj.weight"].shape[-1]
    )
    h = h.flatten(2).transpose(1, 2)
    b = h.shape[0]
    h = torch.cat((v["cls_token"].expand(b, -1, -1), h), 1) + v["pos_embed"]
    cos, sin = v["rope.freqs_cos"], v["rope.freqs_sin"]
    depth = 1 + max(int(k.split(".")[1]) for k in v if k.startswith("blocks."))
    hidden = []
    for i in range(depth):
        if i in taps:
            hidden.append(h)
        p = f"blocks.{i}."
        y = _ln(h, v, p + "norm1.")
        n = y.shape[1]
        q = F.linear(y, v[p + "attn.q_proj.weight"], v[p + "attn.q_bias"])
        k = F.linear(y, v[p + "attn.k_proj.weight"])
        val = F.linear(y, v[p + "attn.v_proj.weight"], v[p + "attn.v_bias"])
        q, k, val = (t.reshape(b, n, heads, -1).permute(0, 2, 1, 3) for t in (q, k, val))
        q = torch.cat((q[:, :, :1], q[:, :, 1:] * cos + _rotate_pairs(q[:, :, 1:]) * sin), 2)
        k = torch.cat((k[:, :, :1], k[:, :, 1:] * cos + _rotate_pairs(k[:, :, 1:]) * sin), 2)
        a = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), -1) @ val
        a = a.transpose(1, 2).reshape(b, n, -1)
        a = F.linear(_ln(a, v, p + "attn.inner_attn_ln."), v[p + "attn.proj.weight"], v[p + "attn.proj.bias"])
        h = h + a
        y = _ln(h, v, p + "norm2.")
        m = F.silu(F.linear(y, v[p + "mlp.w1.weight"], v[p + "mlp.w1.bias"])) * F.linear(
            y, v[p + "mlp.w2.weight"], v[p + "mlp.w2.bias"]
        )
        h = h + F.linear(_ln(m, v, p + "mlp.ffn_ln."), v[p + "mlp.w3.weight"], v[p + "mlp.w3.bias"])
    pooled = F.linear(_ln(h, v, "norm.")[:, 0], v["head.weight"], v["head.bias"])
    return pooled, hidden


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def tiny():
    sd = EB.random_checkpoint(seed=3)
    return sd, EC.load_state_dict(sd, "tiny.pt")


def test_config_read_from_the_tensors(tiny):
    _, m = tiny
    assert m.cfg == EC.EvaConfig(width=64, depth=21, heads=1, mlp_hidden=170, patch=14, image_size=28, embed_dim=24)
    assert m.taps == (4, 8, 12, 16, 20)


def test_matches_the_official_maths(tiny):
    sd, m = tiny
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled, hidden = m(x)
        ref_pooled, ref_hidden = reference(sd, x, heads=1)
    assert pooled.shape == (2, 24) and len(hidden) == 5
    assert all(h.shape == (2, 5, 64) for h in hidden)
    assert _rel(pooled, ref_pooled) < 1e-4
    for h, r in zip(hidden, ref_hidden):
        assert _rel(h, r) < 1e-4
    # the taps are distinct layers (a wrong index would repeat or shift them)
    assert _rel(hidden[0], hidden[1]) > 1e-2


def test_two_heads_and_a_larger_grid():
    cfg = dict(width=128, depth=21, mlp_hidden=340, patch=14, image_size=56, embed_dim=32)
    sd = EB.random_checkpoint(seed=5, **cfg)
    m = EC.load_state_dict(sd)
    assert m.cfg.heads == 2 and m.cfg.grid == 4
    x = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pooled, hidden = m(x)
        rp, rh = reference(sd, x, heads=2)
    assert _rel(pooled, rp) < 1e-4
    assert max(_rel(a, b) for a, b in zip(hidden, rh)) < 1e-4


def test_pulid_features_are_normalised(tiny):
    _, m = tiny
    x = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        v, hidden = EC.pulid_vit_features(m, x)
    assert torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-5)
    assert len(hidden) == 5


def test_released_layout_at_full_size_maps_onto_timm():
    # every released tensor has a home in timm's EVA02-L/336, and nothing of timm's is left out
    layout = EB.visual_layout(**EB.RELEASED)
    vis = EC.visual_state_dict({k: torch.empty(s, device="meta") for k, s in layout})
    cfg = EC.config_from_state_dict(vis)
    assert cfg == EC.EvaConfig()
    with torch.device("meta"):
        tower = EC.build_tower(cfg)
    ours = {k: tuple(v.shape) for k, v in EC.to_timm(vis).items()}
    theirs = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    assert ours == theirs


def test_full_checkpoint_file_loads(tmp_path, tiny):
    sd, m = tiny
    full = dict(sd)
    full["text.token_embedding.weight"] = torch.zeros(8, 24)
    full["logit_scale"] = torch.tensor(4.6)
    p = tmp_path / EC.EVA_FILE
    torch.save(full, str(p))
    m2 = EC.load_eva_clip(str(p))
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(m(x)[0], m2(x)[0])


@pytest.mark.parametrize(
    "sd, words",
    [
        ({"vision_model.embeddings.patch_embedding.weight": torch.zeros(4, 3, 14, 14)}, "Hugging Face CLIP"),
        ({"pulid_encoder.latents": torch.zeros(1, 2, 3)}, "PuLID"),
        ({"visual.conv1.weight": torch.zeros(4, 3, 14, 14)}, "open_clip"),
        ({}, "no tensors"),
    ],
)
def test_wrong_files_are_named(sd, words):
    with pytest.raises(ModelFileInvalid) as e:
        EC.load_state_dict(sd, "x.pt")
    assert words in str(e.value)


def test_missing_tensor_is_refused():
    sd = EB.random_checkpoint(seed=1)
    del sd["visual.blocks.3.mlp.w3.bias"]
    with pytest.raises(ModelFileInvalid, match="not all its tensors"):
        EC.load_state_dict(sd, "x.pt")

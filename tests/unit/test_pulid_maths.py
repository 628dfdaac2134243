"""PuLID maths: released key/shape layouts, loading and refusing files, the Flux identity patch.

The expected layouts come from tests/builders/pulid.py (written from the official code, independently
of nodes/pulid). Module layouts are checked at the released widths on the meta device (no memory);
files and numerics use tiny widths that keep every released name.
"""

import pytest
import torch
from builders import pulid as B

from visage.core.errors import ModelFileInvalid, VisageError
from visage.nodes.pulid import encoders as E
from visage.nodes.pulid import flux_patch as FP
from visage.nodes.pulid import loaders as L


def _layout(module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def _tiny_idformer(seed=0):
    cfg = dict(B.TINY_IDFORMER)
    cfg["mlp_hidden"] = cfg.pop("hidden")
    m = E.IDFormer(**cfg).eval()
    m.load_state_dict(B.random_state_dict(B.idformer_layout(**B.TINY_IDFORMER), seed))
    return m


def _tiny_idencoder(seed=0):
    cfg = dict(B.TINY_IDENCODER)
    cfg["mlp_hidden"] = cfg.pop("hidden")
    m = E.IDEncoder(**cfg).eval()
    m.load_state_dict(B.random_state_dict(B.idencoder_layout(**B.TINY_IDENCODER), seed))
    return m


def _tiny_ca(seed=0):
    m = E.PerceiverAttentionCA(**B.TINY_CA).eval()
    m.load_state_dict(B.random_state_dict(B.ca_layout(**B.TINY_CA), seed))
    return m


def _vit(b, tiny=B.TINY_IDFORMER, tokens=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, tokens, tiny["vit_width"], generator=g) for _ in range(5)]


# ------------------------------------------------------------------------- released layouts


@pytest.mark.parametrize(
    "make, layout",
    [
        (lambda: E.IDFormer(), B.idformer_layout()),
        (lambda: E.IDEncoder(), B.idencoder_layout()),
        (lambda: E.PerceiverAttentionCA(), B.ca_layout()),
        (lambda: torch.nn.ModuleDict({"1": E.IDAttnKV(640), "3": E.IDAttnKV(1280)}), B.sdxl_attn_layout([640, 1280])),
    ],
    ids=["IDFormer", "IDEncoder", "PerceiverAttentionCA", "IDAttnKV"],
)
def test_modules_have_the_released_names_and_shapes(make, layout):
    with torch.device("meta"):
        m = make()
    assert _layout(m) == layout


def test_released_sizes():
    # the released files' parameter counts follow from the layouts (IDFormer 151.4M, CA 21.0M each)
    assert sum(torch.Size(s).numel() for _, s in B.idformer_layout()) == 151_398_400
    assert sum(torch.Size(s).numel() for _, s in B.ca_layout()) == 20_981_760
    assert len(B.sdxl_attn_layout()) == 140 and len(B.SDXL_CROSS_WIDTHS) == 70
    assert len({k for k, _ in B.flux_layout() if k.startswith("pulid_ca.")}) == 20 * 7


@pytest.mark.parametrize(
    "layout, kind, encoder, tokens",
    [
        (B.flux_layout(), L.FLUX, "IDFormer", 32),
        (B.sdxl_v1_layout(), L.SDXL_V1, "IDEncoder", 10),
        (B.sdxl_v1_1_layout(), L.SDXL_V1_1, "IDFormer", 32),
    ],
    ids=["flux", "v1", "v1.1"],
)
def test_loader_reads_the_released_layouts(layout, kind, encoder, tokens):
    sd = B.random_state_dict(layout, device="meta")  # released shapes, no memory
    model = L.load_state_dict(sd, "released")
    info = model.info
    assert (info.kind, info.encoder, info.num_tokens, info.token_dim) == (kind, encoder, tokens, 2048)
    assert _shapes(model.state_dict()) == _shapes(sd)
    if kind == L.FLUX:
        assert info.num_ca == FP.num_ca() == 20 and info.ca_dim == 3072
        assert model.layers[0].heads == 16 and model.encoder.layers[0][0].heads == 16
    else:
        assert info.layer_indices == list(range(1, 140, 2))
        assert info.layer_widths == B.SDXL_CROSS_WIDTHS


# ------------------------------------------------------------------------------- tiny files


def _tiny_files():
    return {
        "flux": (B.flux_layout(B.TINY_IDFORMER, B.TINY_CA, num_ca=20), L.FLUX),
        "v1": (B.sdxl_v1_layout(B.TINY_IDENCODER, B.TINY_WIDTHS, 24), L.SDXL_V1),
        "v1.1": (B.sdxl_v1_1_layout(B.TINY_IDFORMER, B.TINY_WIDTHS, 24), L.SDXL_V1_1),
    }


@pytest.mark.parametrize("name", ["flux", "v1", "v1.1"])
@pytest.mark.parametrize("ext", [".safetensors", ".bin"])
def test_loader_round_trip_of_tiny_files(tmp_path, name, ext):
    layout, kind = _tiny_files()[name]
    sd = B.random_state_dict(layout, seed=3, dtype=torch.float16)
    path = B.write(str(tmp_path / f"pulid_{name}{ext}"), sd)
    model = L.load_pulid(path)
    assert model.kind == kind and not any(p.requires_grad for p in model.parameters())
    got = model.state_dict()
    assert list(got) == [k for k, _ in layout]
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    # the encoder computes with those weights: same output as a module given the same tensors
    ref = _tiny_idencoder() if name == "v1" else _tiny_idformer()
    prefix = "pulid_encoder." if name == "flux" else "id_adapter."
    ref.load_state_dict({k[len(prefix) :]: v.float() for k, v in sd.items() if k.startswith(prefix)})
    x = torch.randn(2, 20)
    torch.testing.assert_close(model.encoder.float()(x, _vit(2)), ref(x, _vit(2)))


def test_loader_reads_nested_bin_and_the_ip_adapter_renaming(tmp_path):
    layout, _ = _tiny_files()["v1"]
    sd = B.random_state_dict(layout, seed=4)
    nested = {"id_adapter": {}, "id_adapter_attn_layers": {}}
    for k, v in sd.items():
        head, _, rest = k.partition(".")
        nested[head][rest] = v
    m = L.load_pulid(B.write(str(tmp_path / "nested.bin"), nested))
    assert m.kind == L.SDXL_V1 and torch.equal(
        m.state_dict()["id_adapter.body.0.weight"], sd["id_adapter.body.0.weight"]
    )
    # ComfyUI PuLID packs' renaming: image_proj.* / ip_adapter.<n>.to_k_ip.weight
    renamed = {
        k.replace("id_adapter_attn_layers.", "ip_adapter.")
        .replace("id_adapter.", "image_proj.")
        .replace(".id_to_k.", ".to_k_ip.")
        .replace(".id_to_v.", ".to_v_ip."): v
        for k, v in sd.items()
    }
    m2 = L.load_pulid(B.write(str(tmp_path / "ip-adapter_pulid_sdxl_fp16.safetensors"), renamed))
    assert m2.kind == L.SDXL_V1 and m2.info.converted
    assert all(torch.equal(m2.state_dict()[k], sd[k]) for k in sd)


# -------------------------------------------------------------------------------- refusals


def _instantid_like():
    return {
        "image_proj.latents": torch.zeros(1, 16, 32),
        "image_proj.proj_in.weight": torch.zeros(32, 512),
        "ip_adapter.1.to_k_ip.weight": torch.zeros(320, 32),
        "ip_adapter.1.to_v_ip.weight": torch.zeros(320, 32),
    }


@pytest.mark.parametrize(
    "sd, words",
    [
        (_instantid_like(), "InstantID"),
        (
            {"image_proj.proj.0.weight": torch.zeros(8, 4), "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 4)},
            "FaceID",
        ),
        ({"double_blocks.0.img_attn.qkv.weight": torch.zeros(9, 3)}, "Flux diffusion model"),
        ({"lora_unet_down.lora_down.weight": torch.zeros(2, 2)}, "LoRA"),
        ({"foo": torch.zeros(3), "bar.baz": torch.zeros(2, 2)}, "2 tensors, none under PuLID's names"),
        ({"pulid_encoder.latents": torch.zeros(1, 4, 8)}, "no pulid_ca"),
        ({"id_adapter.body.0.weight": torch.zeros(4, 4)}, "no id_adapter_attn_layers"),
    ],
    ids=["instantid", "faceid", "flux-model", "lora", "random", "flux-incomplete", "sdxl-incomplete"],
)
def test_loader_refuses_files_that_are_not_pulid(tmp_path, sd, words):
    path = B.write(str(tmp_path / "wrong.safetensors"), sd)
    with pytest.raises(ModelFileInvalid) as e:
        L.load_pulid(path)
    assert words in str(e.value) and "wrong.safetensors" in str(e.value)


def test_loader_refuses_damaged_and_mismatched_files(tmp_path):
    layout, _ = _tiny_files()["flux"]
    sd = B.random_state_dict(layout, seed=5)
    bad = dict(sd)
    bad["pulid_ca.7.to_out.weight"] = torch.zeros(40, 64)  # one tensor of another shape
    with pytest.raises(ModelFileInvalid, match="not all its tensors or shapes"):
        L.load_pulid(B.write(str(tmp_path / "shape.safetensors"), bad))
    missing = {k: v for k, v in sd.items() if not k.startswith("pulid_ca.19.")}
    missing.update(
        {f"pulid_ca.25.{k[len('pulid_ca.19.') :]}": v for k, v in sd.items() if k.startswith("pulid_ca.19.")}
    )
    with pytest.raises(ModelFileInvalid, match="numbered 0..n-1"):
        L.load_pulid(B.write(str(tmp_path / "gap.safetensors"), missing))
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ModelFileInvalid, match="cannot be read"):
        L.load_pulid(str(tmp_path / "trunc.safetensors"))
    torch.save([torch.zeros(2)], tmp_path / "list.bin")
    with pytest.raises(ModelFileInvalid, match="not a dict"):
        L.load_pulid(str(tmp_path / "list.bin"))
    with pytest.raises(ModelFileInvalid, match="extension"):
        L.load_pulid(str(tmp_path / "model.onnx"))
    good = B.write(str(tmp_path / "pulid_flux.safetensors"), sd)
    with pytest.raises(ModelFileInvalid, match="PuLID-FLUX"):
        L.load_pulid(good, expect="sdxl")
    assert L.load_pulid(good, expect=L.FLUX).kind == L.FLUX


# ------------------------------------------------------------------------------- the maths


def test_ca_is_softmax_attention_of_image_over_identity():
    """PerceiverAttentionCA against a hand-written formula (keys/values from the identity tokens only)."""
    ca = _tiny_ca()
    ids, img = torch.randn(2, 5, 24), torch.randn(2, 7, 40)
    sd = ca.state_dict()
    x = torch.nn.functional.layer_norm(ids, (24,), sd["norm1.weight"], sd["norm1.bias"])
    lat = torch.nn.functional.layer_norm(img, (40,), sd["norm2.weight"], sd["norm2.bias"])
    q = lat @ sd["to_q.weight"].T
    k, v = (x @ sd["to_kv.weight"].T).chunk(2, -1)
    heads = []
    for h in range(2):  # two heads of 128
        s = slice(128 * h, 128 * (h + 1))
        w = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 128**0.5, -1)
        heads.append(w @ v[..., s])
    torch.testing.assert_close(ca(ids, img), torch.cat(heads, -1) @ sd["to_out.weight"].T)


def test_idformer_layer_attends_to_context_and_latents():
    """IDFormer's perceiver layer: keys/values over cat(norm1(context), norm2(latents)), per head."""
    m = E.PerceiverAttention(dim=16, dim_head=4, heads=4)
    ctx, lat = torch.randn(1, 3, 16), torch.randn(1, 5, 16)
    sd = m.state_dict()
    xn = torch.nn.functional.layer_norm(ctx, (16,), sd["norm1.weight"], sd["norm1.bias"])
    ln = torch.nn.functional.layer_norm(lat, (16,), sd["norm2.weight"], sd["norm2.bias"])
    q = (ln @ sd["to_q.weight"].T).view(1, 5, 4, 4).transpose(1, 2)
    k, v = (torch.cat((xn, ln), 1) @ sd["to_kv.weight"].T).chunk(2, -1)
    k, v = (t.view(1, 8, 4, 4).transpose(1, 2) for t in (k, v))
    out = (torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v).transpose(1, 2).reshape(1, 5, 16)
    torch.testing.assert_close(m(ctx, lat), out @ sd["to_out.weight"].T)


def test_token_counts():
    f, e = _tiny_idformer(), _tiny_idencoder()
    with torch.no_grad():
        assert f(torch.randn(3, 20), _vit(3)).shape == (3, 6, 24)  # num_queries x output_dim
        assert f(torch.randn(2, 4, 20), _vit(2, tokens=36)).shape == (2, 6, 24)  # 4 reference images
        assert e(torch.randn(3, 20), _vit(3)).shape == (3, 3 + 5, 24)  # num_token + one per EVA-CLIP scale
    with pytest.raises(ValueError):
        f(torch.randn(1, 20), _vit(1)[:4])


def test_batch_independence():
    f, e, ca = _tiny_idformer(), _tiny_idencoder(), _tiny_ca()
    x, y = torch.randn(3, 20), _vit(3)
    ids, img = torch.randn(3, 6, 24), torch.randn(3, 11, 40)
    with torch.no_grad():
        for enc in (f, e):
            whole = enc(x, y)
            for i in range(3):
                torch.testing.assert_close(whole[i : i + 1], enc(x[i : i + 1], [h[i : i + 1] for h in y]))
        whole = FP.add_identity(ca, ids, img, 0.7)
        for i in range(3):
            torch.testing.assert_close(whole[i : i + 1], FP.add_identity(ca, ids[i : i + 1], img[i : i + 1], 0.7))
        # one identity for the whole batch = that identity repeated
        torch.testing.assert_close(
            FP.add_identity(ca, ids[:1], img, 0.7), FP.add_identity(ca, ids[:1].expand(3, -1, -1), img, 0.7)
        )
    with pytest.raises(VisageError, match="do not fit the image batch"):
        FP.add_identity(ca, torch.randn(2, 6, 24), img, 1.0)


def test_flux_block_schedule():
    assert FP.num_ca() == 20
    doubles = {i: FP.ca_index("double", i) for i in range(19)}
    singles = {j: FP.ca_index("single", j) for j in range(38)}
    assert {i: k for i, k in doubles.items() if k is not None} == {i: i // 2 for i in range(0, 19, 2)}
    assert {j: k for j, k in singles.items() if k is not None} == {j: 10 + j // 4 for j in range(0, 38, 4)}
    used = sorted(k for k in list(doubles.values()) + list(singles.values()) if k is not None)
    assert used == list(range(20))


def test_flux_patch_weight_zero_text_kept_and_linear_in_weight():
    cas = torch.nn.ModuleList(_tiny_ca(seed=s) for s in range(20))
    ids, img = torch.randn(2, 6, 24), torch.randn(2, 9, 40)
    txt_len, x = 4, torch.randn(2, 4 + 9, 40)
    with torch.no_grad():
        assert FP.patch_double(cas, 2, img, ids, 0.0) is img
        assert FP.patch_single(cas, 4, x, txt_len, ids, 0.0) is x
        assert FP.patch_double(cas, 3, img, ids, 1.0) is img  # odd double blocks: none
        assert FP.patch_single(cas, 5, x, txt_len, ids, 1.0) is x
        d1 = FP.patch_double(cas, 4, img, ids, 1.0) - img
        torch.testing.assert_close(d1, cas[2](ids, img))  # block 4 -> pulid_ca.2
        torch.testing.assert_close(FP.patch_double(cas, 4, img, ids, 2.5) - img, 2.5 * d1)
        out = FP.patch_single(cas, 8, x, txt_len, ids, 0.9)
        assert out.shape == x.shape
        assert torch.equal(out[:, :txt_len], x[:, :txt_len])  # text tokens untouched
        torch.testing.assert_close(out[:, txt_len:], x[:, txt_len:] + 0.9 * cas[12](ids, x[:, txt_len:]))


def test_flux_patch_keeps_the_image_dtype():
    ca = _tiny_ca().to(torch.bfloat16)
    img = torch.randn(1, 5, 40)
    out = FP.add_identity(ca, torch.randn(1, 6, 24), img, 1.0)
    assert out.dtype == torch.float32 and out.shape == img.shape and not torch.equal(out, img)

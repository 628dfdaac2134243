"""Projection models + loaders vs diffusers' own classes and key conversion (float32, tol 1e-4)."""

import pytest
import torch
from builders import adapters as B

from visage.core.errors import ModelFileInvalid, VisageError
from visage.nodes.adapters import loaders as L

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.unet import UNet2DConditionLoadersMixin  # noqa: E402


def diffusers_proj(state):
    """diffusers' own conversion of the released image_proj keys + its own projection class."""
    m = UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers(
        None, dict(state), low_cpu_mem_usage=False
    )
    return m.eval().float()


def _load(tmp_path, name, proj, ip, expect="any"):
    path = B.save_adapter(str(tmp_path / name), proj, ip)
    return L.load_identity_adapter(path, expect=expect)


def test_instantid_resampler_released_shapes_matches_diffusers(tmp_path):
    """Exact InstantID image_proj shapes: 16 queries, 512 in, 1280 wide, 20 heads, 4 layers, 2048 out."""
    proj = B.instantid_image_proj(seed=0)
    ad = _load(tmp_path, "ip-adapter.bin", proj, B.ip_adapter_layers([64] * 70, 2048), expect="instantid")
    assert ad.info.kind == L.INSTANTID and ad.info.base == "SDXL" and ad.info.num_tokens == 16
    ref = diffusers_proj(proj)
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    assert isinstance(ref, IPAdapterPlusImageProjection)
    emb = torch.randn(3, 512) * 10  # raw ArcFace embeddings have norm ~20
    with torch.no_grad():
        ours = ad.image_proj(emb)
        theirs = ref(emb.unsqueeze(1))
    assert ours.shape == (3, 16, 2048)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cross,tokens,kind", [(768, 4, L.FACEID), (2048, 4, L.FACEID), (768, 16, L.FACEID_PORTRAIT)])
def test_faceid_mlp_matches_diffusers(tmp_path, cross, tokens, kind):
    proj = B.faceid_image_proj(seed=1, cross_dim=cross, num_tokens=tokens)
    widths = B.SD15_WIDTHS if cross == 768 else [32] * 70
    ad = _load(tmp_path, "faceid.safetensors", proj, B.ip_adapter_layers(widths, cross, with_lora=True), "faceid")
    assert ad.info.kind == kind and ad.info.num_tokens == tokens
    assert ad.info.base == ("SD1.5" if cross == 768 else "SDXL")
    ref = diffusers_proj(proj)
    from diffusers.models.embeddings import IPAdapterFaceIDImageProjection

    assert isinstance(ref, IPAdapterFaceIDImageProjection)
    emb = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(ad.image_proj(emb), ref(emb), atol=1e-4, rtol=1e-4)


def test_portrait_concatenates_faces_of_one_identity(tmp_path):
    proj = B.faceid_image_proj(seed=2, cross_dim=768, num_tokens=16)
    ad = _load(tmp_path, "portrait.bin", proj, B.ip_adapter_layers(B.SD15_WIDTHS, 768), "faceid")
    faces = torch.randn(1, 3, 512)  # one identity, three reference faces
    with torch.no_grad():
        out = ad.image_proj(faces)
        per_face = torch.cat([ad.image_proj(faces[:, i]) for i in range(3)], dim=1)
    assert out.shape == (1, 48, 768)
    torch.testing.assert_close(out, per_face, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shortcut,scale", [(False, 1.0), (True, 1.0), (True, 0.6)])
def test_faceid_plus_matches_diffusers(tmp_path, shortcut, scale):
    proj = B.faceid_plus_image_proj(seed=3, cross_dim=768, clip_dim=1280)
    ad = _load(tmp_path, "ip-adapter-faceid-plusv2_sd15.bin", proj, B.ip_adapter_layers(B.SD15_WIDTHS, 768), "faceid")
    assert ad.info.kind == L.FACEID_PLUS and ad.info.clip_embeddings_dim == 1280
    ref = diffusers_proj(proj)
    from diffusers.models.embeddings import IPAdapterFaceIDPlusImageProjection

    assert isinstance(ref, IPAdapterFaceIDPlusImageProjection)
    emb = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    clip = torch.randn(2, 257, 1280)
    ref.clip_embeds = clip.unsqueeze(1)  # diffusers: [B, images, seq, dim]
    ref.shortcut, ref.shortcut_scale = shortcut, scale
    with torch.no_grad():
        ours = ad.image_proj(emb, clip, shortcut=shortcut, scale=scale)
        theirs = ref(emb)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_ip_layers_ordered_by_released_index(tmp_path):
    ip = B.ip_adapter_layers(B.SD15_WIDTHS, 768, seed=5)
    ad = _load(tmp_path, "faceid.bin", B.faceid_image_proj(), ip, "faceid")
    assert ad.info.layer_keys == list(range(1, 32, 2))
    assert ad.info.layer_widths == B.SD15_WIDTHS
    for layer, n in zip(ad.ip_layers, ad.info.layer_keys):  # 11 sorts before 3 as text: must be numeric
        assert torch.equal(layer.to_k_ip.weight, ip[f"{n}.to_k_ip.weight"])
        assert torch.equal(layer.to_v_ip.weight, ip[f"{n}.to_v_ip.weight"])


def test_faceid_file_rejected_by_instantid_loader_and_vice_versa(tmp_path):
    fid = B.save_adapter(
        str(tmp_path / "ip-adapter-faceid_sd15.bin"), B.faceid_image_proj(), B.ip_adapter_layers(B.SD15_WIDTHS, 768)
    )
    with pytest.raises(VisageError) as e:
        L.load_identity_adapter(fid, expect="instantid")
    assert "FaceID" in str(e.value) and "SD1.5" in str(e.value)
    inst = B.save_adapter(
        str(tmp_path / "ip-adapter.bin"),
        B.instantid_image_proj(dim=128, depth=1, heads=2),
        B.ip_adapter_layers([16] * 70, 2048),
    )
    with pytest.raises(VisageError) as e:
        L.load_identity_adapter(inst, expect="faceid")
    assert "InstantID" in str(e.value) and "SDXL" in str(e.value)


def test_bad_files(tmp_path):
    p = tmp_path / "junk.bin"
    p.write_bytes(b"not a torch file at all")
    with pytest.raises(ModelFileInvalid):
        L.load_identity_adapter(str(p))
    p2 = tmp_path / "model.onnx"
    p2.write_bytes(b"x")
    with pytest.raises(ModelFileInvalid) as e:
        L.load_identity_adapter(str(p2))
    assert ".onnx" in str(e.value)
    # a LoRA / checkpoint-like safetensors without the adapter groups
    from safetensors.torch import save_file

    p3 = str(tmp_path / "lora.safetensors")
    save_file({"lora_unet_down.weight": torch.zeros(2, 2)}, p3)
    with pytest.raises(ModelFileInvalid) as e:
        L.load_identity_adapter(p3)
    assert "image_proj" in str(e.value)
    # pickled non-tensor objects are refused by weights_only loading
    p4 = str(tmp_path / "evil.bin")
    torch.save({"image_proj": {"x": object()}, "ip_adapter": {}}, p4)
    with pytest.raises(ModelFileInvalid):
        L.load_identity_adapter(p4)
    # CLIP-image IP-Adapter (not face ID)
    p5 = B.save_adapter(
        str(tmp_path / "ip-adapter_sd15.bin"),
        {
            "proj.weight": torch.zeros(3072, 1024),
            "proj.bias": torch.zeros(3072),
            "norm.weight": torch.ones(768),
            "norm.bias": torch.zeros(768),
        },
        B.ip_adapter_layers(B.SD15_WIDTHS, 768),
    )
    with pytest.raises(VisageError) as e:
        L.load_identity_adapter(p5, expect="faceid")
    assert "not a face-ID adapter" in str(e.value)


# ----------------------------------------------------------------- Portrait unnorm (InstantID's layout) and variants


def test_portrait_unnorm_needs_the_explicit_variant(tmp_path):
    """ip-adapter-faceid-portrait_sdxl_unnorm.bin has InstantID's exact keys: 'auto' refuses it naming the
    variant to set; variant = portrait_unnorm loads it (resampler, 16 tokens per face, raw embedding)."""
    proj = B.instantid_image_proj(seed=5)
    path = B.save_adapter(
        str(tmp_path / "ip-adapter-faceid-portrait_sdxl_unnorm.bin"), proj, B.ip_adapter_layers([64] * 70, 2048)
    )
    with pytest.raises(VisageError, match="variant = portrait_unnorm"):
        L.load_identity_adapter(path, expect="faceid")
    ad = L.load_identity_adapter(path, expect="faceid", variant="portrait_unnorm")
    assert ad.info.kind == L.FACEID_PORTRAIT_UNNORM and ad.info.raw_embedding and ad.info.num_tokens == 16
    assert ad.info.base == "SDXL" and ad.lora == {}
    # the same resampler diffusers builds from those keys, on each face's raw embedding
    ref = diffusers_proj(proj)
    from visage.nodes.adapters.identity import faceid_tokens

    emb = torch.randn(3, 512) * 10  # raw rows (norm ~20)
    cond, uncond = faceid_tokens(ad.image_proj, ad.info.kind, emb, portrait_groups=[3])
    with torch.no_grad():
        want = torch.cat([ref(emb[i : i + 1].unsqueeze(1)) for i in range(3)], dim=1)
        want_u = torch.cat([ref(torch.zeros(1, 1, 512))] * 3, dim=1)
    assert cond.shape == (1, 48, 2048)
    torch.testing.assert_close(cond, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(uncond, want_u, atol=1e-4, rtol=1e-4)
    # still refused where it does not fit: the InstantID loader path is unchanged, a wrong variant is named
    with pytest.raises(VisageError, match="not a FaceID portrait file"):
        L.load_identity_adapter(path, expect="faceid", variant="portrait")


def test_variants_are_checked_against_the_keys(tmp_path):
    plus = B.save_adapter(
        str(tmp_path / "renamed.bin"), B.faceid_plus_image_proj(seed=3), B.ip_adapter_layers(B.SD15_WIDTHS, 768)
    )
    assert L.load_identity_adapter(plus, expect="faceid").info.plus_v2 is None  # auto: Apply decides
    assert L.load_identity_adapter(plus, expect="faceid", variant="plusv2").info.plus_v2 is True
    assert L.load_identity_adapter(plus, expect="faceid", variant="plus").info.plus_v2 is False
    with pytest.raises(VisageError, match="not a FaceID faceid file"):
        L.load_identity_adapter(plus, expect="faceid", variant="faceid")
    with pytest.raises(VisageError, match="not a FaceID portrait_unnorm file"):
        L.load_identity_adapter(plus, expect="faceid", variant="portrait_unnorm")


def test_unnormalised_rows_for_portrait_unnorm():
    """identity_embeddings(normed=False) gives the raw w600k_r50 rows; the method's default stays normalised."""
    from visage.core.types import FaceEmbeds
    from visage.nodes.adapters.identity import identity_embeddings

    raw = torch.randn(2, 512) * 7
    e = FaceEmbeds(
        raw=raw, normed=torch.nn.functional.normalize(raw, dim=-1), encoder="w600k_r50", sources=(1, 1), fusion="none"
    )
    torch.testing.assert_close(identity_embeddings("faceid", None, e, normed=False), raw)
    torch.testing.assert_close(identity_embeddings("faceid", None, e), torch.nn.functional.normalize(raw, dim=-1))


# ----------------------------------------------------------------- the LoRA stored in FaceID files


def _diffusers_processor_order(sdxl: bool):
    from diffusers import UNet2DConditionModel

    kw = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
        layers_per_block=2,
    )
    if sdxl:
        kw.update(
            block_out_channels=(8, 16, 16),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 3),
        )
    else:
        kw.update(
            block_out_channels=(8, 8, 16, 16),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
    unet = UNet2DConditionModel(**kw)
    return [k[: -len(".processor")] for k in unet.attn_processors]


@pytest.mark.parametrize("sdxl", [False, True])
def test_attention_order_is_diffusers_processor_order(sdxl):
    """The released numbering runs over unet.attn_processors: our order of the module names (shuffled, as
    ComfyUI's key map gives them) equals diffusers' own, for SD1.5- and SDXL-shaped UNets."""
    import random

    want = _diffusers_processor_order(sdxl)
    names = list(want)
    random.Random(0).shuffle(names)
    assert L.diffusers_attention_order(names) == want
    assert want[-1].startswith("mid_block") and any(n.startswith("up_blocks") for n in want)


def test_embedded_lora_is_kept_and_named_for_the_unet(tmp_path):
    ip = B.ip_adapter_layers([8, 8], 32, with_lora=True)
    path = B.save_adapter(str(tmp_path / "faceid.bin"), B.faceid_image_proj(seed=1, cross_dim=32), ip)
    ad = L.load_identity_adapter(path, expect="faceid")
    assert sorted(ad.lora) == [0, 1, 2, 3] and ad.info.lora_layers == 4
    assert sorted(ad.lora[1]) == ["to_k_lora", "to_out_lora", "to_q_lora", "to_v_lora"]
    names = [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
    ]
    names += ["mid_block.attentions.0.transformer_blocks.0.attn1", "mid_block.attentions.0.transformer_blocks.0.attn2"]
    sd = L.lora_to_unet_keys(ad.lora, names)
    assert len(sd) == 4 * 4 * 2
    k = "mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora"
    torch.testing.assert_close(sd[k + ".down.weight"], ip["3.to_k_lora.down.weight"])
    torch.testing.assert_close(sd[k + ".up.weight"], ip["3.to_k_lora.up.weight"])
    with pytest.raises(VisageError, match="4 attention layers, the model has 2"):
        L.lora_to_unet_keys(ad.lora, names[:2])

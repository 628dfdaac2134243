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

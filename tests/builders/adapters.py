"""Test-built identity-adapter files in the released formats (random weights, released key names).

* InstantID ``ip-adapter.bin``: ``{"image_proj": Resampler keys, "ip_adapter": "<n>.to_k_ip.weight" ...}``
* IP-Adapter FaceID / Portrait / Plus(V2) ``.bin`` / ``.safetensors`` (``image_proj.`` / ``ip_adapter.``
  prefixes), FaceID files also carrying LoRA tensors at even indices as the released ones do.
* A tiny SD1.5-architecture UNet (ComfyUI detects it as SD1.5: model_channels 320, context 768,
  one level) saved as a ``diffusion_models`` file, and a matching tiny IdentityNet ControlNet.

``build(models_dir, input_dir)`` writes what the comfy tier needs; the functions are used by the
unit tests with their own shapes.
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence

import torch

# cross-attention widths in diffusers processor order (down, up, mid) -- the released numbering
SD15_WIDTHS: List[int] = [320, 320, 640, 640, 1280, 1280] + [1280] * 3 + [640] * 3 + [320] * 3 + [1280]
SDXL_WIDTHS: List[int] = ([640] * 4 + [1280] * 20) + ([1280] * 30 + [640] * 6) + [1280] * 10
# the tiny UNet below: input_blocks 1, output_blocks 0 and 1, middle -> all 320 wide
TINY_WIDTHS: List[int] = [320, 320, 320, 320]


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rn(g, *shape, std=0.02):
    return torch.randn(*shape, generator=g) * std


def _ln(g, prefix: str, dim: int, sd: Dict[str, torch.Tensor]):
    sd[prefix + ".weight"] = 1.0 + _rn(g, dim, std=0.1)
    sd[prefix + ".bias"] = _rn(g, dim, std=0.1)


def _perceiver_layers(g, sd, prefix, dim, depth, heads, ff_mult=4, dim_head=64):
    inner = heads * dim_head
    for i in range(depth):
        p = f"{prefix}layers.{i}."
        _ln(g, p + "0.norm1", dim, sd)
        _ln(g, p + "0.norm2", dim, sd)
        sd[p + "0.to_q.weight"] = _rn(g, inner, dim, std=dim**-0.5)
        sd[p + "0.to_kv.weight"] = _rn(g, inner * 2, dim, std=dim**-0.5)
        sd[p + "0.to_out.weight"] = _rn(g, dim, inner, std=inner**-0.5)
        _ln(g, p + "1.0", dim, sd)
        sd[p + "1.1.weight"] = _rn(g, int(dim * ff_mult), dim, std=dim**-0.5)
        sd[p + "1.3.weight"] = _rn(g, dim, int(dim * ff_mult), std=(dim * ff_mult) ** -0.5)


def instantid_image_proj(
    seed=0, dim=1280, depth=4, heads=20, num_queries=16, embedding_dim=512, output_dim=2048
) -> Dict[str, torch.Tensor]:
    g = _g(seed)
    sd = {
        "latents": torch.randn(1, num_queries, dim, generator=g) / dim**0.5,
        "proj_in.weight": _rn(g, dim, embedding_dim, std=embedding_dim**-0.5 * 0.05),
        "proj_in.bias": _rn(g, dim),
    }
    _perceiver_layers(g, sd, "", dim, depth, heads)
    sd["proj_out.weight"] = _rn(g, output_dim, dim, std=dim**-0.5)
    sd["proj_out.bias"] = _rn(g, output_dim)
    _ln(g, "norm_out", output_dim, sd)
    return sd


def faceid_image_proj(seed=0, cross_dim=768, num_tokens=4, id_dim=512) -> Dict[str, torch.Tensor]:
    g = _g(seed)
    sd = {
        "proj.0.weight": _rn(g, id_dim * 2, id_dim, std=id_dim**-0.5),
        "proj.0.bias": _rn(g, id_dim * 2),
        "proj.2.weight": _rn(g, cross_dim * num_tokens, id_dim * 2, std=(2 * id_dim) ** -0.5),
        "proj.2.bias": _rn(g, cross_dim * num_tokens),
    }
    _ln(g, "norm", cross_dim, sd)
    return sd


def faceid_plus_image_proj(
    seed=0, cross_dim=768, clip_dim=1280, num_tokens=4, id_dim=512, depth=4
) -> Dict[str, torch.Tensor]:
    g = _g(seed)
    sd = faceid_image_proj(seed + 1, cross_dim, num_tokens, id_dim)
    p = "perceiver_resampler."
    sd[p + "proj_in.weight"] = _rn(g, cross_dim, clip_dim, std=clip_dim**-0.5)
    sd[p + "proj_in.bias"] = _rn(g, cross_dim)
    _perceiver_layers(g, sd, p, cross_dim, depth, cross_dim // 64)
    sd[p + "proj_out.weight"] = _rn(g, cross_dim, cross_dim, std=cross_dim**-0.5)
    sd[p + "proj_out.bias"] = _rn(g, cross_dim)
    _ln(g, p + "norm_out", cross_dim, sd)
    return sd


def ip_adapter_layers(
    widths: Sequence[int], context_dim: int, seed=0, with_lora: bool = False, std: float = 0.05
) -> Dict[str, torch.Tensor]:
    """'<n>.to_k_ip.weight' / '<n>.to_v_ip.weight' at n = 1, 3, 5 ... (attn2 of every block); ``with_lora``:
    the LoRA of ip-adapter-faceid*.bin too -- rank 128 ``to_{q,k,v,out}_lora.{down,up}`` for every attention
    processor (attn1 at even n, attn2 at odd n; attn2's k/v read the context)."""
    g = _g(seed)
    g2 = _g(seed + 1000)  # the LoRA's other tensors: the ip layers stay what they were
    sd = {}
    for i, w in enumerate(widths):
        n = 2 * i + 1
        sd[f"{n}.to_k_ip.weight"] = _rn(g, w, context_dim, std=std)
        sd[f"{n}.to_v_ip.weight"] = _rn(g, w, context_dim, std=std)
        if with_lora:
            for m in (n - 1, n):
                sd[f"{m}.to_q_lora.down.weight"] = _rn(g, 128, w)
                for proj in ("to_q", "to_k", "to_v", "to_out"):
                    cin = context_dim if (m == n and proj in ("to_k", "to_v")) else w
                    if proj != "to_q":
                        sd[f"{m}.{proj}_lora.down.weight"] = _rn(g2, 128, cin, std=cin**-0.5)
                    sd[f"{m}.{proj}_lora.up.weight"] = _rn(g2, w, 128, std=0.02)
    return sd


def save_adapter(path: str, image_proj: Dict[str, torch.Tensor], ip_adapter: Dict[str, torch.Tensor]) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        flat = {f"image_proj.{k}": v.contiguous() for k, v in image_proj.items()}
        flat.update({f"ip_adapter.{k}": v.contiguous() for k, v in ip_adapter.items()})
        save_file(flat, path)
    else:
        torch.save({"image_proj": image_proj, "ip_adapter": ip_adapter}, path)
    return path


# ------------------------------------------------------------------------------ tiny SD1.5 UNet


def _conv(g, sd, p, cout, cin, k=3):
    sd[p + ".weight"] = _rn(g, cout, cin, k, k, std=(cin * k * k) ** -0.5 * 0.5)
    sd[p + ".bias"] = _rn(g, cout)


def _lin(g, sd, p, cout, cin, bias=True):
    sd[p + ".weight"] = _rn(g, cout, cin, std=cin**-0.5 * 0.5)
    if bias:
        sd[p + ".bias"] = _rn(g, cout)


def _resblock(g, sd, p, cin, cout, emb):
    _ln(g, p + ".in_layers.0", cin, sd)
    _conv(g, sd, p + ".in_layers.2", cout, cin)
    _lin(g, sd, p + ".emb_layers.1", cout, emb)
    _ln(g, p + ".out_layers.0", cout, sd)
    _conv(g, sd, p + ".out_layers.3", cout, cout)
    if cin != cout:
        _conv(g, sd, p + ".skip_connection", cout, cin, k=1)


def _spatial(g, sd, p, c, ctx=768):
    _ln(g, p + ".norm", c, sd)
    _conv(g, sd, p + ".proj_in", c, c, k=1)
    t = p + ".transformer_blocks.0"
    for a in ("attn1", "attn2"):
        kv_in = c if a == "attn1" else ctx
        _lin(g, sd, f"{t}.{a}.to_q", c, c, bias=False)
        _lin(g, sd, f"{t}.{a}.to_k", c, kv_in, bias=False)
        _lin(g, sd, f"{t}.{a}.to_v", c, kv_in, bias=False)
        _lin(g, sd, f"{t}.{a}.to_out.0", c, c)
    _lin(g, sd, t + ".ff.net.0.proj", c * 8, c)
    _lin(g, sd, t + ".ff.net.2", c, c * 4)
    for n in ("norm1", "norm2", "norm3"):
        _ln(g, f"{t}.{n}", c, sd)
    _conv(g, sd, p + ".proj_out", c, c, k=1)


def tiny_sd15_unet(seed=0) -> Dict[str, torch.Tensor]:
    """An SD1.5-architecture UNet (openaimodel keys) with one level: channel_mult (1,),
    num_res_blocks 1, transformer depth 1, model_channels 320, context 768. ComfyUI's detection
    reads these keys as SD1.5. Cross-attentions: input 1, middle 0, output 0, output 1."""
    g = _g(seed)
    c, emb = 320, 1280
    sd: Dict[str, torch.Tensor] = {}
    _lin(g, sd, "time_embed.0", emb, c)
    _lin(g, sd, "time_embed.2", emb, emb)
    _conv(g, sd, "input_blocks.0.0", c, 4)
    _resblock(g, sd, "input_blocks.1.0", c, c, emb)
    _spatial(g, sd, "input_blocks.1.1", c)
    _resblock(g, sd, "middle_block.0", c, c, emb)
    _spatial(g, sd, "middle_block.1", c)
    _resblock(g, sd, "middle_block.2", c, c, emb)
    _resblock(g, sd, "output_blocks.0.0", 2 * c, c, emb)
    _spatial(g, sd, "output_blocks.0.1", c)
    _resblock(g, sd, "output_blocks.1.0", 2 * c, c, emb)
    _spatial(g, sd, "output_blocks.1.1", c)
    _ln(g, "out.0", c, sd)
    _conv(g, sd, "out.2", 4, c)
    return {k: v.to(torch.float16) for k, v in sd.items()}


def tiny_controlnet(seed=0) -> Dict[str, torch.Tensor]:
    """An IdentityNet-style ControlNet (ldm 'control_model' layout) for the tiny UNet: time_embed,
    input_blocks, middle_block, zero_convs, middle_block_out, input_hint_block. Its cross-attention
    context width is 768 = the tiny InstantID token width (IdentityNet attends to the identity tokens)."""
    g = _g(seed)
    unet = {k: v.float() for k, v in tiny_sd15_unet(seed).items()}
    sd = {k: v for k, v in unet.items() if k.startswith(("time_embed.", "input_blocks.", "middle_block."))}
    chans = [(3, 16), (16, 16), (16, 32), (32, 32), (32, 96), (96, 96), (96, 256), (256, 320)]
    for i, (cin, cout) in enumerate(chans):
        _conv(g, sd, f"input_hint_block.{2 * i}", cout, cin)
    _conv(g, sd, "zero_convs.0.0", 320, 320, k=1)
    _conv(g, sd, "zero_convs.1.0", 320, 320, k=1)
    _conv(g, sd, "middle_block_out.0", 320, 320, k=1)
    return {f"control_model.{k}": v.to(torch.float16) for k, v in sd.items()}


def tiny_clip_l(seed=0) -> Dict[str, torch.Tensor]:
    """A CLIP-L text encoder in transformers' key layout (what ComfyUI's 'Load CLIP' reads and what
    Arc2Face's encoder/model.safetensors is). Real CLIP-L shapes (12 layers, 768 wide, vocab 49408);
    layer 0 random, layers 1-11 zero (their residual branches add nothing), so it is cheap to build
    yet every token -- and the injected identity -- changes the output."""
    g = _g(seed)
    d, ff = 768, 3072
    sd = {
        "text_model.embeddings.token_embedding.weight": _rn(g, 49408, d),
        "text_model.embeddings.position_embedding.weight": _rn(g, 77, d, std=0.01),
    }
    for i in range(12):
        p = f"text_model.encoder.layers.{i}."
        z = i > 0
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{n}.weight"] = torch.zeros(d, d) if z else _rn(g, d, d, std=d**-0.5)
            sd[p + f"self_attn.{n}.bias"] = torch.zeros(d)
        sd[p + "mlp.fc1.weight"] = torch.zeros(ff, d) if z else _rn(g, ff, d, std=d**-0.5)
        sd[p + "mlp.fc1.bias"] = torch.zeros(ff)
        sd[p + "mlp.fc2.weight"] = torch.zeros(d, ff) if z else _rn(g, d, ff, std=ff**-0.5)
        sd[p + "mlp.fc2.bias"] = torch.zeros(d)
        for n in ("layer_norm1", "layer_norm2"):
            sd[p + n + ".weight"] = torch.ones(d)
            sd[p + n + ".bias"] = torch.zeros(d)
    sd["text_model.final_layer_norm.weight"] = torch.ones(d)
    sd["text_model.final_layer_norm.bias"] = torch.zeros(d)
    return {k: v.to(torch.float16) for k, v in sd.items()}


def tiny_lora(seed=0, rank=4) -> Dict[str, torch.Tensor]:
    """A LoRA for the tiny UNet's cross-attention q/k/v/out (kohya 'lora_unet_' names, as FaceID LoRAs)."""
    g = _g(seed)
    sd = {}
    for blk in ("input_blocks_1_1", "middle_block_1", "output_blocks_0_1", "output_blocks_1_1"):
        for proj, cin in (("to_q", 320), ("to_k", 768), ("to_v", 768), ("to_out_0", 320)):
            k = f"lora_unet_{blk}_transformer_blocks_0_attn2_{proj}"
            sd[k + ".lora_down.weight"] = _rn(g, rank, cin, std=0.2)
            sd[k + ".lora_up.weight"] = _rn(g, 320, rank, std=0.2)
            sd[k + ".alpha"] = torch.tensor(float(rank))
    return sd


# the tiny UNet's attention modules in diffusers' processor order (down, up, mid): ComfyUI (LDM) names
TINY_ATTENTION_ORDER = ["input_blocks_1_1", "output_blocks_0_1", "output_blocks_1_1", "middle_block_1"]


def embedded_lora_as_file(ip_adapter: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The LoRA stored in a tiny FaceID .bin, written as a separate kohya-style file ('lora_unet_<LDM name>',
    no alpha = scale 1) from the released numbering: processor n = attention n // 2 of TINY_ATTENTION_ORDER,
    attn1 for even n, attn2 for odd n. Independent of the pack's own diffusers naming."""
    sd = {}
    for n in range(2 * len(TINY_ATTENTION_ORDER)):
        blk, attn = TINY_ATTENTION_ORDER[n // 2], "attn1" if n % 2 == 0 else "attn2"
        for proj, name in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out_0")):
            k = f"lora_unet_{blk}_transformer_blocks_0_{attn}_{name}"
            sd[k + ".lora_down.weight"] = ip_adapter[f"{n}.{proj}_lora.down.weight"]
            sd[k + ".lora_up.weight"] = ip_adapter[f"{n}.{proj}_lora.up.weight"]
    return sd


TEST_FILES = {
    "unet": "visage_tiny_sd15_unet.safetensors",  # diffusion_models/ (also the Arc2Face UNet stand-in)
    "clip": "visage_tiny_clip_l.safetensors",  # text_encoders/ (also Arc2Face's encoder stand-in)
    "faceid": "visage-test-faceid_tiny.bin",  # ipadapter/
    "faceid_sdxl": "visage-test-faceid_sdxl_layout.bin",  # ipadapter/
    "faceid_plusv2": "visage-test-faceid-plusv2_tiny.bin",  # ipadapter/ (released SD1.5 Plus V2 shapes, fp16)
    "clip_vision": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",  # clip_vision/ (link to the cached ViT-H)
    "faceid_lora": "visage-test-faceid_tiny_lora.safetensors",  # loras/
    "faceid_embedded_lora": "visage-test-faceid_tiny_embedded_as_file.safetensors",  # loras/
    "instantid": "visage-test-instantid_tiny.safetensors",  # instantid/
    "controlnet": "visage-test-identitynet_tiny.safetensors",  # controlnet/
    "embeds": "visage-test-two-identities.safetensors",  # visage/embeds/
    "embeds1": "visage-test-one-identity.safetensors",  # visage/embeds/
    "pack": "visage_adapters_realdet",  # insightface/models/ (only with ../shared/fixtures)
    "photo": "visage_adapters_t1.jpg",  # input/ (only with ../shared/fixtures)
}


def _shared_fixture(*parts):
    here = os.path.dirname(os.path.abspath(__file__))
    p = os.path.normpath(os.path.join(here, "..", "..", "..", "shared", "fixtures", *parts))
    return p if os.path.exists(p) else None


def build(models_dir: str, input_dir: str) -> None:
    from safetensors.torch import save_file

    j = os.path.join

    def put(sub, name, sd):
        os.makedirs(j(models_dir, sub), exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, j(models_dir, sub, name))

    put("diffusion_models", TEST_FILES["unet"], tiny_sd15_unet(0))
    put("text_encoders", TEST_FILES["clip"], tiny_clip_l(0))
    put("loras", TEST_FILES["faceid_lora"], tiny_lora(5))
    put("controlnet", TEST_FILES["controlnet"], tiny_controlnet(6))
    faceid_ip = ip_adapter_layers(TINY_WIDTHS, 768, seed=2, with_lora=True, std=0.5)
    save_adapter(j(models_dir, "ipadapter", TEST_FILES["faceid"]), faceid_image_proj(1, 768, 4), faceid_ip)
    put("loras", TEST_FILES["faceid_embedded_lora"], embedded_lora_as_file(faceid_ip))
    # FaceID Plus V2 with the released SD1.5 image_proj shapes (CLIP-ViT-H 1280 -> 768, 4 tokens, 12 heads),
    # fp16 as released, and ip layers for the tiny UNet's four cross-attentions
    save_adapter(
        j(models_dir, "ipadapter", TEST_FILES["faceid_plusv2"]),
        {k: v.half() for k, v in faceid_plus_image_proj(12, 768, 1280, 4).items()},
        {k: v.half() for k, v in ip_adapter_layers(TINY_WIDTHS, 768, seed=13, with_lora=True, std=0.5).items()},
    )
    link_clip_vision(models_dir)
    # an SDXL-layout FaceID file (70 cross-attentions, context 2048; narrow layers to stay small)
    save_adapter(
        j(models_dir, "ipadapter", TEST_FILES["faceid_sdxl"]),
        faceid_image_proj(7, 2048, 4),
        ip_adapter_layers([8] * 70, 2048, seed=8),
    )
    save_adapter(
        j(models_dir, "instantid", TEST_FILES["instantid"]),
        instantid_image_proj(3, dim=128, depth=2, heads=2, output_dim=768),
        ip_adapter_layers(TINY_WIDTHS, 768, seed=4, std=0.5),
    )
    # the same InstantID file misplaced in models/ipadapter (users do this): the FaceID loader must refuse it
    import shutil

    shutil.copy(
        j(models_dir, "instantid", TEST_FILES["instantid"]), j(models_dir, "ipadapter", TEST_FILES["instantid"])
    )
    # two identities as saved embeddings (what 'Visage Save Face Embeds' writes)
    from visage.core.types import FaceEmbeds
    from visage.nodes.face.embeds_io import save_embeds

    os.makedirs(j(models_dir, "visage", "embeds"), exist_ok=True)
    # (as Face Embeds saves them from a pack holding the three recognizers the adapters were trained on)
    raw = torch.randn(2, 512, generator=_g(9)) * 1.5
    other = {r: torch.randn(2, 512, generator=_g(k)) * 1.5 for k, r in ((19, "w600k_r50"), (29, "arcface"))}
    save_embeds(
        FaceEmbeds.from_raw(raw, "glintr100", extra=other), j(models_dir, "visage", "embeds", TEST_FILES["embeds"])
    )
    save_embeds(
        FaceEmbeds.from_raw(raw[:1], "glintr100", extra={r: t[:1] for r, t in other.items()}),
        j(models_dir, "visage", "embeds", TEST_FILES["embeds1"]),
    )
    # a pack with the real SCRFD-500M detector (shared fixtures) and a test-built 512-d ArcFace
    # recognizer (w600k_r50 signature), plus the fixtures' group photo: real faces, keypoints, embeddings
    det = _shared_fixture("models", "det_500m.onnx")
    photo = _shared_fixture("images", "insightface", "t1.jpg")
    if det and photo:
        import shutil

        from builders.face import make_per_face

        pack = j(models_dir, "insightface", "models", TEST_FILES["pack"])
        os.makedirs(pack, exist_ok=True)
        shutil.copy(det, j(pack, "det_500m.onnx"))
        # one recognizer per method family, as a user's antelopev2 folder holds them with Arc2Face's
        # arcface.onnx and buffalo_l's w600k_r50.onnx beside glintr100
        make_per_face(j(pack, "w600k_r50.onnx"), 112, 512, in_name="input.1", out_name="683", seed=11)
        make_per_face(j(pack, "glintr100.onnx"), 112, 512, in_name="input.1", out_name="1333", seed=12)
        make_per_face(j(pack, "arcface.onnx"), 112, 512, in_name="input.1", out_name="1333", seed=13)
        os.makedirs(input_dir, exist_ok=True)
        shutil.copy(photo, j(input_dir, TEST_FILES["photo"]))
    # an InstantID keypoint image of two faces (left and right half) for IdentityNet
    import numpy as np
    from PIL import Image

    from visage.nodes.adapters.identity import keypoint_hints

    kps = [
        np.array([[12, 24], [22, 24], [17, 30], [13, 36], [21, 36]], np.float32),
        np.array([[42, 22], [52, 22], [47, 28], [43, 34], [51, 34]], np.float32),
    ]
    img = keypoint_hints(kps, (64, 64), per_identity=False)[0]
    os.makedirs(input_dir, exist_ok=True)
    Image.fromarray((img.numpy() * 255).round().astype(np.uint8)).save(j(input_dir, "visage_test_kps_two.png"))


# ------------------------------------------------------------------------------ CLIP-ViT-H-14 (FaceID Plus)
#
# IP-Adapter FaceID Plus / Plus V2 encode the aligned face with CLIP-ViT-H-14-laion2B-s32B-b79K
# (ComfyUI: models/clip_vision, 'Load CLIP Vision'). ComfyUI picks the ViT-H config only when
# "vision_model.encoder.layers.30.layer_norm1.weight" is present and loads with strict=False into
# uninitialised (torch.empty) parameters, so a file with only some keys would leave garbage weights:
# the test file is the full released layout (transformers CLIPVisionModelWithProjection keys, 32 layers,
# 1280 wide, 632M parameters), random fp16. It is built once per machine into a cache outside the repo
# (streamed tensor by tensor, so the builder never holds more than one tensor) and linked into models/.

CLIP_VISION_BUILDER = "visage-vith14-random-v1"  # bump when the contents below change
CLIP_VISION_FILE = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"


def vit_h14_spec(layers: int = 32, d: int = 1280, ff: int = 5120, proj: int = 1024, patch: int = 14, image: int = 224):
    """(key, shape, init, std) of the released CLIP-ViT-H-14 vision tower, in file order.
    init: 'n' normal(0, std), 'ln' 1 + normal(0, std), 'b' normal(0, std) (biases)."""
    tokens = (image // patch) ** 2 + 1
    e = "vision_model.embeddings."
    out = [
        (e + "class_embedding", (d,), "n", 0.02),
        (e + "patch_embedding.weight", (d, 3, patch, patch), "n", (3 * patch * patch) ** -0.5),
        (e + "position_embedding.weight", (tokens, d), "n", 0.02),
        ("vision_model.pre_layrnorm.weight", (d,), "ln", 0.05),
        ("vision_model.pre_layrnorm.bias", (d,), "b", 0.02),
    ]
    for i in range(layers):
        p = f"vision_model.encoder.layers.{i}."
        for n in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out += [(p + f"self_attn.{n}.weight", (d, d), "n", 0.02), (p + f"self_attn.{n}.bias", (d,), "b", 0.01)]
        out += [
            (p + "layer_norm1.weight", (d,), "ln", 0.05),
            (p + "layer_norm1.bias", (d,), "b", 0.02),
            (p + "mlp.fc1.weight", (ff, d), "n", 0.02),
            (p + "mlp.fc1.bias", (ff,), "b", 0.01),
            (p + "mlp.fc2.weight", (d, ff), "n", 0.01),
            (p + "mlp.fc2.bias", (d,), "b", 0.01),
            (p + "layer_norm2.weight", (d,), "ln", 0.05),
            (p + "layer_norm2.bias", (d,), "b", 0.02),
        ]
    out += [
        ("vision_model.post_layernorm.weight", (d,), "ln", 0.05),
        ("vision_model.post_layernorm.bias", (d,), "b", 0.02),
        ("visual_projection.weight", (proj, d), "n", d**-0.5),
    ]
    return out


def write_vit_h14(path: str, seed: int = 20, **spec_kw) -> str:
    """Stream a deterministic random ViT-H/14 vision tower as fp16 safetensors (one tensor in RAM at a time).
    Every tensor has its own generator (seed, index), so the bytes do not depend on anything else."""
    import json
    import struct

    import numpy as np

    spec = vit_h14_spec(**spec_kw)
    header, off = {}, 0
    for key, shape, _, _ in spec:
        n = 2 * int(np.prod(shape))
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt", "visage_builder": CLIP_VISION_BUILDER}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for i, (_key, shape, init, std) in enumerate(spec):
            t = torch.randn(*shape, generator=_g(seed * 100003 + i)).mul_(std)
            if init == "ln":
                t.add_(1.0)
            f.write(t.to(torch.float16).numpy().tobytes())
            del t
    return path


def cache_dir() -> str:
    return os.environ.get("VISAGE_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "visage-tests")


def link_clip_vision(models_dir: str) -> str:
    """models/clip_vision/<released name> -> the cached test ViT-H/14 (symlink; a copy where links fail)."""
    src = cached_vit_h14()
    dst = os.path.join(models_dir, "clip_vision", TEST_FILES["clip_vision"])
    link_or_copy(src, dst)
    return dst


def link_or_copy(src: str, dst: str) -> None:
    """``dst`` -> ``src`` as a symlink (a copy where links fail), replacing what was there."""
    import shutil

    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.lexists(dst):
        os.remove(dst)
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copy(src, dst)


def _complete_safetensors(path: str) -> bool:
    """The file exists and its size is exactly header + every tensor its header lists (not truncated)."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        return (
            header.get("__metadata__", {}).get("visage_builder") == CLIP_VISION_BUILDER
            and os.path.getsize(path) == 8 + n + end
        )
    except (OSError, ValueError, KeyError, struct.error):
        return False


def cached_vit_h14() -> str:
    """The test ViT-H/14 file, built once per machine (atomic rename: concurrent sessions are safe)."""
    d = os.path.join(cache_dir(), CLIP_VISION_BUILDER)
    path = os.path.join(d, CLIP_VISION_FILE)
    if not _complete_safetensors(path):
        import logging
        import time

        os.makedirs(d, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        t0 = time.perf_counter()
        try:
            write_vit_h14(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        logging.getLogger("visage.tests").info("built %s in %.1f s", path, time.perf_counter() - t0)
    return path

"""The released model file names that workflows/*.json name, made to exist in the test models folder.

The shipped workflows are templates for users: they name the files users download (core/manifest.json),
not test files. This builder runs after the others (``build_all`` runs it last) and lays out, under those
released names, test-built files of the same format:

* face packs: ``insightface/models/buffalo_l`` (det_10g + ``w600k_r50.onnx`` + 2d106det, 1k3d68,
  genderage) and ``insightface/models/antelopev2`` (``scrfd_10g_bnkps.onnx`` + ``glintr100.onnx`` +
  ``arcface.onnx`` (Arc2Face's recognizer, which users put into antelopev2) + 2d106det, 1k3d68, genderage).
  Both recognizers have the 512-d ArcFace signature and different weights: each identity method can ask
  for the recognizer it was trained on by id = file stem (InstantID glintr100, FaceID w600k_r50,
  Arc2Face arcface). The detectors are the test pack's (seed 0: boxes on natural photos).
* ``checkpoints/v1-5-pruned-emaonly.safetensors``: a full SD1.5 checkpoint of tiny test parts (the tiny
  SD1.5-architecture UNet, the CLIP-L test text encoder, an SD VAE decoder with random weights) that
  ComfyUI's CheckpointLoaderSimple detects as SD1.5.
* ``checkpoints/sd_xl_base_1.0.safetensors``: the SAME tiny SD1.5 checkpoint under the SDXL name. ComfyUI
  0.3.64 detects SDXL only from a UNet with model_channels 320, context 2048, adm_in_channels 2816 and
  transformer depths [0,0,2,2,10,10] (or the SSD-1B / Vega / KOALA variants), and builds SDXL's CLIP-G
  text encoder with its fixed 32-layer x 1280 config, leaving weights a file lacks uninitialised: an
  honest SDXL test checkpoint would hold a full CLIP-G (~695M parameters, 1.4 GB in fp16) plus a
  ~75M-parameter UNet, and InstantID / IdentityNet test files of SDXL width. So the InstantID templates
  run in the tests on the tiny SD1.5 model (with the tiny InstantID file of its width), which the name
  mapping here says openly.
* ``vae/vae-ft-mse-840000-ema-pruned.safetensors``: the same test VAE (Arc2Face decodes with SD1.5's VAE).
* adapters: ``instantid/ip-adapter.bin`` (the tiny InstantID tensors saved as a torch .bin, as released),
  ``controlnet/instantid-controlnet.safetensors``, ``ipadapter/ip-adapter-faceid_sd15.bin``,
  ``ipadapter/ip-adapter-faceid-plusv2_sd15.bin`` and their LoRAs in ``loras/``,
  ``diffusion_models/arc2face.safetensors``, ``text_encoders/arc2face_encoder.safetensors``,
  ``facerestore_models/GFPGANv1.4.pth`` (the test RestoreFormer; spandrel reads the architecture from
  the keys): links to the test-built files of builders/adapters.py and builders/swap.py.
* input images the templates name (``source_face.jpg``, ``target.jpg``, ``group.jpg``, ``two_faces.jpg``,
  ``frame.jpg``, ``person_a.jpg``, ``person_b.jpg``): copies of insightface's group photo t1.jpg.
"""

from __future__ import annotations

import os
import shutil
from typing import Dict

import torch

from builders import adapters as A
from builders.face import build_face_pack, make_per_face

SD15_CKPT = "v1-5-pruned-emaonly.safetensors"
SDXL_CKPT = "sd_xl_base_1.0.safetensors"
SD15_VAE = "vae-ft-mse-840000-ema-pruned.safetensors"
INPUT_IMAGES = (
    "source_face.jpg",
    "target.jpg",
    "group.jpg",
    "two_faces.jpg",
    "frame.jpg",
    "person_a.jpg",
    "person_b.jpg",
)

# released name (folder, file) -> test-built file in the same folder of the test models dir
LINKS = {
    ("checkpoints", SDXL_CKPT): ("checkpoints", SD15_CKPT),
    ("controlnet", "instantid-controlnet.safetensors"): ("controlnet", A.TEST_FILES["controlnet"]),
    ("ipadapter", "ip-adapter-faceid_sd15.bin"): ("ipadapter", A.TEST_FILES["faceid"]),
    ("ipadapter", "ip-adapter-faceid-plusv2_sd15.bin"): ("ipadapter", A.TEST_FILES["faceid_plusv2"]),
    ("loras", "ip-adapter-faceid_sd15_lora.safetensors"): ("loras", A.TEST_FILES["faceid_lora"]),
    ("loras", "ip-adapter-faceid-plusv2_sd15_lora.safetensors"): ("loras", A.TEST_FILES["faceid_lora"]),
    ("diffusion_models", "arc2face.safetensors"): ("diffusion_models", A.TEST_FILES["unet"]),
    ("text_encoders", "arc2face_encoder.safetensors"): ("text_encoders", A.TEST_FILES["clip"]),
    ("facerestore_models", "GFPGANv1.4.pth"): ("facerestore_models", "RestoreFormer.pth"),
}


def vae_decoder(seed=30, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z=4) -> Dict[str, torch.Tensor]:
    """The decoder half of the SD VAE (ldm 'AutoencoderKL' keys, what ComfyUI's default SD1.x VAE config
    builds), random fp16, plus post_quant_conv. The encoder is left out (only decoding is tested; ComfyUI
    logs the missing encoder keys)."""
    g = A._g(seed)
    sd: Dict[str, torch.Tensor] = {}

    def conv(p, cout, cin, k=3, gain=1.0):
        sd[p + ".weight"] = A._rn(g, cout, cin, k, k, std=gain * (cin * k * k) ** -0.5)
        sd[p + ".bias"] = A._rn(g, cout)

    def norm(p, c):
        sd[p + ".weight"] = torch.ones(c)
        sd[p + ".bias"] = torch.zeros(c)

    def res(p, cin, cout):
        norm(p + ".norm1", cin)
        conv(p + ".conv1", cout, cin)
        norm(p + ".norm2", cout)
        conv(p + ".conv2", cout, cout, gain=0.3)
        if cin != cout:
            conv(p + ".nin_shortcut", cout, cin, k=1)

    top = ch * ch_mult[-1]
    conv("post_quant_conv", z, z, k=1)
    conv("decoder.conv_in", top, z)
    res("decoder.mid.block_1", top, top)
    norm("decoder.mid.attn_1.norm", top)
    for n in ("q", "k", "v", "proj_out"):
        conv(f"decoder.mid.attn_1.{n}", top, top, k=1, gain=0.3)
    res("decoder.mid.block_2", top, top)
    block_in = top
    for level in reversed(range(len(ch_mult))):
        out = ch * ch_mult[level]
        for b in range(num_res_blocks + 1):
            res(f"decoder.up.{level}.block.{b}", block_in, out)
            block_in = out
        if level != 0:
            conv(f"decoder.up.{level}.upsample.conv", block_in, block_in)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", 3, block_in)
    return {k: v.to(torch.float16) for k, v in sd.items()}


def sd15_checkpoint(vae: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A full SD1.5 checkpoint (ldm prefixes) of the tiny UNet, the CLIP-L test encoder and the test VAE."""
    sd = {f"model.diffusion_model.{k}": v for k, v in A.tiny_sd15_unet(0).items()}
    sd.update({f"cond_stage_model.transformer.{k}": v for k, v in A.tiny_clip_l(0).items()})
    sd.update({f"first_stage_model.{k}": v for k, v in vae.items()})
    return sd


_link = A.link_or_copy


def build(models_dir: str, input_dir: str) -> None:
    from safetensors.torch import save_file

    j = os.path.join
    packs = j(models_dir, "insightface", "models")
    build_face_pack(j(packs, "buffalo_l"))  # det_10g.onnx + w600k_r50.onnx + per-face models
    ante = build_face_pack(
        j(packs, "antelopev2"), detector_name="scrfd_10g_bnkps.onnx", recognizer_name="glintr100.onnx"
    )
    make_per_face(j(ante, "arcface.onnx"), 112, 512, in_name="input.1", out_name="683", seed=41)

    vae = vae_decoder()
    for sub in ("checkpoints", "vae"):
        os.makedirs(j(models_dir, sub), exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.items()}, j(models_dir, "vae", SD15_VAE))
    save_file({k: v.contiguous() for k, v in sd15_checkpoint(vae).items()}, j(models_dir, "checkpoints", SD15_CKPT))

    # InstantID's released file is a torch pickle (.bin): the tiny test tensors saved that way
    A.save_adapter(
        j(models_dir, "instantid", "ip-adapter.bin"),
        A.instantid_image_proj(3, dim=128, depth=2, heads=2, output_dim=768),
        A.ip_adapter_layers(A.TINY_WIDTHS, 768, seed=4, std=0.5),
    )
    for (folder, name), (sfolder, sname) in LINKS.items():
        src = j(models_dir, sfolder, sname)
        if not os.path.exists(src):
            raise FileNotFoundError(f"builders/released.py: {src} was not built (run the other builders first)")
        _link(src, j(models_dir, folder, name))

    try:
        import insightface

        t1 = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")
    except ImportError:
        t1 = None
    if t1 and os.path.isfile(t1):
        os.makedirs(input_dir, exist_ok=True)
        for name in INPUT_IMAGES:
            shutil.copy(t1, j(input_dir, name))

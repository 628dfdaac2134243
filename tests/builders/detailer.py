"""Test models for the face detailer: a whole SD VAE (encoder + decoder, ldm AutoencoderKL keys, the
layout ComfyUI's default SD1.x VAE config builds), random fp16. The released-name checkpoint of
builders/released.py carries only the decoder (ComfyUI leaves a missing encoder uninitialised), and the
detailer encodes the face crop, so its tests load this file with 'Load VAE'."""

from __future__ import annotations

import os
from typing import Dict

import torch

from builders import adapters as A
from builders.released import vae_decoder

VAE_FILE = "visage_test_full_vae.safetensors"  # models/vae/


def vae_encoder(seed=31, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z=4) -> Dict[str, torch.Tensor]:
    g = A._g(seed)
    sd: Dict[str, torch.Tensor] = {}

    def conv(p, cout, cin, k=3, gain=1.0):
        sd[p + ".weight"] = A._rn(g, cout, cin, k, k, std=gain * (cin * k * k) ** -0.5)
        sd[p + ".bias"] = torch.zeros(cout)

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

    conv("encoder.conv_in", ch, 3)
    in_mult = (1,) + tuple(ch_mult)
    block_in = ch
    for level, mult in enumerate(ch_mult):
        block_in = ch * in_mult[level]
        out = ch * mult
        for b in range(num_res_blocks):
            res(f"encoder.down.{level}.block.{b}", block_in, out)
            block_in = out
        if level != len(ch_mult) - 1:
            conv(f"encoder.down.{level}.downsample.conv", block_in, block_in)
    res("encoder.mid.block_1", block_in, block_in)
    norm("encoder.mid.attn_1.norm", block_in)
    for n in ("q", "k", "v", "proj_out"):
        conv(f"encoder.mid.attn_1.{n}", block_in, block_in, k=1, gain=0.3)
    res("encoder.mid.block_2", block_in, block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", 2 * z, block_in, gain=0.5)
    conv("quant_conv", 2 * z, 2 * z, k=1)
    return {k: v.to(torch.float16) for k, v in sd.items()}


def build(models_dir: str, input_dir: str) -> None:
    from safetensors.torch import save_file

    d = os.path.join(models_dir, "vae")
    os.makedirs(d, exist_ok=True)
    sd = dict(vae_decoder())
    sd.update(vae_encoder())
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(d, VAE_FILE))

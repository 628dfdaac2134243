"""Test models for the face detailer: a random TAESD (the tiny SD autoencoder, ComfyUI's
``comfy.taesd.taesd.TAESD`` layout: ``taesd_encoder.*`` / ``taesd_decoder.*``, 64 channels), which
ComfyUI's 'Load VAE' detects from the keys. The detailer VAE-encodes every face crop and decodes every
attempt; the released-name checkpoint of builders/released.py carries only an SD VAE decoder (ComfyUI
leaves a missing encoder uninitialised), and a whole SD VAE costs seconds per 64 px crop on a busy
2-core runner, so the tests load this file instead."""

from __future__ import annotations

import os
from typing import Dict

import torch

from builders import adapters as A

VAE_FILE = "visage_test_taesd.safetensors"  # models/vae/


def taesd(seed=31, ch=64, z=4) -> Dict[str, torch.Tensor]:
    g = A._g(seed)
    sd: Dict[str, torch.Tensor] = {}

    def conv(p, cout, cin, k=3, bias=True, gain=1.0):
        sd[p + ".weight"] = A._rn(g, cout, cin, k, k, std=gain * (2.0 / (cin * k * k)) ** 0.5)
        if bias:
            sd[p + ".bias"] = torch.zeros(cout)

    def block(p):
        conv(p + ".conv.0", ch, ch)
        conv(p + ".conv.2", ch, ch)
        conv(p + ".conv.4", ch, ch, gain=0.2)

    e = "taesd_encoder"
    conv(f"{e}.0", ch, 3)
    block(f"{e}.1")
    for i in (2, 6, 10):
        conv(f"{e}.{i}", ch, ch, bias=False)
        for b in range(i + 1, i + 4):
            block(f"{e}.{b}")
    conv(f"{e}.14", z, ch, gain=0.5)
    d = "taesd_decoder"
    conv(f"{d}.1", ch, z)
    for i in (3, 8, 13):
        for b in range(i, i + 3):
            block(f"{d}.{b}")
        conv(f"{d}.{i + 4}", ch, ch, bias=False)
    block(f"{d}.18")
    conv(f"{d}.19", 3, ch, gain=0.3)
    sd[f"{d}.19.bias"] = torch.full((3,), 0.5)
    return sd


def build(models_dir: str, input_dir: str) -> None:
    from safetensors.torch import save_file

    d = os.path.join(models_dir, "vae")
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in taesd().items()}, os.path.join(d, VAE_FILE))

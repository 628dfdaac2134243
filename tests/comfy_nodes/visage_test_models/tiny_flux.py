"""A tiny FLUX.1 built with ComfyUI's own classes (``comfy.supported_models.Flux`` ->
``comfy.model_base.Flux`` -> ``comfy.ldm.flux.model.Flux``), random seeded weights, as a MODEL in a
``ModelPatcher`` exactly as ComfyUI's UNET loader would return it, plus a matching CONDITIONING (random
T5-like text tokens and a pooled vector, the widths of the tiny model; Flux guidance 3.5).

Sample it with ``EmptySD3LatentImage`` (16 latent channels) and ``KSampler``.
"""

import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models
import torch


def tiny_flux_config(hidden_size=64, num_heads=2, depth=4, depth_single_blocks=8, context_in_dim=32, vec_in_dim=16):
    head = hidden_size // num_heads
    a = head // 4
    return {
        "image_model": "flux",
        "in_channels": 16,
        "out_channels": 16,
        "vec_in_dim": vec_in_dim,
        "context_in_dim": context_in_dim,
        "hidden_size": hidden_size,
        "mlp_ratio": 4.0,
        "num_heads": num_heads,
        "depth": depth,
        "depth_single_blocks": depth_single_blocks,
        "axes_dim": [head - 2 * a, a, a],  # sums to the head width (ComfyUI checks it)
        "theta": 10000,
        "patch_size": 2,
        "qkv_bias": True,
        "guidance_embed": True,
    }


def build_tiny_flux(seed=0, **cfg):
    unet_config = tiny_flux_config(**cfg)
    model_config = comfy.supported_models.Flux(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device="cpu")
    g = torch.Generator().manual_seed(int(seed))
    sd = {}
    for k, v in model.diffusion_model.state_dict().items():
        if v.ndim == 1 and k.endswith(("scale", "norm.weight")):
            t = 1.0 + 0.1 * torch.randn(v.shape, generator=g)
        elif v.ndim >= 2:
            t = torch.randn(v.shape, generator=g) * (v.shape[-1] ** -0.5)
        else:
            t = 0.02 * torch.randn(v.shape, generator=g)
        sd[k] = t
    model.load_model_weights(sd, "")
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    ), unet_config


class TestTinyFlux:
    DESCRIPTION = "TEST ONLY: a tiny random FLUX.1 (ComfyUI's own Flux class) and a matching conditioning."
    CATEGORY = "tests/visage"
    FUNCTION = "build"
    RETURN_TYPES = ("MODEL", "CONDITIONING")
    RETURN_NAMES = ("model", "conditioning")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                "hidden_size": ("INT", {"default": 64, "min": 32, "max": 3072, "step": 32}),
                "depth": ("INT", {"default": 4, "min": 1, "max": 19}),
                "depth_single_blocks": ("INT", {"default": 8, "min": 1, "max": 38}),
                "text_tokens": ("INT", {"default": 8, "min": 1, "max": 512}),
            }
        }

    def build(self, seed, hidden_size, depth, depth_single_blocks, text_tokens):
        model, cfg = build_tiny_flux(
            seed, hidden_size=hidden_size, depth=depth, depth_single_blocks=depth_single_blocks
        )
        g = torch.Generator().manual_seed(int(seed) + 1)
        txt = torch.randn(1, int(text_tokens), cfg["context_in_dim"], generator=g)
        pooled = torch.randn(1, cfg["vec_in_dim"], generator=g)
        return (model, [[txt, {"pooled_output": pooled, "guidance": 3.5}]])


NODE_CLASS_MAPPINGS = {"TestTinyFlux": TestTinyFlux}
NODE_DISPLAY_NAME_MAPPINGS = {"TestTinyFlux": "TEST: Tiny Flux"}

"""A tiny SDXL UNet built with ComfyUI's own classes (``comfy.supported_models.SDXL`` ->
``comfy.model_base.SDXL`` -> openaimodel ``UNetModel``), random seeded weights, as a MODEL in a
``ModelPatcher`` as ComfyUI's checkpoint loader would return it, plus a matching CONDITIONING (random
text tokens of the tiny context width and a 1280-d pooled vector: SDXL's ADM input stays 2816).

SDXL's topology (3 levels, 2 res blocks each, cross-attention on levels 2 and 3, middle block) at small
width and transformer depth. Sample it with ``EmptyLatentImage`` and ``KSampler``.
"""

import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models
import torch


def tiny_sdxl_config(model_channels=32, context_dim=24, depth=1):
    return {
        "image_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": int(model_channels),
        "num_res_blocks": [2, 2, 2],
        "channel_mult": [1, 2, 4],
        "transformer_depth": [0, 0, depth, depth, depth, depth],
        "transformer_depth_middle": depth,
        "transformer_depth_output": [0, 0, 0, depth, depth, depth, depth, depth, depth],
        "context_dim": int(context_dim),
        "num_head_channels": 8,
        "use_spatial_transformer": True,
        "use_linear_in_transformer": True,
        "legacy": False,
        "adm_in_channels": 2816,
        "num_classes": "sequential",
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "use_checkpoint": False,
    }


def cross_attention_widths(model_channels=32, depth=1):
    """Widths of the cross-attentions in diffusers' processor order (down, up, mid), as the PuLID files."""
    mc = int(model_channels)
    return (
        [2 * mc] * (2 * depth)
        + [4 * mc] * (2 * depth)
        + [4 * mc] * (3 * depth)
        + [2 * mc] * (3 * depth)
        + [4 * mc] * depth
    )


def build_tiny_sdxl(seed=0, **cfg):
    unet_config = tiny_sdxl_config(**cfg)
    model_config = comfy.supported_models.SDXL(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device="cpu")
    g = torch.Generator().manual_seed(int(seed))
    sd = {}
    for k, v in model.diffusion_model.state_dict().items():
        if v.ndim == 1 and "norm" in k.rsplit(".", 2)[-2] and k.endswith("weight"):
            t = 1.0 + 0.1 * torch.randn(v.shape, generator=g)
        elif v.ndim >= 2:
            fan_in = max(1, v[0].numel())
            t = torch.randn(v.shape, generator=g) * fan_in**-0.5
        else:
            t = 0.02 * torch.randn(v.shape, generator=g)
        sd[k] = t
    model.diffusion_model.load_state_dict(sd, strict=True)
    patcher = comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )
    return patcher, unet_config


def tiny_conditioning(seed, context_dim, text_tokens=8):
    g = torch.Generator().manual_seed(int(seed) + 1)
    txt = torch.randn(1, int(text_tokens), int(context_dim), generator=g)
    pooled = torch.randn(1, 1280, generator=g)
    return [[txt, {"pooled_output": pooled}]]


class TestTinySDXL:
    DESCRIPTION = "TEST ONLY: a tiny random SDXL UNet (ComfyUI's own SDXL / UNetModel classes) and a conditioning."
    CATEGORY = "Visage/tests"
    FUNCTION = "build"
    RETURN_TYPES = ("MODEL", "CONDITIONING")
    RETURN_NAMES = ("model", "conditioning")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                "model_channels": ("INT", {"default": 32, "min": 16, "max": 320, "step": 16}),
                "context_dim": ("INT", {"default": 24, "min": 8, "max": 2048, "step": 8}),
                "text_tokens": ("INT", {"default": 8, "min": 1, "max": 308}),
            }
        }

    def build(self, seed, model_channels, context_dim, text_tokens):
        model, cfg = build_tiny_sdxl(seed, model_channels=model_channels, context_dim=context_dim)
        return (model, tiny_conditioning(seed, context_dim, text_tokens))


NODE_CLASS_MAPPINGS = {"TestTinySDXL": TestTinySDXL}
NODE_DISPLAY_NAME_MAPPINGS = {"TestTinySDXL": "TEST: Tiny SDXL"}

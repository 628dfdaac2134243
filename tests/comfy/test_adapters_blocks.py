"""Block keys of every cross-attention, checked against ComfyUI's own UNet (in-process, no server) and
the numbering order against diffusers' attention-processor order (what the released files use)."""

import os
import sys

import pytest
import torch
from builders import adapters as B

COMFY = os.environ.get("COMFYUI_PATH", "/opt/ComfyUI")


@pytest.fixture(scope="module")
def openaimodel():
    if not os.path.isfile(os.path.join(COMFY, "comfy", "ldm", "modules", "diffusionmodules", "openaimodel.py")):
        pytest.skip("ComfyUI not found")
    if COMFY not in sys.path:
        sys.path.insert(0, COMFY)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules import openaimodel as om

    return om, comfy.ops


def _unet(om, ops, kind, mc=32):
    common = dict(
        image_size=32,
        in_channels=4,
        out_channels=4,
        model_channels=mc,
        num_head_channels=8,
        use_spatial_transformer=True,
        legacy=False,
        operations=ops.disable_weight_init,
        dtype=torch.float32,
        device="cpu",
    )
    if kind == "sd15":
        cfg = dict(
            num_res_blocks=[2, 2, 2, 2],
            channel_mult=[1, 2, 4, 4],
            transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
            transformer_depth_middle=1,
            transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            context_dim=48,
            use_linear_in_transformer=False,
        )
    else:
        cfg = dict(
            num_res_blocks=[2, 2, 2],
            channel_mult=[1, 2, 4],
            transformer_depth=[0, 0, 2, 2, 10, 10],
            transformer_depth_middle=10,
            transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
            context_dim=64,
            use_linear_in_transformer=True,
        )
    cfg["num_heads"] = -1
    m = om.UNetModel(**common, **cfg)
    for p in m.parameters():
        torch.nn.init.normal_(p, 0, 0.02)
    return m.eval()


def _recorded_keys(unet, ctx_dim):
    seen = []

    def rec(n, context, value, extra):
        seen.append((extra["block"][0], int(extra["block"][1]), int(extra["block_index"])))
        return n, context, value

    to = {"patches": {"attn2_patch": [rec]}}
    with torch.no_grad():
        unet(
            torch.randn(1, 4, 16, 16),
            timesteps=torch.tensor([10.0]),
            context=torch.randn(1, 5, ctx_dim),
            transformer_options=to,
            y=None,
        )
    return seen


def _diffusers_attn2_widths(kind):
    from diffusers import UNet2DConditionModel

    if kind == "sd15":
        m = UNet2DConditionModel(
            block_out_channels=(32, 64, 128, 128),
            layers_per_block=2,
            cross_attention_dim=48,
            attention_head_dim=8,
            norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
    else:
        m = UNet2DConditionModel(
            block_out_channels=(32, 64, 128),
            layers_per_block=2,
            cross_attention_dim=64,
            attention_head_dim=8,
            norm_num_groups=32,
            transformer_layers_per_block=(1, 2, 10),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        )
    procs = list(m.attn_processors.keys())  # the order the released files number their layers
    widths = []
    for name in procs:
        if name.endswith("attn2.processor"):
            mod = m.get_submodule(name[: -len(".processor")])
            widths.append(mod.to_k.weight.shape[0])
    return widths, procs


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_cross_attention_blocks_match_model_and_released_numbering(openaimodel, kind):
    from visage.nodes.adapters.attention import cross_attention_blocks

    om, ops = openaimodel
    unet = _unet(om, ops, kind)
    ours = cross_attention_blocks(unet)
    keys = [k for k, _, _ in ours]
    seen = _recorded_keys(unet, 48 if kind == "sd15" else 64)
    # every key the model really uses for attn2, each once, and nothing else
    assert sorted(keys) == sorted(seen) and len(set(keys)) == len(keys)
    assert len(keys) == (16 if kind == "sd15" else 70)
    assert ("middle", 0, 0) in keys and not any(k[0] == "middle" and k[1] != 0 for k in keys)
    # widths in our order == diffusers' processor order (released to_k_ip numbering), scaled 320 -> 32
    widths, procs = _diffusers_attn2_widths(kind)
    ref = [w // 10 for w in (B.SD15_WIDTHS if kind == "sd15" else B.SDXL_WIDTHS)]
    assert widths == ref
    assert [w for _, w, _ in ours] == ref
    # the released numbering counts attn1 too: attn2 of block k is processor 2k+1
    attn2_pos = [i for i, n in enumerate(procs) if n.endswith("attn2.processor")]
    assert attn2_pos == [2 * i + 1 for i in range(len(keys))]


def test_patch_moves_with_modelpatcher_and_clone_shares_it(openaimodel):
    """ComfyUI's own ModelPatcher: clone() keeps one patch object (no weight copies), model_patches_to
    moves/casts its K/V with the UNet, and the unpatched original has no patch."""
    import comfy.model_patcher

    from visage.nodes.adapters.attention import IdentityAttentionPatch, IdentityEntry, cross_attention_blocks

    om, ops = openaimodel
    unet = _unet(om, ops, "sd15")
    blocks = cross_attention_blocks(unet)
    kv = [(torch.randn(2, 1, 4, w), torch.randn(2, 1, 4, w)) for _, w, _ in blocks]
    patch = IdentityAttentionPatch([IdentityEntry(kv, {k: i for i, (k, _, _) in enumerate(blocks)}, 1.0)])
    base = comfy.model_patcher.ModelPatcher(unet, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    m = base.clone()
    for key, _, _ in blocks:
        m.set_model_attn2_replace(patch, *key)
    m2 = m.clone()
    reg = m2.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(reg[k] is patch for k, _, _ in blocks)
    assert "patches_replace" not in base.model_options["transformer_options"]
    m2.model_patches_to(torch.float16)
    assert patch.entries[0].kv(0)[0].dtype == torch.float16
    m2.model_patches_to(torch.float32)
    assert patch.entries[0].kv(0)[0].dtype == torch.float32
    assert m2.model_patches_models() == []

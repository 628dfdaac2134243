"""InfiniteYou on a tiny Flux with a tiny InfuseNet, both ComfyUI's own classes (``comfy.ldm.flux`` Flux and
ControlNetFlux in its InstantX/diffusers form, wrapped in ComfyUI's ``ControlNet`` as its loader does),
in-process: the identity tokens reach InfuseNet as its text context (``crossattn_controlnet``) and change
the sample; weight 0 gives the plain sample exactly; the input conditioning is left untouched; a pose
keypoint image differs from the empty one; regional identities run.

ComfyUI's detection fixes Flux's width (3072), so a small InfuseNet cannot come through 'Load ControlNet
Model': it is built here the way that loader builds it. The VAE that encodes the keypoint image is a
fixed stand-in (8x average pooling + a fixed 3 -> 16 channel map): only the plumbing is under test.
"""

import os
import sys

import pytest
import torch
from builders import infiniteyou as IB

COMFY = os.environ.get("COMFYUI_PATH", "/opt/ComfyUI")
CTX = 32  # tiny T5 width = tiny InfiniteYou token width (4096 both, released)


@pytest.fixture(scope="module")
def comfy():
    if not os.path.isfile(os.path.join(COMFY, "comfy", "sample.py")):
        pytest.skip("ComfyUI not found")
    if COMFY not in sys.path:
        sys.path.insert(0, COMFY)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.controlnet
    import comfy.latent_formats
    import comfy.ldm.flux.controlnet
    import comfy.model_management
    import comfy.model_patcher
    import comfy.ops
    import comfy.sample
    import comfy.supported_models

    return comfy


def _config(depth=2, single=2):
    return {
        "image_model": "flux",
        "in_channels": 16,
        "out_channels": 16,
        "vec_in_dim": 16,
        "context_in_dim": CTX,
        "hidden_size": 64,
        "mlp_ratio": 4.0,
        "num_heads": 2,
        "depth": depth,
        "depth_single_blocks": single,
        "axes_dim": [16, 8, 8],
        "theta": 10000,
        "patch_size": 2,
        "qkv_bias": True,
        "guidance_embed": True,
    }


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in module.state_dict().items():
        if v.ndim >= 2:
            sd[k] = torch.randn(v.shape, generator=g) * (v[0].numel() ** -0.5)
        elif k.endswith("scale"):
            sd[k] = 1.0 + 0.1 * torch.randn(v.shape, generator=g)
        else:
            sd[k] = 0.02 * torch.randn(v.shape, generator=g)
    module.load_state_dict(sd, strict=True)


class StandInVAE:
    """Encodes [B,H,W,3] 0..1 to a 16-channel latent at 1/8 (the Flux VAE's shape); fixed maps."""

    def __init__(self):
        self.w = torch.randn(16, 3, generator=torch.Generator().manual_seed(11))

    def spacial_compression_encode(self):
        return 8

    def encode(self, pixels):
        x = torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1).float(), 8)
        return torch.einsum("oc,bchw->bohw", self.w, x)


class Handle:
    def __init__(self, m):
        self.m = m

    def model(self):
        return self.m


@pytest.fixture(scope="module")
def setup(comfy, tmp_path_factory):
    c = comfy
    mc = c.supported_models.Flux(_config())
    mc.set_inference_dtype(torch.float32, None)
    base = mc.get_model({}, "", device="cpu")
    _randomise(base.diffusion_model, 0)
    model = c.model_patcher.ModelPatcher(
        base, load_device=c.model_management.get_torch_device(), offload_device=torch.device("cpu")
    )
    net = c.ldm.flux.controlnet.ControlNetFlux(
        latent_input=True,
        num_union_modes=0,
        control_latent_channels=16,
        operations=c.ops.disable_weight_init,
        device="cpu",
        dtype=torch.float32,
        **_config(depth=2, single=2),
    )
    _randomise(net, 1)
    infuse = c.controlnet.ControlNet(
        net,
        compression_ratio=1,
        latent_format=c.latent_formats.Flux(),
        load_device=torch.device("cpu"),
        manual_cast_dtype=None,
        extra_conds=["y", "guidance"],
    )
    from visage.nodes.infiniteyou import apply as A
    from visage.nodes.infiniteyou import model as M

    tiny = dict(IB.TINY, output_dim=CTX)
    path = IB.write(
        str(tmp_path_factory.mktemp("infu") / "image_proj_model.bin"), IB.random_state_dict(IB.resampler_layout(**tiny))
    )
    res, info = M.load_infiniteyou(path)
    ref = A.InfiniteYouRef(Handle(res), info, "image_proj_model.bin")
    g = torch.Generator().manual_seed(2)
    pos = [[torch.randn(1, 6, CTX, generator=g), {"pooled_output": torch.randn(1, 16, generator=g), "guidance": 3.5}]]
    neg = [[torch.zeros(1, 6, CTX), {"pooled_output": torch.zeros(1, 16), "guidance": 3.5}]]
    return model, infuse, ref, pos, neg


def _faces(n=1, seed=3):
    from visage.core.types import Face, FaceSet

    g = torch.Generator().manual_seed(seed)
    fs = []
    for i in range(n):
        kps = torch.tensor([[20.0, 24], [44, 24], [32, 34], [22, 46], [42, 46]]) + 4 * i
        e = torch.randn(512, generator=g)
        fs.append(
            Face(
                image_index=0,
                bbox=torch.tensor([10.0, 10, 54, 54]),
                score=0.9,
                kps=kps,
                embedding=e,
                normed_embedding=e / e.norm(),
                encoder="recognition_arcface_ir_se50",
                embeddings={"recognition_arcface_ir_se50": e},
            )
        )
    return FaceSet(faces=(tuple(fs),), image_sizes=((64, 64),))


def _sample(comfy, model, pos, neg):
    latent = torch.zeros(1, 16, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(4))
    return comfy.sample.sample(model, noise, 2, 1.0, "euler", "simple", pos, neg, latent, disable_pbar=True, seed=4)


def _apply(setup, weight=1.0, faces=None, pose_faces=None, masks=None, start=0.0, end=1.0):
    from visage.nodes.infiniteyou import apply as A

    model, infuse, ref, pos, neg = setup
    return A.apply_infiniteyou(
        pos,
        neg,
        infuse,
        ref,
        weight,
        start,
        end,
        faces=faces or _faces(),
        pose_faces=pose_faces,
        masks=masks,
        vae=StandInVAE(),
    )


def test_infusenet_takes_the_identity_tokens(comfy, setup):
    model, _, _, pos, neg = setup
    before = [t[0].clone() for t in pos]
    plain = _sample(comfy, model, pos, neg)
    p, n, hints = _apply(setup)
    assert hints.shape == (1, 64, 64, 3) and float(hints.max()) == 0.0  # no pose: the empty image
    assert "control" not in pos[0][1] and all(torch.equal(a, t[0]) for a, t in zip(before, pos))
    assert p[0][1]["cross_attn_controlnet"].shape == (1, IB.TINY["num_queries"], CTX)
    out = _sample(comfy, model, p, n)
    assert not torch.allclose(out, plain, atol=1e-5)
    # another identity -> another sample; weight 0 -> the plain sample exactly
    other = _sample(comfy, model, _apply(setup, faces=_faces(seed=9))[0], n)
    assert not torch.allclose(other, out, atol=1e-5)
    assert torch.equal(_sample(comfy, model, _apply(setup, weight=0.0)[0], n), plain)
    # a pose: the keypoints drawn (InstantID's drawing) change the hint and the sample
    p2, _, h2 = _apply(setup, pose_faces=_faces())
    assert float(h2.max()) > 0.5
    assert not torch.allclose(_sample(comfy, model, p2, n), out, atol=1e-5)


def test_two_identities_with_masks(comfy, setup):
    model, _, _, pos, neg = setup
    masks = torch.zeros(2, 64, 64)
    masks[0, :, :32] = 1
    masks[1, :, 32:] = 1
    p, n, hints = _apply(setup, faces=_faces(2), pose_faces=_faces(2), masks=masks)
    assert hints.shape[0] == 2 and len(p) == 2  # one conditioning per identity (the masks cover everything)
    assert not torch.allclose(_sample(comfy, model, p, n), _sample(comfy, model, pos, neg), atol=1e-5)

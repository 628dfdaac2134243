"""Identity adapters: cost of our attn2 patch inside ComfyUI's own SDXL transformer stack.

``run(args) -> rows`` for ``bench/run.py``; alone: ``.venv/bin/python bench/bench_adapters.py [--quick]
[--device cpu|cuda] [--depth N]``.

What is timed (random weights, float32 on CPU / float16 on CUDA):
ComfyUI's ``SpatialTransformer`` (comfy/ldm/modules/attention.py) at SDXL's level-2 widths --
1280 channels, 20 heads x 64, linear proj, context width 2048, 77 text tokens -- with ``depth``
transformer blocks (SDXL has 10; on the CPU the default is 2 to stay tractable), on the
level-2 feature map of a 1024 px image (32x32) on CUDA or of a 512 px image (16x16) on the CPU,
batch 2 (cond + uncond as the sampler runs it), ``transformer_options`` as ComfyUI's UNet fills them.

* ref: the stack as ComfyUI runs it unpatched (its own optimized_attention in attn2).
* ours: the same stack with the Visage ``IdentityAttentionPatch`` on every block's attn2
  (through ``transformer_options['patches_replace']['attn2']``, exactly how the nodes install it):
  InstantID (1 identity x 16 tokens), FaceID (1 x 4 tokens), two identities with region masks
  (2 x 16 tokens), and the patch outside its start/end window (falls back to ComfyUI's attention).
ratio = ref / ours (below 1 = the adapter's overhead). A whole SDXL UNet step adds the ResBlocks and
the other levels (70 cross-attentions in all), so the per-step overhead is smaller than this ratio shows.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
COMFY = os.environ.get("COMFYUI_PATH", "/opt/ComfyUI")


def _comfy(device):
    if COMFY not in sys.path:
        sys.path.insert(0, COMFY)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    if device.type == "cpu":
        comfy.cli_args.args.cpu = True
    import comfy.ops
    from comfy.ldm.modules import attention as cattn

    return comfy.ops, cattn


def _once(fn, device, common):
    import time

    common.sync(device)
    t0 = time.perf_counter()
    fn()
    common.sync(device)
    return (time.perf_counter() - t0) * 1000.0


def run(args):
    sys.path.insert(0, HERE)
    import common

    common.ensure_package()
    import torch

    from visage.nodes.adapters.attention import IdentityAttentionPatch, IdentityEntry

    device = getattr(args, "torch_device", None) or torch.device(getattr(args, "device", "cpu") or "cpu")
    if isinstance(device, str):
        device = torch.device(device)
    quick = bool(getattr(args, "quick", False))
    if not os.path.isfile(os.path.join(COMFY, "comfy", "ldm", "modules", "attention.py")):
        return [
            common.row(
                "adapters: attn2 patch",
                "-",
                None,
                None,
                "ComfyUI SpatialTransformer",
                note=f"skipped: no ComfyUI at {COMFY}",
            )
        ]
    ops, cattn = _comfy(device)
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    depth = getattr(args, "depth", None) or (10 if cuda else (1 if quick else 2))
    side = 32 if cuda else 16
    C, heads, dh, ctx_dim, B = 1280, 20, 64, 2048, 2
    torch.manual_seed(0)
    st = cattn.SpatialTransformer(
        C,
        heads,
        dh,
        depth=depth,
        context_dim=ctx_dim,
        use_linear=True,
        operations=ops.disable_weight_init,
        dtype=dtype,
        device=device,
    )
    with torch.no_grad():
        for p in st.parameters():
            p.normal_(0, 0.02)
    st.eval()
    x = torch.randn(B, C, side, side, device=device, dtype=dtype)
    ctx = torch.randn(B, 77, ctx_dim, device=device, dtype=dtype)
    keys = [("input", 7, i) for i in range(depth)]

    def comfy_attn(q, k, v, extra):
        return cattn.optimized_attention(q, k, v, extra["n_heads"], attn_precision=extra.get("attn_precision"))

    def entry(n_id, tokens, masks=None, window=(float("inf"), 0.0)):
        kv = [(torch.randn(2, n_id, tokens, C) * 0.05, torch.randn(2, n_id, tokens, C) * 0.05) for _ in keys]
        return IdentityEntry(
            kv, {k: i for i, k in enumerate(keys)}, 0.8, sigma_start=window[0], sigma_end=window[1], masks=masks
        )

    half = torch.zeros(2, side * 8, side * 8)
    half[0, :, : side * 4] = 1
    half[1, :, side * 4 :] = 1
    cases = [
        ("InstantID 1x16 tokens", entry(1, 16)),
        ("FaceID 1x4 tokens", entry(1, 4)),
        ("2 identities x16, masks", entry(2, 16, half)),
        ("outside start/end window", entry(1, 16, window=(5.0, 2.0))),
    ]

    def options(patch):
        # the stack sits at the latent's resolution here (original_shape = latent size)
        to = {
            "block": ("input", 7),
            "cond_or_uncond": [1, 0],
            "sigmas": torch.full((B,), 10.0, device=device),
            "original_shape": [B, 4, side, side],
        }
        if patch is not None:
            to["patches_replace"] = {"attn2": {k: patch for k in keys}}
        return to

    def runner(patch):
        to = options(patch)

        def f():
            with torch.no_grad():
                st(x, context=ctx, transformer_options=dict(to))

        return f

    shape = f"{depth} blocks, {C}ch {side}x{side}, B={B}, ctx 77x{ctx_dim}"
    rounds = 3 if quick else 7
    plain = runner(None)
    plain()
    rows = []
    for name, e in cases:
        patch = IdentityAttentionPatch([e], text_attention=comfy_attn).to(device)
        f = runner(patch)
        f()
        t_ref, t_ours = [], []
        for _ in range(rounds):  # interleaved, min of each: a shared machine's load hits both alike
            t_ref.append(_once(plain, device, common))
            t_ours.append(_once(f, device, common))
        ours, ref_ms = min(t_ours), min(t_ref)
        r = common.row(
            f"adapters: SDXL transformer stack + {name}",
            shape,
            ours,
            ref_ms,
            "same stack unpatched (ComfyUI)",
            note=f"{device.type} {dtype}, min of {rounds} interleaved runs".replace("torch.", ""),
        )
        r["ratio"] = ref_ms / ours if ours else None
        rows.append(r)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--depth", type=int, default=None)
    args = ap.parse_args(argv)
    import torch

    args.torch_device = torch.device(args.device)
    sys.path.insert(0, HERE)
    import common

    rows = run(args)
    print(common.format_table(rows, args.torch_device))


if __name__ == "__main__":
    main()

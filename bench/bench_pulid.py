"""PuLID-FLUX: cost of the identity patch on ComfyUI's own Flux blocks, and of the identity tokens per face.

``run(args) -> rows`` for ``bench/run.py``; alone: ``.venv/bin/python bench/bench_pulid.py [--quick]
[--device cpu|cuda]``. Not part of CI.

What is timed (random weights; float32 on CPU, bfloat16 on CUDA):

* ComfyUI's ``DoubleStreamBlock`` and ``SingleStreamBlock`` (comfy/ldm/flux/layers.py) at a small width
  (CPU: 512 = 4 heads x 128; CUDA: Flux's 3072 = 24 x 128), 512 text tokens and the image tokens of a
  512 px (CPU, 1024 tokens) or 1024 px (CUDA, 4096 tokens) image, batch 1.
  ref: the block alone. ours: the same block called through Visage's ``PulidBlockPatch`` (the
  ``patches_replace['dit']`` patch the node installs) on a block PuLID patches (double 0, single 0):
  block + one PerceiverAttentionCA (16 heads of 128 at full width; width/128 heads here) over 32 identity
  tokens of 2048. ratio = ref / ours (below 1 = the patch's overhead on that block), best of interleaved rounds. Only 20 of Flux's 57
  blocks carry a CA, so a whole step's overhead is about 20/57 of the per-block one.
* identity tokens per reference face at the released sizes: EVA02-CLIP-L-14-336 (timm) on the 336 input +
  IDFormer (released widths); face parsing (BiSeNet, 512) and the crop are timed apart. No reference:
  ``ref`` is empty.
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
    from comfy.ldm.flux import layers

    return comfy.ops, layers


def run(args):
    sys.path.insert(0, HERE)
    import common

    common.ensure_package()
    import torch

    from visage.nodes.pulid import encoders as E
    from visage.nodes.pulid import patching as P

    device = getattr(args, "torch_device", None) or torch.device(getattr(args, "device", "cpu") or "cpu")
    if isinstance(device, str):
        device = torch.device(device)
    quick = bool(getattr(args, "quick", False))
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    rows = []
    if not os.path.isfile(os.path.join(COMFY, "comfy", "ldm", "flux", "layers.py")):
        return [common.row("pulid: flux blocks", "-", None, None, "ComfyUI Flux blocks", note=f"no ComfyUI at {COMFY}")]
    ops, layers = _comfy(device)
    width = 3072 if cuda else 512
    heads = width // 128
    n_txt, n_img = 512, (4096 if cuda else 1024)
    torch.manual_seed(0)
    kw = dict(dtype=dtype, device=device, operations=ops.disable_weight_init)
    double = layers.DoubleStreamBlock(width, heads, mlp_ratio=4.0, qkv_bias=True, **kw)
    single = layers.SingleStreamBlock(width, heads, mlp_ratio=4.0, **kw)
    for m in (double, single):
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.02)
        m.eval()
    cas = torch.nn.ModuleList(
        E.PerceiverAttentionCA(dim=width, dim_head=128, heads=heads, kv_dim=2048) for _ in range(20)
    ).to(device, dtype)
    with torch.no_grad():
        for p in cas.parameters():
            p.normal_(0, 0.02)

    class _Pulid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pulid_ca = cas

    mod = _Pulid()
    ident = P.Identity(torch.randn(1, 32, 2048), 1.0)
    run_ = P.PulidRun(lambda: mod, lambda: [], [ident], 1e9, 0.0)
    emb = layers.EmbedND(dim=128, theta=10000, axes_dim=[16, 56, 56])
    side = int(n_img**0.5)
    ids = torch.zeros(1, n_txt + n_img, 3, device=device)
    ids[0, n_txt:, 1] = torch.arange(side, device=device).repeat_interleave(side).float()
    ids[0, n_txt:, 2] = torch.arange(side, device=device).repeat(side).float()
    pe = emb(ids).to(dtype)
    img = torch.randn(1, n_img, width, device=device, dtype=dtype)
    txt = torch.randn(1, n_txt, width, device=device, dtype=dtype)
    vec = torch.randn(1, width, device=device, dtype=dtype)
    to = {P.TXT_LEN: n_txt}

    def d_ref():
        with torch.no_grad():
            double(img=img, txt=txt, vec=vec, pe=pe)

    dpatch = P.PulidBlockPatch("double", 0, [run_])

    def d_wrap(a):
        o = {}
        o["img"], o["txt"] = double(img=a["img"], txt=a["txt"], vec=a["vec"], pe=a["pe"])
        return o

    def d_ours():
        with torch.no_grad():
            dpatch(
                {"img": img, "txt": txt, "vec": vec, "pe": pe, "transformer_options": to}, {"original_block": d_wrap}
            )

    x = torch.cat((txt, img), 1)

    def s_ref():
        with torch.no_grad():
            single(x, vec=vec, pe=pe)

    spatch = P.PulidBlockPatch("single", 0, [run_])

    def s_ours():
        with torch.no_grad():
            spatch(
                {"img": x, "vec": vec, "pe": pe, "transformer_options": to},
                {"original_block": lambda a: {"img": single(a["img"], vec=a["vec"], pe=a["pe"])}},
            )

    shape = f"w{width} txt{n_txt} img{n_img}"
    import time

    def once(fn):
        common.sync(device)
        t0 = time.perf_counter()
        fn()
        common.sync(device)
        return (time.perf_counter() - t0) * 1000.0

    rounds = 3 if quick else 7
    for name, ours, ref in (("double block + PuLID CA", d_ours, d_ref), ("single block + PuLID CA", s_ours, s_ref)):
        ref(), ours()  # warm-up
        # interleaved, best of N: a shared machine's load hits both sides alike
        t_ref, t_ours = [], []
        for _ in range(rounds):
            t_ref.append(once(ref))
            t_ours.append(once(ours))
        rows.append(common.row(f"pulid: {name}", shape, min(t_ours), min(t_ref), "the ComfyUI Flux block alone"))

    # identity tokens per reference face, released sizes
    from visage.nodes.pulid import eva_clip as EC

    with torch.device("meta"):
        tower = EC.EvaClipVision(EC.EvaConfig())
    tower = tower.to_empty(device="cpu")
    with torch.no_grad():
        for p in tower.parameters():
            p.normal_(0, 0.02)
    tower.tower.rope = EC.build_tower(EC.EvaConfig(depth=1)).rope
    tower = tower.to(device, dtype).eval()
    idf = E.IDFormer().to(device, dtype).eval()
    x336 = torch.randn(1, 3, 336, 336, device=device, dtype=dtype)
    emb512 = torch.randn(1, 512, device=device, dtype=dtype)

    def tokens():
        with torch.no_grad():
            v, hidden = EC.pulid_vit_features(tower, x336)
            idf(torch.cat((emb512, v), -1), hidden)

    def eva_only():
        with torch.no_grad():
            tower(x336)

    tokens(), eva_only()  # warm-up
    tt, te = [], []
    for _ in range(2 if quick else 3):
        tt.append(once(tokens))
        te.append(once(eva_only))
    t_tok, t_eva = min(tt), min(te)
    rows.append(common.row("pulid: identity tokens / face", "EVA-L/336 + IDFormer", t_tok, None, "-"))
    rows.append(common.row("pulid: of which EVA-CLIP", "EVA02-L 336", t_eva, None, "-"))

    from visage.nodes.face.parsing import BiSeNet

    parser = BiSeNet().to(device, dtype).eval()
    x512 = torch.randn(1, 3, 512, 512, device=device, dtype=dtype)

    def parse():
        with torch.no_grad():
            parser(x512)

    parse()
    rows.append(common.row("pulid: face parsing / face", "BiSeNet 512", min(once(parse) for _ in range(3)), None, "-"))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    import common
    import torch

    rows = run(args)
    print(common.format_table(rows, torch.device(args.device)))


if __name__ == "__main__":
    main()

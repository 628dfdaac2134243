"""PuLID SDXL and InfiniteYou: the identity-token computation per reference face, at the released sizes.

``run(args) -> rows`` for ``bench/run.py``; alone: ``.venv/bin/python bench/bench_pulid_sdxl.py [--quick]
[--device cpu|cuda]``. Not part of CI. Random weights; float32 on CPU, float16 on CUDA.

* PuLID SDXL v1: IDEncoder on one reference (id_cond 1280 + five EVA-CLIP hidden states 577 x 1024) ->
  10 tokens; v1.1: IDFormer on 1 and on 3 stacked references -> 32 tokens; then the K/V of the 70 SDXL
  cross-attentions (id_to_k / id_to_v of tokens + num_zero zero tokens), done once per node run.
* InfiniteYou: the resampler (1280 wide, depth 4, 20 heads) on one 512-d embedding -> 8 tokens of 4096.

EVA-CLIP and the face crop / parsing are the PuLID-FLUX bench's (bench_pulid.py). No reference: ``ref``
is empty.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(args):
    sys.path.insert(0, HERE)
    import common

    common.ensure_package()
    import torch

    from visage.nodes.adapters.projection import Resampler
    from visage.nodes.pulid import encoders as E
    from visage.nodes.pulid import sdxl as S

    device = getattr(args, "torch_device", None) or torch.device(getattr(args, "device", "cpu") or "cpu")
    if isinstance(device, str):
        device = torch.device(device)
    quick = bool(getattr(args, "quick", False))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)

    def ready(m):
        for p in m.parameters():
            p.data.normal_(0, 0.02)
        return m.to(device, dtype).eval().requires_grad_(False)

    rows = []
    v1, v11 = ready(E.IDEncoder()), ready(E.IDFormer())
    widths = [640] * 4 + [1280] * 50 + [640] * 6 + [1280] * 10
    layers = torch.nn.ModuleDict({str(2 * i + 1): E.IDAttnKV(w) for i, w in enumerate(widths)})
    layers = ready(layers)

    def inputs(n):
        return torch.randn(n, 1280, device=device, dtype=dtype), [
            torch.randn(n, 577, 1024, device=device, dtype=dtype) for _ in range(5)
        ]

    for name, enc, kind, n in (
        ("v1 IDEncoder, 1 ref", v1, "pulid_sdxl_v1", 1),
        ("v1.1 IDFormer, 1 ref", v11, "pulid_sdxl_v1_1", 1),
        ("v1.1 IDFormer, 3 refs stacked", v11, "pulid_sdxl_v1_1", 3),
    ):
        idc, hid = inputs(n)

        def tokens(enc=enc, kind=kind, idc=idc, hid=hid):
            return S.sdxl_tokens(enc, kind, idc, hid)

        t = common.timeit(tokens, device, quick)
        rows.append(common.row(f"pulid sdxl: tokens {name}", f"{n}x(1280 + 5x577x1024)", t, None, "-"))
    c, u = S.sdxl_tokens(v11, "pulid_sdxl_v1_1", *inputs(1))
    t = common.timeit(lambda: S.project_kv(layers, c, u, 20), device, quick)
    rows.append(common.row("pulid sdxl: K/V of 70 layers", "2x(32+20)x2048", t, None, "-", note="once per run"))
    res = Resampler(dim=1280, depth=4, dim_head=64, heads=20, num_queries=8, embedding_dim=512, output_dim=4096)
    res = ready(res)
    e = torch.randn(1, 1, 512, device=device, dtype=dtype)
    t = common.timeit(lambda: res(e), device, quick)
    rows.append(common.row("infiniteyou: resampler tokens", "1x512 -> 8x4096", t, None, "-"))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    sys.path.insert(0, HERE)
    import common
    import torch

    rows = run(a)
    print(common.format_table(rows, torch.device(a.device)))

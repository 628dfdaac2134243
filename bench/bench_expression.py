"""Expression transfer per-frame time at 512x512 crops, broken down by network.

``run(args) -> rows`` (dicts: op, shape, ours_ms, ref_ms, ratio, note) for ``bench/run.py``; also runs
alone: ``.venv/bin/python bench/bench_expression.py [--frames N] [--device cpu|cuda]``.

The networks are built at the released widths (random weights: timing does not depend on the values);
a synthetic 640x640 source with one face is animated by N driving frames through the full pipeline
(LivePortrait crop at 512, networks at 256 in / 512 out, paste back). Per-frame numbers are the
driving-loop costs divided by N; the one-off source preparation is reported separately. There is no
reference implementation installed here (LivePortrait itself is not a dependency), so ref_ms is None.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _import():
    import common

    common.ensure_package()
    from visage.core.types import Face, FaceSet
    from visage.nodes.expression import networks as N
    from visage.nodes.expression import pipeline as PL

    return Face, FaceSet, N, PL


class _Models:
    def __init__(self, N, PL, device, dtype):
        torch.manual_seed(0)
        mods = {k: N.build(k).to(device=device, dtype=dtype) for k in N.KINDS}
        self.appearance = PL.Direct(mods["appearance_feature_extractor"])
        self.motion = PL.Direct(mods["motion_extractor"])
        self.warping = PL.Direct(mods["warping_module"])
        self.spade = PL.Direct(mods["spade_generator"])
        self.stitching = PL.Direct(mods["stitching_retargeting_module"])
        self.device, self.dtype = torch.device(device), dtype


def run(args=None):
    frames = int(getattr(args, "frames", None) or 2)
    device = getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if (device == "cuda" and getattr(args, "fp16", True)) else torch.float32
    Face, FaceSet, N, PL = _import()
    eng = PL.Engine(_Models(N, PL, device, dtype), chunk=1)
    size = 640
    src = torch.rand(1, size, size, 3, device=device)
    # a face whose LivePortrait crop is 512 px: landmark extent 512 / 2.3
    s = 512 / 2.3 / 2
    c = size / 2
    kps = torch.tensor(
        [
            [c - 0.4 * s, c - 0.3 * s],
            [c + 0.4 * s, c - 0.3 * s],
            [c, c],
            [c - 0.3 * s, c + 0.45 * s],
            [c + 0.3 * s, c + 0.45 * s],
        ]
    )
    face = Face(0, torch.tensor([c - s, c - s, c + s, c + s]), 0.9, kps)
    sfs = FaceSet(((face,),), ((size, size),))
    drv = torch.rand(frames, size, size, 3, device=device)
    dfs = FaceSet(tuple((face.with_(image_index=i),) for i in range(frames)), ((size, size),) * frames)
    # warm-up (allocations, cudnn autotune) on one frame
    PL.transfer(eng, src, sfs, drv[:1], FaceSet(dfs.faces[:1], dfs.image_sizes[:1]), color_transfer=True)
    eng.timings.clear()
    t0 = time.perf_counter()
    res = PL.transfer(eng, src, sfs, drv, dfs, color_transfer=True, smoothing=0.3)
    total = time.perf_counter() - t0
    assert res.generated == frames
    t = dict(eng.timings)
    card = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    shape = f"{frames} frames, crop 512, nets 256->512"
    per = lambda ms: ms * 1000.0 / frames
    rows = []
    src_prep = t.get("appearance_feature_extractor", 0.0)
    # the driving motion extractor runs once per frame; one extra run is the source's
    m_total = t.get("motion_extractor", 0.0)
    m_src = m_total / (frames + 1)
    for name, sec in (
        ("motion_extractor (driving)", m_total - m_src),
        ("warping_module", t.get("warping_module", 0.0)),
        ("spade_generator", t.get("spade_generator", 0.0)),
        ("stitching_retargeting_module", t.get("stitching_retargeting_module", 0.0)),
        ("crop (512)", t.get("crop", 0.0) * frames / (frames + 1)),
        ("paste back", t.get("paste", 0.0)),
    ):
        rows.append(
            {
                "op": f"expression_transfer/{name}",
                "shape": shape,
                "ours_ms": round(per(sec), 1),
                "ref_ms": None,
                "ratio": None,
                "note": f"per frame; {card}; {str(dtype).replace('torch.', '')}",
            }
        )
    rows.append(
        {
            "op": "expression_transfer/source prep (F + M, once)",
            "shape": "1 source",
            "ours_ms": round((src_prep + m_src) * 1000.0, 1),
            "ref_ms": None,
            "ratio": None,
            "note": card,
        }
    )
    rows.append(
        {
            "op": "expression_transfer/total per frame",
            "shape": shape,
            "ours_ms": round(per(total), 1),
            "ref_ms": None,
            "ratio": None,
            "note": f"wall clock incl. source prep amortised; {card}",
        }
    )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    for r in run(args):
        print(f"{r['op']:<55} | {r['shape']:<36} | {r['ours_ms']:>10} ms | {r['note']}")


if __name__ == "__main__":
    main()

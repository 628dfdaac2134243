"""Face Detailer cost: detailing 1 and 4 faces vs re-sampling the whole image at the same working resolution.

``.venv/bin/python bench/bench_detailer.py [--size 256] [--steps 4] [--reps 3]`` (needs COMFYUI_PATH: the
sampling is ComfyUI's own, in process). Not part of CI.

Models: the tests' tiny SD1.5-architecture UNet (tests/builders/adapters.py, random weights) and a random
TAESD (tests/builders/detailer.py), on the CPU. A released UNet / VAE costs far more per pixel, but both
sides run the same networks, so the ratio is what the pixel counts and the detailer's own work (crop,
mask, paste-back) make it.

* ours: ``nodes.detailer.detail.detail`` over N faces of a 960x640 image (synthetic smooth image, faces
  of 48 px between the eyes), each cropped at ``--size`` and sampled with ComfyUI's sampler
  (``comfy_glue.sample_pixels``: VAE encode, sample with the landmark noise mask, decode), pasted back.
* reference: the whole image re-sampled at the same working resolution - scaled by the factor the face
  crops are scaled by (so a face gets the same pixels), encoded, sampled, decoded (the cost of a
  "hires fix" pass that would redraw the faces as finely).
Both in one process, interleaved rep by rep; the median is reported with the cost ratio ours / reference
(below 1 = the detailer is cheaper; bench/run.py's own ratio column is the inverse).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
log = logging.getLogger("visage.bench")


def _setup_comfy():
    path = os.environ.get("COMFYUI_PATH")
    if not path or not os.path.isdir(path):
        raise SystemExit("bench_detailer: set COMFYUI_PATH to a ComfyUI checkout (the sampling is ComfyUI's)")
    sys.argv = sys.argv[:1] + ["--cpu"]
    sys.path.insert(0, path)
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import comfy.options

    comfy.options.enable_args_parsing()


def _models():
    import comfy.sd
    from builders import adapters as A
    from builders.detailer import taesd
    from builders.released import sd15_checkpoint, vae_decoder

    sd = sd15_checkpoint(vae_decoder())
    model, clip, _, _ = comfy.sd.load_state_dict_guess_config(sd, output_vae=False, output_clip=True)
    vae = comfy.sd.VAE(sd=taesd())
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a face"))
    del A
    return model, vae, cond


def run(args=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(args if isinstance(args, list) else [])
    if not os.path.isdir(os.environ.get("COMFYUI_PATH") or ""):
        log.warning("bench_detailer: skipped (set COMFYUI_PATH: the sampling is ComfyUI's)")
        return []
    _setup_comfy()
    import torch

    sys.path.insert(0, os.path.join(REPO, "tests", "unit"))
    from test_detailer import make_face, smooth_image

    from visage.nodes import comfy_glue
    from visage.nodes.detailer.detail import Settings, detail
    from visage.nodes.detailer.geometry import plan_crop

    torch.set_grad_enabled(False)
    model, vae, cond = _models()
    H, W = 640, 960
    img = smooth_image(H, W).unsqueeze(0)
    centers = [(240.0, 200.0), (720.0, 200.0), (240.0, 460.0), (720.0, 460.0)]
    faces = [make_face(c, 48.0, r) for c, r in zip(centers, (0.0, 15.0, -20.0, 5.0))]
    scale = plan_crop(faces[0], a.size).scale

    def sample(crop, mask, job, seed):
        return comfy_glue.sample_pixels(model, vae, cond, cond, crop, mask, seed, a.steps, 1.0, "euler", "normal", 1.0)

    def ours(n):
        return detail(img, [faces[:n]], [[None] * n], sample, Settings(size=a.size, max_upscale=64))

    wh, ww = int(round(H * scale / 8)) * 8, int(round(W * scale / 8)) * 8

    def whole():
        up = torch.nn.functional.interpolate(img.permute(0, 3, 1, 2), size=(wh, ww), mode="bilinear")
        out = comfy_glue.sample_pixels(
            model, vae, cond, cond, up.permute(0, 2, 3, 1), None, 0, a.steps, 1.0, "euler", "normal", 1.0
        )
        return torch.nn.functional.interpolate(out.permute(0, 3, 1, 2), size=(H, W), mode="area")

    with torch.inference_mode():
        ours(1), whole()  # warm-up
        t = {1: [], 4: [], "whole": []}
        for _ in range(a.reps):
            for key, fn in ((1, lambda: ours(1)), (4, lambda: ours(4)), ("whole", whole)):
                t0 = time.perf_counter()
                fn()
                t[key].append((time.perf_counter() - t0) * 1000.0)
    med = {k: statistics.median(v) for k, v in t.items()}
    rows = []
    for n in (1, 4):
        r = {
            "op": f"face detailer, {n} face(s)",
            "shape": f"{W}x{H} image, crops {a.size}^2, whole image at {ww}x{wh} (x{scale:.2f})",
            "ours_ms": med[n],
            "ref_ms": med["whole"],
            "reference": "whole image re-sampled at the same working resolution",
            "bytes": None,
            "memory_bound": False,
            "note": f"cost ratio detailer / whole image = {med[n] / med['whole']:.3f}",
        }
        r["ratio"] = med[n] / med["whole"]
        rows.append(r)
    return rows


def main():
    logging.basicConfig(level=logging.WARNING)
    rows = run(sys.argv[1:])
    for r in rows:
        sys.stdout.write(
            f"{r['op']:<26} | {r['shape']} | ours {r['ours_ms']:.0f} ms | whole image {r['ref_ms']:.0f} ms | "
            f"ratio {r['ratio']:.3f}\n"
        )


if __name__ == "__main__":
    main()

"""Face analysis of the group photo t1.jpg: ours (torch) vs insightface + onnxruntime, same run.

Packs: the real small fixture models (SCRFD-500M + MobileFaceNet + PFLD, ../shared/fixtures) when
present, and a buffalo_l-shaped pack of tiny test-built models (always). Rows: detection only and
the full analysis, per image, batch 1; plus batch 8 (ours batches across images; insightface loops).
"""

from __future__ import annotations

import os
import sys
import tempfile

import common

common.ensure_package()


def _packs(tmp):
    sys.path.insert(0, os.path.join(common.REPO, "tests"))
    from builders.face import build_face_pack

    packs = []
    fx = os.path.normpath(os.path.join(common.REPO, "..", "shared", "fixtures", "models"))
    if os.path.isfile(os.path.join(fx, "det_500m.onnx")):
        d = os.path.join(tmp, "fixtures_real")
        os.makedirs(d)
        # neutral recognizer name: insightface's defaults apply on both sides (same work)
        os.symlink(os.path.join(fx, "det_500m.onnx"), os.path.join(d, "det_500m.onnx"))
        os.symlink(os.path.join(fx, "mobileface_paddle_128d.onnx"), os.path.join(d, "recognizer.onnx"))
        packs.append(("real det_500m+mbf", d))
    packs.append(("test buffalo_l-shaped", build_face_pack(os.path.join(tmp, "test_pack"))))
    return packs


def run(args):
    import cv2
    import insightface
    import torch
    from insightface.app import FaceAnalysis

    from visage.nodes.face.analyzer import load_analyzer

    device = args.torch_device
    img = cv2.imread(os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg"))
    batch1 = torch.from_numpy(img[..., ::-1].copy()).float()[None] / 255.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        engines = ["torch"] + (["onnxruntime"] if device.type == "cpu" else [])
        for (label0, pack), engine in [(p, e) for p in _packs(tmp) for e in engines]:
            label = f"{label0}, engine={engine}"
            an = load_analyzer(pack, device, torch.float32, engine=engine)
            app = FaceAnalysis(name=pack, providers=["CPUExecutionProvider"])
            app.prepare(ctx_id=-1, det_size=(640, 640))
            n_ours = an.analyze(batch1).count
            n_ref = len(app.get(img))
            note = f"{label}: faces ours {n_ours} / insightface {n_ref}; insightface on onnxruntime CPU"
            det_ours = common.timeit(lambda: an.analyze(batch1, tasks=()), device, args.quick)
            det_ref = common.timeit(
                lambda: app.det_model.detect(img, input_size=(640, 640)), torch.device("cpu"), args.quick
            )
            rows.append(
                common.row("face detect", "t1.jpg 1280x886", det_ours, det_ref, "insightface SCRFD.detect", note=note)
            )
            full_ours = common.timeit(lambda: an.analyze(batch1), device, args.quick)
            full_ref = common.timeit(lambda: app.get(img), torch.device("cpu"), args.quick)
            rows.append(
                common.row(
                    "face analyse (all models)",
                    "t1.jpg 1280x886",
                    full_ours,
                    full_ref,
                    "insightface FaceAnalysis.get",
                    note=note,
                )
            )
            b8 = batch1.repeat(8, 1, 1, 1)
            ours8 = common.timeit(lambda: an.analyze(b8), device, True)
            ref8 = common.timeit(lambda: [app.get(img) for _ in range(8)], torch.device("cpu"), True)
            rows.append(
                common.row("face analyse, 8 images", "8 x t1.jpg", ours8, ref8, "8 x FaceAnalysis.get", note=label)
            )
    return rows

"""Face analysis on the CPU: ours (engine 'auto', as the node runs it) vs insightface 2.1 + onnxruntime.

Same models and tasks on both sides, each fed what users give it: ours a ComfyUI float IMAGE batch
[B,H,W,3] 0..1, insightface uint8 BGR frames, one ``FaceAnalysis.get`` per frame. Models: the real
fixture models in ../shared/fixtures (SCRFD-500M detector, MobileFaceNet recognizer); the fixed-batch
recognizer is that MobileFaceNet with its batch axis set to 1 here, at bench time. Workloads: the two
group photos, a 3000x2100 group photo composed here from them (24 faces), single portraits (LFW) at
batches 1 / 8 / 32, det size 640 and 1024, both recognizers. Extra rows: "only the models the graph
needs" (a buffalo_l-shaped test pack of five models, the graph wants embeddings only; insightface runs
its whole pack) and the torch engine (the GPU path) against 'auto' on the same CPU workload.

Each row: interleaved rounds (order alternating, warm-up dropped, ``--rounds``, at least 9 unless
``--quick``), median and quartiles of both sides and of the per-round ratio insightface / ours;
``goal`` is the least median ratio the issue asks for (run.py exits non-zero on a miss).
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings

import common
import stats

common.ensure_package()

FIXTURES = os.environ.get("VISAGE_FIXTURES") or os.path.normpath(os.path.join(common.REPO, "..", "shared", "fixtures"))
GOAL_ANY, GOAL_MULTI, GOAL_TORCH = 1.0, 1.2, 0.8


def _img(rel):
    import cv2

    return cv2.imread(os.path.join(FIXTURES, "images", rel))


def composed_group():
    """A 3000x2100 group photo from the two fixture group photos (2x2 tiles, 24 faces), made here."""
    import cv2
    import numpy as np

    t1 = cv2.resize(_img("insightface/t1.jpg"), (1500, 1050), interpolation=cv2.INTER_AREA)
    fr = cv2.resize(_img("friends/query/friends1.jpg"), (1500, 1050), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(np.vstack([np.hstack([t1, fr]), np.hstack([fr[:, ::-1], t1[:, ::-1]])]))


def _builders():
    """tests/builders/face.py (the test models' builders: the fixed-batch copy, the buffalo_l-shaped pack)."""
    if os.path.join(common.REPO, "tests") not in sys.path:
        sys.path.insert(0, os.path.join(common.REPO, "tests"))
    from builders import face

    return face


def _packs(tmp):
    fx = os.path.join(FIXTURES, "models")
    packs = {}
    for key, fixed in (("batchable", False), ("fixed-batch", True)):
        d = os.path.join(tmp, key)
        os.makedirs(d)
        os.symlink(os.path.join(fx, "det_500m.onnx"), os.path.join(d, "det_500m.onnx"))
        rec = os.path.join(fx, "mobileface_paddle_128d.onnx")
        # neutral recognizer name: insightface's defaults apply on both sides (same work)
        if fixed:
            _builders().fixed_batch_copy(rec, os.path.join(d, "recognizer.onnx"))
        else:
            os.symlink(rec, os.path.join(d, "recognizer.onnx"))
        packs[key] = d
    return packs


def _to_image(bgr_list):
    import numpy as np
    import torch

    return torch.from_numpy(np.stack([b[..., ::-1] for b in bgr_list]).copy()).float().div_(255.0)


def _ref_app(pack, det, threads, allowed=None):
    import contextlib
    import io

    from insightface.app import FaceAnalysis

    with contextlib.redirect_stdout(io.StringIO()):
        app = FaceAnalysis(name=pack, allowed_modules=allowed, providers=["CPUExecutionProvider"])
        app.prepare(ctx_id=-1, det_size=(det, det))
    return app


def _row(op, shape, fns, rounds, goal, note, ref_name="insightface FaceAnalysis.get"):
    t = stats.interleaved(fns, rounds=rounds, warmup=1)
    a, b = list(fns)
    s = stats.summarise(t[a], t[b])
    r = common.row(op, shape, s["ours_ms"], s["ref_ms"], ref_name, note=note)
    r.update(s, goal=goal)
    print(
        f"  {op} [{shape}]: ours {s['ours_ms']:.1f} ms, ref {s['ref_ms']:.1f} ms, ratio {s['ratio']:.2f}x "
        f"({s['ratio_iqr'][0]:.2f}-{s['ratio_iqr'][1]:.2f})",
        file=sys.stderr,
        flush=True,
    )
    return r


def workloads(quick):
    """(label, frames (BGR list), faces per frame at least, det sizes)."""
    lfw = sorted(os.listdir(os.path.join(FIXTURES, "images", "lfw")))
    portraits = [_img(f"lfw/{n}") for n in lfw]
    t1, fr, big = _img("insightface/t1.jpg"), _img("friends/query/friends1.jpg"), composed_group()
    w = [
        ("group t1.jpg 1280x886", [t1], (640, 1024)),
        ("group friends1.jpg 1440x1080", [fr], (640,)),
        ("group composed 3000x2100", [big], (640, 1024)),
        ("portrait 250x250, batch 1", portraits[:1], (640,)),
        ("portraits 250x250, batch 8", [portraits[i % len(portraits)] for i in range(8)], (640,)),
        ("portraits 250x250, batch 32", [portraits[i % len(portraits)] for i in range(32)], (640,)),
    ]
    if quick:
        w = [w[0], w[2], w[4]]
    return w


def run(args):
    import torch

    from visage.nodes.face.analyzer import load_analyzer

    if not os.path.isfile(os.path.join(FIXTURES, "models", "det_500m.onnx")):
        return [
            common.row("face analyse", "-", None, None, "", note=f"skipped: no fixture models in {FIXTURES}")
            | {"skipped": True}
        ]
    warnings.filterwarnings("ignore", category=FutureWarning)  # insightface's skimage deprecation, per face
    quick = bool(getattr(args, "quick", False))
    rounds = int(getattr(args, "rounds", 0) or (3 if quick else stats.MIN_ROUNDS))
    pick = [w.strip() for w in (getattr(args, "workloads", "") or "").split(";") if w.strip()]

    def wanted(shape):  # --workloads: ';'-separated substrings of the row's shape (default: every row)
        return not pick or any(p in shape for p in pick)

    rows = []
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        packs = _packs(tmp)
        for label, frames, dets in workloads(quick):
            x = _to_image(frames)
            for det in dets:
                for rkey in ("batchable", "fixed-batch") if not quick or det == 640 else ("batchable",):
                    if not wanted(f"{label}, det {det}, {rkey} rec"):
                        continue
                    pack = packs[rkey]
                    an = load_analyzer(pack, cpu, torch.float32, det_size=(det, det), engine="auto")
                    app = _ref_app(pack, det, args.threads)
                    n_ours = an.analyze(x).count
                    n_ref = sum(len(app.get(f)) for f in frames)
                    multi = len(frames) > 1 or n_ours >= 6
                    note = f"faces ours {n_ours} / insightface {n_ref}; recognizer {rkey}"
                    if n_ours != n_ref:
                        note += " (FACE COUNTS DIFFER)"
                    fns = {
                        "ours": lambda an=an, x=x: an.analyze(x),
                        "ref": lambda app=app: [app.get(f) for f in frames],
                    }
                    rows.append(
                        _row(
                            "face analyse",
                            f"{label}, det {det}, {rkey} rec",
                            fns,
                            rounds,
                            GOAL_MULTI if multi else GOAL_ANY,
                            note,
                        )
                    )
                    if det == 640 and (rkey == "fixed-batch" or label.startswith("group t1")):
                        tor = load_analyzer(pack, cpu, torch.float32, det_size=(det, det), engine="torch")
                        fns = {"torch": lambda tor=tor, x=x: tor.analyze(x), "auto": lambda an=an, x=x: an.analyze(x)}
                        rows.append(
                            _row(
                                "face analyse, torch engine",
                                f"{label}, det {det}, {rkey} rec",
                                fns,
                                rounds,
                                GOAL_TORCH,
                                "ratio = auto (onnxruntime) time / torch-engine time on the same CPU workload",
                                ref_name="ours, engine auto",
                            )
                        )
        if wanted("only the models the graph needs"):
            rows.append(_only_needed_row(tmp, rounds, args.threads))
    return rows


def _only_needed_row(tmp, rounds, threads):
    """A buffalo_l-shaped pack (detector, recognizer, 2d106, 3d68, gender/age: test-built, random weights)
    where the graph needs the embeddings only: ours runs the detector and the recognizer (what the graph
    asks for), insightface its whole pack."""
    import torch

    build_face_pack = _builders().build_face_pack

    from visage.nodes.face.analyzer import load_analyzer

    pack = build_face_pack(os.path.join(tmp, "buffalo_shaped"))
    an = load_analyzer(pack, torch.device("cpu"), torch.float32, engine="auto")
    app = _ref_app(pack, 640, threads)
    img = _img("insightface/t1.jpg")
    x = _to_image([img])
    n_ours = an.analyze(x, tasks=["recognition"]).count
    note = f"faces ours {n_ours} / insightface {len(app.get(img))}; ours: detector + recognizer, insightface: 5 models"
    fns = {"ours": lambda: an.analyze(x, tasks=["recognition"]), "ref": lambda: app.get(img)}
    return _row(
        "face analyse, only the models the graph needs",
        "group t1.jpg 1280x886, det 640, test buffalo_l-shaped pack",
        fns,
        rounds,
        GOAL_ANY,
        note,
    )

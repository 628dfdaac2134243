"""insightface model packs: find them, and route each ONNX file to its task by its signature.

A pack is a folder of ONNX files (``models/insightface/models/<pack>/``). The common nested layout
``antelopev2/antelopev2/*.onnx`` is accepted. Routing follows insightface's model zoo:

* 5 or more outputs                      -> detection (SCRFD)
* input 192x192                          -> landmarks (212 outputs: 2d106; 3309: 3d68 + pose)
* input 96x96 with 3 outputs             -> gender/age
* two inputs at 128x128                  -> a swapper (not an analysis model; skipped here)
* input 112x112 with 136 outputs         -> 68-point 2D landmarks (PFLD convention)
* square input >= 112, multiple of 16    -> recognition (ArcFace-style embedding)

The first file of each task (sorted by name) wins, as in insightface.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

from ...core.errors import ModelFileInvalid, VisageError
from ...core.onnx import OnnxSignature, onnx_signature
from ...core.recognizers import KNOWN, pick_primary, recognizer_id, where

log = logging.getLogger("visage")

# Known files whose conventions differ from insightface's defaults (facts from their model cards).
KNOWN_FILES = {
    # PaddlePaddle MobileFaceNet: BGR input, (x - 127.5) / 127.5
    "mobileface_paddle_128d.onnx": {"bgr": True, "mean": 127.5, "std": 127.5},
}

YUNET_OUTPUTS = {"cls_8", "obj_8", "bbox_8", "kps_8"}

# File-name marks of recognizers (the released ones and the usual export names): an unreadable file so
# named is taken for a recognizer (its signature cannot be read to tell).
_RECOGNIZER_MARKS = ("w600k", "glint", "arcface", "recognition", "r50", "r100", "mbf", "ms1m", "webface")


def looks_like_recognizer(path: str) -> bool:
    """Whether an (unreadable) ONNX file of a pack is probably a recognizer, judged by its name."""
    name = os.path.basename(path).lower()
    return recognizer_id(path) in KNOWN or any(m in name for m in _RECOGNIZER_MARKS)


@dataclass(frozen=True)
class RoutedModel:
    task: str  # detection | recognition | landmark_2d_106 | landmark_3d_68 | landmark_2d_68 | genderage
    path: str
    signature: OnnxSignature
    input_size: int  # square input side (0 for dynamic detectors)
    mean: float
    std: float
    bgr: bool = False

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]


def is_recognition(task: str) -> bool:
    """'recognition' (the primary recognizer) or 'recognition:<id>' (another recognizer in the pack)."""
    return task == "recognition" or task.startswith("recognition:")


def route(path: str) -> Optional[RoutedModel]:
    """Route one ONNX file; None for files that are not face-analysis models (e.g. swappers)."""
    sig = onnx_signature(path)
    base = os.path.basename(path)
    known = KNOWN_FILES.get(base, {})
    h, w = sig.input_hw()
    n_out = len(sig.outputs)
    out_names = {o[0] for o in sig.outputs}
    if out_names & YUNET_OUTPUTS:
        log.info("Visage: %s is a YuNet detector; Visage analyses with SCRFD packs, skipping it", base)
        return None
    if n_out >= 5:
        return RoutedModel("detection", path, sig, 0, 127.5, 128.0)
    if len(sig.inputs) == 2 and h == 128 and w == 128:
        return None  # inswapper: used by the swap family
    if h is None or w is None or h != w:
        log.info("Visage: %s has input %s; not a face-analysis model, skipping it", base, sig.input_shape)
        return None
    out_dim = sig.output_dim(0)
    if h == 192:
        mean, std = sig.insightface_mean_std((127.5, 128.0))
        if out_dim == 3309:
            return RoutedModel("landmark_3d_68", path, sig, h, mean, std)
        if out_dim == 212:
            return RoutedModel("landmark_2d_106", path, sig, h, mean, std)
        return RoutedModel(f"landmark_2d_{(out_dim or 0) // 2}", path, sig, h, mean, std)
    if h == 96:
        mean, std = sig.insightface_mean_std((127.5, 128.0))
        if out_dim == 3:
            return RoutedModel("genderage", path, sig, h, mean, std)
        return None
    if h == 112 and out_dim == 136:
        return RoutedModel("landmark_2d_68", path, sig, h, 0.0, 255.0)
    if h >= 112 and h % 16 == 0:
        mean, std = sig.insightface_mean_std((127.5, 127.5))
        mean = known.get("mean", mean)
        std = known.get("std", std)
        return RoutedModel("recognition", path, sig, h, mean, std, bgr=known.get("bgr", False))
    return None


def pack_files(pack_dir: str) -> List[str]:
    """ONNX files of a pack folder, accepting the nested ``<pack>/<pack>/`` layout."""
    if not os.path.isdir(pack_dir):
        raise VisageError(
            f"Face model pack folder '{pack_dir}' does not exist",
            expected="a folder of ONNX files under models/insightface/models/",
            got="no such folder",
            fix="put the pack (e.g. antelopev2 or buffalo_l) there",
        )
    files = sorted(os.path.join(pack_dir, f) for f in os.listdir(pack_dir) if f.lower().endswith(".onnx"))
    if not files:
        nested = os.path.join(pack_dir, os.path.basename(os.path.normpath(pack_dir)))
        if os.path.isdir(nested):
            return pack_files(nested)
        subdirs = [
            os.path.join(pack_dir, d) for d in sorted(os.listdir(pack_dir)) if os.path.isdir(os.path.join(pack_dir, d))
        ]
        if len(subdirs) == 1:
            return pack_files(subdirs[0])
    return files


def route_pack(pack_dir: str) -> Dict[str, RoutedModel]:
    """task -> model for a pack folder. Unreadable files are reported, not silently skipped."""
    routed: Dict[str, RoutedModel] = {}
    recognizers: List[RoutedModel] = []
    problems = []
    unreadable: List[ModelFileInvalid] = []
    for f in pack_files(pack_dir):
        try:
            r = route(f)
        except ModelFileInvalid as e:
            problems.append(str(e))
            unreadable.append(e)
            continue
        if r is None:
            continue
        if r.task == "recognition":
            recognizers.append(r)
            continue
        if r.task in routed:
            log.info(
                "Visage: %s: %s already provided by %s; ignoring %s",
                pack_dir,
                r.task,
                os.path.basename(routed[r.task].path),
                os.path.basename(f),
            )
            continue
        routed[r.task] = r
    # every recognizer in the folder runs (each method picks the embedding it was trained on); the
    # pack's own one is the primary ("recognition"), the others are "recognition:<id>"
    primary = pick_primary([recognizer_id(r.path) for r in recognizers])
    for r in recognizers:
        rid = recognizer_id(r.path)
        key = "recognition" if rid == primary else f"recognition:{rid}"
        if key in routed:
            log.info("Visage: %s: two recognizers named %s; ignoring %s", pack_dir, rid, os.path.basename(r.path))
            continue
        routed[key] = r
    if "detection" not in routed:
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise VisageError(
            f"Face model pack '{os.path.basename(os.path.normpath(pack_dir))}' has no usable face detector{detail}",
            expected="an SCRFD detector ONNX file in the pack (det_10g.onnx in buffalo_l, "
            "scrfd_10g_bnkps.onnx in antelopev2)",
            got=f"files: {[os.path.basename(p) for p in pack_files(pack_dir)]}",
            fix="copy the pack's detector file into the folder (insightface packs are "
            "distributed by the insightface project; see README's model table)",
        )
    # a recognizer that cannot be read is not dropped quietly (the methods would later say "use a pack
    # with a recognizer", which the user thinks they have): name the file and what is wrong with it
    for e in unreadable:
        if looks_like_recognizer(e.path):
            base = os.path.basename(e.path)
            rid = recognizer_id(base)
            raise VisageError(
                f"Face model pack '{os.path.basename(os.path.normpath(pack_dir))}': the recognizer file "
                f"'{base}' cannot be read",
                expected=f"an intact recognizer ONNX file ({where(rid)})",
                got=e.got or "an unreadable file",
                fix=f"re-copy '{base}' (a partial download or copy looks like this), or move it out of the pack "
                "folder to analyse without it",
            )
    for p in problems:
        log.warning("Visage: %s", p)
    return routed


def list_packs(bases: List[str]) -> List[str]:
    """Pack names (sub-folders holding ONNX files) under each base folder."""
    names = []
    for base in bases:
        if not os.path.isdir(base):
            continue
        for d in sorted(os.listdir(base)):
            full = os.path.join(base, d)
            if os.path.isdir(full):
                try:
                    if pack_files(full) and d not in names:
                        names.append(d)
                except VisageError:
                    pass
    return names

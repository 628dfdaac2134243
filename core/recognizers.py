"""Which recognizer an embedding came from, and which one each identity method was trained on.

Every identity method was trained on one recognizer's embedding space; an embedding of another
recognizer is a different coordinate system, not a noisier version of the right one. A face carries
one embedding per recognizer that ran on it (``Face.embeddings``, keyed by recognizer id); a method
asks for its own with :func:`method_embeddings`, which stops with a message naming the file and the
folder when that embedding is absent. An explicit override lets an expert use another recognizer
(logged as a warning).

A recognizer's id is its file name without extension, lower-case (``glintr100``, ``w600k_r50``,
``arcface`` for Arc2Face's ``arcface.onnx``, ``recognition_arcface_ir_se50`` for facexlib's IR-SE50).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .errors import VisageError
from .types import FaceEmbeds, FaceSet

log = logging.getLogger("visage")


@dataclass(frozen=True)
class Recognizer:
    id: str  # file stem, lower-case
    file: str  # released file name
    folder: str  # where it goes, under ComfyUI/models
    what: str  # architecture and training set
    source: str  # where users get it


KNOWN = {
    r.id: r
    for r in (
        Recognizer(
            "glintr100",
            "glintr100.onnx",
            "insightface/models/antelopev2",
            "IR100 ArcFace trained on Glint360K (insightface antelopev2)",
            "the insightface antelopev2 pack",
        ),
        Recognizer(
            "w600k_r50",
            "w600k_r50.onnx",
            "insightface/models/buffalo_l",
            "IR50 ArcFace trained on WebFace600K (insightface buffalo_l)",
            "the insightface buffalo_l pack",
        ),
        Recognizer(
            "w600k_mbf",
            "w600k_mbf.onnx",
            "insightface/models/buffalo_s",
            "MobileFaceNet ArcFace trained on WebFace600K (insightface buffalo_s)",
            "the insightface buffalo_s pack",
        ),
        Recognizer(
            "arcface",
            "arcface.onnx",
            "insightface/models/antelopev2",
            "Arc2Face's IR100 ArcFace trained on WebFace42M",
            "huggingface.co/FoivosPar/Arc2Face (arcface.onnx; its README puts it in the antelopev2 folder)",
        ),
        Recognizer(
            "recognition_arcface_ir_se50",
            "recognition_arcface_ir_se50.pth",
            "facexlib",
            "IR-SE50 ArcFace (facexlib, PyTorch)",
            "facexlib's GitHub release assets (recognition_arcface_ir_se50.pth)",
        ),
    )
}

RECOGNIZER_OVERRIDE_TIP = (
    "Leave empty: the method uses the embedding of the recognizer it was trained on ({trained}) and stops "
    "with a message naming the file when the faces lack it. Experts: a recognizer id the faces carry "
    "(e.g. w600k_r50, glintr100, arcface) to use instead; logged as a warning."
)

# Preference for a pack's primary recognizer (Face.embedding) when a folder holds several: the
# insightface pack's own recognizer first, so adding Arc2Face's arcface.onnx beside glintr100 keeps
# every existing consumer on the embedding it had.
PRIMARY_ORDER = ("glintr100", "w600k_r50", "w600k_mbf")


def recognizer_id(path_or_name: str) -> str:
    """The id of a recognizer file: its name without folder and extension, lower-case."""
    return os.path.splitext(os.path.basename(str(path_or_name)))[0].lower()


def describe(rid: str) -> str:
    r = KNOWN.get(rid)
    return f"{rid} ({r.what})" if r else rid


def where(rid: str) -> str:
    """'<file>' in models/<folder>/ (from <source>) — for messages."""
    r = KNOWN.get(rid)
    if r is None:
        return f"'{rid}.onnx' in a face-model pack folder under models/insightface/models/"
    return f"'{r.file}' in models/{r.folder}/ (from {r.source})"


def pick_primary(ids: Sequence[str]) -> Optional[str]:
    """The recognizer whose embedding becomes ``Face.embedding`` when a pack holds several."""
    ids = list(ids)
    if not ids:
        return None
    for pref in PRIMARY_ORDER:
        if pref in ids:
            return pref
    return sorted(ids)[0]


def _available(faces: Optional[FaceSet], embeds: Optional[FaceEmbeds]) -> list:
    if embeds is not None:
        return list(embeds.recognizers)
    seen = []
    for f in faces.flat() if faces is not None else ():
        for r in f.recognizers:
            if r not in seen:
                seen.append(r)
    return seen


def method_embeddings(
    method: str,
    trained_on: str,
    faces: Optional[FaceSet] = None,
    embeds: Optional[FaceEmbeds] = None,
    normed: bool = True,
    dim: Optional[int] = 512,
    override: str = "",
) -> torch.Tensor:
    """[I, D] identity embeddings for ``method``, from the recognizer it was trained on.

    ``embeds`` (one row per identity) wins over ``faces`` (one row per face). ``override`` names
    another recognizer id to use instead (an expert's choice: logged as a warning). Missing faces,
    missing embeddings and embeddings of another recognizer each stop with a message that names the
    file the method needs and the folder it goes in.
    """
    want = (override or "").strip().lower() or trained_on
    if override and want != trained_on:
        log.warning(
            "Visage: %s was trained on %s embeddings; using %s as asked (recognizer override): expect a weaker "
            "or wrong identity",
            method,
            trained_on,
            want,
        )
    fix_file = (
        f"put {where(want)} and analyse again (the analyzer runs every recognizer in the pack folder), or add it "
        f"to the faces with 'Add Face Recognizer'"
    )
    if embeds is not None:
        if embeds.count == 0:
            raise VisageError(
                f"The {method} identity embeddings are empty",
                expected="at least one identity",
                got="0 rows",
                fix="check the node producing the embeddings",
            )
        e = embeds.for_recognizer(want, normed=normed)
        if e is None:
            if embeds.encoder in ("", "unknown") and not embeds.extra:
                log.warning(
                    "Visage: %s: these embeddings do not say which recognizer made them (saved by an older "
                    "version); using them as %s embeddings",
                    method,
                    want,
                )
                e = embeds.normed if normed else embeds.raw
            else:
                raise VisageError(
                    f"{method} needs {describe(want)} embeddings",
                    expected=f"identity embeddings of the recognizer {method} was trained on ({want})",
                    got=f"embeddings of {', '.join(describe(r) for r in embeds.recognizers)}",
                    fix=f"rebuild the embeddings from faces analysed with {where(want)}, or set "
                    f"'recognizer_override' if you really mean to use another recognizer",
                )
    else:
        if faces is None:
            raise VisageError(
                f"No {method} identity was given",
                expected="'faces' (VISAGE_FACES) or 'embeds' (VISAGE_EMBEDS)",
                got="neither",
                fix="connect the faces from 'Analyze Faces'",
            )
        flat = faces.flat()
        if not flat:
            raise VisageError(
                f"The {method} identity has no face",
                expected="at least one analysed face",
                got=f"{faces.batch_size} image(s), no face found",
                fix="use a reference image with a visible face, or lower the detection threshold",
            )
        rows = []
        for i, f in enumerate(flat):
            raw = f.embedding_for(want)
            if raw is None:
                have = _available(faces, None)
                raise VisageError(
                    f"{method} needs {describe(want)} embeddings",
                    expected=f"faces analysed with the recognizer {method} was trained on ({want})",
                    got=f"face {i} carries {', '.join(describe(r) for r in have) if have else 'no embedding'} "
                    f"({faces.analyzer or 'analyzer'})",
                    fix=fix_file,
                )
            raw = raw.float().reshape(-1)
            rows.append(raw / raw.norm().clamp_min(1e-12) if normed else raw)
        e = torch.stack(rows)
    e = e.float().reshape(e.shape[0], -1)
    if dim is not None and e.shape[1] != dim:
        raise VisageError(
            f"The {method} identity embeddings are {e.shape[1]}-d",
            expected=f"{dim}-d embeddings of {describe(want)}",
            got=f"{e.shape[1]}-d",
            fix=f"use {where(want)}",
        )
    return e

"""Face models: a blended identity saved as safetensors (the VISAGE_EMBEDS payload on disk).

Visage writes the shared embeddings format (nodes/face/embeds_io.py: tensors ``raw``/``normed``,
metadata format/encoder/fusion/sources) plus ``kind = face_model``. It also reads ReActor's face
models (``models/reactor/faces/*.safetensors``: an insightface Face saved as tensors, of which
``embedding`` [512] is the identity), so users keep the face models they built with ReActor.
"""

from __future__ import annotations

import os

from safetensors import safe_open

from ...core.errors import ModelFileInvalid, VisageError
from ...core.types import FaceEmbeds
from ..face.embeds_io import FORMAT, load_embeds, save_embeds


def save_face_model(embeds: FaceEmbeds, path: str, name: str = "") -> str:
    if embeds.count < 1:
        raise VisageError("Nothing to save", expected="an identity", got="0 rows")
    return save_embeds(embeds, path, {"kind": "face_model", "name": name or os.path.basename(path)})


def load_face_model(path: str) -> FaceEmbeds:
    """Visage face model / embeddings file, or a ReActor face model."""
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            reactor = meta.get("format") != FORMAT and "embedding" in keys
            emb = f.get_tensor("embedding") if reactor else None
    except Exception as e:
        raise ModelFileInvalid(
            path, f"unreadable as safetensors ({type(e).__name__})", "a .safetensors face model (Visage or ReActor)"
        ) from None
    if reactor:
        emb = emb.float().reshape(1, -1)
        if emb.shape[-1] != 512:
            raise ModelFileInvalid(path, f"its embedding has {emb.shape[-1]} values", "a 512-d ReActor face model")
        return FaceEmbeds.from_raw(emb, "w600k_r50", (1,), "reactor")  # ReActor builds them with buffalo_l
    return load_embeds(path)

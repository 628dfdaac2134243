"""Save / load identity embeddings as safetensors with metadata."""

from __future__ import annotations

import json
import os

from safetensors import safe_open
from safetensors.torch import save_file

from ...core.errors import ModelFileInvalid
from ...core.types import FaceEmbeds

FORMAT = "visage.embeds"
VERSION = "2"  # 2: other recognizers' rows as "raw.<recognizer id>" tensors (version 1 files still load)


def save_embeds(embeds: FaceEmbeds, path: str, extra_metadata: dict = None) -> str:
    """Write ``embeds`` as safetensors (tensors raw/normed; format, encoder, dim, fusion, sources metadata)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "encoder": embeds.encoder,
        "dim": str(embeds.dim),
        "count": str(embeds.count),
        "normalised": "normed tensor is L2-normalised; raw is the recognizer output",
        "fusion": embeds.fusion,
        "sources": json.dumps(list(embeds.sources)),
    }
    meta["recognizers"] = json.dumps(list(embeds.recognizers))
    meta.update({k: str(v) for k, v in (extra_metadata or {}).items()})
    tensors = {"raw": embeds.raw.contiguous().float().cpu(), "normed": embeds.normed.contiguous().float().cpu()}
    tensors.update({f"raw.{rid}": t.contiguous().float().cpu() for rid, t in embeds.extra.items()})
    save_file(tensors, path, metadata=meta)
    return path


def load_embeds(path: str) -> FaceEmbeds:
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            if meta.get("format") != FORMAT or not {"raw", "normed"} <= keys:
                raise ModelFileInvalid(
                    path,
                    # what the file holds is not echoed (its metadata is not ours to print)
                    "not a Visage embeddings file (no 'visage.embeds' format mark, or no 'raw' and 'normed' tensors)",
                    "a .safetensors file written by Save Face Embeds",
                )
            raw, normed = f.get_tensor("raw"), f.get_tensor("normed")
            extra = {k[4:]: f.get_tensor(k).float() for k in sorted(keys) if k.startswith("raw.")}
    except ModelFileInvalid:
        raise
    except Exception as e:
        raise ModelFileInvalid(
            path, f"unreadable as safetensors ({type(e).__name__})", "a .safetensors file written by Save Face Embeds"
        ) from None
    sources = tuple(json.loads(meta.get("sources", "[]"))) or (1,) * raw.shape[0]
    return FaceEmbeds(
        raw=raw.float(),
        normed=normed.float(),
        encoder=meta.get("encoder", "unknown"),
        sources=sources,
        fusion=meta.get("fusion", "none"),
        extra=extra,
    )

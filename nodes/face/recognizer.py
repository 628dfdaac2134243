"""Add another recognizer's embeddings to faces that were already analysed (no second detection).

A method trained on a recognizer the analysis pack does not hold (Arc2Face's ``arcface.onnx``,
InfiniteYou's IR-SE50, FaceID's ``w600k_r50`` when the graph analyses with antelopev2) gets its
embedding here: the crops are aligned from the faces' own 5 keypoints, exactly as the analyzer
aligns them for its recognizers, and each face gains ``embeddings[<recognizer id>]``.

Recognizers load from ONNX (any insightface-signature recognizer: ``[N,3,S,S]`` -> ``[N,D]``) or
from facexlib's PyTorch IR-SE50 file (``recognition_arcface_ir_se50.pth``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch

from ...core.errors import ModelFileInvalid
from ...core.images import check_image
from ...core.model_manager import MANAGER, ModelHandle
from ...core.onnx import CPU_CHUNK_FACES, batch_probe, fixed_batch, run_batched, torch_chunk
from ...core.recognizers import recognizer_id
from ...core.select import rows_for
from ...core.types import FaceSet
from .align import estimate_norm
from .analyzer import _onnx_loader, _ort_loader, chunk_frames, host_uint8, model_crops, pick_engine
from .pack import route

# files in a pack folder that are never recognizers (listing without opening every ONNX file)
NOT_RECOGNIZERS = ("det_", "scrfd", "2d106det", "1k3d68", "genderage", "inswapper", "reswapper", "hyperswap", "pfld")


@dataclass
class FaceRecognizer:
    """One loaded recognizer and how its crops are made (the VISAGE_RECOGNIZER payload)."""

    id: str
    path: str
    handle: ModelHandle
    input_size: int
    mean: float
    std: float
    bgr: bool
    fixed: Optional[int] = None  # the batch the ONNX file is exported with (1: face by face), None: dynamic

    def __repr__(self):
        return f"FaceRecognizer({self.id}, {os.path.basename(self.path)}, device={self.handle.device})"

    def embed_crops(self, images: torch.Tensor, kpss: np.ndarray, owners: torch.Tensor) -> np.ndarray:
        """Frames [B,H,W,C] (float IMAGE 0..1 or uint8), keypoints [N,5,2], owner frame per face [N] -> raw
        embeddings [N,D]. Crops: :func:`model_crops` (cv2 on the host, the batched kernel on a GPU)."""
        mats = np.stack([estimate_norm(k, self.input_size) for k in kpss]).astype(np.float32)
        h = self.handle
        if images.device.type == "cpu":
            images = host_uint8(images)  # one cv2 pass; crops are then insightface's own cv2 warps
        if images.device.type != torch.device(h.device).type:
            images = images.to(h.device)  # host frames for a GPU: 8-bit values travel
        x = model_crops(images, mats, owners, self.input_size, self.mean, self.std, self.bgr, h.dtype)
        model = h.model()
        fixed = self.fixed
        if fixed == 1 and x.shape[0] > 1 and batch_probe(model, tuple(x.shape[1:])):
            fixed = None  # declared batch 1, but the graph runs batches (checked once per loaded module)
        with torch.inference_mode():
            out = run_batched(
                model, x.to(h.device, h.dtype), chunk=torch_chunk(h.device, 64, CPU_CHUNK_FACES), fixed=fixed
            )[0]
        return out.float().reshape(out.shape[0], -1).cpu().numpy()

    def add_to(self, images: torch.Tensor, faces: FaceSet, progress=None, chunk: int = 16) -> FaceSet:
        """``faces`` with this recognizer's embedding on every face. ``images`` is the batch the faces
        were found in (or, after on_no_face='skip', the kept images)."""
        images = check_image(images, "image")
        rows = rows_for(faces, images.shape[0], "image")
        new = [list(per) for per in faces.faces]
        # the analysis' pixel budget (a frame counts at least a 640x640 canvas): short chunks on a CPU
        chunk = chunk_frames(chunk, max(images.shape[1] * images.shape[2], 640 * 640), self.handle.device)
        for s in range(0, faces.batch_size, chunk):
            part = range(s, min(s + chunk, faces.batch_size))
            todo = [(i, j) for i in part for j in range(len(faces.faces[i]))]
            if todo:
                frames = sorted({rows[i] for i, _ in todo})
                slot = {f: k for k, f in enumerate(frames)}
                sub = (
                    images[frames[0] : frames[-1] + 1]
                    if frames == list(range(frames[0], frames[-1] + 1))
                    else images[frames]
                )
                kpss = np.stack([faces.faces[i][j].kps.numpy().astype(np.float32) for i, j in todo])
                owners = torch.tensor([slot[rows[i]] for i, _ in todo], dtype=torch.long)
                out = self.embed_crops(sub, kpss, owners)
                for (i, j), e in zip(todo, out):
                    new[i][j] = new[i][j].with_embedding(self.id, torch.from_numpy(e.copy()))
            if progress is not None:
                progress(min(s + chunk, faces.batch_size), faces.batch_size)
        return replace(faces, faces=tuple(tuple(r) for r in new))


def load_recognizer(path: str, device="cpu", dtype: torch.dtype = torch.float32, engine: str = "auto"):
    """A recognizer from an ONNX file of insightface's signature, or facexlib's IR-SE50 ``.pth``."""
    rid = recognizer_id(path)
    if path.lower().endswith((".pth", ".pt", ".bin")):
        from .irse50 import IRSE50_PREPROCESS, load_irse50

        h = MANAGER.get(
            "face:torch:recognizer", path, load_irse50, device=device, dtype=dtype, name=os.path.basename(path)
        )
        p = IRSE50_PREPROCESS
        return FaceRecognizer(rid, path, h, p["input_size"], p["mean"], p["std"], p["bgr"])
    r = route(path)
    if r is None or r.task != "recognition":
        raise ModelFileInvalid(
            path,
            f"it is not a face recognizer (it looks like {r.task if r else 'no face-analysis model'})",
            "an ArcFace-style recognizer: one input [N,3,S,S] (S = 112, ...), one output [N,D]",
        )
    engine = pick_engine(engine, device)
    loader = _ort_loader if engine == "onnxruntime" else _onnx_loader
    dt = torch.float32 if engine == "onnxruntime" else dtype
    h = MANAGER.get(f"face:{engine}:recognition", path, loader, device=device, dtype=dt, name=os.path.basename(path))
    return FaceRecognizer(rid, path, h, r.input_size, r.mean, r.std, r.bgr, fixed_batch(r.signature))


def is_listed_recognizer(name: str) -> bool:
    base = os.path.basename(name).lower()
    return base.endswith(".onnx") and not base.startswith(NOT_RECOGNIZERS)


def recognizer_choices(onnx_names, pth_names) -> list:
    """Names for the loader's list: recognizer-looking ONNX files of the pack folders, then .pth files."""
    out = [n for n in onnx_names if is_listed_recognizer(n)]
    out += [n for n in pth_names if n.lower().endswith((".pth", ".pt"))]
    return out

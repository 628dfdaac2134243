"""Masks from the face itself: face-part regions (BiSeNet parsing) and occlusion (XSeg), on aligned crops.

Pure module (torch, onnx). Both are computed on crops aligned from the frame by the caller's matrices
(frame -> crop of side S), scaled to each model's own side (parsing 512, XSeg 256), so the models see
the frame's own pixels at their resolution, all faces of a chunk in one batch. The results come back
as [N,S,S] weights in 0..1 on the caller's crop, to multiply into a paste mask (intersection).

XSeg (facefusion ``xseg_1/2/3.onnx``, from DeepFaceLab; facts from facefusion's ``face_masker.py``): one
input ``input`` [1,256,256,3] NHWC, BGR 0..1 (facefusion's frames are cv2 BGR; the crop is only
divided by 255), one output [1,256,256,1] in 0..1: 1 where the face is visible, 0 where something
covers it. facefusion then blurs (sigma 5) and maps 0.5..1 onto 0..1; :func:`smooth` does the same
with a radius proportional to the crop.

Regions (:data:`REGIONS`): groups of the 19 parsing classes (:data:`visage.nodes.face.parsing.CLASSES`),
plus ``upper_face`` / ``lower_face``: the face classes (:data:`FACE_CLASSES`) above / below the nose
tip of the aligned face (the crop is rotation-aligned, so that is a horizontal line at the nose tip's
crop row; facefusion splits its landmark areas at the nose as well).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ...core.errors import ModelFileInvalid, VisageError, describe_tensor
from ...core.model_manager import MANAGER, ModelHandle
from . import parsing as PR

log = logging.getLogger("visage")

XSEG_SIZE = 256
XSEG_NAMES = ("xseg_1.onnx", "xseg_2.onnx", "xseg_3.onnx")

_C = PR.CLASS_INDEX
FACE_CLASSES: Tuple[int, ...] = tuple(
    _C[n]
    for n in (
        "skin",
        "left_brow",
        "right_brow",
        "left_eye",
        "right_eye",
        "glasses",
        "nose",
        "mouth",
        "upper_lip",
        "lower_lip",
    )
)
REGIONS = {
    "skin": (_C["skin"],),
    "brows": (_C["left_brow"], _C["right_brow"]),
    "eyes": (_C["left_eye"], _C["right_eye"]),
    "glasses": (_C["glasses"],),
    "nose": (_C["nose"],),
    "mouth": (_C["mouth"],),
    "lips": (_C["upper_lip"], _C["lower_lip"]),
    "hair": (_C["hair"],),
    "ears": (_C["left_ear"], _C["right_ear"]),
    "neck": (_C["neck"],),
    "face": FACE_CLASSES,  # facefusion's default region set: every part of the face itself
    "upper_face": FACE_CLASSES,
    "lower_face": FACE_CLASSES,
}
DEFAULT_REGIONS = "face"


def parse_regions(text: str) -> Tuple[str, ...]:
    """'skin, nose,lips' -> ('skin', 'nose', 'lips'); '' -> (); unknown names raise with the list."""
    names = []
    for part in (text or "").replace(";", ",").replace("+", ",").split(","):
        p = part.strip().lower().replace("-", "_").replace(" ", "_")
        if not p:
            continue
        if p not in REGIONS:
            raise VisageError(
                f"Unknown face region '{part.strip()}'",
                expected="comma-separated names from: " + ", ".join(REGIONS),
                got=repr(text),
                fix="write e.g. 'face' or 'skin, nose, lips' ('' = no region mask)",
            )
        if p not in names:
            names.append(p)
    return tuple(names)


# ------------------------------------------------------------------------------------ occluder


def is_xseg_signature(sig) -> bool:
    s = tuple(sig.input_shape)
    if len(sig.inputs) != 1 or len(s) != 4 or s[3] != 3 or not sig.outputs:
        return False
    if not (s[1] in (XSEG_SIZE,) and s[2] in (XSEG_SIZE,)):
        return False
    o = tuple(sig.outputs[0][1])
    return len(o) == 4 and o[3] == 1


def check_xseg(path: str):
    from ...core.onnx import onnx_signature

    sig = onnx_signature(path)
    if not is_xseg_signature(sig):
        raise ModelFileInvalid(
            path,
            f"it is {PR.describe_onnx(sig)}, not a face occluder",
            f"an XSeg face occluder: input [1,{XSEG_SIZE},{XSEG_SIZE},3] (NHWC), output [1,{XSEG_SIZE},{XSEG_SIZE},1] "
            f"({', '.join(XSEG_NAMES)})",
            fix="pick xseg_1.onnx, xseg_2.onnx or xseg_3.onnx (facefusion's occluders) in models/face_parsing",
        )
    return sig


def _xseg_torch(path, device, dtype):
    from ...core.onnx import load_onnx_module

    check_xseg(path)
    return load_onnx_module(path, "cpu", dtype)


def _xseg_ort(path, device, dtype):
    from ...core.onnx import OrtCpuModule

    check_xseg(path)
    return OrtCpuModule(path)


class OccluderModel:
    """``model(x [B,256,256,3] BGR 0..1)`` -> [B,256,256] float32: 1 = face visible, 0 = covered."""

    size = XSEG_SIZE

    def __init__(self, handle: ModelHandle, kind: str, path: str):
        self.handle = handle
        self.kind = kind
        self.path = path

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise VisageError("occluder input has the wrong shape", expected="[B,256,256,3]", got=describe_tensor(x))
        from ...core.onnx import run_batched

        mod = self.handle.model()
        dev, dt = self.handle.device, self.handle.dtype
        if self.kind.endswith("onnxruntime"):
            dev, dt = torch.device("cpu"), torch.float32
        out = run_batched(mod, x.to(dev, dt).contiguous(), chunk=chunk)[0]
        return out.float().reshape(x.shape[0], x.shape[1], x.shape[2]).clamp(0, 1)


def load_occluder(path: str, device=None, dtype: torch.dtype = torch.float32, engine: str = "auto") -> OccluderModel:
    from .analyzer import pick_engine

    device = torch.device(device or "cpu")
    eng = pick_engine(engine, device)
    loader = _xseg_ort if eng == "onnxruntime" else _xseg_torch
    dt = torch.float32 if eng == "onnxruntime" else dtype
    name = os.path.basename(path)
    h = MANAGER.get(f"face:{eng}:occluder", path, loader, device=device, dtype=dt, name=f"occluder:{name}")
    return OccluderModel(h, f"onnx:{eng}", path)


# ------------------------------------------------------------------------------------ masker


@dataclass(frozen=True)
class FaceMasker:
    """The VISAGE_MASKER payload: which models make the masks, and which regions are kept."""

    parser: Optional[PR.ParsingModel] = None
    occluder: Optional[OccluderModel] = None
    regions: Tuple[str, ...] = ()

    def __post_init__(self):
        if self.regions and self.parser is None:
            raise VisageError(
                "Face regions need a face parser",
                expected="a parser file (parsing_bisenet.pth or bisenet_resnet_18/34.onnx) with regions",
                got=f"regions {', '.join(self.regions)} without a parser",
                fix="pick a parser, or clear 'regions'",
            )

    @property
    def active(self) -> bool:
        return self.occluder is not None or bool(self.regions)

    def describe(self) -> str:
        parts = []
        if self.occluder is not None:
            parts.append(f"occlusion ({self.occluder.name})")
        if self.regions:
            parts.append(f"regions {'+'.join(self.regions)} ({self.parser.name})")
        return ", ".join(parts) or "no masks"


def smooth_radius(size: int) -> int:
    return max(2, int(round(size * 0.015)))


def smooth(masks: torch.Tensor, size: int) -> torch.Tensor:
    """facefusion's mask finish: Gaussian blur, then 0.5..1 -> 0..1. The kernel radius is 1.5% of the crop
    (8 px at 512; OpenCV's sigma rule: ~2.9 px), so thin parts (brows, lips) keep their full weight; the
    paste mask's own feather softens the outline further. Values are exact 0 / 1 farther than the radius
    from a region's border."""
    from .. import paste as P

    r = smooth_radius(size)
    return ((P.blur(masks.float().clamp(0, 1), r).clamp(0.5, 1.0) - 0.5) * 2.0).clamp(0, 1)


def _scaled(mats: torch.Tensor, from_size: int, to_size: int) -> torch.Tensor:
    return mats.float() * (float(to_size) / float(from_size))


def _resize(m: torch.Tensor, size: int) -> torch.Tensor:
    if m.shape[-1] == size:
        return m
    return F.interpolate(
        m[:, None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=m.shape[-1] > size
    )[:, 0]


def _align(frames, mats, idx, size, bgr=False):
    try:
        from ...kernels import ops as K
    except ImportError:  # pragma: no cover
        from ...kernels import reference as K
    return K.align_crops(frames, mats, idx, size, mean=0.0, std=255.0, bgr=bgr, layout="NHWC")


@torch.no_grad()
def occlusion_masks(occluder: OccluderModel, frames, mats: torch.Tensor, idx, size: int) -> torch.Tensor:
    """[N,size,size] visible-face weights of the faces aligned by ``mats`` (frame -> crop of ``size``)."""
    x = _align(frames, _scaled(mats, size, XSEG_SIZE), idx, XSEG_SIZE, bgr=True)
    m = occluder(x).to(frames.device)
    return smooth(_resize(m, size), size)


@torch.no_grad()
def region_masks(
    parser: PR.ParsingModel,
    regions: Sequence[str],
    frames,
    mats: torch.Tensor,
    idx,
    size: int,
    nose_rows: Optional[torch.Tensor] = None,
    labels: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """[N,size,size] weights of the union of ``regions`` (:data:`REGIONS` names) on the aligned faces.

    ``nose_rows`` [N]: the nose tip's row in the ``size`` crop (needed for upper_face / lower_face).
    ``labels`` [N,512,512]: parse results to reuse (else the crops are parsed here)."""
    if labels is None:
        crops = _align(frames, _scaled(mats, size, PR.SIZE), idx, PR.SIZE)
        labels = PR.parse_faces(parser, crops)
    labels = labels.to(frames.device).long()
    n, L = labels.shape[0], labels.shape[-1]
    keep = torch.zeros((n, L, L), dtype=torch.bool, device=labels.device)
    rows = torch.arange(L, device=labels.device).view(1, L, 1).float()
    for r in regions:
        sel = torch.isin(labels, torch.tensor(REGIONS[r], device=labels.device))
        if r in ("upper_face", "lower_face"):
            if nose_rows is None:
                raise VisageError(f"region '{r}' needs the faces' nose keypoints", expected="faces with kps")
            y = nose_rows.to(labels.device).float().view(n, 1, 1) * (L / float(size))
            sel &= (rows < y) if r == "upper_face" else (rows >= y)
        keep |= sel
    return smooth(_resize(keep.float(), size), size)


@torch.no_grad()
def crop_masks(
    masker: FaceMasker, frames: torch.Tensor, mats, idx, size: int, kps: Optional[Sequence] = None
) -> Optional[torch.Tensor]:
    """The masker's [N,size,size] weight (occlusion x regions) for faces aligned by ``mats`` [N,2,3]
    (frame -> crop of ``size``) in ``frames`` [B,H,W,3] 0..1 (``idx`` [N]: each face's frame). None when
    the masker makes no mask. ``kps`` [N] five-point keypoints (frame pixels) for upper/lower face."""
    if masker is None or not masker.active:
        return None
    mats = torch.as_tensor(np.asarray(mats, np.float32)) if not isinstance(mats, torch.Tensor) else mats.float()
    idx = torch.as_tensor(idx, dtype=torch.long, device=frames.device)
    out = None
    if masker.occluder is not None:
        out = occlusion_masks(masker.occluder, frames, mats, idx, size)
    if masker.regions:
        nose = None
        if kps is not None and any(r in ("upper_face", "lower_face") for r in masker.regions):
            pts = torch.stack([torch.as_tensor(np.asarray(k, np.float32))[2] for k in kps])  # nose tip
            nose = (mats[:, 1, 0] * pts[:, 0] + mats[:, 1, 1] * pts[:, 1] + mats[:, 1, 2]).to(frames.device)
        r = region_masks(masker.parser, masker.regions, frames, mats, idx, size, nose)
        out = r if out is None else out * r
    return out


FRAME_CROP = 512  # Face Mask parses each face on its FFHQ-aligned 512 crop (hair and neck included)
VISAGE_MASKER = "VISAGE_MASKER"


@torch.no_grad()
def frame_masks(masker: FaceMasker, images: torch.Tensor, faceset) -> torch.Tensor:
    """[B,H,W] union over each image's faces of the masker's weights, in frame space (Face Mask)."""
    from .. import paste as P
    from .align import estimate_norm

    B, H, W = images.shape[0], images.shape[1], images.shape[2]
    faces = [(i, f) for i, fs in enumerate(faceset.faces) for f in fs]
    if not faces or not masker.active:
        return torch.zeros((B, H, W), device=images.device)
    mats = torch.from_numpy(np.stack([estimate_norm(f.kps, FRAME_CROP, "ffhq_512") for _, f in faces]))
    idx = torch.tensor([i for i, _ in faces], dtype=torch.long, device=images.device)
    m = crop_masks(masker, images, mats, idx, FRAME_CROP, kps=[f.kps for _, f in faces])
    return P.paste_masks(images.shape, mats, m, idx).clamp(0, 1)

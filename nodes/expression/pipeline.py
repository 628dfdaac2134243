"""Expression editing and expression transfer on full frames: crop -> LivePortrait -> paste back.

Everything here is plain torch (no ComfyUI). ``Engine`` runs the five networks through their
model-manager handles (``handle.model()`` right before each use) and keeps per-network timings
(used by ``bench/bench_expression.py``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...core.errors import NoFaceError, VisageError
from ...core.types import Face, FaceEmbeds, FaceSet
from .. import paste as P
from . import crop as C
from . import landmark203 as L203
from . import motion as M

log = logging.getLogger("visage")

ON_NO_FACE = ("error", "skip", "passthrough")
Progress = Optional[Callable[[int, int], None]]


class Direct:
    """A model-handle stand-in around an in-memory module (tests, benchmarks)."""

    def __init__(self, module: torch.nn.Module):
        self._m = module.eval().requires_grad_(False)
        p = next(iter(module.parameters()), None)
        self.dtype = p.dtype if p is not None else torch.float32

    def model(self):
        return self._m


@dataclass
class FaceJob:
    image_index: int
    face: Face
    matrix: np.ndarray  # [2,3] frame -> crop(512)


class Engine:
    def __init__(
        self, models, crop_size: int = C.CROP_SIZE, chunk: int = 2, cancel: Optional[Callable[[], None]] = None
    ):
        self.models = models
        self.cancel = cancel  # raises to cancel; checked before every chunk of every network pass
        self.crop_size = crop_size
        self.chunk = max(int(chunk), 1)
        self.timings: Dict[str, float] = defaultdict(float)
        self.device = torch.device(getattr(models, "device", "cpu"))
        self.dtype = getattr(models, "dtype", torch.float32)

    # ------------------------------------------------------------------ networks
    @contextmanager
    def _timed(self, name):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[name] += time.perf_counter() - t0

    def _in(self, x):
        return x.to(self.device, self.dtype)

    def _check(self):
        if self.cancel is not None:
            self.cancel()

    @torch.no_grad()
    def motion(self, x256: torch.Tensor) -> M.KeypointInfo:
        with self._timed("motion_extractor"):
            net = self.models.motion.model()
            parts = []
            for i in range(0, x256.shape[0], self.chunk):
                self._check()
                parts.append(M.KeypointInfo.from_raw(net(self._in(x256[i : i + self.chunk]))))
        return M.KeypointInfo.cat(parts)

    @torch.no_grad()
    def appearance(self, x256: torch.Tensor) -> torch.Tensor:
        with self._timed("appearance_feature_extractor"):
            net = self.models.appearance.model()
            outs = []
            for i in range(0, x256.shape[0], self.chunk):
                self._check()
                outs.append(net(self._in(x256[i : i + self.chunk])))
            return torch.cat(outs)

    @torch.no_grad()
    def stitch(self, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        with self._timed("stitching_retargeting_module"):
            net = self.models.stitching.model()
            return net.stitching(self._in(x_s), self._in(x_d)).float()

    @torch.no_grad()
    def retarget(self, x_s, eye_ratios=None, lip_ratios=None):
        with self._timed("stitching_retargeting_module"):
            net = self.models.stitching.model()
            d = torch.zeros_like(x_s)
            if eye_ratios is not None:
                d = d + net.retarget_eye(self._in(x_s), self._in(eye_ratios)).float()
            if lip_ratios is not None:
                d = d + net.retarget_lip(self._in(x_s), self._in(lip_ratios)).float()
            return d

    @torch.no_grad()
    def decode(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """f_s [1 or N,...], x_s [1 or N,K,3], x_d [N,K,3] -> images [N,3,512,512] float 0..1."""
        n = x_d.shape[0]
        outs = []
        for i in range(0, n, self.chunk):
            self._check()
            j = min(i + self.chunk, n)
            fs = f_s[i:j] if f_s.shape[0] == n else f_s.expand(j - i, *f_s.shape[1:])
            xs = x_s[i:j] if x_s.shape[0] == n else x_s.expand(j - i, *x_s.shape[1:])
            with self._timed("warping_module"):
                feat, _occ = self.models.warping.model()(self._in(fs), self._in(x_d[i:j]), self._in(xs))
            with self._timed("spade_generator"):
                outs.append(self.models.spade.model()(feat).float())
        return torch.cat(outs)

    # ------------------------------------------------------------------ crops
    def crops(self, images: torch.Tensor, jobs: Sequence[FaceJob]) -> torch.Tensor:
        """[N,S,S,3] 0..1 LivePortrait crops (bilinear, zero outside the frame)."""
        with self._timed("crop"):
            m = torch.from_numpy(np.stack([j.matrix for j in jobs])).float()
            idx = torch.tensor([j.image_index for j in jobs], dtype=torch.long)
            out = P._kops.align_crops(images, m.to(images.device), idx.to(images.device), self.crop_size, layout="NHWC")
            return (out / 255.0).clamp(0, 1)

    @staticmethod
    def net_input(crops: torch.Tensor) -> torch.Tensor:
        """[N,3,256,256] network input. The official pipeline resizes its 512 crop with OpenCV's INTER_AREA,
        which for a whole-number reduction (512 -> 256: 2x) is the mean of each k x k block: torch's 'area'
        (adaptive average pooling) is exactly that. Not a whole multiple (a custom crop size): 'area' still
        averages the covered pixels (cv2 weights partial pixels; close, not bit-equal); enlarging: bilinear."""
        x = crops.permute(0, 3, 1, 2).float()
        if x.shape[-1] > C.NET_SIZE:
            x = F.interpolate(x, size=(C.NET_SIZE, C.NET_SIZE), mode="area")
        elif x.shape[-1] < C.NET_SIZE:
            x = F.interpolate(x, size=(C.NET_SIZE, C.NET_SIZE), mode="bilinear", align_corners=False)
        return x.clamp(0, 1)

    def paste(self, frames, new_crops, orig_crops, jobs, out_index, feather, color_transfer):
        with self._timed("paste"):
            n = len(jobs)
            if new_crops.shape[1] != self.crop_size:
                new_crops = F.interpolate(
                    new_crops.permute(0, 3, 1, 2), size=(self.crop_size,) * 2, mode="bilinear", align_corners=False
                ).permute(0, 2, 3, 1)
            # our own soft face mask already reaches 0 well inside the crop, so the shared box mask is
            # left at full size (erode/blur 0): no seam at the crop box, and no 50-px erosion cost
            mask = C.face_mask(self.crop_size, inner=max(0.05, 0.85 - 3.0 * feather), outer=0.85)
            mask = mask.to(frames.device).expand(n, -1, -1)
            m = torch.from_numpy(np.stack([j.matrix for j in jobs])).float()
            return P.paste_faces(
                frames,
                new_crops.clamp(0, 1).to(frames.device),
                m,
                torch.tensor(out_index),
                masks=mask,
                erode_frac=0.0,
                blur_frac=0.0,
                color_transfer=color_transfer,
                original_crops=orig_crops,
            )


# ---------------------------------------------------------------------------------------- helpers


def find_jobs(
    images: torch.Tensor,
    faces: FaceSet,
    select: str,
    index: int,
    reference: Optional[FaceEmbeds],
    crop_scale: float,
    vy_ratio: float,
) -> List[Optional[FaceJob]]:
    jobs: List[Optional[FaceJob]] = []
    for b in range(images.shape[0]):
        f = C.select_face(faces.faces[b], select, index, reference, faces.image_sizes[b])
        jobs.append(None if f is None else FaceJob(b, f, C.crop_matrix(f, C.CROP_SIZE, crop_scale, 0.0, vy_ratio)))
    return jobs


def _ratios(face: Face, what: str, lm203: Optional[np.ndarray] = None) -> torch.Tensor:
    """Eye ([2]) or lip ([1]) close ratios: LivePortrait's 203-point formulas when its landmark model ran
    (``lm203``), else the 68-point approximation."""
    if lm203 is not None:
        return L203.eye_close_ratios(lm203) if what == "eye" else L203.lip_close_ratio(lm203)
    lm = face.landmarks_68
    if lm is None:
        raise VisageError(
            f"{what} retargeting needs 68-point landmarks",
            expected="faces analysed with a landmark model (e.g. 1k3d68 of an insightface pack), or LivePortrait's "
            "landmark.onnx in models/liveportrait/",
            got="faces without landmarks",
            fix=f"use a pack with landmarks, add landmark.onnx, or turn {what} retargeting off",
        )
    return M.eye_open_ratios(lm) if what == "eye" else M.lip_open_ratio(lm)


def _landmarks203(engine, images: torch.Tensor, job) -> Optional[np.ndarray]:
    h = getattr(engine.models, "landmark", None)
    if h is None:
        return None
    return L203.landmarks_203(h.model(), images[job.image_index], job.face)


@dataclass
class Result:
    images: torch.Tensor  # [B',H,W,3]
    crops: torch.Tensor  # [N,512,512,3] generated crops (one per generated face)
    masks: torch.Tensor  # [B',H,W] frame-space paste masks
    expression: Optional[M.Expression] = None
    generated: int = 0


def _empty_crop(images):
    return torch.zeros((1, C.CROP_SIZE, C.CROP_SIZE, 3), device=images.device)


# ---------------------------------------------------------------------------------------- editor


@torch.no_grad()
def edit(
    engine: Engine,
    images: torch.Tensor,
    faces: FaceSet,
    offset: M.Expression,
    *,
    select="largest",
    index=0,
    reference=None,
    src_ratio=1.0,
    sample: Optional[M.KeypointInfo] = None,
    sample_parts="expression",
    sample_ratio=1.0,
    stitching=True,
    crop_scale=2.3,
    vy_ratio=-0.125,
    feather=0.1,
    color_transfer=True,
    on_no_face="error",
    progress: Progress = None,
) -> Result:
    """Edit one face per image of ``images`` by ``offset`` (+ parts of a ``sample`` face)."""
    if on_no_face not in ON_NO_FACE:
        raise VisageError("Unknown on_no_face", expected=", ".join(ON_NO_FACE), got=repr(on_no_face))
    C.check_faceset(faces, images, "image")
    if sample is not None:
        offset = offset + M.sample_expression(sample, sample_parts, sample_ratio)
    jobs = find_jobs(images, faces, select, index, reference, crop_scale, vy_ratio)
    missing = [b for b, j in enumerate(jobs) if j is None]
    if missing and on_no_face == "error":
        raise NoFaceError(missing, "image")
    keep = [b for b in range(images.shape[0]) if not (on_no_face == "skip" and jobs[b] is None)]
    if not keep:
        raise NoFaceError(missing, "image")  # nothing left to return
    live = [j for j in jobs if j is not None]
    out_index = [keep.index(j.image_index) for j in live]
    frames = images[keep]
    if not live:
        return Result(
            frames.clone(), _empty_crop(images), torch.zeros(frames.shape[:3], device=images.device), offset, 0
        )
    crops = engine.crops(images, live)
    x256 = Engine.net_input(crops)
    info = engine.motion(x256)
    f_s = engine.appearance(x256)
    x_s = M.transform_keypoints(info)
    x_d = M.edited_keypoints(info, offset, src_ratio)
    if stitching:
        x_d = engine.stitch(x_s, x_d)
    gen = []
    for i in range(len(live)):
        gen.append(engine.decode(f_s[i : i + 1], x_s[i : i + 1], x_d[i : i + 1]))
        if progress:
            progress(i + 1, len(live))
    new = torch.cat(gen).permute(0, 2, 3, 1)
    out, mask = engine.paste(frames, new, crops, live, out_index, feather, color_transfer)
    return Result(out, new, mask, offset, len(live))


def reconstruct(engine: Engine, crops512: torch.Tensor, stitching=True) -> torch.Tensor:
    """The unedited pass of crops: decode(x_d = x_s) -> [N,3,512,512] (what a zero edit must equal)."""
    x256 = Engine.net_input(crops512)
    info = engine.motion(x256)
    f_s = engine.appearance(x256)
    x_s = M.transform_keypoints(info)
    x_d = engine.stitch(x_s, x_s) if stitching else x_s
    return torch.cat([engine.decode(f_s[i : i + 1], x_s[i : i + 1], x_d[i : i + 1]) for i in range(len(info))])


@torch.no_grad()
def sample_info(
    engine: Engine, images: torch.Tensor, faces: FaceSet, select="largest", index=0, crop_scale=2.3, vy_ratio=-0.125
) -> M.KeypointInfo:
    C.check_faceset(faces, images, "sample_image")
    jobs = find_jobs(
        images[:1], FaceSet(faces.faces[:1], faces.image_sizes[:1]), select, index, None, crop_scale, vy_ratio
    )
    if jobs[0] is None:
        raise NoFaceError([0], "sample_image")
    return engine.motion(Engine.net_input(engine.crops(images, jobs)))


# ---------------------------------------------------------------------------------------- transfer


@torch.no_grad()
def transfer(
    engine: Engine,
    source: torch.Tensor,
    source_faces: FaceSet,
    driving: torch.Tensor,
    driving_faces: FaceSet,
    *,
    select="largest",
    index=0,
    reference=None,
    driving_select="largest",
    mode="relative",
    region="all",
    eye_retargeting=False,
    lip_retargeting=False,
    smoothing=0.0,
    multiplier=1.0,
    stitching=True,
    crop_scale=2.3,
    vy_ratio=-0.125,
    feather=0.1,
    color_transfer=True,
    on_no_face="passthrough",
    progress: Progress = None,
) -> Result:
    """Animate the source face(s) with the driving frames' motion. One output frame per driving frame
    (fewer only with on_no_face='skip'). A one-image source is animated by every driving frame; a
    source batch as long as the driving batch pairs frame i with frame i (video to video)."""
    if on_no_face not in ON_NO_FACE:
        raise VisageError("Unknown on_no_face", expected=", ".join(ON_NO_FACE), got=repr(on_no_face))
    C.check_faceset(source_faces, source, "source")
    C.check_faceset(driving_faces, driving, "driving")
    bs, n = source.shape[0], driving.shape[0]
    if bs not in (1, n):
        raise VisageError(
            "The source batch must be one image or as long as the driving frames",
            expected=f"1 or {n} source image(s)",
            got=f"{bs} source images",
            fix="pick one source frame (ImageFromBatch) or match the frame counts",
        )
    src_jobs = find_jobs(source, source_faces, select, index, reference, crop_scale, vy_ratio)
    drv_jobs = find_jobs(driving, driving_faces, driving_select, 0, None, crop_scale, vy_ratio)
    src_missing = [b for b, j in enumerate(src_jobs) if j is None]
    drv_missing = [i for i, j in enumerate(drv_jobs) if j is None]
    if on_no_face == "error" and (src_missing or drv_missing):
        raise NoFaceError(src_missing or drv_missing, "source" if src_missing else "driving")
    src_of = (lambda i: i) if bs == n else (lambda i: 0)
    ok = [i for i in range(n) if drv_jobs[i] is not None and src_jobs[src_of(i)] is not None]
    keep = list(range(n)) if on_no_face == "passthrough" else ok
    if not keep:
        raise NoFaceError(drv_missing or src_missing, "driving" if drv_missing else "source")
    if drv_missing or src_missing:
        log.info(
            "Visage expression transfer: %d frame(s) without a usable face are %s",
            n - len(ok),
            "passed through" if on_no_face == "passthrough" else "skipped",
        )
    frames = source[[src_of(i) for i in keep]].clone()
    masks = torch.zeros(frames.shape[:3], device=source.device)
    if not ok:
        return Result(frames, _empty_crop(source), masks, None, 0)

    # source: one crop per distinct source image used
    src_ids = sorted({src_of(i) for i in ok})
    s_jobs = [src_jobs[b] for b in src_ids]
    s_crops = engine.crops(source, s_jobs)
    s256 = Engine.net_input(s_crops)
    s_info = engine.motion(s256)
    f_s = engine.appearance(s256)
    x_s_all = M.transform_keypoints(s_info)
    pos = {b: k for k, b in enumerate(src_ids)}

    # driving motion of the frames that have a face, smoothed over time
    d_jobs = [drv_jobs[i] for i in ok]
    d_info = engine.motion(Engine.net_input(engine.crops(driving, d_jobs)))
    d_info = M.smooth_info(d_info, smoothing)
    d0 = d_info.select(0)

    gen, out_index, paste_jobs, orig = [], [], [], []
    for k, i in enumerate(ok):
        engine._check()
        sk = pos[src_of(i)]
        si = s_info.select(sk)
        x_s = x_s_all[sk : sk + 1]
        x_d = M.driven_keypoints(si, d_info.select(k), d0, mode, region)
        if eye_retargeting or lip_retargeting:
            s_face, d_face = s_jobs[sk].face, d_jobs[k].face
            s_lm, d_lm = _landmarks203(engine, source, s_jobs[sk]), _landmarks203(engine, driving, d_jobs[k])
            eye = lip = None
            if eye_retargeting:
                eye = torch.cat([_ratios(s_face, "eye", s_lm), _ratios(d_face, "eye", d_lm)[:1]])[None]
            if lip_retargeting:
                lip = torch.cat([_ratios(s_face, "lip", s_lm), _ratios(d_face, "lip", d_lm)])[None]
            delta = engine.retarget(x_s, eye, lip)
            # LivePortrait's Algorithm 1: relative motion + retargeting = source keypoints + deltas
            x_d = (x_s if mode == "relative" else x_d) + delta
        if stitching:
            x_d = engine.stitch(x_s, x_d)
        x_d = x_s + (x_d - x_s) * multiplier
        gen.append(engine.decode(f_s[sk : sk + 1], x_s, x_d))
        out_index.append(keep.index(i))
        paste_jobs.append(s_jobs[sk])
        orig.append(s_crops[sk])
        if progress:
            progress(k + 1, len(ok))
    new = torch.cat(gen).permute(0, 2, 3, 1)
    pj = [FaceJob(out_index[k], paste_jobs[k].face, paste_jobs[k].matrix) for k in range(len(ok))]
    out, mask = engine.paste(frames, new, torch.stack(orig), pj, out_index, feather, color_transfer)
    return Result(out, new, mask, None, len(ok))

"""Face analysis: detection, landmarks, pose, gender/age and identity embeddings, batched in torch.

One detector forward for the whole image batch, then one forward per per-face model for all faces
of all images. The maths reproduce insightface's FaceAnalysis (the reference in tests): the same
crops (cv2.warpAffine semantics, 8-bit rounding), the same normalisation, the same decoding.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from ...core.errors import VisageError
from ...core.images import check_image
from ...core.model_manager import MANAGER, ModelHandle
from ...core.onnx import (
    CPU_CHUNK_FACES,
    OrtCpuModule,
    effective_fixed_batch,
    load_onnx_module,
    run_batched,
    torch_chunk,
)
from ...core.recognizers import recognizer_id
from ...core.types import Face, FaceSet
from ...kernels import ops as kops
from .align import crop_matrix, estimate_norm, invert_affine
from .pack import RoutedModel, is_recognition, route_pack
from .scrfd import ScrfdDetector

log = logging.getLogger("visage")

Progress = Optional[Callable[[int, int], None]]


ENGINES = ("auto", "torch", "onnxruntime")

# Analysis chunks are bounded by pixels as well as frames, so a chunk stays short (cancel and progress
# are per chunk): on a CPU about 1 Mpx (two detector canvases of 640x640, or one 1080p frame), on a GPU
# 64 Mpx. A frame counts as its own size or the detector canvas, whichever is larger.
CHUNK_PIXELS = {"cpu": 1 << 20}
CHUNK_PIXELS_DEFAULT = 64 << 20


def chunk_frames(chunk: int, frame_pixels: int, device) -> int:
    """Frames per analysis chunk: at most ``chunk``, and at most the device's pixel budget (>= 1)."""
    budget = CHUNK_PIXELS.get(torch.device(device).type, CHUNK_PIXELS_DEFAULT)
    return max(1, min(int(chunk), budget // max(int(frame_pixels), 1)))


def _onnx_loader(path, device, dtype):
    module = load_onnx_module(path, "cpu", dtype)
    if torch.device(device).type == "cpu":
        # torch's CPU convolutions (oneDNN) run channels-last weights and activations 1.3-1.7x faster than
        # contiguous ones for these convnets (SCRFD, MobileFaceNet; measured in bench/bench_face.py's
        # torch-engine rows); the layout does not change the maths. On a GPU the module stays as converted.
        module = module.to(memory_format=torch.channels_last)
    return module


def _ort_loader(path, device, dtype):
    return OrtCpuModule(path, parallel=True)  # faces / frames data-parallel over the CPUs (core.onnx)


def model_crops(images, mats: np.ndarray, owners, size: int, mean: float, std: float, bgr: bool, dtype):
    """Model-ready inputs [N,3,S,S] for the faces whose frame->crop matrices are ``mats``.

    What insightface does per face: cv2.warpAffine on the uint8 image (8-bit rounding), then the model's
    channel order and (x - mean) / std. ``images`` [B,H,W,3] is a float IMAGE 0..1 or uint8 frames.

    On the host each crop is ONE cv2.warpAffine of the frame (a view of the IMAGE, no full-frame
    conversion), rounded to 8-bit values on the crop: a few 112 px crops are far too small for
    multi-threaded torch ops (their thread start-up dominated, and collapsed on a busy machine). On a
    GPU: one batched kops.align_crops call (the fused kernel)."""
    owners_t = torch.as_tensor(owners, dtype=torch.long)
    if images.device.type == "cpu":
        return host_crops(images, mats, owners_t.tolist(), size, mean, std, bgr, dtype)
    return kops.align_crops(
        images,
        torch.from_numpy(mats),
        owners_t.to(images.device),
        size,
        mean=mean,
        std=std,
        bgr=bgr,
        layout="NCHW",
        out_dtype=dtype if dtype.is_floating_point else torch.float32,
        round_to_uint8=True,
    )


def host_uint8(images: torch.Tensor) -> torch.Tensor:
    """Host IMAGE [B,H,W,C] float 0..1 -> uint8 [B,H,W,C] (round, saturate), one cv2 pass per frame.

    Bit-equal to ``(images * 255).round().clamp(0, 255)`` on the values an 8-bit source gives (k / 255),
    several times faster than the torch chain (no temporaries, no thread start-up per op)."""
    if images.dtype == torch.uint8:
        return images
    arr = images.detach().float().contiguous().numpy()
    B, H, W, C = arr.shape
    out = np.empty((B, H, W, C), np.uint8)
    for b in range(B):
        cv2.multiply(arr[b].reshape(H, W * C), 1.0, dst=out[b].reshape(H, W * C), scale=255.0, dtype=cv2.CV_8U)
    return torch.from_numpy(out)


def host_crops(images, mats: np.ndarray, owners: Sequence[int], size: int, mean: float, std: float, bgr: bool, dtype):
    """cv2 twin of :func:`model_crops` for frames on the host (one warpAffine per face)."""
    u8 = images.dtype == torch.uint8
    arr = images.numpy() if u8 else images.detach().float().contiguous().numpy()
    out = np.empty((len(owners), 3, size, size), np.float32)
    for k, (b, m) in enumerate(zip(owners, mats)):
        c = cv2.warpAffine(arr[b], np.asarray(m, np.float64), (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
        c = c.astype(np.float32) if u8 else np.floor(c * np.float32(255.0) + np.float32(0.5))
        if bgr:
            c = c[:, :, ::-1]
        out[k] = c.transpose(2, 0, 1)
    out -= np.float32(mean)
    out /= np.float32(std)
    t = torch.from_numpy(out)
    return t.to(dtype) if dtype.is_floating_point and dtype != torch.float32 else t


def pick_engine(engine: str, device) -> str:
    """'auto': torch modules on a GPU (ComfyUI manages them), onnxruntime on the CPU (faster there)."""
    if engine not in ENGINES:
        raise VisageError(f"Unknown engine '{engine}'", expected=" / ".join(ENGINES), got=engine)
    if engine == "auto":
        return "onnxruntime" if torch.device(device).type == "cpu" else "torch"
    if engine == "onnxruntime" and torch.device(device).type != "cpu":
        raise VisageError(
            "The onnxruntime engine runs on the CPU only",
            expected="device 'cpu' with engine 'onnxruntime'",
            got=f"device {device}",
            fix="use engine 'torch' (or 'auto') on the GPU",
        )
    return engine


def _mean_shape_68() -> Optional[np.ndarray]:
    """The 68-point 3D mean shape that head pose is fitted to (float64 [68,3]).

    ``meanshape_68.npy`` next to this file holds the numbers of insightface's
    ``insightface/data/objects/meanshape_68.pkl`` (insightface 2.1; sha256 of that pkl
    39ffecf84ba73f0d0d7e49380833ba88713c9fcdec51df4f7ac45a48b8f4cc51; float32 [68,3], stored as they are),
    read without pickle, so insightface is not needed at run time. The test compares the pose with the pkl's.
    """
    p = os.path.join(os.path.dirname(os.path.abspath(__file__)), "meanshape_68.npy")
    try:
        return np.load(p, allow_pickle=False).astype(np.float64)
    except Exception as e:  # pragma: no cover - a damaged install
        log.warning("Visage: cannot read the 68-point mean shape %s (%s); pose will not be estimated", p, e)
        return None


def pose_from_3d68(lmk: np.ndarray, mean_shape: np.ndarray) -> np.ndarray:
    """(pitch, yaw, roll) in degrees from 68 3D landmarks, as insightface computes it."""
    X = np.hstack([mean_shape, np.ones((mean_shape.shape[0], 1))])
    P = np.linalg.lstsq(X, lmk.astype(np.float64), rcond=None)[0].T
    R1, R2 = P[0:1, :3], P[1:2, :3]
    r1 = R1 / np.linalg.norm(R1)
    r2 = R2 / np.linalg.norm(R2)
    r3 = np.cross(r1, r2)
    R = np.concatenate([r1, r2, r3], 0)
    sy = np.sqrt(R[0, 0] ** 2 + R[1, 0] ** 2)
    if sy >= 1e-6:
        x = np.arctan2(R[2, 1], R[2, 2])
        y = np.arctan2(-R[2, 0], sy)
        z = np.arctan2(R[1, 0], R[0, 0])
    else:
        x = np.arctan2(-R[1, 2], R[1, 1])
        y = np.arctan2(-R[2, 0], sy)
        z = 0.0
    return np.degrees(np.array([x, y, z])).astype(np.float32)


class FaceAnalyzer:
    """A loaded face-analysis pack (the VISAGE_ANALYZER payload). Holds model handles only."""

    def __init__(
        self,
        name: str,
        routed: Dict[str, RoutedModel],
        handles: Dict[str, ModelHandle],
        det_size=(640, 640),
        det_thresh: float = 0.5,
    ):
        self.name = name
        self.routed = routed
        self.handles = handles
        self.detector = ScrfdDetector(handles["detection"], routed["detection"].signature, det_size, det_thresh)
        self.device = handles["detection"].device
        self._mean68 = _mean_shape_68() if "landmark_3d_68" in routed else None

    @property
    def tasks(self) -> Tuple[str, ...]:
        return tuple(self.routed)

    @property
    def encoder(self) -> Optional[str]:
        """Id of the primary recognizer (``Face.embedding``)."""
        r = self.routed.get("recognition")
        return recognizer_id(r.path) if r else None

    @property
    def recognizers(self) -> Tuple[str, ...]:
        """Ids of every recognizer this analyzer runs (primary first)."""
        return tuple(recognizer_id(self.routed[t].path) for t in self.routed if is_recognition(t))

    def __repr__(self):
        return f"FaceAnalyzer({self.name}, tasks={list(self.routed)}, device={self.device})"

    # ----------------------------------------------------------------------------- helpers
    def _crops(self, task: str, images: torch.Tensor, mats: np.ndarray, owners: torch.Tensor) -> torch.Tensor:
        """Model-ready inputs [N,3,S,S] for ``task`` (see :func:`model_crops`)."""
        r = self.routed[task]
        return model_crops(images, mats, owners, r.input_size, r.mean, r.std, r.bgr, self.handles[task].dtype)

    def _run(self, task: str, x: torch.Tensor) -> np.ndarray:
        """x [N,3,S,S] model-ready (from :meth:`_crops`) -> model output [N, D] (float32 numpy)."""
        h = self.handles[task]
        x = x.to(h.device, h.dtype)
        with torch.inference_mode():
            model = h.model()
            fixed = (
                effective_fixed_batch(model, self.routed[task].signature, tuple(x.shape[1:])) if x.shape[0] > 1 else 1
            )
            out = run_batched(model, x, chunk=torch_chunk(h.device, 64, CPU_CHUNK_FACES), fixed=fixed)[0]
        return out.float().reshape(out.shape[0], -1).cpu().numpy()

    @staticmethod
    def _box_crop_matrices(dets: Sequence[np.ndarray], size: int, factor: float) -> np.ndarray:
        mats = []
        for bbox in dets:
            w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
            center = ((bbox[2] + bbox[0]) / 2, (bbox[3] + bbox[1]) / 2)
            scale = size / (max(w, h) * factor)
            mats.append(crop_matrix(center, size, scale, 0.0))
        return np.stack(mats).astype(np.float32)

    # ----------------------------------------------------------------------------- main
    def analyze(
        self,
        images: torch.Tensor,
        max_num: int = 0,
        det_thresh: Optional[float] = None,
        progress: Progress = None,
        tasks: Optional[Sequence[str]] = None,
        chunk: int = 16,
    ) -> FaceSet:
        """images [B,H,W,C] float 0..1 -> FaceSet (faces in detector order per image).

        Images are processed at most ``chunk`` at a time and within a pixel budget (:func:`chunk_frames`;
        one detector forward per chunk, one forward per per-face model for all faces of the chunk);
        ``progress(done_images, total)`` is called after each chunk (it may raise to cancel).
        """
        images = check_image(images)
        B = images.shape[0]
        dw, dh = self.detector.det_size
        chunk = chunk_frames(chunk, max(images.shape[1] * images.shape[2], dw * dh), self.device)
        faces: List[Tuple[Face, ...]] = []
        for s in range(0, B, chunk):
            part = self._analyze_chunk(images[s : s + chunk], max_num, det_thresh, tasks)
            faces += [tuple(f.with_(image_index=f.image_index + s) for f in per) for per in part.faces]
            if progress:
                progress(min(s + chunk, B), B)
        H, W = images.shape[1], images.shape[2]
        return FaceSet(faces=tuple(faces), image_sizes=((H, W),) * B, analyzer=self.name)

    def _analyze_chunk(self, images, max_num, det_thresh, tasks) -> FaceSet:
        B, H, W, _ = images.shape
        want = set(tasks) if tasks is not None else set(self.routed)
        if "recognition" in want:  # every recognizer: each method picks the one it was trained on
            want |= {t for t in self.routed if is_recognition(t)}
        if images.device.type == "cpu":
            # host frames: ONE cv2 pass to the 8-bit frame the reference pipeline sees (53 ms -> 6-13 ms on
            # a 3000 px photo compared with torch's multiply/round/clamp/cast on 2 cores); the detector's
            # resize and every crop then run on it, bit-exact with insightface's cv2 calls
            frames = host_uint8(images)
            dets = self.detector.detect(frames, det_thresh=det_thresh, max_num=max_num, scale255=False)
        else:
            # frames on the GPU: resized first, 8-bit rounding on the resized canvas and on each crop only
            frames = images
            dets = self.detector.detect(images, det_thresh=det_thresh, max_num=max_num)
        img_dev = None
        boxes, kpss, owners = [], [], []
        for b, (det, kps) in enumerate(dets):
            for k in range(det.shape[0]):
                boxes.append(det[k])
                kpss.append(kps[k] if kps is not None else None)
                owners.append(b)
        n = len(boxes)
        extra: Dict[str, List] = {}
        owner_t = torch.tensor(owners, dtype=torch.long)
        if n:
            for task in self.routed:
                if task == "detection" or task not in want:
                    continue
                r = self.routed[task]
                if is_recognition(task):
                    if any(k is None for k in kpss):
                        raise VisageError(
                            "The face detector of this pack gives no keypoints",
                            expected="an SCRFD detector with 5 keypoints (…_bnkps / det_10g)",
                            got=os.path.basename(self.routed["detection"].path),
                            fix="use a pack whose detector outputs keypoints",
                        )
                    mats = np.stack([estimate_norm(k, r.input_size) for k in kpss]).astype(np.float32)
                elif task == "landmark_2d_68":
                    mats = self._box_crop_matrices(boxes, r.input_size, 1.1)
                else:
                    mats = self._box_crop_matrices(boxes, r.input_size, 1.5)
                if img_dev is None:  # host frames for a GPU: 8-bit values travel (a quarter of a float copy)
                    img_dev = frames if frames.device.type == torch.device(self.device).type else frames.to(self.device)
                out = self._run(task, self._crops(task, img_dev, mats, owner_t))
                extra[task] = self._decode(task, r, out, mats)
        per_image: List[List[Face]] = [[] for _ in range(B)]
        rec_ids = {t: recognizer_id(self.routed[t].path) for t in extra if is_recognition(t)}
        normed = {}
        if "recognition" in extra:  # every face's normalised embedding in one numpy pass
            e = np.asarray(extra["recognition"], np.float32)
            normed = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), np.float32(1e-12))
        for i in range(n):
            kw = {}
            embs = {rid: torch.from_numpy(extra[t][i].copy()) for t, rid in rec_ids.items()}
            if "recognition" in extra:
                emb = embs[rec_ids["recognition"]]
                kw.update(
                    embedding=emb,
                    normed_embedding=torch.from_numpy(normed[i].copy()),
                    encoder=rec_ids["recognition"],
                )
            if embs:
                kw["embeddings"] = embs
            if "landmark_2d_106" in extra:
                kw["landmarks_2d_106"] = torch.from_numpy(extra["landmark_2d_106"][i])
            if "landmark_3d_68" in extra:
                l3 = extra["landmark_3d_68"][i]
                kw["landmarks_3d_68"] = torch.from_numpy(l3)
                if self._mean68 is not None:
                    kw["pose"] = torch.from_numpy(pose_from_3d68(l3, self._mean68))
            if "landmark_2d_68" in extra:
                kw["landmarks_2d_68"] = torch.from_numpy(extra["landmark_2d_68"][i])
            if "genderage" in extra:
                g, a = extra["genderage"][i]
                kw.update(gender="M" if g == 1 else "F", age=int(a))
            box = boxes[i]
            kps = kpss[i] if kpss[i] is not None else np.zeros((5, 2), np.float32)
            per_image[owners[i]].append(
                Face(
                    image_index=owners[i],
                    bbox=torch.from_numpy(box[:4].copy()),
                    score=float(box[4]),
                    kps=torch.from_numpy(kps.copy()),
                    **kw,
                )
            )
        return FaceSet(faces=tuple(tuple(f) for f in per_image), image_sizes=((H, W),) * B, analyzer=self.name)

    def _decode(self, task: str, r: RoutedModel, out: np.ndarray, mats: np.ndarray):
        if is_recognition(task):
            return out
        if task == "genderage":
            return [(int(np.argmax(o[:2])), int(np.round(o[2] * 100))) for o in out]
        if task == "landmark_2d_68":  # PFLD: crop-relative 0..1
            res = []
            for o, m in zip(out, mats):
                pts = o.reshape(-1, 2) * r.input_size
                res.append(_apply(pts, invert_affine(m)))
            return res
        res = []
        half = r.input_size // 2
        for o, m in zip(out, mats):
            pred = o.reshape(-1, 3) if o.shape[0] >= 3000 else o.reshape(-1, 2)
            num = 68 if task == "landmark_3d_68" else pred.shape[0]
            pred = pred[-num:].astype(np.float32).copy()
            pred[:, 0:2] += 1
            pred[:, 0:2] *= half
            if pred.shape[1] == 3:
                pred[:, 2] *= half
            im = invert_affine(m)
            xy = _apply(pred[:, :2], im)
            if pred.shape[1] == 3:
                scale = np.sqrt(im[0, 0] ** 2 + im[0, 1] ** 2)
                res.append(np.concatenate([xy, pred[:, 2:3] * scale], 1).astype(np.float32))
            else:
                res.append(xy.astype(np.float32))
        return res


def _apply(pts: np.ndarray, m: np.ndarray) -> np.ndarray:
    return (pts.astype(np.float32) @ m[:, :2].T.astype(np.float32) + m[:, 2].astype(np.float32)).astype(np.float32)


def load_analyzer(
    pack_dir: str,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    det_size=(640, 640),
    det_thresh: float = 0.5,
    tasks: Optional[Sequence[str]] = None,
    engine: str = "torch",
) -> FaceAnalyzer:
    """Route a pack folder and load its models through the model manager.

    engine 'torch' converts each ONNX file to a torch module on ``device``; 'onnxruntime' runs CPU
    sessions (CPU only); 'auto' picks onnxruntime on the CPU and torch elsewhere.
    """
    engine = pick_engine(engine, device)
    loader = _ort_loader if engine == "onnxruntime" else _onnx_loader
    routed = route_pack(pack_dir)
    if tasks is not None:
        routed = {
            k: v
            for k, v in routed.items()
            if k == "detection" or k in tasks or (is_recognition(k) and "recognition" in tasks)
        }
    handles = {}
    for task, r in routed.items():
        # detection stays fp32 (box precision); per-face models follow the asked dtype
        dt = torch.float32 if task == "detection" else dtype
        if engine == "onnxruntime":
            dt = torch.float32
        handles[task] = MANAGER.get(
            f"face:{engine}:{task}", r.path, loader, device=device, dtype=dt, name=f"{task}:{os.path.basename(r.path)}"
        )
    name = os.path.basename(os.path.normpath(pack_dir))
    return FaceAnalyzer(name, routed, handles, det_size=det_size, det_thresh=det_thresh)

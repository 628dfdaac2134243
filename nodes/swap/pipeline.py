"""Swap pipeline: which source goes onto which target face, then align -> swap -> (restore) -> paste.

Everything stays on the frames' device; per chunk of frames all faces run through the swapper in one
batch. Pure torch/numpy (no ComfyUI): node.py wires it to the ports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch

from ...core.errors import NoFaceError, VisageError
from ...core.onnx import caller_torch_threads, host_torch_threads
from ...core.recognizers import method_embeddings
from ...core.select import apply_on_no_face, expand_to, order_faces, similarities
from ...core.types import Face, FaceEmbeds, FaceSet
from .. import paste as P
from ..face.align import estimate_norm
from .models import SwapperModule, mix_identity, run_swapper_boosted, source_latent
from .restore import Restorer, restore_crops

try:
    from ...kernels import ops as _kops
except ImportError:  # pragma: no cover
    from ...kernels import reference as _kops
from ...kernels.reference import lab_transfer

log = logging.getLogger("visage")

MAPPINGS = ("by_order", "by_index", "by_identity")
MASK_TYPES = ("box", "landmarks")
Progress = Optional[Callable[[int, int], None]]


@dataclass(frozen=True)
class Assignment:
    image_index: int
    face: Face
    source_set: int  # which source set (source image) the identity comes from
    source: int  # identity index inside that set


def parse_indexes(text: str, name: str) -> List[int]:
    """'0, 2,3' -> [0, 2, 3]; '' -> []."""
    text = (text or "").strip()
    if not text:
        return []
    out = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = int(part)
        except ValueError:
            raise VisageError(
                f"'{name}' must be a comma-separated list of face numbers",
                expected="e.g. '0' or '0,1,2' (0 = first face in the chosen order)",
                got=repr(text),
                fix=f"write numbers only in '{name}'",
            )
        if v < 0:
            raise VisageError(f"'{name}' holds a negative face number", expected="numbers >= 0", got=repr(text))
        out.append(v)
    return out


# The inswapper family (inswapper, reswapper, HyperSwap) takes the L2-normalised embedding of
# insightface's buffalo_l recognizer (insightface's INSwapper.get, ReActor and facefusion all use it).
SWAP_TRAINED_ON = "w600k_r50"


def source_sets_from_faces(faceset: FaceSet, order: str = "largest") -> List[List[Face]]:
    """Identities per source image, in ``order``; a source image without a face is an error."""
    empty = faceset.images_without_face()
    if empty:
        raise NoFaceError(empty, where="the source image batch")
    return [order_faces(faces, order) for faces in faceset.faces]


def embeddings_of(sets: Sequence[Sequence[Face]], override: str = "") -> List[torch.Tensor]:
    """[n, 512] normalised swap embeddings per source set, from the recognizer the swappers were
    trained on (``override``: another recognizer id, an expert's choice)."""
    return [
        method_embeddings(
            "Face swap", SWAP_TRAINED_ON, FaceSet(faces=(tuple(s),), image_sizes=((0, 0),)), None, True, None, override
        )
        for s in sets
    ]


def target_embeddings(faces: Sequence[Face], override: str = "") -> torch.Tensor:
    """[N,512] normalised swap-recognizer embeddings of target faces (identity strength < 1)."""
    fs = FaceSet(faces=(tuple(faces),), image_sizes=((0, 0),))
    return method_embeddings("Identity strength", SWAP_TRAINED_ON, fs, None, True, None, override)


def check_batches(n_source_sets: int, n_targets: int) -> None:
    if n_source_sets not in (1, n_targets):
        raise VisageError(
            "The source and target batch sizes do not match",
            expected=f"1 source image (used for every target) or {n_targets} (one per target frame)",
            got=f"{n_source_sets} source images for {n_targets} target images",
            fix="pass one source image, one per target frame, or fuse several photos of one person "
            "with 'Build Face Model' and connect it to source_embeds",
        )


def plan(
    targets: FaceSet,
    source_counts: Sequence[int],
    mapping: str = "by_order",
    order: str = "left_to_right",
    source_indexes: str = "0",
    target_indexes: str = "",
    references: Optional[FaceEmbeds] = None,
    min_similarity: float = 0.3,
    track_ids: Optional[List[List[int]]] = None,
) -> List[Assignment]:
    """Who goes where. ``source_counts[s]`` = identities in source set s (1 set, or 1 per target image)."""
    if mapping not in MAPPINGS:
        raise VisageError(f"Unknown mapping '{mapping}'", expected=" / ".join(MAPPINGS), got=mapping)
    check_batches(len(source_counts), targets.batch_size)
    src_idx = parse_indexes(source_indexes, "source_indexes")
    tgt_idx = parse_indexes(target_indexes, "target_indexes")
    out: List[Assignment] = []
    if mapping == "by_identity":
        if references is None:
            raise VisageError(
                "Mapping 'by_identity' needs the identities to replace",
                expected="a VISAGE_EMBEDS on 'target_references' (one row per person in the target, "
                "row k is replaced by source face k)",
                got="nothing connected",
                fix="connect Face Embeds (fusion 'none') of the people to "
                "replace, or use mapping 'by_order' / 'by_index'",
            )
        sims: Dict[tuple, np.ndarray] = {}
        for i, faces in enumerate(targets.faces):
            for j, f in enumerate(faces):
                sims[(i, j)] = similarities(f, references).numpy()
        if track_ids is not None:  # one decision per track: the mean similarity over its frames
            per_track: Dict[int, List[np.ndarray]] = {}
            for (i, j), s in sims.items():
                per_track.setdefault(track_ids[i][j], []).append(s)
            sims = {(i, j): np.mean(per_track[track_ids[i][j]], 0) for (i, j) in sims}
        for i, faces in enumerate(targets.faces):
            si = 0 if len(source_counts) == 1 else i
            for j, f in enumerate(faces):
                s = sims[(i, j)]
                k = int(np.argmax(s))
                if s[k] < min_similarity:
                    continue
                src = k if source_counts[si] > 1 else 0
                if src >= source_counts[si]:
                    raise VisageError(
                        "A target reference has no matching source face",
                        expected=f"at least {k + 1} source faces (reference row {k} -> source face {k})",
                        got=f"{source_counts[si]} source face(s)",
                        fix="add source faces or references",
                    )
                out.append(Assignment(i, f, si, src))
        return out
    for i, faces in enumerate(targets.faces):
        si = 0 if len(source_counts) == 1 else i
        n_src = source_counts[si]
        ordered = order_faces(faces, order)
        if mapping == "by_order":
            for k, f in enumerate(ordered):
                if n_src == 1:
                    out.append(Assignment(i, f, si, 0))
                elif k < n_src:
                    out.append(Assignment(i, f, si, k))
            continue
        # by_index
        tl = tgt_idx or list(range(len(ordered)))
        sl = src_idx or [0]
        if len(sl) == 1:
            sl = sl * len(tl)
        if len(sl) != len(tl):
            raise VisageError(
                "source_indexes and target_indexes pair up one to one",
                expected=f"as many source numbers as target numbers ({len(tl)}), or a single source",
                got=f"source_indexes={source_indexes!r}, target_indexes={target_indexes!r}",
                fix="write e.g. source_indexes '1,0' with target_indexes '0,1'",
            )
        for s, t in zip(sl, tl):
            if s >= n_src:
                raise VisageError(
                    f"source_indexes asks for source face {s}",
                    expected=f"a number below {n_src} (faces found in the source)",
                    got=str(s),
                    fix="lower the number or check the source image",
                )
            if t < len(ordered):  # a frame with fewer faces keeps the missing ones unchanged
                out.append(Assignment(i, ordered[t], si, s))
    return out


def _crop_points(face: Face, M: np.ndarray) -> Optional[torch.Tensor]:
    pts = face.landmarks_2d_106 if face.landmarks_2d_106 is not None else face.landmarks_68
    if pts is None:
        return None
    return P.to_crop_points(pts[:, :2].float().cpu(), torch.from_numpy(M))


def swap_frames(frames: torch.Tensor, *args, **kwargs):
    """See :func:`_swap_frames`. Frames in host memory: torch's small ops around the models run on
    :data:`visage.core.onnx.HOST_TORCH_THREADS` thread(s) for the call (chosen, restored after)."""
    if isinstance(frames, torch.Tensor) and frames.device.type == "cpu":
        with host_torch_threads():
            return _swap_frames(frames, *args, **kwargs)
    return _swap_frames(frames, *args, **kwargs)


@torch.no_grad()
def _swap_frames(
    frames: torch.Tensor,
    assignments: Sequence[Assignment],
    swapper_handle,
    source_embeddings: Sequence[torch.Tensor],
    *,
    blend: float = 1.0,
    mask_type: str = "box",
    erode: float = 0.1,
    blur: float = 0.1,
    color_transfer: bool = False,
    use_model_mask: bool = True,
    restorer: Optional[Restorer] = None,
    progress: Progress = None,
    faces_per_chunk: int = 8,
    masker=None,
    pixel_boost: int = 1,
    identity_strength: float = 1.0,
    recognizer_override: str = "",
    expression=None,
):
    """frames [B,H,W,3] float 0..1 (any device) -> (frames, mask [B,H,W], count).

    ``masker`` (:class:`visage.nodes.face.masks.FaceMasker`): occlusion / region weights of each target
    face, multiplied into the paste mask (intersection with box / landmarks). ``pixel_boost`` b: the face
    is aligned at b x the model's side and swapped as b*b interleaved crops. ``identity_strength`` < 1:
    the swap embedding is mixed with the target face's own (the faces need the swap recognizer's
    embedding). ``expression`` (:class:`ExpressionRestore`): the target's expression put back after the swap."""
    if mask_type not in MASK_TYPES:
        raise VisageError(f"Unknown mask type '{mask_type}'", expected=" / ".join(MASK_TYPES), got=mask_type)
    B = frames.shape[0]
    dev = frames.device
    outs, masks = [], []  # per chunk; chunks without a face keep (a view of) their input frames
    by_frame: Dict[int, List[Assignment]] = {}
    for a in assignments:
        by_frame.setdefault(a.image_index, []).append(a)
    mod: SwapperModule = swapper_handle.model()
    latents = [source_latent(mod, e).to(dev) for e in source_embeddings]
    S = mod.spec.size * int(pixel_boost)  # the crop side the face is aligned, swapped and pasted at
    count = 0
    f0 = 0
    while f0 < B:
        f1, nfaces = f0, 0
        while f1 < B and (f1 == f0 or nfaces + len(by_frame.get(f1, [])) <= faces_per_chunk):
            nfaces += len(by_frame.get(f1, []))
            f1 += 1
        A = [a for f in range(f0, f1) for a in by_frame.get(f, [])]

        def tick(f0=f0):
            if progress is not None:
                progress(f0, B)

        if A:
            mats = np.stack([estimate_norm(a.face.kps, S, "arcface") for a in A]).astype(np.float32)
            M = torch.from_numpy(mats)
            idx = torch.tensor([a.image_index - f0 for a in A], dtype=torch.long, device=dev)
            sub = frames[f0:f1]
            mod = swapper_handle.model()  # right before use (ComfyUI may have moved it)
            x = _kops.align_crops(sub, M, idx, S, mean=mod.spec.mean, std=mod.spec.std, layout="NCHW")
            if identity_strength < 1.0:
                mixed = mix_identity(
                    torch.stack([source_embeddings[a.source_set][a.source].float() for a in A]),
                    target_embeddings([a.face for a in A], recognizer_override),
                    identity_strength,
                )
                lat = source_latent(mod, mixed).to(dev)
            else:
                lat = torch.stack([latents[a.source_set][a.source] for a in A])
            faces01, mmask = run_swapper_boosted(mod, x, lat, pixel_boost)
            if mmask is not None and not use_model_mask:
                mmask = None
            if masker is not None:
                from ..face.masks import crop_masks

                with caller_torch_threads():  # a masker network (torch engine) gets the caller's threads
                    xm = crop_masks(masker, sub, M, idx, S, kps=[a.face.kps for a in A])
                if xm is not None:
                    mmask = xm if mmask is None else mmask.to(dev) * xm
            tick()  # cancel is honoured between the stages of a chunk, not only between chunks
            crops = faces01.to(dev).permute(0, 2, 3, 1).contiguous()
            originals = None
            if color_transfer:
                originals = _kops.align_crops(sub, M, idx, S, mean=0.0, std=255.0, layout="NHWC")
            lms = None
            if mask_type == "landmarks":
                lms = [_crop_points(a.face, m) for a, m in zip(A, mats)]
                if all(p is None for p in lms):
                    log.warning("Visage: mask_type 'landmarks' but the faces have no landmarks; using the box mask")
                    lms = None
            if restorer is None:
                res, fm = P.paste_faces(
                    sub,
                    crops,
                    M,
                    idx,
                    masks=mmask,
                    erode_frac=erode,
                    blur_frac=blur,
                    landmarks_crop=lms,
                    color_transfer=color_transfer,
                    original_crops=originals,
                    strength=blend,
                )
            else:
                tick()
                feather = P.feather_masks(
                    len(A),
                    S,
                    mmask,
                    erode_frac=erode,
                    blur_frac=blur,
                    landmarks_crop=lms,
                    strength=blend,
                    device=dev,
                )
                if color_transfer:  # the same transfer paste_faces applies, done in crop space before the warp
                    stats = P.color_stats(crops.float(), originals.float(), feather)
                    crops = lab_transfer(crops.float(), stats[:, None, None])
                # the restore (its network, and its few large 512 px tensor ops) keeps the caller's threads:
                # one thread cost 1.78x -> 1.44x on a quiet 4-face 720p frame (bench_swap, 2 cores)
                with caller_torch_threads():
                    res = restore_swapped(sub, crops, mats, feather, idx, [a.face for a in A], restorer, erode, blur)
                fm = P.paste_masks(sub.shape, M, feather, idx)
            if expression is not None and expression.factor > 0:
                from .expression_restore import restore_expression

                tick()
                # the re-render stays inside the swap paste's mask (box / landmarks x masker), at full
                # opacity: ``blend`` fades the swap, not where the expression may change
                if restorer is None and float(blend) == 1.0:
                    limit = fm
                else:
                    limit = P.paste_masks(
                        sub.shape,
                        M,
                        P.feather_masks(
                            len(A),
                            S,
                            mmask,
                            erode_frac=erode,
                            blur_frac=blur,
                            landmarks_crop=lms,
                            strength=1.0,
                            device=dev,
                        ),
                        idx,
                    )
                with caller_torch_threads():  # LivePortrait's networks get the caller's threads
                    res, _ = restore_expression(expression, res, sub, [a.face for a in A], idx.tolist(), limit=limit)
            outs.append(res)
            masks.append(fm)
            count += len(A)
        else:
            outs.append(frames[f0:f1])
            masks.append(torch.zeros((f1 - f0,) + tuple(frames.shape[1:3]), device=dev, dtype=torch.float32))
        if progress is not None:
            progress(f1, B)
        f0 = f1
    if len(outs) == 1:
        out = outs[0] if outs[0].data_ptr() != frames.data_ptr() else frames.clone()
        return out, masks[0], count
    return torch.cat(outs, 0), torch.cat(masks, 0), count


def _h(m: np.ndarray) -> np.ndarray:
    """[...,2,3] -> [...,3,3] homogeneous."""
    m = np.asarray(m, np.float64)
    last = np.broadcast_to(np.array([0.0, 0.0, 1.0]), m.shape[:-2] + (1, 3))
    return np.concatenate([m, last], -2)


def composed_matrices(ffhq_mats: np.ndarray, swap_mats: np.ndarray) -> np.ndarray:
    """[J,2,3] frame->FFHQ and [I,2,3] frame->swap crop -> [J,I,2,3] swap crop i -> FFHQ crop j
    (= ffhq_j o inverse(swap_i)): one affine, so the swapped face is resampled once."""
    return (_h(ffhq_mats)[:, None] @ np.linalg.inv(_h(swap_mats))[None])[..., :2, :]


@torch.no_grad()
def _warp01(images: torch.Tensor, mats, owners: Sequence[int], size: int) -> torch.Tensor:
    """Bilinear crops [n,size,size,C] of 0..1 images [B,H,W,C] (C <= 4) by frame -> crop matrices ``mats``
    [n,2,3]: what ``align_crops(..., mean=0, std=255, layout='NHWC')`` gives. On the host one
    cv2.warpAffine per crop (same convention, zero border; its bilinear weights step in 1/32 of a pixel):
    the torch twin gathers every tap and took ~70 % of a 4-face restore on 2 cores. Elsewhere the kernel."""
    if images.device.type != "cpu":
        m = torch.as_tensor(np.asarray(mats, np.float32))
        idx = torch.as_tensor(list(owners), dtype=torch.long, device=images.device)
        return _kops.align_crops(images, m, idx, size, mean=0.0, std=255.0, layout="NHWC")
    arr = images.detach().float().contiguous().numpy()
    out = np.empty((len(owners), size, size, arr.shape[-1]), np.float32)
    for k, (b, m) in enumerate(zip(owners, mats)):
        w = cv2.warpAffine(arr[b], np.asarray(m, np.float64), (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
        out[k] = w.reshape(size, size, -1)
    return torch.from_numpy(out)


def restore_swapped(
    frames: torch.Tensor,
    crops: torch.Tensor,
    swap_mats: np.ndarray,
    feather: torch.Tensor,
    frame_index: torch.Tensor,
    faces: Sequence[Face],
    restorer: Restorer,
    erode: float = 0.1,
    blur: float = 0.1,
) -> torch.Tensor:
    """Restore swapped faces BEFORE pasting them, then paste each restored crop once.

    frames [B,H,W,3] (the unswapped frames); crops [N,S,S,3] swapper output 0..1 (colour already
    transferred); swap_mats [N,2,3] frame -> swap crop; feather [N,S,S] the blend weights the plain
    swap would paste with (mask x blend). For face j the restorer's FFHQ crop is built as
        ffhq_j = align(frame, F_j), then for every swapped face i of the same frame that reaches it, in
        paste order: ffhq_j = ffhq_j * (1 - a_ij) + c_ij * a_ij,
    where (c_ij, a_ij) = swap crop i and its weight sampled ONCE with F_j o inverse(S_i). That is the
    crop the old path re-took from the pasted frame, without resampling the swapped face twice. The
    restored crop X_j (blended with ffhq_j by restorer.strength) is pasted once with F_j, with weights
    that give the blend the old two pastes gave (up to resampling): the swapped face where the FFHQ box mask fades out,
    X_j where it is 1 (see the formula in the code).
    """
    n = crops.shape[0]
    if n == 0:
        return frames.clone()
    dev = frames.device
    R = restorer.size
    ffhq = np.stack([estimate_norm(f.kps, R, restorer.template) for f in faces]).astype(np.float64)
    MF = torch.from_numpy(ffhq.astype(np.float32))
    idx = torch.as_tensor(frame_index, dtype=torch.long).to(dev)
    base = _warp01(frames, ffhq, idx.tolist(), R)  # [n,R,R,3] 0..1
    rgba = torch.cat([crops.to(dev).float(), feather.to(dev).float().unsqueeze(-1)], -1)  # [n,S,S,4]
    C = composed_matrices(ffhq, np.asarray(swap_mats, np.float64))
    swapped = base.clone()
    own = torch.zeros(base.shape[:3] + (4,), dtype=base.dtype, device=dev)
    # Only the part of each swap crop where its weight is > 0 is warped (its bounding rectangle, plus
    # one pixel for the bilinear taps): the rest would be composited with weight 0.
    support = []
    for i in range(n):
        rows = torch.nonzero(feather[i].amax(1) > 0).flatten()
        cols = torch.nonzero(feather[i].amax(0) > 0).flatten()
        support.append(
            None
            if rows.numel() == 0
            else (float(cols[0]) - 1, float(rows[0]) - 1, float(cols[-1]) + 1, float(rows[-1]) + 1)
        )
    fi = idx.tolist()
    for j in range(n):
        for i in range(n):
            if fi[i] != fi[j] or support[i] is None:
                continue
            u0, v0, u1, v1 = support[i]
            pts = np.array([[u0, v0, 1], [u1, v0, 1], [u0, v1, 1], [u1, v1, 1]], np.float64) @ C[j, i].T
            x0, y0 = max(int(np.floor(pts[:, 0].min())), 0), max(int(np.floor(pts[:, 1].min())), 0)
            x1, y1 = min(int(np.ceil(pts[:, 0].max())), R - 1), min(int(np.ceil(pts[:, 1].max())), R - 1)
            if x1 < x0 or y1 < y0:
                continue  # does not reach crop j
            side = max(x1 - x0, y1 - y0) + 1
            Ct = C[j, i].copy()
            Ct[:, 2] -= (x0, y0)  # the sub-rectangle's origin
            w = _warp01(rgba, Ct[None], [i], side)[0, : y1 - y0 + 1, : x1 - x0 + 1]  # sampled once
            a = w[..., 3:4]
            region = swapped[j, y0 : y1 + 1, x0 : x1 + 1]
            swapped[j, y0 : y1 + 1, x0 : x1 + 1] = region * (1.0 - a) + w[..., :3] * a
            if i == j:
                own[j, y0 : y1 + 1, x0 : x1 + 1] = w
    restored = restore_crops(restorer, swapped.clamp(0, 1))  # X (strength-blended with the input)
    # One paste per face that equals "paste swap j, then paste X_j with the FFHQ box mask m over it":
    #   out = prev*(1-m)*(1-a) + c*a*(1-m) + X*m = prev*(1-W) + Y*W,
    #   W = 1 - (1-m)*(1-a), Y = (X*m + c*a*(1-m)) / W   (a convex mix of X and the swapped face),
    # (c, a) = face j's own swap and weight in its FFHQ crop. Where m is 1 this is simply X. Only the own
    # swap enters W: it lies inside the FFHQ crop (a = 0 on that crop's border, so W is 0 there: no
    # seam); a neighbour's swap is in X where m is 1 and is pasted by the neighbour's own paste.
    m = P.box_masks(n, R, erode, blur, dev).unsqueeze(-1)
    a, c = own[..., 3:4], own[..., :3]
    W = 1.0 - (1.0 - m) * (1.0 - a)
    Y = (restored * m + c * a * (1.0 - m)) / W.clamp_min(1e-6)
    Y = torch.where(W > 1e-6, Y, restored).clamp(0, 1)
    if P.host_float(frames):  # host frames: one cv2 warp per face (see paste.host_paste)
        return P.host_paste(frames.contiguous(), Y.float(), MF, W[..., 0], idx)
    return P.paste_weighted(frames, Y, MF, W[..., 0], idx)


@torch.no_grad()
def restore_pass(
    frames: torch.Tensor,
    faces: Sequence[Face],
    frame_index: torch.Tensor,
    restorer: Restorer,
    erode: float = 0.1,
    blur: float = 0.1,
) -> torch.Tensor:
    """Restore every face on its FFHQ-aligned crop and paste it back (inside the face's box).

    For arbitrary images (the Restore Faces node). The swap path does not call this on its pasted
    result any more: :func:`restore_swapped` restores before the (single) paste."""
    if not faces:
        return frames
    S = restorer.size
    mats = np.stack([estimate_norm(f.kps, S, restorer.template) for f in faces]).astype(np.float32)
    M = torch.from_numpy(mats)
    crops = _kops.align_crops(frames, M, frame_index, S, mean=0.0, std=255.0, layout="NHWC")
    restored = restore_crops(restorer, crops)
    res, _ = P.paste_faces(frames, restored, M, frame_index, erode_frac=erode, blur_frac=blur, want_mask=False)
    return res


def swap_batch(
    analyzer,
    image: torch.Tensor,
    swapper_handle,
    *,
    source_embeddings=None,
    source_image=None,
    mapping: str = "by_order",
    order: str = "left_to_right",
    source_indexes: str = "0",
    target_indexes: str = "",
    references: Optional[FaceEmbeds] = None,
    min_similarity: float = 0.3,
    blend: float = 1.0,
    mask_type: str = "box",
    erode: float = 0.1,
    blur: float = 0.1,
    color_transfer: bool = False,
    temporal_smoothing: float = 0.0,
    on_no_face: str = "passthrough",
    restorer: Optional[Restorer] = None,
    progress: Progress = None,
    frames_per_chunk: int = 16,
    out_device=None,
    targets: Optional[FaceSet] = None,
    source_faces: Optional[FaceSet] = None,
    recognizer_override: str = "",
    masker=None,
    pixel_boost: int = 1,
    identity_strength: float = 1.0,
    expression=None,
):
    """The Swap Faces node without ComfyUI: image [B,H,W,3] (any device) -> (image, mask, count).

    ``targets`` / ``source_faces``: faces already analysed (Analyze Faces, with its selection and
    on_no_face) instead of analysing here; ``analyzer`` may then be None.

    Frames move to the swapper's device one chunk at a time (analysis pass, then swap pass), so a long
    video never has to fit on the GPU at once; within a chunk every stage stays on the device.
    progress(done, 2*B): B steps of analysis, then B of swapping.
    """
    from dataclasses import replace

    from .tracking import smooth_faceset, track_faces

    n_sources = sum(x is not None for x in (source_image, source_embeddings, source_faces))
    if n_sources != 1:
        raise VisageError(
            "Swap Faces needs exactly one source",
            expected="source_image, source_faces OR source_embeds connected",
            got="several connected" if n_sources else "none connected",
            fix="connect a photo of the new face to source_image (or its analysed faces to source_faces), "
            "or a face model to source_embeds",
        )
    if analyzer is None and (targets is None or source_image is not None):
        raise VisageError(
            "Swap Faces has nothing to find faces with",
            expected="'faces' (and source_faces / source_embeds) from Analyze Faces, or an 'analyzer'",
            got="no analyzer" + (" and no target faces" if targets is None else " for source_image"),
            fix="connect Analyze Faces' faces to 'faces' (and the source's to 'source_faces'), or connect Load "
            "Face Analyzer to 'analyzer'",
        )
    if on_no_face not in ("passthrough", "error"):
        raise VisageError(f"Unknown on_no_face '{on_no_face}'", expected="passthrough / error", got=on_no_face)
    B = image.shape[0]
    dev = swapper_handle.device
    out_device = torch.device(out_device) if out_device is not None else image.device
    total = 2 * B
    tasks = ["recognition"] if (mapping == "by_identity" or identity_strength < 1.0) else []
    if mask_type == "landmarks":
        tasks.append("landmark_2d_106")
    if targets is None:
        # the analysis chunks frames itself (one detector forward per chunk, frames to the device per chunk)
        step = (lambda d, t: progress(d, total)) if progress is not None else None
        targets = analyzer.analyze(image, tasks=tasks, progress=step, chunk=frames_per_chunk)
    else:
        targets = expand_to(targets, B, "image")
        if progress is not None:
            progress(B, total)
    targets, _ = apply_on_no_face(targets, on_no_face, "target image batch")  # passthrough keeps every frame
    if source_embeddings is not None:
        embs = [e.float() for e in source_embeddings]
    else:
        if source_faces is None:
            source_faces = analyzer.analyze(source_image, tasks=["recognition"], chunk=frames_per_chunk)
        embs = embeddings_of(source_sets_from_faces(source_faces, order), recognizer_override)
    ids = None
    if B > 1 and (temporal_smoothing > 0 or mapping == "by_identity"):
        ids = track_faces(targets)
        targets = smooth_faceset(targets, temporal_smoothing, ids)
    assignments = plan(
        targets,
        [e.shape[0] for e in embs],
        mapping,
        order,
        source_indexes,
        target_indexes,
        references,
        min_similarity,
        ids,
    )
    out = torch.empty(image.shape, dtype=torch.float32, device=out_device)
    mask = torch.zeros(image.shape[:3], dtype=torch.float32, device=out_device)
    count = 0
    for s in range(0, B, frames_per_chunk):
        e = min(s + frames_per_chunk, B)
        A = [replace(a, image_index=a.image_index - s) for a in assignments if s <= a.image_index < e]
        sub = image[s:e].to(dev).float()
        step = (lambda d, t, s=s: progress(B + s + d, total)) if progress is not None else None
        o, m, n = swap_frames(
            sub,
            A,
            swapper_handle,
            embs,
            blend=blend,
            mask_type=mask_type,
            erode=erode,
            blur=blur,
            color_transfer=color_transfer,
            restorer=restorer,
            progress=step,
            masker=masker,
            pixel_boost=pixel_boost,
            identity_strength=identity_strength,
            recognizer_override=recognizer_override,
            expression=expression,
        )
        out[s:e] = o.to(out_device)
        mask[s:e] = m.to(out_device)
        count += n
    return out, mask, count

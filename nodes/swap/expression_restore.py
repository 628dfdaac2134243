"""Expression restore after a swap: the target's own expression put back onto the swapped face with
Visage's LivePortrait networks (nodes/expression), like facefusion's ``expression_restorer``.

Per swapped face, on LivePortrait's 512 crop of the face (the same crop in the swapped and the original
frame): the swapped crop gives the appearance features and its keypoint motion (canonical keypoints,
head rotation, scale, translation, expression e_swap); the original crop gives the target's expression
e_orig. The face is rendered with the swapped crop's motion and the expression
``e_swap + factor * (e_orig - e_swap)``, stitched, and pasted back with the expression family's soft
face mask times ``limit``: the swap paste's own frame-space mask (box or landmarks, times the masker's
occlusion / region weights), so what the swap left alone (a hand over the face, hair outside the chosen
regions, the frame outside the box) is not re-rendered either. ``factor`` 0 leaves the swap untouched
(nothing runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ...core.errors import VisageError
from ...core.types import Face


@dataclass(frozen=True)
class ExpressionRestore:
    models: object  # LivePortraitModels (VISAGE_LIVEPORTRAIT)
    factor: float = 1.0
    feather: float = 0.1


def expression_option(liveportrait, factor: float):
    """The node's inputs -> an ExpressionRestore or None; a factor without LivePortrait is a clear error."""
    factor = float(factor)
    if factor <= 0.0:
        return None
    if liveportrait is None:
        raise VisageError(
            "Expression restore needs the LivePortrait networks",
            expected="Load LivePortrait connected to Swap Faces' 'liveportrait' (its five files in models/liveportrait/)",
            got=f"expression_restore {factor:g} without LivePortrait",
            fix="add Load LivePortrait (appearance_feature_extractor, motion_extractor, warping_module, spade_generator, "
            "stitching_retargeting_module .safetensors in models/liveportrait) and connect it, or set "
            "expression_restore to 0",
        )
    return ExpressionRestore(models=liveportrait, factor=min(factor, 1.0))


@torch.no_grad()
def restore_expression(
    option: ExpressionRestore,
    swapped: torch.Tensor,
    original: torch.Tensor,
    faces: Sequence[Face],
    frame_index: Sequence[int],
    limit: Optional[torch.Tensor] = None,
):
    """swapped / original [B,H,W,3] 0..1 (same frames before and after the swap), one face per entry of
    ``faces`` in frame ``frame_index[k]`` -> (frames [B,H,W,3], mask [B,H,W]).

    ``limit`` [B,H,W] 0..1: frame-space weights the re-rendered face is pasted within (multiplied into
    LivePortrait's own paste mask): out = swapped + limit * (re-rendered paste - swapped)."""
    import numpy as np

    from ..expression import crop as C
    from ..expression import motion as M
    from ..expression.pipeline import Engine, FaceJob

    if not faces or option is None or option.factor <= 0:
        return swapped, torch.zeros(swapped.shape[:3], device=swapped.device)
    eng = Engine(option.models)
    jobs = [FaceJob(int(i), f, C.crop_matrix(f, C.CROP_SIZE)) for f, i in zip(faces, frame_index)]
    s_crops = eng.crops(swapped, jobs)
    o_crops = eng.crops(original, jobs)
    s256, o256 = Engine.net_input(s_crops), Engine.net_input(o_crops)
    s_info, o_info = eng.motion(s256), eng.motion(o256)
    f_s = eng.appearance(s256)
    x_s = M.transform_keypoints(s_info)
    exp = s_info.exp + float(option.factor) * (o_info.exp.to(s_info.exp.device) - s_info.exp)
    x_d = M.compose(s_info.kp, s_info.rotation(), exp, s_info.scale, s_info.t)
    x_d = eng.stitch(x_s, x_d)
    new = torch.cat([eng.decode(f_s[i : i + 1], x_s[i : i + 1], x_d[i : i + 1]) for i in range(len(jobs))])
    new = new.permute(0, 2, 3, 1).to(swapped.device)
    out_index = list(np.asarray(frame_index, dtype=np.int64).tolist())
    out, mask = eng.paste(swapped, new, s_crops, jobs, out_index, option.feather, False)
    if limit is None:
        return out, mask
    w = limit.to(device=out.device, dtype=torch.float32).clamp(0, 1)
    out = swapped + (out - swapped) * w.unsqueeze(-1).to(out.dtype)
    return out, (mask * w if mask is not None else w)

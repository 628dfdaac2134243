"""From faces / embeddings to identity tokens, keypoint hints and Arc2Face prompts. Pure torch/numpy.

* :func:`identity_embeddings` -- one embedding per identity from a ``FaceSet`` (each face, in
  selection order, is one identity) or from ``FaceEmbeds`` (each row is one identity), of the
  method's recognizer.
* :func:`instantid_tokens` -- resampler tokens for the identities and the negative's tokens:
  zeros through the resampler as the InstantID pipeline does, or (``noise`` > 0) uniform noise of
  that amplitude, seeded from the embedding, as ComfyUI_InstantID does for its negative.
* :func:`faceid_tokens` -- FaceID / Portrait / Plus(V2) tokens and their zero-input negatives.
* :func:`keypoint_hints` -- InstantID keypoint images (all identities, or one per identity).
* :func:`arc2face_tokens` -- Arc2Face: the ArcFace embedding, zero-padded to the text encoder's
  width, replaces the placeholder token of "photo of a id person".
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ...core.errors import VisageError
from ...core.images import from_uint8_np
from ...core.recognizers import method_embeddings
from ...core.types import FaceEmbeds, FaceSet
from .registry import METHODS

ARC2FACE_PROMPT = "photo of a id person"
ARC2FACE_PLACEHOLDER = "id"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


def identity_embeddings(
    method: str,
    faces: Optional[FaceSet],
    embeds: Optional[FaceEmbeds],
    dim: int = 512,
    override: str = "",
    normed: Optional[bool] = None,
) -> torch.Tensor:
    """[I, D] embeddings for ``method`` (a key of registry.METHODS), one per identity: each face of
    ``faces`` in selection order, or each row of ``embeds`` (which wins), from the recognizer the method
    was trained on (see core.recognizers.method_embeddings). ``normed`` overrides the method's own flag
    for one file variant (FaceID Portrait unnorm: the raw rows)."""
    from . import methods  # noqa: F401 - registers every method

    spec = METHODS[method]
    normed = spec.normed if normed is None else normed
    return method_embeddings(spec.name, spec.trained_on, faces, embeds, normed=normed, dim=dim, override=override)


def negative_noise(emb: torch.Tensor, noise: float) -> torch.Tensor:
    """Uniform noise * amplitude, seeded from the embedding as ComfyUI_InstantID seeds it
    (``int(sum(embedding)) % 1000000007``), per identity, with a private generator (no global RNG)."""
    out = []
    for row in emb:
        seed = int(torch.sum(row.float()).item()) % 1000000007
        g = torch.Generator().manual_seed(seed)
        out.append(noise * torch.rand(row.shape, generator=g))
    return torch.stack(out).to(emb.dtype)


@torch.no_grad()
def instantid_tokens(image_proj, emb: torch.Tensor, noise: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """[I, 16, C] cond tokens and [I, 16, C] negative tokens."""
    p = next(image_proj.parameters())
    cond = image_proj(emb.to(p.device, p.dtype).unsqueeze(1)).float().cpu()
    neg_in = negative_noise(emb, noise) if noise > 0 else torch.zeros_like(emb)
    uncond = image_proj(neg_in.to(p.device, p.dtype).unsqueeze(1)).float().cpu()
    return cond, uncond


@torch.no_grad()
def faceid_tokens(
    image_proj,
    kind: str,
    emb: torch.Tensor,
    clip_cond: Optional[torch.Tensor] = None,
    clip_uncond: Optional[torch.Tensor] = None,
    shortcut: bool = False,
    scale: float = 1.0,
    portrait_groups: Optional[Sequence[int]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """FaceID tokens [I, T, C] (Portrait: faces of one identity concatenated, T = 16 * faces)."""
    p = next(image_proj.parameters())
    e = emb.to(p.device, p.dtype)
    if kind == "faceid_plus":
        if clip_cond is None:
            raise VisageError(
                "FaceID Plus needs CLIP-vision features of the face",
                expected="a CLIP_VISION model (ViT-H) connected to 'clip_vision' and the face image",
                got="no clip_vision / image",
                fix="connect 'Load CLIP Vision' (CLIP-ViT-H-14) and the image",
            )
        cc = clip_cond.to(p.device, p.dtype)
        cu = clip_uncond.to(p.device, p.dtype)
        cond = image_proj(e, cc, shortcut=shortcut, scale=scale)
        uncond = image_proj(torch.zeros_like(e), cu, shortcut=shortcut, scale=scale)
        return cond.float().cpu(), uncond.float().cpu()
    if kind == "faceid_portrait_unnorm":
        # the resampler on each face's embedding alone ([1, 1, 512] -> 16 tokens), as Portrait's MLP does per
        # face; the faces of one identity concatenated (16 per face); negative: zeros through the resampler
        groups = list(portrait_groups) if portrait_groups else [1] * e.shape[0]
        c = image_proj(e.unsqueeze(1))
        u = image_proj(torch.zeros_like(e).unsqueeze(1))
        cond, uncond, i = [], [], 0
        for n in groups:
            cond.append(c[i : i + n].reshape(1, -1, c.shape[-1]))
            uncond.append(u[i : i + n].reshape(1, -1, u.shape[-1]))
            i += n
        return torch.cat(cond).float().cpu(), torch.cat(uncond).float().cpu()
    if kind == "faceid_portrait" and portrait_groups:
        cond, uncond, i = [], [], 0
        for n in portrait_groups:
            grp = e[i : i + n].unsqueeze(0)
            cond.append(image_proj(grp))
            uncond.append(image_proj(torch.zeros_like(grp)))
            i += n
        t = {c.shape[1] for c in cond}
        if len(t) != 1:
            raise VisageError(
                "Portrait identities must have the same number of reference faces",
                expected="equal face counts per identity",
                got=str(list(portrait_groups)),
                fix="give each identity the same number of reference images",
            )
        return torch.cat(cond).float().cpu(), torch.cat(uncond).float().cpu()
    return image_proj(e).float().cpu(), image_proj(torch.zeros_like(e)).float().cpu()


def _draw_kps(canvas: np.ndarray, kps: np.ndarray) -> np.ndarray:
    from ..face.draw import draw_kps

    return draw_kps(canvas, kps)


def keypoint_hints(kps_list: Sequence[np.ndarray], size: Tuple[int, int], per_identity: bool) -> torch.Tensor:
    """InstantID keypoint image(s) [N, H, W, 3] 0..1: one with every face, or one per identity."""
    h, w = int(size[0]), int(size[1])
    if per_identity:
        out = [from_uint8_np(_draw_kps(np.zeros((h, w, 3), np.uint8), np.asarray(k, np.float32))) for k in kps_list]
        return torch.stack(out)
    canvas = np.zeros((h, w, 3), np.uint8)
    for k in kps_list:
        canvas = _draw_kps(canvas, np.asarray(k, np.float32))
    return from_uint8_np(canvas).unsqueeze(0)


def arc2face_tokens(
    token_rows: List[List[tuple]], placeholder_id: int, embedding: torch.Tensor, width: int
) -> List[List[tuple]]:
    """Replace the placeholder token with the zero-padded, L2-normalised ArcFace embedding.

    ``token_rows`` is a ComfyUI token list ([[(token, weight), ...], ...]); the embedding becomes a
    tensor "token" the text encoder inserts at that position (as textual-inversion embeddings).
    """
    e = embedding.float().reshape(-1)
    e = e / e.norm().clamp_min(1e-12)
    if e.shape[0] > width:
        raise VisageError(
            "The identity embedding is wider than the text encoder",
            expected=f"<= {width}",
            got=str(e.shape[0]),
            fix="use Arc2Face's CLIP text encoder with ArcFace embeddings",
        )
    padded = F.pad(e, (0, width - e.shape[0]))
    found = 0
    out = []
    for row in token_rows:
        new = []
        for t in row:
            tok, weight = t[0], t[1]
            if isinstance(tok, int) and tok == placeholder_id and found == 0:
                new.append((padded, weight) + tuple(t[2:]))
                found += 1
            else:
                new.append(t)
        out.append(new)
    if not found:
        raise VisageError(
            "The Arc2Face prompt has no placeholder token",
            expected=f"the word '{ARC2FACE_PLACEHOLDER}'",
            got="no placeholder",
            fix=f"keep the prompt '{ARC2FACE_PROMPT}'",
        )
    return out


def faceid_plus_crops(images: torch.Tensor, faces: FaceSet) -> torch.Tensor:
    """The face crops IP-Adapter FaceID Plus feeds to CLIP vision: insightface ``norm_crop(image,
    kps, image_size=224)`` (ArcFace template scaled to 224), [N, 224, 224, 3] float 0..1, one per face."""
    from ...kernels import ops as kops
    from ..face.align import estimate_norm

    flat = faces.flat()
    if not flat:
        raise VisageError(
            "FaceID Plus has no face to crop",
            expected="at least one analysed face",
            got="no face",
            fix="use a reference image with a visible face",
        )
    for f in flat:
        if f.image_index >= images.shape[0]:
            raise VisageError(
                "The faces do not belong to this image batch",
                expected=f"faces of a batch of {images.shape[0]} image(s)",
                got=f"a face of image {f.image_index}",
                fix="connect the image the faces were analysed in",
            )
    mats = torch.from_numpy(np.stack([estimate_norm(f.kps, 224) for f in flat])).float()
    idx = torch.tensor([f.image_index for f in flat], dtype=torch.long)
    return kops.align_crops(images, mats, idx, 224, mean=0.0, std=255.0, layout="NHWC", out_dtype=torch.float32)


def clip_crops_uncond(n: int, size: int = 224) -> torch.Tensor:
    """The IP-Adapter reference's negative CLIP input is a zero *normalised* image = the CLIP mean colour."""
    return torch.tensor(CLIP_MEAN).view(1, 1, 1, 3).expand(n, size, size, 3).contiguous()

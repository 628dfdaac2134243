"""From analysed faces to PuLID's identity tokens. Pure torch (no ComfyUI).

What every official PuLID pipeline does in ``get_id_embedding`` (ToTheBeginning/PuLID
``pulid/pipeline_flux.py``), and what we do with Visage's analysed faces:

1. **Embedding**: the raw (not normalised) antelopev2 ``glintr100`` embedding of the face. Ours comes
   from the analysis (``core.recognizers.method_embeddings``, trained_on ``glintr100``, raw), computed on
   the same insightface 112 crop of the same SCRFD keypoints.
2. **Aligned face**: facexlib's ``FaceRestoreHelper`` (512, FFHQ 5-point template, similarity fitted
   to the keypoints, constant border (135, 133, 132)). Ours: the FFHQ-512 template aligned from the
   analysis keypoints (least-squares similarity, :func:`nodes.face.align.align_faces`), the same border
   colour outside the image. (facexlib detects the face again with RetinaFace; the keypoints of our
   detector stand in for its own: a small geometric difference, no other.)
3. **Background to white**: BiSeNet parsing (facexlib's ``parsing_bisenet.pth``) of the 512 crop,
   ImageNet-normalised; the labels ``BG_LABELS`` = background, neck, cloth, hat, ear rings, both ears,
   necklace (0, 16, 18, 7, 8, 9, 14, 15) become white, every other pixel becomes grey
   (``0.299 R + 0.587 G + 0.114 B`` on all three channels).
4. **EVA-CLIP input**: that image resized to the tower's size (336) with antialiased bicubic
   (torchvision's tensor ``resize``), normalised with OpenAI CLIP's mean / std.
5. ``id_cond = cat(embedding, L2-normalised EVA pooled)`` and the five hidden states go to the encoder.

Each face is one identity (Visage's rule for every adapter: faces in selection order).
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from ...core.errors import VisageError
from ...core.types import FaceSet
from ..face.align import align_faces, warp_crops
from .eva_clip import EVA_MEAN, EVA_STD, pulid_vit_features

FACE_SIZE = 512
# facexlib's align_warp_face: cv2 borderValue (135, 133, 132) on a BGR image, i.e. RGB (132, 133, 135)
BORDER_RGB = (132.0 / 255.0, 133.0 / 255.0, 135.0 / 255.0)
BG_LABELS = (0, 16, 18, 7, 8, 9, 14, 15)  # the official bg_label list (CelebAMask-HQ class indices)


def aligned_faces(images: torch.Tensor, faces: FaceSet, size: int = FACE_SIZE) -> torch.Tensor:
    """[N, size, size, 3] RGB 0..1 crops (FFHQ template), facexlib's border colour outside the image."""
    al = align_faces(images, faces, template="ffhq_512", size=size)
    ones = torch.ones(
        (images.shape[0], images.shape[1], images.shape[2], 1), dtype=al.crops.dtype, device=images.device
    )
    cover = warp_crops(ones, al.matrix, al.image_index, size).clamp_(0, 1)  # 1 inside the image, 0 outside
    border = torch.tensor(BORDER_RGB, dtype=al.crops.dtype, device=al.crops.device)
    return al.crops * cover + border * (1.0 - cover)


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """[N,3,H,W] RGB -> the same luma (0.299, 0.587, 0.114) on three channels."""
    g = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return g.repeat(1, 3, 1, 1)


def face_features_image(crops: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N,3,S,S]: white where the parsing says background (BG_LABELS), the grey face elsewhere.

    ``crops`` [N,S,S,3] RGB 0..1, ``labels`` [N,S,S] class indices."""
    x = crops.permute(0, 3, 1, 2).float()
    lab = labels.to(x.device).long()
    bg = torch.zeros_like(lab, dtype=torch.bool)
    for c in BG_LABELS:
        bg |= lab == c
    return torch.where(bg[:, None], torch.ones_like(x), to_grey(x))


def eva_input(face_image: torch.Tensor, size: int) -> torch.Tensor:
    """[N,3,S,S] 0..1 -> the EVA-CLIP input: antialiased bicubic to ``size``, OpenAI-CLIP normalised."""
    x = face_image
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(EVA_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(EVA_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def identity_tokens(
    encoder: torch.nn.Module,
    eva: torch.nn.Module,
    embeddings: torch.Tensor,
    face_images: torch.Tensor,
    progress: Optional[Callable[[int, int], None]] = None,
) -> List[torch.Tensor]:
    """One ``[1, tokens, width]`` identity per face.

    ``embeddings`` [N, 512] raw glintr100; ``face_images`` [N,3,S,S] from :func:`face_features_image`;
    ``encoder`` the PuLID IDFormer, ``eva`` the EVA-CLIP tower (:class:`EvaClipVision`), each on its
    device and dtype."""
    n = embeddings.shape[0]
    if face_images.shape[0] != n:
        raise VisageError(
            "PuLID: faces and embeddings do not match",
            expected=f"{n} face images",
            got=f"{face_images.shape[0]}",
            fix="analyse the reference image again",
        )
    ep = next(eva.parameters())
    cp = next(encoder.parameters())
    out = []
    for i in range(n):
        x = eva_input(face_images[i : i + 1].to(ep.device, torch.float32), eva.image_size).to(ep.dtype)
        vit, hidden = pulid_vit_features(eva, x)
        id_cond = torch.cat((embeddings[i : i + 1].to(vit.device, vit.dtype), vit), dim=-1)
        tokens = encoder(id_cond.to(cp.device, cp.dtype), [h.to(cp.device, cp.dtype) for h in hidden])
        out.append(tokens.float())
        if progress is not None:
            progress(i + 1, n)
    return out

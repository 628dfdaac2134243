"""Apply InfiniteYou: identity tokens as InfuseNet's context, keypoint hints, regional identities.
No ComfyUI import: ``control_net`` is ComfyUI's ControlNet object (from its own 'Load ControlNet Model'),
used through the conditioning helpers of :mod:`nodes.adapters.patching` (``cross_attn_controlnet``).

* One identity per face of ``faces`` (in order) or per row of ``embeds``; the embedding is the
  L2-normalised IR-SE50 (``recognition_arcface_ir_se50``) one, as the official pipeline.
* The hint: the keypoints of ``pose_faces`` (one per identity) drawn as InstantID draws them on a black
  image of the pose image's size, or a ready ``keypoints_image``; without either, an all-black image
  (the official pipeline's no-control-image case). ComfyUI resizes the hint to the latent.
* Positive and negative both get InfuseNet with the identity tokens (ComfyUI's ControlNet apply attaches
  to both; FLUX.1-dev's official pipeline runs without CFG, so only the positive matters there).
* Several identities: one mask each; identity i's InfuseNet (its tokens and its keypoints) acts in its
  mask only (the rest of the image keeps the plain conditioning).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from ...core.errors import VisageError
from ...core.images import check_image
from ...core.recognizers import method_embeddings
from ..adapters.attention import check_masks
from ..adapters.identity import keypoint_hints
from ..adapters.patching import cond_with, regional
from .model import identity_tokens

log = logging.getLogger("visage")

METHOD = "InfiniteYou"
TRAINED_ON = "recognition_arcface_ir_se50"
EMPTY_HINT_SIZE = 64  # the all-black hint: any size (ComfyUI resizes hints to the latent)


class InfiniteYouRef:
    """The VISAGE_INFINITEYOU payload: a model-manager handle and what the file is."""

    def __init__(self, handle, info, name: str):
        self.handle = handle
        self.info = info
        self.name = name

    def module(self):
        return self.handle.model()


def hints_for(n: int, pose_faces=None, keypoints_image=None, per_identity: bool = False) -> torch.Tensor:
    """[1 or n, H, W, 3] keypoint hint(s)."""
    if keypoints_image is not None:
        k = check_image(keypoints_image, "keypoints_image")[:1]
        return k.expand(n, -1, -1, -1) if per_identity else k
    flat = pose_faces.flat() if pose_faces is not None else ()
    if not flat:
        return torch.zeros(n if per_identity else 1, EMPTY_HINT_SIZE, EMPTY_HINT_SIZE, 3)
    if len(flat) < n:
        raise VisageError(
            f"{n} identities but only {len(flat)} pose face(s)",
            expected="one pose face per identity",
            got=f"{len(flat)} face(s)",
            fix="analyse a pose image with as many faces as identities, or leave pose_faces empty",
        )
    flat = flat[:n]
    size = pose_faces.image_sizes[flat[0].image_index]
    return keypoint_hints([f.kps.numpy() for f in flat], size, per_identity=per_identity)


def apply_infiniteyou(
    positive,
    negative,
    control_net,
    infiniteyou: InfiniteYouRef,
    weight: float,
    start_at: float,
    end_at: float,
    faces=None,
    embeds=None,
    pose_faces=None,
    keypoints_image=None,
    masks: Optional[torch.Tensor] = None,
    recognizer_override: str = "",
    device="cpu",
    vae=None,
):
    """(positive, negative, hints) with InfuseNet attached."""
    if not isinstance(infiniteyou, InfiniteYouRef):
        raise VisageError(
            "The infiniteyou input is not an InfiniteYou model",
            expected="the output of 'Load InfiniteYou'",
            got=type(infiniteyou).__name__,
            fix="connect 'Load InfiniteYou'",
        )
    if end_at < start_at:
        raise VisageError(
            "end_at is before start_at",
            expected="start_at <= end_at",
            got=f"start_at={start_at}, end_at={end_at}",
            fix="swap the two values",
        )
    emb = method_embeddings(METHOD, TRAINED_ON, faces, embeds, normed=True, dim=512, override=recognizer_override)
    n = emb.shape[0]
    masks = check_masks(masks, n)
    tokens = identity_tokens(infiniteyou.module(), emb)  # [I, Q, 4096]
    is_regional = masks is not None  # check_masks: several identities always come with masks
    hints = hints_for(n, pose_faces, keypoints_image, per_identity=is_regional)
    window = (float(start_at), float(end_at))

    def with_net(conditioning, i=0, mask=None):
        return cond_with(
            conditioning, control_net, hints[i : i + 1], weight, window, tokens[i : i + 1], mask, device=device, vae=vae
        )

    if not is_regional:
        pos, neg = with_net(positive), with_net(negative)
    else:
        pos = regional(positive, masks, lambda i, mk: with_net(positive, i, mk), device=device)
        neg = regional(negative, masks, lambda i, mk: with_net(negative, i, mk), device=device)
    log.info("Visage: %s: %d identit%s, strength %.2f", METHOD, n, "y" if n == 1 else "ies", weight)
    return pos, neg, hints

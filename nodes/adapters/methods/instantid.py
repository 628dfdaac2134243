"""InstantID (SDXL): identity tokens from the raw glintr100 embedding through the resampler into every
cross-attention (decoupled attention), and IdentityNet driven by the face keypoints with the identity
tokens as its context. Facts from InstantX/InstantID's pipeline: antelopev2, face_info['embedding']."""

from __future__ import annotations

import torch

from ....core.errors import VisageError
from ....core.images import check_image
from ..attention import check_masks
from ..identity import identity_embeddings, instantid_tokens, keypoint_hints
from ..loaders import INSTANTID
from ..patching import apply_identity_patch, cond_with, expect_kind, regional
from ..registry import MethodSpec, register


def apply(
    glue,
    model,
    positive,
    negative,
    instantid,
    ip_weight,
    cn_strength,
    start_at,
    end_at,
    noise,
    faces=None,
    control_net=None,
    pose_faces=None,
    keypoints_image=None,
    masks=None,
    embeds=None,
    recognizer_override="",
):
    expect_kind(instantid, (INSTANTID,), "an InstantID adapter from 'Load InstantID'")
    emb = identity_embeddings("instantid", faces, embeds, instantid.info.embedding_dim, recognizer_override)
    n = emb.shape[0]
    masks = check_masks(masks, n)
    ad = instantid.module()
    cond, uncond = instantid_tokens(ad.image_proj, emb, noise)
    m = apply_identity_patch(
        model, instantid, cond, uncond, ip_weight, start_at, end_at, masks, "instantid", glue.text_attention
    )

    # keypoints for IdentityNet
    is_regional = masks is not None and n > 1
    hints = None
    src = pose_faces if pose_faces is not None else faces
    flat = src.flat() if src is not None else ()
    if keypoints_image is not None:
        kimg = check_image(keypoints_image, "keypoints_image")[:1]
        hints = kimg.expand(n, -1, -1, -1) if is_regional else kimg
    elif flat:
        if len(flat) < n:
            raise VisageError(
                f"{n} identities but only {len(flat)} pose face(s)",
                expected="one pose face per identity",
                got=f"{len(flat)} face(s)",
                fix="analyse a pose image with as many faces as identities",
            )
        flat = flat[:n]
        size = src.image_sizes[flat[0].image_index]
        hints = keypoint_hints([f.kps.numpy() for f in flat], size, per_identity=is_regional)
    if control_net is None:
        return (m, positive, negative, hints if hints is not None else torch.zeros(1, 64, 64, 3))
    if hints is None:
        raise VisageError(
            "InstantID has no keypoints for IdentityNet",
            expected="faces (or pose_faces) with keypoints, or a keypoints_image",
            got="only embeddings",
            fix="connect the analysed faces, pose faces or a keypoints image",
        )
    window = (float(start_at), float(end_at))
    dev = glue.intermediate_device()

    def with_net(conditioning, tokens, i=0, mask=None):
        return cond_with(
            conditioning, control_net, hints[i : i + 1], cn_strength, window, tokens[i : i + 1], mask, device=dev
        )

    if not is_regional:
        return (m, with_net(positive, cond), with_net(negative, uncond), hints)
    pos = regional(positive, masks, lambda i, mk: with_net(positive, cond, i, mk), device=dev)
    neg = regional(negative, masks, lambda i, mk: with_net(negative, uncond, i, mk), device=dev)
    return (m, pos, neg, hints)


def passthrough(glue, model, positive, negative, **_):
    return (model, positive, negative, torch.zeros(1, 64, 64, 3))


SPEC = register(MethodSpec("instantid", "InstantID", trained_on="glintr100", normed=False), apply, passthrough)

"""Apply PuLID-FLUX: faces -> identity tokens -> patches on a ModelPatcher clone. No ComfyUI import.

``model`` is a ComfyUI ModelPatcher used through its public methods only (``clone``,
``get_model_object``, ``model_options``, ``add_wrapper_with_key``); the node layer passes it in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ...core.errors import VisageError
from ...core.recognizers import method_embeddings
from ...core.select import apply_on_no_face, frames_for
from ..face.parsing import parse_faces
from .flux_patch import ca_index
from .loaders import FLUX, KIND_NAMES, PulidInfo
from .patching import Identity, PulidRun, install, patch_keys
from .preprocess import aligned_faces, face_features_image, identity_tokens

log = logging.getLogger("visage")

METHOD = "PuLID-FLUX"
TRAINED_ON = "glintr100"


@dataclass
class PulidRef:
    """The VISAGE_PULID payload: a model-manager handle (never the module) and what the file is."""

    handle: object
    info: PulidInfo
    name: str

    def module(self):
        """The module where ComfyUI placed it (loaded again if it was unloaded)."""
        return self.handle.module

    def ready(self):
        """The module on its device (``load_models_gpu`` under ComfyUI)."""
        return self.handle.model()

    def patchers(self) -> list:
        """The ModelPatcher ComfyUI must load with the diffusion model ([] outside ComfyUI)."""
        _ = self.handle.module  # reload after an unload, so the backend has a patcher again
        p = self.handle.backend_state
        return [p] if p is not None else []


@dataclass
class EvaRef:
    """The VISAGE_EVA_CLIP payload."""

    handle: object
    name: str


def check_masks(masks: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    if masks is None:
        return None
    m = masks.unsqueeze(0) if masks.ndim == 2 else masks
    if m.ndim != 3 or m.shape[0] != n:
        raise VisageError(
            f"PuLID: {n} identities but the masks do not say one region each",
            expected=f"a MASK batch of {n} (one per identity, in face order)",
            got=f"shape {list(masks.shape)}",
            fix="batch one mask per identity (or leave masks empty for one identity everywhere)",
        )
    return m.float().clamp(0, 1)


def flux_depth(model) -> tuple:
    """(double blocks, single blocks, hidden width) of the Flux inside ``model``; a clear error otherwise."""
    dm = model.get_model_object("diffusion_model")
    double, single = getattr(dm, "double_blocks", None), getattr(dm, "single_blocks", None)
    if double is None or single is None:
        raise VisageError(
            "PuLID-FLUX needs a Flux model",
            expected="a FLUX.1 model (double and single stream blocks)",
            got=f"{type(dm).__name__}",
            fix="load FLUX.1-dev with ComfyUI's loaders; PuLID for SDXL has its own node",
        )
    width = getattr(getattr(dm, "params", None), "hidden_size", None) or dm.img_in.weight.shape[0]
    return len(double), len(single), int(width)


def apply_pulid_flux(
    model,
    pulid: PulidRef,
    eva: EvaRef,
    parser,
    faces,
    image: torch.Tensor,
    weight: float,
    start_at: float,
    end_at: float,
    masks: Optional[torch.Tensor] = None,
    on_no_face: str = "error",
    recognizer_override: str = "",
    device: Optional[torch.device] = None,
    progress: Optional[Callable[[int, int], None]] = None,
):
    """The patched clone of ``model`` (or ``model`` itself when no face is left under skip / passthrough)."""
    if not isinstance(pulid, PulidRef) or pulid.info.kind != FLUX:
        got = KIND_NAMES.get(pulid.info.kind, pulid.info.kind) if isinstance(pulid, PulidRef) else type(pulid).__name__
        raise VisageError(
            "Apply PuLID Flux needs the PuLID-FLUX file",
            expected=KIND_NAMES[FLUX] + " (pulid_flux_v0.9.x.safetensors)",
            got=got,
            fix="load pulid_flux_v0.9.1.safetensors with 'Load PuLID Model'",
        )
    if end_at < start_at:
        raise VisageError(
            "end_at is before start_at",
            expected="start_at <= end_at",
            got=f"start_at={start_at}, end_at={end_at}",
            fix="swap the two values",
        )
    double, single, width = flux_depth(model)
    used = [ca_index("double" if k == "double_block" else "single", b) for k, b in patch_keys(double, single)]
    needed = max(used, default=-1)
    if width != pulid.info.ca_dim or needed >= pulid.info.num_ca:
        raise VisageError(
            "This PuLID-FLUX file does not fit the model",
            expected=f"{pulid.info.ca_dim}-wide Flux with at most 19 double / 38 single blocks",
            got=f"{width}-wide Flux with {double} double / {single} single blocks",
            fix="use FLUX.1-dev (or a Flux of its architecture)",
        )
    faces, kept = apply_on_no_face(faces, on_no_face, f"{METHOD} identity images")
    flat = faces.flat()
    if not flat:
        log.warning("Visage: %s: no identity face (on_no_face=%s): the model is passed through", METHOD, on_no_face)
        return model
    images = frames_for(image, faces, "image")
    masks = check_masks(masks, len(flat))
    emb = method_embeddings(METHOD, TRAINED_ON, faces, None, normed=False, dim=512, override=recognizer_override)

    module = pulid.ready()
    encoder = module.encoder
    dev = next(encoder.parameters()).device if device is None else device
    crops = aligned_faces(images.to(dev).float(), faces)
    labels = parse_faces(parser, crops)
    face_img = face_features_image(crops, labels)
    tower = eva.handle.model()
    module = pulid.ready()  # loading EVA may have moved it
    tokens = identity_tokens(module.encoder, tower, emb, face_img, progress=progress)
    identities = [
        Identity(t.cpu(), float(weight), None if masks is None else masks[i].cpu()) for i, t in enumerate(tokens)
    ]
    ms = model.get_model_object("model_sampling")
    run = PulidRun(
        get_module=pulid.module,
        models=pulid.patchers,
        identities=identities,
        sigma_start=ms.percent_to_sigma(start_at),
        sigma_end=ms.percent_to_sigma(end_at),
    )
    m = model.clone()
    install(m, run, double, single)
    log.info(
        "Visage: %s: %d identit%s, weight %.2f", METHOD, len(identities), "y" if len(identities) == 1 else "ies", weight
    )
    return m

"""PuLID-FLUX on ComfyUI's Flux, without importing ComfyUI: block-replace patches for a ModelPatcher clone.

ComfyUI 0.3.64's ``comfy/ldm/flux/model.py`` looks up ``transformer_options["patches_replace"]["dit"]``
for the keys ``("double_block", i)`` / ``("single_block", i)``; a patch is called as
``patch(args, {"original_block": fn})`` with ``args`` = img / txt / vec / pe / attn_mask /
transformer_options and must return ``{"img", "txt"}`` (double) or ``{"img"}`` (single, where img is
``cat(txt, img)``). :class:`PulidBlockPatch` runs the block (or the patch that was there before it:
several PuLID nodes and other packs' patches chain), then adds ``Σ_i w_i · m_i ⊙ CA_k(id_i, img)`` to
the image tokens where PuLID does (:mod:`.flux_patch`), inside the sigma window.

The text length and the latent grid are needed for the single blocks and the masks: a
``diffusion_model`` wrapper (:func:`record_shapes`) puts them in a copy of transformer_options.

Memory: the PuLID module (1.1 GB) is owned by the model manager (a ModelPatcher under ComfyUI);
each patch's ``models()`` names that patcher, so ComfyUI's ``load_models_gpu`` loads it with the Flux
model and can evict it after. Patches are immutable: ``__deepcopy__`` returns the object itself (clones
of the ModelPatcher share it); nothing is stored on the diffusion model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ...core.errors import VisageError
from .flux_patch import add_identity, ca_index

TXT_LEN = "visage_pulid_txt_len"
GRID = "visage_pulid_grid"  # (h_len, w_len): the generated image's token grid (2x2 latent patches)
WRAPPER_KEY = "visage_pulid"


def record_shapes(executor, x, timestep, context, *args, **kwargs):
    """``diffusion_model`` wrapper: the text length and token grid, in a copy of transformer_options."""
    args = list(args)
    # Flux._forward(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)
    if len(args) >= 5 and isinstance(args[4], dict):
        to = dict(args[4])
        to[TXT_LEN] = int(context.shape[1])
        to[GRID] = ((int(x.shape[-2]) + 1) // 2, (int(x.shape[-1]) + 1) // 2)
        args[4] = to
    elif isinstance(kwargs.get("transformer_options"), dict):
        to = dict(kwargs["transformer_options"])
        to[TXT_LEN] = int(context.shape[1])
        to[GRID] = ((int(x.shape[-2]) + 1) // 2, (int(x.shape[-1]) + 1) // 2)
        kwargs["transformer_options"] = to
    return executor(x, timestep, context, *args, **kwargs)


@dataclass(frozen=True)
class Identity:
    tokens: torch.Tensor  # [1, N_id, 2048] float32, host
    weight: float
    mask: Optional[torch.Tensor] = None  # [H, W] 0..1 or None (the whole image)


class PulidRun:
    """What one Apply node adds: the PuLID module (through ``get_module``), the identities, the window.

    ``get_module()`` returns the PuLID model already placed by ComfyUI; ``models`` the ModelPatchers
    ComfyUI must load with the diffusion model."""

    def __init__(
        self,
        get_module: Callable[[], torch.nn.Module],
        models: Callable[[], list],
        identities: Sequence[Identity],
        sigma_start: float,
        sigma_end: float,
    ):
        self.get_module = get_module
        self.models = models
        self.identities = tuple(identities)
        self.sigma_start = float(sigma_start)
        self.sigma_end = float(sigma_end)
        self._cache = {}

    def active(self, transformer_options: dict) -> bool:
        s = transformer_options.get("sigmas")
        if s is None:
            return True
        s = float(s.max()) if isinstance(s, torch.Tensor) else float(s)
        return self.sigma_end <= s <= self.sigma_start

    def _mask_tokens(self, i: int, mask: torch.Tensor, grid, n_img: int, device, dtype) -> torch.Tensor:
        key = (i, tuple(grid), n_img, str(device), dtype)
        m = self._cache.get(key)
        if m is None:
            h, w = grid
            t = F.interpolate(mask[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)
            t = t.reshape(1, h * w, 1)
            if n_img > h * w:  # reference-latent tokens after the image's (Kontext): no identity there
                t = torch.cat((t, t.new_zeros(1, n_img - h * w, 1)), dim=1)
            m = t[:, :n_img].to(device=device, dtype=dtype)
            self._cache[key] = m
        return m

    def add(self, ca: torch.nn.Module, img: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        out = img
        for i, ident in enumerate(self.identities):
            if ident.weight == 0:
                continue
            if ident.mask is None:
                out = add_identity(ca, ident.tokens, out, ident.weight)
                continue
            grid = transformer_options.get(GRID)
            if grid is None:
                raise VisageError(
                    "PuLID region masks need the image's token grid",
                    expected="a Flux model from ComfyUI's loaders",
                    got="no grid recorded (the model bypassed the diffusion-model wrapper)",
                    fix="remove the masks, or use a standard Flux model",
                )
            delta = add_identity(ca, ident.tokens, img, 1.0) - img
            m = self._mask_tokens(i, ident.mask, grid, img.shape[1], img.device, img.dtype)
            out = out + ident.weight * m * delta
        return out


class PulidBlockPatch:
    """The replace patch of one Flux block: the previous patch (or the block), then every PuLID run."""

    def __init__(self, kind: str, block: int, runs: Sequence[PulidRun], previous=None):
        self.kind = kind
        self.block = block
        self.runs = tuple(runs)
        self.previous = previous
        self.ca = ca_index(kind, block)

    def __deepcopy__(self, memo):
        return self

    def models(self) -> List:
        out = []
        for r in self.runs:
            out += [m for m in r.models() if m is not None and all(m is not o for o in out)]
        prev = getattr(self.previous, "models", None)
        return out + (list(prev()) if callable(prev) else [])

    def with_run(self, run: PulidRun) -> "PulidBlockPatch":
        return PulidBlockPatch(self.kind, self.block, self.runs + (run,), self.previous)

    def __call__(self, args: dict, extra: dict) -> dict:
        out = self.previous(args, extra) if self.previous is not None else extra["original_block"](args)
        to = args.get("transformer_options") or {}
        runs = [r for r in self.runs if r.active(to)]
        if self.ca is None or not runs:
            return out
        out = dict(out)
        if self.kind == "double":
            img = out["img"]
            for r in runs:
                img = r.add(r.get_module().pulid_ca[self.ca], img, to)
            out["img"] = img
            return out
        x = out["img"]
        txt_len = to.get(TXT_LEN)
        if txt_len is None:
            raise VisageError(
                "PuLID cannot tell the text tokens from the image tokens",
                expected="a Flux model called through ComfyUI's diffusion-model wrappers",
                got="no text length recorded",
                fix="use a standard Flux model",
            )
        img = x[:, txt_len:]
        for r in runs:
            img = r.add(r.get_module().pulid_ca[self.ca], img, to)
        out["img"] = torch.cat((x[:, :txt_len], img), dim=1)
        return out


def patch_keys(double_blocks: int, single_blocks: int) -> List[tuple]:
    """The ``("double_block", i)`` / ``("single_block", j)`` keys PuLID patches for a Flux of that depth."""
    keys = [("double_block", i) for i in range(double_blocks) if ca_index("double", i) is not None]
    keys += [("single_block", j) for j in range(single_blocks) if ca_index("single", j) is not None]
    return keys


def install(patcher, run: PulidRun, double_blocks: int, single_blocks: int, wrapper_type: str = "diffusion_model"):
    """Put ``run`` on every PuLID block of an already cloned ModelPatcher (``patcher``), chaining what is there."""
    to = patcher.model_options.setdefault("transformer_options", {})
    dit = to.setdefault("patches_replace", {}).setdefault("dit", {})
    for key in patch_keys(double_blocks, single_blocks):
        kind = "double" if key[0] == "double_block" else "single"
        prev = dit.get(key)
        if isinstance(prev, PulidBlockPatch):
            dit[key] = prev.with_run(run)
        else:
            dit[key] = PulidBlockPatch(kind, key[1], (run,), prev)
    if not patcher.get_wrappers(wrapper_type, WRAPPER_KEY):
        patcher.add_wrapper_with_key(wrapper_type, WRAPPER_KEY, record_shapes)
    return patcher

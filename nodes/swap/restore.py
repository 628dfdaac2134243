"""Face restoration (GFPGAN / CodeFormer / GPEN / RestoreFormer) through spandrel, on aligned crops.

Files come from ComfyUI's ``models/facerestore_models``. spandrel recognises the architecture from
the state dict; anything that is not one of the face-restoration architectures is refused with a
clear message (an upscaler put into the wrong folder is the usual case). CodeFormer and GPEN live in
``spandrel_extra_arches`` (non-commercial licences); they are used when that package is installed,
exactly as ComfyUI's upscale loader does.

Restoration works on FFHQ-aligned crops (facexlib's 512 template, scaled to the model's size):
input RGB in -1..1, output -1..1. ``fidelity`` is CodeFormer's ``w`` (0 = most restoration,
1 = most faithful); ``strength`` blends the restored crop over the unrestored one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..common.errors import ModelFileInvalid

log = logging.getLogger("visage")

FACE_ARCHS = ("GFPGAN", "CodeFormer", "GPEN", "RestoreFormer")
_EXTRA = {"done": False}


def _registry():
    from spandrel import MAIN_REGISTRY

    if not _EXTRA["done"]:
        _EXTRA["done"] = True
        try:
            from spandrel_extra_arches import EXTRA_REGISTRY
            MAIN_REGISTRY.add(*EXTRA_REGISTRY)
        except ImportError:
            pass
        except Exception as e:  # already added by ComfyUI
            log.debug("spandrel extra arches: %s", e)
    return MAIN_REGISTRY


class RestorerModule(torch.nn.Module):
    """spandrel's network + what the face pipeline needs to feed it."""

    def __init__(self, net: torch.nn.Module, arch: str, size: int):
        super().__init__()
        self.net = net
        self.arch = arch
        self.size = int(size)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, fidelity: float = 0.5) -> torch.Tensor:
        """x [N,3,S,S] RGB 0..1 -> [N,3,S,S] 0..1."""
        y = x * 2.0 - 1.0
        if self.arch == "CodeFormer":
            out = self.net(y, w=float(fidelity), adain=True)
        elif self.arch == "GFPGAN":
            out = self.net(y, return_rgb=False)
        else:
            out = self.net(y)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return ((out.float() + 1.0) * 0.5).clamp(0, 1)


def load_restorer(path: str, device="cpu", dtype: torch.dtype = torch.float32) -> RestorerModule:
    from spandrel import ModelLoader

    try:
        desc = ModelLoader(registry=_registry()).load_from_file(path)
    except Exception as e:
        raise ModelFileInvalid(path, f"spandrel cannot read it as an image model ({type(e).__name__}: {str(e)[:160]})",
                               "a face-restoration model: " + ", ".join(FACE_ARCHS),
                               fix="put GFPGANv1.4.pth, codeformer.pth, GPEN-BFR-512.pth or RestoreFormer.pth into "
                                   "models/facerestore_models")
    arch = desc.architecture.id
    purpose = getattr(desc, "purpose", "?")
    if arch not in FACE_ARCHS or purpose != "FaceSR":
        raise ModelFileInvalid(path, f"it is a {arch} model ({purpose}), not a face-restoration model",
                               "one of " + ", ".join(FACE_ARCHS) + " (spandrel purpose 'FaceSR')",
                               fix="pick a face-restoration file; upscalers go to models/upscale_models and run "
                                   "with ComfyUI's 'Upscale Image (using Model)'")
    hp = getattr(desc.model, "hyperparameters", {}) or {}
    size = int(hp.get("out_size") or hp.get("size") or hp.get("resolution") or 512)
    mod = RestorerModule(desc.model, arch, size).eval().requires_grad_(False)
    if dtype != torch.float32 and not getattr(desc, "supports_half", False):
        dtype = torch.float32
    return mod.to(device=torch.device(device), dtype=dtype)


@dataclass(frozen=True)
class Restorer:
    """The VISAGE_RESTORER payload: a model handle plus how to apply it."""

    handle: object           # ModelHandle of a RestorerModule
    name: str
    strength: float = 1.0    # blend of the restored crop over the unrestored one
    fidelity: float = 0.5    # CodeFormer w

    @property
    def arch(self) -> str:
        return self.handle.module.arch

    @property
    def size(self) -> int:
        return self.handle.module.size


@torch.no_grad()
def restore_crops(restorer: Restorer, crops: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """crops [N,S,S,3] 0..1 (FFHQ-aligned at restorer.size) -> restored [N,S,S,3] 0..1."""
    mod = restorer.handle.model()
    p = next(iter(mod.parameters()))
    outs = []
    for s in range(0, crops.shape[0], chunk):
        x = crops[s:s + chunk].permute(0, 3, 1, 2).to(p.device, p.dtype)
        y = mod(x, restorer.fidelity).permute(0, 2, 3, 1).to(crops.device, torch.float32)
        outs.append(y)
    out = torch.cat(outs, 0) if outs else crops.clone()
    if restorer.strength < 1.0:
        out = crops.float() + (out - crops.float()) * float(restorer.strength)
    return out.clamp(0, 1)

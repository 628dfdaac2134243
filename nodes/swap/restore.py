"""Face restoration (GFPGAN / RestoreFormer, and CodeFormer with spandrel_extra_arches) through spandrel.

Files come from ComfyUI's ``models/facerestore_models``. spandrel recognises the architecture from
the state dict; anything that is not a face-restoration architecture is refused with a clear message
(an upscaler put into the wrong folder is the usual case).

* GFPGAN and RestoreFormer are in spandrel itself (MIT/Apache code).
* CodeFormer is in the separate PyPI package ``spandrel_extra_arches`` (MIT wrapper; the CodeFormer
  network and weights are under the NTU S-Lab License 1.0: non-commercial use). It is optional: when it is
  importable its architectures are registered into spandrel's MAIN_REGISTRY (idempotently, the same
  registry ComfyUI's upscale loader fills, so either may go first); when it is missing, a CodeFormer
  file is refused with an error that says what to install.
* GPEN is in neither spandrel 0.4.2 nor spandrel_extra_arches 0.2.0: a GPEN ``.pth`` is recognised by
  its keys and refused with an error that says so. GPEN-BFR as ONNX (``GPEN-BFR-256/512/1024/2048.onnx``
  as ReActor names them, facefusion's ``gpen_bfr_*.onnx``) runs through Visage's ONNX path, routed by
  its signature (one input ``input`` [1,3,S,S], one output of the same shape, S = 256/512/1024/2048;
  facts from facefusion's ``face_enhancer``): RGB in -1..1 in and out; the 256 model is aligned with the
  ArcFace-128 template scaled to 256, the others with FFHQ's 512 template scaled to S.

Restoration works on FFHQ-aligned crops (facexlib's 512 template, scaled to the model's size):
input RGB in -1..1, output -1..1. ``fidelity`` is CodeFormer's fidelity weight (spandrel's
``CodeFormer.forward(x, weight)``; 0 = most restoration, 1 = most faithful to the input);
``strength`` blends the restored crop over the unrestored one.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from ...core.errors import ModelFileInvalid
from ...core.onnx import HostModule, caller_torch_threads

log = logging.getLogger("visage")

FACE_ARCHS = ("GFPGAN", "CodeFormer", "RestoreFormer")
EXTRA_ARCHS = ("CodeFormer",)  # face architectures that only spandrel_extra_arches provides
EXTRA_FIX = (
    "pip install spandrel_extra_arches (into ComfyUI's Python), then restart ComfyUI. Licence: that "
    "package is MIT, but the CodeFormer network and weights are under the NTU S-Lab License 1.0 (non-commercial "
    "use only); GFPGANv1.4.pth or RestoreFormer.pth work without it"
)


def register_extra_arches() -> bool:
    """Add spandrel_extra_arches' architectures to spandrel's MAIN_REGISTRY if the package imports.

    Idempotent (duplicates are skipped, never replaced) and compatible with ComfyUI's own
    ``MAIN_REGISTRY.add(*EXTRA_REGISTRY)`` in comfy_extras/nodes_upscale_model.py: if ComfyUI went
    first ours adds nothing; if we went first ComfyUI's add raises DuplicateArchitectureError, which
    it swallows, and spandrel leaves the registry unchanged on a failed add. True when CodeFormer is
    now registered."""
    from spandrel import MAIN_REGISTRY

    try:
        import spandrel_extra_arches as extra
    except ImportError:
        return all(a in MAIN_REGISTRY for a in EXTRA_ARCHS)
    try:
        MAIN_REGISTRY.add(*extra.EXTRA_REGISTRY, ignore_duplicates=True)
    except Exception as e:  # pragma: no cover - an incompatible spandrel_extra_arches
        log.warning("Visage: could not register spandrel_extra_arches (%s: %s)", type(e).__name__, e)
    return all(a in MAIN_REGISTRY for a in EXTRA_ARCHS)


def _registry():
    from spandrel import MAIN_REGISTRY

    register_extra_arches()
    return MAIN_REGISTRY


def detect_face_arch(state_dict: Mapping[str, object]) -> Optional[str]:
    """Recognise face-restoration layouts spandrel may not load (by their released key names)."""
    keys = set(state_dict.keys())
    if {
        "position_emb",
        "idx_pred_layer.1.weight",
        "quantize.embedding.weight",
        "ft_layers.0.self_attn.in_proj_weight",
        "encoder.blocks.0.weight",
    } <= keys:
        return "CodeFormer"
    if (
        "final_linear.0.weight" in keys
        and any(k.startswith("ecd0.") for k in keys)
        and any(k.startswith("generator.") for k in keys)
    ):
        return "GPEN"
    return None


GPEN_SIZES = (256, 512, 1024, 2048)


def check_gpen_onnx(path: str) -> int:
    """The crop side of a GPEN-BFR ONNX file (routed by its signature), or ModelFileInvalid naming it."""
    from ...core.onnx import onnx_signature
    from ..face.parsing import describe_onnx

    sig = onnx_signature(path)
    shape = tuple(sig.input_shape)
    h, w = sig.input_hw()
    out = tuple(sig.outputs[0][1]) if sig.outputs else ()
    ok = len(sig.inputs) == 1 and len(shape) == 4 and shape[1] == 3 and h == w and h in GPEN_SIZES
    ok = ok and len(sig.outputs) == 1 and len(out) == 4 and out[1] == 3 and tuple(out[2:]) in ((h, w), (None, None))
    if not ok:
        names = sorted(n for n, _ in sig.inputs)
        what = describe_onnx(sig)
        if names == ["input", "weight"]:
            what = "a restorer with a fidelity 'weight' input (facefusion's CodeFormer ONNX)"
        raise ModelFileInvalid(
            path,
            f"it is {what}, not a GPEN-BFR face restorer",
            "a GPEN-BFR ONNX file: one input [1,3,S,S] and one output [1,3,S,S], S = 256/512/1024/2048",
            fix="use GPEN-BFR-512.onnx (or 256/1024/2048), or a .pth restorer (GFPGANv1.4.pth, codeformer.pth)",
        )
    return int(h)


class GpenOnnx(torch.nn.Module):
    """A GPEN-BFR ONNX graph (converted to torch) behind RestorerModule's call."""

    arch = "GPEN"

    def __init__(self, graph: torch.nn.Module, size: int):
        super().__init__()
        self.graph = graph
        self.size = int(size)
        self.template = "arcface" if self.size == 256 else "ffhq_512"

    @torch.no_grad()
    def forward(self, x: torch.Tensor, fidelity: float = 0.5) -> torch.Tensor:
        from ...core.onnx import run_batched

        y = run_batched(self.graph, (x * 2.0 - 1.0).contiguous(), chunk=4)[0]
        return ((y.float().clamp(-1, 1) + 1.0) * 0.5).clamp(0, 1)


class GpenOrt(HostModule):
    """The same file in an onnxruntime CPU session (engine 'onnxruntime')."""

    arch = "GPEN"

    def __init__(self, path: str, size: int):
        from ...core.onnx import OrtCpuModule

        self.session = OrtCpuModule(path)
        self.size = int(size)
        self.template = "arcface" if self.size == 256 else "ffhq_512"
        self.nbytes = self.session.nbytes

    def __call__(self, x: torch.Tensor, fidelity: float = 0.5) -> torch.Tensor:
        y = self.session((x.float().cpu() * 2.0 - 1.0).contiguous())[0]
        return ((y.float().clamp(-1, 1) + 1.0) * 0.5).clamp(0, 1).to(x.device)


def load_gpen_onnx(path: str, device="cpu", dtype: torch.dtype = torch.float32, engine: str = "torch"):
    from ...core.onnx import load_onnx_module

    size = check_gpen_onnx(path)
    if engine == "onnxruntime":
        return GpenOrt(path, size)
    mod = GpenOnnx(load_onnx_module(path, "cpu", torch.float32), size).eval().requires_grad_(False)
    return mod.to(device=torch.device(device), dtype=dtype)


class RestorerModule(torch.nn.Module):
    """spandrel's network + what the face pipeline needs to feed it."""

    def __init__(self, net: torch.nn.Module, arch: str, size: int):
        super().__init__()
        self.net = net
        self.arch = arch
        self.size = int(size)

    def _fidelity_kw(self) -> str:
        """spandrel_extra_arches' CodeFormer takes ``weight``; the original repository's takes ``w``."""
        params = inspect.signature(self.net.forward).parameters
        return "weight" if "weight" in params else "w"

    @torch.no_grad()
    def forward(self, x: torch.Tensor, fidelity: float = 0.5) -> torch.Tensor:
        """x [N,3,S,S] RGB 0..1 -> [N,3,S,S] 0..1."""
        # contiguous NCHW: crops arrive channels-last (a permuted view), and GFPGAN's style code uses .view
        y = (x * 2.0 - 1.0).contiguous()
        if self.arch == "CodeFormer":
            out = self.net(y, **{self._fidelity_kw(): float(fidelity)})
        elif self.arch == "GFPGAN":
            out = self.net(y, return_rgb=False)
        else:
            out = self.net(y)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return ((out.float() + 1.0) * 0.5).clamp(0, 1)


def load_restorer(path: str, device="cpu", dtype: torch.dtype = torch.float32, engine: str = "torch"):
    """A face restorer: GPEN-BFR ONNX (by signature; ``engine`` torch or onnxruntime) or a spandrel file."""
    if path.lower().endswith(".onnx"):
        return load_gpen_onnx(path, device, dtype, engine)
    from spandrel import ModelLoader

    bad_file_fix = (
        "put GFPGANv1.4.pth, RestoreFormer.pth or (with spandrel_extra_arches) codeformer.pth into "
        "models/facerestore_models"
    )
    loader = ModelLoader(registry=_registry())
    try:
        sd = loader.load_state_dict_from_file(path)
    except Exception as e:
        raise ModelFileInvalid(
            path,
            f"it cannot be read as a model file ({type(e).__name__}: {str(e)[:160]})",
            "a face-restoration model: " + ", ".join(FACE_ARCHS),
            fix=bad_file_fix,
        )
    try:
        desc = loader.load_from_state_dict(sd)
    except Exception as e:
        arch = detect_face_arch(sd)
        if arch in EXTRA_ARCHS:
            raise ModelFileInvalid(
                path,
                f"it is a {arch} model, and {arch} needs the optional package "
                "spandrel_extra_arches, which is not installed",
                f"{arch} support from spandrel_extra_arches",
                fix=EXTRA_FIX,
            )
        if arch == "GPEN":
            raise ModelFileInvalid(
                path,
                "it is a GPEN model; spandrel (0.4) and spandrel_extra_arches (0.2) "
                "have no GPEN architecture, so Visage cannot run it",
                "a face-restoration model: " + ", ".join(FACE_ARCHS),
                fix="use GFPGANv1.4.pth, RestoreFormer.pth or codeformer.pth instead",
            )
        raise ModelFileInvalid(
            path,
            f"spandrel cannot read it as an image model ({type(e).__name__}: {str(e)[:160]})",
            "a face-restoration model: " + ", ".join(FACE_ARCHS),
            fix=bad_file_fix,
        )
    arch = desc.architecture.id
    purpose = getattr(desc, "purpose", "?")
    if arch not in FACE_ARCHS or purpose != "FaceSR":
        raise ModelFileInvalid(
            path,
            f"it is a {arch} model ({purpose}), not a face-restoration model",
            "one of " + ", ".join(FACE_ARCHS) + " (spandrel purpose 'FaceSR')",
            fix="pick a face-restoration file; upscalers go to models/upscale_models and run "
            "with ComfyUI's 'Upscale Image (using Model)'",
        )
    hp = getattr(desc.model, "hyperparameters", {}) or {}
    size = int(hp.get("out_size") or hp.get("size") or hp.get("resolution") or 512)
    mod = RestorerModule(desc.model, arch, size).eval().requires_grad_(False)
    if dtype != torch.float32 and not getattr(desc, "supports_half", False):
        dtype = torch.float32
    return mod.to(device=torch.device(device), dtype=dtype)


@dataclass(frozen=True)
class Restorer:
    """The VISAGE_RESTORER payload: a model handle plus how to apply it."""

    handle: object  # ModelHandle of a RestorerModule
    name: str
    strength: float = 1.0  # blend of the restored crop over the unrestored one
    fidelity: float = 0.5  # CodeFormer w

    @property
    def arch(self) -> str:
        return self.handle.module.arch

    @property
    def size(self) -> int:
        return self.handle.module.size

    @property
    def template(self) -> str:
        """The alignment template of the restorer's crop (FFHQ's 512 template, scaled to ``size``)."""
        return getattr(self.handle.module, "template", "ffhq_512")


@torch.no_grad()
def restore_crops(restorer: Restorer, crops: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """crops [N,S,S,3] 0..1 (FFHQ-aligned at restorer.size) -> restored [N,S,S,3] 0..1."""
    mod = restorer.handle.model()
    p = next(iter(mod.parameters()), None)
    dev, dt = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    outs = []
    for s in range(0, crops.shape[0], chunk):
        x = crops[s : s + chunk].permute(0, 3, 1, 2).to(dev, dt)
        with caller_torch_threads():  # the network gets the caller's threads (see core.onnx)
            y = mod(x, restorer.fidelity)
        y = y.permute(0, 2, 3, 1).to(crops.device, torch.float32)
        outs.append(y)
    out = torch.cat(outs, 0) if outs else crops.clone()
    if restorer.strength < 1.0:
        out = crops.float() + (out - crops.float()) * float(restorer.strength)
    return out.clamp(0, 1)

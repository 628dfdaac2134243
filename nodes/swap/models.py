"""Face-swapper ONNX files as batched torch modules.

Supported layouts (detected from the ONNX signature, never from the file name):

* **inswapper layout** — insightface ``inswapper_128.onnx`` and ReSwapper ``reswapper_128/256.onnx``:
  inputs ``target`` [1,3,S,S] (aligned with insightface's ArcFace template scaled to S, RGB,
  (x - 0) / 255) and ``source`` [1,512]; one output [1,3,S,S] in 0..1 RGB; the 512x512 ``emap`` is
  the graph's LAST initializer. Source latent = normed_embedding @ emap, L2-normalised.
* **HyperSwap layout** — FaceFusion ``hyperswap_1a/1b/1c_256.onnx``: inputs ``source`` [1,512]
  (the L2-normalised ArcFace embedding itself) and ``target`` [1,3,256,256] (same ArcFace-128 template
  scaled to 256, RGB, (x - 0.5) / 0.5); outputs ``output`` [1,3,256,256] in -1..1 and ``mask``
  [1,1,256,256].

The released graphs have batch 1 baked into their Reshape constants; :func:`load_swapper` rewrites
those to "copy the batch axis" (ONNX Reshape 0) and checks, on the loaded module, that a batch of two
gives the same result as two single runs; if not, the module runs one face at a time.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from ...core.errors import ModelFileInvalid, VisageError, describe_tensor
from ...core.onnx import HostModule, load_proto, onnx2torch_convert, ort_cpu_session, value_dims

log = logging.getLogger("visage")

EMBED_DIM = 512


@dataclass(frozen=True)
class SwapperSpec:
    """What a swapper file is and how to feed it."""

    kind: str  # "inswapper" | "hyperswap"
    size: int  # crop side (128, 256)
    input_names: Tuple[str, ...]  # graph input order
    output_names: Tuple[str, ...]
    mean: float  # model input = (pixel01*255 - mean) / std
    std: float
    output_signed: bool  # output in -1..1 (else 0..1)
    has_mask: bool  # second output is a face mask
    uses_emap: bool

    @property
    def name(self) -> str:
        if self.kind == "hyperswap":
            return f"hyperswap_{self.size}"
        return "inswapper_128" if self.size == 128 else f"reswapper_{self.size}"

    @property
    def template(self) -> str:
        """Alignment: insightface's ArcFace template at ``size`` (128 rule: +8 px in x, scaled)."""
        return "arcface_112"


def _size_hint_from_name(path: str) -> Optional[int]:
    m = re.search(r"(?:^|[_\-.])(128|256|512)(?:[_\-.]|$)", os.path.basename(path))
    return int(m.group(1)) if m else None


def spec_from_proto(model, path: str = "<memory>") -> Tuple[SwapperSpec, Optional[np.ndarray]]:
    """Detect the swapper layout; returns (spec, emap [512,512] float32 or None)."""
    from onnx import numpy_helper

    g = model.graph
    inits = list(g.initializer)
    init_names = {i.name for i in inits}
    inputs = [(i.name, value_dims(i)) for i in g.input if i.name not in init_names]
    outputs = [(o.name, value_dims(o)) for o in g.output]
    names = [n for n, _ in inputs]
    expected = (
        "a face swapper with inputs 'target' [1,3,S,S] and 'source' [1,512] (inswapper_128, "
        "reswapper_128/256, hyperswap_1a/1b/1c_256)"
    )
    if sorted(names) != ["source", "target"]:
        raise ModelFileInvalid(
            path,
            f"its inputs are {[(n, list(s)) for n, s in inputs]}, not a face swapper's",
            expected,
            fix="pick a face-swapper .onnx file (e.g. inswapper_128.onnx)",
        )
    shapes = dict(inputs)
    t, s = shapes["target"], shapes["source"]
    if len(t) != 4 or t[1] != 3 or not isinstance(t[2], int) or t[2] != t[3]:
        raise ModelFileInvalid(path, f"its 'target' input is {list(t)}", expected)
    if len(s) != 2 or s[1] != EMBED_DIM:
        raise ModelFileInvalid(path, f"its 'source' input is {list(s)}", expected)
    size = int(t[2])
    out_names = tuple(n for n, _ in outputs)
    if len(outputs) == 2 and "mask" in out_names:
        spec = SwapperSpec(
            kind="hyperswap",
            size=size,
            input_names=tuple(names),
            output_names=out_names,
            mean=127.5,
            std=127.5,
            output_signed=True,
            has_mask=True,
            uses_emap=False,
        )
        return spec, None
    if len(outputs) != 1:
        raise ModelFileInvalid(path, f"it has {len(outputs)} outputs {list(out_names)}", expected)
    last = inits[-1] if inits else None
    if last is None or tuple(last.dims) != (EMBED_DIM, EMBED_DIM):
        raise ModelFileInvalid(
            path,
            "it has no 512x512 'emap' as its last initializer",
            expected + " whose last initializer is the 512x512 emap (insightface layout)",
        )
    emap = numpy_helper.to_array(last).astype(np.float32)
    spec = SwapperSpec(
        kind="inswapper",
        size=size,
        input_names=tuple(names),
        output_names=out_names,
        mean=0.0,
        std=255.0,
        output_signed=False,
        has_mask=False,
        uses_emap=True,
    )
    return spec, emap


def detect_swapper(path: str, expected_size: Optional[int] = None) -> Tuple[SwapperSpec, Optional[np.ndarray]]:
    """Spec + emap of a swapper file. ``expected_size`` (or a size in the file name) must match."""
    spec, emap = spec_from_proto(load_proto(path), path)
    check_size(spec, path, expected_size)
    return spec, emap


def check_size(spec: SwapperSpec, path: str, expected_size: Optional[int] = None) -> None:
    want = expected_size or _size_hint_from_name(path)
    if want is not None and want != spec.size:
        src = "asked for" if expected_size else "its file name says"
        raise ModelFileInvalid(
            path,
            f"it is a {spec.size}-px swapper ({spec.name} layout) but a {want}-px one was expected ({src} {want})",
            f"a {want}-px swapper",
            fix=f"pick a {want}-px model, or rename the file if it really is a {spec.size}-px {spec.kind} model",
        )


def _make_batchable(model) -> int:
    """Rewrite batch-1 constants of Reshape shapes to 0 (= copy the input's axis). Returns #changes."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = {}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute:
            consts[n.output[0]] = n
    changed = 0
    for inp in g.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    for o in g.output:
        dims = o.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    for n in g.node:
        if n.op_type != "Reshape" or len(n.input) < 2:
            continue
        if any(a.name == "allowzero" and a.i == 1 for a in n.attribute):
            continue
        name = n.input[1]
        if name in inits:
            arr = numpy_helper.to_array(inits[name])
            if arr.ndim == 1 and arr.size >= 2 and int(arr[0]) == 1:
                arr = arr.copy()
                arr[0] = 0
                inits[name].CopyFrom(numpy_helper.from_array(arr, name))
                changed += 1
        elif name in consts:
            attr = next((a for a in consts[name].attribute if a.name == "value"), None)
            if attr is None:
                continue
            arr = numpy_helper.to_array(attr.t)
            if arr.ndim == 1 and arr.size >= 2 and int(arr[0]) == 1:
                arr = arr.copy()
                arr[0] = 0
                attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
                changed += 1
    return changed


class SwapperModule(torch.nn.Module):
    """The converted graph plus its spec; forward(target, source) in the spec's normalisation."""

    def __init__(self, graph: torch.nn.Module, spec: SwapperSpec, emap: Optional[np.ndarray]):
        super().__init__()
        self.graph = graph
        self.spec = spec
        # kept in float32 on the host whatever the module's device/dtype (the latent is computed once)
        self.emap = torch.from_numpy(emap).float() if emap is not None else None
        self.batched = True

    def forward(self, target: torch.Tensor, source: torch.Tensor):
        args = {"target": target, "source": source}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.graph(*[args[n] for n in self.spec.input_names])
        if isinstance(out, torch.Tensor):
            out = (out,)
        return tuple(out)


def _convert(model, path: str) -> torch.nn.Module:
    convert = onnx2torch_convert()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert(model)
    except Exception as e:
        raise ModelFileInvalid(
            path,
            f"its graph cannot be converted to torch ({type(e).__name__}: {str(e)[:160]})",
            "a face-swapper ONNX model of a supported layout",
        )


class OrtSwapper(HostModule):
    """The same graph (batch axis made dynamic) in an onnxruntime CPU session, behind SwapperModule's call.

    Engine 'onnxruntime' (what 'auto' picks on the CPU, like the analyzer): no GPU memory to manage."""

    def __init__(self, model, spec: SwapperSpec, emap: Optional[np.ndarray], path: str, threads: int = 0):
        self.session = ort_cpu_session(
            model.SerializeToString(), path, "a face-swapper ONNX model onnxruntime can run", threads
        )
        self.spec = spec
        self.emap = torch.from_numpy(emap).float() if emap is not None else None
        self.batched = True
        self.nbytes = os.path.getsize(path)

    def __call__(self, target: torch.Tensor, source: torch.Tensor):
        feeds = {"target": target.detach().float().cpu().numpy(), "source": source.detach().float().cpu().numpy()}
        return tuple(torch.from_numpy(o) for o in self.session.run(None, feeds))


ENGINES = ("auto", "torch", "onnxruntime")


def load_swapper(
    path: str,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    expected_size: Optional[int] = None,
    engine: str = "torch",
):
    """Read + check the file, make the graph batchable, convert (torch) or open (onnxruntime, CPU only),
    verify batching. The torch build happens on the CPU; the model manager places it. External data is
    read into the proto from the model's folder (core.onnx.load_proto), so both engines see it there."""
    model = load_proto(path)
    spec, emap = spec_from_proto(model, path)
    check_size(spec, path, expected_size)
    n = _make_batchable(model)
    if engine == "onnxruntime":
        mod = OrtSwapper(model, spec, emap, path)
    else:
        graph = _convert(model, path)
        mod = SwapperModule(graph, spec, emap).eval().requires_grad_(False)
    mod.batched = _verify_batching(mod)
    if not mod.batched:
        log.warning(
            "Visage: %s does not batch after conversion (%d reshapes rewritten); running one face at a time",
            os.path.basename(path),
            n,
        )
    return mod.to(device=torch.device(device), dtype=dtype)


@torch.no_grad()
def _verify_batching(mod: SwapperModule) -> bool:
    g = torch.Generator().manual_seed(0)
    s = mod.spec.size
    t = torch.rand(2, 3, s, s, generator=g)
    src = torch.nn.functional.normalize(torch.randn(2, EMBED_DIM, generator=g), dim=-1)
    try:
        both = mod(t, src)
        one = [mod(t[i : i + 1], src[i : i + 1]) for i in range(2)]
    except RuntimeError:
        return False
    for j, o in enumerate(both):
        ref = torch.cat([p[j] for p in one], 0)
        if o.shape != ref.shape or not torch.allclose(o, ref, atol=1e-4, rtol=1e-3):
            return False
    return True


def source_latent(mod: SwapperModule, normed_embedding: torch.Tensor) -> torch.Tensor:
    """[K,512] L2-normalised ArcFace embeddings -> [K,512] model 'source' inputs."""
    e = torch.as_tensor(normed_embedding).float()
    if e.ndim == 1:
        e = e.unsqueeze(0)
    if e.shape[-1] != EMBED_DIM:
        raise VisageError(
            "the source identity has the wrong embedding size for this swapper",
            expected=f"{EMBED_DIM}-d ArcFace embeddings (antelopev2 / buffalo_l recognizer)",
            got=describe_tensor(e),
            fix="use an analyzer pack whose recognizer gives 512-d embeddings",
        )
    e = torch.nn.functional.normalize(e, dim=-1)
    if mod.spec.uses_emap:
        lat = e.double() @ mod.emap.double()
        lat = lat / lat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return lat.float()
    return e


@torch.no_grad()
def run_swapper(mod: SwapperModule, target: torch.Tensor, latent: torch.Tensor, chunk: int = 16):
    """target [N,3,S,S] already normalised for the model (see ``spec.mean/std``), latent [N,512].

    Returns (faces [N,3,S,S] float 0..1 RGB, mask [N,S,S] 0..1 or None)."""
    spec = mod.spec
    n = target.shape[0]
    if latent.shape[0] != n:
        raise ValueError("run_swapper: one latent per target crop")
    p = next(iter(mod.parameters()), None)
    dev = p.device if p is not None else target.device
    dt = p.dtype if p is not None else torch.float32
    step = chunk if mod.batched else 1
    faces, masks = [], []
    for s in range(0, n, step):
        outs = mod(target[s : s + step].to(dev, dt), latent[s : s + step].to(dev, dt))
        img = outs[0].float()
        if spec.output_signed:
            img = img * 0.5 + 0.5
        faces.append(img.clamp(0, 1))
        if spec.has_mask and len(outs) > 1:
            masks.append(outs[1].float().reshape(img.shape[0], spec.size, spec.size).clamp(0, 1))
    return torch.cat(faces, 0), (torch.cat(masks, 0) if masks else None)


PIXEL_BOOSTS = (1, 2, 4, 8)


def implode_tiles(target: torch.Tensor, boost: int) -> torch.Tensor:
    """[N,C,S*b,S*b] -> [N*b*b,C,S,S]: tile (i, j) of face n is ``target[n, :, i::b, j::b]`` (facefusion's
    pixel-boost split), tiles of a face consecutive, row-major in (i, j)."""
    n, c, t, _ = target.shape
    s = t // boost
    x = target.reshape(n, c, s, boost, s, boost).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(n * boost * boost, c, s, s)


def explode_tiles(tiles: torch.Tensor, boost: int) -> torch.Tensor:
    """Inverse of :func:`implode_tiles`: [N*b*b,C,S,S] -> [N,C,S*b,S*b] (re-interleaved)."""
    m, c, s, _ = tiles.shape
    n = m // (boost * boost)
    x = tiles.reshape(n, boost, boost, c, s, s).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(n, c, s * boost, s * boost)


@torch.no_grad()
def run_swapper_boosted(mod: SwapperModule, target: torch.Tensor, latent: torch.Tensor, boost: int = 1):
    """Pixel boost: ``target`` [N,3,S*b,S*b] (the face aligned at b times the model's side) is split into
    b*b interleaved S-crops, each swapped with the face's latent, and re-interleaved. Returns
    (faces [N,3,S*b,S*b] 0..1, mask [N,S*b,S*b] or None). ``boost`` 1 is :func:`run_swapper` itself."""
    boost = int(boost)
    if boost not in PIXEL_BOOSTS:
        raise VisageError(f"Unknown pixel boost {boost}", expected=" / ".join(f"{b}x" for b in PIXEL_BOOSTS))
    if boost == 1:
        return run_swapper(mod, target, latent)
    s = mod.spec.size
    if target.shape[-1] != s * boost or target.shape[-2] != s * boost:
        raise ValueError(f"run_swapper_boosted: crops must be {s * boost}x{s * boost}")
    faces, masks = run_swapper(mod, implode_tiles(target, boost), latent.repeat_interleave(boost * boost, 0))
    faces = explode_tiles(faces, boost)
    if masks is not None:
        masks = explode_tiles(masks[:, None], boost)[:, 0]
    return faces, masks


def mix_identity(source: torch.Tensor, target: torch.Tensor, strength: float) -> torch.Tensor:
    """Identity strength (ReActor's face weight): normalise(s * src + (1 - s) * tgt) of the L2-normalised
    embeddings [K,512]. ``strength`` 1 returns ``source`` untouched; 0 gives the target's own identity."""
    s = float(strength)
    if s >= 1.0:
        return source
    src = torch.nn.functional.normalize(source.float(), dim=-1)
    tgt = torch.nn.functional.normalize(target.float().to(src.device), dim=-1)
    return torch.nn.functional.normalize(s * src + (1.0 - s) * tgt, dim=-1)

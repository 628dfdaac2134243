"""BiSeNet face parsing (19 CelebAMask-HQ classes) for aligned face crops. Pure module: torch (+ onnx).

Two released files are read:

* facexlib's ``parsing_bisenet.pth`` (``github.com/xinntao/facexlib/releases/download/v0.2.0``; MIT): a
  plain state dict of facexlib 0.3.0's ``BiSeNet(num_class=19)`` (``facexlib/parsing/bisenet.py`` and
  ``resnet.py``), loaded strictly. :class:`BiSeNet` here is our own module with the same key layout,
  read from those facts:

  - ``cp.resnet``: ResNet-18 without classifier: ``conv1`` 7x7/2 (3->64, no bias), ``bn1``, ReLU,
    3x3/2 max-pool, ``layer1..4`` of two basic blocks each (64, 128, 256, 512 channels; the first block
    of layers 2-4 has stride 2 and a ``downsample`` = 1x1 conv + BN). Outputs the 1/8, 1/16, 1/32 maps.
  - ``cp`` (context path): ``conv_avg`` (1x1 ConvBNReLU 512->128) on the global mean of the 1/32 map;
    ``arm32`` / ``arm16`` (attention refinement: 3x3 ConvBNReLU to 128, then a channel gate =
    sigmoid(BN(1x1 conv(global mean)))), ``arm32(f32) + avg`` nearest-upsampled to 1/16 then
    ``conv_head32`` (3x3 ConvBNReLU 128->128); ``arm16(f16) +`` that, nearest-upsampled to 1/8, then
    ``conv_head16``.
  - ``ffm`` (feature fusion, 256->256): ``convblk`` 1x1 ConvBNReLU on cat(1/8 ResNet map, context
    map), gate = sigmoid(conv2(relu(conv1(global mean)))) (256->64->256, no bias), out = f * gate + f.
  - ``conv_out`` (256->256->19), ``conv_out16`` / ``conv_out32`` (128->64->19; auxiliary heads used in
    training): 3x3 ConvBNReLU then a 1x1 conv without bias. The main logits are bilinearly upsampled
    (``align_corners=True``) to the input size. Every conv is bias-free; every BN is ``BatchNorm2d``.

* facefusion's ``bisenet_resnet_18.onnx`` / ``bisenet_resnet_34.onnx`` (yakhyo/face-parsing, MIT): one
  input ``input`` [1,3,512,512], the first output the [1,19,512,512] logits; converted by
  :mod:`visage.core.onnx` (torch) or run by onnxruntime (CPU), routed by that signature, never the name.

Both take what :data:`MEAN` / :data:`STD` say: RGB 0..1 normalised with ImageNet's mean and std
(facefusion's ``create_region_mask``; the face-parsing.PyTorch convention of the facexlib weights), at
512x512. :data:`CLASSES` is the class order of both (CelebAMask-HQ as in face-parsing.PyTorch and
facefusion's ``face_mask_region_set``).

API: :func:`load_parsing` gives a :class:`ParsingModel` (a model-manager handle: ComfyUI can evict it)
whose call maps x [B,3,512,512] -> logits [B,19,512,512]; :func:`parse_faces` labels aligned crops.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.errors import ModelFileInvalid, VisageError, describe_tensor
from ...core.model_manager import MANAGER, ModelHandle

log = logging.getLogger("visage")

SIZE = 512
NUM_CLASSES = 19
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

CLASSES: Tuple[str, ...] = (
    "background",
    "skin",
    "left_brow",
    "right_brow",
    "left_eye",
    "right_eye",
    "glasses",
    "left_ear",
    "right_ear",
    "earring",
    "nose",
    "mouth",  # the inner mouth (between the lips)
    "upper_lip",
    "lower_lip",
    "neck",
    "necklace",
    "cloth",
    "hair",
    "hat",
)
CLASS_INDEX: Dict[str, int] = {n: i for i, n in enumerate(CLASSES)}

FILE_NAME = "parsing_bisenet.pth"
FOLDER = "facexlib"
SOURCE = "github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth"
ONNX_NAMES = ("bisenet_resnet_18.onnx", "bisenet_resnet_34.onnx")


# ------------------------------------------------------------------------------------ network


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        r = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(r + (x if self.downsample is None else self.downsample(x)))


class ResNet18Trunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for i, (a, b, s) in enumerate(chans, 1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(a, b, s), BasicBlock(b, b, 1)))

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        f8 = self.layer2(self.layer1(x))
        f16 = self.layer3(f8)
        return f8, f16, self.layer4(f16)


def _gmean(x):
    return x.mean(dim=(2, 3), keepdim=True)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        f = self.conv(x)
        return f * torch.sigmoid(self.bn_atten(self.conv_atten(_gmean(f))))


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18Trunk()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3)
        self.conv_head16 = ConvBNReLU(128, 128, 3)
        self.conv_avg = ConvBNReLU(512, 128, 1)

    def forward(self, x):
        f8, f16, f32 = self.resnet(x)
        g = self.conv_avg(_gmean(f32))  # [B,128,1,1]: broadcasting = nearest upsampling of a 1x1 map
        up32 = self.conv_head32(F.interpolate(self.arm32(f32) + g, size=f16.shape[2:], mode="nearest"))
        up16 = self.conv_head16(F.interpolate(self.arm16(f16) + up32, size=f8.shape[2:], mode="nearest"))
        return f8, up16


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, a, b):
        f = self.convblk(torch.cat([a, b], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(_gmean(f)))))
        return f * gate + f


class OutputHead(nn.Module):
    def __init__(self, cin: int, mid: int, n: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, 3)
        self.conv_out = nn.Conv2d(mid, n, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """facexlib's BiSeNet layout; forward(x [B,3,H,W] normalised) -> main logits [B,19,H,W]."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, num_classes)
        # auxiliary training heads: part of the released state dict, not used at inference
        self.conv_out16 = OutputHead(128, 64, num_classes)
        self.conv_out32 = OutputHead(128, 64, num_classes)

    def forward(self, x):
        f8, ctx = self.cp(x)
        out = self.conv_out(self.ffm(f8, ctx))
        return F.interpolate(out, size=x.shape[2:], mode="bilinear", align_corners=True)


def expected_layout() -> Dict[str, Tuple[int, ...]]:
    """Released key -> shape (``num_batches_tracked`` included; loading treats it as optional)."""
    with torch.device("meta"):
        m = BiSeNet()
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


# ------------------------------------------------------------------------------------ .pth loading


def _what_state_dict(sd: Dict[str, torch.Tensor]) -> str:
    keys = list(sd)
    ks = set(keys)
    if keys and all(k.startswith("module.") for k in keys):
        return "a state dict saved from a DataParallel wrapper (every key starts with 'module.')"
    if "cp.resnet.conv1.weight" in ks and "conv_out.conv_out.weight" in ks:
        n = tuple(sd["conv_out.conv_out.weight"].shape)[0]
        if n != NUM_CLASSES:
            return f"a BiSeNet with {n} classes (the face parser has {NUM_CLASSES})"
        return "a BiSeNet whose keys or shapes differ from facexlib's release"
    if any(k.startswith("out_mask_conv.") for k in keys) or any(k.startswith("out_img_conv.") for k in keys):
        return "facexlib's ParseNet (parsing_parsenet.pth), not BiSeNet"
    if any(k.startswith("input_layer.") for k in keys) and any(k.startswith("output_layer.") for k in keys):
        return "facexlib's IR-SE50 recognizer (recognition_arcface_ir_se50.pth)"
    if any(k.startswith(("stylegan_decoder.", "conv_body_first.")) for k in keys):
        return "a GFPGAN face restorer"
    if any(k.startswith("generator.") for k in keys) and any(k.startswith("ecd0.") for k in keys):
        return "a GPEN face restorer"
    if any(k.startswith(("loc.", "conf.", "landmark.")) for k in keys) or "body.conv1.weight" in ks:
        return "a face detector (facexlib RetinaFace?)"
    return f"an unknown architecture (keys such as {keys[:3]})"


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The file's tensors, read with ``torch.load(weights_only=True)`` (never executes a pickle)."""
    from .irse50 import _sniff

    expected = f"facexlib's {FILE_NAME}: a plain PyTorch state dict of BiSeNet (19 classes)"
    fix = f"put the released {FILE_NAME} ({SOURCE}) into models/{FOLDER}/"
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        kind, wording = _sniff(path)
        if kind == "foreign":
            problem = wording.replace("IR-SE50", "BiSeNet").replace("glintr100.onnx / arcface.onnx", "an .onnx file")
        elif isinstance(e, pickle.UnpicklingError) and "weights only load failed" in str(e).lower():
            problem = "it holds pickled Python objects besides tensors; Visage reads weights only"
        else:
            problem = wording or f"it cannot be read as a torch checkpoint ({type(e).__name__}: {str(e)[:160]})"
        raise ModelFileInvalid(path, problem, expected, fix=fix) from None
    if not isinstance(sd, dict):
        raise ModelFileInvalid(path, f"it holds a {type(sd).__name__}, not a state dict", expected, fix=fix)
    for wrapper in ("state_dict", "model", "params", "params_ema", "net"):
        inner = sd.get(wrapper)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            raise ModelFileInvalid(
                path,
                f"its tensors sit under '{wrapper}' (a training checkpoint); the release is a plain state dict",
                expected,
                fix=fix,
            )
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors or len(tensors) != len(sd):
        raise ModelFileInvalid(path, f"it holds non-tensor entries (keys {list(sd)[:4]})", expected, fix=fix)
    return tensors


def validate(sd: Dict[str, torch.Tensor], path: str) -> None:
    """Raise ModelFileInvalid (naming what the file is) unless ``sd`` has the released keys and shapes."""
    exp = expected_layout()
    required = {k for k in exp if not k.endswith("num_batches_tracked")}
    missing = sorted(required - sd.keys())
    unexpected = sorted(sd.keys() - exp.keys())
    expected = f"facexlib's {FILE_NAME}: BiSeNet (ResNet-18 context path, 19 classes), {len(required)} tensors"
    fix = f"use the released {FILE_NAME} ({SOURCE}) in models/{FOLDER}/, or bisenet_resnet_18/34.onnx"
    bad = [(k, tuple(sd[k].shape), exp[k]) for k in sorted(required - set(missing)) if tuple(sd[k].shape) != exp[k]]
    if missing or unexpected or bad:
        detail = f"{len(missing)} released key(s) missing, {len(unexpected)} unexpected"
        if bad:
            k, got, want = bad[0]
            detail += f", {len(bad)} of other shape (e.g. '{k}' {list(got)}, released {list(want)})"
        raise ModelFileInvalid(path, f"it holds {_what_state_dict(sd)}: {detail}", expected, fix=fix)
    nonfloat = sorted(k for k in required if not sd[k].is_floating_point())
    if nonfloat:
        raise ModelFileInvalid(path, f"tensor '{nonfloat[0]}' is {sd[nonfloat[0]].dtype}", expected, fix=fix)


def bisenet_from_state_dict(sd: Dict[str, torch.Tensor], path: str = "<state dict>") -> BiSeNet:
    """Validate ``sd`` (released layout) and build the eval-mode module on its tensors (fp32, CPU)."""
    validate(sd, path)
    state = {k: v.float() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    with torch.device("meta"):
        module = BiSeNet()
    for k in module.state_dict():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.zeros((), dtype=torch.long)
    module.load_state_dict(state, strict=True, assign=True)
    return module.requires_grad_(False).eval()


def load_bisenet_pth(path: str, device="cpu", dtype: torch.dtype = torch.float32) -> BiSeNet:
    return bisenet_from_state_dict(read_state_dict(path), path).to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------------ ONNX routing


def describe_onnx(sig) -> str:
    """What an ONNX signature looks like, in words (for refusals that name the wrong file)."""
    names = sorted(n for n, _ in sig.inputs)
    shape = tuple(sig.input_shape)
    outs = [tuple(s) for _, s in sig.outputs]
    if names == ["source", "target"]:
        return "a face swapper (inputs 'source' and 'target')"
    if len(shape) == 4 and shape[-1] == 3 and outs and len(outs[0]) == 4 and outs[0][-1] == 1:
        return f"a face occluder such as XSeg (NHWC input {list(shape)}, one-channel mask output)"
    if len(shape) == 4 and outs and len(outs[0]) == 4 and outs[0][1] == NUM_CLASSES:
        return f"a {NUM_CLASSES}-class parser at input {list(shape)}"
    if len(shape) == 4 and outs and len(outs[0]) == 4 and outs[0][1] == 3 and outs[0][2:] == shape[2:]:
        return f"an image-to-image model (input and output {list(shape)}: a face restorer such as GPEN?)"
    if len(sig.outputs) >= 5:
        return "a face detector (SCRFD-like, many outputs)"
    if outs and len(outs[0]) == 2:
        return f"a recognizer or classifier (output {list(outs[0])})"
    return f"an ONNX model with inputs {[(n, list(s)) for n, s in sig.inputs]} and outputs {[list(o) for o in outs]}"


def is_parsing_signature(sig) -> bool:
    shape = tuple(sig.input_shape)
    if len(sig.inputs) != 1 or len(shape) != 4 or shape[1] != 3 or sig.input_hw() != (SIZE, SIZE):
        return False
    if not sig.outputs:
        return False
    out = tuple(sig.outputs[0][1])
    return len(out) == 4 and out[1] == NUM_CLASSES and all(d in (SIZE, None) or isinstance(d, str) for d in out[2:])


def check_parsing_onnx(path: str):
    from ...core.onnx import onnx_signature

    sig = onnx_signature(path)
    if not is_parsing_signature(sig):
        raise ModelFileInvalid(
            path,
            f"it is {describe_onnx(sig)}, not a face parser",
            f"a BiSeNet face parser: input [1,3,{SIZE},{SIZE}], first output [1,{NUM_CLASSES},{SIZE},{SIZE}] "
            f"({', '.join(ONNX_NAMES)})",
            fix=f"pick {ONNX_NAMES[0]} (facefusion) or facexlib's {FILE_NAME}",
        )
    return sig


def _onnx_torch_loader(path, device, dtype):
    from ...core.onnx import load_onnx_module

    check_parsing_onnx(path)
    return load_onnx_module(path, "cpu", dtype)


def _onnx_ort_loader(path, device, dtype):
    from ...core.onnx import OrtCpuModule

    check_parsing_onnx(path)
    return OrtCpuModule(path)


# ------------------------------------------------------------------------------------ public API


class ParsingModel:
    """A face parser behind one call: ``model(x [B,3,512,512])`` -> logits [B,19,512,512] float32.

    Holds a model-manager handle, never the module, so ComfyUI can evict it between runs."""

    size = SIZE
    classes = CLASSES

    def __init__(self, handle: ModelHandle, kind: str, path: str):
        self.handle = handle
        self.kind = kind  # "pth" | "onnx:torch" | "onnx:onnxruntime"
        self.path = path

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise VisageError(
                "face parsing input has the wrong shape",
                expected="[B,3,512,512] RGB normalised with ImageNet mean/std",
                got=describe_tensor(x),
            )
        from ...core.onnx import run_batched

        mod = self.handle.model()
        dev, dt = self.handle.device, self.handle.dtype
        if self.kind == "onnx:onnxruntime":
            dev, dt = torch.device("cpu"), torch.float32
        logits = run_batched(mod, x.to(dev, dt), chunk=chunk)[0]
        return logits.float()

    def __repr__(self):
        return f"ParsingModel({self.name}, {self.kind})"


def load_parsing(path: str, device=None, dtype: torch.dtype = torch.float32, engine: str = "auto") -> ParsingModel:
    """A face parser from facexlib's ``parsing_bisenet.pth`` or a BiSeNet ONNX file (routed by signature).

    ``engine`` (ONNX only): 'torch' converts the graph; 'onnxruntime' runs it on the CPU; 'auto' picks
    onnxruntime on a CPU device and torch otherwise. The .pth always runs in torch."""
    device = torch.device(device or "cpu")
    name = os.path.basename(path)
    if path.lower().endswith(".onnx"):
        from .analyzer import pick_engine

        eng = pick_engine(engine, device)
        loader = _onnx_ort_loader if eng == "onnxruntime" else _onnx_torch_loader
        dt = torch.float32 if eng == "onnxruntime" else dtype
        h = MANAGER.get(f"face:{eng}:parsing", path, loader, device=device, dtype=dt, name=f"parsing:{name}")
        return ParsingModel(h, f"onnx:{eng}", path)
    h = MANAGER.get("face:torch:parsing", path, load_bisenet_pth, device=device, dtype=dtype, name=f"parsing:{name}")
    return ParsingModel(h, "pth", path)


def normalise_crops(crops: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Aligned crops [N,S,S,3] RGB 0..1 -> model input [N,3,size,size] (resized, ImageNet-normalised)."""
    x = crops.permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def parse_faces(model, crops: torch.Tensor, chunk: int = 4, out_size: Optional[int] = None) -> torch.Tensor:
    """Class labels [N,S,S] (uint8, :data:`CLASSES` indices) of aligned face crops [N,S,S,3] RGB 0..1.

    ``model`` is a :class:`ParsingModel` (or any callable of the same contract). Parsed at 512; the
    labels come back at ``out_size`` (default: the crop size; nearest-neighbour), on the crops' device."""
    if crops.ndim != 4 or crops.shape[-1] != 3:
        raise VisageError("face crops have the wrong shape", expected="[N,S,S,3] RGB 0..1", got=describe_tensor(crops))
    n, s = crops.shape[0], int(out_size or crops.shape[1])
    out = torch.empty((n, s, s), dtype=torch.uint8, device=crops.device)
    for i in range(0, n, chunk):
        x = normalise_crops(crops[i : i + chunk])
        lab = model(x).argmax(dim=1).to(crops.device)
        if lab.shape[-1] != s:
            lab = F.interpolate(lab[:, None].float(), size=(s, s), mode="nearest")[:, 0]
        out[i : i + chunk] = lab.to(torch.uint8)
    return out

"""facexlib's IR-SE50 ArcFace recognizer (``recognition_arcface_ir_se50.pth``) in plain torch.

InfiniteYou and Lynx condition on this network's embedding; Visage loads the released file without
facexlib and computes the same numbers. Pure module: torch only (no ComfyUI, no facexlib).

Facts, from the public sources (read, not copied):

* Network (``xinntao/facexlib``: ``facexlib/recognition/__init__.py`` ``init_recognition_model``
  and ``facexlib/recognition/arcface_arch.py`` ``Backbone``): ``Backbone(num_layers=50,
  drop_ratio=0.6, mode='ir_se')``, used in eval mode (the dropout is then the identity).

  - ``input_layer`` = Conv3x3(3->64, no bias), BatchNorm2d(64), PReLU(64); stride 1 (112 stays 112).
  - ``body`` = 24 ``bottleneck_IR_SE`` units in four stages of 3/4/14/3 units, depths 64/128/256/512;
    the first unit of each stage has stride 2 (112 -> 56 -> 28 -> 14 -> 7). A unit is
    ``res_layer`` = BN(in), Conv3x3(in->d, s1), PReLU(d), Conv3x3(d->d, stride), BN(d),
    SE(d, reduction 16: global mean, 1x1 conv d->d/16, ReLU, 1x1 conv d/16->d, sigmoid, scale) plus a
    ``shortcut_layer``: Conv1x1(in->d, stride, no bias) + BN(d) when in != d, otherwise
    ``MaxPool2d(1, stride)`` (= taking every stride-th pixel; no weights).
  - ``output_layer`` = BatchNorm2d(512), Dropout(0.6), Flatten, Linear(512*7*7 -> 512), BatchNorm1d(512).
  - ``forward`` ends with ``l2_norm`` (x / ||x||, no epsilon): facexlib's output is the normalised
    embedding. :class:`IRSE50` here returns the *raw* embedding (the BatchNorm1d output) and
    :func:`l2_normalize` gives facexlib's value.
  - State dict: 343 tensors (54 BatchNorms x 4 + weights), plus 54 ``num_batches_tracked`` in files
    saved by torch >= 0.4.1 (397 keys); 43,797,696 parameters, 43,824,064 floating-point values
    with the BatchNorm running statistics (~175.3 MB in float32). Key names: ``input_layer.{0,1,2}``,
    ``body.N.shortcut_layer.{0,1}`` (only N = 3, 7, 21: the units whose depth changes),
    ``body.N.res_layer.{0,1,2,3,4}``, ``body.N.res_layer.5.fc1/fc2`` (the SE convs),
    ``output_layer.{0,3,4}``.
  - Loading: ``load_state_dict(<the file's plain state dict>, strict=True)`` on the plain state dict — no
    ``state_dict`` wrapper and no ``module.`` prefix are stripped, and Visage strips neither.
  - Weights: ``https://github.com/xinntao/facexlib/releases/download/v0.1.0/recognition_arcface_ir_se50.pth``;
    facexlib fetches them on first use into ``<facexlib package>/facexlib/weights`` (see
    ``facexlib/utils/misc.py``); Visage never downloads. facexlib is MIT; its README credits the recognition model to
    TreB1eN/InsightFace_Pytorch (MIT) and asks users to check the original licences.

* Preprocessing (``bytedance/InfiniteYou``: ``pipelines/pipeline_infu_flux.py``
  ``extract_arcface_bgr_embedding``; the same function in ``bytedance/ComfyUI_InfiniteYou``
  ``utils.py``): the id image is converted RGB -> BGR with cv2, faces are detected with insightface
  ``FaceAnalysis(name='antelopev2')`` (det sizes 640, then 320, then 160 when nothing is found), the
  largest box is kept, and its 5 ``kps`` give ``insightface.utils.face_align.norm_crop(bgr, kps,
  image_size=112)`` (ArcFace template, ``cv2.warpAffine`` on uint8, border 0). The uint8 BGR crop
  becomes NCHW float ``x / 255 * 2 - 1`` (= (x - 127.5) / 127.5) and the model's output ``[0]`` — the
  L2-normalised 512-d vector — is the identity embedding.
  Lynx (``bytedance/lynx``: ``modules/common/face_encoder.py``) feeds the same network the same
  numbers: ``norm_crop`` of the RGB image, ``ToTensor`` + ``Normalize(0.5, 0.5)``, then channels
  reordered ``[2, 1, 0]`` (BGR); its landmarks come from insightface's default pack (buffalo_l).

:data:`IRSE50_PREPROCESS` states that contract for the analysis crop (``kernels.ops.align_crops``
with ``round_to_uint8=True``, ``mean``, ``std``, ``bgr``).
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.errors import ModelFileInvalid, VisageError, describe_tensor

log = logging.getLogger("visage")

RECOGNIZER_ID = "recognition_arcface_ir_se50"
FILE_NAME = RECOGNIZER_ID + ".pth"
FOLDER = "facexlib"
SOURCE = "https://github.com/xinntao/facexlib/releases/download/v0.1.0/recognition_arcface_ir_se50.pth"
EMBEDDING_DIM = 512

# The crop (0..255, uint8-rounded as cv2.warpAffine gives) in BGR order, normalised as (x - mean) / std.
IRSE50_PREPROCESS = {"input_size": 112, "mean": 127.5, "std": 127.5, "bgr": True, "template": "arcface_112"}

# (depth, units) per stage; the first unit of every stage has stride 2
STAGES: Tuple[Tuple[int, int], ...] = ((64, 3), (128, 4), (256, 14), (512, 3))
SE_REDUCTION = 16
NUM_PARAMETERS = 43_797_696
NUM_TENSORS = 343  # without num_batches_tracked


class _SE(nn.Module):
    """Squeeze-excitation: x * sigmoid(fc2(relu(fc1(mean_hw(x))))) with bias-free 1x1 convs."""

    def __init__(self, c: int, reduction: int = SE_REDUCTION):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(c // reduction, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class _Unit(nn.Module):
    """One IR-SE bottleneck: res_layer(x) + shortcut(x)."""

    def __init__(self, cin: int, depth: int, stride: int):
        super().__init__()
        self.stride = stride
        if cin != depth:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(cin, depth, 1, stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        else:
            self.shortcut_layer = None  # MaxPool2d(1, stride) in facexlib: subsampling, no weights
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            _SE(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut_layer is None:
            short = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        else:
            short = self.shortcut_layer(x)
        return self.res_layer(x) + short


class IRSE50(nn.Module):
    """IR-SE50 with facexlib's key layout. ``forward``: [N,3,112,112] normalised crops -> [N,512] raw.

    Always computes eval-mode maths (BatchNorm running statistics, no dropout): ``train()`` is a no-op.
    """

    def __init__(self):
        super().__init__()
        # attribute order = facexlib's, so state_dict() lists the keys in the released order
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Identity(),  # Dropout(0.6): identity in eval mode
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, EMBEDDING_DIM),
            nn.BatchNorm1d(EMBEDDING_DIM),
        )
        units: List[nn.Module] = []
        cin = 64
        for depth, n in STAGES:
            for i in range(n):
                units.append(_Unit(cin, depth, 2 if i == 0 else 1))
                cin = depth
        self.body = nn.Sequential(*units)
        super().train(False)

    def train(self, mode: bool = True) -> "IRSE50":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = IRSE50_PREPROCESS["input_size"]
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
            raise VisageError(
                "The IR-SE50 recognizer got a wrong input",
                expected=f"normalised face crops [N,3,{size},{size}]",
                got=describe_tensor(x),
                fix="pass crops aligned with the ArcFace template at 112 px (IRSE50_PREPROCESS)",
            )
        x = self.input_layer(x)
        x = self.body(x)
        return self.output_layer(x)


def l2_normalize(raw: torch.Tensor) -> torch.Tensor:
    """facexlib's ``l2_norm`` (what InfiniteYou/Lynx consume); a zero vector stays zero instead of NaN."""
    return raw / raw.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)


def expected_layout() -> Dict[str, Tuple[int, ...]]:
    """Released key -> shape (``num_batches_tracked`` included; loading treats it as optional)."""
    with torch.device("meta"):
        m = IRSE50()
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


# ------------------------------------------------------------------------------------ loading


def _sniff(path: str) -> Tuple[str, str]:
    """(kind, wording) of what the first bytes of an unreadable file suggest; only words the error."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        size = os.path.getsize(path)
    except OSError:
        return "", ""
    if size == 0:
        return "foreign", "the file is empty (0 bytes)"
    if len(head) >= 10 and head[8:10] == b'{"':
        return "foreign", "it looks like a safetensors file, not facexlib's torch state dict"
    if len(head) >= 3 and head[:1] == b"\x08" and head[2:3] in (b"\x12", b"\x1a", b"\x22", b"\x3a", b"\x42"):
        return (
            "foreign",
            "it looks like an ONNX model (e.g. glintr100.onnx / arcface.onnx renamed), not facexlib's .pth",
        )
    if head.startswith(b"PK\x03\x04"):
        return "torch", "it is a torch zip archive that cannot be read (truncated or damaged download?)"
    if head[:1] in (b"\x80", b"\x8a"):
        return "torch", "it is a pickle / legacy torch file that cannot be read (truncated or damaged download?)"
    return "", ""


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The file's tensors, read with ``torch.load(weights_only=True)`` (never executes a pickle)."""
    expected = f"facexlib's {FILE_NAME}: a plain PyTorch state dict of IR-SE50 tensors"
    fix = f"download {FILE_NAME} again from {SOURCE}"
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        kind, wording = _sniff(path)
        msg = str(e)
        if kind == "foreign":
            problem = wording
        elif isinstance(e, pickle.UnpicklingError) and "weights only load failed" in msg.lower():
            problem = (
                "it holds pickled Python objects besides tensors (a whole pickled model or a training "
                "checkpoint); Visage reads weights only and never executes a pickle"
            )
        else:
            problem = wording or f"it cannot be read as a torch checkpoint ({type(e).__name__}: {msg[:160]})"
        raise ModelFileInvalid(path, problem, expected, fix=fix)
    if not isinstance(sd, dict):
        raise ModelFileInvalid(path, f"it holds a {type(sd).__name__}, not a state dict", expected, fix=fix)
    for wrapper in ("state_dict", "model", "params", "params_ema", "net"):
        inner = sd.get(wrapper)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            raise ModelFileInvalid(
                path,
                f"its tensors sit under '{wrapper}' (a training checkpoint; keys {list(sd)[:4]}); facexlib's "
                "loader takes the plain state dict and so does Visage",
                expected,
                fix=f"use the released {FILE_NAME} ({SOURCE}) or save checkpoint['{wrapper}'] on its own",
            )
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileInvalid(path, f"it holds no tensors (keys {list(sd)[:4]})", expected, fix=fix)
    if len(tensors) != len(sd):
        other = [k for k in sd if k not in tensors]
        raise ModelFileInvalid(
            path, f"it holds non-tensor entries besides the weights (e.g. {other[:3]})", expected, fix=fix
        )
    return tensors


def _looks_like(sd: Dict[str, torch.Tensor], exp: Dict[str, Tuple[int, ...]]) -> str:
    keys = list(sd)
    if keys and all(k.startswith("module.") for k in keys):
        stripped = {k[len("module.") :] for k in keys}
        if {k for k in exp if not k.endswith("num_batches_tracked")} <= stripped:
            return (
                "IR-SE50 saved from a DataParallel wrapper (every key starts with 'module.'); facexlib's "
                "strict loader rejects that prefix and so does Visage"
            )
    if any(k.startswith("body.") for k in keys):
        units = {int(k.split(".")[1]) for k in keys if k.startswith("body.") and k.split(".")[1].isdigit()}
        has_se = any(".res_layer.5.fc1." in k for k in keys)
        n = max(units) + 1 if units else 0
        name = f"an IR{'-SE' if has_se else ''} backbone with {n} units"
        if n == 24 and not has_se:
            return name + " (facexlib Backbone mode='ir', no squeeze-excitation), not IR-SE50"
        if n != 24:
            return name + " (IR-SE50 has 24: another depth such as IR-100/152)"
        return "an IR-SE50 layout with keys that differ from the release"
    if any(k.startswith(("layer1.", "conv1.")) for k in keys) and any(k.startswith(("features.", "fc.")) for k in keys):
        return "an insightface iresnet (arcface_torch, e.g. glint360k/ms1mv3 r50/r100) — another recognizer"
    if any(k.startswith(("conv_6_dw.", "conv_23.")) for k in keys):
        return "facexlib's MobileFaceNet, not IR-SE50"
    return "an unknown architecture"


def validate(sd: Dict[str, torch.Tensor], path: str) -> None:
    """Raise ModelFileInvalid unless ``sd`` has exactly the released keys, shapes and float tensors."""
    exp = expected_layout()
    required = {k for k in exp if not k.endswith("num_batches_tracked")}
    missing = sorted(required - sd.keys())
    unexpected = sorted(sd.keys() - exp.keys())
    expected = (
        f"facexlib's {FILE_NAME} with its {len(required)} released tensors (IR-SE50, input_layer/body/output_layer)"
    )
    fix = f"use the released {FILE_NAME} ({SOURCE}) in models/{FOLDER}/"
    if missing or unexpected:
        found = _looks_like(sd, exp)
        problem = (
            f"it holds {found}: {len(sd)} tensors, {len(missing)} released key(s) missing"
            f"{' (e.g. ' + ', '.join(missing[:3]) + ')' if missing else ''}, {len(unexpected)} unexpected"
            f"{' (e.g. ' + ', '.join(unexpected[:3]) + ')' if unexpected else ''}"
        )
        raise ModelFileInvalid(path, problem, expected, fix=fix)
    bad = [(k, tuple(sd[k].shape), exp[k]) for k in sorted(required) if tuple(sd[k].shape) != exp[k]]
    if bad:
        k, got, want = bad[0]
        raise ModelFileInvalid(
            path,
            f"{len(bad)} tensor(s) have other shapes than the release (e.g. '{k}' is {list(got)}, released "
            f"{list(want)}): another width or variant",
            expected,
            fix=fix,
        )
    nonfloat = sorted(k for k in required if not sd[k].is_floating_point())
    if nonfloat:
        raise ModelFileInvalid(
            path, f"tensor '{nonfloat[0]}' is {sd[nonfloat[0]].dtype}, not floating point", expected, fix=fix
        )


def irse50_from_state_dict(sd: Dict[str, torch.Tensor], path: str = "<state dict>") -> IRSE50:
    """Validate ``sd`` (released layout) and build the eval-mode module on its tensors (fp32, CPU)."""
    validate(sd, path)
    state = {k: v.float() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    with torch.device("meta"):
        module = IRSE50()
    for k in module.state_dict():
        if k.endswith("num_batches_tracked"):  # optional in the file; unused by eval maths
            v = sd.get(k)
            state[k] = v.reshape(()).long() if v is not None and v.numel() == 1 else torch.zeros((), dtype=torch.long)
    module.load_state_dict(state, strict=True, assign=True)
    return module.requires_grad_(False).eval()


def load_irse50(path: str, device="cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build :class:`IRSE50` from ``recognition_arcface_ir_se50.pth`` (strict), in eval mode, no grad."""
    sd = read_state_dict(path)
    module = irse50_from_state_dict(sd, path)
    log.debug("IR-SE50 recognizer loaded from %s (%d tensors)", path, len(sd))
    return module.to(device=device, dtype=dtype)

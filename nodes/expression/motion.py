"""LivePortrait's keypoint / expression parameterisation, the editor sliders, the expression type,
relative / absolute motion, retargeting ratios and temporal smoothing. Pure torch.

Parameterisation (LivePortrait, eq. 2): the motion extractor gives, per image, canonical
keypoints ``kp`` [21,3], head pose as 66 bins each for pitch / yaw / roll (degrees =
softmax-expectation * 3 - 97.5), expression deltas ``exp`` [21,3], translation ``t`` [3] and a
scale ``s``. The driving keypoints are ``x = s * (kp @ R + exp) + t`` with ``t_z = 0`` and
``R = (Rz Ry Rx)^T`` (row-vector convention, ``x @ R``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Dict, Optional, Sequence

import torch

from ...core.errors import VisageError

NUM_KP = 21
VISAGE_EXPRESSION = "VISAGE_EXPRESSION"
VISAGE_LIVEPORTRAIT = "VISAGE_LIVEPORTRAIT"


# ----------------------------------------------------------------------------------- pose


def headpose_to_degree(bins: torch.Tensor) -> torch.Tensor:
    """[B,66] logits -> [B] degrees (expectation over 3-degree bins, centred at -97.5 + 1.5)."""
    idx = torch.arange(bins.shape[-1], dtype=torch.float32, device=bins.device)
    return (torch.softmax(bins.float(), dim=-1) * idx).sum(-1) * 3.0 - 97.5


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Degrees [B] each -> [B,3,3] = (Rz(roll) @ Ry(yaw) @ Rx(pitch))^T (LivePortrait's convention)."""
    p, y, r = (torch.as_tensor(a, dtype=torch.float32).reshape(-1) * (math.pi / 180.0) for a in (pitch, yaw, roll))
    b = max(p.shape[0], y.shape[0], r.shape[0])
    p, y, r = p.expand(b), y.expand(b), r.expand(b)
    one, zero = torch.ones_like(p), torch.zeros_like(p)
    rx = torch.stack([one, zero, zero, zero, p.cos(), -p.sin(), zero, p.sin(), p.cos()], -1).reshape(b, 3, 3)
    ry = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], -1).reshape(b, 3, 3)
    rz = torch.stack([r.cos(), -r.sin(), zero, r.sin(), r.cos(), zero, zero, zero, one], -1).reshape(b, 3, 3)
    return (rz @ ry @ rx).transpose(1, 2)


@dataclass(frozen=True)
class KeypointInfo:
    """Motion-extractor output, refined: angles in degrees. Batched over B images."""

    kp: torch.Tensor  # [B,K,3] canonical keypoints
    exp: torch.Tensor  # [B,K,3] expression deltas
    pitch: torch.Tensor  # [B] degrees
    yaw: torch.Tensor  # [B]
    roll: torch.Tensor  # [B]
    scale: torch.Tensor  # [B,1]
    t: torch.Tensor  # [B,3]

    @staticmethod
    def from_raw(raw: Dict[str, torch.Tensor]) -> "KeypointInfo":
        b = raw["kp"].shape[0]
        f = {k: v.float() for k, v in raw.items()}
        return KeypointInfo(
            kp=f["kp"].reshape(b, -1, 3),
            exp=f["exp"].reshape(b, -1, 3),
            pitch=headpose_to_degree(f["pitch"]),
            yaw=headpose_to_degree(f["yaw"]),
            roll=headpose_to_degree(f["roll"]),
            scale=f["scale"].reshape(b, 1),
            t=f["t"].reshape(b, 3),
        )

    def __len__(self):
        return int(self.kp.shape[0])

    def angles(self) -> torch.Tensor:
        return torch.stack([self.pitch, self.yaw, self.roll], -1)

    def rotation(self) -> torch.Tensor:
        return rotation_matrix(self.pitch, self.yaw, self.roll)

    def select(self, i) -> "KeypointInfo":
        sl = slice(i, i + 1) if isinstance(i, int) else i
        return KeypointInfo(**{k: getattr(self, k)[sl] for k in ("kp", "exp", "pitch", "yaw", "roll", "scale", "t")})

    @staticmethod
    def cat(items: Sequence["KeypointInfo"]) -> "KeypointInfo":
        return KeypointInfo(
            **{
                k: torch.cat([getattr(it, k) for it in items], 0)
                for k in ("kp", "exp", "pitch", "yaw", "roll", "scale", "t")
            }
        )

    def to(self, device) -> "KeypointInfo":
        return KeypointInfo(
            **{k: getattr(self, k).to(device) for k in ("kp", "exp", "pitch", "yaw", "roll", "scale", "t")}
        )


def compose(
    kp: torch.Tensor, rot: torch.Tensor, exp: torch.Tensor, scale: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """x = scale * (kp @ R + exp) + t, with t_z = 0. kp/exp [B,K,3], rot [B,3,3], scale [B,1], t [B,3]."""
    txy = torch.cat([t[:, :2], torch.zeros_like(t[:, 2:])], dim=-1)
    return scale[:, :, None] * (kp @ rot + exp) + txy[:, None, :]


def transform_keypoints(info: KeypointInfo) -> torch.Tensor:
    """The image's own driving keypoints x = s (kp R + exp) + t  -> [B,K,3]."""
    return compose(info.kp, info.rotation(), info.exp, info.scale, info.t)


# ----------------------------------------------------------------------------------- expression type


@dataclass(frozen=True)
class Expression:
    """``VISAGE_EXPRESSION``: an expression/pose *offset* applied on top of a face's own parameters.

    exp [21,3] is added to the expression deltas, rotation [3] (pitch, yaw, roll degrees) to the
    head pose, scale multiplies (1 + scale), t [3] adds to the translation. The zero offset leaves a
    face unchanged. Offsets add, scale by a number and interpolate linearly.
    """

    exp: torch.Tensor
    rotation: torch.Tensor
    scale: float = 0.0
    t: Optional[torch.Tensor] = None

    def __post_init__(self):
        if tuple(self.exp.shape) != (NUM_KP, 3):
            raise VisageError(
                "An expression must hold 21x3 keypoint offsets",
                expected="exp [21,3]",
                got=f"shape {tuple(self.exp.shape)}",
                fix="save/load expressions with Visage's nodes",
            )
        if tuple(self.rotation.shape) != (3,):
            raise VisageError(
                "An expression must hold 3 rotation offsets",
                expected="rotation [3]",
                got=f"shape {tuple(self.rotation.shape)}",
            )
        if self.t is None:
            object.__setattr__(self, "t", torch.zeros(3))

    @staticmethod
    def zero() -> "Expression":
        return Expression(torch.zeros(NUM_KP, 3), torch.zeros(3), 0.0, torch.zeros(3))

    def is_zero(self) -> bool:
        return bool((self.exp == 0).all() and (self.rotation == 0).all() and self.scale == 0 and (self.t == 0).all())

    def __add__(self, o: "Expression") -> "Expression":
        return Expression(self.exp + o.exp, self.rotation + o.rotation, self.scale + o.scale, self.t + o.t)

    def scaled(self, w: float) -> "Expression":
        return Expression(self.exp * w, self.rotation * w, self.scale * w, self.t * w)

    def lerp(self, o: "Expression", w: float) -> "Expression":
        """(1-w)*self + w*o."""
        return self.scaled(1.0 - w) + o.scaled(w)

    # -- files (safetensors)
    def save(self, path: str) -> str:
        from safetensors.torch import save_file

        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        save_file(
            {
                "exp": self.exp.float().contiguous().cpu(),
                "rotation": self.rotation.float().contiguous().cpu(),
                "scale": torch.tensor([float(self.scale)]),
                "t": self.t.float().contiguous().cpu(),
            },
            path,
            metadata={"format": "visage_expression", "version": "1", "keypoints": str(NUM_KP)},
        )
        return path

    @staticmethod
    def load(path: str) -> "Expression":
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                keys = set(f.keys())
                tensors = {k: f.get_tensor(k) for k in keys}
        except Exception as e:
            raise VisageError(
                f"'{os.path.basename(path)}' cannot be read as an expression file",
                expected="a .safetensors written by Save Expression",
                got=f"{type(e).__name__}: {str(e)[:160]}",
                fix="pick another file",
            )
        if meta.get("format") != "visage_expression" or not {"exp", "rotation"} <= keys:
            raise VisageError(
                f"'{os.path.basename(path)}' is not a Visage expression file",
                expected="metadata format=visage_expression with tensors exp, rotation, scale, t",
                got=f"metadata {dict(list(meta.items())[:3])}, tensors {sorted(keys)[:5]}",
                fix="pick a file saved by Save Expression",
            )
        return Expression(
            tensors["exp"].float(),
            tensors["rotation"].float(),
            float(tensors.get("scale", torch.zeros(1)).reshape(-1)[0]),
            tensors.get("t", torch.zeros(3)).float(),
        )


# ----------------------------------------------------------------------------------- sliders
# AdvancedLivePortrait's slider meanings: keypoint index, axis (0=x, 1=y, 2=z), coefficient per unit.
# Sign-dependent sliders have a (positive, negative) pair of term lists.
_BLINK = [(11, 1, -0.001), (13, 1, 0.0003), (15, 1, -0.001), (16, 1, 0.0003), (1, 1, -0.00025), (2, 1, 0.00025)]
SLIDER_TERMS = {
    "smile": [
        (20, 1, -0.01),
        (14, 1, -0.02),
        (17, 1, 0.0065),
        (17, 2, 0.003),
        (13, 1, -0.00275),
        (16, 1, -0.00275),
        (3, 1, -0.0035),
        (7, 1, -0.0035),
    ],
    "aaa": [(19, 1, 0.001), (19, 2, 0.0001), (17, 1, -0.0001)],
    "eee": [(20, 2, -0.001), (20, 1, -0.001), (14, 1, -0.001)],
    "woo": [(14, 1, 0.001), (3, 1, -0.0005), (7, 1, -0.0005), (17, 2, -0.0005)],
    "wink": [(11, 1, 0.001), (13, 1, -0.0003), (17, 0, 0.0003), (17, 1, 0.0003), (3, 1, -0.0003)],
    "pupil_x": ([(11, 0, 0.0007), (15, 0, 0.001)], [(11, 0, 0.001), (15, 0, 0.0007)]),
    "pupil_y": [(11, 1, -0.001), (15, 1, -0.001)] + [(k, a, -0.5 * c) for k, a, c in _BLINK],
    "blink": _BLINK,
    "eyebrow": ([(1, 1, 0.001), (2, 1, -0.001)], [(1, 0, -0.001), (2, 0, 0.001), (1, 1, 0.0003), (2, 1, -0.0003)]),
}
# rotation effects: slider -> [(angle index 0=pitch 1=yaw 2=roll, degrees per unit)]
SLIDER_ROTATION = {
    "rotate_pitch": [(0, 1.0)],
    "rotate_yaw": [(1, -1.0)],  # AdvancedLivePortrait flips yaw so + turns to the viewer's right
    "rotate_roll": [(2, 1.0)],
    "aaa": [(0, -0.05)],
    "wink": [(2, -0.1), (1, -0.1)],
}
# (default, min, max, step) as users know them
SLIDERS = {
    "rotate_pitch": (0.0, -20.0, 20.0, 0.5),
    "rotate_yaw": (0.0, -20.0, 20.0, 0.5),
    "rotate_roll": (0.0, -20.0, 20.0, 0.5),
    "blink": (0.0, -20.0, 5.0, 0.5),
    "eyebrow": (0.0, -10.0, 15.0, 0.5),
    "wink": (0.0, 0.0, 25.0, 0.5),
    "pupil_x": (0.0, -15.0, 15.0, 0.5),
    "pupil_y": (0.0, -15.0, 15.0, 0.5),
    "aaa": (0.0, -30.0, 120.0, 1.0),
    "eee": (0.0, -20.0, 15.0, 0.2),
    "woo": (0.0, -20.0, 15.0, 0.2),
    "smile": (0.0, -0.3, 1.3, 0.01),
}
EYE_KPS = (1, 2, 11, 13, 15, 16)
MOUTH_KPS = (14, 17, 19, 20)
SAMPLE_PARTS = ("expression", "rotation", "mouth", "eyes", "all")


def slider_terms(name: str, value: float):
    terms = SLIDER_TERMS.get(name, [])
    if isinstance(terms, tuple):
        terms = terms[0] if value > 0 else terms[1]
    return terms


def slider_expression(values: Dict[str, float]) -> Expression:
    """Slider values (AdvancedLivePortrait meanings) -> an :class:`Expression` offset."""
    unknown = set(values) - set(SLIDERS)
    if unknown:
        raise VisageError("Unknown expression slider(s)", expected=", ".join(SLIDERS), got=", ".join(sorted(unknown)))
    exp = torch.zeros(NUM_KP, 3, dtype=torch.float64)
    rot = torch.zeros(3, dtype=torch.float64)
    for name, v in values.items():
        v = float(v)
        if v == 0.0:
            continue
        for k, a, c in slider_terms(name, v):
            exp[k, a] += c * v
        for a, c in SLIDER_ROTATION.get(name, []):
            rot[a] += c * v
    return Expression(exp.float(), rot.float(), 0.0, torch.zeros(3))


def sample_expression(sample: KeypointInfo, parts: str, ratio: float) -> Expression:
    """Parts copied from a sample face's parameters (AdvancedLivePortrait's sample_parts maths)."""
    if parts not in SAMPLE_PARTS:
        raise VisageError("Unknown sample part", expected=", ".join(SAMPLE_PARTS), got=repr(parts))
    e = sample.exp[0].clone().float()
    e[5, 0:2] = 0.0
    exp = torch.zeros(NUM_KP, 3)
    rot = torch.zeros(3)
    if parts in ("expression", "all"):
        exp = exp + e * ratio
    if parts in ("rotation", "all"):
        rot = sample.angles()[0].float() * ratio
    if parts == "mouth":
        exp[list(MOUTH_KPS)] += e[list(MOUTH_KPS)] * ratio
    if parts == "eyes":
        exp[list(EYE_KPS)] += e[list(EYE_KPS)] * ratio
    return Expression(exp, rot, 0.0, torch.zeros(3))


def edited_keypoints(src: KeypointInfo, offset: Expression, src_ratio: float = 1.0) -> torch.Tensor:
    """Driving keypoints of an edit: s(1+ds) * (kp @ R(angles + dr) + exp*src_ratio + de) + t + dt.

    With the zero offset and src_ratio 1 this is bit-for-bit :func:`transform_keypoints` (src).
    Keypoint 5 keeps its own expression whatever src_ratio is (as AdvancedLivePortrait does).
    """
    dev = src.kp.device
    exp = src.exp
    if src_ratio != 1.0:
        exp = src.exp * src_ratio
        exp[:, 5] = src.exp[:, 5]
    if offset.is_zero():
        return compose(src.kp, src.rotation(), exp, src.scale, src.t)
    r = offset.rotation.to(dev)
    rot = rotation_matrix(src.pitch + r[0], src.yaw + r[1], src.roll + r[2])
    return compose(
        src.kp, rot, exp + offset.exp.to(dev)[None], src.scale * (1.0 + offset.scale), src.t + offset.t.to(dev)[None]
    )


# ----------------------------------------------------------------------------------- transfer

ABSOLUTE_FULL_KPS = (1, 2, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)
LIP_KPS = (6, 12, 14, 17, 19, 20)
EYES_KPS = (11, 13, 15, 16, 18)
REGIONS = ("all", "expression", "pose", "lips", "eyes")


def driven_keypoints(
    src: KeypointInfo, drv: KeypointInfo, drv0: KeypointInfo, mode: str = "relative", region: str = "all"
) -> torch.Tensor:
    """LivePortrait's image-source animation: driving frames ``drv`` [N] (first frame ``drv0``) on a
    one-image source ``src`` -> x_d [N,K,3].

    relative: R = R_d R_d0^T R_s, exp = exp_s + (exp_d - exp_d0), s = s_s * s_d/s_d0, t = t_s + (t_d - t_d0)
    absolute: R = R_d, exp = exp_s with the driving's expression on LivePortrait's keypoint set, t = t_d
    ``region`` limits what moves (expression / pose / lips / eyes; 'all' = everything).
    """
    if mode not in ("relative", "absolute"):
        raise VisageError("Unknown motion mode", expected="relative or absolute", got=repr(mode))
    if region not in REGIONS:
        raise VisageError("Unknown animation region", expected=", ".join(REGIONS), got=repr(region))
    n = len(drv)
    kp = src.kp.expand(n, -1, -1)
    r_s = src.rotation().expand(n, -1, -1)
    r_d = drv.rotation()
    exp_s = src.exp.expand(n, -1, -1)
    pose = region in ("all", "pose")
    if mode == "relative":
        rot = r_d @ drv0.rotation().transpose(1, 2) @ r_s if pose else r_s
        full = exp_s + (drv.exp - drv0.exp)
        if region in ("all", "expression"):
            exp = full
        elif region in ("lips", "eyes"):
            idx = list(LIP_KPS if region == "lips" else EYES_KPS)
            exp = exp_s.clone()
            exp[:, idx] = full[:, idx]
        else:
            exp = exp_s
        scale = src.scale * (drv.scale / drv0.scale) if region == "all" else src.scale.expand(n, -1)
        t = src.t + (drv.t - drv0.t) if pose else src.t.expand(n, -1)
    else:
        rot = r_d if pose else r_s
        exp = exp_s.clone()
        if region in ("all", "expression"):
            idx = list(ABSOLUTE_FULL_KPS)
            exp[:, idx] = drv.exp[:, idx]
            exp[:, 3:5, 1] = drv.exp[:, 3:5, 1]
            exp[:, 5, 2] = drv.exp[:, 5, 2]
            exp[:, 8, 2] = drv.exp[:, 8, 2]
            exp[:, 9, 1:] = drv.exp[:, 9, 1:]
        elif region in ("lips", "eyes"):
            idx = list(LIP_KPS if region == "lips" else EYES_KPS)
            exp[:, idx] = drv.exp[:, idx]
        scale = src.scale.expand(n, -1)
        t = drv.t if pose else src.t.expand(n, -1)
    return compose(kp, rot, exp, scale, t)


# ----------------------------------------------------------------------------------- ratios (68 pts)


def _dist(p, a, b):
    return torch.linalg.vector_norm(p[..., a, :] - p[..., b, :], dim=-1)


def eye_open_ratios(lmk68: torch.Tensor) -> torch.Tensor:
    """[...,68,2] iBUG landmarks -> [...,2] (image-left eye, image-right eye): lid gap / eye width.

    The 68-point analogue of LivePortrait's 203-point ``calc_eye_close_ratio``.
    """
    p = lmk68.float()
    left = (_dist(p, 37, 41) + _dist(p, 38, 40)) / 2 / (_dist(p, 36, 39) + 1e-6)
    right = (_dist(p, 43, 47) + _dist(p, 44, 46)) / 2 / (_dist(p, 42, 45) + 1e-6)
    return torch.stack([left, right], -1)


def lip_open_ratio(lmk68: torch.Tensor) -> torch.Tensor:
    """[...,68,2] -> [...,1] inner-lip gap / mouth width (analogue of ``calc_lip_close_ratio``)."""
    p = lmk68.float()
    return (_dist(p, 62, 66) / (_dist(p, 48, 54) + 1e-6))[..., None]


# ----------------------------------------------------------------------------------- smoothing


def smooth_sequence(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Rauch-Tung-Striebel smoother of a random walk, independently per coordinate. x [N,...].

    strength 0 returns x unchanged; towards 1 the observation/process variance ratio grows
    (``(s/(1-s))^2 * 10``), i.e. roughly a ``sqrt(ratio)``-frame window. Linear in x, so it is
    independent of the units of each coordinate (degrees, keypoint units, scale).
    """
    s = float(strength)
    if s <= 0.0 or x.shape[0] < 2:
        return x.clone()
    s = min(s, 0.999)
    r = (s / (1.0 - s)) ** 2 * 10.0
    q = 1.0
    n = x.shape[0]
    xf = x.double()
    means = [xf[0]]
    covs = [r]
    m, p = xf[0], r
    for k in range(1, n):
        pp = p + q
        g = pp / (pp + r)
        m = m + g * (xf[k] - m)
        p = (1.0 - g) * pp
        means.append(m)
        covs.append(p)
    out = [means[-1]]
    for k in range(n - 2, -1, -1):
        c = covs[k] / (covs[k] + q)
        out.append(means[k] + c * (out[-1] - means[k]))
    out.reverse()
    return torch.stack(out, 0).to(x.dtype)


def smooth_info(info: KeypointInfo, strength: float) -> KeypointInfo:
    """Smooth a driving sequence's pose, expression, scale and translation over time."""
    if strength <= 0 or len(info) < 2:
        return info
    ang = smooth_sequence(info.angles(), strength)
    return replace(
        info,
        exp=smooth_sequence(info.exp, strength),
        pitch=ang[:, 0],
        yaw=ang[:, 1],
        roll=ang[:, 2],
        scale=smooth_sequence(info.scale, strength),
        t=smooth_sequence(info.t, strength),
    )

"""LivePortrait's five networks in plain torch, with the released state-dict layout.

Architecture facts (shapes, key names, the keypoint parameterisation) follow the published
LivePortrait model (KwaiVGI/LivePortrait, ``src/config/models.yaml``) and the safetensors
conversion users keep in ``models/liveportrait/`` (the files ComfyUI-LivePortraitKJ and
ComfyUI-AdvancedLivePortrait load). The code is our own.

* ``AppearanceFeatureExtractor`` (F): image [B,3,256,256] 0..1 -> feature volume [B,32,16,64,64].
* ``MotionExtractor`` (M): ConvNeXt-V2-tiny under ``detector.``; image -> pitch/yaw/roll bins (66),
  translation (3), expression deltas (21x3), scale (1) and canonical keypoints (21x3).
* ``WarpingNetwork`` (W): dense motion (3D hourglass) from the keypoints, warps the volume,
  -> [B,256,64,64] (times the occlusion map).
* ``SPADEDecoder`` (G): -> image [B,3,512,512] (pixel-shuffle x2).
* ``StitchingRetargeting``: three MLPs (stitching 126->65, lip 65->63, eye 66->63).

The released SPADE generator stores its spectrally normalised convolutions as
``weight_orig`` / ``weight_u`` / ``weight_v``; here those layers are plain convolutions and the
loader folds the stored power-iteration vectors into ``weight`` exactly as torch's
``spectral_norm`` does in eval mode (``weight_orig / (u . (W v))``).

Widths are parameters so unit tests can build narrow twins; :data:`RELEASED` is the released
configuration and the loader only accepts files with exactly its keys and shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

NUM_KP = 21
NUM_BINS = 66


# ----------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class AppearanceCfg:
    image_channel: int = 3
    block_expansion: int = 64
    num_down_blocks: int = 2
    max_features: int = 512
    reshape_channel: int = 32
    reshape_depth: int = 16
    num_resblocks: int = 6


@dataclass(frozen=True)
class MotionCfg:
    depths: tuple = (3, 3, 9, 3)
    dims: tuple = (96, 192, 384, 768)
    num_kp: int = NUM_KP
    num_bins: int = NUM_BINS


@dataclass(frozen=True)
class WarpingCfg:
    num_kp: int = NUM_KP
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    reshape_channel: int = 32
    estimate_occlusion_map: bool = True
    dm_block_expansion: int = 32
    dm_max_features: int = 1024
    dm_num_blocks: int = 5
    dm_reshape_depth: int = 16
    dm_compress: int = 4


@dataclass(frozen=True)
class SpadeCfg:
    upscale: int = 2
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    out_channels: int = 64
    spade_hidden: int = 128


@dataclass(frozen=True)
class StitchCfg:
    stitching: tuple = (126, (128, 128, 64), 65)
    lip: tuple = (65, (128, 128, 64), 63)
    eye: tuple = (66, (256, 256, 128, 128, 64), 63)


@dataclass(frozen=True)
class LivePortraitCfg:
    appearance: AppearanceCfg = field(default_factory=AppearanceCfg)
    motion: MotionCfg = field(default_factory=MotionCfg)
    warping: WarpingCfg = field(default_factory=WarpingCfg)
    spade: SpadeCfg = field(default_factory=SpadeCfg)
    stitch: StitchCfg = field(default_factory=StitchCfg)


RELEASED = LivePortraitCfg()


def tiny_cfg() -> LivePortraitCfg:
    """A narrow twin (same structure, same keypoint layout) for fast unit tests."""
    return LivePortraitCfg(
        appearance=AppearanceCfg(
            block_expansion=8, max_features=16, reshape_channel=4, reshape_depth=4, num_resblocks=1
        ),
        motion=MotionCfg(depths=(1, 1, 1, 1), dims=(8, 16, 16, 32)),
        warping=WarpingCfg(
            block_expansion=8,
            max_features=16,
            reshape_channel=4,
            dm_block_expansion=4,
            dm_max_features=16,
            dm_num_blocks=2,
            dm_reshape_depth=4,
            dm_compress=1,
        ),
        spade=SpadeCfg(block_expansion=8, max_features=64, out_channels=8, spade_hidden=8),
        stitch=StitchCfg(),
    )


# ----------------------------------------------------------------------------------- blocks


class SameBlock2d(nn.Module):
    def __init__(self, cin, cout, lrelu=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout, affine=True)
        self.lrelu = lrelu

    def forward(self, x):
        x = self.norm(self.conv(x))
        return F.leaky_relu(x) if self.lrelu else F.relu(x)


class DownBlock2d(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout, affine=True)

    def forward(self, x):
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class ResBlock3d(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv3d(c, c, 3, padding=1)
        self.conv2 = nn.Conv3d(c, c, 3, padding=1)
        self.norm1 = nn.BatchNorm3d(c, affine=True)
        self.norm2 = nn.BatchNorm3d(c, affine=True)

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class DownBlock3d(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm3d(cout, affine=True)

    def forward(self, x):
        return F.avg_pool3d(F.relu(self.norm(self.conv(x))), (1, 2, 2))


class UpBlock3d(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm3d(cout, affine=True)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return F.relu(self.norm(self.conv(x)))


# ----------------------------------------------------------------------------------- F


class AppearanceFeatureExtractor(nn.Module):
    def __init__(self, cfg: AppearanceCfg = AppearanceCfg()):
        super().__init__()
        self.cfg = cfg
        self.first = SameBlock2d(cfg.image_channel, cfg.block_expansion)
        blocks = []
        cout = cfg.block_expansion
        for i in range(cfg.num_down_blocks):
            cin = min(cfg.max_features, cfg.block_expansion * 2**i)
            cout = min(cfg.max_features, cfg.block_expansion * 2 ** (i + 1))
            blocks.append(DownBlock2d(cin, cout))
        self.down_blocks = nn.ModuleList(blocks)
        self.second = nn.Conv2d(cout, cfg.max_features, 1)
        self.resblocks_3d = nn.Sequential()
        for i in range(cfg.num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(cfg.reshape_channel))

    def forward(self, image):
        x = self.first(image)
        for b in self.down_blocks:
            x = b(x)
        x = self.second(x)
        b, c, h, w = x.shape
        x = x.reshape(b, self.cfg.reshape_channel, c // self.cfg.reshape_channel, h, w)
        return self.resblocks_3d(x)


# ----------------------------------------------------------------------------------- M


class ChannelsFirstLayerNorm(nn.Module):
    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        # normalise over channels of NCHW (same maths as ConvNeXt's channels_first LayerNorm)
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class GRN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, c))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, c))

    def forward(self, x):  # x NHWC
        gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2Head(nn.Module):
    def __init__(self, cfg: MotionCfg):
        super().__init__()
        d = cfg.dims
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(nn.Conv2d(3, d[0], 4, stride=4), ChannelsFirstLayerNorm(d[0])))
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(ChannelsFirstLayerNorm(d[i]), nn.Conv2d(d[i], d[i + 1], 2, stride=2))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock(d[i]) for _ in range(cfg.depths[i])]) for i in range(4)
        )
        self.norm = nn.LayerNorm(d[-1], eps=1e-6)
        k = cfg.num_kp
        self.fc_kp = nn.Linear(d[-1], 3 * k)
        self.fc_scale = nn.Linear(d[-1], 1)
        self.fc_pitch = nn.Linear(d[-1], cfg.num_bins)
        self.fc_yaw = nn.Linear(d[-1], cfg.num_bins)
        self.fc_roll = nn.Linear(d[-1], cfg.num_bins)
        self.fc_t = nn.Linear(d[-1], 3)
        self.fc_exp = nn.Linear(d[-1], 3 * k)

    def forward(self, x) -> Dict[str, torch.Tensor]:
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
        x = self.norm(x.mean(dim=(-2, -1)))
        return {
            "pitch": self.fc_pitch(x),
            "yaw": self.fc_yaw(x),
            "roll": self.fc_roll(x),
            "t": self.fc_t(x),
            "exp": self.fc_exp(x),
            "scale": self.fc_scale(x),
            "kp": self.fc_kp(x),
        }


class MotionExtractor(nn.Module):
    def __init__(self, cfg: MotionCfg = MotionCfg()):
        super().__init__()
        self.cfg = cfg
        self.detector = ConvNeXtV2Head(cfg)

    def forward(self, image):
        return self.detector(image)


# ----------------------------------------------------------------------------------- W


def coordinate_grid(d: int, h: int, w: int, ref: torch.Tensor) -> torch.Tensor:
    """[d,h,w,3] (x right, y down, z in), each axis spanning -1..1 over its cells."""

    def axis(n):
        return torch.arange(n, dtype=ref.dtype, device=ref.device) * (2.0 / (n - 1)) - 1.0

    z, y, x = torch.meshgrid(axis(d), axis(h), axis(w), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def keypoint_gaussians(kp: torch.Tensor, grid: torch.Tensor, variance: float = 0.01) -> torch.Tensor:
    """kp [B,K,3], grid [d,h,w,3] -> [B,K,d,h,w] exp(-|g-kp|^2 / (2 var))."""
    diff = grid[None, None] - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * diff.pow(2).sum(-1) / variance)


class Hourglass3d(nn.Module):
    def __init__(self, block_expansion, in_features, num_blocks, max_features):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.down_blocks = nn.ModuleList(
            DownBlock3d(
                in_features if i == 0 else min(max_features, block_expansion * 2**i),
                min(max_features, block_expansion * 2 ** (i + 1)),
            )
            for i in range(num_blocks)
        )
        self.decoder = nn.Module()
        ups = []
        for i in reversed(range(num_blocks)):
            cin = (1 if i == num_blocks - 1 else 2) * min(max_features, block_expansion * 2 ** (i + 1))
            ups.append(UpBlock3d(cin, min(max_features, block_expansion * 2**i)))
        self.decoder.up_blocks = nn.ModuleList(ups)
        self.out_filters = block_expansion + in_features
        self.decoder.conv = nn.Conv3d(self.out_filters, self.out_filters, 3, padding=1)
        self.decoder.norm = nn.BatchNorm3d(self.out_filters, affine=True)

    def forward(self, x):
        skips = [x]
        for blk in self.encoder.down_blocks:
            skips.append(blk(skips[-1]))
        out = skips.pop()
        for blk in self.decoder.up_blocks:
            out = torch.cat([blk(out), skips.pop()], dim=1)
        return F.relu(self.decoder.norm(self.decoder.conv(out)))


class DenseMotionNetwork(nn.Module):
    def __init__(self, cfg: WarpingCfg):
        super().__init__()
        k, c = cfg.num_kp, cfg.dm_compress
        self.num_kp = k
        self.hourglass = Hourglass3d(cfg.dm_block_expansion, (k + 1) * (c + 1), cfg.dm_num_blocks, cfg.dm_max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, k + 1, 7, padding=3)
        self.compress = nn.Conv3d(cfg.reshape_channel, c, 1)
        self.norm = nn.BatchNorm3d(c, affine=True)
        self.occlusion = (
            nn.Conv2d(self.hourglass.out_filters * cfg.dm_reshape_depth, 1, 7, padding=3)
            if cfg.estimate_occlusion_map
            else None
        )

    def forward(self, feature, kp_driving, kp_source):
        b, _, d, h, w = feature.shape
        k = self.num_kp
        feat = F.relu(self.norm(self.compress(feature)))  # [B,c,d,h,w]
        grid = coordinate_grid(d, h, w, kp_source)  # [d,h,w,3]
        # sparse motions: background identity + per-keypoint translation (driving -> source)
        shift = (kp_source - kp_driving)[:, :, None, None, None, :]  # [B,K,1,1,1,3]
        motions = torch.cat([grid[None, None].expand(b, 1, d, h, w, 3), grid[None, None] + shift], dim=1)
        c = feat.shape[1]
        warped = F.grid_sample(
            feat[:, None].expand(b, k + 1, c, d, h, w).reshape(b * (k + 1), c, d, h, w),
            motions.reshape(b * (k + 1), d, h, w, 3),
            align_corners=False,
        )
        warped = warped.reshape(b, k + 1, c, d, h, w)
        heat = keypoint_gaussians(kp_driving, grid) - keypoint_gaussians(kp_source, grid)  # [B,K,d,h,w]
        heat = torch.cat([heat.new_zeros(b, 1, d, h, w), heat], dim=1)[:, :, None]
        x = torch.cat([heat, warped], dim=2).reshape(b, -1, d, h, w)
        pred = self.hourglass(x)
        mask = torch.softmax(self.mask(pred), dim=1)  # [B,K+1,d,h,w]
        deformation = torch.einsum("bkdhwc,bkdhw->bdhwc", motions, mask)
        occlusion = None
        if self.occlusion is not None:
            occlusion = torch.sigmoid(self.occlusion(pred.reshape(b, -1, h, w)))
        return deformation, occlusion


class WarpingNetwork(nn.Module):
    def __init__(self, cfg: WarpingCfg = WarpingCfg()):
        super().__init__()
        self.cfg = cfg
        self.dense_motion_network = DenseMotionNetwork(cfg)
        c = cfg.block_expansion * 2**cfg.num_down_blocks
        self.third = SameBlock2d(cfg.max_features, c, lrelu=True)
        self.fourth = nn.Conv2d(c, c, 1)

    def forward(self, feature_3d, kp_driving, kp_source):
        deformation, occlusion = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        out = F.grid_sample(feature_3d, deformation, align_corners=False)
        b, c, d, h, w = out.shape
        out = self.fourth(self.third(out.reshape(b, c * d, h, w)))
        if occlusion is not None:
            out = out * occlusion
        return out, occlusion


# ----------------------------------------------------------------------------------- G


class SPADE(nn.Module):
    def __init__(self, norm_nc, label_nc, hidden=128):
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x, seg):
        normed = F.instance_norm(x, eps=1e-5)
        if seg.shape[-2:] != x.shape[-2:]:
            seg = F.interpolate(seg, size=x.shape[-2:], mode="nearest")
        a = self.mlp_shared(seg)
        return normed * (1 + self.mlp_gamma(a)) + self.mlp_beta(a)


class SPADEResnetBlock(nn.Module):
    """conv_0 / conv_1 / conv_s hold the *folded* spectral-norm weights (see module docstring)."""

    def __init__(self, fin, fout, label_nc, hidden=128):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmid = min(fin, fout)
        self.conv_0 = nn.Conv2d(fin, fmid, 3, padding=1)
        self.conv_1 = nn.Conv2d(fmid, fout, 3, padding=1)
        if self.learned_shortcut:
            self.conv_s = nn.Conv2d(fin, fout, 1, bias=False)
        self.norm_0 = SPADE(fin, label_nc, hidden)
        self.norm_1 = SPADE(fmid, label_nc, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc, hidden)

    def forward(self, x, seg):
        xs = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return xs + dx


class SPADEDecoder(nn.Module):
    SPECTRAL = ("conv_0", "conv_1", "conv_s")

    def __init__(self, cfg: SpadeCfg = SpadeCfg()):
        super().__init__()
        self.cfg = cfg
        cin = min(cfg.max_features, cfg.block_expansion * 2**cfg.num_down_blocks)
        hid = cfg.spade_hidden
        self.fc = nn.Conv2d(cin, 2 * cin, 3, padding=1)
        for i in range(6):
            setattr(self, f"G_middle_{i}", SPADEResnetBlock(2 * cin, 2 * cin, cin, hid))
        self.up_0 = SPADEResnetBlock(2 * cin, cin, cin, hid)
        self.up_1 = SPADEResnetBlock(cin, cfg.out_channels, cin, hid)
        if cfg.upscale is None or cfg.upscale <= 1:
            self.conv_img = nn.Conv2d(cfg.out_channels, 3, 3, padding=1)
        else:
            self.conv_img = nn.Sequential(nn.Conv2d(cfg.out_channels, 3 * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, feature):
        seg = feature
        x = self.fc(feature)
        for i in range(6):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
        x = self.up_1(F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))


# ----------------------------------------------------------------------------------- S / R


class MLP(nn.Module):
    def __init__(self, input_size: int, hidden: List[int], output_size: int):
        super().__init__()
        layers: List[nn.Module] = []
        prev = input_size
        for hsz in hidden:
            layers += [nn.Linear(prev, hsz), nn.ReLU()]
            prev = hsz
        layers.append(nn.Linear(prev, output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        return self.mlp(x)


class StitchingRetargeting(nn.Module):
    """The three MLPs of ``stitching_retargeting_module.safetensors`` under their released prefixes."""

    def __init__(self, cfg: StitchCfg = StitchCfg()):
        super().__init__()
        self.retarget_shoulder_module = MLP(cfg.stitching[0], list(cfg.stitching[1]), cfg.stitching[2])
        self.retarget_mouth_module = MLP(cfg.lip[0], list(cfg.lip[1]), cfg.lip[2])
        self.retarget_eye_module = MLP(cfg.eye[0], list(cfg.eye[1]), cfg.eye[2])

    def stitching(self, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """x_s, x_d [B,K,3] -> x_d with the stitching correction (K*3 deltas + tx, ty) added."""
        b, k = x_s.shape[:2]
        delta = self.retarget_shoulder_module(torch.cat([x_s.reshape(b, -1), x_d.reshape(b, -1)], dim=1))
        d_exp = delta[:, : 3 * k].reshape(b, k, 3)
        d_txy = delta[:, 3 * k : 3 * k + 2].reshape(b, 1, 2)
        out = x_d + d_exp
        return torch.cat([out[..., :2] + d_txy, out[..., 2:]], dim=-1)

    def retarget_eye(self, x_s: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
        """ratios [B,3] = (source left, source right, driving) eye-open ratios -> delta [B,K,3]."""
        b, k = x_s.shape[:2]
        return self.retarget_eye_module(torch.cat([x_s.reshape(b, -1), ratios], dim=1)).reshape(b, k, 3)

    def retarget_lip(self, x_s: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
        """ratios [B,2] = (source, driving) lip-open ratios -> delta [B,K,3]."""
        b, k = x_s.shape[:2]
        return self.retarget_mouth_module(torch.cat([x_s.reshape(b, -1), ratios], dim=1)).reshape(b, k, 3)


KINDS = {
    "appearance_feature_extractor": (AppearanceFeatureExtractor, "appearance"),
    "motion_extractor": (MotionExtractor, "motion"),
    "warping_module": (WarpingNetwork, "warping"),
    "spade_generator": (SPADEDecoder, "spade"),
    "stitching_retargeting_module": (StitchingRetargeting, "stitch"),
}


def build(kind: str, cfg: LivePortraitCfg = RELEASED) -> nn.Module:
    cls, attr = KINDS[kind]
    return cls(getattr(cfg, attr))

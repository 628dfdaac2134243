"""Host (cv2) warps used on the CPU by the swap's restore path, against the torch twins they replace.

cv2's bilinear weights step in 1/32 of a pixel, the twins' are exact: on smooth content the two agree
to a small fraction of a gray level, and both leave everything outside the face boxes untouched."""

from __future__ import annotations

import math

import numpy as np
import torch

from visage.kernels import reference
from visage.nodes import paste as P
from visage.nodes.swap.pipeline import _warp01


def _smooth(h, w, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, c, h // 16, w // 16, generator=g)
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)


def _mat(angle, scale, tx, ty):
    a = math.radians(angle)
    return np.array([[math.cos(a) * scale, -math.sin(a) * scale, tx], [math.sin(a) * scale, math.cos(a) * scale, ty]])


def test_warp01_equals_the_align_twin():
    frames = torch.stack([_smooth(240, 320, 3, 1), _smooth(240, 320, 3, 2)])
    mats = np.stack([_mat(12, 1.7, -90, -60), _mat(-30, 0.8, 20, -10), _mat(0, 2.5, -300, -200)])
    owners = [0, 1, 1]
    got = _warp01(frames, mats, owners, 96)
    want = reference.align_crops(
        frames, torch.from_numpy(mats.astype(np.float32)), torch.tensor(owners), 96, mean=0.0, std=255.0, layout="NHWC"
    )
    assert got.shape == want.shape == (3, 96, 96, 3)
    assert float((got - want).abs().max()) < 2e-3
    assert float((got - want).abs().mean()) < 2e-4


def test_host_paste_equals_the_paste_twin_and_leaves_the_rest():
    frames = torch.stack([_smooth(200, 260, 3, 3), _smooth(200, 260, 3, 4)])
    crops = torch.stack([_smooth(64, 64, 3, 5), _smooth(64, 64, 3, 6)])
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    w = ((1 - ((xx - 31.5) / 32).abs()) * (1 - ((yy - 31.5) / 32).abs())).clamp(0, 1)  # 0 on the border
    weights = torch.stack([w, w * 0.7])
    mats = torch.from_numpy(np.stack([_mat(10, 0.6, -20, -15), _mat(-20, 0.9, -100, 10)]).astype(np.float32))
    idx = torch.tensor([0, 1])
    got = P.host_paste(frames.clone(), crops, mats, weights, idx)
    want = reference.paste_back(frames, crops, mats, weights, idx)
    assert float((got - want).abs().max()) < 3e-3
    boxes = reference.face_boxes(mats.double().numpy(), 64, 200, 260)
    for b, (x0, y0, x1, y1) in enumerate(boxes):
        inside = torch.zeros(200, 260, dtype=torch.bool)
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
        assert torch.equal(got[b][~inside], frames[b][~inside])  # nothing outside the face's box moves
    assert not torch.equal(got, frames)

"""Test LivePortrait files in the released layout: random weights, released key names and shapes.

``build(models_dir, input_dir)`` writes the five ``models/liveportrait/*.safetensors`` files (fp16,
about 260 MB, generated in bulk with a seeded torch generator: a few seconds) and a small portrait-like
input image for the workflows. Weights are scaled so activations stay finite (conv/linear ~
N(0, 1/fan_in), BatchNorm/LayerNorm identity, SPADE's spectral-norm vectors from a few power
iterations so the folded weights are well conditioned).
"""

from __future__ import annotations

import math
import os
from typing import Dict

import numpy as np
import torch

from visage.nodes.expression import loader as L

NAMES = L.FILES


def released_state_dict(kind: str, seed: int = 0, dtype=torch.float16, layout=None) -> Dict[str, torch.Tensor]:
    layout = layout or L.expected_layout(kind)
    g = torch.Generator().manual_seed(seed * 7919 + sum(map(ord, kind)))
    out: Dict[str, torch.Tensor] = {}
    for key, shape in layout.items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[key] = torch.zeros((), dtype=torch.int64)
            continue
        if leaf in ("running_var",):
            t = torch.ones(shape)
        elif leaf in ("running_mean", "bias", "beta"):
            t = torch.randn(shape, generator=g) * 0.01
        elif leaf == "gamma":
            t = torch.randn(shape, generator=g) * 0.1
        elif leaf in ("weight_u", "weight_v"):
            continue  # filled from weight_orig below
        elif leaf in ("weight", "weight_orig") and len(shape) == 1:
            t = torch.ones(shape)  # norm layers
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            t = torch.randn(shape, generator=g) * (1.0 / math.sqrt(max(fan_in, 1)))
        out[key] = t
    for key in list(out):
        if key.endswith(".weight_orig"):
            base = key[: -len("weight_orig")]
            w = out[key].reshape(out[key].shape[0], -1)
            u = torch.randn(w.shape[0], generator=g)
            for _ in range(3):
                v = torch.nn.functional.normalize(w.T @ u, dim=0)
                u = torch.nn.functional.normalize(w @ v, dim=0)
            out[base + "weight_u"] = u
            out[base + "weight_v"] = v
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in out.items()}


def write_models(folder: str, seed: int = 0, dtype=torch.float16) -> Dict[str, str]:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    paths = {}
    for kind, name in NAMES.items():
        p = os.path.join(folder, name)
        save_file(released_state_dict(kind, seed, dtype), p)
        paths[kind] = p
    return paths


def portrait(size=(384, 320), seed=0) -> np.ndarray:
    """A smooth synthetic 'portrait' (uint8 RGB): skin-toned ellipse with eyes and mouth on a gradient."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([60 + 80 * xx / w, 90 + 60 * yy / h, np.full_like(xx, 140)], -1)
    cx, cy, rx, ry = w / 2, h * 0.48, w * 0.22, h * 0.3
    face = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    img[face] = (210, 170, 140)
    for ex in (cx - rx * 0.4, cx + rx * 0.4):
        eye = ((xx - ex) / (rx * 0.16)) ** 2 + ((yy - (cy - ry * 0.2)) / (ry * 0.06)) ** 2 <= 1
        img[eye] = (40, 30, 30)
    mouth = ((xx - cx) / (rx * 0.4)) ** 2 + ((yy - (cy + ry * 0.45)) / (ry * 0.07)) ** 2 <= 1
    img[mouth] = (150, 50, 60)
    return np.clip(img, 0, 255).astype(np.uint8)


def build(models_dir: str, input_dir: str) -> None:
    write_models(os.path.join(models_dir, "liveportrait"))
    import cv2

    os.makedirs(input_dir, exist_ok=True)
    img = portrait()
    cv2.imwrite(os.path.join(input_dir, "visage_expression_source.png"), img[..., ::-1])
    cv2.imwrite(
        os.path.join(input_dir, "visage_expression_driving.png"), np.ascontiguousarray(np.flip(img, 1))[..., ::-1]
    )


def make_landmark203(path: str, seed: int = 0) -> str:
    """A test ONNX with the signature of LivePortrait's landmark.onnx: input ``input`` [1,3,224,224] (RGB 0..1),
    three outputs, the third [1,406] = 203 crop-relative (x, y) in 0..1 (random weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def gemm(name, n):
        w = numpy_helper.from_array(rng.normal(0, 2.0, (n, 3)).astype(np.float32), f"{name}_w")
        b = numpy_helper.from_array(rng.normal(0, 0.5, (n,)).astype(np.float32), f"{name}_b")
        inits.extend([w, b])
        nodes.append(helper.make_node("Gemm", ["flat", f"{name}_w", f"{name}_b"], [f"{name}_lin"], transB=1))

    nodes.append(helper.make_node("GlobalAveragePool", ["input"], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    for name, n in (("out0", 214), ("out1", 2), ("out2", 406)):
        gemm(name, n)
        nodes.append(helper.make_node("Sigmoid", [f"{name}_lin"], [name]))
    graph = helper.make_graph(
        nodes,
        "landmark203",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, k])
            for n, k in (("out0", 214), ("out1", 2), ("out2", 406))
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save(model, path)
    return path

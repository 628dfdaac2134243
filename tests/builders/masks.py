"""Test models of the face-mask family (random weights, released signatures / key names).

* facexlib's ``parsing_bisenet.pth``: a plain state dict of ``BiSeNet(num_class=19)``; the key layout
  is written out here from facexlib/parsing/{bisenet,resnet}.py, independently of nodes/face/parsing.py.
* ``bisenet_resnet_18.onnx`` (facefusion's signature: ``input`` [1,3,512,512] -> [1,19,512,512]): the
  random-weight BiSeNet exported with torch.onnx (a real graph: convs, resizes, global pools).
* a *controlled* parser ONNX of the same signature: a 1x1 conv whose logits are
  ``2 p_c . x - |p_c|^2`` for one colour prototype ``p_c`` per class, so every pixel is labelled with the
  class whose colour it is nearest to (the test paints crops with class colours and knows the answer).
"""

from __future__ import annotations

import os
from typing import Dict, Tuple

import numpy as np
import torch

NUM_CLASSES = 19
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def bisenet_layout(num_classes: int = NUM_CLASSES, num_batches_tracked: bool = True) -> Dict[str, Tuple[int, ...]]:
    out: Dict[str, Tuple[int, ...]] = {}

    def bn(p, c):
        for n in ("weight", "bias", "running_mean", "running_var"):
            out[f"{p}.{n}"] = (c,)
        if num_batches_tracked:
            out[f"{p}.num_batches_tracked"] = ()

    def cbr(p, cin, cout, k):
        out[f"{p}.conv.weight"] = (cout, cin, k, k)
        bn(f"{p}.bn", cout)

    r = "cp.resnet"
    out[f"{r}.conv1.weight"] = (64, 3, 7, 7)
    bn(f"{r}.bn1", 64)
    for i, (a, b) in enumerate(((64, 64), (64, 128), (128, 256), (256, 512)), 1):
        for j in range(2):
            p = f"{r}.layer{i}.{j}"
            cin = a if j == 0 else b
            out[f"{p}.conv1.weight"] = (b, cin, 3, 3)
            bn(f"{p}.bn1", b)
            out[f"{p}.conv2.weight"] = (b, b, 3, 3)
            bn(f"{p}.bn2", b)
            if j == 0 and i > 1:
                out[f"{p}.downsample.0.weight"] = (b, a, 1, 1)
                bn(f"{p}.downsample.1", b)
    for name, cin in (("arm16", 256), ("arm32", 512)):
        cbr(f"cp.{name}.conv", cin, 128, 3)
        out[f"cp.{name}.conv_atten.weight"] = (128, 128, 1, 1)
        bn(f"cp.{name}.bn_atten", 128)
    cbr("cp.conv_head32", 128, 128, 3)
    cbr("cp.conv_head16", 128, 128, 3)
    cbr("cp.conv_avg", 512, 128, 1)
    cbr("ffm.convblk", 256, 256, 1)
    out["ffm.conv1.weight"] = (64, 256, 1, 1)
    out["ffm.conv2.weight"] = (256, 64, 1, 1)
    for name, cin, mid in (("conv_out", 256, 256), ("conv_out16", 128, 64), ("conv_out32", 128, 64)):
        cbr(f"{name}.conv", cin, mid, 3)
        out[f"{name}.conv_out.weight"] = (num_classes, mid, 1, 1)
    return out


def bisenet_state_dict(seed: int = 0, num_classes: int = NUM_CLASSES, num_batches_tracked: bool = True):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in bisenet_layout(num_classes, num_batches_tracked).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1000)
        elif k.endswith("running_mean"):
            sd[k] = torch.randn(shape, generator=g) * 0.1
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) * 1.5 + 0.5
        elif k.endswith(".bias"):
            sd[k] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:
            sd[k] = torch.rand(shape, generator=g) * 0.6 + 0.4
        else:
            fan_in = int(np.prod(shape[1:]))
            sd[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return sd


def make_bisenet_pth(path: str, seed: int = 0, **kw) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(bisenet_state_dict(seed, **kw), path)
    return path


def make_bisenet_onnx(path: str, seed: int = 0) -> str:
    """facefusion's bisenet signature: the random-weight BiSeNet exported (batch axis fixed at 1)."""
    import warnings

    from visage.nodes.face.parsing import bisenet_from_state_dict

    m = bisenet_from_state_dict(bisenet_state_dict(seed))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            m,
            torch.zeros(1, 3, 512, 512),
            path,
            input_names=["input"],
            output_names=["output"],
            dynamo=False,
            opset_version=17,
        )
    return path


# class colours (RGB 0..1) for the controlled parser: distinct, far apart
def class_colours() -> np.ndarray:
    rng = np.random.default_rng(7)
    cols = [np.array([0.0, 0.0, 0.0])]
    while len(cols) < NUM_CLASSES:
        c = rng.uniform(0.0, 1.0, 3)
        if min(np.abs(c - p).max() for p in cols) > 0.25:
            cols.append(c)
    return np.stack(cols).astype(np.float32)


def make_controlled_parser_onnx(path: str, size: int = 512, batch=1) -> str:
    """A parser of the released signature whose label of a pixel is the class of the nearest colour."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    protos = (class_colours() - IMAGENET_MEAN) / IMAGENET_STD  # prototypes in the model's input space
    w = (2.0 * protos)[:, :, None, None].astype(np.float32)
    b = -(protos**2).sum(1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["output"], kernel_shape=[1, 1])],
        "controlled_parser",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, NUM_CLASSES, size, size])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save(model, path)
    return path


def paint_classes(labels: np.ndarray) -> np.ndarray:
    """[N,S,S] class indices -> [N,S,S,3] RGB crops in the class colours."""
    return class_colours()[labels]


OCCLUDER_RGB = (0.05, 0.95, 0.1)  # the colour the controlled occluder calls "covering the face"


def make_controlled_xseg_onnx(path: str, batch=1) -> str:
    """facefusion's XSeg signature (``input`` [1,256,256,3] BGR 0..1 -> [1,256,256,1]): 0 where a pixel
    has :data:`OCCLUDER_RGB` (squared distance < 0.05), 1 elsewhere (a steep sigmoid between)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    bgr = np.array(OCCLUDER_RGB[::-1], np.float32).reshape(1, 1, 1, 3)
    inits = [
        numpy_helper.from_array(bgr, "c"),
        numpy_helper.from_array(np.array([3], np.int64), "axes"),
        numpy_helper.from_array(np.array(0.05, np.float32), "thr"),
        numpy_helper.from_array(np.array(200.0, np.float32), "k"),
    ]
    nodes = [
        helper.make_node("Sub", ["input", "c"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceSum", ["d2", "axes"], ["s"], keepdims=1),
        helper.make_node("Sub", ["s", "thr"], ["z0"]),
        helper.make_node("Mul", ["z0", "k"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "controlled_xseg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 256, 256, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 256, 256, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save(model, path)
    return path


def make_gpen_onnx(path: str, size: int = 512, seed: int = 0, channels: int = 8) -> str:
    """GPEN-BFR's signature (``input`` [1,3,S,S] RGB -1..1 -> [1,3,S,S] -1..1): a small random conv net
    (down-sampling conv, resize back up, skip connection, tanh)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    C = channels

    def w(*shape, gain=1.0):
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * gain / np.sqrt(np.prod(shape[1:]))).astype(np.float32), f"w{len(inits)}"
        )

    inits = []
    w1 = w(C, 3, 3, 3)
    inits.append(w1)
    w2 = w(3, C, 3, 3, gain=0.5)
    inits.append(w2)
    inits += [
        numpy_helper.from_array(np.zeros(0, np.float32), "roi"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", w1.name], ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["a"], ["b"], alpha=0.2),
        helper.make_node("Resize", ["b", "roi", "scales"], ["c"], mode="linear"),
        helper.make_node("Conv", ["c", w2.name], ["d"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["d", "input"], ["e"]),
        helper.make_node("Tanh", ["e"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gpen_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, size, size])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save(model, path)
    return path


def build(models_dir: str, input_dir: str) -> None:
    """Mask and GPEN models for the real-ComfyUI tier (models/face_parsing, models/facexlib,
    models/facerestore_models)."""
    fp = os.path.join(models_dir, "face_parsing")
    if not os.path.exists(os.path.join(fp, "bisenet_resnet_18.onnx")):
        make_controlled_parser_onnx(os.path.join(fp, "bisenet_resnet_18.onnx"))
    if not os.path.exists(os.path.join(fp, "xseg_1.onnx")):
        make_controlled_xseg_onnx(os.path.join(fp, "xseg_1.onnx"))
    fx = os.path.join(models_dir, "facexlib", "parsing_bisenet.pth")
    if not os.path.exists(fx):
        make_bisenet_pth(fx, seed=0)
    gp = os.path.join(models_dir, "facerestore_models", "GPEN-BFR-512.onnx")
    if not os.path.exists(gp):
        make_gpen_onnx(gp, 512)

"""Test models of the swap family, in the released formats, with random weights.

* ``inswapper_128.onnx`` (insightface layout: inputs ``target`` [1,3,128,128] and ``source`` [1,512],
  output [1,3,128,128] in 0..1, the 512x512 emap as the LAST initializer, batch 1 baked into the
  Reshape constants as in the released export) — also at 256 for the reswapper_256 layout;
* ``hyperswap_1a_256.onnx`` (FaceFusion layout: inputs ``source`` [1,512], ``target`` [1,3,256,256];
  outputs ``output`` [1,3,256,256] in -1..1 and ``mask`` [1,1,256,256]);
* a tiny RestoreFormer ``.pth`` that spandrel recognises (face restoration, "FaceSR"), and a tiny
  Real-ESRGAN-Compact ``.pth`` (an upscaler: the wrong architecture for face restoration).

``build(models_dir, input_dir)`` lays them out where ComfyUI / ReActor users keep them:
models/insightface/inswapper_128.onnx, models/hyperswap/hyperswap_1a_256.onnx,
models/reswapper/reswapper_256.onnx, models/facerestore_models/RestoreFormer.pth (+ an upscaler
models/facerestore_models/not_a_face_model.pth for the bad-input test).
"""

from __future__ import annotations

import os

import numpy as np


def _rng(seed):
    return np.random.default_rng(seed)


def _t(name, arr):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name)


def _i64(name, vals):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(vals, dtype=np.int64), name)


def _conv_w(rng, cout, cin, k, gain=1.0):
    return rng.standard_normal((cout, cin, k, k)).astype(np.float32) * gain / np.sqrt(cin * k * k)


def make_inswapper(path: str, size: int = 128, channels: int = 8, seed: int = 0) -> str:
    """An insightface-layout swapper (inswapper_128 / reswapper_128 / reswapper_256 signature)."""
    import onnx
    from onnx import TensorProto, helper

    rng = _rng(seed)
    C = channels
    inits, nodes = [], []
    inits += [
        _t("c1_w", _conv_w(rng, C, 3, 7)),
        _t("c1_b", rng.standard_normal(C) * 0.1),
        _t("c2_w", _conv_w(rng, C, C, 3)),
        _t("c2_b", rng.standard_normal(C) * 0.1),
        _t("s1_w", _conv_w(rng, C, C, 3)),
        _t("s1_b", np.zeros(C)),
        _t("in_scale", np.ones(C)),
        _t("in_bias", np.zeros(C)),
        _t("g_w", rng.standard_normal((C, 512)) * 0.5),
        _t("g_b", np.ones(C)),
        _t("b_w", rng.standard_normal((C, 512)) * 0.5),
        _t("b_b", np.zeros(C)),
        _t("up_w", _conv_w(rng, 3, C, 3)),
        _t("up_b", rng.standard_normal(3) * 0.1),
        _i64("pads7", [0, 0, 3, 3, 0, 0, 3, 3]),
        _i64("style_shape", [1, C, 1, 1]),
        _t("roi", np.zeros(0)),
        _t("scales", np.array([1, 1, 2, 2])),
        _t("one", np.array(1.0)),
        _t("two", np.array(2.0)),
    ]
    nodes += [
        helper.make_node("Pad", ["target", "pads7"], ["p0"], mode="reflect"),
        helper.make_node("Conv", ["p0", "c1_w", "c1_b"], ["x1"], kernel_shape=[7, 7]),
        helper.make_node("LeakyRelu", ["x1"], ["x2"], alpha=0.2),
        helper.make_node(
            "Conv", ["x2", "c2_w", "c2_b"], ["x3"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("LeakyRelu", ["x3"], ["x4"], alpha=0.2),
        # one style block: conv -> instance norm -> AdaIN from the source latent -> relu, residual
        helper.make_node("Conv", ["x4", "s1_w", "s1_b"], ["s1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("InstanceNormalization", ["s1", "in_scale", "in_bias"], ["s2"], epsilon=1e-6),
        helper.make_node("Gemm", ["source", "g_w", "g_b"], ["gam"], transB=1),
        helper.make_node("Reshape", ["gam", "style_shape"], ["gam4"]),
        helper.make_node("Gemm", ["source", "b_w", "b_b"], ["bet"], transB=1),
        helper.make_node("Reshape", ["bet", "style_shape"], ["bet4"]),
        helper.make_node("Mul", ["s2", "gam4"], ["s3"]),
        helper.make_node("Add", ["s3", "bet4"], ["s4"]),
        helper.make_node("Relu", ["s4"], ["s5"]),
        helper.make_node("Add", ["s5", "x4"], ["x5"]),
        helper.make_node(
            "Resize",
            ["x5", "roi", "scales"],
            ["x6"],
            mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel",
        ),
        helper.make_node("Conv", ["x6", "up_w", "up_b"], ["x7"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["x7"], ["x8"]),
        helper.make_node("Add", ["x8", "one"], ["x9"]),
        helper.make_node("Div", ["x9", "two"], ["output"]),
    ]
    emap = rng.standard_normal((512, 512)).astype(np.float32) / np.sqrt(512)
    inits.append(_t("emap", emap))  # LAST initializer, as in the released file
    graph = helper.make_graph(
        nodes,
        "inswapper",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, size, size]),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, size, size])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save(model, path)
    return path


def make_hyperswap(path: str, size: int = 256, channels: int = 8, seed: int = 1) -> str:
    """A HyperSwap-layout swapper (hyperswap_1a/1b/1c_256 signature: source first, output + mask)."""
    import onnx
    from onnx import TensorProto, helper

    rng = _rng(seed)
    C = channels
    inits = [
        _t("c1_w", _conv_w(rng, C, 3, 3)),
        _t("c1_b", rng.standard_normal(C) * 0.1),
        _t("in_scale", np.ones(C)),
        _t("in_bias", np.zeros(C)),
        _t("g_w", rng.standard_normal((C, 512)) * 0.5),
        _t("g_b", np.ones(C)),
        _t("b_w", rng.standard_normal((C, 512)) * 0.5),
        _t("b_b", np.zeros(C)),
        _t("o_w", _conv_w(rng, 3, C, 3)),
        _t("o_b", np.zeros(3)),
        _t("m_w", _conv_w(rng, 1, C, 3)),
        _t("m_b", np.ones(1)),
        _i64("style_shape", [1, C, 1, 1]),
        _t("roi", np.zeros(0)),
        _t("scales", np.array([1, 1, 2, 2])),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["target", "c1_w", "c1_b"], ["x1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("LeakyRelu", ["x1"], ["x2"], alpha=0.2),
        helper.make_node("InstanceNormalization", ["x2", "in_scale", "in_bias"], ["x3"], epsilon=1e-5),
        helper.make_node("Gemm", ["source", "g_w", "g_b"], ["gam"], transB=1),
        helper.make_node("Reshape", ["gam", "style_shape"], ["gam4"]),
        helper.make_node("Gemm", ["source", "b_w", "b_b"], ["bet"], transB=1),
        helper.make_node("Reshape", ["bet", "style_shape"], ["bet4"]),
        helper.make_node("Mul", ["x3", "gam4"], ["x4"]),
        helper.make_node("Add", ["x4", "bet4"], ["x5"]),
        helper.make_node("Relu", ["x5"], ["x6"]),
        helper.make_node(
            "Resize",
            ["x6", "roi", "scales"],
            ["x7"],
            mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel",
        ),
        helper.make_node("Conv", ["x7", "o_w", "o_b"], ["x8"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["x8"], ["output"]),
        helper.make_node("Conv", ["x7", "m_w", "m_b"], ["m1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["m1"], ["mask"]),
    ]
    graph = helper.make_graph(
        nodes,
        "hyperswap",
        [
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512]),
            helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, size, size]),
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, size, size]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, size, size]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save(model, path)
    return path


def make_restoreformer(path: str, seed: int = 2) -> str:
    """A tiny RestoreFormer state dict (released key names; spandrel infers the sizes from it)."""
    import torch
    from spandrel.architectures.RestoreFormer import RestoreFormer

    torch.manual_seed(seed)
    net = RestoreFormer(
        n_embed=32,
        embed_dim=32,
        ch=32,
        out_ch=3,
        ch_mult=(1, 1, 1, 1, 1, 1),
        num_res_blocks=1,
        attn_resolutions=(16,),
        dropout=0.0,
        in_channels=3,
        resolution=512,
        z_channels=32,
        double_z=False,
        enable_mid=True,
        head_size=8,
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def make_upscaler(path: str, seed: int = 3) -> str:
    """A tiny Real-ESRGAN Compact (SRVGGNetCompact) upscaler: not a face-restoration model."""
    import torch
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def build(models_dir: str, input_dir: str) -> None:
    make_inswapper(os.path.join(models_dir, "insightface", "inswapper_128.onnx"), 128)
    make_inswapper(os.path.join(models_dir, "reswapper", "reswapper_256.onnx"), 256, seed=5)
    make_hyperswap(os.path.join(models_dir, "hyperswap", "hyperswap_1a_256.onnx"), 256)
    make_restoreformer(os.path.join(models_dir, "facerestore_models", "RestoreFormer.pth"))
    make_upscaler(os.path.join(models_dir, "facerestore_models", "not_a_face_model.pth"))

"""Tiny face-analysis ONNX models with the released insightface signatures (random weights).

* SCRFD detector like det_10g / scrfd_10g_bnkps: input ``input.1`` [1,3,?,?]; 9 outputs —
  scores [K,1], boxes [K,4], keypoints [K,10] for strides 8/16/32 with 2 anchors per cell
  (``batched=True`` gives the [1,K,C] layout some exports use).
* ArcFace recognizer like glintr100 / w600k_r50: ``input.1`` [N,3,112,112] -> [N,512].
* 2d106det: ``data`` [N,3,192,192] -> ``fc1`` [N,212]; 1k3d68: [N,3,192,192] -> [N,3309];
  genderage: ``data`` [N,3,96,96] -> ``fc1`` [N,3].
* facexlib's IR-SE50 ``recognition_arcface_ir_se50.pth`` (:func:`make_irse50`): a torch state dict with
  the released keys and shapes (random weights, non-trivial BatchNorm statistics).
The weights are random but deterministic; the detector's heads are shaped so a handful of boxes
pass the 0.5 threshold on natural photos.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


class _G:
    def __init__(self, seed):
        self.rng = np.random.RandomState(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, p):
        self.n += 1
        return f"{p}_{self.n}"

    def const(self, arr, p="w"):
        nm = self.name(p)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), nm))
        return nm

    def op(self, op, inputs, out=None, name=None, **attrs):
        out = out or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=name or self.name(op), **attrs))
        return out

    def conv(self, x, cin, cout, k, s, scale=None, bias=0.0, p=0):
        scale = scale if scale is not None else 1.0 / np.sqrt(cin * k * k)
        w = (self.rng.randn(cout, cin, k, k) * scale).astype(np.float32)
        b = np.full((cout,), bias, np.float32) + (self.rng.randn(cout) * 0.05).astype(np.float32)
        return self.op(
            "Conv", [x, self.const(w), self.const(b)], kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p]
        )


def make_scrfd(path, seed=0, batched=False, fixed_size=None, num_outputs=9):
    g = _G(seed)
    hw = list(fixed_size) if fixed_size else ["?", "?"]
    x = "input.1"
    # stride-8 features from an 8x8 patch embedding, then two stride-2 convs
    f8 = g.op("Relu", [g.conv(x, 3, 8, 8, 8, scale=0.05)])
    f16 = g.op("Relu", [g.conv(f8, 8, 8, 2, 2, scale=0.3)])
    f32 = g.op("Relu", [g.conv(f16, 8, 8, 2, 2, scale=0.3)])
    use_kps = num_outputs == 9
    scores, boxes, kpss = [], [], []
    for i, f in enumerate((f8, f16, f32)):
        s = g.op("Sigmoid", [g.conv(f, 8, 2, 1, 1, scale=0.8, bias=-2.3 + 0.3 * i)])
        b = g.op("Mul", [g.op("Sigmoid", [g.conv(f, 8, 8, 1, 1, scale=0.5)]), g.const(np.array(3.0, np.float32))])
        k = g.conv(f, 8, 20, 1, 1, scale=0.3)
        for lst, t, c in ((scores, s, 1), (boxes, b, 4), (kpss, k, 10)):
            tt = g.op("Transpose", [t], perm=[0, 2, 3, 1])
            shape = [1, -1, c] if batched else [-1, c]
            lst.append(g.op("Reshape", [tt, g.const(np.array(shape, np.int64), "shape")]))
    outs = scores + boxes + (kpss if use_kps else [])
    names = [f"out{i}" for i in range(len(outs))]
    for o, nm in zip(outs, names):
        g.nodes.append(helper.make_node("Identity", [o], [nm], name=g.name("Identity")))
    out_vi = []
    for i, nm in enumerate(names):
        c = (1, 4, 10)[i // 3]
        out_vi.append(helper.make_tensor_value_info(nm, TensorProto.FLOAT, [1, "K", c] if batched else ["K", c]))
    graph = helper.make_graph(
        g.nodes, "scrfd_test", [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3] + hw)], out_vi, g.inits
    )
    _save(graph, path)


def _backbone(g, x, size, cout_flat, out_name, tanh=False, sub_mul=False):
    if sub_mul:  # graphs that normalise themselves (insightface checks the first node names)
        x = g.op("Sub", [x, g.const(np.array(127.5, np.float32))], name="Sub_0")
        x = g.op("Mul", [x, g.const(np.array(1 / 128.0, np.float32))], name="Mul_1")
    h = g.op("Relu", [g.conv(x, 3, 8, 4, 4, scale=0.02 if not sub_mul else 0.1)])
    h = g.op("Relu", [g.conv(h, 8, 16, 4, 4, scale=0.2)])
    flat = g.op("Flatten", [h], axis=1)
    d = 16 * (size // 16) * (size // 16)
    w = (g.rng.randn(cout_flat, d) / np.sqrt(d)).astype(np.float32)
    y = g.op("Gemm", [flat, g.const(w), g.const(np.zeros(cout_flat, np.float32))], transB=1)
    if tanh:
        y = g.op("Tanh", [y])
    g.nodes.append(helper.make_node("Identity", [y], [out_name], name=g.name("Identity")))


def make_per_face(path, size, out_dim, in_name="data", out_name="fc1", seed=1, tanh=False, sub_mul=False):
    g = _G(seed)
    _backbone(g, in_name, size, out_dim, out_name, tanh=tanh, sub_mul=sub_mul)
    graph = helper.make_graph(
        g.nodes,
        "face_test",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["None", 3, size, size])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["None", out_dim])],
        g.inits,
    )
    _save(graph, path)


def fixed_batch_copy(src, dst):
    """``src`` ONNX with its input and output batch axes declared 1 (a fixed-batch export); the graph
    itself is unchanged."""
    m = onnx.load(src)
    for v in list(m.graph.input) + list(m.graph.output):
        d = v.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_value = 1
    onnx.save(m, dst)
    return dst


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="visage-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path)


def build_face_pack(
    pack_dir,
    with_recognizer=True,
    with_landmarks=True,
    with_genderage=True,
    batched_detector=False,
    detector_name="det_10g.onnx",
    recognizer_name="w600k_r50.onnx",
    sub_mul_recognizer=False,
    seed=0,
):
    """Write a buffalo_l-like pack of tiny models into ``pack_dir``; returns the folder."""
    os.makedirs(pack_dir, exist_ok=True)
    make_scrfd(os.path.join(pack_dir, detector_name), seed=seed, batched=batched_detector)
    if with_recognizer:
        make_per_face(
            os.path.join(pack_dir, recognizer_name),
            112,
            512,
            in_name="input.1",
            out_name="683",
            seed=seed + 1,
            sub_mul=sub_mul_recognizer,
        )
    if with_landmarks:
        make_per_face(os.path.join(pack_dir, "2d106det.onnx"), 192, 212, seed=seed + 2, tanh=True)
        make_per_face(os.path.join(pack_dir, "1k3d68.onnx"), 192, 3309, seed=seed + 3, tanh=True)
    if with_genderage:
        make_per_face(os.path.join(pack_dir, "genderage.onnx"), 96, 3, seed=seed + 4, tanh=True)
    return pack_dir


# ----------------------------------------------------------------------------- IR-SE50 (.pth)


def irse50_layout(num_batches_tracked=True):
    """Key -> shape of facexlib's ``Backbone(50, mode='ir_se')`` state dict, in the released order.

    Written out from facexlib/recognition/arcface_arch.py, independently of nodes/face/irse50.py so
    the tests cross-check the two.
    """
    out = {}

    def bn(prefix, c):
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.{name}"] = (c,)
        if num_batches_tracked:
            out[f"{prefix}.num_batches_tracked"] = ()

    out["input_layer.0.weight"] = (64, 3, 3, 3)
    bn("input_layer.1", 64)
    out["input_layer.2.weight"] = (64,)
    bn("output_layer.0", 512)
    out["output_layer.3.weight"] = (512, 512 * 7 * 7)
    out["output_layer.3.bias"] = (512,)
    bn("output_layer.4", 512)
    n, cin = 0, 64
    for depth, units in ((64, 3), (128, 4), (256, 14), (512, 3)):
        for _ in range(units):  # the first unit of a stage has stride 2: no weight shows it
            p = f"body.{n}"
            if cin != depth:
                out[f"{p}.shortcut_layer.0.weight"] = (depth, cin, 1, 1)
                bn(f"{p}.shortcut_layer.1", depth)
            bn(f"{p}.res_layer.0", cin)
            out[f"{p}.res_layer.1.weight"] = (depth, cin, 3, 3)
            out[f"{p}.res_layer.2.weight"] = (depth,)
            out[f"{p}.res_layer.3.weight"] = (depth, depth, 3, 3)
            bn(f"{p}.res_layer.4", depth)
            out[f"{p}.res_layer.5.fc1.weight"] = (depth // 16, depth, 1, 1)
            out[f"{p}.res_layer.5.fc2.weight"] = (depth, depth // 16, 1, 1)
            n, cin = n + 1, depth
    return out


def irse50_state_dict(seed=0, num_batches_tracked=True):
    """Random weights in the released layout; scaled so 24 residual units keep activations O(1)."""
    g = torch.Generator().manual_seed(seed)

    def rand(shape, scale=1.0, offset=0.0):
        return torch.randn(shape, generator=g) * scale + offset

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=g) * (hi - lo) + lo

    sd = {}
    for k, shape in irse50_layout(num_batches_tracked).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(int(torch.randint(1000, 100000, (), generator=g)))
        elif k.endswith("running_mean"):
            sd[k] = rand(shape, 0.1)
        elif k.endswith("running_var"):
            sd[k] = uniform(shape, 0.5, 2.0)
        elif len(shape) == 1 and k.endswith(".bias"):
            sd[k] = rand(shape, 0.1)
        elif len(shape) == 1:  # BatchNorm gamma or PReLU slope
            last_bn = k.endswith("res_layer.4.weight")  # closes each residual branch: keep it small
            is_prelu = k.endswith(("res_layer.2.weight", "input_layer.2.weight"))
            sd[k] = uniform(shape, 0.1, 0.3) if (last_bn or is_prelu) else uniform(shape, 0.7, 1.3)
        else:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            sd[k] = rand(shape, (2.0 / fan_in) ** 0.5)
    return sd


def make_irse50(path, seed=0, num_batches_tracked=True):
    """Write a random-weight ``recognition_arcface_ir_se50.pth`` (plain state dict, torch.save)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(irse50_state_dict(seed, num_batches_tracked), path)
    return path


# ----------------------------------------------------------------------------- comfy tier


def _shared_fixture(*parts):
    here = os.path.dirname(os.path.abspath(__file__))
    p = os.path.normpath(os.path.join(here, "..", "..", "..", "shared", "fixtures", *parts))
    return p if os.path.exists(p) else None


def build(models_dir, input_dir):
    """Face models for the real-ComfyUI tier: a test-built pack `visage_test` (insightface signatures)
    and, when ../shared/fixtures is present, a pack `fixtures_real` of the real small models."""
    packs = os.path.join(models_dir, "insightface", "models")
    build_face_pack(os.path.join(packs, "visage_test"))
    real = _shared_fixture("models")
    if real:
        d = os.path.join(packs, "fixtures_real")
        os.makedirs(d, exist_ok=True)
        for f in ("det_500m.onnx", "mobileface_paddle_128d.onnx", "pfld_68pt.onnx"):
            dst = os.path.join(d, f)
            if not os.path.exists(dst):
                os.symlink(os.path.join(real, f), dst)
    # images: the group photo shipped with insightface, and a blank frame
    try:
        import insightface

        t1 = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")
        shutil.copy(t1, os.path.join(input_dir, "t1.jpg"))
    except Exception:
        pass
    import cv2

    blank = np.full((256, 320, 3), 127, np.uint8)
    cv2.imwrite(os.path.join(input_dir, "no_face.png"), blank)

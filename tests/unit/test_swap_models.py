"""Swap models: our torch run vs onnxruntime (1e-3), layout detection, batching, bad files."""

import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from builders import swap as SB

from visage.core.errors import ModelFileInvalid, VisageError
from visage.nodes.swap import models as M


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("swapmodels")
    return {
        "in128": SB.make_inswapper(str(d / "inswapper_128.onnx"), 128),
        "re256": SB.make_inswapper(str(d / "reswapper_256.onnx"), 256, seed=5),
        "hyper": SB.make_hyperswap(str(d / "hyperswap_1a_256.onnx"), 256),
        "dir": str(d),
    }


def _ort(path, feeds):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _inputs(n, size, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.random((n, 3, size, size), dtype=np.float32)
    s = rng.standard_normal((n, 512)).astype(np.float32)
    return t, s / np.linalg.norm(s, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "key,kind,size", [("in128", "inswapper", 128), ("re256", "inswapper", 256), ("hyper", "hyperswap", 256)]
)
def test_batched_torch_matches_onnxruntime(files, key, kind, size):
    mod = M.load_swapper(files[key])
    assert mod.spec.kind == kind and mod.spec.size == size
    assert mod.batched, "the converted graph must really batch (batch-1 reshapes rewritten)"
    t, s = _inputs(3, size)
    outs = mod(torch.from_numpy(t), torch.from_numpy(s))  # one batched call for 3 faces
    for i in range(3):
        ref = _ort(files[key], {"target": t[i : i + 1], "source": s[i : i + 1]})
        assert len(ref) == len(outs)
        for r, o in zip(ref, outs):
            assert np.abs(o[i : i + 1].numpy() - r).max() < 1e-3
    # the faces differ, so batching did not just repeat the first item
    assert (outs[0][0] - outs[0][1]).abs().max() > 1e-3


def test_released_graph_does_not_batch_without_the_fix(files):
    import onnx
    from onnx2torch import convert

    g = convert(onnx.load(files["in128"]))
    t, s = _inputs(2, 128)
    with pytest.raises(RuntimeError):
        g(torch.from_numpy(t), torch.from_numpy(s))


def test_emap_is_last_initializer_and_latent_matches_insightface(files):
    import onnx
    from onnx import numpy_helper

    spec, emap = M.detect_swapper(files["in128"])
    ins_emap = numpy_helper.to_array(onnx.load(files["in128"]).graph.initializer[-1])  # what INSwapper reads
    assert np.array_equal(emap, ins_emap)
    mod = M.load_swapper(files["in128"])
    e = np.random.default_rng(3).standard_normal((2, 512)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    ours = M.source_latent(mod, torch.from_numpy(e)).numpy()
    for i in range(2):
        ref = e[i : i + 1] @ ins_emap
        ref /= np.linalg.norm(ref)
        assert np.abs(ours[i] - ref[0]).max() < 1e-5
    hyper = M.load_swapper(files["hyper"])  # hyperswap feeds the normed embedding itself
    assert np.allclose(M.source_latent(hyper, torch.from_numpy(e)).numpy(), e, atol=1e-6)


def test_swap_crop_matches_insightface_inswapper(files):
    """Align + swap on a real photo: our crop vs insightface's INSwapper.get(paste_back=False)."""
    import cv2
    from conftest import insightface_image
    from insightface.app.common import Face as InsFace
    from insightface.model_zoo.inswapper import INSwapper

    from visage.kernels import reference as K
    from visage.nodes.face.align import estimate_norm

    bgr = cv2.imread(insightface_image("t1.jpg"))
    kps = np.array([[458.8, 237.4], [508.6, 238.9], [483.6, 270.3], [462.5, 295.4], [503.4, 296.7]], np.float32)
    emb = np.random.default_rng(7).standard_normal(512).astype(np.float32)
    src = InsFace(kps=kps, embedding=emb)
    tgt = InsFace(kps=kps)
    ins = INSwapper(files["in128"])
    ref_bgr, ref_M = ins.get(bgr, tgt, src, paste_back=False)
    mod = M.load_swapper(files["in128"])
    Mx = estimate_norm(torch.from_numpy(kps), 128, "arcface")
    assert np.abs(Mx - ref_M).max() < 1e-3
    frames = torch.from_numpy(bgr[:, :, ::-1].copy()).float()[None] / 255.0
    x = K.align_crops(frames, torch.from_numpy(Mx[None]), torch.tensor([0]), 128, mean=0.0, std=255.0)
    lat = M.source_latent(mod, torch.from_numpy(emb / np.linalg.norm(emb))[None])
    faces, mask = M.run_swapper(mod, x, lat)
    ours_bgr = faces[0].permute(1, 2, 0).numpy()[:, :, ::-1] * 255
    # insightface rounds its crop to uint8 before the model and truncates the output: a few levels apart
    d = np.abs(ours_bgr - ref_bgr.astype(np.float32))
    assert d.mean() < 1.0 and d.max() < 5.0  # measured: mean 0.56, max 2.98 levels
    assert mask is None


def test_256_model_where_128_expected(files, tmp_path):
    with pytest.raises(ModelFileInvalid) as e:
        M.load_swapper(files["re256"], expected_size=128)
    assert "256-px" in str(e.value) and "128-px" in str(e.value)
    # a 256 model saved under the inswapper_128 name is caught from the name
    wrong = str(tmp_path / "inswapper_128.onnx")
    shutil.copy(files["re256"], wrong)
    with pytest.raises(ModelFileInvalid) as e:
        M.detect_swapper(wrong)
    assert "file name says 128" in str(e.value)


def test_not_a_swapper_and_truncated(files, tmp_path):
    from builders.face import make_per_face

    make_per_face(str(tmp_path / "w600k_r50.onnx"), 112, 512, in_name="input.1", out_name="683") or str(
        tmp_path / "w600k_r50.onnx"
    )
    with pytest.raises(ModelFileInvalid) as e:
        M.load_swapper(str(tmp_path / "w600k_r50.onnx"))
    assert "not a face swapper" in str(e.value)
    bad = tmp_path / "inswapper_128.onnx"
    bad.write_bytes(open(files["in128"], "rb").read()[:5000])
    with pytest.raises(ModelFileInvalid):
        M.load_swapper(str(bad))


def test_wrong_embedding_size(files):
    mod = M.load_swapper(files["in128"])
    with pytest.raises(VisageError) as e:
        M.source_latent(mod, torch.randn(1, 128))
    assert "512" in str(e.value)


@pytest.mark.parametrize("key", ["in128", "hyper"])
def test_onnxruntime_engine_matches_torch_and_batches(files, key):
    ort_mod = M.load_swapper(files[key], engine="onnxruntime")
    torch_mod = M.load_swapper(files[key])
    assert ort_mod.batched and ort_mod.spec == torch_mod.spec
    t, s = _inputs(3, torch_mod.spec.size, seed=4)
    a = M.run_swapper(ort_mod, torch.from_numpy(t), torch.from_numpy(s))
    b = M.run_swapper(torch_mod, torch.from_numpy(t), torch.from_numpy(s))
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            assert (x - y).abs().max() < 1e-4

"""Host sessions run several items data-parallel; torch graphs whose file says batch 1 are probed once.

* OrtCpuModule: one item on the wide session, several items on worker threads over a one-thread
  session, same numbers as one session running them (batchable and fixed-batch files), item order kept.
* batch_probe / effective_fixed_batch: a file that declares batch 1 but whose graph batches runs
  batches; one with a batch-1 constant in a Reshape (batch 2 would silently give a wrong shape) does not.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from builders.face import _G, _save, fixed_batch_copy, make_per_face, make_scrfd  # noqa: E402

from visage.core import onnx as O  # noqa: E402

SIZE = 32


def _hard_coded_batch(path):
    """A recognizer whose graph reshapes to [1, -1] (an export with batch 1 baked in)."""
    g = _G(3)
    h = g.op("Relu", [g.conv("data", 3, 8, 4, 4, scale=0.1)])
    flat = g.op("Reshape", [h, g.const(np.array([1, -1], np.int64), "shape")])
    d = 8 * (SIZE // 4) ** 2
    w = (g.rng.randn(6, d) / np.sqrt(d)).astype(np.float32)
    y = g.op("Gemm", [flat, g.const(w), g.const(np.zeros(6, np.float32))], transB=1)
    g.nodes.append(helper.make_node("Identity", [y], ["fc1"], name="out"))
    graph = helper.make_graph(
        g.nodes,
        "hard",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 6])],
        g.inits,
    )
    _save(graph, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("par")
    dyn = str(d / "rec.onnx")
    make_per_face(dyn, SIZE, 6, seed=5)
    det = str(d / "det.onnx")
    make_scrfd(det, seed=2)  # batch 1 in its signature, folded [K, C] outputs
    return {
        "dynamic": dyn,
        "fixed": fixed_batch_copy(dyn, str(d / "rec_fixed.onnx")),
        "hard": _hard_coded_batch(str(d / "rec_hard.onnx")),
        "det": det,
    }


def _x(n, size=SIZE, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32))


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_parallel_items_equal_one_session_in_order(models, kind):
    x = _x(7)
    par = O.OrtCpuModule(models[kind], threads=2, parallel=True)
    one = O.OrtCpuModule(models[kind], threads=2, parallel=False)
    assert par.parallel and not one.parallel
    got = par(x)[0]
    assert par._narrow is not None  # several items went to the one-thread session's workers
    want = torch.cat([one(x[i : i + 1])[0] for i in range(7)], 0)
    assert got.shape == (7, 6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert one._narrow is None
    # one item: the wide session answers (the same numbers)
    torch.testing.assert_close(par(x[3:4])[0], want[3:4], rtol=1e-5, atol=1e-5)


def test_parallel_chunks_and_single_thread(models):
    m = O.OrtCpuModule(models["dynamic"], threads=2, parallel=True)
    assert m._chunk(2) == 1 and m._chunk(24) == 4 and m._chunk(9) == 3
    f = O.OrtCpuModule(models["fixed"], threads=2, parallel=True)
    assert f.fixed_batch == 1 and f._chunk(24) == 1  # a fixed-batch file runs item by item
    assert m.nbytes == 2 * os.path.getsize(models["dynamic"])  # the second session is counted
    solo = O.OrtCpuModule(models["dynamic"], threads=1, parallel=True)
    assert not solo.parallel and solo.nbytes == os.path.getsize(models["dynamic"])
    solo(_x(3))
    assert solo._narrow is None
    default = O.OrtCpuModule(models["dynamic"], threads=2)  # restorers, parsers: one session unless asked
    assert not default.parallel and default.nbytes == os.path.getsize(models["dynamic"])


def test_run_batched_hands_host_sessions_every_item(models):
    det = O.OrtCpuModule(models["det"], threads=2, parallel=True)
    x = _x(3, size=64, seed=1)
    outs = O.run_batched(det, x, chunk=1, fixed=1)
    singles = [det(x[i : i + 1]) for i in range(3)]
    assert len(outs) == 9
    for j, o in enumerate(outs):  # folded [3*K, C] unfolded to [3, K, C], item order kept
        assert o.shape[0] == 3
        torch.testing.assert_close(o, torch.stack([s[j] for s in singles]), rtol=1e-5, atol=1e-5)


def test_worker_pool_follows_the_thread_count():
    a = O.worker_pool(2)
    assert O.worker_pool(2) is a
    b = O.worker_pool(3)
    assert b is not a and b._max_workers == 3
    O.worker_pool(2)


def test_batch_probe_tells_batchable_graphs_from_baked_batch(models):
    ok = O.load_onnx_module(models["fixed"])
    hard = O.load_onnx_module(models["hard"])
    item = (3, SIZE, SIZE)
    assert O.batch_probe(ok, item) is True
    assert O.batch_probe(hard, item) is False
    sig_ok, sig_hard = O.onnx_signature(models["fixed"]), O.onnx_signature(models["hard"])
    assert O.fixed_batch(sig_ok) == 1 and O.fixed_batch(sig_hard) == 1
    assert O.effective_fixed_batch(ok, sig_ok, item) is None
    assert O.effective_fixed_batch(hard, sig_hard, item) == 1
    dyn = O.load_onnx_module(models["dynamic"])
    assert O.effective_fixed_batch(dyn, O.onnx_signature(models["dynamic"]), item) is None
    # host sessions are never probed: they split their batches themselves
    host = O.OrtCpuModule(models["fixed"], threads=2)
    assert O.effective_fixed_batch(host, sig_ok, item) == 1 and not hasattr(host, "_visage_batch_probe")
    # the baked graph really is wrong on a batch (why the probe exists), and right item by item
    x = _x(2)
    with torch.inference_mode():
        try:
            bad = tuple(hard(x).shape)
        except RuntimeError:
            bad = None
        assert bad != (2, 6)
        y = O.run_batched(hard, x, fixed=O.effective_fixed_batch(hard, sig_hard, item))[0]
        want = torch.cat([hard(x[i : i + 1]) for i in range(2)], 0)
    torch.testing.assert_close(y, want)


def test_batch_probe_runs_once_per_module_and_shape(models):
    calls = []

    class Count(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            calls.append(x.shape[0])
            return self.m(x)

    c = Count(O.load_onnx_module(models["fixed"]))
    assert O.batch_probe(c, (3, SIZE, SIZE))
    assert calls == [2, 1, 1]
    assert O.batch_probe(c, (3, SIZE, SIZE))
    assert calls == [2, 1, 1]  # kept on the module: no forward on later calls


def test_torch_chunk_per_device():
    assert O.torch_chunk("cpu", 64, O.CPU_CHUNK_FACES) == O.CPU_CHUNK_FACES == 8
    assert O.torch_chunk(torch.device("cpu"), 16, O.CPU_CHUNK_DETECTOR) == 1
    assert O.torch_chunk("cuda:0", 64, 8) == 64


def test_cpu_torch_engine_is_channels_last_and_equal(models):
    from visage.nodes.face.analyzer import _onnx_loader

    m = _onnx_loader(models["dynamic"], "cpu", torch.float32)
    convs = [p for p in m.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    x = _x(5)
    with torch.inference_mode():
        got = m(x)
    ref = O.OrtCpuModule(models["dynamic"], threads=1)(x)[0]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_host_torch_threads_is_scoped_and_restored():
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with O.host_torch_threads():
            assert torch.get_num_threads() == O.HOST_TORCH_THREADS == 1
            with O.host_torch_threads():  # nested: same setting
                assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with O.host_torch_threads():
            with O.caller_torch_threads():  # a network inside: the caller's threads again
                assert torch.get_num_threads() == 2
            assert torch.get_num_threads() == 1
        with O.caller_torch_threads():  # outside any host block: nothing changes
            assert torch.get_num_threads() == 2
        with pytest.raises(ValueError):
            with O.host_torch_threads():
                raise ValueError("inside")
        assert torch.get_num_threads() == 2  # restored after an error too
    finally:
        torch.set_num_threads(prev)


def test_swap_frames_runs_host_torch_ops_on_the_chosen_threads(monkeypatch):
    from visage.nodes.swap import pipeline as PL

    seen = []
    monkeypatch.setattr(PL, "_swap_frames", lambda frames, *a, **k: seen.append(torch.get_num_threads()) or "ok")
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert PL.swap_frames(torch.zeros(1, 8, 8, 3), [], None, []) == "ok"
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(prev)

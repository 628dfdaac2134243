"""Fixed-batch models read from their signature (no whole-batch try per call) and chosen CPU threads."""

from __future__ import annotations

import torch

from visage.core import onnx as O


def _sig(batch):
    return O.OnnxSignature("m.onnx", (("x", (batch, 3, 112, 112)),), (("y", (batch, 8)),), (), (), ())


def test_fixed_batch_comes_from_the_signature():
    assert O.fixed_batch(_sig(1)) == 1
    assert O.fixed_batch(_sig("N")) is None and O.fixed_batch(_sig(None)) is None


def test_fixed_batch_model_runs_item_by_item_without_a_whole_batch_forward():
    seen = []

    class One(torch.nn.Module):
        def forward(self, x):
            seen.append(x.shape[0])
            if x.shape[0] != 1:
                raise RuntimeError("batch 1 only")
            return x.flatten(1)[:, :4] * 2

    x = torch.randn(5, 3, 4, 4)
    out = O.run_batched(One(), x, fixed=1)[0]
    assert seen == [1] * 5  # never the whole batch first
    assert torch.allclose(out, x.flatten(1)[:, :4] * 2)
    seen.clear()
    O.run_batched(One(), x)  # without the signature's word: the old try-then-loop
    assert seen[0] == 5 and seen[1:] == [1] * 5


def test_cpu_threads_is_chosen(monkeypatch):
    monkeypatch.setenv("VISAGE_CPU_THREADS", "3")
    assert O.cpu_threads() == 3
    monkeypatch.setenv("VISAGE_CPU_THREADS", "many")
    monkeypatch.setattr(O.os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert O.cpu_threads() == O.MAX_CPU_THREADS
    monkeypatch.delenv("VISAGE_CPU_THREADS")
    monkeypatch.setattr(O.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert O.cpu_threads() == 2

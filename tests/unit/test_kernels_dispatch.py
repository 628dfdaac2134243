"""kernels/ops.py dispatch when a fused launch fails: only that variant falls back to its twin."""

import logging

import torch

from visage.kernels import ops, reference


class _FakeFused:
    """Stands in for kernels/triton_attention: fails for head dim 128 (as a card short of shared memory
    would), returns a recognisable tensor otherwise."""

    def __init__(self):
        self.calls = []

    def decoupled_attention(self, q, k, v, k_id, v_id, scale, region_mask=None):
        self.calls.append(q.shape[-1])
        if q.shape[-1] == 128:
            raise RuntimeError("out of resources: shared memory, Required: 180480, Hardware limit: 101376")
        return torch.full_like(q, 7.0)


def _case(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 2, 5, d, generator=g),
        torch.randn(1, 2, 3, d, generator=g),
        torch.randn(1, 2, 3, d, generator=g),
        torch.randn(1, 2, 1, 4, d, generator=g),
        torch.randn(1, 2, 1, 4, d, generator=g),
    )


def test_failed_variant_falls_back_alone(monkeypatch, caplog):
    fake = _FakeFused()
    monkeypatch.setattr(ops, "use_fused", lambda op, *t: True)
    monkeypatch.setattr(ops, "_fused_module", lambda op: fake)
    monkeypatch.setattr(ops, "_broken", set())
    big = _case(128)
    with caplog.at_level(logging.WARNING, logger="visage"):
        out1 = ops.decoupled_attention(*big, 0.5)
        out2 = ops.decoupled_attention(*big, 0.5)
    want = reference.decoupled_attention(*big, 0.5)
    assert torch.allclose(out1, want) and torch.allclose(out2, want)  # the twin answered, correctly
    assert fake.calls == [128]  # not retried once broken
    warnings = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(warnings) == 1 and "shared memory" in warnings[0].getMessage()
    small = ops.decoupled_attention(*_case(64), 0.5)
    assert fake.calls == [128, 64] and bool((small == 7.0).all())  # other widths stay fused
    # a region mask is another variant key: still fused for 64
    mask = torch.ones(1, 1, 5)
    assert bool((ops.decoupled_attention(*_case(64), 0.5, mask) == 7.0).all())


def test_input_errors_are_not_swallowed(monkeypatch):
    """A VisageError from argument checks reaches the caller even on the fused path."""
    import pytest

    from visage.core.errors import VisageError

    monkeypatch.setattr(ops, "use_fused", lambda op, *t: True)
    monkeypatch.setattr(ops, "_fused_module", lambda op: _FakeFused())
    with pytest.raises(VisageError):
        ops.paste_back(
            torch.rand(1, 8, 8, 3),
            torch.rand(1, 4, 4, 3),
            torch.eye(3)[:2][None],
            torch.rand(2, 4, 4),
            torch.tensor([0]),
        )  # 2 masks for 1 crop

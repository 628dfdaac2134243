"""CodeFormer through spandrel_extra_arches (optional), GPEN / missing-package errors, registration."""

import sys
import time

import pytest
import torch

from visage.core.errors import ModelFileInvalid, VisageError
from visage.nodes.swap import restore as RS


def _tiny_layout(path, keys):
    """A file that holds a released layout's key names (tiny tensors): enough for detection."""
    torch.save({"params_ema": {k: torch.zeros(2, 2) for k in keys}}, path)
    return str(path)


CODEFORMER_KEYS = [
    "position_emb",
    "idx_pred_layer.1.weight",
    "quantize.embedding.weight",
    "ft_layers.0.self_attn.in_proj_weight",
    "encoder.blocks.0.weight",
    "generator.blocks.0.weight",
]
GPEN_KEYS = [
    "ecd0.0.0.weight",
    "ecd1.0.0.weight",
    "final_linear.0.weight",
    "generator.style.1.weight",
    "generator.input.input",
    "generator.conv1.conv.weight",
]


@pytest.fixture(scope="module")
def codeformer_file(tmp_path_factory):
    """A CodeFormer file in the released layout (codeformer.pth: {'params_ema': state dict}) with random
    weights, built from spandrel_extra_arches' own CodeFormer class with the released hyper-parameters
    (the network's conv trunk is fixed-size, 94 M parameters: built once per module)."""
    pytest.importorskip("spandrel_extra_arches")
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    t = time.perf_counter()
    torch.manual_seed(0)
    net = CodeFormer()  # dim_embd 512, 9 layers, codebook 1024, connect 32/64/128/256: the release
    p = tmp_path_factory.mktemp("codeformer") / "codeformer.pth"
    torch.save({"params_ema": net.state_dict()}, p)
    del net
    print(f"built codeformer.pth in {time.perf_counter() - t:.1f}s")
    return str(p)


def test_codeformer_loads_restores_and_fidelity_matters(codeformer_file):
    t = time.perf_counter()
    mod = RS.load_restorer(codeformer_file)
    assert mod.arch == "CodeFormer" and mod.size == 512
    assert mod._fidelity_kw() == "weight"  # spandrel_extra_arches' CodeFormer.forward(x, weight=0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.interpolate(torch.rand((1, 3, 32, 32), generator=g), size=512, mode="bilinear")
    handle = type("H", (), {"model": lambda self: mod, "module": mod})()
    y_restore = mod(x, 0.0)
    # fidelity 1 through the Restorer payload (what the nodes use): NHWC crops in, NHWC out
    y_faithful = RS.restore_crops(RS.Restorer(handle=handle, name="cf", fidelity=1.0), x.permute(0, 2, 3, 1)).permute(
        0, 3, 1, 2
    )
    for y in (y_restore, y_faithful):
        assert y.shape == (1, 3, 512, 512) and torch.isfinite(y).all()
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 and float(y.std()) > 1e-3
    assert float((y_restore - y_faithful).abs().mean()) > 1e-3  # the fidelity weight reaches the network
    print(f"CodeFormer load + 2 forwards at 512: {time.perf_counter() - t:.1f}s")


def _registry_without_extras():
    from spandrel import MAIN_REGISTRY, ArchRegistry

    reg = ArchRegistry()
    reg.add(*[a for a in MAIN_REGISTRY if a.architecture.id not in RS.EXTRA_ARCHS])
    return reg


def test_codeformer_without_the_package_names_file_arch_and_fix(tmp_path, monkeypatch):
    import spandrel

    monkeypatch.setitem(sys.modules, "spandrel_extra_arches", None)  # import fails
    monkeypatch.setattr(spandrel, "MAIN_REGISTRY", _registry_without_extras())
    assert RS.register_extra_arches() is False
    path = _tiny_layout(tmp_path / "codeformer-v0.1.0.pth", CODEFORMER_KEYS)
    with pytest.raises(ModelFileInvalid) as ei:
        RS.load_restorer(path)
    msg = str(ei.value)
    assert isinstance(ei.value, VisageError)
    for part in ("codeformer-v0.1.0.pth", "CodeFormer", "pip install spandrel_extra_arches", "non-commercial"):
        assert part in msg, (part, msg)


def test_gpen_is_named_and_refused(tmp_path):
    path = _tiny_layout(tmp_path / "GPEN-BFR-512.pth", GPEN_KEYS)
    with pytest.raises(ModelFileInvalid, match="GPEN-BFR-512.pth.*GPEN model"):
        RS.load_restorer(path)


def test_registration_is_idempotent_and_compatible_with_comfyui():
    extra = pytest.importorskip("spandrel_extra_arches")
    from spandrel import MAIN_REGISTRY

    assert RS.register_extra_arches() is True
    n = len(MAIN_REGISTRY)
    assert RS.register_extra_arches() is True and len(MAIN_REGISTRY) == n
    # ComfyUI's comfy_extras/nodes_upscale_model.py runs MAIN_REGISTRY.add(*EXTRA_REGISTRY) inside a bare
    # try/except: after us it raises (and is swallowed) and spandrel leaves the registry unchanged
    with pytest.raises(Exception):  # noqa: B017 - spandrel raises a bare Exception
        MAIN_REGISTRY.add(*extra.EXTRA_REGISTRY)
    assert len(MAIN_REGISTRY) == n and "CodeFormer" in MAIN_REGISTRY

"""The one model cache: keyed by file identity + device + dtype, thread-safe, LRU budget, never downloads."""

import os
import threading
import time

import pytest
import torch

from visage.core import paths
from visage.core.errors import ModelFileMissing
from visage.core.model_manager import LocalBackend, ModelManager, file_identity, resolve_dtype


def _loader(calls):
    def load(path, device, dtype):
        calls.append((path, str(device), dtype))
        time.sleep(0.05)
        return torch.nn.Linear(64, 64).to(dtype)

    return load


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "m.bin"
    p.write_bytes(b"x" * 100)
    return str(p)


def test_loads_once_per_identity_device_dtype(model_file):
    mm, calls = ModelManager(), []
    h1 = mm.get("k", model_file, _loader(calls))
    h2 = mm.get("k", model_file, _loader(calls))
    assert h1 is h2 and len(calls) == 1 and mm.stats.hits == 1
    h3 = mm.get("k", model_file, _loader(calls), dtype=torch.float64)
    assert h3 is not h1 and len(calls) == 2
    h4 = mm.get("other-kind", model_file, _loader(calls))
    assert h4 is not h1 and len(calls) == 3
    assert isinstance(h1.model(), torch.nn.Module) and not h1.model().training


def test_changed_file_is_reloaded(model_file):
    mm, calls = ModelManager(), []
    h1 = mm.get("k", model_file, _loader(calls))
    before = file_identity(model_file)
    with open(model_file, "ab") as f:
        f.write(b"more")
    assert file_identity(model_file) != before
    h2 = mm.get("k", model_file, _loader(calls))
    assert h2 is not h1 and len(calls) == 2


def test_concurrent_requests_load_once(model_file):
    mm, calls = ModelManager(), []
    got = []
    threads = [threading.Thread(target=lambda: got.append(mm.get("k", model_file, _loader(calls)))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(h) for h in got}) == 1


def test_lru_budget_drops_least_recently_used(tmp_path):
    one = 64 * 64 * 4 + 64 * 4
    mm = ModelManager(LocalBackend(budget_bytes=int(one * 2.5)))
    files = []
    for i in range(3):
        p = tmp_path / f"m{i}.bin"
        p.write_bytes(bytes([i]) * 10)
        files.append(str(p))
    calls = []
    a = mm.get("k", files[0], _loader(calls))
    mm.get("k", files[1], _loader(calls))
    mm.get("k", files[0], _loader(calls))  # a is now most recent
    mm.get("k", files[2], _loader(calls))  # over budget: drops files[1]
    names = {h.key[1][0] for h in mm.cached()}
    assert os.path.realpath(files[1]) not in names and os.path.realpath(files[0]) in names
    assert mm.get("k", files[0], _loader(calls)) is a


def test_missing_file_error_names_file_folders_and_source(tmp_path, monkeypatch):
    paths.clear_extra_folders()
    paths.add_folder("insightface", str(tmp_path / "a"))
    paths.add_folder("insightface", str(tmp_path / "b"))
    with pytest.raises(ModelFileMissing) as e:
        paths.find_file("insightface", "glintr100.onnx")
    msg = str(e.value)
    assert "glintr100.onnx" in msg and "antelopev2" in msg and str(tmp_path / "a") in msg and str(tmp_path / "b") in msg
    assert "never downloads" in msg and "Users get it from" in msg
    paths.clear_extra_folders()


def test_missing_file_in_manager(tmp_path):
    with pytest.raises(ModelFileMissing) as e:
        ModelManager().get("k", str(tmp_path / "nope.onnx"), _loader([]))
    assert "nope.onnx" in str(e.value)


def test_precision_policy():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError):
        resolve_dtype("int8", torch.device("cpu"))


def test_manifest_lists_known_files_and_checker(tmp_path):
    entries = paths.manifest()
    names = {(e["folder"], e["name"]) for e in entries}
    assert ("insightface/models/antelopev2", "glintr100.onnx") in names
    assert ("insightface/models/buffalo_l", "det_10g.onnx") in names
    for e in entries:
        assert e["source"] and e["licence"] and "folder" in e
    d = tmp_path / "insightface" / "models" / "antelopev2" / "antelopev2"
    d.mkdir(parents=True)
    (d / "glintr100.onnx").write_bytes(b"123")
    rows = {(r["folder"], r["name"]): r for r in paths.check_against_manifest(str(tmp_path))}
    assert rows[("insightface/models/antelopev2", "glintr100.onnx")]["status"] in (
        "present",
        "size-mismatch",
        "sha256-mismatch",
    )
    assert rows[("insightface/models/buffalo_l", "det_10g.onnx")]["status"] == "missing"


def test_check_models_tool(tmp_path):
    import subprocess
    import sys

    d = tmp_path / "insightface" / "models" / "buffalo_s"
    d.mkdir(parents=True)
    (d / "det_500m.onnx").write_bytes(b"not the real file")
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(os.path.dirname(paths.__file__), "..", "tools", "check_models.py"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert "size-mismatch" in r.stdout and "det_500m.onnx" in r.stdout and "missing" in r.stdout


def test_unload_all_drops_modules_and_reloads_lazily(model_file):
    """ComfyUI's unload (/free) path: every module is dropped (nothing keeps it alive), the handle stays
    valid and its next use loads the file again; the cache keeps one handle per key."""
    import gc
    import weakref

    mm, calls = ModelManager(), []
    h = mm.get("k", model_file, _loader(calls))
    first = weakref.ref(h.model())
    assert mm.unload_all() == 1 and not h.loaded and "unloaded" in repr(h)
    gc.collect()
    assert first() is None, "the unloaded module is still referenced"
    assert mm.unload_all() == 0
    assert len(calls) == 1
    m2 = h.model()  # lazy reload, same handle
    assert isinstance(m2, torch.nn.Linear) and len(calls) == 2 and h.loaded and h.loads == 2
    assert mm.get("k", model_file, _loader(calls)) is h and len(calls) == 2
    assert not m2.training and not any(p.requires_grad for p in m2.parameters())
    mm.unload_all()
    assert isinstance(h.module, torch.nn.Linear) and len(calls) == 3  # introspection reloads too


def test_unload_releases_backend_state(model_file):
    released = []

    class Backend(LocalBackend):
        def wrap(self, handle):
            handle.backend_state = "patcher"

        def release(self, handle):
            released.append(handle.backend_state)

    mm = ModelManager(Backend())
    h = mm.get("k", model_file, _loader([]))
    mm.unload_all()
    assert released == ["patcher"] and h.backend_state is None
    h.model()
    assert h.backend_state == "patcher"  # wrapped again on reload

"""Shared test setup.

The repository root is the package ``visage`` (``pip install --no-deps -e .``, done by scripts/setup.sh):
``import visage.nodes.face.scrfd`` works anywhere, with or without ComfyUI; importing ``visage`` registers
no nodes (the root ``__init__`` loads the families only when ComfyUI asks for ``NODE_CLASS_MAPPINGS``).
"""

import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_FIXTURES = os.path.normpath(os.path.join(REPO, "..", "shared", "fixtures"))
if not os.path.isdir(SHARED_FIXTURES):
    SHARED_FIXTURES = os.environ.get("VISAGE_SHARED_FIXTURES", SHARED_FIXTURES)


def _check_installed():
    """Fail early, with the fix, when `visage` is not importable or is another checkout (several clones
    sharing one environment): the tests would otherwise test someone else's code."""
    spec = importlib.util.find_spec("visage")
    where = os.path.dirname(os.path.realpath(spec.origin)) if spec and spec.origin else None
    if where != os.path.realpath(REPO):
        raise pytest.UsageError(
            f"the package `visage` is {'not importable' if where is None else 'imported from ' + where}, not "
            f"this checkout ({REPO}): run `bash scripts/setup.sh` (or `{sys.executable} -m pip install --no-deps "
            f"-e {REPO}`)"
        )


_check_installed()
if os.path.join(REPO, "tests") not in sys.path:
    sys.path.insert(0, os.path.join(REPO, "tests"))


def fixture_path(*parts):
    """Path under ../shared/fixtures, or pytest.skip with the reason when absent."""
    p = os.path.join(SHARED_FIXTURES, *parts)
    if not os.path.exists(p):
        pytest.skip(f"real fixture not available: {p} (../shared/fixtures is absent on this machine)")
    return p


@pytest.fixture
def fixtures_dir():
    return fixture_path()


def insightface_image(name):
    """Images shipped inside the insightface wheel (t1.jpg, Tom_Hanks_54745.png)."""
    import insightface

    p = os.path.join(os.path.dirname(insightface.__file__), "data", "images", name)
    if not os.path.isfile(p):
        pytest.skip(f"insightface does not ship {name} in this version")
    return p


def pytest_sessionfinish(session, exitstatus):
    """Tests that import ComfyUI in-process leave ModelPatchers behind; release them while ComfyUI's
    modules still exist, or their __del__ runs during interpreter teardown and prints tracebacks."""
    mm = sys.modules.get("comfy.model_management")
    if mm is None:
        return
    import gc

    try:
        for name, mod in list(sys.modules.items()):
            if name.endswith("core.model_manager") and hasattr(mod, "MANAGER"):
                mod.MANAGER.clear()
        mm.unload_all_models()
        gc.collect()
    except Exception:  # teardown hygiene only: never turn a finished run into an error
        pass

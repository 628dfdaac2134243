"""Fixtures of the `comfy` tier: one real ComfyUI server for the whole session, started with --cpu on
a free loopback port, with this pack in custom_nodes and models built by tests/builders/*.py."""

import os
import shutil

import comfy_harness as ch
import pytest
from builders import build_all

COMFY_SKIP_REASON = None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/comfy/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.comfy)


@pytest.fixture(scope="session")
def comfy_path():
    p = ch.find_comfyui()
    if p is None:
        pytest.skip(
            "COMFY TIER SKIPPED: no ComfyUI found (set COMFYUI_PATH, put this pack in "
            "ComfyUI/custom_nodes, or lay ComfyUI out at /opt/ComfyUI)"
        )
    return p


@pytest.fixture(scope="session")
def comfy_base(comfy_path, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("comfy_base"))
    dirs = ch.make_base_dir(base)
    build_all(dirs["models"], dirs["input"])
    return dirs


@pytest.fixture(scope="session")
def comfy_server(comfy_path, comfy_base):
    server = ch.ComfyServer(comfy_path, os.path.dirname(comfy_base["models"]))
    server.start()
    yield server
    server.stop()
    keep = os.environ.get("VISAGE_KEEP_COMFY_LOG")
    if keep:
        shutil.copy(server.log_path, keep)


@pytest.fixture(scope="session")
def object_info(comfy_server):
    return comfy_server.object_info()

"""Fixtures of the `browser` tier: Debian's Chromium driven by Playwright (never a downloaded browser)
against a real ComfyUI started with --cpu, this pack in custom_nodes and the models of tests/builders."""

import os
import shutil

import comfy_harness as ch
import pytest
from builders import build_all

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--headless", "--disable-gpu"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def chromium_path():
    if not os.path.isfile(CHROMIUM):  # the tests never install system packages; .ci/run installs chromium
        pytest.skip(f"BROWSER TIER SKIPPED: {CHROMIUM} is missing (Debian: apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip(
            "BROWSER TIER SKIPPED: the playwright Python package is not installed (pip install playwright; "
            "no browser download is needed)"
        )
    return CHROMIUM


@pytest.fixture(scope="session")
def browser_comfy(tmp_path_factory, chromium_path):
    """(server, dirs): one real ComfyUI for the browser tests."""
    comfy = ch.find_comfyui()
    if comfy is None:
        pytest.skip("BROWSER TIER SKIPPED: no ComfyUI found (set COMFYUI_PATH or lay ComfyUI out at /opt/ComfyUI)")
    base = str(tmp_path_factory.mktemp("browser_base"))
    dirs = ch.make_base_dir(base)
    build_all(dirs["models"], dirs["input"])
    server = ch.ComfyServer(comfy, base)
    server.start()
    try:
        yield server, dirs
    finally:
        server.stop()
        keep = os.environ.get("VISAGE_KEEP_COMFY_LOG")
        if keep:
            shutil.copy(server.log_path, keep + ".browser")


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()

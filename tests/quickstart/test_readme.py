"""README, CHANGELOG and the registry metadata agree with the one places they come from: the clone URL and
the version from pyproject.toml, the ComfyUI/frontend versions from scripts/pins.sh (and ComfyUI's own pin),
the generated tables' markers, the images the README shows."""

import os
import re
import tarfile

import pytest
from qs_helpers import REPO, TARBALL

tomllib = pytest.importorskip("tomllib")


def _read(*p):
    with open(os.path.join(REPO, *p), encoding="utf-8") as f:
        return f.read()


PYPROJECT = tomllib.loads(_read("pyproject.toml"))
README = _read("README.md")
PINS = dict(re.findall(r'^(VISAGE_\w+)="([^"]*)"', _read("scripts", "pins.sh"), re.M))


def test_clone_url_is_pyprojects():
    url = PYPROJECT["project"]["urls"]["Repository"]
    clones = [c for c in re.findall(r"git clone (https?://\S+)", README) if "ComfyUI" not in c]
    assert clones and all(c == url for c in clones), clones


def test_changelog_has_the_registry_version():
    version = PYPROJECT["project"]["version"]
    assert re.search(rf"^## {re.escape(version)}\b", _read("CHANGELOG.md"), re.M), version


def test_registry_metadata_complete():
    p, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    for key in ("name", "version", "description", "license", "requires-python", "dependencies", "classifiers"):
        assert p.get(key), key
    assert {"Repository", "Homepage", "Documentation", "Issues"} <= set(p["urls"])
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert comfy.get(key), key
    assert comfy["Icon"].startswith("https://") and comfy["Icon"].endswith("web/icon.svg")
    assert os.path.isfile(os.path.join(REPO, "web", "icon.svg"))
    assert isinstance(comfy.get("includes"), list)
    assert comfy["requires-comfyui"] == f">={PINS['VISAGE_COMFYUI_VERSION']}"
    assert f"comfyui-frontend-package>={PINS['VISAGE_FRONTEND_VERSION']}" in p["dependencies"]


def test_supported_versions_are_the_tested_ones():
    assert f"ComfyUI {PINS['VISAGE_COMFYUI_VERSION']}" in README
    assert f"comfyui-frontend-package {PINS['VISAGE_FRONTEND_VERSION']}" in README
    assert PINS["VISAGE_COMFYUI_TAG"] == "v" + PINS["VISAGE_COMFYUI_VERSION"]
    if os.path.isfile(TARBALL):  # the frontend pin is ComfyUI's own
        with tarfile.open(TARBALL) as t:
            m = next(m for m in t.getmembers() if m.name.endswith("/requirements.txt") and m.name.count("/") == 1)
            reqs = t.extractfile(m).read().decode()
        assert f"comfyui-frontend-package=={PINS['VISAGE_FRONTEND_VERSION']}" in reqs


def test_generated_markers_and_images():
    for key in ("nodes", "models"):
        assert README.count(f"<!-- BEGIN:{key} -->") == 1 and README.count(f"<!-- END:{key} -->") == 1
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert images
    for img in images:
        assert os.path.isfile(os.path.join(REPO, img)), img
    for section in ("## Quickstart", "## Models", "## Supported versions", "## Troubleshooting", "## Tests"):
        assert section in README, section

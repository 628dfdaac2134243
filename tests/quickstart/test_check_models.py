"""tools/check_models.py --workflow: exit 1 and a one-line summary naming what a workflow still needs; 0 when
everything is there (a nested antelopev2 folder counts, as the pack loader reads it)."""

import os
import subprocess
import sys

from qs_helpers import REPO

TOOL = os.path.join(REPO, "tools", "check_models.py")
PACK_FILES = {
    "buffalo_l": ["det_10g.onnx", "w600k_r50.onnx", "2d106det.onnx", "1k3d68.onnx", "genderage.onnx"],
    "antelopev2": ["scrfd_10g_bnkps.onnx", "glintr100.onnx", "2d106det.onnx", "1k3d68.onnx", "genderage.onnx"],
}


def _check(models, workflow):
    r = subprocess.run(
        [sys.executable, TOOL, str(models), "--workflow", os.path.join(REPO, "workflows", "api", workflow)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return r.returncode, r.stdout.strip().splitlines()


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def test_missing_then_complete(tmp_path):
    rc, lines = _check(tmp_path, "swap_image.json")
    assert rc == 1
    assert lines[-1].startswith(
        "swap_image.json: 2 of 2 needed model files/packs missing or wrong: buffalo_l, inswapper_128.onnx"
    )
    assert "python tools/get_models.py buffalo_l inswapper_128.onnx" in lines[-1]
    for f in PACK_FILES["buffalo_l"]:
        _touch(str(tmp_path / "insightface" / "models" / "buffalo_l" / f))
    rc, lines = _check(tmp_path, "swap_image.json")
    assert rc == 1 and "1 of 2" in lines[-1] and "inswapper_128.onnx" in lines[-1]
    _touch(str(tmp_path / "insightface" / "inswapper_128.onnx"))
    rc, lines = _check(tmp_path, "swap_image.json")
    assert rc == 0 and lines[-1] == "swap_image.json: all 2 needed model files/packs in place"


def test_incomplete_and_nested_packs(tmp_path):
    _touch(str(tmp_path / "insightface" / "models" / "buffalo_l" / "det_10g.onnx"))
    rc, lines = _check(tmp_path, "face_analysis.json")
    assert rc == 1 and any(ln.startswith("incomplete") and "w600k_r50.onnx" in ln for ln in lines)
    for f in PACK_FILES["antelopev2"]:
        _touch(str(tmp_path / "insightface" / "models" / "antelopev2" / "antelopev2" / f))
    rc, lines = _check(tmp_path, "visage_instantid.json")
    assert rc == 1  # the checkpoint and the InstantID files are still missing
    assert any(ln.startswith("ok") and "pack antelopev2" in ln and "nested" in ln for ln in lines), lines
    assert "antelopev2" not in lines[-1].split("wrong:")[1].split("(")[0]

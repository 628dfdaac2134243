"""Swap-quality workflows (workflows/api/swap_occlusion, swap_face_regions, swap_gpen, swap_pixel_boost,
swap_identity_strength, face_mask_regions) on a real ComfyUI with test-built models (tests/builders/masks.py:
a controlled BiSeNet and XSeg, a GPEN-BFR-512 signature; swap.py / face.py for the rest)."""

import os

import comfy_harness as ch
import numpy as np
import pytest
from PIL import Image

NEW_NODES = ("VisageFaceMaskerLoader",)


def _wf(name, **images):
    wf = ch.load_api_workflow(name)
    for n in wf.values():
        if n["class_type"] == "VisageFaceAnalyzerLoader":
            n["inputs"]["pack"] = "visage_test"
        if n["class_type"] == "SaveImage":
            n["inputs"]["filename_prefix"] = ch.unique_prefix(n["inputs"]["filename_prefix"].replace("/", "_"))
    for nid, img in images.items():
        wf[nid]["inputs"]["image"] = img
    return wf


def _images(server, entry, node_id):
    out = entry["outputs"].get(node_id, {})
    files = [
        os.path.join(server.base_dir, "output", it.get("subfolder", ""), it["filename"]) for it in out.get("images", [])
    ]
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def _count(entry, node_id="9"):
    return int(entry["outputs"][node_id]["text"][0])


def _src(comfy_base):
    return np.asarray(Image.open(os.path.join(comfy_base["input"], "t1.jpg")).convert("RGB"))


def test_nodes_and_lists(object_info):
    for n in NEW_NODES:
        assert n in object_info
    req = object_info["VisageFaceMaskerLoader"]["input"]["required"]
    assert "face_parsing/xseg_1.onnx" in req["occluder"][0]
    assert {"face_parsing/bisenet_resnet_18.onnx", "facexlib/parsing_bisenet.pth"} <= set(req["parser"][0])
    assert "GPEN-BFR-512.onnx" in object_info["VisageRestoreModelLoader"]["input"]["required"]["restore_model"][0]
    opt = object_info["VisageSwapFaces"]["input"]["optional"]
    assert {"masker", "pixel_boost", "identity_strength"} <= set(opt)


@pytest.fixture(scope="module")
def plain(comfy_server):
    entry = comfy_server.run(_wf("swap_image.json", **{"1": "t1.jpg", "2": "t1.jpg"}), timeout=300)
    return _images(comfy_server, entry, "6")[0], _images(comfy_server, entry, "8")[0][..., 0], _count(entry)


def _one_face(wf):
    wf["5"]["inputs"].update(mapping="by_index", source_indexes="0", target_indexes="0")  # CPU time
    return wf


@pytest.fixture(scope="module")
def plain_one(comfy_server):
    entry = comfy_server.run(_one_face(_wf("swap_image.json", **{"1": "t1.jpg", "2": "t1.jpg"})), timeout=300)
    return _images(comfy_server, entry, "6")[0]


def test_occlusion_workflow(comfy_server, comfy_base, plain):
    entry = comfy_server.run(_wf("swap_occlusion.json", **{"1": "t1.jpg", "2": "t1.jpg"}), timeout=300)
    out, mask = _images(comfy_server, entry, "6")[0], _images(comfy_server, entry, "8")[0][..., 0]
    assert _count(entry) == plain[2] >= 1
    # nothing in t1.jpg has the controlled occluder's colour: the mask is the plain box mask
    assert np.abs(mask.astype(int) - plain[1].astype(int)).max() <= 2
    assert np.abs(out.astype(int) - plain[0].astype(int)).max() <= 2


def test_face_regions_workflow_is_inside_the_box(comfy_server, plain):
    entry = comfy_server.run(_wf("swap_face_regions.json", **{"1": "t1.jpg", "2": "t1.jpg"}), timeout=300)
    mask = _images(comfy_server, entry, "8")[0][..., 0].astype(int)
    assert _count(entry) == plain[2]
    assert (mask <= plain[1].astype(int) + 1).all() and mask.sum() < plain[1].astype(int).sum()


@pytest.mark.parametrize(
    "name",
    [
        "swap_gpen.json",
        "swap_pixel_boost.json",
        "swap_identity_strength.json",
        pytest.param("swap_expression_restore.json", marks=pytest.mark.slow),  # full-size LivePortrait on a CPU
    ],
)
def test_option_workflows(comfy_server, comfy_base, plain_one, name):
    src = _src(comfy_base)
    wf = _one_face(_wf(name, **{"1": "t1.jpg", "2": "t1.jpg"}))
    entry = comfy_server.run(wf, timeout=600)
    out = _images(comfy_server, entry, "6")[0]
    assert _count(entry) == 1, name
    assert out.shape == src.shape and np.abs(out.astype(int) - src.astype(int)).max() > 10, name
    if name != "swap_identity_strength.json":  # (the test swapper barely reacts to a mixed identity;
        # tests/unit/test_swap_quality.py checks the mixing itself)
        assert np.abs(out.astype(int) - plain_one.astype(int)).max() > 2, name  # the option changed the result


def test_face_mask_regions_workflow(comfy_server):
    entry = comfy_server.run(_wf("face_mask_regions.json", **{"1": "t1.jpg"}), timeout=300)
    m = _images(comfy_server, entry, "8")[0][..., 0]
    assert m.max() > 0  # some of the faces' pixels are labelled skin/nose/lips by the controlled parser


def test_bad_inputs(comfy_server):
    wf = _wf("swap_occlusion.json", **{"1": "t1.jpg", "2": "t1.jpg"})
    wf["10"]["inputs"]["occluder"] = "face_parsing/bisenet_resnet_18.onnx"
    with pytest.raises(ch.PromptError, match="not a face occluder"):
        comfy_server.run(wf, timeout=300)
    wf = _wf("swap_face_regions.json", **{"1": "t1.jpg", "2": "t1.jpg"})
    wf["10"]["inputs"]["regions"] = "skin, beard"
    with pytest.raises(ch.PromptError, match="Unknown face region"):
        comfy_server.run(wf, timeout=300)
    wf = _wf("swap_face_regions.json", **{"1": "t1.jpg", "2": "t1.jpg"})
    wf["10"]["inputs"]["parser"] = "face_parsing/xseg_1.onnx"
    with pytest.raises(ch.PromptError, match="not a face parser"):
        comfy_server.run(wf, timeout=300)
    wf = _wf("swap_expression_restore.json", **{"1": "t1.jpg", "2": "t1.jpg"})
    del wf["5"]["inputs"]["liveportrait"]
    with pytest.raises(ch.PromptError, match="Expression restore needs the LivePortrait networks"):
        comfy_server.run(wf, timeout=300)
    wf = _wf("swap_gpen.json", **{"1": "t1.jpg", "2": "t1.jpg"})
    wf["10"]["inputs"]["restore_model"] = "not_a_face_model.pth"
    with pytest.raises(ch.PromptError, match="not a face-restoration model"):
        comfy_server.run(wf, timeout=300)

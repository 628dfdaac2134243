"""Swap family on a real ComfyUI (--cpu) with test-built models (tests/builders/swap.py + face.py).

The shipped workflows (workflows/api/swap_*.json) run with the test pack and inputs swapped in;
outputs are read back and checked; bad inputs give clear errors naming the problem.
"""

import copy
import os

import comfy_harness as ch
import numpy as np
import pytest
from PIL import Image

SWAP_NODES = (
    "VisageSwapModelLoader",
    "VisageRestoreModelLoader",
    "VisageSwapFaces",
    "VisageRestoreFaces",
    "VisageBuildFaceModel",
    "VisageSaveFaceModel",
    "VisageLoadFaceModel",
)


def _wf(name, **images):
    wf = ch.load_api_workflow(name)
    for n in wf.values():
        if n["class_type"] == "VisageFaceAnalyzerLoader":
            n["inputs"]["pack"] = "visage_test"
        if n["class_type"] == "VisageRestoreModelLoader":
            n["inputs"]["restore_model"] = "RestoreFormer.pth"
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


def _text(entry, node_id):
    return entry["outputs"][node_id]["text"][0]


def _input(comfy_base, name):
    return np.asarray(Image.open(os.path.join(comfy_base["input"], name)).convert("RGB"))


def test_swap_nodes_and_model_lists(object_info):
    for n in SWAP_NODES:
        assert n in object_info, f"{n} is not registered (pack import failed?)"
    models = object_info["VisageSwapModelLoader"]["input"]["required"]["swap_model"][0]
    assert {"inswapper_128.onnx", "reswapper/reswapper_256.onnx", "hyperswap/hyperswap_1a_256.onnx"} <= set(models)
    assert not any(m.startswith("models/") for m in models)  # analysis packs are not offered as swappers
    restore = object_info["VisageRestoreModelLoader"]["input"]["required"]["restore_model"][0]
    assert "RestoreFormer.pth" in restore


def test_image_swap_workflow(comfy_server, comfy_base):
    wf = _wf("swap_image.json", **{"1": "t1.jpg", "2": "t1.jpg"})
    entry = comfy_server.run(wf, timeout=300)
    out = _images(comfy_server, entry, "6")
    mask = _images(comfy_server, entry, "8")
    src = _input(comfy_base, "t1.jpg")
    assert len(out) == 1 and out[0].shape == src.shape
    n = int(_text(entry, "9"))
    assert n >= 1
    m = mask[0][..., 0] > 0
    diff = np.abs(out[0].astype(int) - src.astype(int)).max(-1)
    assert diff[m].mean() > 3 and diff[~m].max() <= 1  # changed under the mask only (PNG/8-bit rounding)


@pytest.mark.parametrize(
    "model,engine",
    [
        ("hyperswap/hyperswap_1a_256.onnx", "torch"),
        ("reswapper/reswapper_256.onnx", "auto"),
        ("inswapper_128.onnx", "torch"),
    ],
)
def test_swappers_and_engines_run(comfy_server, model, engine):
    wf = _wf("swap_image.json", **{"1": "t1.jpg", "2": "t1.jpg"})
    wf["4"]["inputs"].update(swap_model=model, engine=engine)
    entry = comfy_server.run(wf, timeout=300)
    assert int(_text(entry, "9")) >= 1


def test_video_frames_swap_with_restore(comfy_server, comfy_base):
    wf = _wf("swap_video_restore.json", **{"1": "t1.jpg", "3": "t1.jpg"})
    wf["2"]["inputs"]["amount"] = 2
    wf["9"]["inputs"].update(mapping="by_index", target_indexes="0")  # one face per frame: restoring is slow on CPU
    entry = comfy_server.run(wf, timeout=600)
    frames = _images(comfy_server, entry, "10")
    assert len(frames) == 2 and int(_text(entry, "11")) == 2
    assert np.abs(frames[0].astype(int) - frames[1].astype(int)).max() <= 1  # same frame in, same frame out
    assert np.abs(frames[0].astype(int) - _input(comfy_base, "t1.jpg").astype(int)).max() > 10
    saved = os.path.join(comfy_base["models"], "visage", "faces", "swap_source.safetensors")
    assert os.path.isfile(saved)
    # the saved face model loads back and drives the same swap
    wf2 = _wf("swap_image.json", **{"1": "t1.jpg"})
    del wf2["2"]
    wf2["5"]["inputs"].pop("source_image")
    wf2["10"] = {"class_type": "VisageLoadFaceModel", "inputs": {"face_model": "swap_source.safetensors"}}
    wf2["5"]["inputs"]["source_embeds"] = ["10", 0]
    entry2 = comfy_server.run(wf2, timeout=300)
    assert int(_text(entry2, "9")) >= 1


def test_multi_face_mapping_workflow(comfy_server, comfy_base):
    wf = _wf("swap_multi_face.json", **{"1": "t1.jpg", "2": "t1.jpg"})
    entry = comfy_server.run(wf, timeout=300)
    assert int(_text(entry, "7")) == 2  # exactly the two mapped target faces
    single = copy.deepcopy(wf)
    single["5"]["inputs"].update(source_indexes="0", target_indexes="1")
    entry = comfy_server.run(single, timeout=300)
    assert int(_text(entry, "7")) == 1


def test_target_without_face_passes_through(comfy_server, comfy_base):
    wf = _wf("swap_image.json", **{"1": "no_face.png", "2": "t1.jpg"})
    entry = comfy_server.run(wf, timeout=300)
    assert int(_text(entry, "9")) == 0
    out = _images(comfy_server, entry, "6")[0]
    assert np.array_equal(out, _input(comfy_base, "no_face.png"))
    wf["5"]["inputs"]["on_no_face"] = "error"
    with pytest.raises(ch.PromptError, match="No face was found"):
        comfy_server.run(wf, timeout=300)


def test_bad_inputs_give_clear_errors(comfy_server):
    # source photo without a face
    wf = _wf("swap_image.json", **{"1": "t1.jpg", "2": "no_face.png"})
    with pytest.raises(ch.PromptError, match="source image batch"):
        comfy_server.run(wf, timeout=300)
    # two source images for three target frames
    wf = _wf("swap_image.json", **{"1": "t1.jpg", "2": "t1.jpg"})
    wf["11"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}}
    wf["12"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 2}}
    wf["5"]["inputs"].update(image=["11", 0], source_image=["12", 0])
    with pytest.raises(ch.PromptError, match="batch sizes do not match"):
        comfy_server.run(wf, timeout=300)
    # an upscaler in facerestore_models
    wf = _wf("swap_video_restore.json", **{"1": "t1.jpg", "3": "t1.jpg"})
    wf["6"]["inputs"]["restore_model"] = "not_a_face_model.pth"
    with pytest.raises(ch.PromptError, match="not a face-restoration model"):
        comfy_server.run(wf, timeout=300)


def test_restore_faces_node(comfy_server, comfy_base):
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "t1.jpg"}},
        "2": {
            "class_type": "VisageFaceAnalyzerLoader",
            "inputs": {
                "pack": "visage_test",
                "det_size": 640,
                "device": "auto",
                "precision": "auto",
                "det_threshold": 0.5,
                "engine": "auto",
            },
        },
        "3": {
            "class_type": "VisageRestoreModelLoader",
            "inputs": {
                "restore_model": "RestoreFormer.pth",
                "strength": 1.0,
                "fidelity": 0.5,
                "device": "auto",
                "precision": "auto",
            },
        },
        "4": {
            "class_type": "VisageRestoreFaces",
            "inputs": {
                "analyzer": ["2", 0],
                "restorer": ["3", 0],
                "image": ["1", 0],
                "order": "largest",
                "max_faces": 1,
                "mask_erode": 0.1,
                "mask_blur": 0.1,
                "on_no_face": "passthrough",
            },
        },
        "5": {
            "class_type": "SaveImage",
            "inputs": {"images": ["4", 0], "filename_prefix": ch.unique_prefix("restore")},
        },
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}},
    }
    entry = comfy_server.run(wf, timeout=300)
    assert int(_text(entry, "6")) == 1
    out = _images(comfy_server, entry, "5")[0]
    diff = np.abs(out.astype(int) - _input(comfy_base, "t1.jpg").astype(int)).max(-1)
    assert diff.max() > 10 and (diff > 1).mean() < 0.5  # one face region changed, most of the photo did not

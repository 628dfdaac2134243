"""Expression family on a real ComfyUI (--cpu) with test-built LivePortrait files (released key
names and shapes, random weights) in models/liveportrait/: the shipped API workflows run end to end,
expressions save / load / interpolate, and bad input gives a readable error."""

import os

import comfy_harness as ch
import numpy as np
import pytest
import torch


def _pack(object_info):
    packs = object_info["VisageFaceAnalyzerLoader"]["input"]["required"]["pack"][0]
    # the real small detector finds the six faces of t1.jpg and none in no_face.png; the random test pack
    # finds arbitrary boxes, so only shape-level checks hold with it
    return ("fixtures_real", True) if "fixtures_real" in packs else ("visage_test", False)


def _prompt(name, object_info, changes=None):
    wf = ch.load_api_workflow(name)
    pack, real = _pack(object_info)
    for n in wf.values():
        if n["class_type"] == "VisageFaceAnalyzerLoader":
            n["inputs"]["pack"] = pack
        if n["class_type"] == "SaveImage":
            n["inputs"]["filename_prefix"] = ch.unique_prefix(n["inputs"]["filename_prefix"])
    for (nid, key), v in (changes or {}).items():
        wf[nid]["inputs"][key] = v
    return wf, real


def _read(path):
    import cv2

    img = cv2.imread(path, cv2.IMREAD_COLOR)
    assert img is not None, path
    return img[..., ::-1]


def _outputs(server, entry, node_id):
    items = entry["outputs"].get(node_id, {}).get("images", [])
    return [
        os.path.join(server.base_dir, it.get("type", "output"), it.get("subfolder", ""), it["filename"]) for it in items
    ]


def test_expression_nodes_registered(object_info):
    for n in (
        "VisageLivePortraitLoader",
        "VisageExpressionEditor",
        "VisageExpressionTransfer",
        "VisageSaveExpression",
        "VisageLoadExpression",
        "VisageInterpolateExpression",
    ):
        assert n in object_info, n
        assert object_info[n]["category"] == "Visage/expression"
    ed = object_info["VisageExpressionEditor"]["input"]["required"]
    for s in (
        "rotate_pitch",
        "rotate_yaw",
        "rotate_roll",
        "blink",
        "eyebrow",
        "wink",
        "pupil_x",
        "pupil_y",
        "aaa",
        "eee",
        "woo",
        "smile",
    ):
        assert ed[s][0] == "FLOAT" and ed[s][1]["tooltip"]
    assert object_info["VisageExpressionEditor"]["output"] == ["IMAGE", "IMAGE", "MASK", "VISAGE_EXPRESSION"]


def test_editor_workflow_and_expression_files(comfy_server, comfy_base, object_info):
    wf, real = _prompt("expression_editor.json", object_info)
    entry = comfy_server.run(wf, timeout=900)
    src = _read(os.path.join(comfy_base["input"], "t1.jpg"))
    (out_path,) = _outputs(comfy_server, entry, "6")
    (crop_path,) = _outputs(comfy_server, entry, "7")
    (mask_path,) = _outputs(comfy_server, entry, "9")
    out, crop, mask = _read(out_path), _read(crop_path), _read(mask_path)[..., 0]
    assert out.shape == src.shape and crop.shape == (512, 512, 3) and mask.shape == src.shape[:2]
    assert mask.max() == 255 and mask.mean() < 0.5 * 255
    # no seam: where the (8-bit) paste mask is 0 the image differs by at most one level (mask values
    # below 0.5/255), and a few pixels further out it is the input, bit for bit
    import cv2

    outside = mask == 0
    diff = np.abs(out.astype(int) - src.astype(int))
    assert diff[outside].max() <= 1
    far = cv2.dilate((mask > 0).astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    assert np.array_equal(out[far], src[far])
    assert diff[~outside].max() > 0
    if real:  # the largest of the six faces of t1.jpg: a compact region, not the whole frame
        assert (mask > 0).mean() < 0.1
    # the editor's expression offset was saved as safetensors with the slider values
    from visage.nodes.expression.motion import Expression, slider_expression

    path = os.path.join(comfy_base["output"], "visage", "expressions", "smile_yaw.safetensors")
    e = Expression.load(path)
    ref = slider_expression({"smile": 0.8, "aaa": 20.0, "eyebrow": 4.0, "rotate_yaw": 5.0})
    torch.testing.assert_close(e.exp, ref.exp)
    torch.testing.assert_close(e.rotation, ref.rotation)

    # load (scaled) -> interpolate -> save, without any network
    prompt = {
        "1": {"class_type": "VisageLoadExpression", "inputs": {"name": "smile_yaw.safetensors", "ratio": 0.5}},
        "2": {"class_type": "VisageInterpolateExpression", "inputs": {"a": ["1", 0], "b": ["1", 0], "weight": 0.25}},
        "3": {
            "class_type": "VisageSaveExpression",
            "inputs": {"expression": ["2", 0], "name": "half", "overwrite": True},
        },
    }
    comfy_server.run(prompt, timeout=120)
    half = Expression.load(os.path.join(comfy_base["output"], "visage", "expressions", "half.safetensors"))
    torch.testing.assert_close(half.exp, ref.exp * 0.5)
    torch.testing.assert_close(half.rotation, ref.rotation * 0.5)


def test_transfer_workflow_passthrough_frame(comfy_server, comfy_base, object_info):
    wf, real = _prompt("expression_transfer.json", object_info)
    entry = comfy_server.run(wf, timeout=900)
    frames = sorted(_outputs(comfy_server, entry, "10"))
    masks = sorted(_outputs(comfy_server, entry, "13"))
    assert len(frames) == 2 and len(masks) == 2  # one output frame per driving frame
    src = _read(os.path.join(comfy_base["input"], "t1.jpg"))
    f0, f1 = _read(frames[0]), _read(frames[1])
    assert f0.shape == f1.shape == src.shape  # source size, whatever the driving size
    if real:
        # driving frame 2 (no_face.png) has no face: the source frame passes through unchanged
        assert np.array_equal(f1, src) and _read(masks[1]).max() == 0
        assert len(_outputs(comfy_server, entry, "11")) == 1
        m0 = _read(masks[0])[..., 0]
        assert m0.max() == 255 and np.abs(f0.astype(int) - src.astype(int))[m0 == 0].max() <= 1


def test_no_face_error_is_readable(comfy_server, object_info):
    pack, real = _pack(object_info)
    if not real:
        pytest.skip("needs the real detector (../shared/fixtures) to know that no_face.png has no face")
    wf, _ = _prompt(
        "expression_editor.json", object_info, {("1", "image"): "no_face.png", ("5", "on_no_face"): "error"}
    )
    with pytest.raises(ch.PromptError, match="No face was found"):
        comfy_server.run(wf, timeout=300)

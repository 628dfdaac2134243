"""docs/NO_FACE.md, proven for the analysis nodes on the real ComfyUI through scripts/visage_run.py: what
Analyze Faces, Face Embeds, Face Similarity, Align Faces, Face Mask and Face Keypoints Image do with a
frame that has no face, in every on_no_face mode."""

import json
import os
import subprocess
import sys

import comfy_harness as ch
import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "visage_run.py")


@pytest.fixture(scope="module")
def ctx(comfy_server, comfy_base, object_info, tmp_path_factory):
    if "VisageAnalyzeFaces" not in object_info:
        pytest.fail("the face nodes are not registered in the test ComfyUI")
    packs = object_info["VisageFaceAnalyzerLoader"]["input"]["required"]["pack"][0]
    blank = os.path.join(comfy_base["input"], "visage_no_face_test.png")
    Image.new("RGB", (320, 256), (127, 127, 127)).save(blank)
    has_t1 = os.path.isfile(os.path.join(comfy_base["input"], "t1.jpg"))
    return {
        "url": comfy_server.url,
        "object_info": object_info,
        "pack": "fixtures_real" if "fixtures_real" in packs else "visage_test",
        "tmp": tmp_path_factory.mktemp("no_face"),
        "has_t1": has_t1,
    }


def _node(ctx, class_type, **inputs):
    return ch.node_with_defaults(ctx["object_info"], class_type, **inputs)


def _analysis(ctx, images, on_no_face="passthrough", align_mode="passthrough", extra=None):
    """LoadImage(s) -> Analyze Faces -> keypoints / mask / align / count, every output saved or previewed."""
    wf = {
        "2": _node(ctx, "VisageFaceAnalyzerLoader", pack=ctx["pack"]),
        "3": dict(
            _node(
                ctx,
                "VisageAnalyzeFaces",
                analyzer=["2", 0],
                image=["1", 0],
                order="largest",
                face_index=-1,
                max_faces=0,
                min_score=0.0,
                on_no_face=on_no_face,
            ),
            _meta={"title": "Analyze Faces"},
        ),
        "20": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}},
        "4": {"class_type": "VisageKeypointsImage", "inputs": {"faces": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "nf_keypoints"}},
        "6": _node(ctx, "VisageFaceMask", faces=["3", 0], shape="hull", grow=0, feather=0),
        "7": {"class_type": "MaskToImage", "inputs": {"mask": ["6", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "nf_mask"}},
        "9": _node(
            ctx,
            "VisageAlignFaces",
            image=["3", 1],
            faces=["3", 0],
            template="arcface_112",
            crop_size=0,
            on_no_face=align_mode,
        ),
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "nf_crops"}},
    }
    names = list(images)
    wf["1"] = {"class_type": "LoadImage", "inputs": {"image": names[0]}}
    if len(names) == 2:  # a two-image batch
        wf["11"] = {"class_type": "LoadImage", "inputs": {"image": names[1]}}
        wf["12"] = {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["11", 0]}}
        wf["3"]["inputs"]["image"] = ["12", 0]
    wf.update(extra or {})
    return wf


def _run(ctx, wf, name):
    path = ctx["tmp"] / f"{name}.json"
    path.write_text(json.dumps(wf))
    out = ctx["tmp"] / name
    r = subprocess.run(
        [sys.executable, SCRIPT, str(path), "--url", ctx["url"], "--output", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = json.loads((out / "outputs.json").read_text())["outputs"] if (out / "outputs.json").exists() else {}
    return r, out, summary


def _img(out, summary, node):
    return np.asarray(Image.open(os.path.join(out, summary[node]["files"][0])).convert("RGB"))


def test_passthrough_keeps_the_frame_and_every_output_is_empty_not_an_error(ctx):
    r, out, s = _run(ctx, _analysis(ctx, ["visage_no_face_test.png"]), "passthrough")
    assert r.returncode == 0, r.stderr
    assert s["3"]["ui"]["visage_faces"] == [[]] and s["3"]["ui"]["visage_image_size"] == [[256, 320]]
    assert s["20"]["ui"]["text"] == ["0"]  # count
    assert _img(out, s, "5").max() == 0 and _img(out, s, "5").shape == (256, 320, 3)  # keypoints: black
    assert _img(out, s, "8").max() == 0 and _img(out, s, "8").shape == (256, 320, 3)  # mask: zero
    crop = _img(out, s, "10")
    assert crop.shape == (112, 112, 3) and crop.max() == 0  # align passthrough: one black crop


def test_error_modes_name_the_node(ctx):
    r, _out, _s = _run(ctx, _analysis(ctx, ["visage_no_face_test.png"], on_no_face="error"), "analyze_error")
    assert r.returncode == 1 and "node 3 (VisageAnalyzeFaces 'Analyze Faces') failed: NoFaceError" in r.stderr
    r, _out, _s = _run(ctx, _analysis(ctx, ["visage_no_face_test.png"], align_mode="error"), "align_error")
    assert r.returncode == 1 and "node 9 (VisageAlignFaces) failed: NoFaceError" in r.stderr
    embeds = {
        "13": _node(ctx, "VisageFaceEmbeds", faces=["3", 0], fusion="norm_mean"),
        "14": {"class_type": "PreviewAny", "inputs": {"source": ["13", 0]}},
    }
    r, _out, _s = _run(ctx, _analysis(ctx, ["visage_no_face_test.png"], extra=embeds), "embeds_error")
    assert r.returncode == 1 and "node 13 (VisageFaceEmbeds) failed" in r.stderr
    assert "No face to take an identity from" in r.stderr


def test_skip_drops_only_empty_frames_and_never_empties_the_batch(ctx):
    if not ctx["has_t1"]:
        pytest.skip("t1.jpg (insightface) is not in the test input folder")
    r, out, s = _run(ctx, _analysis(ctx, ["visage_no_face_test.png", "t1.jpg"], on_no_face="skip"), "skip")
    assert r.returncode == 0, r.stderr
    faces = s["3"]["ui"]["visage_faces"]
    assert len(faces) == 1 and len(faces[0]) >= 1  # the empty frame is left out
    assert len(s["3"]["files"]) == 1  # and so is its preview
    r, out, s = _run(
        ctx, _analysis(ctx, ["visage_no_face_test.png", "visage_no_face_test.png"], on_no_face="skip"), "skip_all"
    )
    assert r.returncode == 0, r.stderr
    assert s["3"]["ui"]["visage_faces"] == [[], []]  # nothing has a face: the batch passes through
    assert s["20"]["ui"]["text"] == ["0"]


def test_skip_works_through_the_whole_graph(ctx):
    """on_no_face = skip, then Align Faces fed the batch that went into Analyze Faces (what the shipped
    face_analysis.json does) or Analyze Faces' 'image' output (the kept frames): the same crops."""
    if not ctx["has_t1"]:
        pytest.skip("t1.jpg (insightface) is not in the test input folder")
    crops = {}
    for src in ("whole", "kept"):
        wf = _analysis(ctx, ["visage_no_face_test.png", "t1.jpg"], on_no_face="skip", align_mode="error")
        wf["9"]["inputs"]["image"] = ["12", 0] if src == "whole" else ["3", 3]  # 12: the two-image batch
        wf["21"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 3], "filename_prefix": f"nf_kept_{src}"}}
        r, out, s = _run(ctx, wf, f"skip_graph_{src}")
        assert r.returncode == 0, r.stderr
        assert len(s["21"]["files"]) == 1 and _img(out, s, "21").std() > 10  # only t1.jpg (not the grey frame)
        crops[src] = [np.asarray(Image.open(os.path.join(out, f)).convert("RGB")) for f in s["10"]["files"]]
    assert len(crops["whole"]) == len(crops["kept"]) >= 1
    for a, b in zip(crops["whole"], crops["kept"]):
        assert np.array_equal(a, b)


def test_similarity_against_a_frame_without_faces(ctx):
    if not ctx["has_t1"]:
        pytest.skip("t1.jpg (insightface) is not in the test input folder")
    extra = {
        "30": {"class_type": "LoadImage", "inputs": {"image": "t1.jpg"}},
        "31": _node(
            ctx,
            "VisageAnalyzeFaces",
            analyzer=["2", 0],
            image=["30", 0],
            order="largest",
            face_index=0,
            on_no_face="error",
        ),
        "32": _node(ctx, "VisageFaceEmbeds", faces=["31", 0], fusion="norm_mean"),
        "33": _node(ctx, "VisageFaceSimilarity", reference=["32", 0], faces=["3", 0], image=["1", 0]),
        "34": {"class_type": "PreviewAny", "inputs": {"source": ["33", 0]}},
        "35": {"class_type": "SaveImage", "inputs": {"images": ["33", 2], "filename_prefix": "nf_similarity"}},
    }
    r, out, s = _run(ctx, _analysis(ctx, ["visage_no_face_test.png"], extra=extra), "similarity")
    assert r.returncode == 0, r.stderr
    assert s["33"]["ui"]["visage_similarity"] == [[]] and s["33"]["ui"]["text"] == ["no faces"]
    assert float(s["34"]["ui"]["text"][0]) == -1.0  # best
    overlay = _img(out, s, "35")
    assert overlay.shape == (256, 320, 3) and np.all(np.abs(overlay.astype(int) - 127) <= 1)  # the image, unchanged

"""Saved workflows keep working, proven: every workflow of the first release, kept unchanged in
tests/fixtures/workflows_v1/ (UI files) and tests/fixtures/workflows_v1/api/ (their API twins), against the
live ComfyUI of the comfy tier.

* every file matches the live /object_info (the checkers of test_workflows.py: node types, input names and
  types, values in range / among the choices, required connections, link types);
* every UI file converts (as the editor's Queue does) to the same graph as its API twin, so running the
  twin is running the UI file;
* every API file runs through /prompt to completion and writes its outputs.

File names: the saved workflows name what the first release shipped: test-built model names
(tests/builders/adapters.py, which still builds them), released names (buffalo_l, inswapper_128.onnx,
GFPGANv1.4.pth, CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors: laid out over test-built files by
tests/builders/released.py) and input photos (t1.jpg, no_face.png and the templates' target.jpg,
source_face.jpg, group.jpg, two_faces.jpg, frame.jpg: copies of t1.jpg made by the builders). The workflows
are run unchanged except where a name exists only with ../shared/fixtures (the real-detector pack
'visage_adapters_realdet' and its photo 'visage_adapters_t1.jpg'): without the fixtures they run on the
test pack 'buffalo_l' and t1.jpg (FALLBACK). Output file prefixes are made unique per run (ComfyUI would
otherwise reuse cached results).
"""

import glob
import importlib.util
import json
import os

import comfy_harness as ch
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAVED = os.path.join(REPO, "tests", "fixtures", "workflows_v1")
UI_FILES = sorted(glob.glob(os.path.join(SAVED, "*.json")))
API_FILES = sorted(glob.glob(os.path.join(SAVED, "api", "*.json")))

_spec = importlib.util.spec_from_file_location(
    "visage_test_workflows", os.path.join(REPO, "tests", "comfy", "test_workflows.py")
)
tw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tw)
vr = tw.vr

# names that exist in the test models / input folders only when ../shared/fixtures is present
FALLBACK = {"visage_adapters_realdet": "buffalo_l", "visage_adapters_t1.jpg": "t1.jpg"}
SHOWS = {"SaveImage", "PreviewImage", "SaveLatent", "PreviewAny"}
SLOW = {"visage_faceid_plus.json"}  # CLIP-ViT-H-14 on a CPU: tens of seconds


def _load(path):
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def _params(files, sub=""):
    out = []
    for p in files:
        name = os.path.basename(p)
        marks = [pytest.mark.slow] if name in SLOW else []
        out.append(pytest.param(p, id=sub + name, marks=marks))
    return out


def test_the_record_is_complete():
    names = {os.path.basename(p) for p in UI_FILES}
    assert len(names) >= 13 and names == {os.path.basename(p) for p in API_FILES}


@pytest.mark.parametrize("path", UI_FILES, ids=os.path.basename)
def test_saved_ui_workflow_loads_and_matches_its_twin(path, object_info):
    kind, wf = vr.detect_format(_load(path), path)
    assert kind == "ui"
    problems = tw.ui_problems(wf, object_info)
    assert not problems, f"saved {os.path.relpath(path, REPO)} no longer fits the nodes:\n  " + "\n  ".join(problems)
    twin = os.path.join(SAVED, "api", os.path.basename(path))
    _k, api = vr.detect_format(_load(twin), twin)
    converted = tw.with_defaults(vr.ui_to_api(wf, object_info), object_info)
    api = tw.with_defaults(api, object_info)
    assert tw.canonical(converted) == tw.canonical(api), (
        f"saved {os.path.basename(path)} no longer converts to the graph of its API twin: "
        f"only in the UI file {sorted((tw.shallow(converted) - tw.shallow(api)).elements())[:6]}, "
        f"only in the API file {sorted((tw.shallow(api) - tw.shallow(converted)).elements())[:6]}"
    )


def _mapped(api, object_info, comfy_base):
    """The saved prompt with FALLBACK names where the fixtures' files are absent, and unique output prefixes."""
    packs = vr.input_type(object_info["VisageFaceAnalyzerLoader"], "pack")[0]
    mapped = []
    for node in api.values():
        inputs = node.get("inputs") or {}
        for k, v in list(inputs.items()):
            if not isinstance(v, str) or v not in FALLBACK:
                continue
            present = v in packs if k == "pack" else os.path.isfile(os.path.join(comfy_base["input"], v))
            if not present:
                inputs[k] = FALLBACK[v]
                mapped.append(f"{v} -> {FALLBACK[v]}")
        if "filename_prefix" in inputs:
            inputs["filename_prefix"] = ch.unique_prefix(inputs["filename_prefix"].replace("/", "_"))
    return api, mapped


@pytest.mark.parametrize("path", _params(API_FILES, "api/"))
def test_saved_api_workflow_runs(path, comfy_server, comfy_base, object_info):
    kind, api = vr.detect_format(_load(path), path)
    assert kind == "api"
    api = {k: v for k, v in api.items() if not k.startswith("_")}
    problems = tw.api_problems(api, object_info)
    assert not problems, f"saved {os.path.relpath(path, REPO)} no longer fits the nodes:\n  " + "\n  ".join(problems)
    prompt, _mapped_names = _mapped(api, object_info, comfy_base)
    entry = comfy_server.run(prompt, timeout=600)
    assert entry["status"].get("status_str") == "success", entry["status"]
    # every node that shows or saves a result reported it; every file named exists
    shown = {nid for nid, n in prompt.items() if n["class_type"] in SHOWS}
    assert shown and shown <= set(entry["outputs"]), (sorted(shown), sorted(entry["outputs"]))
    files = comfy_server.output_files(entry)
    assert all(os.path.isfile(f) for f in files), [f for f in files if not os.path.isfile(f)]

"""Face analysis inside a real ComfyUI (started with --cpu, pack in custom_nodes)."""

import os
import subprocess
import sys
import textwrap

import comfy_harness as ch
import numpy as np
import pytest
from PIL import Image

FACE_NODES = {
    "VisageFaceAnalyzerLoader": ([], ["VISAGE_ANALYZER"]),
    "VisageAnalyzeFaces": (["analyzer", "image"], ["VISAGE_FACES", "IMAGE", "INT", "IMAGE"]),
    "VisageAddFaceRecognizer": (["image", "faces"], ["VISAGE_FACES"]),
    "VisageFaceEmbeds": (["faces"], ["VISAGE_EMBEDS"]),
    "VisageSaveEmbeds": (["embeds"], []),
    "VisageLoadEmbeds": ([], ["VISAGE_EMBEDS"]),
    "VisageFaceSimilarity": (["reference", "faces"], ["FLOAT", "STRING", "IMAGE"]),
    "VisageAlignFaces": (["image", "faces"], ["IMAGE", "VISAGE_ALIGNED"]),
    "VisageFaceMask": (["faces"], ["MASK"]),
    "VisageKeypointsImage": (["faces"], ["IMAGE"]),
}


def test_pack_imports_without_failure(comfy_server):
    assert not comfy_server.import_failed(), comfy_server.log()[-3000:]
    assert "custom_nodes/visage" in comfy_server.log()


def test_face_nodes_have_typed_ports(object_info):
    for name, (linked_inputs, outputs) in FACE_NODES.items():
        assert name in object_info, name
        info = object_info[name]
        assert info["output"] == outputs, name
        assert info["category"].startswith("Visage/")
        req = info["input"]["required"]
        for inp in linked_inputs:
            assert inp in req, (name, inp)


def test_every_visage_input_has_a_tooltip(object_info):
    missing = []
    for name, info in object_info.items():
        if not name.startswith("Visage"):
            continue
        for section in ("required", "optional"):
            for inp, spec in info["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not opts.get("tooltip"):
                    missing.append(f"{name}.{inp}")
    assert not missing, f"inputs without tooltip: {missing}"


def _wf(pack, image="t1.jpg", engine="auto", **analyze):
    wf = ch.load_api_workflow("face_analysis.json")
    wf["2"]["inputs"]["pack"] = pack
    wf["2"]["inputs"]["engine"] = engine
    wf["1"]["inputs"]["image"] = image
    wf["3"]["inputs"].update(analyze)
    for node in wf.values():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = ch.unique_prefix(node["inputs"]["filename_prefix"])
    return wf


@pytest.mark.parametrize("engine", ["auto", "torch"])
def test_face_analysis_workflow_runs_and_writes_outputs(comfy_server, engine):
    entry = comfy_server.run(_wf("visage_test", engine=engine), timeout=600)
    faces = entry["outputs"]["3"]["visage_faces"][0]
    assert len(faces) >= 1 and all(f["selected"] for f in faces)
    files = comfy_server.output_files(entry)
    saved = [f for f in files if "/output/" in f]
    assert any("face_analysis_preview" in f for f in saved) and any("face_analysis_mask" in f for f in saved)
    assert sum("face_analysis_crops" in f for f in saved) == len(faces)
    for f in saved:
        im = Image.open(f)
        assert im.size[0] > 0
    preview = [f for f in saved if "face_analysis_preview" in f][0]
    assert Image.open(preview).size == (1280, 886)
    mask = np.asarray(Image.open([f for f in saved if "face_analysis_mask" in f][0]).convert("L"))
    assert mask.max() >= 250 and mask.min() == 0


def test_real_fixture_pack_finds_six_faces_in_t1(comfy_server, comfy_base):
    if not os.path.isdir(os.path.join(comfy_base["models"], "insightface", "models", "fixtures_real")):
        pytest.skip("../shared/fixtures is absent: no real models")
    entry = comfy_server.run(_wf("fixtures_real"), timeout=600)
    assert len(entry["outputs"]["3"]["visage_faces"][0]) == 6


def test_no_face_error_and_passthrough(comfy_server):
    with pytest.raises(ch.PromptError) as e:
        comfy_server.run(_wf("visage_test", image="no_face.png", on_no_face="error"), timeout=300)
    assert "No face was found" in str(e.value) and "on_no_face" in str(e.value)
    entry = comfy_server.run(_wf("visage_test", image="no_face.png", on_no_face="passthrough"), timeout=300)
    assert entry["outputs"]["3"]["visage_faces"] == [[]]
    saved = [f for f in comfy_server.output_files(entry) if "face_analysis_preview" in f]
    assert len(saved) == 1  # the frame passed through


def test_missing_pack_is_a_clear_error(comfy_server):
    with pytest.raises(ch.PromptError) as e:
        comfy_server.run(_wf("buffalo_s"), timeout=120)  # a real pack name the test models do not have
    assert "buffalo_s" in str(e.value)


def test_free_unloads_our_models_and_they_reload(comfy_server):
    wf = _wf("visage_test", engine="torch")  # torch modules are what ComfyUI's model management holds
    comfy_server.run(wf, timeout=300)
    before = comfy_server.log().count("Requested to load GraphModule")
    comfy_server.post("/free", {"unload_models": True, "free_memory": True})
    # ComfyUI's worker applies /free between queue items: it may pick up the next prompt before the
    # flag. A trivial prompt that loads none of our models guarantees the unload happened before wf2.
    comfy_server.run(
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": "no_face.png"}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        },
        timeout=120,
    )
    assert comfy_server.log().count("Requested to load GraphModule") == before
    wf2 = _wf("visage_test", engine="torch", min_score=0.01)  # a changed input so the analysis node runs again
    comfy_server.run(wf2, timeout=300)
    after = comfy_server.log().count("Requested to load GraphModule")
    assert after > before, "after /free our models must be loaded again through ComfyUI's model management"


def test_comfy_backend_registers_with_model_management(comfy_path, tmp_path):
    """In-process: our handles live in ComfyUI's loaded-model list; unload_all_models evicts them."""
    script = textwrap.dedent(f"""
        import sys, os
        sys.path.insert(0, {comfy_path!r})
        import torch
        import comfy.cli_args
        comfy.cli_args.args.cpu = True  # as `main.py --cpu`
        import comfy.model_management as mm
        from visage.nodes import comfy_glue
        from visage.core.model_manager import MANAGER
        p = {str(tmp_path / "m.bin")!r}
        open(p, "wb").write(b"x")
        h = MANAGER.get("t", p, lambda path, d, t: torch.nn.Linear(8, 8), device=torch.device("cpu"))
        assert type(h.backend_state).__name__ == "ModelPatcher"
        m = h.model()
        assert any(lm.model is h.backend_state for lm in mm.current_loaded_models)
        mm.unload_all_models()
        assert not any(lm.model is h.backend_state for lm in mm.current_loaded_models)
        h.model()
        assert any(lm.model is h.backend_state for lm in mm.current_loaded_models)
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


def test_similarity_workflow_scores_and_saves_embeds(comfy_server, comfy_base):
    wf = ch.load_api_workflow("face_similarity.json")
    wf["2"]["inputs"]["pack"] = "visage_test"
    wf["7"]["inputs"]["filename_prefix"] = ch.unique_prefix("sim")
    wf["8"]["inputs"]["name"] = "test_identity"
    entry = comfy_server.run(wf, timeout=600)
    scores = entry["outputs"]["6"]["visage_similarity"][0]
    assert len(scores) >= 2
    assert abs(scores[0]["score"] - 1.0) < 1e-3  # the reference face itself
    assert all(s["score"] < 0.9999 for s in scores[1:])  # other faces are different vectors
    saved = os.path.join(comfy_base["models"], "visage", "embeds", "test_identity.safetensors")
    assert os.path.isfile(saved)
    info = comfy_server.get("/object_info/VisageLoadEmbeds")
    assert "test_identity.safetensors" in info["VisageLoadEmbeds"]["input"]["required"]["name"][0]

"""A recognizer per method, in a real ComfyUI: one Analyze Faces feeds IP-Adapter FaceID and Arc2Face in
one graph, and each method takes the embedding of the recognizer it was trained on.

The analysis pack holds the real SCRFD-500M detector and three test-built 512-d recognizers
(glintr100, w600k_r50, arcface: different weights, so different embeddings). Proof that each method
uses its own: its output equals the output of the same graph analysed with a pack holding ONLY its
recognizer, and differs when the recognizer is overridden. Without the method's recognizer the node
stops with a message naming the file and its folder.
"""

import copy
import os
import shutil

import comfy_harness as ch
import pytest
from builders import adapters as B


def _latent(server, entry, node):
    from safetensors.torch import load_file

    files = [f for f in server.output_files(entry) if f.endswith(".latent") and f"/{node}_" in f.replace(os.sep, "/")]
    assert len(files) == 1, files
    return load_file(files[0])["latent_tensor"]


def _pack(comfy_base, name, recognizers):
    """A pack folder beside the adapters' one: its detector plus only the named recognizers."""
    src = os.path.join(comfy_base["models"], "insightface", "models", B.TEST_FILES["pack"])
    if not os.path.isdir(src):
        pytest.skip("needs ../shared/fixtures (real detector for the adapters' pack)")
    dst = os.path.join(comfy_base["models"], "insightface", "models", name)
    os.makedirs(dst, exist_ok=True)
    for f in ["det_500m.onnx"] + [r + ".onnx" for r in recognizers]:
        if not os.path.exists(os.path.join(dst, f)):
            shutil.copy(os.path.join(src, f), os.path.join(dst, f))
    return name


def _graph(pack, faceid_pack=None, arc_pack=None, faceid_override="", arc_override=""):
    """LoadImage -> Load Face Analyzer -> Analyze Faces (first face) -> FaceID -> KSampler -> SaveLatent
    and -> Arc2Face Encode -> KSampler -> SaveLatent. faceid_pack / arc_pack: analyse the FaceID / Arc2Face
    branch with another pack (a second analysis) instead of the shared one."""
    p = {
        "img": {"class_type": "LoadImage", "inputs": {"image": B.TEST_FILES["photo"]}},
        "unet": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": B.TEST_FILES["unet"], "weight_dtype": "default"},
        },
        "clip": {
            "class_type": "CLIPLoader",
            "inputs": {"clip_name": B.TEST_FILES["clip"], "type": "stable_diffusion", "device": "default"},
        },
        "pos": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "a portrait photo of a person", "clip": ["clip", 0]},
        },
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["clip", 0]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "faceid": {"class_type": "VisageFaceIDLoader", "inputs": {"faceid_file": B.TEST_FILES["faceid"]}},
    }

    def analysis(tag, pack_name):
        p[f"an_{tag}"] = {
            "class_type": "VisageFaceAnalyzerLoader",
            "inputs": {
                "pack": pack_name,
                "det_size": 640,
                "device": "cpu",
                "precision": "fp32",
                "det_threshold": 0.5,
                "engine": "auto",
            },
        }
        p[f"faces_{tag}"] = {
            "class_type": "VisageAnalyzeFaces",
            "inputs": {
                "analyzer": [f"an_{tag}", 0],
                "image": ["img", 0],
                "order": "left_to_right",
                "gender": "any",
                "face_index": 0,
                "max_faces": 0,
                "min_score": 0.0,
                "on_no_face": "error",
            },
        }
        return [f"faces_{tag}", 0]

    shared = analysis("shared", pack)
    fid_faces = analysis("fid", faceid_pack) if faceid_pack else shared
    arc_faces = analysis("arc", arc_pack) if arc_pack else shared
    p["apply"] = {
        "class_type": "VisageApplyFaceID",
        "inputs": {
            "model": ["unet", 0],
            "faceid": ["faceid", 0],
            "weight": 1.0,
            "start_at": 0.0,
            "end_at": 1.0,
            "plus_version": "auto",
            "shortcut_scale": 1.0,
            "lora_name": "none",
            "lora_strength": 1.0,
            "faces": fid_faces,
            "recognizer_override": faceid_override,
        },
    }
    p["arc"] = {
        "class_type": "VisageArc2FaceEncode",
        "inputs": {"clip": ["clip", 0], "faces": arc_faces, "recognizer_override": arc_override},
    }
    sampler = {"seed": 7, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    p["s_fid"] = {
        "class_type": "KSampler",
        "inputs": dict(
            sampler, model=["apply", 0], positive=["pos", 0], negative=["neg", 0], latent_image=["latent", 0]
        ),
    }
    p["s_arc"] = {
        "class_type": "KSampler",
        "inputs": dict(
            sampler, model=["unet", 0], positive=["arc", 0], negative=["arc", 1], latent_image=["latent", 0]
        ),
    }
    prefix = ch.unique_prefix("recognizers")
    p["save_fid"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": ["s_fid", 0], "filename_prefix": f"{prefix}/fid"},
    }
    p["save_arc"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": ["s_arc", 0], "filename_prefix": f"{prefix}/arc"},
    }
    return p


def _run(server, prompt):
    entry = server.run(copy.deepcopy(prompt), timeout=600)
    return _latent(server, entry, "fid"), _latent(server, entry, "arc")


def test_two_methods_two_recognizers_one_analysis(comfy_server, comfy_base):
    full = B.TEST_FILES["pack"]  # glintr100 (primary), w600k_r50 and arcface
    only_w600k = _pack(comfy_base, "visage_only_w600k_r50", ["w600k_r50"])
    only_arc = _pack(comfy_base, "visage_only_arcface", ["arcface"])
    fid, arc = _run(comfy_server, _graph(full))
    # the same latents when each branch is analysed with a pack holding only its method's recognizer
    fid_ref, arc_ref = _run(comfy_server, _graph(full, faceid_pack=only_w600k, arc_pack=only_arc))
    assert (fid - fid_ref).abs().max() == 0, "FaceID did not use the w600k_r50 embedding"
    assert (arc - arc_ref).abs().max() == 0, "Arc2Face did not use the arcface embedding"
    # and other latents when an expert overrides the recognizer (the pack's primary, glintr100)
    fid_o, arc_o = _run(comfy_server, _graph(full, faceid_override="glintr100", arc_override="glintr100"))
    assert (fid - fid_o).abs().max() > 1e-4 and (arc - arc_o).abs().max() > 1e-4


def test_missing_recognizer_names_file_and_folder(comfy_server, comfy_base):
    no_arc = _pack(comfy_base, "visage_no_arcface", ["glintr100", "w600k_r50"])
    with pytest.raises(ch.PromptError) as e:
        comfy_server.run(_graph(no_arc), timeout=600)
    msg = str(e.value)
    assert "Arc2Face needs arcface" in msg and "arcface.onnx" in msg and "insightface/models/antelopev2" in msg


def test_add_face_recognizer_supplies_a_missing_one(comfy_server, comfy_base):
    """Add Face Recognizer puts arcface.onnx's embedding on faces analysed without it (no second detection):
    Arc2Face then gives exactly the latent of a graph whose pack held arcface.onnx."""
    no_arc = _pack(comfy_base, "visage_no_arcface", ["glintr100", "w600k_r50"])
    only_arc = _pack(comfy_base, "visage_only_arcface", ["arcface"])
    _, arc_ref = _run(comfy_server, _graph(B.TEST_FILES["pack"], arc_pack=only_arc))
    g = _graph(no_arc)
    g["addrec"] = {
        "class_type": "VisageAddFaceRecognizer",
        "inputs": {"image": ["img", 0], "faces": ["faces_shared", 0], "recognizer": f"{only_arc}/arcface.onnx"},
    }
    g["arc"]["inputs"]["faces"] = ["addrec", 0]
    _, arc = _run(comfy_server, g)
    assert (arc - arc_ref).abs().max() == 0

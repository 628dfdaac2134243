"""PuLID-FLUX in a real ComfyUI: a tiny Flux built with ComfyUI's own classes (test node pack
``tests/comfy_nodes/visage_test_models``, node ``TestTinyFlux``) sampled with KSampler; PuLID files
at the released names in the released layout at tiny width (tests/builders/pulid_flux.py).

* the patch changes the sample; weight 0 and the graph without the node give the unpatched sample exactly;
* the same model object feeding another branch of the same prompt is unaffected, and after the patched
  runs the model still samples what it sampled before;
* repeated patched runs do not grow the server's memory (coarse: the models are tiny);
* a non-PuLID file is refused naming what it is (the model-kind checks are unit-tested).
"""

import copy
import os
import time

import comfy_harness as ch
import pytest
import torch


def _latents(server, entry):
    from safetensors.torch import load_file

    files = sorted(f for f in server.output_files(entry) if f.endswith(".latent"))
    return [load_file(f)["latent_tensor"] for f in files]


def _prompt(object_info, weight=1.0, seed=7, patched=True):
    p = {
        "flux": {
            "class_type": "TestTinyFlux",
            "inputs": {"seed": 0, "hidden_size": 64, "depth": 4, "depth_single_blocks": 8, "text_tokens": 8},
        },
        "photo": {"class_type": "LoadImage", "inputs": {"image": "source_face.jpg"}},
        "analyzer": ch.node_with_defaults(object_info, "VisageFaceAnalyzerLoader", pack="antelopev2"),
        "faces": ch.node_with_defaults(
            object_info, "VisageAnalyzeFaces", analyzer=["analyzer", 0], image=["photo", 0], max_faces=1
        ),
        "pulid": {"class_type": "VisageLoadPuLID", "inputs": {"pulid_file": "pulid_flux_v0.9.1.safetensors"}},
        "eva": {"class_type": "VisageLoadEvaClip", "inputs": {"eva_clip_file": "EVA02_CLIP_L_336_psz14_s6B.pt"}},
        "apply": {
            "class_type": "VisageApplyPuLIDFlux",
            "inputs": {
                "model": ["flux", 0],
                "pulid": ["pulid", 0],
                "eva_clip": ["eva", 0],
                "faces": ["faces", 0],
                "image": ["photo", 0],
                "weight": weight,
                "start_at": 0.0,
                "end_at": 1.0,
            },
        },
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sampler": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["apply", 0] if patched else ["flux", 0],
                "positive": ["flux", 1],
                "negative": ["flux", 1],
                "latent_image": ["latent", 0],
                "seed": seed,
                "steps": 2,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "denoise": 1.0,
            },
        },
    }
    if not patched:
        for k in ("photo", "analyzer", "faces", "pulid", "eva", "apply"):
            p.pop(k)
    return ch.with_latent_output(p, ch.unique_prefix("pulid"))


def _run(server, prompt):
    (lat,) = _latents(server, server.run(prompt, timeout=600))
    return lat


@pytest.fixture(scope="module")
def plain(comfy_server, object_info):
    """Unpatched samples (seeds 7 and 8) of the tiny Flux, before any PuLID node ran in this server."""
    return {s: _run(comfy_server, _prompt(object_info, seed=s, patched=False)) for s in (7, 8)}


def test_nodes_registered(object_info):
    for n in ("VisageLoadPuLID", "VisageLoadEvaClip", "VisageApplyPuLIDFlux", "TestTinyFlux"):
        assert n in object_info, n
    assert "pulid_flux_v0.9.1.safetensors" in object_info["VisageLoadPuLID"]["input"]["required"]["pulid_file"][0]


def test_patch_changes_output_and_weight_zero_is_exact(comfy_server, object_info, plain):
    patched = _run(comfy_server, _prompt(object_info, weight=1.0))
    assert patched.shape == plain[7].shape == (1, 16, 8, 8)
    assert torch.isfinite(patched).all()
    diff = float((patched - plain[7]).abs().max())
    assert diff > 1e-3, f"PuLID did not change the sample (max diff {diff})"
    zero = _run(comfy_server, _prompt(object_info, weight=0.0))
    assert torch.equal(zero, plain[7])


def test_other_branch_and_later_runs_unaffected(comfy_server, object_info, plain):
    # one prompt, one tiny-Flux object: the patched branch samples first (its latent feeds the plain
    # branch, whose result does not depend on it: Flux starts from pure noise at sigma 1 with denoise 1)
    comfy_server.post("/free", {"unload_models": False, "free_memory": True})  # no cached samples
    p = _prompt(object_info, weight=1.5, seed=8)
    p["sampler_b"] = copy.deepcopy(p["sampler"])
    p["sampler_b"]["inputs"].update(model=["flux", 0], latent_image=["sampler", 0])
    p["save_b"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": ["sampler_b", 0], "filename_prefix": ch.unique_prefix("pulid_b")},
    }
    entry = comfy_server.run(p, timeout=600)
    outs = entry["outputs"]

    def one(node):
        from safetensors.torch import load_file

        it = outs[node]["latents"][0]
        return load_file(os.path.join(comfy_server.base_dir, "output", it.get("subfolder", ""), it["filename"]))[
            "latent_tensor"
        ]

    a, b = one("save_latent"), one("save_b")
    assert float((a - plain[8]).abs().max()) > 1e-3
    assert torch.equal(b, plain[8]), "the unpatched branch changed"
    # and a later unpatched prompt (fresh caches, the models ComfyUI kept) samples as before
    comfy_server.post("/free", {"unload_models": False, "free_memory": True})
    assert torch.equal(_run(comfy_server, _prompt(object_info, seed=7, patched=False)), plain[7])


def _rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def test_repeated_runs_do_not_grow_memory(comfy_server, object_info, plain):
    # the earlier tests already ran the patched graph (models loaded, caches warm); two more runs with a
    # new weight each (the apply node and the sampler run again) must not grow the server's memory
    pid = comfy_server.proc.pid
    rss = []
    for w in (1.01, 1.02):
        _run(comfy_server, _prompt(object_info, weight=w))
        time.sleep(0.5)
        rss.append(_rss_mb(pid))
    growth = rss[1] - rss[0]
    assert growth < 48.0, (
        f"server RSS grew {growth:.1f} MB from one patched run to the next ({[round(r) for r in rss]})"
    )


def test_wrong_file_refused(comfy_server, object_info):
    p = _prompt(object_info)
    p["pulid"]["inputs"]["pulid_file"] = "visage-test-not-pulid.safetensors"
    with pytest.raises(ch.PromptError) as e:
        comfy_server.run(p, timeout=300)
    assert "InstantID" in str(e.value) and "not PuLID" in str(e.value)


def test_two_identities_one_node_masks_confine_each(comfy_server, object_info, plain):
    """Two faces, one Apply node, one mask each: a mask of zeros takes its identity out entirely, a mask of
    ones gives that identity everywhere -- the same sample as that face alone without masks."""
    both = _prompt(object_info, weight=1.0)
    both["photo"]["inputs"]["image"] = "two_faces.jpg"
    both["faces"]["inputs"].update(max_faces=2, face_index=-1)
    both["m0"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}
    both["m1"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xFF0000}}
    both["mb"] = {"class_type": "ImageBatch", "inputs": {"image1": ["m0", 0], "image2": ["m1", 0]}}
    both["masks"] = {"class_type": "ImageToMask", "inputs": {"image": ["mb", 0], "channel": "red"}}
    both["apply"]["inputs"]["masks"] = ["masks", 0]
    second = _prompt(object_info, weight=1.0)
    second["photo"]["inputs"]["image"] = "two_faces.jpg"
    second["faces"]["inputs"].update(max_faces=2, face_index=1)
    a, b = _run(comfy_server, both), _run(comfy_server, second)
    assert float((b - plain[7]).abs().max()) > 1e-3
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), float((a - b).abs().max())

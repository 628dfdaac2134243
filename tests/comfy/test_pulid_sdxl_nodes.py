"""Apply PuLID SDXL through the server, the whole node path: a tiny SDXL UNet (test node pack,
``TestTinySDXL``) sampled with KSampler; the released PuLID SDXL names at tiny widths
(builders/pulid_sdxl.py) loaded by 'Load PuLID Model', EVA-CLIP and BiSeNet from the PuLID-FLUX builders,
faces from 'Analyze Faces' (antelopev2).

* v1.1 and v1 change the sample; weight 0 gives the unpatched sample exactly;
* the IP-Adapter-named re-save of the v1 tensors gives exactly the v1 sample;
* a PuLID-FLUX file is refused on the SDXL node, naming what it is.
"""

import comfy_harness as ch
import pytest
import torch


def _prompt(object_info, pulid_file="pulid_v1.1.safetensors", weight=0.8, method="official", patched=True):
    p = {
        "sdxl": {
            "class_type": "TestTinySDXL",
            "inputs": {"seed": 0, "model_channels": 32, "context_dim": 24, "text_tokens": 8},
        },
        "photo": {"class_type": "LoadImage", "inputs": {"image": "source_face.jpg"}},
        "analyzer": ch.node_with_defaults(object_info, "VisageFaceAnalyzerLoader", pack="antelopev2"),
        "faces": ch.node_with_defaults(
            object_info, "VisageAnalyzeFaces", analyzer=["analyzer", 0], image=["photo", 0], max_faces=1
        ),
        "pulid": {"class_type": "VisageLoadPuLID", "inputs": {"pulid_file": pulid_file}},
        "eva": {"class_type": "VisageLoadEvaClip", "inputs": {"eva_clip_file": "EVA02_CLIP_L_336_psz14_s6B.pt"}},
        "apply": ch.node_with_defaults(
            object_info,
            "VisageApplyPuLIDSDXL",
            model=["sdxl", 0],
            pulid=["pulid", 0],
            eva_clip=["eva", 0],
            faces=["faces", 0],
            image=["photo", 0],
            weight=weight,
            method=method,
        ),
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sampler": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["apply", 0] if patched else ["sdxl", 0],
                "positive": ["sdxl", 1],
                "negative": ["sdxl", 1],
                "latent_image": ["latent", 0],
                "seed": 5,
                "steps": 2,
                "cfg": 2.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
    }
    if not patched:
        for k in ("photo", "analyzer", "faces", "pulid", "eva", "apply"):
            p.pop(k)
    return ch.with_latent_output(p, ch.unique_prefix("pulid_sdxl"))


def _run(server, prompt):
    from safetensors.torch import load_file

    files = sorted(f for f in server.output_files(server.run(prompt, timeout=600)) if f.endswith(".latent"))
    (lat,) = [load_file(f)["latent_tensor"] for f in files]
    return lat


@pytest.fixture(scope="module")
def plain(comfy_server, object_info):
    return _run(comfy_server, _prompt(object_info, patched=False))


def test_nodes_registered(object_info):
    assert "VisageApplyPuLIDSDXL" in object_info and "TestTinySDXL" in object_info
    files = object_info["VisageLoadPuLID"]["input"]["required"]["pulid_file"][0]
    for name in ("pulid_v1.bin", "pulid_v1.1.safetensors", "ip-adapter_pulid_sdxl_fp16.safetensors"):
        assert name in files


def test_v1_1_changes_the_sample_and_weight_zero_is_exact(comfy_server, object_info, plain):
    out = _run(comfy_server, _prompt(object_info))
    assert torch.isfinite(out).all()
    assert float((out - plain).abs().max()) > 1e-3, "PuLID v1.1 did not change the sample"
    assert torch.equal(_run(comfy_server, _prompt(object_info, weight=0.0)), plain)


def test_v1_and_its_ip_adapter_resave(comfy_server, object_info, plain):
    v1 = _run(comfy_server, _prompt(object_info, "pulid_v1.bin", method="style"))
    assert float((v1 - plain).abs().max()) > 1e-3, "PuLID v1 did not change the sample"
    resave = _run(comfy_server, _prompt(object_info, "ip-adapter_pulid_sdxl_fp16.safetensors", method="style"))
    assert torch.equal(resave, v1)


def test_flux_file_refused(comfy_server, object_info):
    with pytest.raises(ch.PromptError) as e:
        comfy_server.run(_prompt(object_info, "pulid_flux_v0.9.1.safetensors"), timeout=300)
    assert "PuLID SDXL" in str(e.value) and "PuLID-FLUX" in str(e.value)

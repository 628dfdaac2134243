"""A real ComfyUI (--cpu) runs the adapters' example API workflows with test-built weights (tiny
SD1.5-architecture UNet, CLIP-L text encoder, released-format adapter files) and the identity
changes the sampled latent; without the patch the result is the plain model's."""

import copy
import json

import comfy_harness as ch
import pytest
import torch

WF = ["visage_faceid_regional.json", "visage_instantid.json", "visage_instantid_regional.json", "visage_arc2face.json"]


def _latent(server, entry):
    from safetensors.torch import load_file

    files = [f for f in server.output_files(entry) if f.endswith(".latent")]
    assert len(files) == 1, files
    return load_file(files[0])["latent_tensor"]


def _run(server, prompt, stem):
    p = copy.deepcopy(prompt)
    p["save"]["inputs"]["filename_prefix"] = ch.unique_prefix(stem)
    return _latent(server, server.run(p, timeout=300))


@pytest.fixture(scope="module")
def plain(comfy_server):
    """The same graph without any adapter: tiny UNet + text prompts."""
    wf = ch.load_api_workflow("visage_instantid.json")
    wf["sampler"]["inputs"].update(model=["unet", 0], positive=["pos", 0], negative=["neg", 0])
    for k in ("apply", "instantid"):
        wf.pop(k)
    return wf, _run(comfy_server, wf, "plain")


def test_nodes_registered(object_info):
    for n in (
        "VisageInstantIDLoader",
        "VisageFaceIDLoader",
        "VisageApplyInstantID",
        "VisageApplyFaceID",
        "VisageArc2FaceEncode",
    ):
        assert n in object_info, n
        info = object_info[n]
        assert info["category"] == "Visage/adapters" and info["description"]
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{n}.{name} has no tooltip"


@pytest.mark.parametrize("name", WF)
def test_workflow_runs_and_identity_changes_result(comfy_server, plain, name):
    wf = ch.load_api_workflow(name)
    out = _run(comfy_server, wf, name[:-5])
    base_wf, base = plain
    assert out.shape == base.shape == (1, 4, 8, 8)
    assert torch.isfinite(out).all()
    assert (out - base).abs().max() > 1e-3, "the identity adapter did not change the result"


def test_disconnecting_removes_effect_and_weight_zero_is_plain(comfy_server, plain):
    base_wf, base = plain
    again = _run(comfy_server, base_wf, "plain_again")  # after patched runs, the UNet is clean
    torch.testing.assert_close(again, base)
    wf = ch.load_api_workflow("visage_instantid.json")
    wf["apply"]["inputs"]["ip_weight"] = 0.0
    torch.testing.assert_close(_run(comfy_server, wf, "w0"), base)


def test_faceid_regional_differs_from_one_identity_everywhere(comfy_server):
    wf = ch.load_api_workflow("visage_faceid_regional.json")
    a = _run(comfy_server, wf, "regional")
    wf2 = copy.deepcopy(wf)
    wf2["embeds"]["inputs"]["name"] = "visage-test-one-identity.safetensors"
    wf2["apply"]["inputs"].pop("masks")
    b = _run(comfy_server, wf2, "single")
    assert (a - b).abs().max() > 1e-3
    # the LoRA is applied: without it the result changes
    wf3 = copy.deepcopy(wf)
    wf3["apply"]["inputs"]["lora_name"] = "none"
    c = _run(comfy_server, wf3, "nolora")
    assert (a - c).abs().max() > 1e-3


def test_instantid_identitynet_changes_result(comfy_server):
    """IdentityNet (ComfyUI's ControlNet, the identity tokens as its context, per region) takes part."""
    wf = ch.load_api_workflow("visage_instantid_regional.json")
    a = _run(comfy_server, wf, "inst_cn")
    wf2 = copy.deepcopy(wf)
    wf2["apply"]["inputs"].pop("control_net")
    b = _run(comfy_server, wf2, "inst_nocn")
    assert (a - b).abs().max() > 1e-3


def _error(comfy_server, wf):
    with pytest.raises(ch.PromptError) as e:
        comfy_server.run(wf, timeout=300)
    return json.dumps(e.value.body)


def test_bad_inputs_are_clear_errors(comfy_server):
    # more identities than masks: two embeddings, no masks
    wf = ch.load_api_workflow("visage_faceid_regional.json")
    wf["apply"]["inputs"].pop("masks")
    wf["save"]["inputs"]["filename_prefix"] = ch.unique_prefix("err")
    msg = _error(comfy_server, wf)
    assert "2 identities but no masks" in msg
    # masks whose size does not fit the latent (64x64 latent*8 vs 50x64 masks)
    wf = ch.load_api_workflow("visage_faceid_regional.json")
    wf["m_empty"]["inputs"]["width"] = 50
    wf["save"]["inputs"]["filename_prefix"] = ch.unique_prefix("err")
    msg = _error(comfy_server, wf)
    assert "latent" in msg and "50x64" in msg
    # an SDXL adapter on the SD1.5 model
    wf = ch.load_api_workflow("visage_faceid_regional.json")
    wf["faceid"]["inputs"]["faceid_file"] = "visage-test-faceid_sdxl_layout.bin"
    wf["save"]["inputs"]["filename_prefix"] = ch.unique_prefix("err")
    msg = _error(comfy_server, wf)
    assert "does not fit this model" in msg and "SDXL" in msg and "SD1.5" in msg
    # an InstantID file given to the FaceID loader (misplaced in models/ipadapter)
    wf = ch.load_api_workflow("visage_faceid_regional.json")
    wf["faceid"]["inputs"]["faceid_file"] = "visage-test-instantid_tiny.safetensors"
    wf["save"]["inputs"]["filename_prefix"] = ch.unique_prefix("err")
    msg = _error(comfy_server, wf)
    assert "InstantID" in msg and "FaceID" in msg
    # and the InstantID payload connected to the FaceID apply node
    wf = ch.load_api_workflow("visage_faceid_regional.json")
    wf["faceid"] = {
        "class_type": "VisageInstantIDLoader",
        "inputs": {"instantid_file": "visage-test-instantid_tiny.safetensors"},
    }
    wf["save"]["inputs"]["filename_prefix"] = ch.unique_prefix("err")
    msg = _error(comfy_server, wf)
    assert "wrong kind of adapter" in msg and "InstantID" in msg


def test_instantid_from_analysed_faces_two_people(comfy_server, plain):
    """Real detector (shared fixtures) on a group photo: the two left-most faces become two identities,
    each with its own keypoint hint (only its face drawn, at its place) and region."""
    from builders.adapters import _shared_fixture

    if not (_shared_fixture("models", "det_500m.onnx") and _shared_fixture("images", "insightface", "t1.jpg")):
        pytest.skip("real fixture not available: ../shared/fixtures (det_500m.onnx, t1.jpg)")
    import numpy as np
    from PIL import Image

    wf = ch.load_api_workflow("visage_instantid_two_people.json")
    wf["save"]["inputs"]["filename_prefix"] = ch.unique_prefix("two_people")
    entry = comfy_server.run(wf, timeout=300)
    out = _latent(comfy_server, entry)
    assert (out - plain[1]).abs().max() > 1e-3
    hints = [
        np.asarray(Image.open(f))
        for f in comfy_server.output_files(entry)
        if "visage_faces" not in f and f.endswith(".png")
    ]
    assert len(hints) == 2 and hints[0].shape[:2] == (886, 1280)
    cols = [np.nonzero(h.max(axis=(0, 2)))[0] for h in hints]
    # left-to-right order: identity 0's keypoints lie left of identity 1's, each hint holds one face
    assert cols[0].max() < cols[1].min()
    assert all(c.max() - c.min() < 200 for c in cols)


def test_arc2face_two_identities_regional(comfy_server):
    one = ch.load_api_workflow("visage_arc2face.json")
    a = _run(comfy_server, one, "arc_one")
    two = copy.deepcopy(one)
    regional = ch.load_api_workflow("visage_faceid_regional.json")
    two.update({k: v for k, v in regional.items() if k.startswith(("m_", "i_")) or k == "masks"})
    two["embeds"]["inputs"]["name"] = "visage-test-two-identities.safetensors"
    two["encode"]["inputs"]["masks"] = ["masks", 0]
    b = _run(comfy_server, two, "arc_two")
    assert torch.isfinite(b).all() and (a - b).abs().max() > 1e-3
    two["encode"]["inputs"].pop("masks")
    two["save"]["inputs"]["filename_prefix"] = ch.unique_prefix("err")
    assert "2 identities but no masks" in _error(comfy_server, two)

"""A real ComfyUI (--cpu) runs the adapters' shipped API workflows with test-built weights (tiny
SD1.5-architecture UNet, CLIP-L text encoder, SD VAE decoder, released-format adapter files) and the
identity changes the sampled latent; without the patch the result is the plain model's.

The workflows name the released files (sd_xl_base_1.0 / v1-5-pruned-emaonly checkpoints, ip-adapter.bin,
ip-adapter-faceid*.bin + LoRAs, arc2face*, the antelopev2 / buffalo_l packs, source_face.jpg ...);
tests/builders/released.py lays those names out over the test-built files, so the graphs run unchanged.
Only the cost is changed here (comfy_harness.at_test_size: an 8x8 latent, masks scaled with it, 2 euler
steps) and a SaveLatent is added to read the sampled latent back. The SDXL checkpoint name holds the tiny
SD1.5 test checkpoint (a test SDXL checkpoint would need a full CLIP-G, see builders/released.py): the
InstantID graphs run on the SD1.5 layout with a tiny InstantID file of its width."""

import copy
import json
import os

import comfy_harness as ch
import pytest
import torch

WF = ["visage_faceid_regional.json", "visage_instantid.json", "visage_instantid_regional.json", "visage_arc2face.json"]


def _latent(server, entry):
    from safetensors.torch import load_file

    files = [f for f in server.output_files(entry) if f.endswith(".latent")]
    assert len(files) == 1, files
    return load_file(files[0])["latent_tensor"]


def _load(name):
    return ch.at_test_size(ch.load_api_workflow(name))


def _prefixed(prompt, stem):
    p = copy.deepcopy(prompt)
    p["save"]["inputs"]["filename_prefix"] = ch.unique_prefix(stem)
    return ch.with_latent_output(p, ch.unique_prefix(stem))


def _run(server, prompt, stem):
    return _latent(server, server.run(_prefixed(prompt, stem), timeout=300))


@pytest.fixture(scope="module")
def plain(comfy_server):
    """The same graph without any adapter: the checkpoint's UNet + text prompts."""
    wf = _load("visage_instantid.json")
    wf["sampler"]["inputs"].update(model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0])
    for k in ("apply", "instantid", "identitynet", "faces", "analyzer", "photo"):
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
    wf = _load(name)
    out = _run(comfy_server, wf, name[:-5])
    base_wf, base = plain
    assert out.shape == base.shape == (1, 4, 8, 8)
    assert torch.isfinite(out).all()
    assert (out - base).abs().max() > 1e-3, "the identity adapter did not change the result"


def test_disconnecting_removes_effect_and_weight_zero_is_plain(comfy_server, plain):
    base_wf, base = plain
    again = _run(comfy_server, base_wf, "plain_again")  # after patched runs, the UNet is clean
    torch.testing.assert_close(again, base)
    wf = _load("visage_instantid.json")
    wf["apply"]["inputs"]["ip_weight"] = 0.0
    wf["apply"]["inputs"].pop("control_net")  # IdentityNet is a ControlNet: ip_weight does not scale it
    torch.testing.assert_close(_run(comfy_server, wf, "w0"), base)


def test_faceid_regional_differs_from_one_identity_everywhere(comfy_server):
    wf = _load("visage_faceid_regional.json")
    a = _run(comfy_server, wf, "regional")
    wf2 = copy.deepcopy(wf)
    wf2["faces"]["inputs"]["image"] = ["photo_a", 0]  # one portrait: one identity
    wf2["apply"]["inputs"].pop("masks")
    b = _run(comfy_server, wf2, "single")
    assert (a - b).abs().max() > 1e-3
    # the LoRA is applied: without it the result changes
    wf3 = copy.deepcopy(wf)
    wf3["apply"]["inputs"]["lora_name"] = "none"
    c = _run(comfy_server, wf3, "nolora")
    assert (a - c).abs().max() > 1e-3


def test_faceid_embedded_lora_is_the_bins_own_lora(comfy_server):
    """lora_name = embedded applies the LoRA stored in the FaceID .bin (scale 1.0, as the official pipelines):
    it changes the result against 'none' and equals the same tensors saved as a separate LoRA file
    (builders.adapters.embedded_lora_as_file, named from the released numbering independently)."""
    from builders import adapters as B

    wf = _load("visage_faceid_regional.json")
    runs = {}
    for lora in ("embedded", "none", B.TEST_FILES["faceid_embedded_lora"]):
        w = copy.deepcopy(wf)
        w["apply"]["inputs"].update(lora_name=lora, lora_strength=1.0)
        runs[lora] = _run(comfy_server, w, f"lora_{lora[:8]}")
    assert (runs["embedded"] - runs["none"]).abs().max() > 1e-3
    torch.testing.assert_close(runs["embedded"], runs[B.TEST_FILES["faceid_embedded_lora"]], atol=1e-5, rtol=1e-5)


def test_new_node_defaults(object_info):
    """Nodes placed from now on: FaceID's embedded LoRA at 1.0; InstantID's official zero negative."""
    req = object_info["VisageApplyFaceID"]["input"]["required"]
    assert "embedded" in req["lora_name"][0] and req["lora_name"][1]["default"] == "embedded"
    assert req["lora_strength"][1]["default"] == 1.0
    assert object_info["VisageApplyInstantID"]["input"]["required"]["noise"][1]["default"] == 0.0
    variant = object_info["VisageFaceIDLoader"]["input"]["optional"]["variant"]
    assert variant[0] == ["auto", "faceid", "plus", "plusv2", "portrait", "portrait_unnorm"]


def test_instantid_identitynet_changes_result(comfy_server):
    """IdentityNet (ComfyUI's ControlNet, the identity tokens as its context, per region) takes part."""
    wf = _load("visage_instantid_regional.json")
    a = _run(comfy_server, wf, "inst_cn")
    wf2 = copy.deepcopy(wf)
    wf2["apply"]["inputs"].pop("control_net")
    b = _run(comfy_server, wf2, "inst_nocn")
    assert (a - b).abs().max() > 1e-3


def _error(comfy_server, wf):
    with pytest.raises(ch.PromptError) as e:
        comfy_server.run(_prefixed(wf, "err"), timeout=300)
    return json.dumps(e.value.body)


def test_bad_inputs_are_clear_errors(comfy_server):
    # more identities than masks: two faces, no masks
    wf = _load("visage_faceid_regional.json")
    wf["apply"]["inputs"].pop("masks")
    msg = _error(comfy_server, wf)
    assert "2 identities but no masks" in msg
    # masks whose size does not fit the latent (64x64 latent*8 vs 50x64 masks)
    wf = _load("visage_faceid_regional.json")
    wf["m_empty"]["inputs"]["width"] = 50
    msg = _error(comfy_server, wf)
    assert "latent" in msg and "50x64" in msg
    # an SDXL adapter on the SD1.5 model
    wf = _load("visage_faceid_regional.json")
    wf["faceid"]["inputs"]["faceid_file"] = "visage-test-faceid_sdxl_layout.bin"
    msg = _error(comfy_server, wf)
    assert "does not fit this model" in msg and "SDXL" in msg and "SD1.5" in msg
    # an InstantID file given to the FaceID loader (misplaced in models/ipadapter)
    wf = _load("visage_faceid_regional.json")
    wf["faceid"]["inputs"]["faceid_file"] = "visage-test-instantid_tiny.safetensors"
    msg = _error(comfy_server, wf)
    assert "InstantID" in msg and "FaceID" in msg
    # and the InstantID payload connected to the FaceID apply node
    wf = _load("visage_faceid_regional.json")
    wf["faceid"] = {
        "class_type": "VisageInstantIDLoader",
        "inputs": {"instantid_file": "visage-test-instantid_tiny.safetensors"},
    }
    msg = _error(comfy_server, wf)
    assert "wrong kind of adapter" in msg and "InstantID" in msg


def test_instantid_from_analysed_faces_two_people(comfy_server, plain):
    """Real detector (shared fixtures) on a group photo: the two left-most faces become two identities,
    each with its own keypoint hint (only its face drawn, at its place) and region. The shipped workflow
    with the pack mapped to the real detector and group.jpg to the fixtures' group photo."""
    from builders.adapters import _shared_fixture

    if not (_shared_fixture("models", "det_500m.onnx") and _shared_fixture("images", "insightface", "t1.jpg")):
        pytest.skip("real fixture not available: ../shared/fixtures (det_500m.onnx, t1.jpg)")
    import numpy as np
    from builders.adapters import TEST_FILES
    from PIL import Image

    wf = _load("visage_instantid_two_people.json")
    wf["analyzer"]["inputs"]["pack"] = TEST_FILES["pack"]
    wf["photo"]["inputs"]["image"] = TEST_FILES["photo"]
    entry = comfy_server.run(_prefixed(wf, "two_people"), timeout=300)
    out = _latent(comfy_server, entry)
    assert (out - plain[1]).abs().max() > 1e-3
    hints = [
        np.asarray(Image.open(os.path.join(comfy_server.base_dir, it["type"], it.get("subfolder", ""), it["filename"])))
        for it in entry["outputs"]["kps_preview"]["images"]
    ]
    assert len(hints) == 2 and hints[0].shape[:2] == (886, 1280)
    cols = [np.nonzero(h.max(axis=(0, 2)))[0] for h in hints]
    # left-to-right order: identity 0's keypoints lie left of identity 1's, each hint holds one face
    assert cols[0].max() < cols[1].min()
    assert all(c.max() - c.min() < 200 for c in cols)


def test_arc2face_two_identities_regional(comfy_server):
    one = _load("visage_arc2face.json")
    a = _run(comfy_server, one, "arc_one")
    two = copy.deepcopy(one)
    regional = _load("visage_faceid_regional.json")
    two.update({k: v for k, v in regional.items() if k.startswith(("m_", "i_")) or k == "masks"})
    two["faces"]["inputs"].update(order="left_to_right", max_faces=2)  # two faces of the photo: two identities
    two["encode"]["inputs"]["masks"] = ["masks", 0]
    b = _run(comfy_server, two, "arc_two")
    assert torch.isfinite(b).all() and (a - b).abs().max() > 1e-3
    two["encode"]["inputs"].pop("masks")
    assert "2 identities but no masks" in _error(comfy_server, two)

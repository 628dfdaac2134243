"""IP-Adapter FaceID Plus V2 end to end in a real ComfyUI (--cpu), with a CLIP-ViT-H-14 vision tower in the
released layout (tests/builders/adapters.py: 632M random fp16 parameters, cached once per machine) loaded by
ComfyUI's own 'Load CLIP Vision', our face analysis (real SCRFD detector from ../shared/fixtures on a real
group photo), and the tiny SD1.5-architecture UNet.

* The shipped workflow runs; the identity changes the sampled latent; Plus V1 (no shortcut) differs from V2.
* weight 0 gives exactly the plain model's latent, and so does the plain graph after the patched runs.
* The server used [1, 257, 1280] penultimate ViT-H features and encoded the face once (later runs: cache).
* In-process, with ComfyUI's real loader on the same file: the node's features are CLIPVisionEncode's
  penultimate hidden states of the face aligned as insightface's norm_crop(224) does (cv2), and the
  negative's are those of the all-zero normalised input, as the published IP-Adapter code does.
"""

import copy
import os
import re
import sys

import comfy_harness as ch
import numpy as np
import pytest
import torch
from builders import adapters as B

WF = "visage_faceid_plus.json"
# ViT-H/14 on this 2-core CPU: ~30 s for this file when the machine is quiet, ~80 s when it is shared
pytestmark = pytest.mark.slow


def _need_fixtures():
    if not (B._shared_fixture("models", "det_500m.onnx") and B._shared_fixture("images", "insightface", "t1.jpg")):
        pytest.skip("real fixture not available: ../shared/fixtures (det_500m.onnx, t1.jpg)")


def _latent(server, entry):
    from safetensors.torch import load_file

    files = [f for f in server.output_files(entry) if f.endswith(".latent")]
    assert len(files) == 1, files
    return load_file(files[0])["latent_tensor"]


@pytest.fixture(scope="module")
def runs(comfy_server):
    _need_fixtures()
    wf = ch.at_test_size(ch.load_api_workflow(WF))
    # the shipped graph on the real detector and the fixtures' group photo (its first face, left to right)
    wf["analyzer"]["inputs"]["pack"] = B.TEST_FILES["pack"]
    wf["photo"]["inputs"]["image"] = B.TEST_FILES["photo"]
    wf["faces"]["inputs"]["order"] = "left_to_right"
    out = {}

    def go(tag, prompt):
        p = copy.deepcopy(prompt)
        p["save"]["inputs"]["filename_prefix"] = ch.unique_prefix(f"fidplus_{tag}")
        ch.with_latent_output(p, ch.unique_prefix(f"fidplus_{tag}"))
        out[tag] = _latent(comfy_server, comfy_server.run(p, timeout=600))

    plain = copy.deepcopy(wf)
    plain["sampler"]["inputs"]["model"] = ["ckpt", 0]
    for k in ("apply", "faceid", "clip_vision", "analyzer", "faces", "photo"):
        plain.pop(k)
    adapter = copy.deepcopy(wf)
    adapter["apply"]["inputs"]["lora_name"] = "none"  # the identity attention alone
    w0 = copy.deepcopy(adapter)
    w0["apply"]["inputs"]["weight"] = 0.0
    v1 = copy.deepcopy(adapter)
    v1["apply"]["inputs"]["plus_version"] = "v1"
    log_start = len(comfy_server.log())
    go("plain", plain)
    go("shipped", wf)
    go("adapter", adapter)
    go("w0", w0)
    go("v1", v1)
    go("plain_after", plain)
    out["log"] = comfy_server.log()[log_start:]
    return out


def test_faceid_plus_v2_runs_and_identity_changes_result(runs):
    base = runs["plain"]
    assert base.shape == (1, 4, 8, 8)
    for tag in ("shipped", "adapter", "v1"):
        assert runs[tag].shape == base.shape and torch.isfinite(runs[tag]).all(), tag
        assert (runs[tag] - base).abs().max() > 1e-3, f"{tag}: FaceID Plus did not change the result"
    # 'auto' read v2 from the file name: the shortcut (tokens + s * perceiver) matters
    assert (runs["adapter"] - runs["v1"]).abs().max() > 1e-4
    # the paired LoRA is applied on top
    assert (runs["shipped"] - runs["adapter"]).abs().max() > 1e-3


def test_weight_zero_and_plain_after_are_the_plain_model(runs):
    torch.testing.assert_close(runs["w0"], runs["plain"])
    torch.testing.assert_close(runs["plain_after"], runs["plain"])


def test_server_used_vit_h_penultimate_features_encoded_once(runs):
    lines = re.findall(
        r"FaceID Plus CLIP-vision features of (\d+) face\(s\) \(([\d, ]+)\), (encoded|from cache)", runs["log"]
    )
    assert [l[2] for l in lines] == ["encoded", "from cache", "from cache", "from cache"], lines
    assert all(l[0] == "1" and l[1] == "1, 257, 1280" for l in lines), lines  # ViT-H/14 at 224: 257 tokens x 1280


# ------------------------------------------------------------------------------------------- in-process


@pytest.fixture(scope="module")
def comfy_inproc(comfy_path):
    if comfy_path not in sys.path:
        sys.path.insert(0, comfy_path)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.clip_vision

    yield comfy.clip_vision
    # release ComfyUI's ModelPatchers while ComfyUI's modules are alive (not in __del__ at exit)
    import gc

    import comfy.model_management as mm

    mm.unload_all_models()
    F_cache = sys.modules.get("visage.nodes.adapters.methods.faceid")
    if F_cache is not None:
        F_cache.CLIP_CACHE.clear()
    gc.collect()


def test_features_are_clip_vision_encode_of_the_aligned_face(comfy_base, comfy_inproc, comfy_path):
    _need_fixtures()
    from insightface.utils.face_align import norm_crop
    from PIL import Image

    from visage.core.types import FaceSet
    from visage.nodes import comfy_glue
    from visage.nodes.adapters.methods import faceid as N
    from visage.nodes.face.analyzer import load_analyzer

    # CLIPVisionEncode is encode_image(image, crop=...) on the loaded model: that is the reference called below
    with open(os.path.join(comfy_path, "nodes.py"), encoding="utf-8") as f:
        assert "output = clip_vision.encode_image(image, crop=crop_image)" in f.read()
    path = os.path.join(comfy_base["models"], "clip_vision", B.TEST_FILES["clip_vision"])
    cv = comfy_inproc.load(path)  # what 'Load CLIP Vision' calls
    vm = cv.model.vision_model
    assert len(vm.encoder.layers) == 32 and vm.embeddings.position_embedding.weight.shape == (257, 1280)
    # every parameter of ComfyUI's ViT-H comes from the file, with the same shape (nothing left uninitialised)
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes == {k: tuple(v.shape) for k, v in cv.model.state_dict().items()}

    pack = os.path.join(comfy_base["models"], "insightface", "models", B.TEST_FILES["pack"])
    an = load_analyzer(pack, "cpu", torch.float32, engine="onnxruntime")
    photo = np.asarray(Image.open(os.path.join(comfy_base["input"], B.TEST_FILES["photo"])).convert("RGB"))
    image = torch.from_numpy(photo.astype(np.float32) / 255.0)[None]  # as LoadImage gives it
    fs = an.analyze(image)
    first = min(fs.faces[0], key=lambda f: float(f.bbox[0]))  # the workflow's face (left_to_right, 1)
    faces = FaceSet(faces=((first,),), image_sizes=fs.image_sizes)

    N.CLIP_CACHE.clear()
    with torch.inference_mode():
        cond, uncond = N.clip_features(comfy_glue, faces, image, cv, 1280)
        ref_crop = norm_crop(photo, first.kps.numpy(), image_size=224)  # insightface, cv2.warpAffine
        ref = cv.encode_image(torch.from_numpy(ref_crop.astype(np.float32) / 255.0)[None], crop=True)
        zero = cv.model(pixel_values=torch.zeros(1, 3, 224, 224), intermediate_output=-2)[1].float()
    assert cond.shape == uncond.shape == (1, 257, 1280) and cond.dtype == torch.float32
    assert torch.isfinite(cond).all()
    d_ref = (cond[0] - ref.penultimate_hidden_states[0]).norm()
    d_last = (cond[0] - ref.last_hidden_state[0]).norm()  # the last layer instead of the penultimate
    d_zero = (cond[0] - zero[0]).norm()  # another input (the blank negative)
    assert d_ref < 0.02 * d_last and d_ref < 0.02 * d_zero, (float(d_ref), float(d_last), float(d_zero))
    # the negative: the all-zero normalised input through the vision model (published IP-Adapter FaceID Plus)
    torch.testing.assert_close(uncond, zero)

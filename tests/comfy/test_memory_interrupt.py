"""Memory and interrupt on a real ComfyUI (--cpu), with networks of the released shapes (random weights).

* ``POST /free`` (unload models + free memory) releases what loading Visage's models added to the
  server's RSS (at least 90 %), and the next run loads them again and gives the same images.
* ``POST /interrupt`` stops Restore Faces (60 frames, a GFPGAN v1.4-shaped restorer), Expression
  Transfer (40 driving frames, the released LivePortrait networks) and Analyze Faces (many 1080p
  frames) within ``CANCEL_LIMIT_S`` seconds, and the next prompt runs.

The released-shape GFPGAN (86 M parameters, 345 MB) is written by this module into the session's
models folder; one 512x512 forward of it takes many seconds on a 2-core CPU, so only a cancel check
inside the network (comfy_glue.cancellable) meets the limit.
"""

import os
import time

import comfy_harness as ch
import pytest
import torch

GFPGAN_NAME = "visage_test_gfpgan_v14_shape.pth"
# 2 s is the requirement; + 0.5 s for the HTTP polling (50 ms), the history write, and a shared
# 2-core machine where other test processes run. The assertion still fails for any loop that checks
# cancel once per frame (a released-shape restorer frame is > 10 s here) or once per 16-frame chunk.
CANCEL_LIMIT_S = float(os.environ.get("VISAGE_CANCEL_LIMIT_S", "2.5"))


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


def _settled_rss(pid: int, timeout: float = 30.0) -> float:
    """RSS once it stops moving (the worker applies /free between prompts, asynchronously)."""
    t0, last = time.time(), _rss_mb(pid)
    while time.time() - t0 < timeout:
        time.sleep(0.5)
        now = _rss_mb(pid)
        if abs(now - last) < 2.0:
            return now
        last = now
    return last


@pytest.fixture(scope="module")
def gfpgan(comfy_base):
    """A GFPGAN v1.4-shaped restorer (spandrel's default GFPGANv1Clean: 512 px, channel multiplier 2)."""
    from spandrel.architectures.GFPGAN import GFPGAN

    path = os.path.join(comfy_base["models"], "facerestore_models", GFPGAN_NAME)
    if not os.path.exists(path):
        torch.manual_seed(7)
        net = GFPGAN()
        torch.save(net.state_dict(), path)
    return GFPGAN_NAME


def _pack(object_info):
    packs = object_info["VisageFaceAnalyzerLoader"]["input"]["required"]["pack"][0]
    return "fixtures_real" if "fixtures_real" in packs else "visage_test"


def _analyzer(pack):
    return {
        "class_type": "VisageFaceAnalyzerLoader",
        "inputs": {
            "pack": pack,
            "det_size": 640,
            "device": "auto",
            "precision": "auto",
            "det_threshold": 0.5,
            "engine": "auto",
        },
    }


def _analyze(image, analyzer="an"):
    return {
        "class_type": "VisageAnalyzeFaces",
        "inputs": {
            "analyzer": [analyzer, 0],
            "image": image,
            "order": "largest",
            "gender": "any",
            "face_index": -1,
            "max_faces": 0,
            "min_score": 0.0,
            "on_no_face": "passthrough",
        },
    }


def _frames(n, size=None):
    nodes = {
        "img": {"class_type": "LoadImage", "inputs": {"image": "t1.jpg"}},
        "rep": {"class_type": "RepeatImageBatch", "inputs": {"image": ["img", 0], "amount": n}},
    }
    if size:
        nodes["scaled"] = {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["img", 0],
                "upscale_method": "bilinear",
                "width": size[0],
                "height": size[1],
                "crop": "disabled",
            },
        }
        nodes["rep"]["inputs"]["image"] = ["scaled", 0]
    return nodes


def _restore_prompt(pack, gfpgan, n, prefix):
    p = _frames(n)
    p["an"] = _analyzer(pack)
    p["rl"] = {
        "class_type": "VisageRestoreModelLoader",
        "inputs": {"restore_model": gfpgan, "strength": 0.8, "fidelity": 0.5, "device": "auto", "precision": "auto"},
    }
    p["rf"] = {
        "class_type": "VisageRestoreFaces",
        "inputs": {
            "restorer": ["rl", 0],
            "image": ["rep", 0],
            "analyzer": ["an", 0],
            "order": "largest",
            "max_faces": 1,
            "mask_erode": 0.1,
            "mask_blur": 0.1,
            "on_no_face": "passthrough",
        },
    }
    p["save"] = {"class_type": "SaveImage", "inputs": {"images": ["rf", 0], "filename_prefix": prefix}}
    return p


def _transfer_prompt(pack, n, prefix):
    p = _frames(n)
    p["an"] = _analyzer(pack)
    p["fs"] = _analyze(["img", 0])
    p["fd"] = _analyze(["rep", 0])
    p["lp"] = {"class_type": "VisageLivePortraitLoader", "inputs": {"device": "auto", "precision": "auto"}}
    p["tr"] = {
        "class_type": "VisageExpressionTransfer",
        "inputs": {
            "liveportrait": ["lp", 0],
            "source_image": ["img", 0],
            "source_faces": ["fs", 0],
            "driving_images": ["rep", 0],
            "driving_faces": ["fd", 0],
            "face_select": "largest",
            "face_index": 0,
            "motion": "relative",
            "region": "all",
            "eye_retargeting": False,
            "lip_retargeting": False,
            "smoothing": 0.3,
            "multiplier": 1.0,
            "crop_scale": 2.3,
            "feather": 0.1,
            "color_transfer": True,
            "stitching": True,
            "on_no_face": "passthrough",
        },
    }
    p["save"] = {"class_type": "SaveImage", "inputs": {"images": ["tr", 0], "filename_prefix": prefix}}
    return p


def _analysis_prompt(pack, n, prefix):
    p = _frames(n, size=(1920, 1080))
    p["an"] = _analyzer(pack)
    p["af"] = _analyze(["rep", 0])
    p["save"] = {"class_type": "SaveImage", "inputs": {"images": ["af", 3], "filename_prefix": prefix}}
    return p


def _swap_prompt(pack, prefix):
    p = _frames(1)
    p["an"] = _analyzer("buffalo_l")  # its recognizer is the one the swapper was trained on (w600k_r50)
    p["sm"] = {
        "class_type": "VisageSwapModelLoader",
        "inputs": {"swap_model": "inswapper_128.onnx", "device": "auto", "precision": "auto", "engine": "auto"},
    }
    p["sw"] = {
        "class_type": "VisageSwapFaces",
        "inputs": {
            "analyzer": ["an", 0],
            "swapper": ["sm", 0],
            "image": ["img", 0],
            "source_image": ["img", 0],
            "mapping": "by_order",
            "order": "largest",
            "source_indexes": "0",
            "target_indexes": "",
            "blend": 1.0,
            "mask_type": "box",
            "mask_erode": 0.1,
            "mask_blur": 0.1,
            "color_transfer": False,
            "temporal_smoothing": 0.5,
            "on_no_face": "passthrough",
            "min_similarity": 0.3,
        },
    }
    p["save"] = {"class_type": "SaveImage", "inputs": {"images": ["sw", 0], "filename_prefix": prefix}}
    return p


def _images(server, entry):
    import cv2

    out = []
    for f in sorted(server.output_files(entry)):
        img = cv2.imread(f, cv2.IMREAD_UNCHANGED)
        assert img is not None, f
        out.append(img)
    return out


def _all_families(pack, gfpgan, tag):
    """One prompt per family, each loading its models: analysis, swap, restore, expression."""
    return [
        _analysis_prompt(pack, 1, ch.unique_prefix(f"visage/mem_an_{tag}")),
        _swap_prompt(pack, ch.unique_prefix(f"visage/mem_sw_{tag}")),
        _restore_prompt(pack, gfpgan, 1, ch.unique_prefix(f"visage/mem_rf_{tag}")),
        _transfer_prompt(pack, 1, ch.unique_prefix(f"visage/mem_tr_{tag}")),
    ]


def _free(server):
    server.post("/free", {"unload_models": True, "free_memory": True})


def _reloads(server):
    return server.log().count("Visage: reloaded ")


@pytest.mark.slow  # ~5 min on 2 CPU cores: three rounds of every family with released-shape networks
def test_free_releases_visage_models(comfy_server, object_info, gfpgan):
    server, pid = comfy_server, comfy_server.proc.pid
    pack = _pack(object_info)
    # warm-up: imports (onnxruntime, spandrel, the families' modules) and first loads; then free, so the
    # baseline has every library imported and no Visage model loaded
    first = [_images(server, server.run(p)) for p in _all_families(pack, gfpgan, "a")]
    _free(server)
    before = _settled_rss(pid)
    reloads0 = _reloads(server)
    second = [_images(server, server.run(p)) for p in _all_families(pack, gfpgan, "b")]
    loaded = _settled_rss(pid)
    assert _reloads(server) > reloads0, "the models were not loaded again after /free"
    _free(server)
    after = _settled_rss(pid)
    added, released = loaded - before, loaded - after
    print(f"\nVmRSS before load {before:.0f} MB, after load {loaded:.0f} MB, after /free {after:.0f} MB")
    assert added > 300, f"loading added only {added:.0f} MB: the test does not load the released-shape models"
    assert released >= 0.9 * added, (
        f"/free released {released:.0f} MB of the {added:.0f} MB loading added "
        f"(before {before:.0f}, loaded {loaded:.0f}, after {after:.0f})"
    )
    third = [_images(server, server.run(p)) for p in _all_families(pack, gfpgan, "c")]
    for a, b, c in zip(first, second, third):
        assert len(a) == len(b) == len(c) > 0
        for x, y, z in zip(a, b, c):
            assert (x == y).all() and (x == z).all(), "a reloaded model gave a different image"


def _interrupt_latency(server, prompt, delay):
    """Queue ``prompt``, POST /interrupt ``delay`` s after it started running; seconds to its end."""
    pid = server.queue(prompt)
    t0 = time.time()
    while time.time() - t0 < 120:
        q = server.get("/queue")
        if any(item[1] == pid for item in q.get("queue_running", [])):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the prompt did not start")
    time.sleep(delay)
    hist = server.get(f"/history/{pid}")
    assert not (hist and pid in hist), f"the prompt ended before the interrupt (delay {delay} s is too long)"
    t_int = time.time()
    server.post("/interrupt", {})
    while time.time() - t_int < 300:
        hist = server.get(f"/history/{pid}")
        if hist and pid in hist:
            t_end = time.time()
            msgs = [m[0] for m in hist[pid]["status"].get("messages", [])]
            assert "execution_interrupted" in msgs, msgs
            return t_end - t_int
        time.sleep(0.05)
    raise AssertionError("the interrupted prompt did not end within 300 s")


@pytest.mark.parametrize("node", ["restore", "transfer", "analysis"])
def test_interrupt_stops_long_batches(comfy_server, object_info, gfpgan, node):
    server = comfy_server
    pack = _pack(object_info)
    make = {
        "restore": lambda n, pre: _restore_prompt(pack, gfpgan, n, pre),
        "transfer": lambda n, pre: _transfer_prompt(pack, n, pre),
        "analysis": lambda n, pre: _analysis_prompt(pack, n, pre),
    }[node]
    # analysis: 1080p frames (a chunk of 16 of them was several seconds); 24 keep the batch at 600 MB
    n, delay = {"restore": (60, 3.0), "transfer": (40, 3.0), "analysis": (24, 1.0)}[node]
    # a short run first: the models are loaded (cached) before the long run, so the interrupt lands in
    # the batch work, not in a file load
    server.run(make(1, ch.unique_prefix(f"visage/int_{node}_warm")))
    latency = _interrupt_latency(server, make(n, ch.unique_prefix(f"visage/int_{node}")), delay)
    print(f"\n{node}: stopped {latency:.2f} s after /interrupt")
    assert latency < CANCEL_LIMIT_S, f"{node} stopped {latency:.2f} s after /interrupt (limit {CANCEL_LIMIT_S} s)"
    # the next prompt runs
    entry = server.run(make(1, ch.unique_prefix(f"visage/int_{node}_next")))
    assert server.output_files(entry)

"""scripts/visage_run.py against the real ComfyUI of the comfy tier: a UI workflow is converted with the
live /object_info, inputs are set from the command line, the run is followed and its outputs land in
--output; runtime and validation failures exit non-zero naming the node; the script can also start its
own ComfyUI."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "visage_run.py")


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout)


def core_ui_workflow():
    """LoadImage('Source') -> ImageScale (width from PrimitiveNode 'Width') -> ImageInvert -> SaveImage('Result')."""

    def node(nid, typ, inputs=(), outputs=(), widgets=None, title=None):
        n = {
            "id": nid,
            "type": typ,
            "pos": [nid * 250, 0],
            "size": [220, 120],
            "flags": {},
            "order": nid,
            "mode": 0,
            "inputs": list(inputs),
            "outputs": list(outputs),
            "properties": {},
        }
        if widgets is not None:
            n["widgets_values"] = widgets
        if title:
            n["title"] = title
        return n

    nodes = [
        node(
            1,
            "LoadImage",
            outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [1]}, {"name": "MASK", "type": "MASK", "links": None}],
            widgets=["placeholder.png", "image"],
            title="Source",
        ),
        node(
            2,
            "ImageScale",
            inputs=[
                {"name": "image", "type": "IMAGE", "link": 1},
                {"name": "width", "type": "INT", "widget": {"name": "width"}, "link": 4},
            ],
            outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [2]}],
            widgets=["nearest-exact", 32, 24, "disabled"],
        ),
        node(
            3,
            "ImageInvert",
            inputs=[{"name": "image", "type": "IMAGE", "link": 2}],
            outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [3]}],
            widgets=[],
        ),
        node(
            4,
            "SaveImage",
            inputs=[{"name": "images", "type": "IMAGE", "link": 3}],
            widgets=["visage_cli"],
            title="Result",
        ),
        node(
            5,
            "PrimitiveNode",
            outputs=[{"name": "INT", "type": "INT", "links": [4], "widget": {"name": "width"}}],
            widgets=[32, "fixed"],
            title="Width",
        ),
    ]
    links = [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"], [4, 5, 0, 2, 1, "INT"]]
    return {
        "last_node_id": 5,
        "last_link_id": 4,
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


@pytest.fixture
def case(tmp_path):
    wf = tmp_path / "core.json"
    wf.write_text(json.dumps(core_ui_workflow()))
    img = tmp_path / "in.png"
    Image.new("RGB", (40, 30), (200, 40, 10)).save(img)
    return tmp_path, str(wf), str(img)


def test_ui_workflow_runs_with_image_and_set(comfy_server, case):
    tmp, wf, img = case
    out = tmp / "out"
    r = _run(
        wf,
        "--url",
        comfy_server.url,
        "--image",
        f"Source={img}",
        "--set",
        "Width.value=20",
        "--set",
        "ImageScale.height=10",
        "--output",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    files = [l for l in r.stdout.splitlines() if l.strip()]
    assert len(files) == 1 and os.path.isfile(files[0]) and files[0].startswith(str(out))
    px = np.asarray(Image.open(files[0]).convert("RGB"))
    assert px.shape == (10, 20, 3)  # --set reached the PrimitiveNode's target and ImageScale
    assert np.abs(px.astype(int) - [55, 215, 245]).max() <= 1  # the uploaded image, inverted
    summary = json.loads((out / "outputs.json").read_text())["outputs"]
    assert summary["4"]["class_type"] == "SaveImage" and summary["4"]["files"] == [os.path.basename(files[0])]
    assert "[4/4] Result #4" in r.stderr or "Result #4" in r.stderr


def test_runtime_failure_names_the_node(comfy_server, case):
    tmp, wf, img = case
    # SaveImage refuses to write outside the output folder: a runtime (not validation) error
    r = _run(
        wf,
        "--url",
        comfy_server.url,
        "--image",
        f"Source={img}",
        "--set",
        "Result.filename_prefix=../../escape",
        "--output",
        str(tmp / "o"),
    )
    assert r.returncode == 1, r.stderr
    assert "node 4 (SaveImage 'Result') failed" in r.stderr and "outside the output folder" in r.stderr


def test_validation_failure_names_node_and_input(comfy_server, case):
    tmp, wf, img = case
    r = _run(
        wf, "--url", comfy_server.url, "--image", f"Source={img}", "--set", "2.height=-5", "--output", str(tmp / "o")
    )
    assert r.returncode == 2
    assert "node 2 (ImageScale 'Upscale Image') input 'height'" in r.stderr and "smaller than min" in r.stderr


def test_uninstalled_node_against_live_server(comfy_server, tmp_path):
    api = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SomePackThatIsNotHere", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    p = tmp_path / "api.json"
    p.write_text(json.dumps(api))
    r = _run(str(p), "--url", comfy_server.url)
    assert r.returncode == 2
    assert "node 2 (SomePackThatIsNotHere): type 'SomePackThatIsNotHere' is unknown" in r.stderr


def test_script_starts_its_own_comfyui(comfy_path, case):
    tmp, wf, img = case
    out = tmp / "own"
    (tmp / "models").mkdir()
    r = _run(
        wf,
        "--comfyui",
        comfy_path,
        "--cpu",
        "--image",
        f"Source={img}",
        "--output",
        str(out),
        "--models",
        str(tmp / "models"),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "starting ComfyUI from" in r.stderr
    files = [l for l in r.stdout.splitlines() if l.strip()]
    assert len(files) == 1 and Image.open(files[0]).size == (32, 24)


# ------------------------------------------------------------------------------ timeout / Ctrl-C cancel our prompt


def _long_prompt():
    """The tiny test SD1.5 checkpoint sampling 10000 steps: minutes on CPU, interruptible at every step."""
    ckpt = "v1-5-pruned-emaonly.safetensors"
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a face", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": int(time.time()),  # never cached
                "steps": 10000,
                "cfg": 2.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def _queued_id(stderr: str) -> str:
    m = re.search(r"queued prompt (\S+) ", stderr)
    assert m, stderr
    return m.group(1)


def _gone_from_queue(server, prompt_id, within=15.0) -> bool:
    t_end = time.time() + within
    while time.time() < t_end:
        q = server.get("/queue")
        ids = [it[1] for it in (q.get("queue_running") or []) + (q.get("queue_pending") or [])]
        if prompt_id not in ids:
            return True
        time.sleep(0.2)
    return False


def test_timeout_against_url_cancels_our_prompt(comfy_server, tmp_path):
    p = tmp_path / "long.json"
    p.write_text(json.dumps(_long_prompt()))
    t0 = time.time()
    r = _run(str(p), "--url", comfy_server.url, "--timeout", "4", "-o", str(tmp_path / "o"), timeout=120)
    assert r.returncode == 4, r.stderr
    assert "Traceback" not in r.stderr
    pid = _queued_id(r.stderr)
    # the runner waited for the server to drop it; the queue no longer runs it, its history says interrupted
    assert _gone_from_queue(comfy_server, pid, within=5.0), comfy_server.get("/queue")
    assert time.time() - t0 < 60
    hist = comfy_server.get(f"/history/{pid}") or {}
    msgs = [m[0] for m in ((hist.get(pid) or {}).get("status") or {}).get("messages", [])]
    assert "execution_interrupted" in msgs, hist


def test_ctrl_c_against_url_cancels_our_prompt(comfy_server, tmp_path):
    p = tmp_path / "long.json"
    p.write_text(json.dumps(_long_prompt()))
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, str(p), "--url", comfy_server.url, "-o", str(tmp_path / "o")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = ""
    try:
        t_end = time.time() + 60
        while "queued prompt" not in err and time.time() < t_end:  # the first stderr line says it
            err += proc.stderr.readline()
        pid = _queued_id(err)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _out, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err += rest
    assert proc.returncode == 1, err
    assert "interrupted" in err and "Traceback" not in err
    assert _gone_from_queue(comfy_server, pid, within=5.0), comfy_server.get("/queue")


# ------------------------------------------------------------------------------ the shipped face workflow

FACE_API = os.path.join(REPO, "workflows", "api", "face_analysis.json")


def _pack(object_info):
    packs = object_info["VisageFaceAnalyzerLoader"]["input"]["required"]["pack"][0]
    return "fixtures_real" if "fixtures_real" in packs else "visage_test"


def _t1():
    import insightface

    p = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")
    if not os.path.isfile(p):
        pytest.skip("insightface does not ship t1.jpg")
    return p


def test_face_workflow_headless_face_index(comfy_server, object_info, tmp_path):
    if "VisageAnalyzeFaces" not in object_info:
        pytest.fail("the face nodes are not registered in the test ComfyUI")
    pack = _pack(object_info)
    common = [
        FACE_API,
        "--url",
        comfy_server.url,
        "--set",
        f"Load Face Analyzer.pack={pack}",
        "--image",
        f"Load Image={_t1()}",
    ]
    r = _run(*common, "--output", str(tmp_path / "all"))
    assert r.returncode == 0, r.stderr[-3000:]
    # progress followed over the websocket: the node being run, and its own step bar
    assert "Analyze Faces #3" in r.stderr and "| 1/1" in r.stderr, r.stderr
    faces = json.loads((tmp_path / "all" / "outputs.json").read_text())["outputs"]["3"]["ui"]["visage_faces"][0]
    assert len(faces) >= 2 and all(f["selected"] for f in faces)
    # the face picker's choice, headless: --set face_index keeps exactly that face
    pick = faces[-1]["index"]
    r = _run(*common, "--set", f"Analyze Faces.face_index={pick}", "--output", str(tmp_path / "one"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((tmp_path / "one" / "outputs.json").read_text())["outputs"]
    again = out["3"]["ui"]["visage_faces"][0]
    assert [f["index"] for f in again if f["selected"]] == [pick]
    assert [f["bbox"] for f in again] == [f["bbox"] for f in faces]  # same detections, one selected
    sims = [v["ui"]["visage_similarity"][0] for v in out.values() if v["class_type"] == "VisageFaceSimilarity"]
    for s in sims:
        assert len(s) == 1  # a similarity node sees the one selected face


def test_face_workflow_no_face_error_is_reported(comfy_server, object_info, tmp_path):
    if "VisageAnalyzeFaces" not in object_info:
        pytest.fail("the face nodes are not registered in the test ComfyUI")
    blank = tmp_path / "blank.png"
    Image.new("RGB", (320, 256), (127, 127, 127)).save(blank)
    r = _run(
        FACE_API,
        "--url",
        comfy_server.url,
        "--set",
        f"Load Face Analyzer.pack={_pack(object_info)}",
        "--image",
        f"Load Image={blank}",
        "--set",
        "Analyze Faces.on_no_face=error",
        "--output",
        str(tmp_path / "o"),
    )
    assert r.returncode == 1
    assert "node 3 (VisageAnalyzeFaces 'Analyze Faces') failed" in r.stderr

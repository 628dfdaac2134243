"""The headless runner (``visage-run`` = visage.runner.cli) without a ComfyUI: UI -> API conversion against a
saved /object_info (a trimmed copy of ComfyUI a125cd84's core nodes below), --set / --image handling, the
bad-input exit codes, and the ways to start it (console script, ``-m``, the scripts/ shim)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from visage.runner import cli as vr

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "visage_run.py")

OBJECT_INFO = json.loads(r"""
{"EmptyImage": {"input": {"required": {"width": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}], "height": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}], "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}], "color": ["INT", {"default": 0, "min": 0, "max": 16777215, "step": 1, "display": "color"}]}}, "input_order": {"required": ["width", "height", "batch_size", "color"]}, "output": ["IMAGE"], "output_is_list": [false], "output_name": ["IMAGE"], "name": "EmptyImage", "display_name": "EmptyImage", "output_node": false},
 "ImageInvert": {"input": {"required": {"image": ["IMAGE"]}}, "input_order": {"required": ["image"]}, "output": ["IMAGE"], "output_is_list": [false], "output_name": ["IMAGE"], "name": "ImageInvert", "display_name": "Invert Image", "output_node": false},
 "SaveImage": {"input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}, "input_order": {"required": ["images", "filename_prefix"], "hidden": ["prompt", "extra_pnginfo"]}, "output": [], "output_is_list": [], "output_name": [], "name": "SaveImage", "display_name": "Save Image", "output_node": true},
 "LoadImage": {"input": {"required": {"image": [[], {"image_upload": true}]}}, "input_order": {"required": ["image"]}, "output": ["IMAGE", "MASK"], "output_is_list": [false, false], "output_name": ["IMAGE", "MASK"], "name": "LoadImage", "display_name": "Load Image", "output_node": false},
 "KSampler": {"input": {"required": {"model": ["MODEL", {}], "seed": ["INT", {"default": 0, "min": 0, "max": 18446744073709551615, "control_after_generate": true}], "steps": ["INT", {"default": 20, "min": 1, "max": 10000}], "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}], "sampler_name": [["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp"], {}], "scheduler": [["simple", "sgm_uniform", "karras", "exponential"], {}], "positive": ["CONDITIONING", {}], "negative": ["CONDITIONING", {}], "latent_image": ["LATENT", {}], "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]}}, "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative", "latent_image", "denoise"]}, "output": ["LATENT"], "output_is_list": [false], "output_name": ["LATENT"], "name": "KSampler", "display_name": "KSampler", "output_node": false},
 "PreviewImage": {"input": {"required": {"images": ["IMAGE"]}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}, "input_order": {"required": ["images"], "hidden": ["prompt", "extra_pnginfo"]}, "output": [], "output_is_list": [], "output_name": [], "name": "PreviewImage", "display_name": "Preview Image", "output_node": true},
 "ImageScale": {"input": {"required": {"image": ["IMAGE"], "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic"]], "width": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}], "height": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}], "crop": [["disabled", "center"]]}}, "input_order": {"required": ["image", "upscale_method", "width", "height", "crop"]}, "output": ["IMAGE"], "output_is_list": [false], "output_name": ["IMAGE"], "name": "ImageScale", "display_name": "Upscale Image", "output_node": false}}
""")


def _node(nid, typ, inputs=(), outputs=(), widgets=None, mode=0, title=None, props=None):
    n = {
        "id": nid,
        "type": typ,
        "pos": [0, 0],
        "size": [200, 100],
        "flags": {},
        "order": nid,
        "mode": mode,
        "inputs": list(inputs),
        "outputs": list(outputs),
        "properties": props or {},
    }
    if widgets is not None:
        n["widgets_values"] = widgets
    if title:
        n["title"] = title
    return n


def ui_workflow():
    """LoadImage -> Reroute -> ImageScale (width from a PrimitiveNode) -> bypassed ImageInvert -> SaveImage,
    plus a muted PreviewImage and a Note."""
    nodes = [
        _node(
            1,
            "LoadImage",
            outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [1]}, {"name": "MASK", "type": "MASK", "links": None}],
            widgets=["face.png", "image"],
            title="Source",
        ),
        _node(
            2,
            "Reroute",
            inputs=[{"name": "", "type": "*", "link": 1}],
            outputs=[{"name": "", "type": "IMAGE", "links": [2]}],
        ),
        _node(
            3,
            "ImageScale",
            inputs=[
                {"name": "image", "type": "IMAGE", "link": 2},
                {"name": "width", "type": "INT", "widget": {"name": "width"}, "link": 5},
            ],
            outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [3, 6]}],
            widgets=["bilinear", 320, 240, "center"],
        ),
        _node(
            4,
            "ImageInvert",
            inputs=[{"name": "image", "type": "IMAGE", "link": 3}],
            outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [4]}],
            widgets=[],
            mode=4,
        ),
        _node(
            5,
            "SaveImage",
            inputs=[{"name": "images", "type": "IMAGE", "link": 4}],
            widgets=["visage_test"],
            title="Result",
        ),
        _node(
            6,
            "PrimitiveNode",
            outputs=[{"name": "INT", "type": "INT", "links": [5], "widget": {"name": "width"}}],
            widgets=[320, "fixed"],
            title="Width",
        ),
        _node(7, "PreviewImage", inputs=[{"name": "images", "type": "IMAGE", "link": 6}], mode=2),
        _node(8, "Note", widgets=["just a note"]),
    ]
    links = [
        [1, 1, 0, 2, 0, "*"],
        [2, 2, 0, 3, 0, "IMAGE"],
        [3, 3, 0, 4, 0, "IMAGE"],
        [4, 4, 0, 5, 0, "IMAGE"],
        [5, 6, 0, 3, 1, "INT"],
        [6, 3, 0, 7, 0, "IMAGE"],
    ]
    return {
        "last_node_id": 8,
        "last_link_id": 6,
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


# ------------------------------------------------------------------------------------ conversion


def test_ui_to_api_follows_reroute_primitive_bypass_and_mute():
    prims = {}
    api = vr.ui_to_api(ui_workflow(), OBJECT_INFO, prims)
    # virtual, muted and bypassed nodes are not sent
    assert sorted(api, key=int) == ["1", "3", "5"]
    assert api["1"] == {"class_type": "LoadImage", "inputs": {"image": "face.png"}, "_meta": {"title": "Source"}}
    # the Reroute is followed back to LoadImage; widget values map by name; the primitive feeds width
    assert api["3"]["inputs"] == {
        "image": ["1", 0],
        "upscale_method": "bilinear",
        "width": 320,
        "height": 240,
        "crop": "center",
    }
    # SaveImage gets ImageScale's output through the bypassed ImageInvert (same type IMAGE)
    assert api["5"]["inputs"] == {"images": ["3", 0], "filename_prefix": "visage_test"}
    assert prims["Width"] == [("3", "width")] and prims["6"] == [("3", "width")]


def test_seed_control_value_is_skipped():
    wf = {"nodes": [_node(1, "KSampler", widgets=[1234, "randomize", 7, 4.5, "euler", "karras", 0.6])], "links": []}
    api = vr.ui_to_api(wf, OBJECT_INFO)
    assert api["1"]["inputs"] == {
        "seed": 1234,
        "steps": 7,
        "cfg": 4.5,
        "sampler_name": "euler",
        "scheduler": "karras",
        "denoise": 0.6,
    }


def test_missing_widget_values_take_defaults_and_dict_values_map_by_name():
    wf = {
        "nodes": [_node(1, "EmptyImage", widgets=[64, 32]), _node(2, "SaveImage", widgets={"filename_prefix": "x"})],
        "links": [],
    }
    api = vr.ui_to_api(wf, OBJECT_INFO)
    assert api["1"]["inputs"] == {"width": 64, "height": 32, "batch_size": 1, "color": 0}
    assert api["2"]["inputs"] == {"filename_prefix": "x"}


def test_missing_link_is_reported():
    wf = ui_workflow()
    wf["links"] = [l for l in wf["links"] if l[0] != 2]
    with pytest.raises(vr.RunError) as e:
        vr.ui_to_api(wf, OBJECT_INFO)
    msg = str(e.value)
    assert "node 3 (ImageScale) input 'image'" in msg and "no link 2" in msg and e.value.code == 2


def test_link_to_absent_node_is_reported():
    wf = ui_workflow()
    wf["links"][0] = [1, 99, 0, 2, 0, "*"]
    with pytest.raises(vr.RunError, match="node 99, which is not in the workflow"):
        vr.ui_to_api(wf, OBJECT_INFO)


def test_uninstalled_node_named_with_its_pack():
    wf = ui_workflow()
    wf["nodes"].append(_node(9, "VisageFromTheFuture", widgets=[], props={"cnr_id": "visage"}, title="Later"))
    with pytest.raises(vr.RunError) as e:
        vr.ui_to_api(wf, OBJECT_INFO)
    msg = str(e.value)
    assert "node 9 (VisageFromTheFuture 'Later')" in msg and "'visage' node pack" in msg
    # muted and bypassed nodes need not be installed (the editor does not send them either)
    wf["nodes"][-1]["mode"] = 4
    assert "9" not in vr.ui_to_api(wf, OBJECT_INFO)


def test_api_format_is_checked_for_types_and_dangling_links():
    kind, api = vr.detect_format({"1": {"class_type": "Nope", "inputs": {}}, "_comment": "x"})
    assert kind == "api" and list(api) == ["1"]
    with pytest.raises(vr.RunError, match="node 1 \\(Nope\\): type 'Nope' is unknown"):
        vr.check_api(api, OBJECT_INFO)
    with pytest.raises(vr.RunError, match="connected to node 7"):
        vr.check_api({"1": {"class_type": "ImageInvert", "inputs": {"image": ["7", 0]}}}, OBJECT_INFO)
    with pytest.raises(vr.RunError, match="neither a UI-format"):
        vr.detect_format([1, 2, 3])


# ------------------------------------------------------------------------------------ --set


def test_set_by_id_title_type_and_primitive():
    prims = {}
    api = vr.ui_to_api(ui_workflow(), OBJECT_INFO, prims)
    vr.apply_set(api, OBJECT_INFO, "3.height=128", prims)
    vr.apply_set(api, OBJECT_INFO, "Result.filename_prefix=out/a.b", prims)
    vr.apply_set(api, OBJECT_INFO, "ImageScale.crop=disabled", prims)
    vr.apply_set(api, OBJECT_INFO, "Width.value=100", prims)
    assert api["3"]["inputs"]["height"] == 128 and api["3"]["inputs"]["width"] == 100
    assert api["3"]["inputs"]["crop"] == "disabled"
    assert api["5"]["inputs"]["filename_prefix"] == "out/a.b"


@pytest.mark.parametrize(
    "item, message",
    [
        ("Nobody.width=3", "no node 'Nobody'"),
        ("3.depth=3", "has no input 'depth'"),
        ("3.height=tall", "'tall' is not a valid INT"),
        ("3.crop=sideways", "'sideways' is not one of the choices"),
        ("width=3", "expected NODE.input=VALUE"),
    ],
)
def test_set_errors(item, message):
    api = vr.ui_to_api(ui_workflow(), OBJECT_INFO)
    with pytest.raises(vr.RunError, match=message):
        vr.apply_set(api, OBJECT_INFO, item)


# ------------------------------------------------------------------------------------ the command


def _run(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "visage.runner", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def files(tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(ui_workflow()))
    oi = tmp_path / "object_info.json"
    oi.write_text(json.dumps(OBJECT_INFO))
    return tmp_path, str(wf), str(oi)


def test_dry_run_prints_the_api_prompt(files):
    tmp, wf, oi = files
    r = _run(wf, "--object-info", oi, "--dry-run", "--set", "Width.value=64", "--save-api", str(tmp / "api.json"))
    assert r.returncode == 0, r.stderr
    api = json.loads(r.stdout)
    assert api["3"]["inputs"]["width"] == 64
    assert json.loads((tmp / "api.json").read_text()) == api


def test_exit_code_missing_node(files):
    tmp, wf, oi = files
    data = json.loads(open(wf).read())
    data["nodes"][3]["type"] = "NotInstalledNode"
    data["nodes"][3]["mode"] = 0
    bad = tmp / "missing_node.json"
    bad.write_text(json.dumps(data))
    r = _run(str(bad), "--object-info", oi, "--dry-run")
    assert r.returncode == 2
    assert "node 4 (NotInstalledNode): type 'NotInstalledNode' is unknown" in r.stderr


def test_exit_code_missing_link(files):
    tmp, wf, oi = files
    data = json.loads(open(wf).read())
    data["links"] = [l for l in data["links"] if l[0] != 4]
    bad = tmp / "missing_link.json"
    bad.write_text(json.dumps(data))
    r = _run(str(bad), "--object-info", oi, "--dry-run")
    assert r.returncode == 2 and "input 'images' is connected by link 4" in r.stderr


def test_exit_code_input_not_an_image(files):
    tmp, wf, oi = files
    fake = tmp / "face.png"
    fake.write_text("this is text, not a PNG")
    r = _run(wf, "--object-info", oi, "--dry-run", "--image", f"Source={fake}")
    assert r.returncode == 2 and "is not an image" in r.stderr and str(fake) in r.stderr
    r = _run(wf, "--object-info", oi, "--dry-run", "--image", f"Source={tmp / 'absent.png'}")
    assert r.returncode == 2 and "file not found" in r.stderr


def test_exit_code_no_comfyui_at_url(files):
    _tmp, wf, _oi = files
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _run(wf, "--url", f"http://127.0.0.1:{port}")
    assert r.returncode == 3
    assert f"no ComfyUI is answering at http://127.0.0.1:{port}" in r.stderr


def test_main_returns_the_exit_code(files, capsys):
    _tmp, wf, oi = files
    assert vr.main([wf, "--object-info", oi, "--dry-run", "--set", "Width.value=64"]) == vr.EXIT_OK
    assert json.loads(capsys.readouterr().out)["3"]["inputs"]["width"] == 64
    assert vr.main([wf + ".absent", "--dry-run"]) == vr.EXIT_BAD_INPUT
    assert "visage-run: error: workflow file not found" in capsys.readouterr().err


def test_every_way_to_start_it(files):
    """The console script, and the scripts/ shim from a clone without the install: ``python -S`` has no
    site-packages at all (the runner needs only the standard library), so the shim loads ../runner itself."""
    _tmp, wf, oi = files
    want = json.loads(_run(wf, "--object-info", oi, "--dry-run").stdout)
    exe = os.path.join(os.path.dirname(sys.executable), "visage-run")
    assert os.path.isfile(exe), "no visage-run next to this Python: run scripts/setup.sh (pip install -e .)"
    for cmd in ([exe], [sys.executable, "-S", SCRIPT]):
        r = subprocess.run([*cmd, wf, "--object-info", oi, "--dry-run"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and json.loads(r.stdout) == want, (cmd, r.stderr)
    r = subprocess.run([sys.executable, "-S", SCRIPT, wf + ".absent"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "workflow file not found" in r.stderr


def test_runner_imports_no_torch_and_no_comfyui():
    code = (
        "import sys, visage.runner.cli\n"
        "heavy = [m for m in ('torch', 'numpy', 'comfy', 'folder_paths', 'visage.nodes', 'visage.core') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_exit_code_not_a_workflow(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    r = _run(str(p), "--dry-run")
    assert r.returncode == 2 and "is not a JSON workflow" in r.stderr
    r = _run(str(tmp_path / "absent.json"), "--dry-run")
    assert r.returncode == 2 and "workflow file not found" in r.stderr


# ------------------------------------------------------------------------------------ subgraphs

SG = "0b3c5a3e-1111-4222-8333-944455556666"


def subgraph_workflow():
    """EmptyImage -> [subgraph: ImageInvert -> ImageScale(width promoted to the instance)] -> SaveImage, and the
    subgraph's image input wired straight to its second output -> PreviewImage."""
    io = {"bounding": [0, 0, 10, 10]}
    definition = {
        "id": SG,
        "version": 1,
        "revision": 0,
        "name": "invert and scale",
        "state": {},
        "inputNode": dict(io, id=-10),
        "outputNode": dict(io, id=-20),
        "inputs": [
            {"id": "a", "name": "image", "type": "IMAGE", "linkIds": [10, 13]},
            {"id": "b", "name": "width", "type": "INT", "linkIds": [11]},
        ],
        "outputs": [
            {"id": "c", "name": "IMAGE", "type": "IMAGE", "linkIds": [12]},
            {"id": "d", "name": "raw", "type": "IMAGE", "linkIds": [13]},
        ],
        "nodes": [
            _node(
                1,
                "ImageInvert",
                inputs=[{"name": "image", "type": "IMAGE", "link": 10}],
                outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [14]}],
                widgets=[],
            ),
            _node(
                2,
                "ImageScale",
                inputs=[
                    {"name": "image", "type": "IMAGE", "link": 14},
                    {"name": "width", "type": "INT", "widget": {"name": "width"}, "link": 11},
                ],
                outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [12]}],
                widgets=["bilinear", 100, 24, "disabled"],
            ),
        ],
        "links": [
            {"id": 10, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "IMAGE"},
            {"id": 11, "origin_id": -10, "origin_slot": 1, "target_id": 2, "target_slot": 1, "type": "INT"},
            {"id": 14, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "IMAGE"},
            {"id": 12, "origin_id": 2, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "IMAGE"},
            {"id": 13, "origin_id": -10, "origin_slot": 0, "target_id": -20, "target_slot": 1, "type": "IMAGE"},
        ],
    }
    nodes = [
        _node(1, "EmptyImage", outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [1]}], widgets=[64, 48, 1, 0]),
        _node(
            5,
            SG,
            inputs=[
                {"name": "image", "type": "IMAGE", "link": 1},
                {"name": "width", "type": "INT", "widget": {"name": "width"}, "link": None},
            ],
            outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [2]}, {"name": "raw", "type": "IMAGE", "links": [3]}],
            widgets=[32],
        ),
        _node(3, "SaveImage", inputs=[{"name": "images", "type": "IMAGE", "link": 2}], widgets=["a"]),
        _node(4, "PreviewImage", inputs=[{"name": "images", "type": "IMAGE", "link": 3}]),
    ]
    links = [[1, 1, 0, 5, 0, "IMAGE"], [2, 5, 0, 3, 0, "IMAGE"], [3, 5, 1, 4, 0, "IMAGE"]]
    return {"nodes": nodes, "links": links, "definitions": {"subgraphs": [definition]}, "version": 0.4}


def test_subgraph_is_expanded_like_the_editor():
    api = vr.ui_to_api(subgraph_workflow(), OBJECT_INFO)
    strip = {k: (v["class_type"], v["inputs"]) for k, v in api.items()}
    assert strip == {
        "1": ("EmptyImage", {"width": 64, "height": 48, "batch_size": 1, "color": 0}),
        "5:1": ("ImageInvert", {"image": ["1", 0]}),
        "5:2": (
            "ImageScale",
            {"image": ["5:1", 0], "upscale_method": "bilinear", "width": 32, "height": 24, "crop": "disabled"},
        ),  # width: the value promoted onto the instance
        "3": ("SaveImage", {"images": ["5:2", 0], "filename_prefix": "a"}),
        "4": ("PreviewImage", {"images": ["1", 0]}),  # subgraph input wired straight to an output
    }


def test_subgraph_muted_instance_and_missing_definition():
    wf = subgraph_workflow()
    wf["nodes"][1]["mode"] = 2  # muted: its nodes are not sent, its outputs feed nothing
    api = vr.ui_to_api(wf, OBJECT_INFO)
    assert sorted(api) == ["1", "3", "4"] and "images" not in api["3"]["inputs"]
    wf = subgraph_workflow()
    del wf["definitions"]
    with pytest.raises(vr.RunError, match="is a subgraph whose definition is not in the file"):
        vr.ui_to_api(wf, OBJECT_INFO)


def test_the_documented_commands_parse():
    """Every `visage-run ...` command in docs/HEADLESS.md uses options the runner has."""
    import shlex

    text = open(os.path.join(REPO, "docs", "HEADLESS.md"), encoding="utf-8").read().replace("\\\n", " ")
    commands = [line.strip() for line in text.splitlines() if line.strip().startswith("visage-run ")]
    assert len(commands) >= 2
    for cmd in commands:
        args = vr.build_parser().parse_args(shlex.split(cmd)[1:])
        assert args.workflow.endswith(".json")
        for item in args.sets:
            assert "=" in item and "." in item.split("=", 1)[0], item
        for item in args.images:
            vr.parse_image_arg(item)


# ------------------------------------------------------------------------------------ no interpreter, cancelling


@pytest.mark.parametrize("python", ["nowhere", "dir"])
def test_python_nowhere_exits_3_without_traceback(files, python):
    tmp, wf, _oi = files
    comfy = tmp / "ComfyUI"
    comfy.mkdir()
    (comfy / "main.py").write_text("raise SystemExit('never run')\n")
    py = str(tmp / "no" / "such" / "python") if python == "nowhere" else str(tmp)
    r = _run(wf, "--comfyui", str(comfy), "--python", py, "--cpu")
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert f"--python {py!r} is not an executable Python interpreter" in r.stderr


class _FakeComfy:
    """A stand-in ComfyUI (standard library HTTP): /prompt queues, our prompt shows as running (or pending)
    in /queue until it is deleted or interrupted, /history never has it; every POST is recorded."""

    def __init__(self, state):
        import http.server
        import threading

        self.state = state  # "running" | "pending"
        self.posts = []
        self.prompt_id = "p-ours"
        fake = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, obj):
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.startswith("/object_info"):
                    return self._send(OBJECT_INFO)
                if self.path.startswith("/queue"):
                    other = [0, "p-someone-else", {}, {}, []]
                    mine = [1, fake.prompt_id, {}, {}, []]
                    if fake.state == "running":
                        return self._send({"queue_running": [mine], "queue_pending": [other]})
                    if fake.state == "pending":
                        return self._send({"queue_running": [other], "queue_pending": [mine]})
                    return self._send({"queue_running": [other], "queue_pending": []})
                return self._send({})  # /system_stats, /history/<id>

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                fake.posts.append((self.path, body))
                if self.path == "/prompt":
                    return self._send({"prompt_id": fake.prompt_id, "number": 1, "node_errors": {}})
                if self.path == "/interrupt" and body.get("prompt_id") == fake.prompt_id and fake.state == "running":
                    fake.state = None
                if self.path == "/queue" and fake.prompt_id in (body.get("delete") or []) and fake.state == "pending":
                    fake.state = None
                return self._send({})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("state", ["running", "pending"])
def test_timeout_cancels_our_prompt_only(tmp_path, state):
    """--timeout against --url: exit 4, and our prompt (and only ours) is taken off the server: a running one
    interrupted by prompt id, a pending one deleted from the queue; never a global /interrupt."""
    api = tmp_path / "api.json"
    api.write_text(json.dumps({"1": {"class_type": "EmptyImage", "inputs": {}}}))
    fake = _FakeComfy(state)
    try:
        rc = vr.main([str(api), "--url", fake.url, "--timeout", "0.5", "-q", "-o", str(tmp_path / "out")])
    finally:
        fake.close()
    assert rc == vr.EXIT_TIMEOUT
    assert fake.state is None, fake.posts
    cancels = [p for p in fake.posts if p[0] in ("/interrupt", "/queue")]
    want = ("/interrupt", {"prompt_id": "p-ours"}) if state == "running" else ("/queue", {"delete": ["p-ours"]})
    assert cancels == [want]

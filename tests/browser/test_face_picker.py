"""The face picker in the real frontend (comfyui-frontend-package, served by a real ComfyUI --cpu) in
Debian's Chromium: the page loads with no console error of ours, every Visage node is in the node library
(registered node types, and found by the Node Library sidebar search),
the extension registers once and logs nothing, every workflows/*.json is offered as a template of the pack,
workflows/face_analysis.json loads from the template route, is queued and runs,
the faces are boxed over the preview, clicking a face sets `face_index` (saved in the workflow JSON, and
the same value in the API prompt that the frontend and scripts/visage_run.py build), and the similarity
node shows its scores; a nested subgraph built in the editor converts and runs headless like the editor
queues it. Screenshots go to artifacts/ (face_picker.png, face_similarity.png, node_library.png).

VISAGE_BROWSER_WORKFLOW=FILE drives another UI-format file; VISAGE_BROWSER_PACK=visage_test forces the
test-built analyzer pack (default: the real fixtures pack when ../shared/fixtures is present)."""

import json
import os
import subprocess
import sys
import time
from urllib.parse import urlparse

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.path.join(REPO, "artifacts")
# VISAGE_BROWSER_WORKFLOW: another UI-format file to drive (e.g. one written by make_ui_twin.py)
UI_WORKFLOW = os.environ.get("VISAGE_BROWSER_WORKFLOW") or os.path.join(REPO, "workflows", "face_analysis.json")

from visage.runner import cli as vr  # noqa: E402

READY = (
    "() => !!(window.comfyAPI?.app?.app?.graph && window.LiteGraph?.registered_node_types"
    " && window.comfyAPI.app.app.extensions?.some(e => e.name === 'visage.faces'))"
)
SETTLE_S = 3.0


def _collect(page):
    """Record console messages and page errors of a page."""
    log = {"console": [], "errors": []}

    def on_console(m):
        loc = m.location or {}
        log["console"].append({"type": m.type, "text": m.text, "url": loc.get("url", "")})

    page.on("console", on_console)
    page.on("pageerror", lambda e: log["errors"].append(str(e)))
    return log


def _errors(log, origin):
    """Error messages of a page: page errors, and console errors from the server's own origin (resources on
    other hosts — the frontend's release check — cannot load on an offline test machine)."""
    out = {f"pageerror: {e}" for e in log["errors"]}
    for m in log["console"]:
        if m["type"] == "error":
            host = urlparse(m["url"]).netloc if m["url"] else origin
            if host == origin and not m["url"].endswith("/favicon.ico"):  # the browser's own favicon probe
                out.add(f"console.error: {m['text']} @ {urlparse(m['url']).path}")
    return out


def _open(browser, url, block_visage=False):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    log = _collect(page)
    if block_visage:
        page.route("**/extensions/visage/**", lambda route: route.abort())
        page.goto(url)
        page.wait_for_function(
            "() => !!(window.comfyAPI?.app?.app?.graph && window.LiteGraph?.registered_node_types)", timeout=120_000
        )
    else:
        page.goto(url)
        page.wait_for_function(READY, timeout=120_000)
    time.sleep(SETTLE_S)
    return page, log


@pytest.fixture(scope="module")
def loaded(browser, browser_comfy):
    """A page with the frontend loaded (and a baseline load with our extension blocked)."""
    server, dirs = browser_comfy
    origin = urlparse(server.url).netloc
    base_page, base_log = _open(browser, server.url, block_visage=True)
    base_page.close()
    page, log = _open(browser, server.url)
    yield {
        "page": page,
        "log": log,
        "baseline": _errors(base_log, origin),
        "origin": origin,
        "server": server,
        "dirs": dirs,
    }
    page.close()


def test_page_loads_clean_and_lists_our_nodes(loaded):
    page, log, server = loaded["page"], loaded["log"], loaded["server"]
    # no console error that the stock frontend does not also give with our extension blocked
    ours = _errors(log, loaded["origin"]) - loaded["baseline"]
    assert not ours, f"console errors caused by Visage: {sorted(ours)}"
    assert not [e for e in log["errors"] if "visage" in e.lower()]
    # the extension logs nothing (no console message of any kind from our files)
    from_us = [m for m in log["console"] if "/extensions/visage/" in m["url"] or "visage" in m["text"].lower()]
    assert not from_us, f"the Visage extension wrote to the console: {from_us}"
    # registered exactly once
    names = page.evaluate("() => window.comfyAPI.app.app.extensions.map(e => e.name)")
    assert names.count("visage.faces") == 1
    # every Visage node of /object_info is in the node library, in a Visage category
    ours_server = sorted(k for k in server.object_info() if k.startswith("Visage"))
    assert "VisageAnalyzeFaces" in ours_server and "VisageFaceSimilarity" in ours_server
    lib = page.evaluate("""() => Object.fromEntries(Object.entries(LiteGraph.registered_node_types)
        .filter(([k]) => k.startsWith('Visage')).map(([k, t]) => [k, t.category ?? t.prototype?.category ?? '']))""")
    assert sorted(lib) == ours_server
    assert all(str(c).startswith("Visage") for c in lib.values()), lib
    # ... and a user finds them in the Node Library sidebar
    page.get_by_text("Nodes", exact=True).first.click()
    search = page.locator("input[placeholder*='Search Nodes']").first
    search.fill("Analyze Faces")
    page.locator(".p-tree-node-label").filter(has_text="Analyze Faces").first.wait_for(timeout=10_000)
    labels = page.locator(".p-tree-node-label").all_inner_texts()
    assert any(l.split("\n")[0] == "Visage" for l in labels), labels
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "node_library.png"))
    search.fill("")
    page.get_by_text("Nodes", exact=True).first.click()  # close the sidebar again


def _node_js(body):
    return (
        "(arg) => { const app = window.comfyAPI.app.app; "
        "const node = app.graph.nodes.find(n => n.type === 'VisageAnalyzeFaces'); " + body + " }"
    )


def _queue_and_wait(page, timeout_s=300):
    page.evaluate("""async () => {
        const app = window.comfyAPI.app.app;
        window.__visageRun = null;
        if (!window.__visageHooked) {
          window.__visageHooked = true;
          app.api.addEventListener('execution_success', () => { window.__visageRun = 'ok'; });
          app.api.addEventListener('execution_error', (e) => {
            const d = e.detail || {};
            window.__visageRun = 'error: node ' + d.node_id + ' (' + d.node_type + '): ' + d.exception_message; });
        }
        await app.queuePrompt(0, 1);
    }""")
    page.wait_for_function("() => window.__visageRun !== null", timeout=timeout_s * 1000)
    status = page.evaluate("() => window.__visageRun")
    assert status == "ok", f"the workflow failed in ComfyUI: {status}"


def _show_analyze_node(page):
    """Centre the canvas on Analyze Faces and wait until the preview (with our boxes) has been drawn."""
    page.evaluate(
        _node_js(
            "node.__visage && (node.__visage.rects = []); app.canvas.ds.scale = 1.2; "
            "app.canvas.centerOnNode(node); app.canvas.setDirty(true, true);"
        )
    )
    page.wait_for_function(
        _node_js("return !!(node.__visage?.faces && node.__visage.rects?.length === 1);"), timeout=30_000
    )


def _client_point(page, gx, gy):
    return page.evaluate("([x, y]) => window.comfyAPI.app.app.canvasPosToClientPos([x, y])", [gx, gy])


def _face_centre_graph(state, pos, face):
    rect = state["rects"][0]
    H, W = state["sizes"][rect["i"]]
    x1, y1, x2, y2 = face["bbox"]
    return (pos[0] + rect["x"] + (x1 + x2) / 2 / W * rect["w"], pos[1] + rect["y"] + (y1 + y2) / 2 / H * rect["h"])


def _outside_all_faces(state, pos, faces):
    rect = state["rects"][0]
    H, W = state["sizes"][rect["i"]]
    for fy in (0.02, 0.5, 0.98):
        for fx in (0.02, 0.5, 0.98):
            px, py = fx * W, fy * H
            if not any(
                f["bbox"][0] - 2 <= px <= f["bbox"][2] + 2 and f["bbox"][1] - 2 <= py <= f["bbox"][3] + 2 for f in faces
            ):
                return pos[0] + rect["x"] + fx * rect["w"], pos[1] + rect["y"] + fy * rect["h"]
    return None


def test_face_picker_end_to_end(loaded):
    page, server = loaded["page"], loaded["server"]
    assert os.path.isfile(UI_WORKFLOW), (
        f"{UI_WORKFLOW} (the UI-format twin of workflows/api/face_analysis.json) is "
        f"missing; write it with: .venv/bin/python tests/browser/make_ui_twin.py "
        f"workflows/api/face_analysis.json"
    )
    if os.environ.get("VISAGE_BROWSER_WORKFLOW"):
        with open(UI_WORKFLOW, "r", encoding="utf-8") as f:
            workflow = json.load(f)
    else:
        # ComfyUI offers workflows/*.json as this pack's templates; load it the way the Templates dialog does
        templates = server.get("/workflow_templates")
        shipped = sorted(
            os.path.splitext(f)[0] for f in os.listdir(os.path.dirname(UI_WORKFLOW)) if f.endswith(".json")
        )
        assert sorted(templates.get("visage", [])) == shipped, templates
        workflow = page.evaluate(
            "async () => (await fetch('/api/workflow_templates/visage/face_analysis.json')).json()"
        )
    object_info = server.object_info()
    packs = vr.input_type(object_info["VisageFaceAnalyzerLoader"], "pack")[0]
    pack = os.environ.get("VISAGE_BROWSER_PACK") or ("fixtures_real" if "fixtures_real" in packs else "visage_test")

    # load the shipped UI workflow as a user would, and point it at the test server's files
    page.evaluate(
        "async (wf) => { await window.comfyAPI.app.app.loadGraphData(wf, true, true, 'face_analysis.json'); }", workflow
    )
    time.sleep(0.5)
    alerts = page.evaluate("() => [...document.querySelectorAll('.p-toast-message, .p-dialog')].map(e => e.innerText)")
    assert not [a for a in alerts if "invalid" in a.lower() or "missing" in a.lower()], (
        f"the frontend complained about {UI_WORKFLOW}: {alerts}"
    )
    missing = page.evaluate(
        """(pack) => {
        const app = window.comfyAPI.app.app; const out = [];
        const loader = app.graph.nodes.find(n => n.type === 'VisageFaceAnalyzerLoader');
        const w = loader?.widgets?.find(w => w.name === 'pack'); if (w) w.value = pack; else out.push('pack');
        const img = app.graph.nodes.find(n => n.type === 'LoadImage');
        const iw = img?.widgets?.find(w => w.name === 'image'); if (iw) iw.value = 't1.jpg'; else out.push('image');
        const an = app.graph.nodes.find(n => n.type === 'VisageAnalyzeFaces');
        const fi = an?.widgets?.find(w => w.name === 'face_index'); if (fi) fi.value = -1; else out.push('face_index');
        return out; }""",
        pack,
    )
    assert not missing, f"widgets not found by name: {missing}"
    # a user adds Face Embeds -> Face Similarity (fed by the analysed faces) -> Preview Image, when the
    # workflow has no similarity node
    page.evaluate("""() => {
        const app = window.comfyAPI.app.app, g = app.graph;
        if (g.nodes.some(n => n.type === 'VisageFaceSimilarity')) return false;
        const an = g.nodes.find(n => n.type === 'VisageAnalyzeFaces');
        const img = g.nodes.find(n => n.type === 'LoadImage');
        const make = (type, x, y) => { const n = LiteGraph.createNode(type); n.pos = [x, y]; g.add(n); return n; };
        const below = Math.max(...g.nodes.map(n => n.pos[1] + n.size[1])) + 400;  // under everything
        const emb = make('VisageFaceEmbeds', an.pos[0], below);
        const sim = make('VisageFaceSimilarity', an.pos[0] + 350, below);
        const prev = make('PreviewImage', an.pos[0] + 700, below);
        const slot = (node, name, outputs) => (outputs ? node.outputs : node.inputs).findIndex(s => s.name === name);
        an.connect(slot(an, 'faces', true), emb, slot(emb, 'faces'));
        emb.connect(slot(emb, 'embeds', true), sim, slot(sim, 'reference'));
        an.connect(slot(an, 'faces', true), sim, slot(sim, 'faces'));
        img.connect(0, sim, slot(sim, 'image'));
        sim.connect(slot(sim, 'overlay', true), prev, 0);
        return true; }""")

    _queue_and_wait(page)
    _show_analyze_node(page)
    state = page.evaluate(
        _node_js(
            "return {faces: node.__visage.faces, sizes: node.__visage.sizes, "
            "rects: node.__visage.rects, pos: [node.pos[0], node.pos[1]], id: node.id};"
        )
    )
    faces = state["faces"][state["rects"][0]["i"]]
    assert len(faces) >= 2, f"expected several faces in t1.jpg with pack {pack}, got {faces}"
    assert all(f["selected"] for f in faces)  # face_index -1 keeps all
    H, W = state["sizes"][0]
    assert (H, W) == (886, 1280)
    assert abs(state["rects"][0]["w"] / state["rects"][0]["h"] - W / H) < 0.02  # our rect = the drawn preview
    sim_js = (
        "() => window.comfyAPI.app.app.graph.nodes.find(n => n.type === 'VisageFaceSimilarity')?.__visage?.similarity"
    )
    sim = page.evaluate(sim_js)
    assert sim is not None and len(sim) == len(faces), sim  # one score line per face
    assert all(line.startswith("image 0 · face ") for line in sim)

    # a click outside every face changes nothing
    miss = _outside_all_faces(state, state["pos"], faces)
    if miss is not None:
        p = _client_point(page, *miss)
        page.mouse.click(p[0], p[1])
        time.sleep(0.3)
        assert page.evaluate(_node_js("return node.widgets.find(w => w.name === 'face_index').value;")) == -1

    # clicking a face selects it (one whose centre is inside the image: test-built detectors may box past the edge)
    inside = [
        f for f in faces if 0 < (f["bbox"][0] + f["bbox"][2]) / 2 < W and 0 < (f["bbox"][1] + f["bbox"][3]) / 2 < H
    ]
    assert inside, faces
    target = inside[len(inside) // 2]
    p = _client_point(page, *_face_centre_graph(state, state["pos"], target))
    page.mouse.click(p[0], p[1])
    page.wait_for_function(
        _node_js(f"return node.widgets.find(w => w.name === 'face_index').value === {target['index']};"), timeout=5_000
    )

    # ... and the choice is in the saved workflow JSON, at the face_index widget's place
    saved = json.loads(page.evaluate("() => JSON.stringify(window.comfyAPI.app.app.graph.serialize())"))
    node = next(n for n in saved["nodes"] if n["type"] == "VisageAnalyzeFaces")
    slots = vr.widget_slots(object_info["VisageAnalyzeFaces"])
    assert node["widgets_values"][slots.index("face_index")] == target["index"]
    # the API prompt the frontend queues equals the one scripts/visage_run.py builds from the saved JSON
    front = page.evaluate("async () => (await window.comfyAPI.app.app.graphToPrompt()).output")
    ours = vr.ui_to_api(saved, object_info)
    strip = lambda api: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
    assert strip(ours) == strip(front)
    assert front[str(state["id"])]["inputs"]["face_index"] == target["index"]

    # run again: now only the picked face is selected
    _queue_and_wait(page)
    page.wait_for_function(
        _node_js(f"return !!node.__visage.faces?.[0]?.every(f => f.selected === (f.index === {target['index']}));"),
        timeout=30_000,
    )
    sim = page.evaluate(sim_js)
    assert sim == ["image 0 · face 0: 1.000"], sim  # the one selected face against its own identity
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.evaluate(
        "() => { const app = window.comfyAPI.app.app; app.canvas.ds.scale = 1.2; "
        "app.canvas.centerOnNode(app.graph.nodes.find(n => n.type === 'VisageFaceSimilarity')); "
        "app.canvas.setDirty(true, true); }"
    )
    time.sleep(0.5)
    page.screenshot(path=os.path.join(ARTIFACTS, "face_similarity.png"))
    _show_analyze_node(page)
    page.screenshot(path=os.path.join(ARTIFACTS, "face_picker.png"))


def test_subgraphs_convert_like_the_editor(loaded, tmp_path):
    """A nested subgraph with a promoted widget, built in the editor: scripts/visage_run.py converts the saved
    JSON to the same API prompt as the editor's own graphToPrompt, and runs it headless."""
    page, server = loaded["page"], loaded["server"]
    object_info = server.object_info()
    packs = vr.input_type(object_info["VisageFaceAnalyzerLoader"], "pack")[0]
    pack = os.environ.get("VISAGE_BROWSER_PACK") or ("fixtures_real" if "fixtures_real" in packs else "visage_test")
    workflow = page.evaluate("async () => (await fetch('/api/workflow_templates/visage/face_analysis.json')).json()")
    out = page.evaluate(
        """async ([wf, pack]) => {
        const app = window.comfyAPI.app.app;
        await app.loadGraphData(wf, true, true, 'subgraph_test.json');
        const g = app.graph;
        g.nodes.find(n => n.type === 'VisageFaceAnalyzerLoader').widgets.find(w => w.name === 'pack').value = pack;
        g.nodes.find(n => n.type === 'LoadImage').widgets.find(w => w.name === 'image').value = 't1.jpg';
        const inner = g.nodes.filter(n => ['VisageAnalyzeFaces', 'VisageFaceMask', 'MaskToImage'].includes(n.type));
        const first = g.convertToSubgraph(new Set(inner));
        const an = first.subgraph.nodes.find(n => n.type === 'VisageAnalyzeFaces');
        const slot = first.subgraph.addInput('face_index', 'INT');
        slot.connect(an.inputs.find(i => i.name === 'face_index'), an);   // promote the widget
        first.node.widgets.find(w => w.name === 'face_index').value = 1;
        g.convertToSubgraph(new Set([first.node, g.nodes.find(n => n.type === 'VisageKeypointsImage')]));  // nest
        return {saved: JSON.stringify(g.serialize()), prompt: (await app.graphToPrompt()).output};
    }""",
        [workflow, pack],
    )
    saved, front = json.loads(out["saved"]), out["prompt"]
    assert saved["definitions"]["subgraphs"], "the editor did not make a subgraph"
    strip = lambda api: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
    ours = vr.ui_to_api(saved, object_info)
    assert strip(ours) == strip(front)
    analyze = [k for k, v in front.items() if v["class_type"] == "VisageAnalyzeFaces"]
    assert len(analyze) == 1 and analyze[0].count(":") == 2, analyze  # nested: outer:inner:node
    assert front[analyze[0]]["inputs"]["face_index"] == 1
    # ... and the saved file runs headless
    path = tmp_path / "subgraph.json"
    path.write_text(out["saved"])
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "visage_run.py"),
            str(path),
            "--url",
            server.url,
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    faces = json.loads((tmp_path / "out" / "outputs.json").read_text())["outputs"][analyze[0]]["ui"]["visage_faces"][0]
    assert [f["index"] for f in faces if f["selected"]] == [1]


SAVED_V1 = os.path.join(REPO, "tests", "fixtures", "workflows_v1")


def test_saved_v1_workflows_open_with_every_node_type(loaded):
    """The workflows users saved with the first release (tests/fixtures/workflows_v1, UI format) open in the
    real frontend with every node type known: no placeholder for a missing node, no missing-nodes dialog."""
    page = loaded["page"]
    files = sorted(f for f in os.listdir(SAVED_V1) if f.endswith(".json"))
    assert files
    for name in files:
        with open(os.path.join(SAVED_V1, name), "r", encoding="utf-8") as f:
            wf = json.load(f)
        result = page.evaluate(
            """async ([wf, name]) => {
            const app = window.comfyAPI.app.app;
            await app.loadGraphData(wf, true, true, name);
            const types = app.graph.nodes.map(n => n.type);
            return {n: types.length, missing: types.filter(t => !LiteGraph.registered_node_types[t]),
                    errors: app.graph.nodes.filter(n => n.has_errors).map(n => n.type)}; }""",
            [wf, name],
        )
        time.sleep(0.3)
        dialogs = page.evaluate("() => [...document.querySelectorAll('.p-dialog')].map(e => e.innerText)")
        page.keyboard.press("Escape")
        assert result["n"] == len(wf["nodes"]), (name, result)
        assert not result["missing"] and not result["errors"], f"{name}: missing node types {result}"
        assert not [d for d in dialogs if "missing" in d.lower()], f"{name}: the frontend reported {dialogs}"

"""Every shipped workflow checked against the real ComfyUI's /object_info, and the record of shipped node IDs.

* workflows/*.json (UI format) and workflows/api/*.json (API format): every node type exists, every input
  name exists with the same type, every value fits its input (INT/FLOAT/BOOLEAN/STRING, min/max, COMBO
  choices), every required connection is made, every link joins compatible types ("*" matches anything,
  "A,B" unions overlap, a combo output feeds a combo input), and each UI file converts (as the editor's
  Queue does) to the same graph as its API twin.
* tests/schema/shipped_nodes.json records, for every shipped Visage node ID, its inputs (name -> type) and
  its output types. A breaking change — a removed/renamed node, a removed or retyped input, a removed or
  retyped output — fails unless declared in tests/schema/breaking_changes.json. Additions are fine.
  The record is written on the first run when absent; to add new nodes/inputs to it run
      VISAGE_UPDATE_SCHEMA=1 .venv/bin/python -m pytest tests/comfy/test_workflows.py -k schema -q
  (it refuses to write while an undeclared breaking change is present). Before anything has shipped,
  VISAGE_UPDATE_SCHEMA=reset rewrites the record from the current nodes, breaking changes included.
"""

import collections
import glob
import json
import os
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WF_DIR = os.path.join(REPO, "workflows")
API_DIR = os.path.join(WF_DIR, "api")
SCHEMA_DIR = os.path.join(REPO, "tests", "schema")
SHIPPED = os.path.join(SCHEMA_DIR, "shipped_nodes.json")
BREAKING = os.path.join(SCHEMA_DIR, "breaking_changes.json")

UI_FILES = sorted(glob.glob(os.path.join(WF_DIR, "*.json")))
API_FILES = sorted(glob.glob(os.path.join(API_DIR, "*.json")))

from visage.runner import cli as vr  # noqa: E402

VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# combo inputs whose choices are the files on the user's disk (model files, packs, input images): a value
# that is not among the test server's files is fine there; any other combo value must be a listed choice
FILE_COMBO_NAMES = {"image", "pack", "file", "video", "audio"}
FILE_COMBO_SUFFIXES = ("_name", "_file", "_pack", "_path", "_model", "model", "ckpt")
FILE_EXTS = (
    ".onnx",
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".sft",
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".npz",
    ".json",
    ".gguf",
    ".mp4",
)


def load(path):
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def tname(t):
    """object_info type -> string ('COMBO' for a list of choices)."""
    return "COMBO" if isinstance(t, list) else str(t)


def compatible(out_type, in_type):
    o, i = tname(out_type), tname(in_type)
    if o == "*" or i == "*" or o == i:
        return True
    return bool({t.strip() for t in o.split(",")} & {t.strip() for t in i.split(",")})


def spec_of(info, name):
    """(type, opts, section) of an input, or None."""
    for section in ("required", "optional"):
        cfg = (info.get("input", {}).get(section) or {}).get(name)
        if cfg is not None:
            typ = cfg[0] if isinstance(cfg, (list, tuple)) and cfg else cfg
            opts = cfg[1] if isinstance(cfg, (list, tuple)) and len(cfg) > 1 and isinstance(cfg[1], dict) else {}
            return typ, opts, section
    return None


def is_file_combo(name, choices, value):
    if name in FILE_COMBO_NAMES or name.endswith(FILE_COMBO_SUFFIXES):
        return True
    if any(str(c).lower().endswith(FILE_EXTS) for c in choices):
        return True
    return isinstance(value, str) and value.lower().endswith(FILE_EXTS)


def value_problems(where, name, typ, opts, v):
    """Problems of a literal value for an input (empty list when it fits)."""
    t = tname(typ)
    num = isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "INT":
        if not (num and float(v).is_integer()):
            return [f"{where}: input '{name}' is INT but the workflow gives {v!r}"]
    elif t == "FLOAT":
        if not num:
            return [f"{where}: input '{name}' is FLOAT but the workflow gives {v!r}"]
    elif t == "BOOLEAN":
        if not isinstance(v, bool):
            return [f"{where}: input '{name}' is BOOLEAN but the workflow gives {v!r}"]
    elif t == "STRING":
        if not isinstance(v, str):
            return [f"{where}: input '{name}' is STRING but the workflow gives {v!r}"]
    elif t == "COMBO":
        choices = typ if isinstance(typ, list) else (opts.get("options") or [])
        if v not in choices and not is_file_combo(name, choices, v):
            return [f"{where}: input '{name}' = {v!r} is not one of its choices {choices[:20]}"]
        return []
    else:
        return [f"{where}: input '{name}' of type {t} takes a connection, but the workflow gives the value {v!r}"]
    if num and t in ("INT", "FLOAT"):
        if "min" in opts and v < opts["min"]:
            return [f"{where}: input '{name}' = {v} is below its min {opts['min']}"]
        if "max" in opts and v > opts["max"]:
            return [f"{where}: input '{name}' = {v} is above its max {opts['max']}"]
    return []


# ======================================================================================= API format


def api_problems(api, object_info):
    problems = []
    for nid, node in api.items():
        ct = node.get("class_type")
        where = f"node {nid} ({ct})"
        info = object_info.get(ct)
        if info is None:
            problems.append(f"{where}: node type '{ct}' does not exist in this ComfyUI")
            continue
        inputs = node.get("inputs") or {}
        for section in ("required",):
            for name, _cfg in (info["input"].get(section) or {}).items():
                if name not in inputs:
                    problems.append(f"{where}: required input '{name}' is missing")
        for name, v in inputs.items():
            sp = spec_of(info, name)
            if sp is None:
                problems.append(
                    f"{where}: has no input '{name}' (inputs: {', '.join(n for _s, n in vr.input_order(info))})"
                )
                continue
            typ, opts, _section = sp
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int) and not isinstance(v[0], (int, float)):
                src = api.get(str(v[0]))
                if src is None:
                    problems.append(f"{where}: input '{name}' links to node {v[0]}, which does not exist")
                    continue
                sinfo = object_info.get(src.get("class_type"))
                if sinfo is None:
                    continue  # reported for that node
                outs = sinfo.get("output") or []
                if not 0 <= v[1] < len(outs):
                    problems.append(
                        f"{where}: input '{name}' links to output {v[1]} of node {v[0]} "
                        f"({src['class_type']}), which has {len(outs)} outputs"
                    )
                elif not compatible(outs[v[1]], typ):
                    problems.append(
                        f"{where}: input '{name}' ({tname(typ)}) is linked to output {v[1]} of node "
                        f"{v[0]} ({src['class_type']}), of type {tname(outs[v[1]])}"
                    )
            else:
                problems += value_problems(where, name, typ, opts, v)
    return problems


@pytest.mark.parametrize("path", API_FILES, ids=os.path.basename)
def test_api_workflow_matches_object_info(path, object_info):
    kind, api = vr.detect_format(load(path), path)
    assert kind == "api", f"{path} is in workflows/api/ but is not an API-format workflow"
    problems = api_problems(api, object_info)
    assert not problems, f"{os.path.relpath(path, REPO)}:\n  " + "\n  ".join(problems)


# ======================================================================================= UI format


def ui_problems(wf, object_info, subgraph_types=None):
    """Problems of a UI-format graph; a subgraph is checked as a graph of its own (its input/output
    nodes -10/-20 and the instances of subgraphs stand for connections that are checked inside)."""
    problems = []
    if subgraph_types is None:
        subgraph_types = set()
        stack = [wf]
        while stack:
            g = stack.pop()
            for sg in (g.get("definitions") or {}).get("subgraphs") or []:
                subgraph_types.add(sg.get("id"))
                stack.append(sg)
        for sg in (wf.get("definitions") or {}).get("subgraphs") or []:
            problems += [f"subgraph '{sg.get('name')}': {p}" for p in ui_problems(sg, object_info, subgraph_types)]
    boundary = {"-10", "-20"}
    nodes = {str(n["id"]): n for n in wf.get("nodes") or []}
    links = vr._links_table(wf)
    linked_ids = set()

    def label(n):
        return f"node {n['id']} ({n['type']}{' ' + repr(n['title']) if n.get('title') else ''})"

    for nid, n in nodes.items():
        t = n["type"]
        for slot, inp in enumerate(n.get("inputs") or []):
            if inp.get("link") is not None:
                linked_ids.add(int(inp["link"]))
                l = links.get(int(inp["link"]))
                if l is None:
                    problems.append(
                        f"{label(n)}: input '{inp.get('name')}' uses link {inp['link']}, which is not in 'links'"
                    )
                elif str(l[2]) != nid or int(l[3]) != slot:
                    problems.append(
                        f"{label(n)}: input '{inp.get('name')}' uses link {inp['link']}, but that link "
                        f"goes to node {l[2]} slot {l[3]}"
                    )
        if t in VIRTUAL or t in subgraph_types or n.get("mode", 0) in (2, 4):
            continue
        info = object_info.get(t)
        if info is None:
            problems.append(f"{label(n)}: node type '{t}' does not exist in this ComfyUI")
            continue
        # inputs: names and types; required connections made
        ui_inputs = {inp.get("name"): inp for inp in n.get("inputs") or []}
        for name, inp in ui_inputs.items():
            sp = spec_of(info, name)
            if sp is None and inp.get("widget") and inp.get("link") is None and str(inp.get("type")).endswith("UPLOAD"):
                continue  # the editor's own upload-button widget (image_upload combos)
            if sp is None:
                problems.append(
                    f"{label(n)}: has an input '{name}' that {t} does not have (inputs: "
                    f"{', '.join(x for _s, x in vr.input_order(info))})"
                )
                continue
            if (
                inp.get("type") not in (None, "*")
                and not compatible(inp["type"], sp[0])
                and not (tname(sp[0]) == "COMBO" and inp["type"] == "COMBO")
            ):
                problems.append(f"{label(n)}: input '{name}' is saved as {inp['type']} but {t} declares {tname(sp[0])}")
        for section, name in vr.input_order(info):
            typ, opts, _ = spec_of(info, name)
            if section == "required" and not vr.is_widget(typ, opts):
                if name not in ui_inputs or ui_inputs[name].get("link") is None:
                    problems.append(f"{label(n)}: required input '{name}' ({tname(typ)}) is not connected")
        # outputs
        spec_outs = info.get("output") or []
        for i, out in enumerate(n.get("outputs") or []):
            if i >= len(spec_outs):
                problems.append(f"{label(n)}: has output {i} ('{out.get('name')}') but {t} has {len(spec_outs)}")
            elif out.get("type") not in (None, "*") and not compatible(out["type"], spec_outs[i]):
                problems.append(
                    f"{label(n)}: output {i} is saved as {out['type']} but {t} returns {tname(spec_outs[i])}"
                )
        # widget values
        values = n.get("widgets_values")
        slots = vr.widget_slots(info)
        if isinstance(values, list):
            optional = {name for section, name in vr.input_order(info) if section == "optional"}
            # a missing trailing upload/control value is fine, and so is a trailing optional widget added
            # after the workflow was saved (the frontend gives it its default)
            short_by_extras = len(values) < len(slots) and all(x is None or x in optional for x in slots[len(values) :])
            if len(values) != len(slots) and not short_by_extras:
                problems.append(
                    f"{label(n)}: has {len(values)} widget values but {t} has {len(slots)} widgets "
                    f"({', '.join(x or '(control/upload value)' for x in slots)}); update the workflow "
                    f"(open it in ComfyUI, set the new inputs, save)"
                )
            for name, v in zip(slots, values):
                if name is None:
                    continue
                if name in ui_inputs and ui_inputs[name].get("link") is not None:
                    continue  # the link gives the value
                typ, opts, _ = spec_of(info, name)
                problems += value_problems(label(n), name, typ, opts, v)
        elif slots and values is None:
            problems.append(f"{label(n)}: has no widgets_values but {t} has widgets {slots}")

    # links: both ends exist, slots match, types compatible (through Reroutes)
    def origin_type(node_id, slot, depth=0):
        n = nodes.get(str(node_id))
        if n is None or depth > 32:
            return None
        if n["type"] == "Reroute":
            ins = n.get("inputs") or []
            if ins and ins[0].get("link") is not None and int(ins[0]["link"]) in links:
                l = links[int(ins[0]["link"])]
                return origin_type(l[0], l[1], depth + 1)
            return None
        if n["type"] == "PrimitiveNode" or n["type"] in subgraph_types:
            return "*"  # a subgraph output: checked inside the subgraph
        info = object_info.get(n["type"])
        if info is None:
            return None
        outs = info.get("output") or []
        return outs[int(slot)] if 0 <= int(slot) < len(outs) else None

    for lid, (o_id, o_slot, t_id, t_slot, _ltype) in sorted(links.items()):
        if str(o_id) in boundary or str(t_id) in boundary:
            linked_ids.add(lid)
            continue  # into / out of the subgraph: the instance's own links are checked in the parent
        src, dst = nodes.get(str(o_id)), nodes.get(str(t_id))
        if src is None or dst is None:
            problems.append(
                f"link {lid}: joins node {o_id} to node {t_id}, but node "
                f"{o_id if src is None else t_id} is not in the workflow"
            )
            continue
        outs = src.get("outputs") or []
        if not 0 <= int(o_slot) < len(outs) or lid not in (outs[int(o_slot)].get("links") or []):
            problems.append(f"link {lid}: node {o_id} output {o_slot} does not list it")
        ins = dst.get("inputs") or []
        if not 0 <= int(t_slot) < len(ins):
            problems.append(f"link {lid}: node {t_id} has no input slot {t_slot}")
            continue
        if dst["type"] in VIRTUAL or dst["type"] in subgraph_types or dst.get("mode", 0) in (2, 4):
            continue
        dinfo = object_info.get(dst["type"])
        sp = spec_of(dinfo, ins[int(t_slot)].get("name")) if dinfo else None
        ot = origin_type(o_id, o_slot)
        if sp is None or ot is None:
            continue
        if not compatible(ot, sp[0]):
            problems.append(
                f"link {lid}: node {o_id} ({src['type']}) output {o_slot} is {tname(ot)} but node "
                f"{t_id} ({dst['type']}) input '{ins[int(t_slot)].get('name')}' takes {tname(sp[0])}"
            )
    for lid in set(links) - linked_ids:
        o_id, o_slot, t_id, t_slot, _ = links[lid]
        problems.append(f"link {lid}: no input of node {t_id} uses it (dangling link)")
    return problems


@pytest.mark.parametrize("path", UI_FILES, ids=os.path.basename)
def test_ui_workflow_matches_object_info(path, object_info):
    kind, wf = vr.detect_format(load(path), path)
    assert kind == "ui", f"{path} is in workflows/ but is not a UI-format workflow (API files go in workflows/api/)"
    problems = ui_problems(wf, object_info)
    assert not problems, f"{os.path.relpath(path, REPO)}:\n  " + "\n  ".join(problems)


def canonical(api):
    """Id-independent description of an API graph: a multiset of node signatures (type, values, upstream)."""
    memo = {}

    def norm(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return json.dumps(v, sort_keys=True)
        return repr(float(v))

    def sig(nid, depth=0):
        if nid in memo:
            return memo[nid]
        n = api[nid]
        items = []
        for k, v in sorted((n.get("inputs") or {}).items()):
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int) and str(v[0]) in api and depth < 64:
                items.append((k, "<-", sig(str(v[0]), depth + 1), v[1]))
            else:
                items.append((k, norm(v)))
        memo[nid] = (n["class_type"], tuple(items))
        return memo[nid]

    return collections.Counter(repr(sig(n)) for n in api)


def with_defaults(api, object_info):
    """``api`` with every optional widget input it lacks set to its declared default: what the frontend
    writes for a workflow saved before that input existed (and what the node's own default must equal)."""
    out = {}
    for nid, n in api.items():
        info = object_info.get(n.get("class_type"))
        inputs = dict(n.get("inputs") or {})
        if info:
            for section, name in vr.input_order(info):
                typ, opts, _ = spec_of(info, name)
                if section == "optional" and name not in inputs and vr.is_widget(typ, opts) and "default" in opts:
                    inputs[name] = opts["default"]
        out[nid] = dict(n, inputs=inputs)
    return out


def shallow(api):
    """Readable per-node signatures for a diff: type, literal values, and the type feeding each link."""
    out = collections.Counter()
    for n in api.values():
        parts = []
        for k, v in sorted((n.get("inputs") or {}).items()):
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int) and str(v[0]) in api:
                parts.append(f"{k}<-{api[str(v[0])]['class_type']}[{v[1]}]")
            else:
                parts.append(f"{k}={json.dumps(v)}")
        out[f"{n['class_type']}({', '.join(parts)})"] += 1
    return out


def _twin_pairs():
    names = {os.path.basename(p) for p in UI_FILES} | {os.path.basename(p) for p in API_FILES}
    return sorted(names)


@pytest.mark.parametrize("name", _twin_pairs())
def test_ui_and_api_twins_describe_the_same_graph(name, object_info):
    ui_path, api_path = os.path.join(WF_DIR, name), os.path.join(API_DIR, name)
    assert os.path.isfile(ui_path), f"workflows/api/{name} has no UI-format twin workflows/{name}"
    assert os.path.isfile(api_path), f"workflows/{name} has no API-format twin workflows/api/{name}"
    _k, wf = vr.detect_format(load(ui_path), ui_path)
    _k, api = vr.detect_format(load(api_path), api_path)
    converted = with_defaults(vr.ui_to_api(wf, object_info), object_info)
    api = with_defaults(api, object_info)
    if canonical(converted) == canonical(api):
        return
    a, b = shallow(converted), shallow(api)
    only_ui = sorted((a - b).elements())
    only_api = sorted((b - a).elements())
    pytest.fail(
        f"workflows/{name} and workflows/api/{name} describe different graphs (node: type, values, "
        f"<- type of each linked input):\n  only in the UI file:  "
        + "\n                        ".join(only_ui[:8])
        + "\n  only in the API file: "
        + "\n                        ".join(only_api[:8])
        + ("\n  (same nodes and values: the links differ)" if not only_ui and not only_api else "")
    )


def test_there_are_workflows():
    assert API_FILES, "workflows/api/ has no workflow"


# ======================================================================================= shipped schema


def current_schema(object_info):
    out = {}
    for name, info in sorted(object_info.items()):
        if not name.startswith("Visage"):  # the test-only pack's nodes are Test*
            continue
        inputs, required = {}, []
        for section, inp in vr.input_order(info):
            inputs[inp] = tname(spec_of(info, inp)[0])
            if section == "required":
                required.append(inp)
        out[name] = {
            "inputs": inputs,
            "required": sorted(required),
            "widgets": [n for n, t in inputs.items() if t in WIDGET_TYPES],  # in order: UI workflows store by position
            "outputs": [tname(t) for t in info.get("output") or []],
        }
    return out


WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def breaking_changes(recorded, current):
    changes = []
    for node, rec in sorted(recorded.items()):
        cur = current.get(node)
        if cur is None:
            changes.append({"node": node, "change": "removed"})
            continue
        for inp, typ in rec.get("inputs", {}).items():
            if inp not in cur["inputs"]:
                changes.append({"node": node, "input": inp, "change": "removed", "was": typ})
            elif cur["inputs"][inp] != typ:
                changes.append({"node": node, "input": inp, "change": "retyped", "was": typ, "now": cur["inputs"][inp]})
        # a saved API workflow gives only the inputs its node had: an input that is required now but was
        # not there (or was optional) makes ComfyUI refuse every such workflow
        was_required = set(rec.get("required", rec.get("inputs", {})))
        for inp in cur.get("required", []):
            if inp not in rec.get("inputs", {}) or ("required" in rec and inp not in was_required):
                changes.append({"node": node, "input": inp, "change": "newly required"})
        # UI workflows store widget values by position: recorded widgets must keep their order and a new
        # widget may only come after them
        rec_w = [n for n in rec.get("widgets", []) if n in cur["inputs"]]
        cur_w = cur.get("widgets", [n for n, t in cur["inputs"].items() if t in WIDGET_TYPES])
        if cur_w[: len(rec_w)] != rec_w:
            changes.append({"node": node, "change": "widget order", "was": rec_w, "now": cur_w})
        for i, typ in enumerate(rec.get("outputs", [])):
            if i >= len(cur["outputs"]):
                changes.append({"node": node, "output": i, "change": "removed", "was": typ})
            elif cur["outputs"][i] != typ:
                changes.append({"node": node, "output": i, "change": "retyped", "was": typ, "now": cur["outputs"][i]})
    return changes


def declared(change, declarations):
    for d in declarations:
        if d.get("node") != change["node"]:
            continue
        if "input" in change and d.get("input") == change["input"]:
            return True
        if "output" in change and d.get("output") == change["output"]:
            return True
        if "input" not in change and "output" not in change and "input" not in d and "output" not in d:
            return True
    return False


def additions(recorded, current):
    out = []
    for node, cur in current.items():
        rec = recorded.get(node)
        if rec is None:
            out.append(node)
            continue
        out += [f"{node}.{i}" for i in cur["inputs"] if i not in rec.get("inputs", {})]
        out += [f"{node} output {i}" for i in range(len(rec.get("outputs", [])), len(cur["outputs"]))]
    return out


def test_schema_no_undeclared_breaking_change(object_info):
    current = current_schema(object_info)
    assert current, "no Visage node is registered in this ComfyUI (did the pack fail to import?)"
    update = os.environ.get("VISAGE_UPDATE_SCHEMA", "")
    if not os.path.isfile(SHIPPED) or update == "reset":
        os.makedirs(SCHEMA_DIR, exist_ok=True)
        _write(SHIPPED, current)
        warnings.warn(f"wrote the first record of shipped nodes ({len(current)} nodes) to {SHIPPED}", stacklevel=2)
        return
    recorded = load(SHIPPED)
    declarations = load(BREAKING).get("changes", []) if os.path.isfile(BREAKING) else []
    undeclared = [c for c in breaking_changes(recorded, current) if not declared(c, declarations)]
    assert not undeclared, (
        "breaking change(s) to shipped Visage nodes (saved workflows would stop loading or running):\n  "
        + "\n  ".join(json.dumps(c) for c in undeclared)
        + "\nrestore the node/input, or declare the change in tests/schema/breaking_changes.json as "
        '{"changes": [{"node": ..., "input": ... | "output": N, "change": "removed|retyped|renamed", '
        '"reason": ...}]} and refresh the record (VISAGE_UPDATE_SCHEMA=1)'
    )
    added = additions(recorded, current)
    if update == "1":
        _write(SHIPPED, current)
    elif added:
        warnings.warn(
            f"{len(added)} node(s)/input(s) not yet in tests/schema/shipped_nodes.json: {added[:10]}; "
            f"refresh with VISAGE_UPDATE_SCHEMA=1 .venv/bin/python -m pytest tests/comfy/test_workflows.py "
            f"-k schema",
            stacklevel=2,
        )


def _write(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")


def test_schema_diff_logic():
    """The breaking-change rules themselves (no server needed)."""
    rec = {
        "VisageA": {"inputs": {"image": "IMAGE", "k": "INT"}, "outputs": ["IMAGE", "INT"]},
        "VisageGone": {"inputs": {}, "outputs": []},
    }
    cur = {
        "VisageA": {"inputs": {"image": "IMAGE", "k": "FLOAT", "new": "STRING"}, "outputs": ["IMAGE"]},
        "VisageNew": {"inputs": {}, "outputs": []},
    }
    ch = breaking_changes(rec, cur)
    # a new input is fine while optional, breaking once required; so is an optional input made required
    req = {"VisageB": {"inputs": {"a": "INT", "b": "INT"}, "required": ["a"], "outputs": []}}
    assert (
        breaking_changes(
            req, {"VisageB": {"inputs": {"a": "INT", "b": "INT", "c": "INT"}, "required": ["a"], "outputs": []}}
        )
        == []
    )
    assert breaking_changes(req, {"VisageB": {"inputs": {"a": "INT", "b": "INT"}, "required": [], "outputs": []}}) == []
    got = breaking_changes(
        req, {"VisageB": {"inputs": {"a": "INT", "b": "INT", "c": "INT"}, "required": ["a", "b", "c"], "outputs": []}}
    )
    assert got == [
        {"node": "VisageB", "input": "b", "change": "newly required"},
        {"node": "VisageB", "input": "c", "change": "newly required"},
    ]
    # a new widget before a recorded one shifts every saved UI workflow's widget values
    req["VisageB"]["widgets"] = ["a", "b"]
    moved = {"VisageB": {"inputs": {"a": "INT", "new": "STRING", "b": "INT"}, "required": ["a"], "outputs": []}}
    assert breaking_changes(req, moved) == [
        {"node": "VisageB", "change": "widget order", "was": ["a", "b"], "now": ["a", "new", "b"]}
    ]
    appended = {
        "VisageB": {"inputs": {"a": "INT", "b": "INT", "m": "MASK", "new": "STRING"}, "required": ["a"], "outputs": []}
    }
    assert breaking_changes(req, appended) == []
    assert {"node": "VisageGone", "change": "removed"} in ch
    assert {"node": "VisageA", "input": "k", "change": "retyped", "was": "INT", "now": "FLOAT"} in ch
    assert {"node": "VisageA", "output": 1, "change": "removed", "was": "INT"} in ch
    assert len(ch) == 3
    decl = [{"node": "VisageGone", "change": "removed"}, {"node": "VisageA", "input": "k", "change": "retyped"}]
    assert [c for c in ch if not declared(c, decl)] == [
        {"node": "VisageA", "output": 1, "change": "removed", "was": "INT"}
    ]
    assert sorted(additions(rec, cur)) == ["VisageA.new", "VisageNew"]
    assert compatible(["a", "b"], ["c"]) and compatible("IMAGE", "IMAGE,MASK") and compatible("*", "LATENT")
    assert not compatible("IMAGE", "MASK")


# ======================================================================================= the checker itself


def _core_ui():
    """LoadImage -> ImageScale -> SaveImage, and LoadImage.MASK -> MaskToImage -> SaveImage (core nodes only)."""

    def node(nid, typ, inputs=(), outputs=(), widgets=None):
        return {
            "id": nid,
            "type": typ,
            "pos": [0, 0],
            "size": [200, 100],
            "flags": {},
            "order": nid,
            "mode": 0,
            "inputs": list(inputs),
            "outputs": list(outputs),
            "properties": {},
            "widgets_values": widgets,
        }

    return {
        "nodes": [
            node(
                1,
                "LoadImage",
                inputs=[
                    {"name": "image", "type": "COMBO", "widget": {"name": "image"}, "link": None},
                    {"name": "upload", "type": "IMAGEUPLOAD", "widget": {"name": "upload"}, "link": None},
                ],
                outputs=[
                    {"name": "IMAGE", "type": "IMAGE", "links": [1]},
                    {"name": "MASK", "type": "MASK", "links": [3]},
                ],
                widgets=["t1.jpg", "image"],
            ),
            node(
                2,
                "ImageScale",
                inputs=[{"name": "image", "type": "IMAGE", "link": 1}],
                outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [2]}],
                widgets=["bilinear", 64, 64, "disabled"],
            ),
            node(3, "SaveImage", inputs=[{"name": "images", "type": "IMAGE", "link": 2}], widgets=["a"]),
            node(
                4,
                "MaskToImage",
                inputs=[{"name": "mask", "type": "MASK", "link": 3}],
                outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [4]}],
                widgets=[],
            ),
            node(5, "SaveImage", inputs=[{"name": "images", "type": "IMAGE", "link": 4}], widgets=["b"]),
        ],
        "links": [
            [1, 1, 0, 2, 0, "IMAGE"],
            [2, 2, 0, 3, 0, "IMAGE"],
            [3, 1, 1, 4, 0, "MASK"],
            [4, 4, 0, 5, 0, "IMAGE"],
        ],
        "version": 0.4,
    }


def _mutated(fn):
    wf = _core_ui()
    fn(wf)
    return wf


@pytest.mark.parametrize(
    "mutation, expected",
    [
        (lambda wf: None, None),
        (lambda wf: wf["nodes"][1].update(type="ImageScaleGone"), "node type 'ImageScaleGone' does not exist"),
        (lambda wf: wf["links"].pop(0), "uses link 1, which is not in 'links'"),
        (
            lambda wf: wf["links"].__setitem__(2, [3, 1, 0, 4, 0, "IMAGE"]),
            "output 0 is IMAGE but node 4 (MaskToImage) input 'mask' takes MASK",
        ),
        (
            lambda wf: wf["nodes"][1]["widgets_values"].__setitem__(1, "wide"),
            "input 'width' is INT but the workflow gives 'wide'",
        ),
        (
            lambda wf: wf["nodes"][1]["widgets_values"].__setitem__(0, "sideways"),
            "input 'upscale_method' = 'sideways' is not one of",
        ),
        (lambda wf: wf["nodes"][1]["widgets_values"].pop(), "has 3 widget values but ImageScale has 4 widgets"),
        (lambda wf: wf["nodes"][1]["widgets_values"].__setitem__(2, -4), "input 'height' = -4 is below its min 0"),
        (
            lambda wf: wf["nodes"][1]["inputs"].append({"name": "sharpness", "type": "FLOAT", "link": None}),
            "has an input 'sharpness' that ImageScale does not have",
        ),
        (lambda wf: wf["nodes"][2]["inputs"][0].update(link=None), "required input 'images' (IMAGE) is not connected"),
    ],
)
def test_ui_checker_catches(mutation, expected, object_info):
    problems = ui_problems(_mutated(mutation), object_info)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_api_checker_catches(object_info):
    good = vr.ui_to_api(_core_ui(), object_info)
    assert api_problems(good, object_info) == []
    bad = json.loads(json.dumps(good))
    bad["4"]["inputs"]["mask"] = ["2", 0]  # IMAGE into MASK
    bad["2"]["inputs"]["width"] = 1.5  # not an INT
    bad["3"]["inputs"]["colour"] = "red"  # no such input
    del bad["5"]["inputs"]["filename_prefix"]  # required input missing
    bad["6"] = {"class_type": "NoSuchNode", "inputs": {}}
    text = "\n".join(api_problems(bad, object_info))
    for expected in (
        "input 'mask' (MASK) is linked to output 0 of node 2 (ImageScale), of type IMAGE",
        "input 'width' is INT but the workflow gives 1.5",
        "has no input 'colour'",
        "required input 'filename_prefix' is missing",
        "node type 'NoSuchNode' does not exist",
    ):
        assert expected in text, text
    # the UI and API twins compare by graph, not by node ids
    renumbered = {
        str(int(k) + 10): {
            **v,
            "inputs": {n: ([str(int(x[0]) + 10), x[1]] if isinstance(x, list) else x) for n, x in v["inputs"].items()},
        }
        for k, v in good.items()
    }
    assert canonical(renumbered) == canonical(good)
    changed = json.loads(json.dumps(good))
    changed["2"]["inputs"]["width"] = 65
    assert canonical(changed) != canonical(good)

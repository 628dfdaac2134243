"""Run a ComfyUI workflow headless: ``visage-run WORKFLOW.json [options]`` (also ``python -m visage.runner``
and, from a clone without the install, ``python scripts/visage_run.py``).

* WORKFLOW.json is either API format (what "Export (API)" saves: ``{id: {class_type, inputs}}``) or UI
  format (what the editor saves: ``nodes`` + ``links``). UI format is converted to API format with the
  server's live ``/object_info`` (see :func:`ui_to_api` for what is supported).
* ``--comfyui PATH`` (or ``COMFYUI_PATH``) starts a ComfyUI from that checkout on a free loopback port;
  ``--url URL`` uses a ComfyUI that is already running. Without either, the ComfyUI this pack is installed
  in (``custom_nodes/..``) or ``/opt/ComfyUI`` is started.
* ``--set NODE.input=VALUE`` sets a widget value; NODE is a node id, a node title or a node type
  (when exactly one node matches). ``--image NODE=file.png`` (or ``NODE.input=file.png``) sends a local
  image to ComfyUI's input folder and points the node's image input at it.
* Progress goes to stderr; the output files (images, ...) are written to ``--output`` (default
  ``./visage_outputs``) together with ``outputs.json`` (every node's UI output); their paths are printed
  on stdout, one per line.

Exit codes: 0 done; 1 the workflow failed while running (or was interrupted); 2 bad input (workflow,
--set, --image, or ComfyUI rejected the prompt); 3 no ComfyUI (not reachable at --url, --python not an
interpreter, or it failed to start, or the connection was lost); 4 timed out. On a timeout, Ctrl-C or
SIGTERM against a ``--url`` server the runner takes its own prompt off that server's queue (deleted when
pending, interrupted by prompt id when running) before it exits; other users' prompts are not touched.

Standard library only (+ optional ``websocket-client`` and Pillow, imported when used): no torch, no
ComfyUI; it talks HTTP to a ComfyUI server. Messages go to stderr and output paths to stdout, written
directly (this is the command line's own output, not the pack's logging).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mimetypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Dict, List, Optional, Tuple

# the pack folder (runner/ sits at its root): linked into custom_nodes when the runner starts a ComfyUI
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NO_COMFY, EXIT_TIMEOUT = 0, 1, 2, 3, 4

# nodes that exist only in the editor (the frontend never sends them to /prompt)
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MODE_MUTED, MODE_BYPASS = 2, 4
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def say(message: str) -> None:
    """One line for the user on stderr (progress, warnings, errors)."""
    sys.stderr.write(f"visage-run: {message}\n")
    sys.stderr.flush()


class RunError(Exception):
    """A failure with a message for the user and the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


# ============================================================================ workflow formats


def load_workflow(path: str) -> Tuple[str, dict]:
    """Read a workflow file; returns ("api" | "ui", data)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise RunError(f"workflow file not found: {path}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is not a JSON workflow ({e})")
    return detect_format(data, path)


def detect_format(data: Any, where: str = "workflow") -> Tuple[str, dict]:
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return "ui", data
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict) and "nodes" not in data:
        data = data["prompt"]  # a /prompt request body
    if isinstance(data, dict):
        api = {k: v for k, v in data.items() if not str(k).startswith("_")}
        if api and all(isinstance(v, dict) and "class_type" in v for v in api.values()):
            return "api", {str(k): v for k, v in api.items()}
    raise RunError(
        f"{where} is neither a UI-format workflow (a 'nodes' list and 'links') nor an API-format "
        f"workflow ({{id: {{class_type, inputs}}}}); in ComfyUI use Workflow > Save, or Export (API)"
    )


def _spec(info: dict, section: str, name: str) -> Tuple[Any, dict]:
    cfg = info["input"][section][name]
    typ = cfg[0] if isinstance(cfg, (list, tuple)) and cfg else cfg
    opts = cfg[1] if isinstance(cfg, (list, tuple)) and len(cfg) > 1 and isinstance(cfg[1], dict) else {}
    return typ, opts


def input_order(info: dict) -> List[Tuple[str, str]]:
    """(section, name) for required then optional inputs, in the node's declared order."""
    order = info.get("input_order") or {}
    out = []
    for section in ("required", "optional"):
        names = order.get(section) or list((info.get("input") or {}).get(section, {}) or {})
        out += [(section, n) for n in names if n in (info["input"].get(section) or {})]
    return out


def input_type(info: dict, name: str) -> Optional[Tuple[Any, dict]]:
    for section in ("required", "optional"):
        if name in (info.get("input", {}).get(section) or {}):
            return _spec(info, section, name)
    return None


def is_widget(typ: Any, opts: dict) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(typ, list) or typ in WIDGET_TYPES


def widget_slots(info: dict) -> List[Optional[str]]:
    """Names of the values in a UI node's ``widgets_values``, in order; None = a value that is not an
    input (the 'control_after_generate' combo after a seed, the upload button of an image combo)."""
    slots: List[Optional[str]] = []
    upload = False
    last_required = True
    for section, name in input_order(info):
        if section == "optional" and last_required:
            last_required = False
            if upload:
                slots.append(None)
                upload = False
        typ, opts = _spec(info, section, name)
        if not is_widget(typ, opts):
            continue
        slots.append(name)
        if opts.get("control_after_generate") or (typ == "INT" and name in ("seed", "noise_seed")):
            slots.append(None)
        if opts.get("image_upload") or opts.get("video_upload") or opts.get("animated_image_upload"):
            upload = True
    if upload:
        slots.append(None)
    return slots


def _links_table(wf: dict) -> Dict[int, Tuple[int, int, int, int, Any]]:
    table = {}
    for l in wf.get("links") or []:
        if isinstance(l, dict):
            table[int(l["id"])] = (l["origin_id"], l["origin_slot"], l["target_id"], l["target_slot"], l.get("type"))
        elif isinstance(l, (list, tuple)) and len(l) >= 5:
            table[int(l[0])] = (l[1], l[2], l[3], l[4], l[5] if len(l) > 5 else None)
    return table


def node_label(node_id: Any, class_type: str, title: Optional[str] = None) -> str:
    t = f" '{title}'" if title and title != class_type else ""
    return f"node {node_id} ({class_type}{t})"


def missing_node_types(types_by_node: Dict[str, Tuple[str, Optional[str], Optional[str]]], object_info: dict):
    """[(node_id, type, title, pack)] for nodes whose type the server does not have."""
    return [(nid, t, title, pack) for nid, (t, title, pack) in types_by_node.items() if t not in object_info]


def report_missing_types(missing) -> str:
    lines = ["the workflow uses node types that are not installed in this ComfyUI:"]
    for nid, t, title, pack in missing:
        where = f" (from the '{pack}' node pack)" if pack and pack != "comfy-core" else ""
        lines.append(f"  - {node_label(nid, t, title)}: type '{t}' is unknown{where}")
    lines.append(
        "install the node pack(s) that provide them into ComfyUI/custom_nodes (or update this pack), "
        "restart ComfyUI, and run again"
    )
    return "\n".join(lines)


SUBGRAPH_INPUT_NODE, SUBGRAPH_OUTPUT_NODE = -10, -20


def _link_rows(g: dict) -> List[tuple]:
    rows = []
    for l in g.get("links") or []:
        if isinstance(l, dict):
            rows.append(
                (
                    int(l["id"]),
                    l["origin_id"],
                    int(l["origin_slot"]),
                    l["target_id"],
                    int(l["target_slot"]),
                    l.get("type"),
                )
            )
        elif isinstance(l, (list, tuple)) and len(l) >= 5:
            rows.append((int(l[0]), l[1], int(l[2]), l[3], int(l[4]), l[5] if len(l) > 5 else None))
    return rows


def flatten_subgraphs(wf: dict) -> dict:
    """Expand the subgraphs of a frontend >= 1.24 workflow into one flat graph, as the editor does when it
    queues: a node inside subgraph instance 12 becomes node "12:3" (nested: "12:5:3"); links into a
    subgraph input or out of a subgraph output are rewired to the nodes on the other side. A subgraph
    input that is not connected but shown as a widget on the instance passes the instance's value (as a
    PrimitiveNode would). A workflow without subgraphs is returned unchanged."""
    defs: Dict[str, dict] = {}

    def collect(g):
        for sg in (g.get("definitions") or {}).get("subgraphs") or []:
            if isinstance(sg, dict) and sg.get("id"):
                defs[sg["id"]] = sg
                collect(sg)

    collect(wf)
    if not defs or not any(n.get("type") in defs for n in wf.get("nodes") or []):
        return wf
    out_nodes: List[dict] = []
    out_links: List[list] = []
    next_link = [1]

    def new_link(origin, target_key, target_slot, typ):
        lid = next_link[0]
        next_link[0] += 1
        out_links.append([lid, origin[0], origin[1], target_key, target_slot, typ])
        return lid

    def expand(g: dict, prefix: str, inputs_src: List[Any], depth: int = 0) -> Dict[int, Any]:
        """Copy graph g's nodes (ids prefixed) into out_nodes; returns {output slot: origin} for a subgraph."""
        if depth > 32:
            raise RunError("UI workflow: subgraphs nested more than 32 deep (a subgraph that contains itself?)")
        by_id = {n["id"]: n for n in g.get("nodes") or []}
        links = {r[0]: r for r in _link_rows(g)}
        inst_out: Dict[Any, Dict[int, Any]] = {}

        def instance_outputs(n):
            if n["id"] not in inst_out:
                mode = n.get("mode", 0)
                ins = n.get("inputs") or []
                if mode == MODE_MUTED:
                    inst_out[n["id"]] = {}
                elif mode == MODE_BYPASS:  # each output passes the first input of the same type
                    res = {}
                    for j, o in enumerate(n.get("outputs") or []):
                        for inp in ins:
                            if inp.get("link") is not None and inp.get("type") == o.get("type"):
                                res[j] = origin(inp["link"])
                                break
                    inst_out[n["id"]] = res
                else:
                    widget_values = n.get("widgets_values") if isinstance(n.get("widgets_values"), list) else []
                    srcs, w = [], 0
                    for inp in ins:
                        if inp.get("link") is not None:
                            srcs.append(origin(inp["link"]))
                        elif inp.get("widget") and w < len(widget_values):
                            srcs.append(("value", widget_values[w]))
                        else:
                            srcs.append(None)
                        if inp.get("widget"):
                            w += 1
                    inst_out[n["id"]] = expand(defs[n["type"]], f"{prefix}{n['id']}:", srcs, depth + 1)
            return inst_out[n["id"]]

        def origin(lid):
            """-> (node key, slot) | ("value", v) | None | ("missing", lid)."""
            l = links.get(int(lid))
            if l is None:
                return ("missing", lid)
            o, slot = l[1], l[2]
            if o == SUBGRAPH_INPUT_NODE:
                return inputs_src[slot] if 0 <= slot < len(inputs_src) else None
            src = by_id.get(o)
            if src is None:
                return ("missing", lid)
            if src.get("type") in defs:
                return instance_outputs(src).get(slot)
            return (f"{prefix}{o}", slot)

        for n in g.get("nodes") or []:
            if n.get("type") in defs:
                instance_outputs(n)
                continue
            key = f"{prefix}{n['id']}"
            copy = dict(n, id=key, inputs=[dict(i) for i in n.get("inputs") or []])
            for k, inp in enumerate(copy["inputs"]):
                if inp.get("link") is None:
                    continue
                r = origin(inp["link"])
                if r is None:
                    inp["link"] = None
                elif r[0] == "missing":
                    inp["link"] = -abs(int(r[1])) - 1_000_000  # stays missing: reported by ui_to_api
                elif r[0] == "value":
                    prim = f"{key}:value{k}"
                    out_nodes.append(
                        {
                            "id": prim,
                            "type": "PrimitiveNode",
                            "mode": 0,
                            "inputs": [],
                            "outputs": [{"name": "value", "type": inp.get("type"), "links": []}],
                            "widgets_values": [r[1]],
                            "title": f"{n.get('title') or n['type']}.{inp.get('name')}",
                        }
                    )
                    inp["link"] = new_link((prim, 0), key, k, inp.get("type"))
                else:
                    inp["link"] = new_link(r, key, k, inp.get("type"))
            out_nodes.append(copy)
        outputs = {}
        for l in links.values():
            if l[3] == SUBGRAPH_OUTPUT_NODE:
                src = by_id.get(l[1])
                if l[1] == SUBGRAPH_INPUT_NODE:
                    outputs[l[4]] = inputs_src[l[2]] if 0 <= l[2] < len(inputs_src) else None
                elif src is not None and src.get("type") in defs:
                    outputs[l[4]] = instance_outputs(src).get(l[2])
                elif src is not None:
                    outputs[l[4]] = (f"{prefix}{l[1]}", l[2])
        return outputs

    expand(wf, "", [])
    flat = {k: v for k, v in wf.items() if k not in ("nodes", "links", "definitions")}
    flat["nodes"], flat["links"] = out_nodes, out_links
    return flat


def ui_to_api(wf: dict, object_info: dict, primitives: Optional[dict] = None) -> dict:
    """Convert a UI-format workflow to an API-format prompt, as the editor's 'Queue' does.

    Supported: widgets_values mapped onto the widget inputs in the node's input order (a seed's extra
    'control_after_generate' value and an image combo's upload button value skipped), linked inputs
    (a link overrides the widget value), Reroute nodes, PrimitiveNode values, muted nodes (mode 2: left
    out, as the editor does) and bypassed nodes (mode 4: each output passes the first input of the same
    type), Note / MarkdownNote (ignored), subgraphs (expanded by :func:`flatten_subgraphs`; their nodes get
    ids like "12:3", as the editor sends them). Not supported (clear error): legacy group nodes.
    ``primitives`` (optional dict) is filled with {PrimitiveNode id and title: [(node id, input), ...]}
    so that ``--set`` can address a PrimitiveNode's value.
    """
    wf = flatten_subgraphs(wf)
    nodes = {}
    for n in wf.get("nodes") or []:
        if not isinstance(n, dict) or "id" not in n or "type" not in n:
            raise RunError("UI workflow: a node entry has no 'id' or 'type'")
        nodes[str(n["id"])] = n
    links = _links_table(wf)
    subgraph_ids = {s.get("id") for s in ((wf.get("definitions") or {}).get("subgraphs") or []) if isinstance(s, dict)}
    group_nodes = set(((wf.get("extra") or {}).get("groupNodes") or {}).keys())

    def pack_of(n):
        props = n.get("properties") or {}
        return props.get("cnr_id") or props.get("aux_id")

    for nid, n in nodes.items():
        t = n["type"]
        if t in subgraph_ids or (isinstance(t, str) and len(t) == 36 and t.count("-") == 4 and t not in object_info):
            raise RunError(
                f"UI workflow: {node_label(nid, t, n.get('title'))} is a subgraph whose definition is "
                f"not in the file ('definitions.subgraphs'); save the workflow again in ComfyUI"
            )
        if t in group_nodes or str(t).startswith("workflow>") or str(t).startswith("workflow/"):
            raise RunError(
                f"UI workflow: {node_label(nid, t, n.get('title'))} is a group node; visage-run does not "
                f"expand group nodes: in ComfyUI use Export (API) and run that file"
            )

    active = {
        nid: n
        for nid, n in nodes.items()
        if n["type"] not in VIRTUAL_NODES and n.get("mode", 0) not in (MODE_MUTED, MODE_BYPASS)
    }
    missing = missing_node_types(
        {nid: (n["type"], n.get("title"), pack_of(n)) for nid, n in active.items()}, object_info
    )
    if missing:
        raise RunError(report_missing_types(missing))

    def resolve(link_id, target_desc, depth=0):
        """-> ("link", [node_id, slot]) | ("value", v) | None (nothing connected)."""
        if depth > 64:
            raise RunError(f"UI workflow: {target_desc}: a loop of Reroute/bypassed nodes")
        link = links.get(int(link_id))
        if link is None:
            raise RunError(
                f"UI workflow: {target_desc} is connected by link {link_id}, but the workflow's 'links' "
                f"list has no link {link_id} (the file is damaged or was edited by hand); reconnect the "
                f"input in ComfyUI and save again"
            )
        origin_id, origin_slot = str(link[0]), int(link[1])
        src = nodes.get(origin_id)
        if src is None:
            raise RunError(
                f"UI workflow: {target_desc} is connected (link {link_id}) to node {origin_id}, which is "
                f"not in the workflow; reconnect the input in ComfyUI and save again"
            )
        mode = src.get("mode", 0)
        if src["type"] == "Reroute":
            ins = src.get("inputs") or []
            return resolve(ins[0]["link"], target_desc, depth + 1) if ins and ins[0].get("link") is not None else None
        if src["type"] == "PrimitiveNode":
            vals = src.get("widgets_values") or []
            return ("value", vals[0]) if vals else None
        if src["type"] in VIRTUAL_NODES or mode == MODE_MUTED:
            return None
        if mode == MODE_BYPASS:
            outs = src.get("outputs") or []
            out_type = outs[origin_slot].get("type") if origin_slot < len(outs) else link[4]
            ins = src.get("inputs") or []
            order = ([origin_slot] if origin_slot < len(ins) else []) + [i for i in range(len(ins)) if i != origin_slot]
            for i in order:
                inp = ins[i]
                if inp.get("link") is not None and (inp.get("type") == out_type or out_type in ("*", None)):
                    return resolve(inp["link"], target_desc, depth + 1)
            return None
        return ("link", [origin_id, origin_slot])

    prompt: Dict[str, dict] = {}
    for nid, n in active.items():
        t = n["type"]
        info = object_info[t]
        inputs: Dict[str, Any] = {}
        values = n.get("widgets_values")
        if isinstance(values, dict):  # some nodes save widgets by name
            for name, v in values.items():
                spec = input_type(info, name)
                if spec is not None and is_widget(*spec):
                    inputs[name] = v
        elif isinstance(values, list):
            slots = widget_slots(info)
            for name, v in zip(slots, values):
                if name is not None:
                    inputs[name] = v
            if len(values) < len(slots):
                # the workflow predates inputs added since: use their defaults, as the editor does
                for name in slots[len(values) :]:
                    if name is not None:
                        typ, opts = input_type(info, name)
                        if "default" in opts:
                            inputs[name] = opts["default"]
                        elif isinstance(typ, list) and typ:
                            inputs[name] = typ[0]
        for inp in n.get("inputs") or []:
            name = inp.get("name")
            if inp.get("link") is None or name is None:
                continue
            desc = f"{node_label(nid, t, n.get('title'))} input '{name}'"
            got = resolve(inp["link"], desc)
            if input_type(info, name) is None:
                raise RunError(
                    f"UI workflow: {desc} is connected, but {t} has no input named '{name}' in this "
                    f"ComfyUI (its inputs: {', '.join(n2 for _s, n2 in input_order(info))}); the node "
                    f"changed since the workflow was saved: reconnect it in ComfyUI"
                )
            if got is None:  # connected to nothing that runs (muted node, empty Reroute)
                if not is_widget(*input_type(info, name)):
                    inputs.pop(name, None)
                continue
            inputs[name] = got[1]
            if got[0] == "value" and primitives is not None:
                src = _primitive_source(inp["link"], links, nodes)
                if src is not None:
                    for key in {str(src["id"]), src.get("title")} - {None}:
                        primitives.setdefault(key, []).append((nid, name))
        entry = {"class_type": t, "inputs": inputs}
        entry["_meta"] = {"title": n.get("title") or info.get("display_name") or t}
        prompt[nid] = entry
    return prompt


def _primitive_source(link_id, links, nodes, depth=0):
    link = links.get(int(link_id))
    src = nodes.get(str(link[0])) if link else None
    if src is None or depth > 64:
        return None
    if src["type"] == "PrimitiveNode":
        return src
    if src["type"] == "Reroute" and (src.get("inputs") or [{}])[0].get("link") is not None:
        return _primitive_source(src["inputs"][0]["link"], links, nodes, depth + 1)
    return None


def check_api(prompt: dict, object_info: dict) -> None:
    missing = missing_node_types(
        {nid: (n.get("class_type"), (n.get("_meta") or {}).get("title"), None) for nid, n in prompt.items()},
        object_info,
    )
    if missing:
        raise RunError(report_missing_types(missing))
    for nid, n in prompt.items():
        for name, v in (n.get("inputs") or {}).items():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int) and str(v[0]) not in prompt:
                raise RunError(
                    f"{node_label(nid, n['class_type'])} input '{name}' is connected to node {v[0]}, "
                    f"which is not in the workflow"
                )


# ============================================================================ --set / --image


def find_node(prompt: dict, key: str) -> str:
    if key in prompt:
        return key
    by_title = [nid for nid, n in prompt.items() if (n.get("_meta") or {}).get("title") == key]
    if len(by_title) == 1:
        return by_title[0]
    by_type = [nid for nid, n in prompt.items() if n.get("class_type") == key]
    cands = by_title or by_type
    if len(cands) == 1:
        return cands[0]
    listing = ", ".join(
        f"{nid}={n.get('class_type')}"
        + (f" '{(n.get('_meta') or {}).get('title')}'" if (n.get("_meta") or {}).get("title") else "")
        for nid, n in sorted(prompt.items(), key=lambda kv: _id_key(kv[0]))
    )
    if cands:
        raise RunError(
            f"'{key}' matches several nodes ({', '.join(sorted(cands, key=_id_key))}); use the node id. "
            f"Nodes: {listing}"
        )
    raise RunError(f"no node '{key}' in the workflow (use a node id, title or type). Nodes: {listing}")


def _id_key(s):
    return (0, int(s), "") if str(s).isdigit() else (1, 0, str(s))


def coerce(value: str, typ: Any, opts: dict, where: str) -> Any:
    try:
        if typ == "INT":
            return int(value)
        if typ == "FLOAT":
            return float(value)
        if typ == "BOOLEAN":
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
    except ValueError:
        raise RunError(f"{where}: '{value}' is not a valid {typ}")
    if isinstance(typ, list) or typ == "COMBO":
        choices = typ if isinstance(typ, list) else opts.get("options") or []
        if choices and value not in [str(c) for c in choices] and not opts.get("image_upload"):
            shown = ", ".join(map(str, choices[:20])) + (" ..." if len(choices) > 20 else "")
            raise RunError(f"{where}: '{value}' is not one of the choices ({shown})")
        return value
    if typ == "STRING":
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def apply_set(prompt: dict, object_info: dict, item: str, primitives: Optional[dict] = None) -> None:
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise RunError(f"--set '{item}': expected NODE.input=VALUE (NODE: node id, title or type)")
    left, value = item.split("=", 1)
    key, name = left.rsplit(".", 1)
    if primitives and key not in prompt and key in primitives:
        # a PrimitiveNode (by id or title): set every input it feeds; its input name is 'value'
        if name != "value":
            raise RunError(f"--set {left}: '{key}' is a PrimitiveNode; set its value with {key}.value=...")
        for nid, target in primitives[key]:
            apply_set(prompt, object_info, f"{nid}.{target}={value}")
        return
    nid = find_node(prompt, key)
    node = prompt[nid]
    info = object_info.get(node["class_type"], {})
    spec = input_type(info, name)
    where = f"--set {left}: {node_label(nid, node['class_type'])}"
    if spec is None:
        names = [n for _s, n in input_order(info)] if info else sorted(node.get("inputs", {}))
        raise RunError(f"{where} has no input '{name}' (its inputs: {', '.join(names)})")
    node.setdefault("inputs", {})[name] = coerce(value, spec[0], spec[1], f"{where} input '{name}'")


def check_image_file(path: str) -> None:
    if not os.path.isfile(path):
        raise RunError(f"--image: file not found: {path}")
    try:
        from PIL import Image  # Pillow ships with ComfyUI
    except ImportError:  # pragma: no cover - fall back to the extension
        if os.path.splitext(path)[1].lower() not in IMAGE_EXTS:
            raise RunError(f"--image: {path} is not an image file (expected {', '.join(sorted(IMAGE_EXTS))})")
        return
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:
        raise RunError(
            f"--image: {path} is not an image Pillow can read ({type(e).__name__}: {e}); give a PNG, JPEG or WebP file"
        )


def parse_image_arg(item: str) -> Tuple[str, Optional[str], str]:
    if "=" not in item:
        raise RunError(f"--image '{item}': expected NODE=path/to/image.png or NODE.input=path")
    left, path = item.split("=", 1)
    key, name = left, None
    if "." in left:
        k, n = left.rsplit(".", 1)
        if n and not n.isdigit():
            key, name = k, n
    return key, name, os.path.expanduser(path)


def image_input_name(info: dict, node: dict) -> str:
    for section, name in input_order(info):
        typ, opts = _spec(info, section, name)
        if opts.get("image_upload"):
            return name
    return "image"


# ============================================================================ server


def http_json(url: str, payload: Any = None, timeout: float = 30.0) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
    return json.loads(body) if body else None


class Comfy:
    """A ComfyUI reached over HTTP: one this script started, or one given by --url."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.proc: Optional[subprocess.Popen] = None
        self.input_dir: Optional[str] = None
        self.log_path: Optional[str] = None
        self.tmp: Optional[str] = None

    # -------------------------------------------------------------- connect / start
    def ping(self, timeout: float = 5.0) -> dict:
        return http_json(self.url + "/system_stats", timeout=timeout)

    @classmethod
    def connect(cls, url: str) -> "Comfy":
        if "://" not in url:
            url = "http://" + url
        c = cls(url)
        try:
            c.ping()
        except (urllib.error.URLError, OSError, ValueError, json.JSONDecodeError) as e:
            reason = getattr(e, "reason", e)
            raise RunError(
                f"no ComfyUI is answering at {c.url} ({reason}); start ComfyUI there, check the "
                f"address and port, or leave out --url to let visage-run start one",
                EXIT_NO_COMFY,
            )
        return c

    @classmethod
    def start(
        cls,
        comfy_path: str,
        models: Optional[str],
        cpu: bool,
        extra_args: List[str],
        python: str,
        timeout: float,
        quiet: bool,
        die_with_parent: bool = False,
    ) -> "Comfy":
        """Start a ComfyUI from ``comfy_path`` on a free loopback port. ``die_with_parent``: on Linux the
        server gets SIGKILL when the process (thread) that started it dies (prctl PR_SET_PDEATHSIG), so a
        killed batch worker leaves no server behind."""
        main_py = os.path.join(comfy_path, "main.py")
        if not os.path.isfile(main_py):
            raise RunError(
                f"{comfy_path} is not a ComfyUI checkout (no main.py); give --comfyui PATH, set "
                f"COMFYUI_PATH, or use --url",
                EXIT_NO_COMFY,
            )
        exe = python if os.sep in python or (os.altsep and os.altsep in python) else shutil.which(python)
        if not exe or not os.path.isfile(exe) or not os.access(exe, os.X_OK):
            raise RunError(
                f"--python {python!r} is not an executable Python interpreter (no such file, a folder, or not "
                f"executable); give the interpreter of ComfyUI's environment, or leave --python out to use this one",
                EXIT_NO_COMFY,
            )
        port = free_port()
        tmp = tempfile.mkdtemp(prefix="visage_run_")
        args = [python, main_py, "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch"]
        if cpu:
            args.append("--cpu")
        installed = pack_installed_in(comfy_path)
        if installed:
            input_dir = None  # images go through /upload/image
            # a user's ComfyUI: its input/, output/, temp/ and user/ folders are never written to; the run's
            # files go to throw-away folders (unless --extra-arg names them)
            for d in ("input", "output", "temp", "user"):
                flag = f"--{d}-directory"
                if not any(a == flag or a.startswith(flag + "=") for a in extra_args):
                    os.makedirs(os.path.join(tmp, d), exist_ok=True)
                    args.append(f"{flag}={os.path.join(tmp, d)}")
            if models:
                cfg = os.path.join(tmp, "extra_model_paths.yaml")
                with open(cfg, "w", encoding="utf-8") as f:
                    f.write(extra_paths_yaml(models))
                args += ["--extra-model-paths-config", cfg]
        else:
            # the pack is not in this ComfyUI: a throw-away base directory whose custom_nodes links this repo
            base = os.path.join(tmp, "base")
            for d in ("custom_nodes", "input", "output", "temp", "user"):
                os.makedirs(os.path.join(base, d), exist_ok=True)
            os.symlink(REPO, os.path.join(base, "custom_nodes", "visage"))
            os.symlink(os.path.abspath(models or os.path.join(comfy_path, "models")), os.path.join(base, "models"))
            args += ["--base-directory", base]
            input_dir = os.path.join(base, "input")
        if _supports_flag(comfy_path, "--database-url"):
            args += ["--database-url", "sqlite:///:memory:"]
        args += list(extra_args)
        log_path = os.path.join(tmp, "comfyui.log")
        log = open(log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if models:
            env.setdefault("VISAGE_MODELS_DIR", os.path.abspath(models))
        if not quiet:
            say(f"starting ComfyUI from {comfy_path} on 127.0.0.1:{port}{' (--cpu)' if cpu else ''}; log: {log_path}")
        try:
            proc = subprocess.Popen(
                args,
                cwd=comfy_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent and sys.platform.startswith("linux") else None,
            )
        except OSError as e:  # --python names nothing runnable (missing, a folder, not executable)
            log.close()
            shutil.rmtree(tmp, ignore_errors=True)
            raise RunError(
                f"could not start ComfyUI with the Python {python!r} ({e.strerror or e}); give --python the "
                f"path of the interpreter of ComfyUI's environment, or leave it out to use this one",
                EXIT_NO_COMFY,
            )
        c = cls(f"http://127.0.0.1:{port}")
        c.proc, c.input_dir, c.log_path, c.tmp = proc, input_dir, log_path, tmp
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                c.stop(keep_tmp=True)
                raise RunError(
                    f"ComfyUI exited with code {proc.returncode} while starting; last lines of "
                    f"{log_path}:\n{c.log_tail()}",
                    EXIT_NO_COMFY,
                )
            try:
                c.ping(timeout=2)
                break
            except Exception:
                if time.time() - t0 > timeout:
                    c.stop(keep_tmp=True)
                    raise RunError(
                        f"ComfyUI did not answer within {timeout:.0f}s; last lines of {log_path}:\n{c.log_tail()}",
                        EXIT_NO_COMFY,
                    )
                time.sleep(0.5)
        pack = "visage" if not installed else os.path.basename(REPO)
        if any("IMPORT FAILED" in line and line.rstrip().endswith(pack) for line in c.log_tail(400000).splitlines()):
            say(f"warning: ComfyUI could not import this pack ({pack}); see {log_path}")
        return c

    def log_tail(self, n: int = 3000) -> str:
        try:
            with open(self.log_path or "", "r", errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def stop(self, keep_tmp: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            killpg = getattr(os, "killpg", None)  # POSIX: the server and any children it started
            try:
                killpg(self.proc.pid, signal.SIGTERM) if killpg else self.proc.terminate()
            except OSError:
                self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                try:
                    killpg(self.proc.pid, signal.SIGKILL) if killpg else self.proc.kill()
                except OSError:
                    self.proc.kill()
        if self.tmp and not keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -------------------------------------------------------------- api
    def object_info(self) -> dict:
        return http_json(self.url + "/object_info", timeout=300)

    def upload_image(self, path: str) -> str:
        """Put a local image into ComfyUI's input folder; returns the name to give LoadImage."""
        with open(path, "rb") as f:
            data = f.read()
        name = f"visage_{hashlib.sha256(data).hexdigest()[:10]}_{os.path.basename(path)}"
        if self.input_dir:  # a ComfyUI we started: copy the file
            shutil.copyfile(path, os.path.join(self.input_dir, name))
            return name
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'.encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="type"\r\n\r\ninput\r\n'.encode(),
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n"
            ).encode()
            + data
            + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        req = urllib.request.Request(
            self.url + "/upload/image",
            data=b"".join(parts),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                res = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RunError(f"ComfyUI refused the upload of {path}: HTTP {e.code} {e.read()[:300]!r}")
        return f"{res['subfolder']}/{res['name']}" if res.get("subfolder") else res["name"]

    def queue(self, prompt: dict, client_id: str) -> str:
        try:
            res = http_json(self.url + "/prompt", {"prompt": prompt, "client_id": client_id}, timeout=120)
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            try:
                parsed = json.loads(body)
            except json.JSONDecodeError:
                raise RunError(f"ComfyUI rejected the workflow: HTTP {e.code}: {body[:2000]}")
            raise RunError(format_validation_error(parsed, prompt))
        return res["prompt_id"]

    def queue_state(self, prompt_id: str) -> Optional[str]:
        """ "running", "pending" or None (not in the queue any more) for one of our prompts (GET /queue)."""
        q = http_json(self.url + "/queue", timeout=10) or {}
        for state, key in (("running", "queue_running"), ("pending", "queue_pending")):
            for item in q.get(key) or []:
                # item: [number, prompt_id, prompt, extra_data, outputs_to_execute]
                if isinstance(item, (list, tuple)) and len(item) > 1 and item[1] == prompt_id:
                    return state
        return None

    def cancel(self, prompt_id: str, wait: float = 10.0) -> bool:
        """Stop our own prompt on a shared server without touching anyone else's: a pending one is deleted
        from the queue (POST /queue {"delete": [id]}); a running one is interrupted with POST /interrupt
        {"prompt_id": id}, which ComfyUI (0.3.60+) honours only while that prompt is the running one (an
        older server would interrupt whatever runs, so it is only sent when /queue says ours runs).
        Returns True when the prompt has left the queue within ``wait`` seconds."""
        t_end = time.time() + wait
        while True:
            state = self.queue_state(prompt_id)
            if state is None:
                return True
            if state == "pending":
                http_json(self.url + "/queue", {"delete": [prompt_id]}, timeout=10)
            else:
                http_json(self.url + "/interrupt", {"prompt_id": prompt_id}, timeout=10)
            if time.time() > t_end:
                return False
            time.sleep(0.25)

    def history(self, prompt_id: str) -> Optional[dict]:
        h = http_json(self.url + f"/history/{prompt_id}", timeout=60)
        return (h or {}).get(prompt_id)

    def download(self, item: dict, dest_dir: str) -> str:
        q = urllib.parse.urlencode(
            {"filename": item["filename"], "subfolder": item.get("subfolder", ""), "type": item.get("type", "output")}
        )
        sub = item.get("subfolder") or ""
        dest = os.path.join(dest_dir, sub, item["filename"])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        stem, ext = os.path.splitext(dest)
        k = 1
        while os.path.exists(dest):
            dest = f"{stem}_{k}{ext}"
            k += 1
        with urllib.request.urlopen(self.url + "/view?" + q, timeout=300) as r, open(dest, "wb") as f:
            shutil.copyfileobj(r, f)
        return dest


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """prctl(PR_SET_PDEATHSIG, SIGKILL): the kernel kills this process when its parent dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except Exception:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _supports_flag(comfy_path: str, flag: str) -> bool:
    try:
        with open(os.path.join(comfy_path, "comfy", "cli_args.py"), "r", encoding="utf-8") as f:
            return f'"{flag}"' in f.read()
    except OSError:
        return False


def pack_installed_in(comfy_path: str) -> bool:
    """True when this repo (the folder or a link to it) is in the ComfyUI's custom_nodes."""
    cn = os.path.join(comfy_path, "custom_nodes")
    if not os.path.isdir(cn):
        return False
    me = os.path.realpath(REPO)
    for name in os.listdir(cn):
        if os.path.realpath(os.path.join(cn, name)) == me:
            return True
    return False


def extra_paths_yaml(models: str) -> str:
    models = os.path.abspath(models)
    return f"visage_run:\n    base_path: {json.dumps(models)}\n    is_default: true\n" + "".join(
        f"    {k}: {k}/\n"
        for k in (
            "checkpoints",
            "vae",
            "loras",
            "controlnet",
            "clip_vision",
            "upscale_models",
            "insightface",
            "facerestore_models",
            "instantid",
            "ipadapter",
            "liveportrait",
            "arc2face",
            "diffusion_models",
            "text_encoders",
        )
    )


def find_comfyui(explicit: Optional[str]) -> Optional[str]:
    cands = [explicit] if explicit else []
    if os.environ.get("COMFYUI_PATH"):
        cands.append(os.environ["COMFYUI_PATH"])
    parent = os.path.dirname(REPO)
    if os.path.basename(parent) == "custom_nodes":
        cands.append(os.path.dirname(parent))
    cands.append("/opt/ComfyUI")
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "main.py")):
            return os.path.abspath(c)
    if explicit:
        return os.path.abspath(explicit)  # Comfy.start says what is wrong with it
    return None


def have_gpu() -> bool:
    if sys.platform == "darwin":
        return True  # Apple MPS
    return os.path.exists("/dev/nvidia0") or bool(shutil.which("nvidia-smi")) or os.path.exists("/dev/kfd")


# ============================================================================ errors


def format_validation_error(body: dict, prompt: dict) -> str:
    err = body.get("error") or {}
    lines = []
    msg = err.get("message") if isinstance(err, dict) else str(err)
    node_errors = body.get("node_errors") or {}
    if not node_errors:
        details = err.get("details") if isinstance(err, dict) else ""
        lines.append(f"ComfyUI rejected the workflow: {msg}" + (f" ({details})" if details else ""))
    else:
        lines.append("ComfyUI rejected the workflow:")
    for nid, ne in sorted(node_errors.items(), key=lambda kv: _id_key(kv[0])):
        title = (prompt.get(nid, {}).get("_meta") or {}).get("title")
        label = node_label(nid, ne.get("class_type", prompt.get(nid, {}).get("class_type", "?")), title)
        for e in ne.get("errors") or []:
            inp = (e.get("extra_info") or {}).get("input_name")
            where = f" input '{inp}'" if inp else ""
            det = e.get("details") or ""
            lines.append(f"  - {label}{where}: {e.get('message')}" + (f": {det}" if det else ""))
    return "\n".join(lines)


def format_execution_error(m: dict, prompt: dict, verbose: bool) -> str:
    nid = str(m.get("node_id"))
    title = (prompt.get(nid, {}).get("_meta") or {}).get("title")
    label = node_label(nid, m.get("node_type") or prompt.get(nid, {}).get("class_type", "?"), title)
    etype = str(m.get("exception_type") or "error").rsplit(".", 1)[-1]  # ComfyUI gives module.path.Class
    text = f"{label} failed: {etype}: {str(m.get('exception_message', '')).strip()}"
    if verbose and m.get("traceback"):
        text += "\n" + "".join(m["traceback"])
    return text


# ============================================================================ progress


class Progress:
    """One line on stderr: nodes done / total, the running node, its own step progress."""

    def __init__(self, prompt: dict, quiet: bool):
        self.prompt = prompt
        self.total = len(prompt)
        self.done = set()
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.node: Optional[str] = None
        self.last_line = ""
        self.last_pct = -1

    def _name(self, nid):
        n = self.prompt.get(str(nid), {})
        return f"{(n.get('_meta') or {}).get('title') or n.get('class_type', '?')} #{nid}"

    def _emit(self, line: str, force: bool = False):
        if self.quiet or line == self.last_line:
            return
        self.last_line = line
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        elif force:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def cached(self, nodes):
        self.done.update(str(n) for n in nodes or [])

    def executing(self, nid):
        if self.node is not None:
            self.done.add(self.node)
        self.node = None if nid is None else str(nid)
        if self.node is not None:
            self.last_pct = -1
            self._emit(f"[{len(self.done) + 1}/{self.total}] {self._name(self.node)}", force=True)

    def step(self, nid, value, maximum):
        maximum = max(int(maximum or 1), 1)
        frac = min(max(float(value) / maximum, 0.0), 1.0)
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        pct = int(frac * 100)
        force = pct // 25 != self.last_pct // 25
        self.last_pct = pct
        self._emit(f"[{len(self.done) + 1}/{self.total}] {self._name(nid)} |{bar}| {value}/{maximum}", force=force)

    def finish(self):
        if self.tty and not self.quiet and self.last_line:
            sys.stderr.write("\n")
            sys.stderr.flush()


def follow(
    comfy: Comfy, prompt_id: str, client_id: str, prompt: dict, deadline: float, quiet: bool, verbose: bool, ws=None
) -> dict:
    """Wait for the prompt, showing progress; returns its history entry (check_status tells failure)."""
    prog = Progress(prompt, quiet)
    try:
        if ws is not None:
            _follow_ws(comfy, ws, prompt_id, prompt, deadline, prog, verbose)
        return _poll_history(comfy, prompt_id, deadline)
    finally:
        prog.finish()


def check_status(entry: dict, prompt: dict, verbose: bool) -> None:
    """Raise RunError(EXIT_FAILED) when the history entry says the run failed."""
    status = entry.get("status") or {}
    if status.get("status_str") == "error":
        for kind, m in status.get("messages") or []:
            if kind == "execution_error":
                raise RunError(format_execution_error(m, prompt, verbose), EXIT_FAILED)
            if kind == "execution_interrupted":
                raise RunError(
                    f"the run was interrupted at node {m.get('node_id')} ({m.get('node_type')})", EXIT_FAILED
                )
        raise RunError(f"the workflow failed: {json.dumps(status)[:2000]}", EXIT_FAILED)


def _follow_ws(comfy, ws, prompt_id, prompt, deadline, prog, verbose):
    import websocket  # websocket-client

    while True:
        if time.time() > deadline:
            raise RunError("timed out waiting for the workflow to finish (raise --timeout)", EXIT_TIMEOUT)
        if comfy.proc is not None and comfy.proc.poll() is not None:
            raise RunError(
                f"ComfyUI exited (code {comfy.proc.returncode}) while running the workflow; last lines "
                f"of its log:\n{comfy.log_tail()}",
                EXIT_FAILED,
            )
        try:
            msg = ws.recv()
        except websocket.WebSocketTimeoutException:
            continue
        except (websocket.WebSocketConnectionClosedException, OSError):
            return  # fall back to polling /history
        if not isinstance(msg, str):
            continue  # binary preview frames
        try:
            m = json.loads(msg)
        except json.JSONDecodeError:
            continue
        kind, data = m.get("type"), m.get("data") or {}
        if data.get("prompt_id") not in (None, prompt_id):
            continue
        if kind == "execution_cached":
            prog.cached(data.get("nodes"))
        elif kind == "executing":
            if data.get("node") is None and data.get("prompt_id") == prompt_id:
                prog.executing(None)
                return
            prog.executing(data.get("node"))
        elif kind == "progress":
            prog.step(data.get("node") or prog.node, data.get("value", 0), data.get("max", 1))
        elif kind in ("execution_success", "execution_error", "execution_interrupted"):
            return


def _poll_history(comfy, prompt_id, deadline) -> dict:
    while True:
        try:
            entry = comfy.history(prompt_id)
        except (urllib.error.URLError, OSError) as e:
            raise RunError(f"lost the connection to ComfyUI at {comfy.url} ({e})", EXIT_NO_COMFY)
        if entry:
            st = entry.get("status") or {}
            if st.get("completed") or st.get("status_str") in ("success", "error"):
                return entry
        if comfy.proc is not None and comfy.proc.poll() is not None:
            raise RunError(
                f"ComfyUI exited (code {comfy.proc.returncode}) while running the workflow; last lines "
                f"of its log:\n{comfy.log_tail()}",
                EXIT_FAILED,
            )
        if time.time() > deadline:
            raise RunError("timed out waiting for the workflow to finish (raise --timeout)", EXIT_TIMEOUT)
        time.sleep(0.3)


def collect_outputs(comfy: Comfy, entry: dict, prompt: dict, out_dir: str) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    files: List[str] = []
    summary = {}
    for nid, node_out in sorted((entry.get("outputs") or {}).items(), key=lambda kv: _id_key(kv[0])):
        node_files = []
        ui = {}
        for key, items in (node_out or {}).items():
            if isinstance(items, list) and items and all(isinstance(it, dict) and "filename" in it for it in items):
                for it in items:
                    node_files.append(comfy.download(it, out_dir))
            else:
                ui[key] = items
        files += node_files
        summary[nid] = {
            "class_type": prompt.get(nid, {}).get("class_type"),
            "title": (prompt.get(nid, {}).get("_meta") or {}).get("title"),
            "files": [os.path.relpath(p, out_dir) for p in node_files],
            "ui": ui,
        }
    with open(os.path.join(out_dir, "outputs.json"), "w", encoding="utf-8") as f:
        json.dump({"outputs": summary}, f, indent=1, default=str)
    return files


# ============================================================================ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="visage-run",
        description="Run a ComfyUI workflow (UI or API format) headless.",
        epilog="exit codes: 0 done, 1 failed while running, 2 bad input / rejected, 3 no ComfyUI, 4 timeout. "
        "Many jobs on many workers: visage-run batch JOBS.jsonl --workers N; a synthetic-identity dataset: "
        "visage-run dataset ... (both need the extra visage[batch]; docs/BATCH.md)",
    )
    p.add_argument("workflow", help="workflow JSON (UI format or API format)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--comfyui",
        metavar="PATH",
        help="start this ComfyUI checkout (default: $COMFYUI_PATH, the "
        "ComfyUI this pack is installed in, or /opt/ComfyUI)",
    )
    where.add_argument("--url", help="use the ComfyUI already running at this address (e.g. http://127.0.0.1:8188)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="NODE.input=VALUE",
        help="set an input (NODE = node id, title or type); repeatable",
    )
    p.add_argument(
        "--image",
        dest="images",
        action="append",
        default=[],
        metavar="NODE=FILE",
        help="send a local image and load it in NODE (NODE.input=FILE for another input); repeatable",
    )
    p.add_argument("--output", "-o", default="visage_outputs", help="folder for the outputs (default ./visage_outputs)")
    p.add_argument(
        "--models",
        metavar="DIR",
        default=os.environ.get("VISAGE_MODELS_DIR"),
        help="ComfyUI-style models/ folder for a started ComfyUI (default $VISAGE_MODELS_DIR, else "
        "the ComfyUI's own models/)",
    )
    p.add_argument("--cpu", action="store_true", help="start ComfyUI with --cpu (the default when no GPU is found)")
    p.add_argument("--gpu", action="store_true", help="do not add --cpu even when no GPU is detected")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run (default 3600)")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for ComfyUI to start")
    p.add_argument(
        "--extra-arg",
        dest="extra_args",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for ComfyUI's main.py (repeatable, e.g. --extra-arg=--lowvram)",
    )
    p.add_argument("--python", default=sys.executable, help="Python that runs ComfyUI (default: this one)")
    p.add_argument(
        "--object-info",
        metavar="FILE",
        help="use this saved /object_info instead of the server's "
        "(with --dry-run: convert and check without any ComfyUI)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="convert, apply --set and check, print the API prompt on stdout, do not run",
    )
    p.add_argument("--save-api", metavar="FILE", help="also write the API-format prompt that is sent")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.add_argument("--verbose", "-v", action="store_true", help="tracebacks of failed nodes")
    return p


def run(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    comfy: Optional[Comfy] = None
    queued: Optional[str] = None
    old_term = None
    try:
        # a service manager's SIGTERM cancels our prompt like Ctrl-C does (main thread only)
        old_term = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    except ValueError:
        old_term = None
    try:
        fmt, wf = load_workflow(args.workflow)
        images = [parse_image_arg(i) for i in args.images]
        for _k, _n, path in images:
            check_image_file(path)
        for s in args.sets:
            if "=" not in s or "." not in s.split("=", 1)[0]:
                raise RunError(f"--set '{s}': expected NODE.input=VALUE (NODE: node id, title or type)")

        object_info = None
        if args.object_info:
            with open(args.object_info, "r", encoding="utf-8") as f:
                object_info = json.load(f)
        if not (args.dry_run and object_info is not None):
            if args.url:
                comfy = Comfy.connect(args.url)
            else:
                path = find_comfyui(args.comfyui)
                if path is None:
                    raise RunError(
                        "no ComfyUI found: give --comfyui PATH, set COMFYUI_PATH, install this pack in "
                        "ComfyUI/custom_nodes, or use --url of a running ComfyUI",
                        EXIT_NO_COMFY,
                    )
                cpu = args.cpu or (not args.gpu and not have_gpu())
                comfy = Comfy.start(
                    path, args.models, cpu, args.extra_args, args.python, args.start_timeout, args.quiet
                )
            if object_info is None:
                object_info = comfy.object_info()

        primitives: dict = {}
        prompt = ui_to_api(wf, object_info, primitives) if fmt == "ui" else {k: dict(v) for k, v in wf.items()}
        check_api(prompt, object_info)
        for s in args.sets:
            apply_set(prompt, object_info, s, primitives)
        for key, name, path in images:
            nid = find_node(prompt, key)
            node = prompt[nid]
            name = name or image_input_name(object_info.get(node["class_type"], {}), node)
            node.setdefault("inputs", {})[name] = comfy.upload_image(path) if comfy else os.path.basename(path)

        if args.save_api:
            with open(args.save_api, "w", encoding="utf-8") as f:
                json.dump(prompt, f, indent=1)
        if args.dry_run:
            json.dump(prompt, sys.stdout, indent=1)
            sys.stdout.write("\n")
            return EXIT_OK

        client_id = uuid.uuid4().hex
        ws = _open_ws(comfy.url, client_id)
        try:
            prompt_id = comfy.queue(prompt, client_id)
            queued = prompt_id
            if not args.quiet:
                say(f"queued prompt {prompt_id} ({len(prompt)} nodes) on {comfy.url}")
            entry = follow(
                comfy, prompt_id, client_id, prompt, time.time() + args.timeout, args.quiet, args.verbose, ws
            )
        finally:
            if ws is not None:
                try:
                    ws.close()
                except Exception:
                    pass
        files = collect_outputs(comfy, entry, prompt, args.output)
        for p in files:
            sys.stdout.write(p + "\n")
        try:
            check_status(entry, prompt, args.verbose)
        except RunError:
            if files and not args.quiet:
                say(f"the outputs of the nodes that finished are in {args.output}")
            raise
        if not args.quiet:
            say(f"done; {len(files)} file(s) in {args.output} (and outputs.json)")
        return EXIT_OK
    except RunError as e:
        say(f"error: {e}")
        if e.code == EXIT_TIMEOUT:
            _cancel_ours(comfy, queued, args.quiet)
        return e.code
    except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
        where = comfy.url if comfy is not None else "ComfyUI"
        say(f"error: lost the connection to {where} ({getattr(e, 'reason', e)})")
        return EXIT_NO_COMFY
    except KeyboardInterrupt:
        say("interrupted")
        _cancel_ours(comfy, queued, args.quiet)
        return EXIT_FAILED
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if comfy is not None:
            comfy.stop()


def _cancel_ours(comfy: Optional["Comfy"], prompt_id: Optional[str], quiet: bool) -> None:
    """On a timeout or Ctrl-C, take our prompt off a server we do not own (one we started is stopped)."""
    if comfy is None or not prompt_id or comfy.proc is not None:
        return
    try:
        gone = comfy.cancel(prompt_id)
    except KeyboardInterrupt:
        gone = False
    except Exception as e:  # the server went away: nothing left to cancel there
        say(f"could not cancel prompt {prompt_id} on {comfy.url} ({getattr(e, 'reason', e)})")
        return
    if not quiet or not gone:
        say(
            f"cancelled prompt {prompt_id} on {comfy.url}"
            if gone
            else f"asked {comfy.url} to cancel prompt {prompt_id}; it is still in its queue"
        )


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def _open_ws(url: str, client_id: str):
    try:
        import websocket  # websocket-client; optional: without it progress is polled
    except ImportError:
        return None
    ws_url = (
        ("wss://" if url.startswith("https://") else "ws://") + url.split("://", 1)[1] + f"/ws?clientId={client_id}"
    )
    try:
        ws = websocket.create_connection(ws_url, timeout=10)
        ws.settimeout(1.0)
        return ws
    except Exception:
        return None


SUBCOMMANDS = ("batch", "dataset")


def main(argv: Optional[List[str]] = None) -> int:
    """The ``visage-run`` command: returns the exit code (0 done, 1 failed, 2 bad input, 3 no ComfyUI, 4 timeout).

    ``visage-run batch ...`` and ``visage-run dataset ...`` (docs/BATCH.md) need the optional ``ray``
    (``pip install visage[batch]``); it is imported only by them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS and not os.path.isfile(argv[0]):
        if argv[0] == "batch":
            from . import batch

            return batch.main(argv[1:])
        from . import dataset

        return dataset.main(argv[1:])
    return run(argv)

"""Write the UI-format twin of an API-format workflow, using a live ComfyUI's /object_info.

    python tools/make_ui_workflow.py workflows/api/face_analysis.json workflows/face_analysis.json \
        [--url http://127.0.0.1:8188 | --object-info info.json]

Widget values follow the node's INPUT_TYPES order (required, then optional); image-upload combos
get their extra "image" upload value and seed-like INTs their "control_after_generate" value, as
the ComfyUI editor saves them. Nodes are laid out left to right by depth.
"""
from __future__ import annotations

import argparse
import json
import urllib.request

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def is_widget(spec) -> bool:
    t = spec[0]
    return isinstance(t, list) or t in WIDGET_TYPES


def api_to_ui(api: dict, info: dict) -> dict:
    api = {k: v for k, v in api.items() if not k.startswith("_")}
    ids = {k: int(k) for k in api}
    depth = {}

    def d(k):
        if k not in depth:
            srcs = [v[0] for v in api[k]["inputs"].values() if isinstance(v, list) and len(v) == 2]
            depth[k] = 0 if not srcs else 1 + max(d(s) for s in srcs)
        return depth[k]

    for k in api:
        d(k)
    links, nodes = [], []
    out_links = {}
    link_id = 0
    rows = {}
    for k in sorted(api, key=lambda k: (depth[k], ids[k])):
        node = api[k]
        spec = info[node["class_type"]]
        order = list(spec["input"].get("required", {}).items()) + list(spec["input"].get("optional", {}).items())
        inputs, widgets = [], []
        for name, s in order:
            v = node["inputs"].get(name)
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                link_id += 1
                src = v[0]
                typ = info[api[src]["class_type"]]["output"][v[1]]
                entry = {"name": name, "type": typ if not isinstance(s[0], list) else "COMBO", "link": link_id}
                if is_widget(s):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
                links.append([link_id, ids[src], v[1], ids[k], len(inputs) - 1, typ])
                out_links.setdefault((src, v[1]), []).append(link_id)
                if is_widget(s):
                    widgets.append(None)
            elif is_widget(s):
                widgets.append(v)
                opts = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
                if opts.get("image_upload"):
                    widgets.append("image")
                if opts.get("control_after_generate") or (s[0] == "INT" and name in ("seed", "noise_seed")):
                    widgets.append("fixed")
            else:
                inputs.append({"name": name, "type": s[0], "link": None})
        row = rows.get(depth[k], 0)
        rows[depth[k]] = row + 1
        nodes.append({"id": ids[k], "type": node["class_type"], "pos": [60 + 360 * depth[k], 60 + 300 * row],
                      "size": [320, 260], "flags": {}, "order": 0, "mode": 0, "inputs": inputs, "outputs": [],
                      "properties": {"Node name for S&R": node["class_type"]},
                      "widgets_values": [w for w in widgets if w is not None],
                      "title": node.get("_meta", {}).get("title", node["class_type"])})
    for n in nodes:
        k = str(n["id"])
        spec = info[api[k]["class_type"]]
        names = spec.get("output_name", spec["output"])
        n["outputs"] = [{"name": names[i], "type": t, "links": out_links.get((k, i), []), "slot_index": i}
                        for i, t in enumerate(spec["output"])]
    for i, n in enumerate(sorted(nodes, key=lambda n: (depth[str(n["id"])], n["id"]))):
        n["order"] = i
    return {"last_node_id": max(ids.values()), "last_link_id": link_id, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("api")
    ap.add_argument("ui")
    ap.add_argument("--url", default="http://127.0.0.1:8188")
    ap.add_argument("--object-info")
    a = ap.parse_args(argv)
    if a.object_info:
        info = json.load(open(a.object_info))
    else:
        with urllib.request.urlopen(a.url + "/object_info", timeout=120) as r:
            info = json.loads(r.read())
    ui = api_to_ui(json.load(open(a.api)), info)
    with open(a.ui, "w") as f:
        json.dump(ui, f, indent=1)


if __name__ == "__main__":
    main()

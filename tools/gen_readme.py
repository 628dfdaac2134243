"""Regenerate README.md's generated sections (nodes with their ports, model files) from the live
node schemas and core/manifest.json.

    python tools/gen_readme.py --object-info /tmp/object_info.json     # or --url http://127.0.0.1:8188

Sections sit between ``<!-- BEGIN:nodes -->`` / ``<!-- END:nodes -->`` and
``<!-- BEGIN:models -->`` / ``<!-- END:models -->``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _type(spec):
    t = spec[0]
    return "COMBO" if isinstance(t, list) else t


def nodes_md(info: dict) -> str:
    by_cat = {}
    for name, n in info.items():
        if name.startswith("Visage"):
            by_cat.setdefault(n["category"], []).append((name, n))
    out = []
    for cat in sorted(by_cat):
        out.append(f"### {cat}\n")
        out.append("| node (ID) | inputs | outputs | what it does |")
        out.append("|---|---|---|---|")
        for name, n in sorted(by_cat[cat], key=lambda x: x[0]):
            ins = []
            for sec in ("required", "optional"):
                for k, spec in n["input"].get(sec, {}).items():
                    ins.append(f"`{k}`: {_type(spec)}" + ("" if sec == "required" else " (opt.)"))
            outs = [f"`{nm}`: {t}" for nm, t in zip(n.get("output_name", n["output"]), n["output"])]
            desc = (n.get("description") or "").replace("|", "\\|").replace("\n", " ")
            out.append(
                f"| **{n['display_name']}** (`{name}`) | {'<br>'.join(ins)} | {'<br>'.join(outs) or '—'} | {desc} |"
            )
        out.append("")
    return "\n".join(out)


def models_md() -> str:
    data = json.load(open(os.path.join(REPO, "core", "manifest.json")))
    out = ["| file | folder (under ComfyUI/models) | used by | licence | where users get it |", "|---|---|---|---|---|"]
    for e in data["models"]:
        out.append(f"| `{e['name']}` | `{e['folder']}` | {e.get('used_by', '')} | {e['licence']} | {e['source']} |")
    return "\n".join(out) + "\n"


def replace(text: str, key: str, body: str) -> str:
    pat = re.compile(rf"(<!-- BEGIN:{key} -->\n).*?(<!-- END:{key} -->)", re.S)
    if not pat.search(text):
        raise SystemExit(f"README.md has no BEGIN/END:{key} markers")
    return pat.sub(lambda m: m.group(1) + body + m.group(2), text)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--object-info")
    ap.add_argument("--url", default="http://127.0.0.1:8188")
    a = ap.parse_args(argv)
    if a.object_info:
        info = json.load(open(a.object_info))
    else:
        with urllib.request.urlopen(a.url + "/object_info", timeout=120) as r:
            info = json.loads(r.read())
    path = os.path.join(REPO, "README.md")
    text = open(path, encoding="utf-8").read()
    text = replace(text, "nodes", nodes_md(info))
    text = replace(text, "models", models_md())
    open(path, "w", encoding="utf-8").write(text)


if __name__ == "__main__":
    main()

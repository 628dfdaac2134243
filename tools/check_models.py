"""Check a ComfyUI models/ folder against Visage's manifest of model files.

    python tools/check_models.py /path/to/ComfyUI/models [--no-hash]
    python tools/check_models.py /path/to/ComfyUI/models --workflow workflows/api/face_analysis.json

Without ``--workflow``: one line per known file (ok / present / missing / size-mismatch / sha256-mismatch),
then a one-line summary; exit code 1 when a file is present but does not match its published size or sha256.

With ``--workflow`` (API or UI format): only what that workflow names (model files, face model packs);
one line per need, then a one-line summary; exit code 1 when anything it needs is missing or does not
match (a pack folder nested inside itself, as antelopev2.zip unpacks, is read there, as Visage does).
``python tools/get_models.py PACK_OR_FILE`` fetches what the manifest has a published location for.
"""

import argparse
import importlib.util
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_spec = importlib.util.find_spec("visage")
if not _spec or os.path.dirname(os.path.realpath(_spec.origin or "")) != os.path.realpath(REPO):
    # not installed, or another checkout installed: load this repository as the package `visage`
    _spec = importlib.util.spec_from_file_location(
        "visage", os.path.join(REPO, "__init__.py"), submodule_search_locations=[REPO]
    )
    sys.modules["visage"] = _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
from visage.core.paths import MODEL_EXTENSIONS, check_against_manifest, manifest, sha256_file  # noqa: E402

PACK_INPUTS = ("pack", "analysis_pack", "insightface_pack")


def workflow_values(path):
    """(input name, string value) of every node of an API- or UI-format workflow."""
    with open(path, "r", encoding="utf-8") as f:
        wf = json.load(f)
    out = []
    if isinstance(wf, dict) and "nodes" in wf:  # UI format: widget values only (names are not stored)
        for n in wf["nodes"]:
            vals = n.get("widgets_values") or []
            for v in vals.values() if isinstance(vals, dict) else vals:
                if isinstance(v, str):
                    out.append(("", v))
    else:
        for node in wf.values():
            if not isinstance(node, dict):  # "_comment" and other notes
                continue
            for k, v in (node.get("inputs") or {}).items():
                if isinstance(v, str):
                    out.append((k, v))
    return out


def needs_of(path):
    """What a workflow needs: [("pack", name)] and [("file", name)]."""
    entries = manifest()
    packs = {e["pack"] for e in entries if e.get("pack")}
    names = {e["name"] for e in entries}
    needs = []
    for key, v in workflow_values(path):
        if key in PACK_INPUTS or v in packs:
            need = ("pack", v)
        elif v in names or os.path.splitext(v)[1].lower() in MODEL_EXTENSIONS:
            need = ("file", v)
        else:
            continue
        if need not in needs:
            needs.append(need)
    return needs


def check_pack(models_dir, pack):
    base = os.path.join(models_dir, "insightface", "models", pack)
    want = [e for e in manifest() if e.get("pack") == pack and e["name"] != "arcface.onnx"]
    if not os.path.isdir(base):
        return "missing", f"no folder {base}"
    onnx = [f for f in os.listdir(base) if f.endswith(".onnx")]
    nested = os.path.join(base, pack)
    if not onnx and os.path.isdir(nested):  # antelopev2.zip unpacks that way; Visage's pack loader reads it
        base, onnx = nested, [f for f in os.listdir(nested) if f.endswith(".onnx")]
        if onnx:
            lacking = [e["name"] for e in want if e["name"] not in onnx]
            if want and lacking:
                return "incomplete", f"{base} lacks {', '.join(lacking)}"
            return "ok", f"{len(onnx)} .onnx files, nested in {base} (Visage reads them there)"
    if not onnx:
        return "missing", f"{base} holds no .onnx file"
    lacking = [e["name"] for e in want if e["name"] not in onnx]
    if want and lacking:
        return "incomplete", f"{base} lacks {', '.join(lacking)}"
    return "ok", f"{len(onnx)} .onnx files"


def check_file(models_dir, name):
    rows = [r for r in check_against_manifest(models_dir, hash_files=False) if r["name"] == name]
    for r in rows:  # hash only the files this workflow names
        e = next(e for e in manifest() if e["name"] == name and e["folder"] == r["folder"])
        if r["path"] and e.get("sha256") and r["status"] == "ok" and sha256_file(r["path"]) != e["sha256"]:
            r["status"], r["detail"] = "sha256-mismatch", "sha256 differs from the published file"
    if rows:
        good = [r for r in rows if r["status"] in ("ok", "present")]
        r = good[0] if good else rows[0]
        return r["status"], r.get("detail") or (r["path"] or f"not in {os.path.join(models_dir, r['folder'])}")
    for root, _dirs, files in os.walk(models_dir, followlinks=True):
        if name in files:
            return "present", os.path.join(root, name)
    return "missing", f"not anywhere under {models_dir} (not a Visage file: see the workflow's notes)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models_dir")
    ap.add_argument("--no-hash", action="store_true", help="skip sha256 (faster)")
    ap.add_argument("--workflow", help="check only what this workflow needs; exit 1 when something is missing")
    a = ap.parse_args(argv)
    if a.workflow:
        bad, needs = [], needs_of(a.workflow)
        for kind, name in needs:
            status, detail = check_pack(a.models_dir, name) if kind == "pack" else check_file(a.models_dir, name)
            sys.stdout.write(f"{status:16} {kind} {name}  ({detail})\n")
            if status not in ("ok", "present"):
                bad.append(name)
        wf = os.path.basename(a.workflow)
        if bad:
            known = {e["name"] for e in manifest() if e.get("url")} | {e["pack"] for e in manifest() if e.get("pack")}
            fetchable = [b for b in bad if b in known]
            hint = f" (fetch: python tools/get_models.py {' '.join(fetchable)})" if fetchable else ""
            sys.stdout.write(
                f"{wf}: {len(bad)} of {len(needs)} needed model files/packs missing or wrong: {', '.join(bad)}{hint}\n"
            )
            return 1
        sys.stdout.write(f"{wf}: all {len(needs)} needed model files/packs in place\n")
        return 0
    rows = check_against_manifest(a.models_dir, hash_files=not a.no_hash)
    bad = 0
    for r in rows:
        detail = f"  ({r['detail']})" if r.get("detail") else ""
        sys.stdout.write(f"{r['status']:16} {r['folder']}/{r['name']}{detail}\n")
        bad += r["status"].endswith("mismatch")
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    sys.stdout.write(
        f"{len(rows)} known files: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + ("" if not bad else " (mismatches: exit 1)")
        + "\n"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

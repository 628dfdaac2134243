"""Where model files live, and the manifest of every model file Visage knows.

Pure Python: the folder lists come from a *resolver* that the ComfyUI glue sets to
``folder_paths.get_folder_paths`` (so ``extra_model_paths.yaml`` works); outside ComfyUI it reads
``VISAGE_MODELS_DIR`` (a ComfyUI-style ``models/`` folder) or folders registered by tests.

Visage never downloads: :func:`find_file` raises :class:`ModelFileMissing` naming the file, the
folders searched and where users get the file (from the manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Dict, Iterable, List, Optional

from .errors import ModelFileMissing

# Visage's model folders: ComfyUI folder name -> default sub-folder of models/
FOLDERS: Dict[str, str] = {
    "insightface": "insightface",  # insightface packs live in models/insightface/models/<pack>/
    "insightface_packs": "insightface/models",
    "facerestore_models": "facerestore_models",
    "facexlib": "facexlib",  # facexlib's weights (recognition_arcface_ir_se50.pth), as other face nodes keep them
    "instantid": "instantid",
    "ipadapter": "ipadapter",
    "liveportrait": "liveportrait",
    "arc2face": "arc2face",
    "reswapper": "reswapper",
    "hyperswap": "hyperswap",
    "reactor_faces": "reactor/faces",
    "visage_embeds": "visage/embeds",
    "visage_faces": "visage/faces",
}

MODEL_EXTENSIONS = {".onnx", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".sft"}

_MANIFEST_PATH = os.path.join(os.path.dirname(__file__), "manifest.json")

_resolver: Optional[Callable[[str], List[str]]] = None
_extra: Dict[str, List[str]] = {}


def set_resolver(fn: Optional[Callable[[str], List[str]]]) -> None:
    """Install the folder resolver (the ComfyUI glue passes a wrapper of folder_paths)."""
    global _resolver
    _resolver = fn


def add_folder(folder_name: str, path: str) -> None:
    """Register an extra search folder (tests, scripts)."""
    lst = _extra.setdefault(folder_name, [])
    if path not in lst:
        lst.insert(0, path)


def clear_extra_folders() -> None:
    _extra.clear()


def folders(folder_name: str) -> List[str]:
    """All folders searched for ``folder_name``, in order."""
    out: List[str] = list(_extra.get(folder_name, []))
    if _resolver is not None:
        try:
            out += [p for p in _resolver(folder_name) if p not in out]
        except KeyError:
            pass
    env = os.environ.get("VISAGE_MODELS_DIR")
    if env and folder_name in FOLDERS:
        p = os.path.join(env, FOLDERS[folder_name])
        if p not in out:
            out.append(p)
    return out


def list_files(folder_name: str, extensions: Iterable[str] = MODEL_EXTENSIONS) -> List[str]:
    """Relative names of model files in every folder of ``folder_name`` (recursive, sorted)."""
    exts = {e.lower() for e in extensions}
    names = set()
    for base in folders(folder_name):
        if not os.path.isdir(base):
            continue
        for root, _dirs, files in os.walk(base, followlinks=True):
            for f in files:
                if os.path.splitext(f)[1].lower() in exts:
                    names.add(os.path.relpath(os.path.join(root, f), base).replace(os.sep, "/"))
    return sorted(names)


def find_file(folder_name: str, name: str) -> str:
    """Full path of ``name`` in ``folder_name``'s folders, or a ModelFileMissing error."""
    if os.path.isabs(name) and os.path.isfile(name):
        return name
    rel = os.path.normpath(name).lstrip(os.sep)
    searched = folders(folder_name)
    for base in searched:
        p = os.path.join(base, rel)
        if os.path.isfile(p):
            return p
    raise ModelFileMissing(name, searched, source=source_for(name), folder_name=folder_name)


# ----------------------------------------------------------------------------------- manifest


def manifest() -> List[dict]:
    with open(_MANIFEST_PATH, "r", encoding="utf-8") as f:
        return json.load(f)["models"]


def source_for(name: str) -> Optional[str]:
    base = os.path.basename(name)
    for entry in manifest():
        if entry["name"] == base or entry.get("pack") and base == entry.get("pack"):
            return entry.get("source")
    return None


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def check_against_manifest(models_dir: str, hash_files: bool = True) -> List[dict]:
    """Check a user's ``models/`` folder against the manifest.

    Returns one row per manifest entry: ``status`` is ``ok``, ``missing``, ``size-mismatch``,
    ``sha256-mismatch`` or ``present`` (found, no published size/hash to compare).
    """
    rows = []
    for entry in manifest():
        sub = entry["folder"]
        candidates = [os.path.join(models_dir, sub, entry["name"])]
        if entry.get("pack"):
            # insightface packs: also the nested layout antelopev2/antelopev2/
            d = os.path.join(models_dir, sub)
            candidates.append(os.path.join(d, entry["pack"], entry["name"]))
        path = next((c for c in candidates if os.path.isfile(c)), None)
        row = {"name": entry["name"], "folder": sub, "path": path}
        if path is None:
            row["status"] = "missing"
        else:
            size = os.path.getsize(path)
            if entry.get("size") and size != entry["size"]:
                row["status"] = "size-mismatch"
                row["detail"] = f"{size} bytes, manifest says {entry['size']}"
            elif entry.get("sha256") and hash_files:
                digest = sha256_file(path)
                row["status"] = "ok" if digest == entry["sha256"] else "sha256-mismatch"
                if row["status"] != "ok":
                    row["detail"] = f"sha256 {digest}"
            else:
                row["status"] = "present" if not entry.get("sha256") else "ok"
        rows.append(row)
    return rows

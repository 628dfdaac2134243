"""Where model files live, and the manifest of every model file Visage knows.

Pure Python: the folder lists come from a *resolver* that the ComfyUI glue sets to
``folder_paths.get_folder_paths`` (so ``extra_model_paths.yaml`` works); outside ComfyUI it reads
``VISAGE_MODELS_DIR`` (a ComfyUI-style ``models/`` folder) or folders registered by tests.

Visage never downloads: :func:`find_file` raises :class:`ModelFileMissing` naming the file, the
folders searched and where users get the file (from the manifest).

Every file or folder name a node receives (a list choice, but also whatever an API client posts to
``/prompt``) goes through :func:`check_name` before the file system is touched: a name must stay
lexically inside its folder (relative, no ``..``, no NUL or control character, at most
:data:`MAX_NAME_CHARS` characters). :func:`find_file` / :func:`find_dir` / :func:`find_in` read with it;
:func:`write_path` also checks, by real path, that a write lands inside its folder (a link in the folder
that points out of it is refused). Symlinked model files and folders that users set up inside their
folders keep working for reading: only the name is checked, not where a link points.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from .errors import ModelFileMissing, VisageError

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
    "pulid": "pulid",  # PuLID files (pulid_flux_v0.9.1.safetensors, pulid_v1.bin, pulid_v1.1.safetensors)
    "eva_clip": "clip_vision",  # EVA02_CLIP_L_336_psz14_s6B.pt (PuLID's EVA-CLIP), beside ComfyUI's CLIP vision models
    "face_parsing": "face_parsing",  # face parsers and occluders: bisenet_resnet_18/34.onnx, xseg_1/2/3.onnx
    "infiniteyou": "infiniteyou",  # InfiniteYou's image_proj_model.bin (InfuseNet goes to models/controlnet)
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


MAX_NAME_CHARS = 255  # a whole relative name; file systems limit one component to 255 bytes
_DRIVE = re.compile(r"^[A-Za-z]:")


class NameRefused(VisageError):
    """A file or folder name that would leave its folder (or is no name at all). Says why, never what is
    (or is not) at the place the name points to."""

    def __init__(self, what: str, reason: str):
        self.reason = reason
        super().__init__(
            f"The {what} was refused: {reason}",
            expected=f"the name of a file inside its folder, as the node's list shows it (relative, no '..', "
            f"no absolute path, no NUL or control character, 1 to {MAX_NAME_CHARS} characters)",
            got=reason,
            fix="choose an entry of the node's list (put the file into the folder first; links that you place "
            "inside the folder work)",
        )


def check_name(name, what: str = "file name") -> str:
    """``name`` as a clean relative name ('/' separators, no '.' or empty parts), or :class:`NameRefused`.

    Purely lexical: the file system is not touched, so a refusal tells nothing about other paths.
    Backslashes count as separators (a Windows client's ``..\\x`` is refused everywhere)."""
    if not isinstance(name, str):
        raise NameRefused(what, f"it is a {type(name).__name__}, not text")
    if not name.strip():
        raise NameRefused(what, "it is empty")
    if len(name) > MAX_NAME_CHARS:
        raise NameRefused(what, f"it has {len(name)} characters (at most {MAX_NAME_CHARS})")
    if "\x00" in name:
        raise NameRefused(what, "it holds a NUL character")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise NameRefused(what, "it holds a control character")
    s = name.replace("\\", "/")
    if s.startswith("/") or os.path.isabs(name) or _DRIVE.match(s):
        raise NameRefused(what, "it is an absolute path")
    parts = [p for p in s.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise NameRefused(what, "it climbs out of its folder ('..')")
    if not parts:
        raise NameRefused(what, "it names the folder itself, not a file in it")
    return "/".join(parts)


def join_inside(base: str, name: str, what: str = "file name") -> str:
    """``base`` joined with a checked ``name`` (lexically inside ``base``)."""
    return os.path.join(base, *check_name(name, what).split("/"))


def find_in(bases: Sequence[str], name: str, kind: str = "file", what: str = "file name") -> Optional[str]:
    """The first ``base/name`` that is a file (``kind='file'``) or folder (``'dir'``), else None."""
    rel = check_name(name, what).split("/")
    test = os.path.isdir if kind == "dir" else os.path.isfile
    for base in bases:
        p = os.path.join(base, *rel)
        if test(p):
            return p
    return None


def find_file(folder_name: str, name: str) -> str:
    """Full path of ``name`` in ``folder_name``'s folders, or a ModelFileMissing error.

    ``name`` is relative to the folder (absolute paths and '..' are refused: :func:`check_name`)."""
    searched = folders(folder_name)
    p = find_in(searched, name, "file", f"file name for '{folder_name}'")
    if p is not None:
        return p
    raise ModelFileMissing(name, searched, source=source_for(name), folder_name=folder_name)


def find_dir(folder_name: str, name: str, source: Optional[str] = None, label: Optional[str] = None) -> str:
    """Full path of the folder ``name`` in ``folder_name``'s folders (a model pack), or ModelFileMissing
    (``label``: the ComfyUI folder name users know, when it differs)."""
    searched = folders(folder_name)
    p = find_in(searched, name, "dir", f"folder name for '{label or folder_name}'")
    if p is not None:
        return p
    raise ModelFileMissing(name, searched, source=source or source_for(name), folder_name=label or folder_name)


def write_path(base: str, filename: str, what: str = "file name") -> str:
    """Where to write ``filename`` in ``base``: lexically inside it and, by real path, still inside it.

    A link in ``base`` (or a dangling one) pointing out of the folder is refused, as is a write through
    it; ``base`` itself may be a link the user set up (its real path is the reference)."""
    p = join_inside(base, filename, what)
    real_base = os.path.realpath(base)
    real = os.path.realpath(p)
    if real == real_base or os.path.commonpath([real_base, real]) != real_base:
        raise NameRefused(what, "the file in the folder is a link that points out of the folder")
    return p


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

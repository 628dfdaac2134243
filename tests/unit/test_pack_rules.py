"""Rules every family follows, checked over the whole source tree (see docs/DESIGN.md)."""

import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMFY_MODULES = ("comfy", "folder_paths", "server", "comfy_execution", "comfy_api", "nodes", "execution")
GLUE_FILES = {"node.py", "comfy_glue.py"}


def source_files(*roots):
    for root in roots:
        for dirpath, _dirs, files in os.walk(os.path.join(REPO, root)):
            if "__pycache__" in dirpath:
                continue
            for f in files:
                if f.endswith(".py"):
                    yield os.path.join(dirpath, f)


def imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name, 0
        elif isinstance(node, ast.ImportFrom):
            yield node, node.module or "", node.level


def test_math_files_import_no_comfyui():
    offenders = []
    for p in source_files("core", "nodes", "kernels", "runner"):
        if os.path.basename(p) in GLUE_FILES:
            continue
        for node, mod, level in imports(p):
            if level == 0 and mod.split(".")[0] in COMFY_MODULES:
                offenders.append(f"{os.path.relpath(p, REPO)}:{node.lineno} imports {mod}")
    assert not offenders, "math files must not import ComfyUI:\n" + "\n".join(offenders)


def test_internal_imports_are_relative():
    offenders = []
    for p in list(source_files("core", "nodes", "kernels")) + [os.path.join(REPO, "__init__.py")]:
        for node, mod, level in imports(p):
            if level == 0 and mod.split(".")[0] in ("visage", "kernels"):
                offenders.append(f"{os.path.relpath(p, REPO)}:{node.lineno} imports {mod} absolutely")
    assert not offenders, "\n".join(offenders)


def test_no_print_and_safe_torch_load():
    offenders = []
    for p in list(source_files("core", "nodes", "kernels")) + [os.path.join(REPO, "__init__.py")]:
        tree = ast.parse(open(p, encoding="utf-8").read(), p)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fn = node.func
                if isinstance(fn, ast.Name) and fn.id == "print":
                    offenders.append(f"{os.path.relpath(p, REPO)}:{node.lineno} print()")
                if (
                    isinstance(fn, ast.Attribute)
                    and fn.attr == "load"
                    and isinstance(fn.value, ast.Name)
                    and fn.value.id == "torch"
                ):
                    ok = any(
                        k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                        for k in node.keywords
                    )
                    if not ok:
                        offenders.append(
                            f"{os.path.relpath(p, REPO)}:{node.lineno} torch.load without weights_only=True"
                        )
    assert not offenders, "\n".join(offenders)


def test_no_runtime_downloads():
    pat = re.compile(r"hf_hub_download|snapshot_download|urlretrieve|requests\.get\(|load_file_from_url|download_url")
    offenders = []
    for p in list(source_files("core", "nodes", "kernels")) + [os.path.join(REPO, "__init__.py")]:
        for i, line in enumerate(open(p, encoding="utf-8"), 1):
            if pat.search(line):
                offenders.append(f"{os.path.relpath(p, REPO)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def _node_modules():
    for p in source_files("nodes"):
        if os.path.basename(p) == "node.py" or p.endswith("_node.py"):  # a family's extra node module
            yield p


def test_node_ids_are_visage_prefixed():
    """Every node ID in every family's NODE_CLASS_MAPPINGS starts with 'Visage' (IDs are permanent)."""
    checked = 0
    for p in _node_modules():
        src = open(p, encoding="utf-8").read()
        tree = ast.parse(src)
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", "") == "NODE_CLASS_MAPPINGS" for t in node.targets
            ):
                for k in node.value.keys:
                    assert k.value.startswith("Visage"), f"{p}: node id {k.value} must start with 'Visage'"
                    checked += 1
    assert checked > 0


def _resolve(path, mod, level):
    """Repo-relative dotted module an import in ``path`` names (relative imports resolved)."""
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    parts = rel.split(".")
    parts = parts[:-1]  # the package the file sits in (a package's __init__ sits in itself)
    if level == 0:
        return mod
    base = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join(base + ([mod] if mod else []))


def test_layers_point_down():
    """core imports neither kernels nor nodes (nor ComfyUI); kernels imports core only."""
    offenders = []
    for root, forbidden in (("core", ("kernels", "nodes")), ("kernels", ("nodes",))):
        for p in source_files(root):
            for node, mod, level in imports(p):
                target = _resolve(p, mod, level)
                names = [a.name for a in getattr(node, "names", [])]
                heads = {target.split(".")[0]} if target else set(names)
                if level and heads & set(forbidden):
                    offenders.append(f"{os.path.relpath(p, REPO)}:{node.lineno} imports {target or names}")
                if level == 0 and mod.split(".")[0] in COMFY_MODULES:
                    offenders.append(f"{os.path.relpath(p, REPO)}:{node.lineno} imports {mod}")
    assert not offenders, "an import points up the layers:\n" + "\n".join(offenders)


def test_display_names_in_one_style():
    """Node names as the library shows them: 'Verb Thing' ('Load Face Analyzer', 'Apply InstantID'), no
    pack prefix or suffix (the category Visage/... and ComfyUI's badge say where a node comes from)."""
    names = {}
    for p in _node_modules():
        tree = ast.parse(open(p, encoding="utf-8").read(), p)
        for node in tree.body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "NODE_DISPLAY_NAME_MAPPINGS":
                names.update(ast.literal_eval(node.value))
    assert len(names) >= 20, names
    bad = {k: v for k, v in names.items() if v.startswith("Visage") or "(Visage)" in v or not k.startswith("Visage")}
    assert not bad, bad


def test_no_insightface_at_run_time():
    """insightface is the tests' reference, not a run-time need: no pack file imports it (not even lazily);
    tests/comfy/test_no_insightface.py runs the pack with it unimportable."""
    offenders = []
    for p in list(source_files("core", "nodes", "kernels", "runner")) + [os.path.join(REPO, "__init__.py")]:
        for node, mod, level in imports(p):
            if level == 0 and mod.split(".")[0] == "insightface":
                offenders.append(f"{os.path.relpath(p, REPO)}:{node.lineno} imports {mod}")
    assert not offenders, "\n".join(offenders)


def test_every_package_is_installed():
    """pyproject lists its packages by hand: a new package folder missing there would not be installed."""
    import tomllib

    listed = set(tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["tool"]["setuptools"]["packages"])
    found = set()
    for root in ("core", "kernels", "nodes", "runner"):
        for dirpath, _dirs, files in os.walk(os.path.join(REPO, root)):
            if "__init__.py" in files and "__pycache__" not in dirpath:
                found.add("visage." + os.path.relpath(dirpath, REPO).replace(os.sep, "."))
    assert found - listed == set(), f"add to [tool.setuptools] packages: {sorted(found - listed)}"

"""The root package: importing it registers nothing; ComfyUI's first look at NODE_CLASS_MAPPINGS loads the
families (under any folder name); a missing dependency disables only the family needing it."""

import os
import subprocess
import sys
import textwrap

import comfy_harness as ch


def _run(comfy_path, body):
    script = (
        textwrap.dedent(f"""
        import sys, importlib.util, importlib.abc, logging, io
        sys.path.insert(0, {comfy_path!r})
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        log = io.StringIO()
        logging.basicConfig(stream=log, level=logging.INFO)
    """)
        + textwrap.dedent(body)
        + textwrap.dedent(f"""
        spec = importlib.util.spec_from_file_location("any_folder_name", {ch.REPO + "/__init__.py"!r},
                                                      submodule_search_locations=[{ch.REPO!r}])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["any_folder_name"] = mod
        spec.loader.exec_module(mod)
        # importing registered nothing: no family module, no mapping yet (the module __getattr__ builds them)
        print("LAZY", "NODE_CLASS_MAPPINGS" not in vars(mod) and not any(".nodes." in m for m in sys.modules))
        print("NODES", sorted(mod.NODE_CLASS_MAPPINGS))
        print("DISABLED", mod.DISABLED_FAMILIES)
        print("WEB", mod.WEB_DIRECTORY)
        print("LOG", log.getvalue().replace("\\n", " | "))
    """)
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_pack_loads_under_any_folder_name(comfy_path):
    out = _run(comfy_path, "")
    assert "LAZY True" in out
    assert "VisageAnalyzeFaces" in out and "DISABLED {}" in out and "WEB ./web" in out


def test_comfyui_loader_sees_the_lazy_mappings(comfy_path, tmp_path):
    """ComfyUI 0.3.64's own nodes.load_custom_node (hasattr/getattr on the module) registers every node of
    the pack from a folder with an odd name, and the web folder; `import visage` alone registers nothing."""
    folder = tmp_path / "custom_nodes" / "Visage-Pack.v2"
    folder.parent.mkdir()
    os.symlink(ch.REPO, folder)
    script = textwrap.dedent(f"""
        import asyncio, sys
        import visage
        assert "NODE_CLASS_MAPPINGS" not in vars(visage) and "comfy" not in sys.modules
        sys.path.insert(0, {comfy_path!r})
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import nodes
        assert asyncio.run(nodes.load_custom_node({str(folder)!r})) is True
        mod = sys.modules[{str(folder).replace(".", "_x_")!r}]
        ours = sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("Visage"))
        assert ours == sorted(mod.NODE_CLASS_MAPPINGS), ours
        assert all(k in nodes.NODE_DISPLAY_NAME_MAPPINGS for k in ours)
        assert mod.DISABLED_FAMILIES == {{}}, mod.DISABLED_FAMILIES
        print("WEBDIR", nodes.EXTENSION_WEB_DIRS.get("Visage-Pack.v2"))
        print("COUNT", len(ours))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"WEBDIR {folder}/web" in r.stdout
    assert int(r.stdout.split("COUNT ")[1].split()[0]) >= 20


def test_missing_dependency_disables_only_its_family(comfy_path):
    blocker = """
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "safetensors" or name.startswith("safetensors."):
                    raise ModuleNotFoundError(f"No module named '{name}'", name=name)
                return None
        sys.meta_path.insert(0, Block())
    """
    out = _run(comfy_path, blocker)
    assert "'face': 'missing dependency: safetensors'" in out
    assert "VisageAnalyzeFaces" not in out
    assert "missing Python package 'safetensors'" in out  # the logged reason

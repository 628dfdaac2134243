"""The root package: registers families; a missing dependency disables only the family needing it."""

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
    assert "VisageAnalyzeFaces" in out and "DISABLED {}" in out and "WEB ./web" in out


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

"""Visage — identity-preserving face work for ComfyUI.

ComfyUI imports this file from ``custom_nodes/<any folder name>/``. Each node family lives in
``nodes/<family>/node.py`` and exports its own ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS``.
A family whose optional dependency is missing (or that fails to import) is left out with a logged
reason; the rest of the pack loads. All imports are relative, so the folder works under any name.

Importing this package registers nothing and imports no ComfyUI: the families are loaded on the first
access to ``NODE_CLASS_MAPPINGS``, ``NODE_DISPLAY_NAME_MAPPINGS`` or ``DISABLED_FAMILIES`` (a module
``__getattr__``, PEP 562), which is what ComfyUI's loader does right after importing the pack
(``hasattr``/``getattr`` on the module). So ``import visage.core.types`` (the editable install, see
``pyproject.toml``) stays plain Python, usable by the tests, ``bench/``, ``tools/`` and ``visage-run``.
"""

import importlib
import logging

log = logging.getLogger("visage")

# Order is the order of the node library. New families append here. An entry is a folder of nodes/
# (its node.py) or, with a dot, one node module of a family ("pulid.sdxl_node").
FAMILIES = ("face", "swap", "adapters", "expression", "utils", "pulid", "pulid.sdxl_node", "infiniteyou", "detailer")

WEB_DIRECTORY = "./web"

_LAZY = ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "DISABLED_FAMILIES")


def _load_families():
    for family in FAMILIES:
        try:
            mod = importlib.import_module(f".nodes.{family}" if "." in family else f".nodes.{family}.node", __name__)
        except ModuleNotFoundError as e:
            # a family folder that does not exist yet is not an error; a missing dependency is
            if e.name and (e.name.endswith(f"nodes.{family}") or e.name.endswith(f"nodes.{family}.node")):
                continue
            DISABLED_FAMILIES[family] = f"missing dependency: {e.name}"
            log.warning(
                "Visage: the '%s' nodes are disabled: missing Python package '%s' (pip install it "
                "into ComfyUI's environment to enable them)",
                family,
                e.name,
            )
            continue
        except Exception as e:  # a broken family must not take the pack down
            DISABLED_FAMILIES[family] = f"{type(e).__name__}: {e}"
            log.exception("Visage: the '%s' nodes are disabled: %s", family, e)
            continue
        NODE_CLASS_MAPPINGS.update(getattr(mod, "NODE_CLASS_MAPPINGS", {}))
        NODE_DISPLAY_NAME_MAPPINGS.update(getattr(mod, "NODE_DISPLAY_NAME_MAPPINGS", {}))


def __getattr__(name):
    """PEP 562: only called for names not yet in the module, so the families load once."""
    if name in _LAZY:
        global NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, DISABLED_FAMILIES
        # plain attributes from here on (filled in place), so nothing can load the families twice
        NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, DISABLED_FAMILIES = {}, {}, {}
        _load_families()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]

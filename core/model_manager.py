"""The one model cache every Visage node uses.

Contract
--------
``MANAGER.get(kind, path, loader, device=..., dtype=...)`` returns a :class:`ModelHandle`.
A model is loaded once per *(file identity, kind, device, dtype)*: file identity is the real
path plus the file's size and modification time, so replacing a file on disk loads the new one.

Call ``handle.model()`` right before use: it returns the torch module on the handle's device.

Backends
--------
* :class:`LocalBackend` (default; tests, scripts, headless maths): the handle moves the module to
  its device itself, and the cache is an LRU bounded by a byte budget
  (``VISAGE_CACHE_BYTES``, default 4 GiB) — the least recently used models are dropped first.
* The ComfyUI backend (``nodes/comfy_glue.py``, installed when the pack is loaded by
  ComfyUI) wraps each module in a ``comfy.model_patcher.ModelPatcher`` and calls
  ``comfy.model_management.load_models_gpu`` in ``handle.model()``, so ComfyUI decides what is on
  the GPU, can evict our models under memory pressure, and frees them on ``/free`` or "unload
  models". Nothing is kept on a GPU that ComfyUI cannot see.

This module imports no ComfyUI code.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from .errors import ModelFileInvalid, ModelFileMissing

log = logging.getLogger("visage")

DEFAULT_BUDGET = int(os.environ.get("VISAGE_CACHE_BYTES", str(4 << 30)))


def file_identity(path: str) -> Tuple[str, int, int]:
    """(real path, size, mtime_ns): the cache key part that changes when the file changes."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise ModelFileMissing(os.path.basename(path), [os.path.dirname(path) or "."])
    except OSError as e:  # unreadable
        raise ModelFileInvalid(path, f"cannot be read ({e})", "a readable model file")
    return real, int(st.st_size), int(st.st_mtime_ns)


def module_bytes(module: Any) -> int:
    if isinstance(module, torch.nn.Module):
        total = 0
        for t in list(module.parameters()) + list(module.buffers()):
            total += t.numel() * t.element_size()
        return total
    return int(getattr(module, "nbytes", 0))


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Precision policy: 'auto' is fp32 on CPU, fp16 on CUDA (bf16 where asked)."""
    p = (precision or "auto").lower()
    if p in ("fp32", "float32"):
        return torch.float32
    if p in ("fp16", "float16"):
        return torch.float16
    if p in ("bf16", "bfloat16"):
        return torch.bfloat16
    if p != "auto":
        raise ValueError(f"unknown precision '{precision}' (expected auto, fp32, fp16 or bf16)")
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


class ModelHandle:
    """A cached model plus what is needed to have it ready on its device.

    :meth:`unload` drops the module (the backend releases its state first); the handle stays valid
    and :meth:`model` / :attr:`module` load the file again on the next use. Objects that ComfyUI keeps
    in its execution cache (an analyzer, the LivePortrait networks) hold handles, never modules, so
    unloading frees the memory even while those objects live on.
    """

    def __init__(self, key, module, device: torch.device, dtype: torch.dtype, name: str, backend, reload=None):
        self.key = key
        self._module = module
        self.device = torch.device(device)
        self.dtype = dtype
        self.name = name
        self._backend = backend
        self._reload = reload  # () -> module: the loader again (None: cannot be reloaded)
        self._lock = threading.RLock()
        self.backend_state: Any = None  # e.g. the ModelPatcher under ComfyUI
        self.nbytes = module_bytes(module)
        self.loads = 1

    @property
    def loaded(self) -> bool:
        return self._module is not None

    def _ensure(self):
        with self._lock:
            if self._module is None:
                if self._reload is None:
                    raise RuntimeError(f"Visage: {self.name} was unloaded and cannot be reloaded")
                module = self._reload()
                if isinstance(module, torch.nn.Module):
                    module.eval()
                    module.requires_grad_(False)
                self._module = module
                self.nbytes = module_bytes(module)
                self.loads += 1
                self._backend.wrap(self)
                log.info("Visage: reloaded %s", self)
            return self._module

    def model(self):
        """The module, on ``self.device`` and ready to run (loads it there if it was evicted or unloaded)."""
        with self._lock:
            self._ensure()
            return self._backend.ready(self)

    @property
    def module(self):
        """The module wherever it currently lives (reloaded if it was unloaded, not placed). For introspection."""
        return self._ensure()

    def unload(self) -> bool:
        """Drop the module (and the backend's hold on it). True if something was loaded."""
        with self._lock:
            if self._module is None:
                return False
            self._backend.release(self)
            self.backend_state = None
            self._module = None
            return True

    def __repr__(self):
        state = f"{self.nbytes / 1e6:.1f} MB" if self.loaded else "unloaded"
        return f"ModelHandle({self.name}, device={self.device}, dtype={self.dtype}, {state})"


class LocalBackend:
    """Outside ComfyUI: move to device on use; LRU with a byte budget."""

    name = "local"

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET):
        self.budget_bytes = budget_bytes

    def wrap(self, handle: ModelHandle) -> None:
        if isinstance(handle._module, torch.nn.Module):
            handle._module.to(handle.device)

    def ready(self, handle: ModelHandle):
        m = handle._module
        if isinstance(m, torch.nn.Module):
            p = next(iter(m.parameters()), None)
            if p is not None and p.device != handle.device:
                m.to(handle.device)
        return m

    def evict(self, cache: "OrderedDict", keep_key) -> None:
        total = sum(h.nbytes for h in cache.values() if h.loaded)
        for k in list(cache.keys()):  # oldest first
            if total <= self.budget_bytes:
                break
            if k == keep_key or not cache[k].loaded:
                continue
            h = cache.pop(k)
            total -= h.nbytes
            log.info("Visage: dropped %s from the model cache (budget %.0f MB)", h.name, self.budget_bytes / 1e6)

    def release(self, handle: ModelHandle) -> None:
        pass


@dataclass
class _Stats:
    loads: int = 0
    hits: int = 0


class ModelManager:
    """Process-wide, thread-safe model cache."""

    def __init__(self, backend=None):
        self._cache: "OrderedDict[tuple, ModelHandle]" = OrderedDict()
        self._lock = threading.RLock()
        self._key_locks: Dict[tuple, threading.Lock] = {}
        self.backend = backend or LocalBackend()
        self.stats = _Stats()

    def set_backend(self, backend) -> None:
        with self._lock:
            self.clear()
            self.backend = backend

    def get(
        self,
        kind: str,
        path: str,
        loader: Callable[[str, torch.device, torch.dtype], Any],
        *,
        device: Optional[torch.device] = None,
        dtype: torch.dtype = torch.float32,
        name: Optional[str] = None,
    ) -> ModelHandle:
        """Return the cached model for (file identity, kind, device, dtype), loading it once.

        ``loader(path, device, dtype)`` builds the module (on CPU is fine: the backend places it).
        """
        device = torch.device(device or "cpu")
        ident = file_identity(path)
        key = (kind, ident, str(device), str(dtype))
        with self._lock:
            h = self._cache.get(key)
            if h is not None:
                self._cache.move_to_end(key)
                self.stats.hits += 1
                return h
            klock = self._key_locks.setdefault(key, threading.Lock())
        with klock:  # one load per key even when two threads ask at once
            with self._lock:
                h = self._cache.get(key)
                if h is not None:
                    self.stats.hits += 1
                    return h
            module = loader(path, device, dtype)
            if isinstance(module, torch.nn.Module):
                module.eval()
                module.requires_grad_(False)
            h = ModelHandle(
                key,
                module,
                device,
                dtype,
                name or f"{kind}:{os.path.basename(path)}",
                self.backend,
                reload=lambda: loader(path, device, dtype),
            )
            self.backend.wrap(h)
            with self._lock:
                self._cache[key] = h
                self.stats.loads += 1
                self.backend.evict(self._cache, key)
            log.info("Visage: loaded %s", h)
            return h

    def clear(self) -> None:
        with self._lock:
            for h in self._cache.values():
                h.unload()
            self._cache.clear()

    def unload_all(self) -> int:
        """Drop every loaded module (ComfyUI's "unload models" / ``/free``); handles stay in the cache
        and load their file again on the next ``model()``. Returns how many modules were dropped."""
        with self._lock:
            handles = list(self._cache.values())
        n = sum(1 for h in handles if h.unload())
        if n:
            log.info("Visage: unloaded %d model(s)", n)
        return n

    def cached(self):
        with self._lock:
            return list(self._cache.values())

    def __len__(self):
        return len(self._cache)


MANAGER = ModelManager()

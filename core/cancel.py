"""Cancel checks inside long network forwards.

A released face-restoration network runs one 512x512 face for many seconds on a small CPU: a check
between frames is not enough to stop within a couple of seconds. :func:`checks_inside_modules` runs
``check()`` (which raises to cancel) before the forward of any ``torch.nn.Module`` called from the
current thread, at most every ``every_s`` seconds, while the context is open. Other threads and code
outside the context are not affected; the hook is removed on exit.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Optional

import torch


@contextmanager
def checks_inside_modules(check: Optional[Callable[[], None]], every_s: float = 0.05):
    if check is None:
        yield
        return
    owner = threading.get_ident()
    last = [time.perf_counter()]

    def hook(_module, _args):
        if threading.get_ident() != owner:
            return None
        now = time.perf_counter()
        if now - last[0] >= every_s:
            last[0] = now
            check()
        return None

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()

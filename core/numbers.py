"""Numbers from node inputs: NaN and infinity are refused before they reach any maths.

ComfyUI's own min/max check lets NaN through (every comparison with NaN is false) and a FLOAT without a
``max`` lets infinity through; an API client can post either (Python's JSON reader accepts ``NaN`` and
``Infinity``). One check for every node: :func:`check_finite` for one value, :func:`finite_floats` as
the decorator on a node's FUNCTION (every float argument is checked, named by its input).
"""

from __future__ import annotations

import functools
import inspect
import math

from .errors import VisageError


def check_finite(value, name: str = "value"):
    """``value`` unchanged when it is a finite number (or not a float at all), else a VisageError."""
    if isinstance(value, (list, tuple)):  # list inputs (INPUT_IS_LIST nodes)
        for v in value:
            check_finite(v, name)
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise VisageError(
            f"Input '{name}' is not a finite number",
            expected=f"a finite number for '{name}'",
            got=repr(value),
            fix=f"set '{name}' to a number (an API client sent NaN or infinity; check the value it computes)",
        )
    return value


def finite_floats(fn):
    """Decorator for a node's FUNCTION: every float argument (keyword or positional) must be finite."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for k, v in kwargs.items():
            check_finite(v, k)
        if len(args) > 1:  # args[0] is the node instance
            bound = sig.bind_partial(*args)
            for k, v in list(bound.arguments.items())[1:]:
                check_finite(v, k)
        return fn(*args, **kwargs)

    wrapper.__visage_finite__ = True
    return wrapper

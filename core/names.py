"""One file-name sanitiser for everything Visage saves under a user-typed name.

Used for saved identity embeddings (face family), face models (swap family) and saved expressions
(expression family). Rules, applied in this order:

1. surrounding whitespace is removed; a trailing extension equal to ``ext`` (any case) is removed, so
   'alice' and 'alice.safetensors' name the same file;
2. every run of characters other than ASCII letters, digits, space, '-', '_' and '.' becomes one '_'
   (path separators, ':', '*', '?', quotes, '<', '>', '|', control and non-ASCII characters);
3. leading and trailing dots and spaces are removed (no hidden files, no '..', no names Windows
   cannot create);
4. a Windows device name (CON, PRN, AUX, NUL, COM1-9, LPT1-9; any case, also before a dot) gets a
   trailing '_';
5. at most 200 characters are kept (well under the usual 255-byte limit with the extension);
6. an empty result becomes ``default``; with no default it is a VisageError.

Typical names (letters, digits, space, '-', '_', '.') come through unchanged. Returns name + ext.
"""

from __future__ import annotations

import re
from typing import Optional

from .errors import VisageError

MAX_STEM = 200
_BAD_RUN = re.compile(r"[^A-Za-z0-9 _.\-]+")
_DEVICE = re.compile(r"^(con|prn|aux|nul|com[1-9]|lpt[1-9])(\..*)?$", re.IGNORECASE)


def safe_stem(name: Optional[str], default: Optional[str] = None, ext: str = ".safetensors") -> str:
    """The file name without ``ext`` (rules in the module docstring)."""
    s = (name or "").strip()
    if ext and s.lower().endswith(ext.lower()):
        s = s[: -len(ext)]
    s = _BAD_RUN.sub("_", s).strip(". ")
    if _DEVICE.match(s):
        s = s.split(".", 1)[0] + "_" + s[len(s.split(".", 1)[0]) :]
    s = s[:MAX_STEM].rstrip(". ")
    if not s:
        if default is None:
            raise VisageError(
                "A file name is needed",
                expected="a name with letters or digits, e.g. 'alice'",
                got=repr(name),
                fix="type a name",
            )
        return safe_stem(default, None, ext)
    return s


def safe_filename(name: Optional[str], default: Optional[str] = None, ext: str = ".safetensors") -> str:
    """User-typed ``name`` -> a safe file name ending in ``ext`` (rules in the module docstring)."""
    return safe_stem(name, default, ext) + ext

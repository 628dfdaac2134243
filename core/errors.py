"""Errors that say what was expected, what came, and how to fix it.

Every user-facing failure in Visage goes through :class:`VisageError` (or a subclass) so a
headless server gets one readable line instead of a traceback from deep inside a model.
"""

from __future__ import annotations

from typing import Iterable, Optional


class VisageError(RuntimeError):
    """A user-facing error: expected / got / fix."""

    def __init__(
        self, what: str, *, expected: Optional[str] = None, got: Optional[str] = None, fix: Optional[str] = None
    ):
        self.what = what
        self.expected = expected
        self.got = got
        self.fix = fix
        parts = [what.rstrip(".") + "."]
        if expected:
            parts.append(f"Expected: {expected}.")
        if got:
            parts.append(f"Got: {got}.")
        if fix:
            parts.append(f"Fix: {fix}.")
        super().__init__(" ".join(parts))


class ModelFileMissing(VisageError):
    """A model file (or pack folder) is not where Visage looked for it. Visage never downloads."""

    def __init__(
        self, name: str, searched: Iterable[str], source: Optional[str] = None, folder_name: Optional[str] = None
    ):
        searched = [str(s) for s in searched]
        self.name = name
        self.searched = searched
        where = ", ".join(searched) if searched else "(no folders are configured)"
        fix = f"put '{name}' into one of: {where}"
        if folder_name:
            fix += f" (ComfyUI model folder '{folder_name}'; extra_model_paths.yaml entries count)"
        if source:
            fix += f". Users get it from: {source}"
        super().__init__(
            f"Model file '{name}' was not found; Visage never downloads models",
            expected=f"'{name}' in {where}",
            got="no such file",
            fix=fix,
        )


class ModelFileInvalid(VisageError):
    """A model file exists but cannot be used (truncated, wrong format, wrong architecture)."""

    def __init__(self, path: str, problem: str, expected: str, fix: Optional[str] = None):
        self.path = path
        super().__init__(
            f"Model file '{path}' cannot be used: {problem}",
            expected=expected,
            got=problem,
            fix=fix or "replace the file with an intact copy of the released model",
        )


class NoFaceError(VisageError):
    """Raised by on_no_face='error' when an image holds no face."""

    def __init__(self, indices: Iterable[int], where: str = "image batch"):
        idx = list(indices)
        super().__init__(
            f"No face was found in {where} item(s) {idx}",
            expected="at least one face per image",
            got=f"{len(idx)} image(s) without a face",
            fix="check the image, lower min_score / the detection threshold, or set "
            "on_no_face to 'skip' or 'passthrough' to let such images through",
        )


def describe_tensor(t) -> str:
    """Short description of a tensor/array for error messages."""
    shape = tuple(getattr(t, "shape", ()))
    dtype = getattr(t, "dtype", type(t).__name__)
    return f"{type(t).__name__} shape={shape} dtype={dtype}"

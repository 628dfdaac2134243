"""core/names.py: one file-name sanitiser for embeds, face models and expressions."""

import re

import pytest

from visage.core.errors import VisageError
from visage.core.names import safe_filename, safe_stem


# The three rules as they were before the shared sanitiser (copied from the old call sites).
def old_embeds(name):  # nodes/face/node.py, Save Face Embeds
    return (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "identity") + ".safetensors"


def old_face_model(name):  # nodes/swap/node.py _safe_name (empty -> error)
    n = re.sub(r"[^A-Za-z0-9_.\- ]+", "_", (name or "").strip()).strip(". ")
    return n if n.endswith(".safetensors") else n + ".safetensors"


def old_expression(name):  # nodes/expression/node.py, Save Expression (stem; numbering is unchanged)
    return (re.sub(r"[^A-Za-z0-9_\-]+", "_", name.strip()) or "expression") + ".safetensors"


TYPICAL = [
    "alice",
    "Bob",
    "my_face",
    "face-01",
    "ID_2024-05-01",
    "x",
    "A1b2C3",
    "celeb_v2-final",
    "007",
    "UPPER_lower-123",
]
WITH_SPACE = ["my face", "Alice Smith", "take 2"]
WITH_DOT = ["v1.2", "alice.v2", "face.model"]


@pytest.mark.parametrize(
    "old,default", [(old_embeds, "identity"), (old_face_model, None), (old_expression, "expression")]
)
def test_typical_names_keep_their_file_names(old, default):
    for n in TYPICAL:
        assert safe_filename(n, default) == old(n) == n + ".safetensors"
        assert safe_filename("  " + n + "\t", default) == safe_filename(n, default)


def test_where_the_old_rules_differed():
    # face models kept spaces and dots already: every typical name maps as before
    for n in WITH_SPACE + WITH_DOT + ["alice.safetensors"]:
        assert safe_filename(n) == old_face_model(n)
    # embeds turned spaces into '_' and kept dots; expressions turned both into '_': now both are kept
    for n in WITH_SPACE:
        assert safe_filename(n, "identity") == n + ".safetensors" != old_embeds(n)
        assert safe_stem(n, "expression") + ".safetensors" != old_expression(n)
    for n in WITH_DOT:
        assert safe_filename(n, "identity") == old_embeds(n)
        assert safe_filename(n, "expression") == n + ".safetensors" != old_expression(n)
    # embeds and expressions appended .safetensors twice to a name that already had it
    assert safe_filename("alice.safetensors", "identity") == "alice.safetensors" != old_embeds("alice.safetensors")


@pytest.mark.parametrize(
    "name,expect",
    [
        ("../../etc/passwd", "_.._etc_passwd"),
        ("a/b\\c", "a_b_c"),
        ("C:\\x", "C_x"),
        ("..", None),
        ("  .hidden", "hidden"),
        ("trailing. ", "trailing"),
        ('what?*<>|"', "what_"),
        ("José", "Jos_"),
        ("tab\tname", "tab_name"),
        ("CON", "CON_"),
        ("nul.txt", "nul_.txt"),
        ("lpt1", "lpt1_"),
        ("console", "console"),
        ("x" * 300, "x" * 200),
        ("face.SAFETENSORS", "face"),
    ],
)
def test_unsafe_names(name, expect):
    if expect is None:
        assert safe_filename(name, "identity") == "identity.safetensors"
        with pytest.raises(VisageError, match="file name is needed"):
            safe_filename(name)
        return
    out = safe_stem(name, "identity")
    assert out == expect
    assert "/" not in out and "\\" not in out and not out.startswith(".") and re.fullmatch(r"[A-Za-z0-9 _.\-]+", out)


def test_empty_names():
    assert safe_filename("", "identity") == "identity.safetensors"
    assert safe_filename("   ", "expression") == "expression.safetensors"
    assert safe_filename(None, "x", ext=".json") == "x.json"
    assert safe_filename("///") == "_.safetensors"  # one run of bad characters -> one '_'
    with pytest.raises(VisageError):
        safe_filename(" . ")

"""Hostile or unlucky input through /prompt on a real ComfyUI: names that leave their folder, NaN, empty
save names, overwriting, and a link out of the folder (no model is needed: files are written here)."""

import json
import os

import comfy_harness as ch
import pytest
import torch

from visage.core.types import FaceEmbeds
from visage.nodes.expression.motion import slider_expression
from visage.nodes.face.embeds_io import load_embeds, save_embeds


def _embeds(k=1):
    return FaceEmbeds.from_raw(torch.randn(k, 512), "w600k_r50", (1,) * k, "none")


@pytest.fixture(scope="module")
def dirs(comfy_base):
    emb = os.path.join(comfy_base["models"], "visage", "embeds")
    expr = os.path.join(comfy_base["output"], "visage", "expressions")
    os.makedirs(emb, exist_ok=True)
    slider_expression({"smile": 0.5}).save(os.path.join(expr, "hardening_smile.safetensors"))
    save_embeds(_embeds(), os.path.join(emb, "hardening_src.safetensors"))
    return {"embeds": emb, "expr": expr}


def _load_expr(name, ratio=1.0):
    return {
        "1": {"class_type": "VisageLoadExpression", "inputs": {"name": name, "ratio": ratio}},
        "2": {
            "class_type": "VisageSaveExpression",
            "inputs": {"expression": ["1", 0], "name": "hardening_out", "overwrite": True},
        },
    }


@pytest.mark.parametrize(
    "name",
    ["/etc/hostname", "../../models/visage/embeds/hardening_src.safetensors", "a\x00b", "x" * 300, ""],
    ids=["absolute", "parent", "nul", "300chars", "empty"],
)
def test_load_expression_takes_only_listed_names(name, comfy_server, dirs):
    with pytest.raises(ch.PromptError) as e:
        comfy_server.queue(_load_expr(name))
    body = json.loads(e.value.body)
    errors = [err for node in body["node_errors"].values() for err in node["errors"]]
    assert [err["type"] for err in errors] == ["value_not_in_list"], errors  # ComfyUI's own list check
    assert "visage.embeds" not in e.value.body  # nothing of another file's metadata


def test_nan_is_refused_with_the_input_named(comfy_server, dirs):
    with pytest.raises(ch.PromptError) as e:
        comfy_server.run(_load_expr("hardening_smile.safetensors", float("nan")), timeout=120)
    assert "Input 'ratio' is not a finite number" in str(e.value)
    # out of range is ComfyUI's own check again (VALIDATE_INPUTS used to switch it off for 'ratio')
    with pytest.raises(ch.PromptError, match="value_bigger_than_max"):
        comfy_server.queue(_load_expr("hardening_smile.safetensors", 5.0))


def _save(name, **extra):
    return {
        "1": {"class_type": "VisageLoadEmbeds", "inputs": {"name": "hardening_src.safetensors"}},
        "2": {"class_type": "VisageSaveEmbeds", "inputs": {"embeds": ["1", 0], "name": name, **extra}},
    }


def test_save_embeds_names_overwrite_and_links(comfy_server, object_info, dirs, tmp_path):
    spec = object_info["VisageSaveEmbeds"]["input"]
    # the widget default is the behaviour of workflows saved without the switch (the editor and visage-run
    # fill a missing widget with its default): replace
    assert spec["optional"]["overwrite"][1]["default"] is True
    for blank in ("", "   "):
        with pytest.raises(ch.PromptError, match="A file name is needed"):
            comfy_server.run(_save(blank), timeout=120)
    target = os.path.join(dirs["embeds"], "hardening_copy.safetensors")
    save_embeds(_embeds(3), target)
    # an API workflow saved before the switch (no 'overwrite') replaces, as it always did
    entry = comfy_server.run(_save("hardening_copy"), timeout=120)
    assert load_embeds(target).count == 1 and entry["outputs"]["2"]["text"][0].startswith("replaced")
    save_embeds(_embeds(3), target)
    with pytest.raises(ch.PromptError, match="exist already"):
        comfy_server.run(_save("hardening_copy", overwrite=False), timeout=120)
    assert load_embeds(target).count == 3  # untouched
    # a link in the folder that points out of it is not written through
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, os.path.join(dirs["embeds"], "hardening_evil.safetensors"))
    with pytest.raises(ch.PromptError, match="link that points out of the folder"):
        comfy_server.run(_save("hardening_evil", overwrite=True), timeout=120)
    assert victim.read_text() == "keep me"

"""The `reliability` tier: a corpus of bad inputs driven through a real ComfyUI's /prompt, as a hostile or
unlucky user would send them (bad images, bad and malicious model files, hostile names, non-finite numbers).

For every case: the server survives; the answer is the documented result or a clear error (ComfyUI's own
validation, or a Visage error that says what was expected and how to fix it, never a raw Python exception);
no file is written or read outside the allowed folders (a canary folder beside the server's folders holds a
secret file that no answer may reveal, and a malicious pickle's side effect must never happen).
Run alone: `scripts/test.sh -m reliability -s` prints the table of cases.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import comfy_harness as ch
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.reliability

SECRET = "VISAGE-CANARY-SECRET-7d1f"
# exception types a Visage node may end with: its own errors (each says expected / got / fix)
CLEAR_TYPES = {"VisageError", "NoFaceError", "ModelFileInvalid", "ModelFileMissing"}
RAW_HINTS = ("KeyError", "ZeroDivisionError", "IndexError", "AttributeError", "TypeError", "ModuleNotFoundError")


class Pickled:
    """A pickle whose loading would create a file (what a malicious .bin/.pth does)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.fixture(scope="module")
def corpus(comfy_server, comfy_base, object_info):
    base = os.path.dirname(comfy_base["models"])
    outside = os.path.join(os.path.dirname(base), "visage_outside_" + os.path.basename(base))
    os.makedirs(outside, exist_ok=True)
    import torch
    from safetensors.torch import save_file

    secret_file = os.path.join(outside, "secret.safetensors")
    save_file({"x": torch.zeros(1)}, secret_file, metadata={"token": SECRET})
    with open(os.path.join(outside, "secret.txt"), "w") as f:
        f.write(SECRET)
    canary_dir = os.path.join(outside, "pickle_ran")
    inp, models = comfy_base["input"], comfy_base["models"]
    # images
    Image.new("RGB", (1, 1), (200, 150, 120)).save(os.path.join(inp, "rel_1x1.png"))
    Image.new("RGBA", (96, 64), (10, 20, 30, 0)).save(os.path.join(inp, "rel_rgba.png"))
    Image.new("L", (96, 64), 128).save(os.path.join(inp, "rel_gray.png"))
    Image.fromarray(np.full((4320, 7680, 3), 90, np.uint8)).save(os.path.join(inp, "rel_8k.png"))
    Image.new("RGB", (320, 256), (127, 127, 127)).save(os.path.join(inp, "rel_no_face.png"))
    # model files: truncated, empty, wrong kind, malicious pickles
    swapper = os.path.join(models, "insightface", "inswapper_128.onnx")
    with open(swapper, "rb") as f:
        head = f.read(4096)
    with open(os.path.join(models, "insightface", "rel_truncated_swapper.onnx"), "wb") as f:
        f.write(head)
    open(os.path.join(models, "insightface", "rel_empty_swapper.onnx"), "wb").close()
    rec = os.path.join(models, "insightface", "models", "visage_test", "w600k_r50.onnx")
    shutil.copy(rec, os.path.join(models, "insightface", "rel_recognizer_as_swapper.onnx"))
    for folder, name in (("instantid", "rel_malicious.bin"), ("facerestore_models", "rel_malicious.pth")):
        os.makedirs(os.path.join(models, folder), exist_ok=True)
        with open(os.path.join(models, folder, name), "wb") as f:
            pickle.dump({"state": Pickled(canary_dir)}, f)
    packs = object_info["VisageFaceAnalyzerLoader"]["input"]["required"]["pack"][0]
    return {
        "server": comfy_server,
        "object_info": comfy_server.object_info(),  # after the files above exist
        "outside": outside,
        "canary_dir": canary_dir,
        "base": base,
        "pack": "fixtures_real" if "fixtures_real" in packs else "visage_test",
        "before": _tree(base),
    }


def _tree(root):
    out = set()
    for d, _dirs, files in os.walk(root):
        rel = os.path.relpath(d, root).split(os.sep)[0]
        if rel in ("output", "temp", "user", "models", "input"):  # the folders ComfyUI and Visage may write
            continue
        out |= {os.path.join(d, f) for f in files}
    return out


def _node(ctx, class_type, **inputs):
    return ch.node_with_defaults(ctx["object_info"], class_type, **inputs)


def _analysis(ctx, image="rel_no_face.png", on_no_face="passthrough", extra_image=None):
    p = {
        "load": {"class_type": "LoadImage", "inputs": {"image": image}},
        "an": _node(ctx, "VisageFaceAnalyzerLoader", pack=ctx["pack"], device="cpu"),
        "faces": _node(ctx, "VisageAnalyzeFaces", analyzer=["an", 0], image=["load", 0], on_no_face=on_no_face),
        "count": {"class_type": "PreviewAny", "inputs": {"source": ["faces", 2]}},
    }
    if extra_image:
        p["load2"] = {"class_type": "LoadImage", "inputs": {"image": extra_image}}
        p["batch"] = {"class_type": "ImageBatch", "inputs": {"image1": ["load", 0], "image2": ["load2", 0]}}
        p["faces"]["inputs"]["image"] = ["batch", 0]
    return p


def _swap_loader(ctx, name):
    return {
        "sw": _node(ctx, "VisageSwapModelLoader", swap_model=name, device="cpu"),
        "out": {"class_type": "PreviewAny", "inputs": {"source": ["sw", 0]}},
    }


def _save_embeds(ctx, name):
    p = _analysis(ctx, image="t1.jpg")
    p["emb"] = _node(ctx, "VisageFaceEmbeds", faces=["faces", 0])
    p["save"] = _node(ctx, "VisageSaveEmbeds", embeds=["emb", 0], name=name)
    return p


def _cases(ctx):
    """(case, prompt, expectation): 'ok' (the documented result) or 'error' (a clear refusal)."""
    secret_abs = os.path.join(ctx["outside"], "secret.safetensors")
    rel_up = os.path.relpath(secret_abs, os.path.join(ctx["base"], "output", "visage", "expressions"))
    cases = [
        ("no face (passthrough)", _analysis(ctx), "ok"),
        ("no face (error)", _analysis(ctx, on_no_face="error"), "error"),
        ("1x1 image", _analysis(ctx, image="rel_1x1.png"), "ok"),
        ("RGBA image", _analysis(ctx, image="rel_rgba.png"), "ok"),
        ("grayscale image", _analysis(ctx, image="rel_gray.png"), "ok"),
        ("8K image", _analysis(ctx, image="rel_8k.png"), "ok"),
        ("mixed batch (sizes, no face + faces)", _analysis(ctx, image="t1.jpg", extra_image="rel_1x1.png"), "ok"),
        ("truncated swapper", _swap_loader(ctx, "rel_truncated_swapper.onnx"), "error"),
        ("empty swapper file", _swap_loader(ctx, "rel_empty_swapper.onnx"), "error"),
        ("recognizer loaded as swapper", _swap_loader(ctx, "rel_recognizer_as_swapper.onnx"), "error"),
        (
            "malicious pickle as InstantID",
            {
                "l": _node(ctx, "VisageInstantIDLoader", instantid_file="rel_malicious.bin"),
                "o": {"class_type": "PreviewAny", "inputs": {"source": ["l", 0]}},
            },
            "error",
        ),
        (
            "malicious pickle as restorer",
            {
                "l": _node(ctx, "VisageRestoreModelLoader", restore_model="rel_malicious.pth", device="cpu"),
                "o": {"class_type": "PreviewAny", "inputs": {"source": ["l", 0]}},
            },
            "error",
        ),
        (
            "embeds name ../ outside",
            {
                "l": {
                    "class_type": "VisageLoadEmbeds",
                    "inputs": {"name": "../../" + os.path.basename(ctx["outside"])},
                },
                "o": {"class_type": "PreviewAny", "inputs": {"source": ["l", 0]}},
            },
            "error",
        ),
        (
            "expression name absolute",
            {
                "l": _node(ctx, "VisageLoadExpression", name=secret_abs),
                "o": {"class_type": "PreviewAny", "inputs": {"source": ["l", 0]}},
            },
            "error",
        ),
        (
            "expression name ../",
            {
                "l": _node(ctx, "VisageLoadExpression", name=rel_up),
                "o": {"class_type": "PreviewAny", "inputs": {"source": ["l", 0]}},
            },
            "error",
        ),
        ("save embeds name ../", _save_embeds(ctx, "../../" + os.path.basename(ctx["outside"]) + "/escape"), "any"),
        ("save embeds NUL name", _save_embeds(ctx, "bad\x00name"), "any"),
        ("save embeds 300-char name", _save_embeds(ctx, "n" * 300), "any"),
        ("save embeds empty name", _save_embeds(ctx, "   "), "error"),
        (
            "pack name ../",
            {
                "an": _node(ctx, "VisageFaceAnalyzerLoader", pack="../../" + os.path.basename(ctx["outside"])),
                "o": {"class_type": "PreviewAny", "inputs": {"source": ["an", 0]}},
            },
            "error",
        ),
    ]
    return cases


def _outcome(server, prompt):
    """('ok' | 'error', text, clear?)."""
    try:
        server.run(prompt, timeout=600)
        return "ok", "", True
    except ch.PromptError as e:
        body = e.body if isinstance(e.body, dict) else {}
        text = json.dumps(e.body) if e.body is not None else str(e)
        if "exception_type" in body:  # execution error
            etype = body.get("exception_type", "").rsplit(".", 1)[-1]
            return "error", text, etype in CLEAR_TYPES
        # validation: ComfyUI's own checks (value not in list, bad type, out of range) or a Visage check
        return "error", text, not any(h in text for h in RAW_HINTS)


def test_bad_input_corpus(corpus, capsys):
    server = corpus["server"]
    rows, failures = [], []
    for name, prompt, expect in _cases(corpus):
        got, text, clear = _outcome(server, prompt)
        alive = True
        try:
            server.get("/system_stats", timeout=30)
        except Exception:
            alive = False
        leaked = SECRET in text
        ok = alive and clear and not leaked and (expect == "any" or got == expect)
        rows.append((name, expect, got, "yes" if clear else "NO", "yes" if alive else "NO", "NO" if leaked else "yes"))
        if not ok:
            failures.append(
                f"{name}: expected {expect}, got {got}; clear={clear} alive={alive} leak={leaked}: {text[:600]}"
            )
    # nothing ran from a pickle, nothing was written outside the allowed folders
    pickle_ran = os.path.exists(corpus["canary_dir"])
    new_files = sorted(_tree(corpus["base"]) - corpus["before"])
    outside_now = set(os.listdir(corpus["outside"]))
    with capsys.disabled():
        print("\n\nreliability corpus (real ComfyUI):")
        print(f"{'case':42} {'expected':9} {'got':6} {'clear':6} {'alive':6} {'no leak':7}")
        for r in rows:
            print(f"{r[0]:42} {r[1]:9} {r[2]:6} {r[3]:6} {r[4]:6} {r[5]:7}")
        passed = len(rows) - len(failures)
        print(
            f"{passed} passed, {len(failures)} failed of {len(rows)} cases; pickle side effect: "
            f"{'RAN' if pickle_ran else 'none'}; files written outside: {len(new_files)}"
        )
    assert not pickle_ran, "a malicious pickle was executed"
    assert outside_now == {"secret.safetensors", "secret.txt"}, f"something was written outside: {outside_now}"
    assert not new_files, f"files written outside the allowed folders: {new_files[:10]}"
    assert not failures, "\n".join(failures)

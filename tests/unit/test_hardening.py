"""What a hostile or unlucky user found: names that leave their folder, non-finite numbers, ONNX external
data read from the working directory, and raw exceptions where a message belongs."""

import ast
import glob
import math
import os
import shutil
import sys

import numpy as np
import onnx
import pytest
import torch
from builders import swap as SB
from builders.adapters import instantid_image_proj, ip_adapter_layers, save_adapter
from builders.face import make_per_face

from visage.core import paths
from visage.core.errors import ModelFileInvalid, ModelFileMissing, VisageError
from visage.core.images import check_image
from visage.core.numbers import check_finite, finite_floats
from visage.core.onnx import OrtCpuModule, load_onnx_module
from visage.nodes.adapters.loaders import load_identity_adapter
from visage.nodes.face.embeds_io import load_embeds, save_embeds
from visage.nodes.swap import models as M

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ------------------------------------------------------------------------------ 1. names stay inside

HOSTILE = {
    "absolute": "/etc/hostname",
    "parent": "../secret.safetensors",
    "parent inside": "sub/../../secret.safetensors",
    "backslash parent": "..\\secret.safetensors",
    "nul": "a\x00b.safetensors",
    "300 characters": "x" * 296 + ".pth",
    "empty": "",
    "blank": "   ",
}
REASONS = {
    "absolute": "absolute path",
    "parent": "'..'",
    "parent inside": "'..'",
    "backslash parent": "'..'",
    "nul": "NUL",
    "300 characters": "300 characters",
    "empty": "empty",
    "blank": "empty",
}


@pytest.fixture
def folder(tmp_path):
    paths.clear_extra_folders()
    inside = tmp_path / "models" / "visage" / "embeds"
    inside.mkdir(parents=True)
    paths.add_folder("visage_embeds", str(inside))
    yield inside
    paths.clear_extra_folders()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_names_are_refused_before_the_file_system(case, folder, tmp_path):
    name = HOSTILE[case]
    with pytest.raises(paths.NameRefused) as e:
        paths.find_file("visage_embeds", name)
    msg = str(e.value)
    assert REASONS[case] in msg and "node's list" in msg
    with pytest.raises(paths.NameRefused):
        paths.write_path(str(folder), name)
    with pytest.raises(paths.NameRefused):
        paths.find_dir("visage_embeds", name)


def test_outside_paths_get_the_same_answer_whether_they_exist_or_not(folder, tmp_path):
    real = tmp_path / "secret.safetensors"
    save_embeds(_embeds(), str(real))
    answers = []
    for target in (str(real), str(tmp_path / "no_such.safetensors")):
        with pytest.raises(paths.NameRefused) as e:
            paths.find_file("visage_embeds", target)
        answers.append(str(e.value).replace(target, "<name>"))
    rel = os.path.relpath(real, folder)
    with pytest.raises(paths.NameRefused) as e:
        paths.find_file("visage_embeds", rel)
    assert answers[0] == answers[1]
    assert "secret" not in answers[0] and "visage.embeds" not in str(e.value)


def test_names_inside_and_symlinked_model_files_still_load(folder, tmp_path):
    save_embeds(_embeds(), str(folder / "alice.safetensors"))
    (folder / "sub").mkdir()
    save_embeds(_embeds(), str(folder / "sub" / "bob.safetensors"))
    # a model file and a model folder the user keeps elsewhere, linked into the folder
    elsewhere = tmp_path / "big_disk"
    elsewhere.mkdir()
    save_embeds(_embeds(), str(elsewhere / "carol.safetensors"))
    os.symlink(elsewhere / "carol.safetensors", folder / "carol.safetensors")
    os.symlink(elsewhere, folder / "linked")
    assert paths.check_name("sub/./bob.safetensors") == "sub/bob.safetensors"
    for name in ("alice.safetensors", "sub/bob.safetensors", "carol.safetensors", "linked/carol.safetensors"):
        p = paths.find_file("visage_embeds", name)
        assert load_embeds(p).count == 1, name
    assert "linked/carol.safetensors" in paths.list_files("visage_embeds", {".safetensors"})
    with pytest.raises(ModelFileMissing):
        paths.find_file("visage_embeds", "nobody.safetensors")


def test_a_write_through_a_link_out_of_the_folder_is_refused(folder, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, folder / "identity.safetensors")
    os.symlink(tmp_path / "not_yet_there", folder / "dangling.safetensors")
    for name in ("identity.safetensors", "dangling.safetensors"):
        with pytest.raises(paths.NameRefused, match="link that points out of the folder"):
            paths.write_path(str(folder), name)
    assert victim.read_text() == "keep me" and not (tmp_path / "not_yet_there").exists()
    # a link inside the folder, and a folder that is itself a link the user set up, are fine
    save_embeds(_embeds(), str(folder / "real.safetensors"))
    os.symlink(folder / "real.safetensors", folder / "alias.safetensors")
    assert paths.write_path(str(folder), "alias.safetensors") == str(folder / "alias.safetensors")
    linked_folder = tmp_path / "linked_embeds"
    os.symlink(folder, linked_folder)
    assert paths.write_path(str(linked_folder), "new.safetensors") == str(linked_folder / "new.safetensors")


def test_load_errors_do_not_echo_what_a_file_holds(folder):
    from safetensors.torch import save_file

    save_file({"secret_tensor_name": torch.zeros(1)}, str(folder / "other.safetensors"), {"api_key": "hunter2"})
    with pytest.raises(ModelFileInvalid) as e:
        load_embeds(paths.find_file("visage_embeds", "other.safetensors"))
    msg = str(e.value)
    assert "not a Visage embeddings file" in msg and "hunter2" not in msg and "secret_tensor_name" not in msg


def _embeds():
    from visage.core.types import FaceEmbeds

    return FaceEmbeds.from_raw(torch.randn(1, 512), "w600k_r50", (1,), "none")


# ------------------------------------------------------------------------ 2. ComfyUI's checks stay on


def _node_classes():
    for f in sorted(glob.glob(os.path.join(REPO, "nodes", "*", "node.py"))):
        tree = ast.parse(open(f, encoding="utf-8").read())
        for c in tree.body:
            if isinstance(c, ast.ClassDef):
                yield f, c


def test_no_node_switches_off_comfyui_validation():
    classes = list(_node_classes())
    assert len(classes) >= 25
    offenders = [
        f"{os.path.relpath(f, REPO)}:{c.name}"
        for f, c in classes
        for n in c.body
        if isinstance(n, ast.FunctionDef) and n.name in ("VALIDATE_INPUTS", "validate_inputs")
    ]
    assert not offenders, offenders


def test_every_node_function_refuses_non_finite_floats():
    missing = []
    for _f, c in _node_classes():
        fn = [
            n.value.value for n in c.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "FUNCTION"
        ]
        if not fn:
            continue
        meth = next(n for n in c.body if isinstance(n, ast.FunctionDef) and n.name == fn[0])
        if not any(getattr(d, "id", None) == "finite_floats" for d in meth.decorator_list):
            missing.append(f"{c.name}.{fn[0]}")
    assert not missing, missing


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused_by_input_name(bad):
    class Node:
        @finite_floats
        def load(self, name, ratio=1.0, strength=0.5):
            return (name, ratio, strength)

    assert Node().load("a", ratio=0.25) == ("a", 0.25, 0.5)
    assert Node().load("a", 2.0, 1) == ("a", 2.0, 1)
    with pytest.raises(VisageError, match="Input 'ratio' is not a finite number") as e:
        Node().load("a", ratio=bad)
    assert "NaN or infinity" in str(e.value)
    with pytest.raises(VisageError, match="Input 'strength' is not a finite number"):
        Node().load("a", 1.0, bad)
    with pytest.raises(VisageError, match="'weights'"):
        check_finite([0.5, bad], "weights")
    assert check_finite(3, "n") == 3 and check_finite("nan", "s") == "nan"  # only floats are numbers here


# -------------------------------------------------------------------------- 3. ONNX external data


def _external(src: str, dst_dir, name="model.onnx", data="model.onnx.data") -> str:
    model = onnx.load(src)
    os.makedirs(dst_dir, exist_ok=True)
    out = os.path.join(str(dst_dir), name)
    onnx.save_model(
        model, out, save_as_external_data=True, all_tensors_to_one_file=True, location=data, size_threshold=0
    )
    ext = [t for t in onnx.load(out, load_external_data=False).graph.initializer if t.data_location == 1]
    assert ext, "the test model must keep its tensors outside"
    return out


def _relocate(path: str, location: str) -> None:
    model = onnx.load(path, load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save_model(model, path)


@pytest.fixture(scope="module")
def recognizer_src(tmp_path_factory):
    d = tmp_path_factory.mktemp("rec")
    return make_per_face(str(d / "w600k_r50.onnx"), 112, 512) or str(d / "w600k_r50.onnx")


def _both_engines(path):
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    t = load_onnx_module(path)(x)
    o = OrtCpuModule(path)(x)[0]
    return t, o


def test_external_data_beside_the_model_loads_on_both_engines(recognizer_src, tmp_path, monkeypatch):
    path = _external(recognizer_src, tmp_path / "pack")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the data is read beside the model, whatever the working directory
    t, o = _both_engines(path)
    ref_t, ref_o = _both_engines(recognizer_src)
    torch.testing.assert_close(t, ref_t)
    torch.testing.assert_close(o, ref_o)


@pytest.mark.parametrize("where", ["absolute", "parent", "working directory"])
def test_external_data_outside_the_folder_is_refused_on_both_engines(where, recognizer_src, tmp_path, monkeypatch):
    path = _external(recognizer_src, tmp_path / "pack")
    data = tmp_path / "pack" / "model.onnx.data"
    if where == "absolute":
        moved = tmp_path / "secret.data"
        shutil.move(data, moved)
        _relocate(path, str(moved))
        reason = "absolute path"
    elif where == "parent":
        shutil.move(data, tmp_path / "model.onnx.data")
        _relocate(path, "../model.onnx.data")
        reason = "'..'"
    else:  # the old behaviour: a relative location was read from the server's working directory
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        shutil.move(data, cwd / "model.onnx.data")
        monkeypatch.chdir(cwd)
        reason = "is not beside it"
    for load in (load_onnx_module, OrtCpuModule, M.load_swapper):
        with pytest.raises(ModelFileInvalid) as e:
            load(path)
        assert reason in str(e.value), (load, str(e.value))
    from visage.nodes.face.pack import route

    with pytest.raises(ModelFileInvalid, match="outside the model's folder|not beside it"):
        route(path)  # reading the signature checks the locations too


def test_swapper_with_external_data_on_both_engines(tmp_path, monkeypatch):
    src = SB.make_inswapper(str(tmp_path / "src" / "inswapper_128.onnx"), 128)
    path = _external(src, tmp_path / "insightface", name="inswapper_128.onnx", data="inswapper_128.data")
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    tgt = torch.rand(1, 3, 128, 128, generator=g)
    lat = torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1)
    for engine in ("torch", "onnxruntime"):
        ref, mod = M.load_swapper(src, engine=engine), M.load_swapper(path, engine=engine)
        np.testing.assert_allclose(mod.emap.numpy(), ref.emap.numpy())
        torch.testing.assert_close(mod(tgt, lat)[0], ref(tgt, lat)[0])
    bad = _external(src, tmp_path / "hostile", name="inswapper_128.onnx", data="inswapper_128.data")
    _relocate(bad, str(tmp_path / "insightface" / "inswapper_128.data"))
    for engine in ("torch", "onnxruntime"):
        with pytest.raises(ModelFileInvalid, match="absolute path"):
            M.load_swapper(bad, engine=engine)


# -------------------------------------------------------------------- 6. messages, not raw exceptions


def test_image_without_pixels_is_refused():
    for shape in ((1, 0, 64, 3), (2, 64, 0, 3)):
        with pytest.raises(VisageError) as e:
            check_image(torch.zeros(shape), "image")
        msg = str(e.value)
        assert "'image' has no pixels" in msg and "Fix:" in msg


def test_engine_torch_without_onnx2torch_says_how_to_fix(recognizer_src, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # import onnx2torch -> ImportError
    with pytest.raises(VisageError) as e:
        load_onnx_module(recognizer_src)
    msg = str(e.value)
    assert "onnx2torch" in msg and "pip install onnx2torch" in msg and "'onnxruntime'" in msg
    src = SB.make_inswapper(str(tmp_path / "inswapper_128.onnx"), 128)
    with pytest.raises(VisageError, match="onnx2torch, which is not installed"):
        M.load_swapper(src, engine="torch")
    assert M.load_swapper(src, engine="onnxruntime") is not None  # the fix it names works


@pytest.mark.parametrize("drop", ["proj_out.weight", "layers.0.0.to_q.weight", "layers.0.1.1.weight"])
def test_instantid_file_missing_a_key_names_it(drop, tmp_path):
    proj = instantid_image_proj(dim=128, depth=1, heads=2, output_dim=64)
    del proj[drop]
    path = save_adapter(str(tmp_path / "ip-adapter.bin"), proj, ip_adapter_layers([64, 64], 64))
    with pytest.raises(ModelFileInvalid) as e:
        load_identity_adapter(path, expect="instantid")
    msg = str(e.value)
    assert "ip-adapter.bin" in msg and f"'image_proj.{drop}'" in msg and "intact copy" in msg

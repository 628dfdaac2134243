"""Bad input to face analysis: each gets a clear error or the documented passthrough."""

import os
import shutil

import pytest
import torch
from builders.face import build_face_pack, make_per_face

from visage.core.errors import ModelFileInvalid, VisageError
from visage.core.images import check_image
from visage.nodes.face.analyzer import load_analyzer
from visage.nodes.face.pack import pack_files, route, route_pack


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return build_face_pack(str(tmp_path_factory.mktemp("pack") / "buffalo_test"), with_landmarks=False)


@pytest.fixture(scope="module")
def analyzer(pack):
    return load_analyzer(pack, "cpu", torch.float32)


def test_no_face_gives_empty_list(analyzer):
    fs = analyzer.analyze(torch.full((2, 200, 240, 3), 0.5))
    assert fs.count == 0 and fs.images_without_face() == (0, 1) and fs.image_sizes == ((200, 240),) * 2


def test_tiny_1x1_image(analyzer):
    fs = analyzer.analyze(torch.rand(1, 1, 1, 3))
    assert fs.count == 0 and fs.image_sizes == ((1, 1),)


def test_rgba_and_grey_inputs(analyzer):
    rgb = torch.rand(1, 120, 160, 3)
    rgba = torch.cat([rgb, torch.rand(1, 120, 160, 1)], -1)
    a, b = analyzer.analyze(rgb), analyzer.analyze(rgba)
    assert a.counts() == b.counts()
    for fa, fb in zip(a.flat(), b.flat()):
        assert torch.equal(fa.bbox, fb.bbox)
    assert check_image(torch.rand(1, 10, 10, 1)).shape == (1, 10, 10, 3)


def test_8k_image_runs_and_oversize_is_refused(analyzer):
    img = torch.full((1, 4320, 7680, 3), 0.5)
    img[0, 1500:2600, 3000:3900] = torch.rand(1100, 900, 3)
    fs = analyzer.analyze(img)
    assert fs.image_sizes == ((4320, 7680),)
    for f in fs.flat():
        assert 0 <= f.bbox[0] < 7680 and 0 <= f.bbox[1] < 4320
    with pytest.raises(VisageError, match="too large"):
        check_image(torch.zeros(1, 9000, 8000, 3))


def test_batch_of_different_sizes_is_a_clear_error():
    with pytest.raises(VisageError) as e:
        check_image([torch.rand(1, 64, 64, 3), torch.rand(1, 80, 64, 3)])
    assert "differ in size" in str(e.value) and "Fix:" in str(e.value)
    assert check_image([torch.rand(1, 64, 64, 3), torch.rand(64, 64, 3)]).shape == (2, 64, 64, 3)


def test_not_an_image():
    for bad in (torch.rand(2, 3, 4, 5, 6), torch.rand(1, 4, 4, 7), "x", torch.zeros(0, 8, 8, 3)):
        with pytest.raises(VisageError):
            check_image(bad)


def test_truncated_and_non_onnx_files(tmp_path, pack):
    d = tmp_path / "broken"
    shutil.copytree(pack, d)
    rec = d / "w600k_r50.onnx"
    data = rec.read_bytes()
    rec.write_bytes(data[: len(data) // 2])
    (d / "notes.onnx").write_text("this is not a model")
    with pytest.raises(ModelFileInvalid) as e:
        route(str(rec))
    assert "w600k_r50.onnx" in str(e.value) and "ONNX" in str(e.value)
    with pytest.raises(ModelFileInvalid):
        route(str(d / "notes.onnx"))
    # a recognizer that cannot be read stops the load, naming the file and why (it used to be dropped with
    # a log line, and the methods then asked for "a pack with a recognizer")
    with pytest.raises(VisageError) as e:
        route_pack(str(d))
    msg = str(e.value)
    assert "'w600k_r50.onnx' cannot be read" in msg and "not a readable ONNX file" in msg
    assert "re-copy 'w600k_r50.onnx'" in msg and "buffalo_l" in msg
    # other unreadable files are reported in the log; the pack still loads its good models
    rec.unlink()
    routed = route_pack(str(d))
    assert "detection" in routed and "recognition" not in routed


def test_pack_without_detector_names_what_it_found(tmp_path):
    d = tmp_path / "nodet"
    d.mkdir()
    make_per_face(str(d / "w600k_r50.onnx"), 112, 512, in_name="input.1", out_name="683")
    with pytest.raises(VisageError) as e:
        route_pack(str(d))
    msg = str(e.value)
    assert "no usable face detector" in msg and "w600k_r50.onnx" in msg and "det_10g" in msg


def test_nested_pack_layout(tmp_path, pack):
    outer = tmp_path / "antelopev2"
    shutil.copytree(pack, outer / "antelopev2")
    assert [os.path.basename(p) for p in pack_files(str(outer))] == sorted(os.listdir(pack))
    assert "detection" in route_pack(str(outer))


def test_missing_pack_folder():
    with pytest.raises(VisageError, match="does not exist"):
        pack_files("/nonexistent/pack")

"""BiSeNet face parsing: facexlib's parsing_bisenet.pth layout, facefusion's ONNX signature, both engines.

facexlib (requirements-test.txt) is the reference for the network maths when it is importable.
"""

import os

import numpy as np
import pytest
import torch
from builders import masks as B

from visage.core.errors import ModelFileInvalid, VisageError
from visage.core.model_manager import MANAGER
from visage.nodes.face import parsing as P


@pytest.fixture(scope="module")
def state_dict():
    return B.bisenet_state_dict(seed=3)


@pytest.fixture(scope="module")
def pth(tmp_path_factory, state_dict):
    path = str(tmp_path_factory.mktemp("facexlib") / "parsing_bisenet.pth")
    torch.save(state_dict, path)
    return path


@pytest.fixture(scope="module")
def x2():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 512, 512, generator=g)


@pytest.fixture(scope="module")
def logits_pth(pth, x2):
    return P.load_parsing(pth)(x2)


def test_layout_is_facexlibs():
    exp = P.expected_layout()
    assert exp == B.bisenet_layout()  # written out independently from facexlib's source
    assert P.CLASSES[1] == "skin" and P.CLASSES[6] == "glasses" and P.CLASSES[17] == "hair" and len(P.CLASSES) == 19
    try:
        from facexlib.parsing.bisenet import BiSeNet as Ref
    except ImportError:
        pytest.skip("facexlib is not installed (requirements-test.txt)")
    with torch.device("meta"):
        ref = Ref(num_class=19)
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == exp


def test_pth_loads_through_the_manager_and_is_evictable(pth, logits_pth, x2):
    model = P.load_parsing(pth)
    assert isinstance(model, P.ParsingModel) and model.kind == "pth"
    assert model.handle in MANAGER.cached()
    assert logits_pth.shape == (2, 19, 512, 512) and logits_pth.dtype == torch.float32
    assert torch.isfinite(logits_pth).all() and logits_pth.std() > 1e-2
    assert model.handle.unload()  # what ComfyUI's "unload models" does
    again = model(x2[:1])  # reloads from the file
    assert model.handle.loads == 2
    torch.testing.assert_close(again, logits_pth[:1], atol=1e-5, rtol=1e-5)


def test_equals_facexlib_bisenet(state_dict, x2, logits_pth):
    try:
        from facexlib.parsing.bisenet import BiSeNet as Ref
    except ImportError:
        pytest.skip("facexlib is not installed (requirements-test.txt)")
    ref = Ref(num_class=19)
    ref.load_state_dict(state_dict, strict=True)  # as facexlib's init_parsing_model loads the release
    ref.eval()
    with torch.no_grad():
        want = ref(x2)[0]
    scale = want.abs().max()
    assert (logits_pth - want).abs().max() <= 1e-4 * scale


def test_onnx_both_engines_match_the_pth(tmp_path, state_dict, x2, logits_pth):
    path = B.make_bisenet_onnx(str(tmp_path / "bisenet_resnet_18.onnx"), seed=3)
    scale = logits_pth.abs().max()
    for engine, kind in (("torch", "onnx:torch"), ("onnxruntime", "onnx:onnxruntime")):
        m = P.load_parsing(path, engine=engine)
        assert m.kind == kind
        out = m(x2)  # the export has batch 1: run_batched goes face by face
        assert out.shape == (2, 19, 512, 512)
        assert (out - logits_pth).abs().max() <= 1e-3 * max(1.0, float(scale)), engine


def test_parse_faces_labels_with_a_controlled_model(tmp_path):
    path = B.make_controlled_parser_onnx(str(tmp_path / "bisenet_resnet_34.onnx"))
    model = P.load_parsing(path, engine="torch")
    lab = np.zeros((3, 256, 256), np.int64)
    lab[0, 40:200, 60:190] = P.CLASS_INDEX["skin"]
    lab[0, 90:110, 80:120] = P.CLASS_INDEX["left_eye"]
    lab[1, :, :128] = P.CLASS_INDEX["hair"]
    lab[1, :, 128:] = P.CLASS_INDEX["glasses"]
    lab[2] = np.arange(256)[None, :] * 19 // 256  # every class, in bands of >= 13 px
    crops = torch.from_numpy(B.paint_classes(lab))
    got = P.parse_faces(model, crops)
    assert got.shape == (3, 256, 256) and got.dtype == torch.uint8
    # away from band edges (the 256 -> 512 resize mixes one pixel there) every label is right
    inner = np.ones((3, 256, 256), bool)
    edges = np.zeros_like(inner)
    edges[:, :, 1:] |= lab[:, :, 1:] != lab[:, :, :-1]
    edges[:, 1:, :] |= lab[:, 1:, :] != lab[:, :-1, :]
    inner &= ~(edges | np.roll(edges, 1, 1) | np.roll(edges, -1, 1) | np.roll(edges, 1, 2) | np.roll(edges, -1, 2))
    assert (got.numpy()[inner] == lab[inner]).all()
    assert set(np.unique(got.numpy()[2])) == set(range(19))
    assert P.parse_faces(model, crops[:1], out_size=512).shape == (1, 512, 512)


def test_wrong_files_are_refused_naming_what_they_are(tmp_path, state_dict):
    from builders.swap import make_inswapper

    def refused(path, pattern):
        with pytest.raises(ModelFileInvalid, match=pattern):
            P.load_parsing(path)

    p = str(tmp_path / "parsenet.pth")
    torch.save({"out_img_conv.weight": torch.zeros(3, 8, 3, 3), "out_mask_conv.weight": torch.zeros(19, 8, 3, 3)}, p)
    refused(p, "ParseNet")
    p = str(tmp_path / "recog.pth")
    torch.save({"input_layer.0.weight": torch.zeros(64, 3, 3, 3), "output_layer.3.weight": torch.zeros(4, 4)}, p)
    refused(p, "IR-SE50")
    p = str(tmp_path / "bisenet_11.pth")
    torch.save(B.bisenet_state_dict(num_classes=11, num_batches_tracked=False), p)
    refused(p, "BiSeNet with 11 classes")
    p = str(tmp_path / "dp.pth")
    torch.save({"module." + k: v for k, v in list(state_dict.items())[:5]}, p)
    refused(p, "DataParallel")
    p = str(tmp_path / "trunc.pth")
    with open(p, "wb") as f:
        f.write(b"PK\x03\x04" + b"\0" * 40)
    refused(p, "truncated")
    refused(make_inswapper(str(tmp_path / "bisenet_resnet_18.onnx")), "face swapper")
    with pytest.raises(VisageError, match=r"\[B,3,512,512\]"):
        P.load_parsing(B.make_controlled_parser_onnx(str(tmp_path / "c.onnx")), engine="torch")(
            torch.zeros(1, 512, 512)
        )


def test_num_batches_tracked_is_optional(tmp_path):
    p = str(tmp_path / "parsing_bisenet.pth")
    B.make_bisenet_pth(p, seed=5, num_batches_tracked=False)
    assert os.path.getsize(p) > 0
    m = P.load_parsing(p)
    assert m(torch.zeros(1, 3, 512, 512)).shape == (1, 19, 512, 512)

"""facexlib's IR-SE50 ArcFace (recognition_arcface_ir_se50.pth) in nodes/face/irse50.py.

The test file is a random-weight state dict in the released layout (tests/builders/face.py), written
out independently of the module; when facexlib is importable its own ``Backbone`` is the reference.
One full-size network (43.8M parameters) is built and loaded once per module; on 2 CPU cores each
112 px image costs about a second, so the forwards are few and small.
"""

import os
import pickle

import pytest
import torch
from builders.face import irse50_layout, make_irse50, make_per_face

from visage.core.errors import ModelFileInvalid, VisageError
from visage.nodes.face import irse50 as I


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    return make_irse50(str(tmp_path_factory.mktemp("irse50") / I.FILE_NAME), seed=0)


@pytest.fixture(scope="module")
def state_dict(weights_file):
    return I.read_state_dict(weights_file)


@pytest.fixture(scope="module")
def model(weights_file):
    return I.load_irse50(weights_file)


@pytest.fixture(scope="module")
def crops():
    """Three uint8-like crops normalised as IRSE50_PREPROCESS says."""
    g = torch.Generator().manual_seed(1)
    p = I.IRSE50_PREPROCESS
    x = torch.randint(0, 256, (3, 3, p["input_size"], p["input_size"]), generator=g).float()
    return (x - p["mean"]) / p["std"]


@pytest.fixture(scope="module")
def raw3(model, crops):
    with torch.inference_mode():
        return model(crops)


def _fake(layout):
    """Zero-cost tensors of the given shapes (validation reads shapes and dtypes only)."""
    return {k: torch.zeros(()).expand(s) if s else torch.zeros(()) for k, s in layout.items()}


def _raises(path, *needles):
    with pytest.raises(ModelFileInvalid) as e:
        I.load_irse50(str(path))
    msg = str(e.value)
    for n in needles:
        assert n.lower() in msg.lower(), msg
    return msg


# ----------------------------------------------------------------------------------- layout


def test_layout_matches_builder_file_and_released_counts(weights_file, state_dict, model):
    layout = I.expected_layout()
    assert list(layout.items()) == list(irse50_layout().items())  # names, shapes and released order
    assert {k: tuple(v.shape) for k, v in state_dict.items()} == layout
    tensors = [k for k in layout if not k.endswith("num_batches_tracked")]
    assert len(tensors) == I.NUM_TENSORS == 343 and len(layout) == 397
    assert sum(p.numel() for p in model.parameters()) == I.NUM_PARAMETERS == 43_797_696
    units = {int(k.split(".")[1]) for k in layout if k.startswith("body.")}
    assert units == set(range(24))
    shortcuts = {int(k.split(".")[1]) for k in layout if ".shortcut_layer." in k}
    assert shortcuts == {3, 7, 21}  # the units whose depth changes
    assert layout["output_layer.3.weight"] == (512, 512 * 7 * 7)
    assert I.RECOGNIZER_ID == "recognition_arcface_ir_se50" and I.FILE_NAME == I.RECOGNIZER_ID + ".pth"
    assert I.IRSE50_PREPROCESS == {
        "input_size": 112,
        "mean": 127.5,
        "std": 127.5,
        "bgr": True,
        "template": "arcface_112",
    }


def test_num_batches_tracked_is_optional(state_dict, model):
    sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    m = I.irse50_from_state_dict(sd)
    for (k, a), b in zip(model.state_dict().items(), m.state_dict().values()):
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(a, b), k


# ----------------------------------------------------------------------------------- maths


def test_output_shape_and_eval_maths(model, raw3):
    assert raw3.shape == (3, I.EMBEDDING_DIM) and raw3.dtype == torch.float32
    assert torch.isfinite(raw3).all() and raw3.std() > 0.1
    n = I.l2_normalize(raw3)
    torch.testing.assert_close(n.norm(dim=1), torch.ones(3))
    assert not (n[0] - n[1]).abs().max() < 1e-3  # different crops, different embeddings
    model.train()  # BatchNorm must keep its running statistics, dropout stays off
    assert not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())


def test_batch_independence(model, crops, raw3):
    with torch.inference_mode():
        singles = torch.cat([model(crops[i : i + 1]) for i in range(3)])
    scale = raw3.abs().max()
    assert (singles - raw3).abs().max() <= 1e-5 * scale
    assert (I.l2_normalize(singles) - I.l2_normalize(raw3)).abs().max() <= 1e-5


def test_matches_facexlib_backbone(state_dict, crops, raw3):
    try:
        from facexlib.recognition.arcface_arch import Backbone
    except ImportError as e:
        pytest.skip(f"facexlib is not installed ({e}); the reference comparison needs its Backbone class")
    with torch.device("meta"):  # skip the random init of 43.8M parameters
        ref = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")  # init_recognition_model's arguments
    ref.load_state_dict(state_dict, strict=True, assign=True)  # strict, as init_recognition_model loads
    ref.eval()
    seen = {}
    ref.output_layer.register_forward_hook(lambda _m, _i, o: seen.__setitem__("raw", o))
    with torch.inference_mode():
        normed = ref(crops[:1])  # facexlib returns l2_norm(raw)
    scale = seen["raw"].abs().max()
    assert (raw3[:1] - seen["raw"]).abs().max() <= 1e-4 * scale
    assert (I.l2_normalize(raw3[:1]) - normed).abs().max() <= 1e-4


def test_wrong_input_shape_is_a_clear_error(model):
    with pytest.raises(VisageError, match=r"\[N,3,112,112\]"):
        model(torch.zeros(1, 3, 128, 128))


# ----------------------------------------------------------------------------------- wrong files


def test_onnx_renamed_pth(tmp_path):
    p = tmp_path / I.FILE_NAME
    make_per_face(str(p), 112, 512, in_name="input.1", out_name="683")  # a glintr100-like recognizer
    _raises(p, "ONNX", "recognition_arcface_ir_se50.pth")


def test_truncated_file(weights_file, tmp_path):
    p = tmp_path / I.FILE_NAME
    with open(weights_file, "rb") as f:
        p.write_bytes(f.read(os.path.getsize(weights_file) // 2))
    _raises(p, "truncated")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    _raises(empty, "empty")


class _Executes:
    """An object whose unpickling would run os.mkdir(marker)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_with_objects_is_refused_and_never_executed(tmp_path):
    marker = str(tmp_path / "pickle_ran")
    p = tmp_path / I.FILE_NAME
    torch.save({"input_layer.0.weight": torch.zeros(64, 3, 3, 3), "hook": _Executes(marker)}, str(p))
    _raises(p, "never executes a pickle")
    assert not os.path.exists(marker)
    with open(p.with_suffix(".legacy"), "wb") as f:  # a bare pickle, not a torch archive
        pickle.dump(_Executes(marker), f, protocol=2)
    with pytest.raises(ModelFileInvalid):
        I.load_irse50(str(p.with_suffix(".legacy")))
    assert not os.path.exists(marker)


def test_missing_keys_wrapped_and_non_tensor_files(tmp_path):
    small = {"input_layer.0.weight": torch.zeros(64, 3, 3, 3), "input_layer.2.weight": torch.zeros(64)}
    p = tmp_path / "partial.pth"
    torch.save(small, str(p))
    _raises(p, "missing", "body.", "343 released tensors")
    torch.save({"state_dict": small, "epoch": 3}, str(p))
    _raises(p, "under 'state_dict'")
    torch.save(dict(small, epoch=3), str(p))
    _raises(p, "non-tensor", "epoch")
    torch.save(torch.zeros(3), str(p))
    _raises(p, "Tensor, not a state dict")


def test_validation_names_what_the_file_is():
    layout = I.expected_layout()

    def problem(sd):
        with pytest.raises(ModelFileInvalid) as e:
            I.validate(sd, "x.pth")
        return str(e.value)

    assert "'module.'" in problem(_fake({"module." + k: s for k, s in layout.items()}))
    no_se = {k: s for k, s in layout.items() if ".res_layer.5." not in k}
    assert "mode='ir'" in problem(_fake(no_se))
    deeper = dict(layout, **{"body.24.res_layer.1.weight": (512, 512, 3, 3)})
    assert "25 units" in problem(_fake(deeper))
    iresnet = {"conv1.weight": (64, 3, 3, 3), "layer1.0.bn1.weight": (64,), "fc.weight": (512, 25088)}
    assert "iresnet" in problem(_fake(dict(iresnet, **{"features.weight": (512,)})))
    wide = dict(layout, **{"output_layer.3.weight": (256, 512 * 7 * 7)})
    msg = problem(_fake(wide))
    assert "output_layer.3.weight" in msg and "[256, 25088]" in msg
    ints = _fake(layout)
    ints["input_layer.2.weight"] = torch.zeros(64, dtype=torch.int64)
    assert "not floating point" in problem(ints)
    I.validate(_fake(layout), "x.pth")  # the released layout passes

"""LivePortrait networks: released key layout, strict loading, spectral-norm folding, wrong files,
and one forward pass of every network at full released width and released input size (256x256)."""

import os

import pytest
import torch
from builders import expression as B

from visage.core import paths
from visage.core.errors import ModelFileInvalid, ModelFileMissing
from visage.core.model_manager import MANAGER
from visage.nodes.expression import loader as L
from visage.nodes.expression import motion as M
from visage.nodes.expression import networks as N
from visage.nodes.expression import pipeline as PL

# released parameter counts (the published files hold these many weights)
RELEASED_PARAMS = {
    "appearance_feature_extractor": 0.84e6,
    "motion_extractor": 28.1e6,
    "warping_module": 45.5e6,
    "spade_generator": 55.4e6,
    "stitching_retargeting_module": 0.227e6,
}


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("liveportrait"))
    B.write_models(d)
    return d


def test_layout_has_released_names_and_sizes():
    lay = L.expected_layout("motion_extractor")
    assert lay["detector.downsample_layers.0.0.weight"] == (96, 3, 4, 4)
    assert lay["detector.fc_pitch.weight"] == (66, 768)
    assert lay["detector.fc_exp.weight"] == (63, 768) and lay["detector.fc_kp.weight"] == (63, 768)
    assert lay["detector.stages.2.8.grn.gamma"] == (1, 1, 1, 1536)
    lay = L.expected_layout("warping_module")
    assert lay["dense_motion_network.mask.weight"] == (22, 142, 7, 7, 7)
    assert lay["dense_motion_network.occlusion.weight"] == (1, 142 * 16, 7, 7)
    assert lay["dense_motion_network.hourglass.encoder.down_blocks.4.conv.weight"] == (1024, 512, 3, 3, 3)
    assert lay["third.conv.weight"] == (256, 512, 3, 3)
    lay = L.expected_layout("spade_generator")
    assert lay["G_middle_0.conv_0.weight_orig"] == (512, 512, 3, 3)
    assert lay["G_middle_0.conv_0.weight_u"] == (512,) and lay["G_middle_0.conv_0.weight_v"] == (512 * 9,)
    assert lay["up_1.conv_s.weight_orig"] == (64, 256, 1, 1) and "up_1.conv_s.bias" not in lay
    assert lay["conv_img.0.weight"] == (12, 64, 3, 3)
    lay = L.expected_layout("stitching_retargeting_module")
    assert lay["retarget_shoulder_module.mlp.0.weight"] == (128, 126)
    assert lay["retarget_shoulder_module.mlp.6.weight"] == (65, 64)
    assert lay["retarget_mouth_module.mlp.0.weight"] == (128, 65)
    assert lay["retarget_eye_module.mlp.10.weight"] == (63, 64)
    assert L.expected_layout("appearance_feature_extractor")["resblocks_3d.3dr5.conv2.weight"] == (32, 32, 3, 3, 3)
    for kind, n in RELEASED_PARAMS.items():
        total = sum(
            int(torch.Size(s).numel())
            for k, s in L.expected_layout(kind).items()
            if not k.endswith(("num_batches_tracked", "running_mean", "running_var", "weight_u", "weight_v"))
        )
        assert abs(total - n) / n < 0.01, (kind, total)


def test_spectral_fold_matches_torch_spectral_norm():
    torch.manual_seed(0)
    conv = torch.nn.utils.spectral_norm(torch.nn.Conv2d(6, 5, 3, padding=1))
    conv.train()
    for _ in range(3):
        conv(torch.randn(1, 6, 8, 8))  # power iterations update u, v
    conv.eval()
    sd = {"blk.conv_0." + k: v for k, v in conv.state_dict().items()}
    folded = L.fold_spectral(sd)
    plain = torch.nn.Conv2d(6, 5, 3, padding=1)
    plain.load_state_dict({"weight": folded["blk.conv_0.weight"], "bias": folded["blk.conv_0.bias"]})
    x = torch.randn(2, 6, 8, 8)
    torch.testing.assert_close(plain(x), conv(x), rtol=1e-5, atol=1e-6)


def test_released_files_load_strict_and_run_once_at_full_width(released_dir):
    """Every network loads from the released layout (strict) and runs at 256x256 (full widths, one pass)."""
    paths.add_folder("liveportrait", released_dir)
    try:
        models = L.load_models("cpu", torch.float32)
        hits = MANAGER.stats.hits
        again = L.load_models("cpu", torch.float32)  # one load per file: the manager's cache answers
        assert again.spade is models.spade and MANAGER.stats.hits == hits + 5
        for kind, n in RELEASED_PARAMS.items():
            h = {
                "appearance_feature_extractor": models.appearance,
                "motion_extractor": models.motion,
                "warping_module": models.warping,
                "spade_generator": models.spade,
                "stitching_retargeting_module": models.stitching,
            }[kind]
            params = sum(p.numel() for p in h.module.parameters())
            assert abs(params - n) / n < 0.01, (kind, params)
        # loaded values are the file's (fp16 -> fp32), spectral convs folded
        sd = B.released_state_dict("spade_generator")
        w = models.spade.module.G_middle_3.conv_1.weight
        ref = L.fold_spectral({k: v.float() for k, v in sd.items() if k.startswith("G_middle_3.conv_1.")})
        torch.testing.assert_close(w, ref["G_middle_3.conv_1.weight"])
        eng = PL.Engine(models)
        torch.manual_seed(0)
        x = torch.rand(1, 3, 256, 256)
        info = eng.motion(x)
        assert info.kp.shape == (1, 21, 3) and info.exp.shape == (1, 21, 3) and info.t.shape == (1, 3)
        assert info.scale.shape == (1, 1) and all(-97.5 <= float(a) <= 100.5 for a in info.angles()[0])
        f_s = eng.appearance(x)
        assert f_s.shape == (1, 32, 16, 64, 64)
        x_s = M.transform_keypoints(info)
        x_d = eng.stitch(x_s, x_s)
        assert x_d.shape == (1, 21, 3) and not torch.equal(x_d, x_s)
        out = eng.decode(f_s, x_s, x_d)
        assert out.shape == (1, 3, 512, 512) and torch.isfinite(out).all()
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0 and float(out.std()) > 0
        warped, occ = models.warping.model()(f_s, x_d, x_s)
        assert warped.shape == (1, 256, 64, 64) and occ.shape == (1, 1, 64, 64)
        eye = models.stitching.model().retarget_eye(x_s, torch.tensor([[0.3, 0.3, 0.1]]))
        lip = models.stitching.model().retarget_lip(x_s, torch.tensor([[0.1, 0.4]]))
        assert eye.shape == lip.shape == (1, 21, 3)
    finally:
        paths.clear_extra_folders()
        MANAGER.clear()


def _save(path, sd):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, path)


def test_wrong_files_are_rejected_with_what_they_hold(tmp_path, released_dir):
    # another LivePortrait part under the wrong name
    with pytest.raises(ModelFileInvalid, match="motion_extractor"):
        L.load_network("warping_module", os.path.join(released_dir, "motion_extractor.safetensors"))
    # another architecture altogether (a diffusion UNet's keys)
    p = str(tmp_path / "unet.safetensors")
    _save(p, {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)})
    with pytest.raises(ModelFileInvalid, match="diffusion"):
        L.load_network("spade_generator", p)
    # same names, other widths (a narrower variant)
    tiny = {
        k: torch.zeros(s)
        for k, s in L.expected_layout("appearance_feature_extractor", N.tiny_cfg()).items()
        if not k.endswith("num_batches_tracked")
    }
    p = str(tmp_path / "narrow.safetensors")
    _save(p, tiny)
    with pytest.raises(ModelFileInvalid, match="variant|shape"):
        L.load_network("appearance_feature_extractor", p)
    # a released file with one key missing
    sd = B.released_state_dict("stitching_retargeting_module")
    sd.pop("retarget_eye_module.mlp.10.bias")
    p = str(tmp_path / "cut.safetensors")
    _save(p, sd)
    with pytest.raises(ModelFileInvalid, match="retarget_eye_module.mlp.10.bias"):
        L.load_network("stitching_retargeting_module", p)
    # truncated / not a checkpoint
    p = str(tmp_path / "broken.safetensors")
    with open(os.path.join(released_dir, "appearance_feature_extractor.safetensors"), "rb") as f:
        head = f.read(5000)
    with open(p, "wb") as f:
        f.write(head)
    with pytest.raises(ModelFileInvalid, match="cannot be read"):
        L.load_network("appearance_feature_extractor", p)


def test_original_pth_stitching_layout_is_accepted(tmp_path):
    sd = B.released_state_dict("stitching_retargeting_module", dtype=torch.float32)
    nested = {}
    for k, v in sd.items():
        group, rest = k.split("_module.", 1)
        nested.setdefault(group, {})["module." + rest] = v
    p = str(tmp_path / "stitching_retargeting_module.pth")
    torch.save(nested, p)
    m = L.load_network("stitching_retargeting_module", p)
    torch.testing.assert_close(m.retarget_mouth_module.mlp[2].weight, sd["retarget_mouth_module.mlp.2.weight"])


def test_missing_files_name_the_file_and_folders(tmp_path):
    paths.add_folder("liveportrait", str(tmp_path))
    try:
        with pytest.raises(ModelFileMissing) as e:
            L.load_models("cpu")
        msg = str(e.value)
        assert "appearance_feature_extractor.safetensors" in msg and str(tmp_path) in msg and "never downloads" in msg
    finally:
        paths.clear_extra_folders()


def test_landmark_model_is_used_when_present(released_dir, tmp_path):
    """LivePortrait's landmark.onnx beside the five networks is loaded (the 203-point ratios); without it
    the models load with landmark None (68-point fallback)."""
    from builders.expression import make_landmark203

    paths.add_folder("liveportrait", released_dir)
    try:
        assert L.load_models("cpu", torch.float32).landmark is None
        extra = tmp_path / "lp_extra"
        make_landmark203(str(extra / "landmark.onnx"))
        paths.add_folder("liveportrait", str(extra))
        models = L.load_models("cpu", torch.float32)
        assert models.landmark is not None and models.landmark.model()(torch.zeros(1, 3, 224, 224))[2].shape == (1, 406)
    finally:
        paths.clear_extra_folders()

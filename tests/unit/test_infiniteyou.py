"""InfiniteYou maths: the released image_proj layout, loading / refusing files, tokens per identity.

Parity with the official ``Resampler`` (bytedance/InfiniteYou) at the released sizes (8 and 16 tokens)
was measured locally; these tests hold the layout, shapes and invariants.
"""

import pytest
import torch
from builders import infiniteyou as B

from visage.core.errors import ModelFileInvalid, VisageError
from visage.nodes.adapters.projection import Resampler
from visage.nodes.infiniteyou import model as M


@pytest.mark.parametrize("q", [8, 16])
def test_released_layout(q):
    with torch.device("meta"):
        m = Resampler(dim=1280, depth=4, dim_head=64, heads=20, num_queries=q, embedding_dim=512, output_dim=4096)
    assert sorted((k, tuple(v.shape)) for k, v in m.state_dict().items()) == sorted(B.resampler_layout(num_queries=q))


def test_load_and_tokens(tmp_path):
    sd = B.random_state_dict(B.resampler_layout(**B.TINY), seed=1)
    m, info = M.load_infiniteyou(B.write(str(tmp_path / "image_proj_model.bin"), sd))
    assert (info.num_tokens, info.output_dim, info.embedding_dim) == (4, 48, 512)
    assert not any(p.requires_grad for p in m.parameters())
    assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    e = torch.nn.functional.normalize(torch.randn(3, 512), dim=-1)
    t = M.identity_tokens(m, e)
    assert t.shape == (3, 4, 48) and t.dtype == torch.float32
    # each identity goes through alone: the same tokens as one at a time
    torch.testing.assert_close(t[1:2], M.identity_tokens(m, e[1:2]))
    assert not torch.allclose(t[0], t[1])
    with pytest.raises(VisageError, match="512-d"):
        M.identity_tokens(m, torch.randn(2, 256))


def test_refuses_other_files(tmp_path):
    sd = B.random_state_dict(B.resampler_layout(**B.TINY))
    instantid = {"image_proj": sd, "ip_adapter": {"1.to_k_ip.weight": torch.zeros(4, 4)}}
    torch.save(instantid, tmp_path / "ip-adapter.bin")
    with pytest.raises(ModelFileInvalid, match="InstantID"):
        M.load_infiniteyou(str(tmp_path / "ip-adapter.bin"))
    torch.save({"id_adapter.body.0.weight": torch.zeros(2, 2)}, tmp_path / "pulid_v1.bin")
    with pytest.raises(ModelFileInvalid, match="PuLID"):
        M.load_infiniteyou(str(tmp_path / "pulid_v1.bin"))
    torch.save([1, 2], tmp_path / "list.bin")
    with pytest.raises(ModelFileInvalid, match="not a dict"):
        M.load_infiniteyou(str(tmp_path / "list.bin"))
    broken = dict(sd)
    del broken["layers.0.0.to_q.weight"]
    with pytest.raises(ModelFileInvalid, match="not a resampler"):
        M.load_infiniteyou(B.write(str(tmp_path / "broken.bin"), broken))
    del sd["norm_out.bias"]
    with pytest.raises(ModelFileInvalid, match="not its tensors"):
        M.load_infiniteyou(B.write(str(tmp_path / "missing.bin"), sd))
    (tmp_path / "garbage.bin").write_bytes(b"not a torch file")
    with pytest.raises(ModelFileInvalid, match="cannot be read"):
        M.load_infiniteyou(str(tmp_path / "garbage.bin"))


# ------------------------------------------------------------------------------ apply (no ComfyUI)


class _Net:
    """Stands in for ComfyUI's ControlNet: records set_cond_hint's arguments."""

    def __init__(self):
        self.calls = []

    def copy(self):
        return self

    def set_cond_hint(self, hint, strength, window, vae=None):
        self.calls.append((tuple(hint.shape), strength, window, vae))
        return self

    def set_previous_controlnet(self, prev):
        return self


class _Handle:
    def __init__(self, m):
        self.m = m

    def model(self):
        return self.m


def _faces(n, seed=0):
    from visage.core.types import Face, FaceSet

    g = torch.Generator().manual_seed(seed)
    fs = []
    for i in range(n):
        e = torch.randn(512, generator=g)
        fs.append(
            Face(
                image_index=0,
                bbox=torch.tensor([0.0, 0, 40, 40]),
                score=0.9,
                kps=torch.tensor([[10.0, 12], [30, 12], [20, 20], [12, 30], [28, 30]]) + i,
                embedding=e,
                normed_embedding=e / e.norm(),
                encoder="recognition_arcface_ir_se50",
                embeddings={"recognition_arcface_ir_se50": e},
            )
        )
    return FaceSet(faces=(tuple(fs),), image_sizes=((48, 64),))


def test_apply_attaches_infusenet_with_the_tokens(tmp_path):
    from visage.nodes.infiniteyou import apply as A

    sd = B.random_state_dict(B.resampler_layout(**B.TINY), seed=2)
    m, info = M.load_infiniteyou(B.write(str(tmp_path / "p.bin"), sd))
    ref = A.InfiniteYouRef(_Handle(m), info, "p.bin")
    pos = [[torch.zeros(1, 3, 48), {"pooled_output": torch.zeros(1, 8)}]]
    neg = [[torch.ones(1, 3, 48), {}]]
    net = _Net()
    faces = _faces(1)
    p, n, hints = A.apply_infiniteyou(pos, neg, net, ref, 0.7, 0.1, 0.9, faces=faces, vae="VAE")
    assert "control" not in pos[0][1]  # the input conditioning is untouched
    want = M.identity_tokens(m, faces.flat()[0].normed_embedding[None])
    for c in (p, n):
        torch.testing.assert_close(c[0][1]["cross_attn_controlnet"], want)
        assert c[0][1]["control"] is net
    assert hints.shape == (1, 64, 64, 3) and float(hints.max()) == 0.0  # no pose: black
    assert net.calls[0] == ((1, 3, 64, 64), 0.7, (0.1, 0.9), "VAE")
    # a pose: keypoints drawn at the pose image's size
    _, _, h2 = A.apply_infiniteyou(pos, neg, _Net(), ref, 1.0, 0, 1, faces=faces, pose_faces=_faces(1), vae="V")
    assert h2.shape == (1, 48, 64, 3) and float(h2.max()) > 0.5
    # two identities: masks required, then one conditioning per identity
    with pytest.raises(VisageError, match="masks"):
        A.apply_infiniteyou(pos, neg, _Net(), ref, 1.0, 0, 1, faces=_faces(2))
    masks = torch.zeros(2, 48, 64)
    masks[0, :, :32] = 1
    masks[1, :, 32:] = 1
    p2, _, h3 = A.apply_infiniteyou(
        pos, neg, _Net(), ref, 1.0, 0, 1, faces=_faces(2), pose_faces=_faces(2), masks=masks
    )
    assert len(p2) == 2 and h3.shape[0] == 2
    assert not torch.equal(p2[0][1]["cross_attn_controlnet"], p2[1][1]["cross_attn_controlnet"])
    with pytest.raises(VisageError, match="end_at"):
        A.apply_infiniteyou(pos, neg, _Net(), ref, 1.0, 0.8, 0.2, faces=faces)

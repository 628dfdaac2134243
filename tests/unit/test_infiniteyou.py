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

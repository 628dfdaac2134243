"""FaceID Plus CLIP-vision features: the published negative (all-zero normalised pixels, not the 8-bit
rounded mean colour), the per-model feature cache, and the encoder-width check."""

import gc

import pytest
import torch

from visage.core.errors import VisageError
from visage.nodes.adapters import clip_features as C
from visage.nodes.adapters.identity import CLIP_MEAN, clip_crops_uncond

CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class FakeVision(torch.nn.Module):
    """ComfyUI CLIPVisionModelProjection call convention: forward(pixel_values=, intermediate_output=) ->
    (last, intermediate, pooled, projected); records what it was given."""

    def __init__(self, width=16):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, width, 14, 14)
        self.calls = []

    def forward(self, pixel_values, intermediate_output=None):
        self.calls.append((pixel_values.clone(), intermediate_output))
        x = self.proj(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([x.mean(1, keepdim=True), x], 1)
        return x * 2, x, x[:, 0], None


def test_zero_pixel_hidden_is_the_published_negative():
    m = FakeVision()
    h = C.zero_pixel_hidden(m, 224, "cpu")
    ((px, io),) = m.calls
    assert io == -2 and px.shape == (1, 3, 224, 224) and px.abs().max() == 0  # exact zeros, penultimate layer
    assert h.shape == (1, 257, 16) and not h.requires_grad
    # what the old path fed instead: the mean colour rounded to 8 bits by ComfyUI's clip_preprocess
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    img = clip_crops_uncond(1)[0].movedim(-1, 0)
    old = ((255 * img).round() / 255 - mean) / torch.tensor(CLIP_STD).view(3, 1, 1)
    assert old.abs().max() > 3e-3  # not zero: hence the direct zero input


def test_cache_per_model_and_crop():
    cache = C.ClipFeatureCache(max_items=3)
    m1, m2 = FakeVision(), FakeVision()
    crops = torch.rand(2, 224, 224, 3, generator=torch.Generator().manual_seed(0))
    n = {"enc": 0, "zero": 0}

    def enc(model):
        def f(x):
            n["enc"] += 1
            return model(pixel_values=x.movedim(-1, 1), intermediate_output=-2)[1]

        return f

    def zero(model):
        def f():
            n["zero"] += 1
            return C.zero_pixel_hidden(model, 224, "cpu")

        return f

    with torch.no_grad():
        c1, u1 = C.faceid_plus_clip_features(crops, enc(m1), zero(m1), cache, m1)
        c2, u2 = C.faceid_plus_clip_features(crops.clone(), enc(m1), zero(m1), cache, m1)
    assert n == {"enc": 1, "zero": 1} and c2 is c1
    assert c1.shape == (2, 257, 16) and u1.shape == (2, 257, 16) and c1.dtype == torch.float32
    torch.testing.assert_close(u1[0], u1[1])
    # one changed pixel -> new features
    other = crops.clone()
    other[0, 100, 100, 0] += 1 / 255
    with torch.no_grad():
        c3, _ = C.faceid_plus_clip_features(other, enc(m1), zero(m1), cache, m1)
    assert n["enc"] == 2 and not torch.equal(c3, c1)
    # another model has its own entries (not the first model's features)
    with torch.no_grad():
        c4, u4 = C.faceid_plus_clip_features(crops, enc(m2), zero(m2), cache, m2)
    assert n == {"enc": 3, "zero": 2} and not torch.equal(c4, c1)
    # LRU bound per model: m1 holds zero + 2 crops; two more crops evict the oldest
    for k in range(2):
        with torch.no_grad():
            C.faceid_plus_clip_features(crops + (k + 2) / 255, enc(m1), zero(m1), cache, m1)
    assert len(cache._by_model[m1]) == 3
    # weakly held: a model that goes away takes its entries with it
    del m2, c4, u4
    gc.collect()
    assert len(cache._by_model) == 1


def test_cache_without_weakref_still_computes():
    cache = C.ClipFeatureCache()
    calls = []
    assert cache.get(1, "k", lambda: calls.append(1) or torch.ones(1)).item() == 1  # ints are not weak-referenceable
    assert cache.get(1, "k", lambda: calls.append(1) or torch.ones(1)).item() == 1
    assert len(calls) == 2


def test_crops_key_exact():
    a = torch.rand(1, 8, 8, 3)
    assert C.crops_key(a) == C.crops_key(a.clone())
    assert C.crops_key(a) != C.crops_key(a[:, :, :, [2, 1, 0]])
    assert C.crops_key(a) != C.crops_key(a.double())


def test_wrong_encoder_width_and_shape_are_clear_errors():
    C.check_clip_width(torch.zeros(1, 257, 1280), 1280)
    with pytest.raises(VisageError, match="ViT-L-14.*1024|1024.*ViT-L-14") as e:
        C.check_clip_width(torch.zeros(1, 257, 1024), 1280)
    assert "ViT-H-14" in str(e.value)
    with pytest.raises(VisageError, match="unexpected shape"):
        C.faceid_plus_clip_features(
            torch.zeros(1, 4, 4, 3),
            lambda x: torch.zeros(1, 1280),
            lambda: torch.zeros(1, 5, 1280),
            C.ClipFeatureCache(),
            FakeVision(),
        )

"""Arc2Face encoding through ComfyUI's own CLIP loader == Arc2Face's published project_face_embs maths
written with transformers' CLIPTextModel (float32, tol 1e-4). In-process (no server)."""

import os
import sys

import pytest
import torch
from builders import adapters as B

COMFY = os.environ.get("COMFYUI_PATH", "/opt/ComfyUI")


@pytest.fixture(scope="module")
def comfy_sd():
    if not os.path.isfile(os.path.join(COMFY, "comfy", "sd.py")):
        pytest.skip("ComfyUI not found")
    if COMFY not in sys.path:
        sys.path.insert(0, COMFY)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.sd

    return comfy.sd


def _reference(sd, emb, prompt="photo of a id person"):
    """Arc2Face: token embeddings of the prompt, the 'id' token's replaced by the zero-padded normalised
    ArcFace embedding, then the CLIP text transformer; last_hidden_state is the conditioning."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(os.path.join(COMFY, "comfy", "sd1_tokenizer"))
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    )
    model = CLIPTextModel(cfg).eval()
    want = set(model.state_dict())
    fixed = {(k if k in want else k[len("text_model.") :]): v.float() for k, v in sd.items()}  # transformers 4/5 names
    missing, unexpected = model.load_state_dict(fixed, strict=False)
    assert not [m for m in missing if "position_ids" not in m] and not unexpected
    ids = tok(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    id_token = tok.encode("id", add_special_tokens=False)[0]
    e = emb / emb.norm(dim=-1, keepdim=True)
    padded = torch.nn.functional.pad(e, (0, 768 - e.shape[-1]))

    def hook(_m, _inp, out):
        out = out.clone()
        out[ids == id_token] = padded
        return out

    h = model.get_input_embeddings().register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(input_ids=ids).last_hidden_state
    finally:
        h.remove()


def test_arc2face_conditioning_matches_published_maths(comfy_sd, tmp_path):
    from safetensors.torch import save_file

    from visage.nodes.adapters.identity import ARC2FACE_PLACEHOLDER, ARC2FACE_PROMPT, arc2face_tokens

    sd = {k: v.float() for k, v in B.tiny_clip_l(3).items()}
    g = torch.Generator().manual_seed(0)
    for i in range(1, 12):  # make every layer count in this test
        for k in list(sd):
            if k.startswith(f"text_model.encoder.layers.{i}.") and ("proj" in k or "fc" in k) and k.endswith("weight"):
                sd[k] = torch.randn(sd[k].shape, generator=g) * sd[k].shape[1] ** -0.5
    path = str(tmp_path / "arc2face_encoder.safetensors")
    save_file(sd, path)
    clip = comfy_sd.load_clip(
        ckpt_paths=[path], clip_type=comfy_sd.CLIPType.STABLE_DIFFUSION, model_options={"dtype": torch.float32}
    )
    emb = torch.randn(512, generator=g) * 20  # raw ArcFace scale; the maths normalises it
    tokens = clip.tokenize(ARC2FACE_PROMPT)
    placeholder = clip.tokenize(ARC2FACE_PLACEHOLDER)["l"][0][1][0]
    tokens["l"] = arc2face_tokens(tokens["l"], placeholder, emb, 768)
    ours = clip.encode_from_tokens(tokens)
    ref = _reference(sd, emb.unsqueeze(0))
    assert ours.shape == ref.shape == (1, 77, 768)
    torch.testing.assert_close(ours.float(), ref, atol=1e-4, rtol=1e-4)
    # the identity matters: another embedding gives another conditioning
    tokens2 = clip.tokenize(ARC2FACE_PROMPT)
    tokens2["l"] = arc2face_tokens(tokens2["l"], placeholder, torch.randn(512, generator=g), 768)
    assert (clip.encode_from_tokens(tokens2) - ours).abs().max() > 1e-3

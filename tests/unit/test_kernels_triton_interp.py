"""The Triton kernels against their torch twins on the CPU, through Triton's interpreter.

``TRITON_INTERPRET=1`` is read by ``@triton.jit`` when a kernel module is imported (the decorator
picks the interpreter then), so the cases run in ONE subprocess started with that variable; the
rest of the test session never sees it. The subprocess first runs a trivial Triton kernel: if that
fails (no Triton, an interpreter that cannot run here) every test here skips with the reason; if
OUR kernels fail or disagree, the tests fail.

Run by hand: ``TRITON_INTERPRET=1 .venv/bin/python tests/unit/test_kernels_triton_interp.py``.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))


# ------------------------------------------------------------------------------------------------
# the cases (run inside the TRITON_INTERPRET=1 subprocess)
# ------------------------------------------------------------------------------------------------
def _mat(cx, cy, face_px, s, ang):
    import torch

    a = math.radians(ang)
    sc = s / face_px
    c, sn = math.cos(a) * sc, math.sin(a) * sc
    m = torch.tensor([[c, -sn, 0.0], [sn, c, 0.0]])
    centre = m[:, :2] @ torch.tensor([float(cx), float(cy)])
    m[:, 2] = s / 2.0 - centre
    return m


def _paste_cases(reference, tp):
    import torch

    g = torch.Generator().manual_seed(0)
    res = {}
    H, W, S = 23, 31, 9  # odd sizes
    faces = [
        (0, 10, 10, 12, 20),
        (1, 0, 20, 14, -30),
        (1, 5, 5, 10, 60),
        (1, 7, 6, 11, 10),  # overlap
        (0, 30, 0, 9, 45),
        (0, -20, -20, 8, 0),
        (1, 31, 23, 13, -80),
    ]  # edges/outside
    M = torch.stack([_mat(cx, cy, px, S, a) for (_, cx, cy, px, a) in faces])
    fi = torch.tensor([f[0] for f in faces])
    fr = torch.rand(2, H, W, 3, generator=g)
    cr = torch.rand(len(faces), S, S, 3, generator=g)
    mk = torch.rand(len(faces), S, S, generator=g)
    lab = torch.stack([reference.lab_stats(cr, mk), reference.lab_stats((cr * 0.5 + 0.3), mk)], 1)
    fr8, cr8 = (fr * 255).round().to(torch.uint8), (cr * 255).round().to(torch.uint8)
    for name, f, c, st in (
        ("paste_f32", fr, cr, None),
        ("paste_f32_lab", fr, cr, lab),
        ("paste_u8", fr8, cr8, None),
        ("paste_u8_lab", fr8, cr8, lab),
        ("paste_f16", fr.half(), cr, None),
        ("paste_bf16_u8crops", fr.bfloat16(), cr8, None),
    ):
        before = f.clone()
        a = reference.paste_back(f, c, M, mk, fi, st)
        b = tp.paste_back(f, c, M, mk, fi, st)
        res[name] = {
            "diff": float((a.float() - b.float()).abs().max()),
            "dtype_ok": a.dtype == b.dtype == f.dtype,
            "changed": float((b.float() - f.float()).abs().max()),
            "input_kept": bool(torch.equal(f, before)),
        }
    # 4 channels (RGBA-like) and a single face far outside (no launch at all)
    f4 = torch.rand(1, 15, 17, 4, generator=g)
    c4 = torch.rand(1, 7, 7, 4, generator=g)
    m4 = torch.ones(1, 7, 7)
    M4 = _mat(8, 7, 9, 7, 33)[None]
    res["paste_c4"] = {
        "diff": float(
            (
                reference.paste_back(f4, c4, M4, m4, torch.zeros(1, dtype=torch.long))
                - tp.paste_back(f4, c4, M4, m4, torch.zeros(1, dtype=torch.long))
            )
            .abs()
            .max()
        )
    }
    Mo = _mat(500, 500, 9, 7, 0)[None]
    out = tp.paste_back(f4, c4, Mo, m4, torch.zeros(1, dtype=torch.long))
    res["paste_outside"] = {"equal": bool(torch.equal(out, f4))}
    return res


def _align_cases(reference, ta):
    import torch

    g = torch.Generator().manual_seed(1)
    res = {}
    fr = torch.rand(3, 21, 29, 3, generator=g)
    faces = [(0, 10, 10, 12, 17, 20), (2, 0, 20, 14, 17, -30), (1, 28, 0, 40, 17, 90), (2, 12, 11, 9, 17, 0)]
    M = torch.stack([_mat(cx, cy, px, s, a) for (_, cx, cy, px, s, a) in faces])
    fi = torch.tensor([f[0] for f in faces])
    opts = {
        "plain": {},
        "arcface": dict(mean=127.5, std=127.5, bgr=True),
        "perchan_nhwc_f16": dict(mean=(1.0, 2.0, 3.0), std=(50.0, 60.0, 70.0), layout="NHWC", out_dtype=torch.float16),
        "inswapper_bf16": dict(mean=0.0, std=255.0, bgr=True, out_dtype=torch.bfloat16),
    }
    for fname, f in (("f32", fr), ("u8", (fr * 255).round().to(torch.uint8)), ("f16", fr.half())):
        for oname, kw in opts.items():
            a = reference.align_crops(f, M, fi, 17, **kw)
            b = ta.align_crops(f, M, fi, 17, **kw)
            ok = a.shape == b.shape and a.dtype == b.dtype
            rel = float(((a.float() - b.float()).abs() / (a.float().abs() + 1.0)).max())
            res[f"align_{fname}_{oname}"] = {"shape_ok": ok, "rel": rel}
    # round_to_uint8 (cv2-on-uint8 emulation): compared in 0..255 gray levels, before normalisation
    ropts = {
        "round_plain_nhwc": dict(layout="NHWC"),
        "round_arcface": dict(mean=127.5, std=127.5, bgr=True),
        "round_perchan_f16": dict(mean=(1.0, 2.0, 3.0), std=(50.0, 60.0, 70.0), bgr=True, out_dtype=torch.float16),
    }
    fr2 = fr * 1.2 - 0.1  # float frames outside 0..1: the clamp to 0..255 is exercised
    for fname, f in (("f32", fr2), ("u8", (fr * 255).round().to(torch.uint8)), ("f16", fr2.half())):
        for oname, kw in ropts.items():
            a = reference.align_crops(f, M, fi, 17, round_to_uint8=True, **kw)
            b = ta.align_crops(f, M, fi, 17, round_to_uint8=True, **kw)
            ok = a.shape == b.shape and a.dtype == b.dtype
            shp = (1, -1, 1, 1) if kw.get("layout", "NCHW") == "NCHW" else (1, 1, 1, -1)
            sd = torch.as_tensor(kw.get("std", 1.0), dtype=torch.float32).reshape(shp)
            mn = torch.as_tensor(kw.get("mean", 0.0), dtype=torch.float32).reshape(shp)
            la, lb = a.float() * sd + mn, b.float() * sd + mn  # back to gray levels
            d = (la - lb).abs()
            res[f"align_{fname}_{oname}"] = {
                "shape_ok": ok,
                "levels": float(d.max()),
                "frac_off": float((d > 0.5).float().mean()),
                "integral": float((lb - lb.round()).abs().max()),
                "lo": float(lb.min()),
                "hi": float(lb.max()),
            }
    return res


def _attention_cases(reference, tt):
    import torch

    g = torch.Generator().manual_seed(2)
    res = {}
    shapes = {  # B, H, Lq, Lt, I, T, D, Dv
        "small": (2, 3, 37, 11, 3, 4, 16, 16),
        "multi_block_text_and_identity": (1, 2, 70, 150, 2, 70, 24, 24),  # several key blocks per group
        "sd15_head40_dv_differs": (1, 1, 20, 77, 1, 16, 40, 48),
        "batch64": (64, 1, 5, 7, 2, 4, 16, 16),
    }
    for name, (B, H, Lq, Lt, I, T, D, Dv) in shapes.items():
        q = torch.randn(B, H, Lq, D, generator=g)
        k = torch.randn(B, H, Lt, D, generator=g)
        v = torch.randn(B, H, Lt, Dv, generator=g)
        kid = torch.randn(B, H, I, T, D, generator=g)
        vid = torch.randn(B, H, I, T, Dv, generator=g)
        for sname, sc, mk in (
            ("float", 0.7, None),
            ("bi_masked", torch.rand(B, I, generator=g) * 2 - 0.5, torch.rand(B, I, Lq, generator=g)),
        ):
            a = reference.decoupled_attention(q, k, v, kid, vid, sc, mk)
            b = tt.decoupled_attention(q, k, v, kid, vid, sc, mk)
            res[f"attn_{name}_{sname}"] = {"diff": float((a - b).abs().max()), "shape_ok": a.shape == b.shape}
    # non-contiguous inputs (heads-major views, as attention patches often pass them)
    B, H, Lq, Lt, I, T, D = 2, 2, 19, 9, 2, 3, 16
    q = torch.randn(B, Lq, H, D, generator=g).transpose(1, 2)
    k = torch.randn(B, Lt, H, D, generator=g).transpose(1, 2)
    kid = torch.randn(B, I, T, H, D, generator=g).permute(0, 3, 1, 2, 4)
    a = reference.decoupled_attention(q, k, k, kid, kid, [0.3, 1.1])
    b = tt.decoupled_attention(q, k, k, kid, kid, [0.3, 1.1])
    res["attn_strided"] = {"diff": float((a - b).abs().max()), "shape_ok": a.shape == b.shape}
    return res


def _probe():
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def add(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        o = tl.arange(0, BLOCK)
        tl.store(y_ptr + o, tl.load(x_ptr + o, mask=o < n) + 1.0, mask=o < n)

    x = torch.arange(5, dtype=torch.float32)
    y = torch.empty_like(x)
    add[(1,)](x, y, 5, BLOCK=8)
    assert torch.equal(y, x + 1)


def _main():
    out = {}
    try:
        _probe()
    except Exception as e:  # the interpreter itself cannot run here
        print(json.dumps({"unavailable": f"{type(e).__name__}: {e}"}))
        return
    from visage.kernels import reference, triton_align, triton_attention, triton_paste

    for fn, mod in ((_paste_cases, triton_paste), (_align_cases, triton_align), (_attention_cases, triton_attention)):
        try:
            out.update(fn(reference, mod))
        except Exception:
            import traceback

            out[fn.__name__] = {"error": traceback.format_exc()[-3000:]}
    print("RESULTS " + json.dumps(out))


# ------------------------------------------------------------------------------------------------
# the tests (normal pytest process)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def results():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed, so its interpreter cannot run the fused kernels")
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, HERE], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULTS ") or ln.startswith('{"unavailable"')]
    assert r.returncode == 0 and lines, f"interpreter run crashed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    if lines[-1].startswith('{"unavailable"'):
        pytest.skip("Triton's interpreter cannot run here: " + json.loads(lines[-1])["unavailable"])
    return json.loads(lines[-1][len("RESULTS ") :])


def _get(results, key):
    for group in ("_paste_cases", "_align_cases", "_attention_cases"):
        if group in results and key.startswith(
            {"_paste_cases": "paste", "_align_cases": "align", "_attention_cases": "attn"}[group]
        ):
            pytest.fail(f"{group} raised:\n{results[group]['error']}")
    assert key in results, sorted(results)
    return results[key]


@pytest.mark.parametrize(
    "name,tol",
    [
        ("paste_f32", 1e-5),
        ("paste_f32_lab", 1e-4),
        ("paste_f16", 1e-3),
        ("paste_bf16_u8crops", 8e-3),
        ("paste_u8", 1.0),
        ("paste_u8_lab", 1.0),
    ],
)
def test_fused_paste_matches_twin(results, name, tol):
    """uint8: at most one level (the kernel rounds half up, torch rounds half to even); halves: one ulp."""
    r = _get(results, name)
    assert r["diff"] <= tol, r
    assert r["dtype_ok"] and r["input_kept"], r
    assert r["changed"] > (20 if "u8" in name and "crops" not in name else 0.05)  # it really pasted


def test_fused_paste_four_channels_and_outside(results):
    assert _get(results, "paste_c4")["diff"] <= 1e-5
    assert _get(results, "paste_outside")["equal"]


def test_fused_align_matches_twin(results):
    keys = [k for k in results if k.startswith("align_") and "_round_" not in k]
    _get(results, "align_f32_plain")
    assert len(keys) == 12
    for k in keys:
        r = results[k]
        assert r["shape_ok"], k
        tol = 1e-5 if ("f16" not in k and "bf16" not in k) else (8e-3 if "bf16" in k else 1e-3)
        assert r["rel"] <= tol, (k, r)


def test_fused_align_round_to_uint8_matches_twin(results):
    """The kernel's ROUND flag = the twin's round_to_uint8: the same float operations in the same
    order (no FMA contraction), so the same gray levels; every value is a whole gray level in 0..255
    (clamped: the float frames reach outside 0..1). A float16 output stores (p - mean) / std with a
    relative error of 2**-11, i.e. up to 255 * 2**-11 = 0.125 level once mapped back."""
    keys = [k for k in results if k.startswith("align_") and "_round_" in k]
    _get(results, "align_u8_round_arcface")
    assert len(keys) == 9
    for k in keys:
        r = results[k]
        assert r["shape_ok"], k
        half = "f16" in k.split("_round_")[1]
        assert r["levels"] <= (0.05 if half else 1e-3), (k, r)
        assert r["frac_off"] == 0.0, (k, r)
        assert r["integral"] <= (0.13 if half else 1e-3), (k, r)
        assert r["lo"] >= -1e-3 and r["hi"] <= 255.0 + (0.13 if half else 1e-3), (k, r)
    assert results["align_f32_round_plain_nhwc"]["lo"] == 0.0 and results["align_f32_round_plain_nhwc"]["hi"] == 255.0


def test_fused_attention_matches_twin(results):
    keys = [k for k in results if k.startswith("attn_")]
    _get(results, "attn_small_float")
    assert len(keys) == 9
    for k in keys:
        r = results[k]
        assert r["shape_ok"] and r["diff"] <= 2e-5, (k, r)


# ------------------------------------------------------------------------------------------------
# ahead-of-time compilation for a Hopper GPU (no GPU needed): catches what the interpreter lets
# through (dtype rules of tl.dot, int64 promotion, constexpr branches) before a GPU run
# ------------------------------------------------------------------------------------------------
def _compile_cases():
    """(name, jit fn, {arg: type}, {constexpr: value}) for one variant of each kernel family."""
    from visage.kernels import triton_align as ta
    from visage.kernels import triton_attention as tt
    from visage.kernels import triton_paste as tp

    ints = {"H": "i32", "W": "i32", "S": "i32"}
    cases = [
        (
            "paste_u8_lab",
            tp._paste_kernel,
            dict(
                out_ptr="*u8",
                crops_ptr="*u8",
                masks_ptr="*fp32",
                params_ptr="*i32",
                fparams_ptr="*fp32",
                lab_ptr="*fp32",
                faces_ptr="*i32",
                **ints,
            ),
            dict(C=3, CROP_U8=True, OUT_U8=True, HAS_LAB=True, BLOCK=256),
        ),
        (
            "paste_f16_plain",
            tp._paste_kernel,
            dict(
                out_ptr="*fp16",
                crops_ptr="*fp32",
                masks_ptr="*fp16",
                params_ptr="*i32",
                fparams_ptr="*fp32",
                lab_ptr="*fp32",
                faces_ptr="*i32",
                **ints,
            ),
            dict(C=3, CROP_U8=False, OUT_U8=False, HAS_LAB=False, BLOCK=256),
        ),
        (
            "align_u8_bgr_nchw",
            ta._align_kernel,
            dict(
                frames_ptr="*u8",
                out_ptr="*fp32",
                inv_ptr="*fp32",
                fidx_ptr="*i32",
                mean_ptr="*fp32",
                std_ptr="*fp32",
                **ints,
            ),
            dict(C=3, IS_U8=True, BGR=True, NCHW=True, BLOCK=256, ROUND=False),
        ),
        (
            "align_u8_round_nchw_f16",
            ta._align_kernel,
            dict(
                frames_ptr="*u8",
                out_ptr="*fp16",
                inv_ptr="*fp32",
                fidx_ptr="*i32",
                mean_ptr="*fp32",
                std_ptr="*fp32",
                **ints,
            ),
            dict(C=3, IS_U8=True, BGR=False, NCHW=True, BLOCK=256, ROUND=True),
        ),
    ]
    for dt, masked, bd in (("fp16", True, 64), ("bf16", False, 128)):
        types_ = {n: "i32" for n in tt._decoupled_kernel.arg_names}
        types_.update({n: "*" + dt for n in ("q_ptr", "k_ptr", "v_ptr", "kid_ptr", "vid_ptr", "o_ptr")})
        types_.update(scale_ptr="*fp32", mask_ptr="*fp32", qk_scale="fp32")
        cases.append(
            (
                f"attention_{dt}_{'masked' if masked else 'plain'}_d{bd}",
                tt._decoupled_kernel,
                types_,
                dict(HAS_MASK=masked, BLOCK_M=64, BLOCK_N=64, BLOCK_T=16, BLOCK_D=bd, BLOCK_DV=bd, IEEE=False),
            )
        )
    return cases


def test_kernels_compile_for_hopper():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 in this process: kernels are interpreted, not compiled")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip(f"Triton's bundled ptxas is missing ({ptxas}); cannot compile for CUDA here")
    target = GPUTarget("cuda", 90, 32)
    for name, fn, types_, consts in _compile_cases():
        unknown = set(types_) - set(fn.arg_names)
        assert not unknown, f"{name}: kernel has no argument(s) {unknown}"
        sig = {n: ("constexpr" if n in consts else types_.get(n, "fp32")) for n in fn.arg_names}
        cx = {(fn.arg_names.index(k),): v for k, v in consts.items()}
        k = triton.compile(
            ASTSource(fn=fn, signature=sig, constexprs=cx),
            target=target,
            options={"enable_fp_fusion": not name.startswith(("paste", "align"))},
        )
        assert k.asm.get("cubin"), f"{name}: no cubin produced"


if __name__ == "__main__":
    _main()

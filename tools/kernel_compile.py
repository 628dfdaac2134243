"""Compile every fused Triton kernel for real NVIDIA targets on a machine without a GPU.

    python tools/kernel_compile.py                       # sm_80, sm_86, sm_89, sm_90, sm_120: table
    python tools/kernel_compile.py --arch 90 --json out.json --check

The Triton interpreter (``TRITON_INTERPRET=1``, tests/unit/test_kernels_triton_interp.py) checks what
the kernels compute; it never runs Triton's compiler, so a kernel that the interpreter accepts can
still fail to compile (type promotion, layouts, shared memory) on the first GPU call. This tool runs
the REAL compiler (Triton -> TTIR -> TTGIR -> LLVM -> PTX -> ptxas -> cubin) for each target:

* the kernels are reached through OUR host wrappers (``kernels/triton_*.py``), called with CPU tensors
  of the dtypes and shapes the nodes use, so the argument marshalling, constexpr choices, block sizes
  and specialisations are exactly the ones a GPU run compiles;
* Triton's active driver is replaced by a stand-in that reports the chosen compute capability, and
  each kernel's ``[grid](...)`` launch is turned into a compile-only warm-up: nothing is launched;
* ptxas' own resource report is kept: registers per thread, spill bytes, shared memory, and the
  resulting occupancy bound (resident warps per SM from registers and shared memory).

``--check`` exits 1 when a kernel fails to compile, needs more shared memory than the target allows
per block, or spills registers in a memory-bound kernel (paste / align). Nothing here needs CUDA,
a driver or a GPU; it needs Triton's bundled ptxas (shipped in the triton wheel).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import time

# `visage` (imported below, where needed) is the repository, installed editable by scripts/setup.sh

# Per-target limits (CUDA C Programming Guide, "Technical Specifications per Compute Capability"):
# max shared memory per block (opt-in), registers per SM, max resident warps per SM, shared per SM.
TARGETS = {
    80: dict(name="A100 (sm_80)", smem_block=163 * 1024, smem_sm=164 * 1024, regs_sm=65536, warps_sm=64),
    86: dict(name="RTX 30xx (sm_86)", smem_block=99 * 1024, smem_sm=100 * 1024, regs_sm=65536, warps_sm=48),
    89: dict(name="RTX 40xx / L4 (sm_89)", smem_block=99 * 1024, smem_sm=100 * 1024, regs_sm=65536, warps_sm=48),
    90: dict(name="H100 / H200 (sm_90)", smem_block=227 * 1024, smem_sm=228 * 1024, regs_sm=65536, warps_sm=64),
    120: dict(name="RTX 50xx (sm_120)", smem_block=99 * 1024, smem_sm=100 * 1024, regs_sm=65536, warps_sm=48),
}
DEFAULT_ARCHES = (80, 86, 89, 90, 120)
MEMORY_BOUND = ("paste", "align")  # spills there are a defect (--check); attention is reported


# ------------------------------------------------------------------------------------------------
# compile-only launches under a stand-in driver
# ------------------------------------------------------------------------------------------------
def _fake_driver(arch: int):
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class CompileOnlyDriver(DriverBase):
        """Reports a CUDA target of the chosen capability; never touches a device."""

        @classmethod
        def is_active(cls):
            return True

        def map_python_to_cpp_type(self, ty):  # only launchers use it; we never build one
            raise NotImplementedError

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            raise NotImplementedError

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def set_current_device(self, device):
            pass

    return CompileOnlyDriver()


class _CompileOnly:
    """Stands in for a @triton.jit kernel object: ``k[grid](...)`` compiles and records, never launches."""

    def __init__(self, fn, sink):
        self.fn, self.sink = fn, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            t0 = time.perf_counter()
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                kernel = self.fn.run(*args, grid=grid, warmup=True, **kwargs)
            self.sink.append((kernel, time.perf_counter() - t0, log.getvalue(), grid, kwargs))
            return kernel

        return launch


@contextlib.contextmanager
def compile_only(arch: int, modules):
    """Within: Triton targets ``arch`` and every kernel in ``modules`` compiles instead of launching."""
    from triton import knobs
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    sink = []
    saved = []
    for mod in modules:
        for name, obj in list(vars(mod).items()):
            if isinstance(obj, JITFunction) and name.endswith("_kernel"):
                saved.append((mod, name, obj))
                obj.device_caches.clear()  # binder/target are cached per device: rebuild for arch
                setattr(mod, name, _CompileOnly(obj, sink))
    old_log = knobs.nvidia.dump_ptxas_log
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v report is printed: we capture it
    old_driver = driver._active  # None = lazily created on next use
    driver.set_active(_fake_driver(arch))
    try:
        yield sink
    finally:
        driver._active = old_driver
        knobs.nvidia.dump_ptxas_log = old_log
        for mod, name, obj in saved:
            obj.device_caches.clear()
            setattr(mod, name, obj)


_RE_REGS = re.compile(r"Used (\d+) registers")
_RE_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_RE_SMEM = re.compile(r"(\d+) bytes smem")


def ptxas_stats(log: str) -> dict:
    regs = [int(x) for x in _RE_REGS.findall(log)]
    spills = [(int(a), int(b)) for a, b in _RE_SPILL.findall(log)]
    smem = [int(x) for x in _RE_SMEM.findall(log)]
    return {
        "registers": max(regs) if regs else None,
        "spill_stores": max((a for a, _ in spills), default=0),
        "spill_loads": max((b for _, b in spills), default=0),
        "ptxas_smem": max(smem) if smem else 0,
    }


def occupancy(arch: int, num_warps: int, regs: int, smem: int) -> dict:
    """Resident warps per SM allowed by registers (256-register warp granules) and shared memory."""
    t = TARGETS[arch]
    regs_warp = ((max(regs or 0, 1) * 32 + 255) // 256) * 256
    by_regs = t["regs_sm"] // (regs_warp * num_warps) if regs else t["warps_sm"] // num_warps
    by_smem = t["smem_sm"] // smem if smem else by_regs
    blocks = max(0, min(by_regs, by_smem, t["warps_sm"] // num_warps))
    return {
        "blocks_per_sm": blocks,
        "warps_per_sm": blocks * num_warps,
        "occupancy": round(blocks * num_warps / t["warps_sm"], 3),
    }


# ------------------------------------------------------------------------------------------------
# the variants: the dtypes / flags / shapes the nodes use, through the real host wrappers
# ------------------------------------------------------------------------------------------------
def _paste_variants():
    import torch

    g = torch.Generator().manual_seed(0)

    def case(frame_dt, crop_dt, lab, n_frames=2, faces=((0, 0.0), (1, 12.0), (1, -30.0)), S=128):
        import math

        from visage.kernels import reference

        H, W = 72, 96
        fr = torch.rand(n_frames, H, W, 3, generator=g)
        fr = (fr * 255).round().to(torch.uint8) if frame_dt == torch.uint8 else fr.to(frame_dt)
        cr = torch.rand(len(faces), S, S, 3, generator=g)
        cr = (cr * 255).round().to(torch.uint8) if crop_dt == torch.uint8 else cr.to(crop_dt)
        mk = torch.rand(len(faces), S, S, generator=g)
        mats = []
        for i, (_, ang) in enumerate(faces):
            a = math.radians(ang)
            sc = S / 40.0
            m = torch.tensor([[math.cos(a) * sc, -math.sin(a) * sc, 0.0], [math.sin(a) * sc, math.cos(a) * sc, 0.0]])
            m[:, 2] = S / 2.0 - m[:, :2] @ torch.tensor([30.0 + 20 * i, 36.0])
            mats.append(m)
        M = torch.stack(mats)
        fi = torch.tensor([f[0] for f in faces])
        st = None
        if lab:
            crf = cr.float() / 255.0 if crop_dt == torch.uint8 else cr.float()
            st = torch.stack([reference.lab_stats(crf, mk), reference.lab_stats(crf * 0.8, mk)], 1)
        return fr, cr, M, mk, fi, st

    def runner(frame_dt, crop_dt, lab):
        def run(mod):
            mod.paste_back(*case(frame_dt, crop_dt, lab))

        return run

    u8, f32, f16, bf16 = torch.uint8, torch.float32, torch.float16, torch.bfloat16
    return [
        ("paste", "uint8 frame, uint8 crop", runner(u8, u8, False)),
        ("paste", "uint8 frame, uint8 crop, LAB", runner(u8, u8, True)),
        ("paste", "float32 frame, float32 crop (ComfyUI IMAGE)", runner(f32, f32, False)),
        ("paste", "float32 frame, float32 crop, LAB", runner(f32, f32, True)),
        ("paste", "float16 frame, float32 crop", runner(f16, f32, False)),
        ("paste", "bfloat16 frame, uint8 crop, LAB", runner(bf16, u8, True)),
    ]


def _align_variants():
    import torch

    g = torch.Generator().manual_seed(1)

    def runner(frame_dt, size, bgr, layout, out_dt, mean, std, **extra):
        def run(mod):
            fr = torch.rand(2, 80, 120, 3, generator=g)
            fr = (fr * 255).round().to(torch.uint8) if frame_dt == torch.uint8 else fr.to(frame_dt)
            M = torch.tensor([[[1.1, 0.2, -10.0], [-0.2, 1.1, 4.0]], [[0.9, -0.1, 3.0], [0.1, 0.9, -2.0]]])
            mod.align_crops(
                fr, M, torch.tensor([0, 1]), size, mean=mean, std=std, bgr=bgr, layout=layout, out_dtype=out_dt, **extra
            )

        return run

    u8, f32, f16 = torch.uint8, torch.float32, torch.float16
    return [
        (
            "align",
            "ArcFace 112: uint8 -> float32 NCHW, (x-127.5)/127.5",
            runner(u8, 112, False, "NCHW", f32, 127.5, 127.5),
        ),
        ("align", "inswapper 128: float32 -> float32 NCHW, x/255", runner(f32, 128, False, "NCHW", f32, 0.0, 255.0)),
        (
            "align",
            "FFHQ 512: float32 -> float16 NCHW, per-channel",
            runner(f32, 512, False, "NCHW", f16, (127.5, 120.0, 110.0), (127.5, 127.5, 127.5)),
        ),
        ("align", "BGR 112 (mobileface): float32 -> NCHW", runner(f32, 112, True, "NCHW", f32, 127.5, 128.0)),
        ("align", "NHWC crops 0..1 (paste originals)", runner(f32, 128, False, "NHWC", f32, 0.0, 255.0)),
        (
            "align",
            "ArcFace 112, cv2 uint8 rounding",
            runner(u8, 112, False, "NCHW", f32, 127.5, 127.5, round_to_uint8=True),
        ),
    ]


def _attention_variants():
    import torch

    g = torch.Generator().manual_seed(2)

    def runner(dt, heads, D, Lq, Lt, n_id, T, mask):
        def run(mod):
            B = 2
            q = torch.randn(B, heads, Lq, D, generator=g).to(dt)
            k = torch.randn(B, heads, Lt, D, generator=g).to(dt)
            v = torch.randn(B, heads, Lt, D, generator=g).to(dt)
            kid = torch.randn(B, heads, n_id, T, D, generator=g).to(dt)
            vid = torch.randn(B, heads, n_id, T, D, generator=g).to(dt)
            scale = torch.full((B, n_id), 0.8)
            rm = torch.rand(B, n_id, Lq, generator=g) if mask else None
            mod.decoupled_attention(q, k, v, kid, vid, scale, rm)

        return run

    f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
    return [
        ("attention", "SDXL fp16: 10 heads x 64, 77 text + 16 id tokens", runner(f16, 10, 64, 256, 77, 1, 16, False)),
        ("attention", "SDXL bf16: 20 heads x 64, 2 ids + region masks", runner(bf16, 20, 64, 256, 77, 2, 16, True)),
        ("attention", "SD1.5 fp16: 8 heads x 40, 4 id tokens", runner(f16, 8, 40, 256, 77, 1, 4, False)),
        ("attention", "fp32 (IEEE dots): 10 heads x 64", runner(f32, 10, 64, 256, 77, 1, 16, True)),
        ("attention", "fp16 head dim 128 (Flux-like widths)", runner(f16, 4, 128, 256, 77, 1, 16, False)),
        ("attention", "fp32 head dim 128 (IEEE dots)", runner(f32, 4, 128, 256, 77, 1, 16, False)),
    ]


def variants():
    return _paste_variants() + _align_variants() + _attention_variants()


def _modules():
    from visage.kernels import triton_align, triton_attention, triton_paste

    return {"paste": triton_paste, "align": triton_align, "attention": triton_attention}


def compile_all(arches, only=None, log=None):
    """Compile every variant for every arch; returns a list of result records.

    Uses a fresh Triton cache directory so every kernel really goes through the compiler and ptxas
    (a cached cubin would carry no ptxas report and prove nothing about this Triton).
    """
    import shutil
    import tempfile

    os.environ.pop("TRITON_INTERPRET", None)
    old_cache = os.environ.get("TRITON_CACHE_DIR")
    cache = tempfile.mkdtemp(prefix="visage-kernel-compile-")
    os.environ["TRITON_CACHE_DIR"] = cache
    try:
        return _compile_all(arches, only, log)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if old_cache is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = old_cache


def _compile_all(arches, only, log):
    mods = _modules()
    rows = []
    stats_by_hash = {}
    for arch in arches:
        for op, label, run in variants():
            if only and op not in only:
                continue
            rec = {"arch": arch, "target": TARGETS[arch]["name"], "op": op, "variant": label}
            with compile_only(arch, list(mods.values())) as sink:
                t0 = time.perf_counter()
                try:
                    run(mods[op])
                    rec["status"] = "ok"
                except Exception as e:  # a compile error is the finding: record it, keep going
                    rec["status"] = "FAILED"
                    rec["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
                rec["seconds"] = round(time.perf_counter() - t0, 2)
            kernels, seen = [], set()
            for kernel, secs, ptxas_log, _grid, _kwargs in sink:
                if kernel is None:
                    continue
                md = kernel.metadata
                if md.hash in seen:  # same specialisation launched again (e.g. a second paste layer)
                    continue
                seen.add(md.hash)
                if ptxas_log.strip():
                    stats_by_hash[md.hash] = ptxas_stats(ptxas_log)
                st = stats_by_hash.get(md.hash) or ptxas_stats(ptxas_log)
                if st["registers"] is None:
                    rec["status"] = "FAILED"
                    rec["error"] = f"{md.name}: no ptxas report captured (kernel not compiled by this run?)"
                smem = max(int(md.shared), st["ptxas_smem"])
                k = {
                    "name": md.name,
                    "num_warps": md.num_warps,
                    "num_stages": md.num_stages,
                    "shared": smem,
                    "compile_s": round(secs, 2),
                    "cubin_bytes": len(kernel.asm.get("cubin", b"")),
                    **st,
                }
                k.update(occupancy(arch, md.num_warps, st["registers"], smem))
                kernels.append(k)
            rec["kernels"] = kernels
            if rec["status"] == "ok" and not kernels:
                rec["status"] = "FAILED"
                rec["error"] = "no kernel was compiled (the wrapper did not reach a Triton launch)"
            rows.append(rec)
            if log:
                log(rec)
    return rows


def problems(rows):
    """Human-readable reasons for --check to fail (empty when all is well)."""
    out = []
    for r in rows:
        where = f"sm_{r['arch']} {r['op']} [{r['variant']}]"
        if r["status"] == "FAILED":
            out.append(f"{where}: {r.get('error')}")
            continue
        for k in r["kernels"]:
            lim = TARGETS[r["arch"]]["smem_block"]
            if k["shared"] > lim:
                out.append(f"{where}: needs {k['shared']} B shared memory per block, the target allows {lim} B")
            if r["op"] in MEMORY_BOUND and (k["spill_stores"] or k["spill_loads"]):
                out.append(
                    f"{where}: {k['name']} spills registers ({k['spill_stores']} B stores, "
                    f"{k['spill_loads']} B loads) in a memory-bound kernel"
                )
            if k["blocks_per_sm"] < 1:
                out.append(f"{where}: {k['name']} cannot be resident on one SM (registers/shared memory)")
    return out


def format_row(r) -> str:
    if r["status"] != "ok":
        return f"sm_{r['arch']:<4} {r['op']:<10} {r['variant']:<52} {r['status']}: {r.get('error', '')[:300]}"
    parts = []
    for k in r["kernels"]:
        parts.append(
            f"{k['registers']:>3} regs  spill {k['spill_stores']:>4}/{k['spill_loads']:<4} "
            f"smem {k['shared'] / 1024:6.1f} KiB  warps {k['num_warps']}  occ {k['occupancy']:.2f}  "
            f"({k['compile_s']:.1f} s)"
        )
    return f"sm_{r['arch']:<4} {r['op']:<10} {r['variant']:<52} " + "; ".join(sorted(set(parts)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--arch",
        default=",".join(str(a) for a in DEFAULT_ARCHES),
        help="comma-separated compute capabilities (80, 86, 89, 90, 120)",
    )
    ap.add_argument("--only", default="", help="comma-separated ops: paste, align, attention")
    ap.add_argument("--json", help="write the records here")
    ap.add_argument(
        "--check",
        action="store_true",
        help="exit 1 on a failed compile, too much shared memory, or spills in a memory-bound kernel",
    )
    a = ap.parse_args(argv)
    try:
        import triton  # noqa: F401
    except Exception as e:
        sys.stderr.write(f"Triton is not importable ({type(e).__name__}: {e}); nothing to compile\n")
        return 3
    arches = [int(x) for x in a.arch.split(",") if x.strip()]
    bad = [x for x in arches if x not in TARGETS]
    if bad:
        sys.stderr.write(f"unknown arch {bad}; known: {sorted(TARGETS)}\n")
        return 2
    only = {x.strip() for x in a.only.split(",") if x.strip()} or None
    t0 = time.perf_counter()
    rows = compile_all(arches, only, log=lambda r: (sys.stdout.write(format_row(r) + "\n"), sys.stdout.flush()))
    sys.stdout.write(f"{len(rows)} variants compiled in {time.perf_counter() - t0:.1f} s\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    issues = problems(rows)
    for p in issues:
        sys.stdout.write("PROBLEM " + p + "\n")
    return 1 if (a.check and issues) else 0


if __name__ == "__main__":
    sys.exit(main())

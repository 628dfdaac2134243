"""Every fused Triton kernel compiles for real NVIDIA targets (no GPU needed).

Runs ``tools/kernel_compile.py --check`` in a subprocess: Triton's real compiler and its bundled
ptxas build a cubin for each kernel variant the nodes launch, through our host wrappers, for
sm_80 (A100), sm_89 (RTX 40xx / L4) and sm_90 (H100 / H200). It fails when a kernel does not
compile, needs more shared memory per block than a target allows, or spills registers in a
memory-bound kernel - the failures the interpreter tests (test_kernels_triton_interp.py) cannot
see. Skips (with the reason) only when Triton or its ptxas is not installed.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARCHES = (80, 89, 90)


def _toolchain_or_skip():
    try:
        import triton
        from triton.backends.nvidia.compiler import get_ptxas
    except Exception as e:  # no Triton / no NVIDIA backend in this install
        pytest.skip(f"Triton's NVIDIA backend is not installed ({type(e).__name__}: {e})")
    try:
        path = get_ptxas(90).path
    except Exception as e:
        pytest.skip(f"Triton's ptxas is not available ({type(e).__name__}: {e})")
    if not path or not os.path.exists(path):
        pytest.skip(f"Triton's ptxas is not available (looked for {path!r})")
    return triton


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    _toolchain_or_skip()
    out = tmp_path_factory.mktemp("kc") / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VISAGE_DISABLE_TRITON")}
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "kernel_compile.py"),
            "--check",
            "--arch",
            ",".join(map(str, ARCHES)),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO,
    )
    rows = json.loads(out.read_text()) if out.exists() else None
    return r, rows


def test_all_variants_compile_within_target_limits(report):
    r, rows = report
    assert r.returncode == 0, f"kernel_compile --check failed:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    assert rows, r.stdout[-3000:]
    assert {row["arch"] for row in rows} == set(ARCHES)
    assert {row["op"] for row in rows} == {"paste", "align", "attention"}
    failed = [row for row in rows if row["status"] == "FAILED"]
    assert not failed, failed


def test_each_compiled_kernel_has_a_ptxas_report(report):
    _, rows = report
    assert all(row["status"] == "ok" for row in rows), [r for r in rows if r["status"] != "ok"]
    compiled = rows
    # every op compiled on every arch
    for arch in ARCHES:
        for op in ("paste", "align", "attention"):
            assert any(row["arch"] == arch and row["op"] == op for row in compiled), (arch, op)
    for row in compiled:
        assert row["kernels"], row
        for k in row["kernels"]:
            assert k["cubin_bytes"] > 0 and k["registers"] and k["registers"] <= 255, (row["variant"], k)
            assert k["spill_stores"] == 0 and k["spill_loads"] == 0, (row["arch"], row["variant"], k)
            assert k["blocks_per_sm"] >= 1, (row["arch"], row["variant"], k)


def test_problems_are_detected():
    """The --check rules themselves: a spilling memory-bound kernel and an oversized block are reported."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import kernel_compile as kc
    finally:
        sys.path.pop(0)
    base = {
        "name": "k",
        "num_warps": 4,
        "shared": 0,
        "spill_stores": 0,
        "spill_loads": 0,
        "registers": 40,
        "blocks_per_sm": 4,
    }
    rows = [
        {"arch": 89, "op": "paste", "variant": "v", "status": "ok", "kernels": [dict(base, spill_stores=8)]},
        {
            "arch": 89,
            "op": "attention",
            "variant": "v",
            "status": "ok",
            "kernels": [dict(base, shared=180480, blocks_per_sm=0)],
        },
        {"arch": 90, "op": "align", "variant": "v", "status": "FAILED", "error": "CompilationError: x", "kernels": []},
        {"arch": 90, "op": "attention", "variant": "v", "status": "ok", "kernels": [dict(base, shared=180480)]},
    ]
    probs = kc.problems(rows)
    assert any("spills" in p and "paste" in p for p in probs)
    assert any("sm_89 attention" in p and "shared memory" in p for p in probs)
    assert any("sm_89 attention" in p and "resident" in p for p in probs)
    assert any("CompilationError" in p for p in probs)
    assert not any(p.startswith("sm_90 attention") for p in probs)  # 176 KiB fits sm_90's 227 KiB
    st = kc.ptxas_stats(
        "ptxas info    : Used 133 registers, used 1 barriers, 57344 bytes smem\n"
        "ptxas info    : 16 bytes stack frame, 12 bytes spill stores, 20 bytes spill loads\n"
    )
    assert st == {"registers": 133, "spill_stores": 12, "spill_loads": 20, "ptxas_smem": 57344}
    occ = kc.occupancy(90, 4, 133, 56 * 1024)
    assert occ["blocks_per_sm"] == 3  # registers: 65536 // (4 warps * 32 * 136) = 3

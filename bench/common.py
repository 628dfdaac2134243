"""Shared helpers for Visage's benchmark modules (bench/bench_*.py).

A bench module exposes ``run(args) -> list[dict]``; each row has:
  op, shape, ours_ms, ref_ms, reference (name of the reference), bytes (bytes our op touches, or
  None), memory_bound (bool), note (optional).
``bench/run.py`` discovers the modules, runs them and prints one table.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from typing import Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Peak DRAM bandwidth (GB/s, vendor datasheets) by a substring of torch.cuda.get_device_name().
# First match wins, so more specific names come first. Used only for the "% of peak" column.
PEAK_GBPS = [
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM5 80 GB
    ("GH200", 4000.0),
    ("B200", 8000.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),  # 40 GB
    ("L40S", 864.0),
    ("L40", 864.0),
    ("L4", 300.0),
    ("A10G", 600.0),
    ("A10", 600.0),
    ("RTX 4090", 1008.0),
    ("RTX 3090", 936.0),
    ("RTX 4080", 717.0),
    ("RTX 2060", 336.0),
    ("T4", 320.0),
    ("V100", 900.0),
]


def ensure_package():
    """``visage`` is this checkout, installed editable by scripts/setup.sh (importing it registers no nodes);
    stop with the fix when it is missing or another checkout, rather than benchmark someone else's code."""
    try:
        import visage
    except ImportError:
        visage = None
    where = os.path.dirname(os.path.realpath(visage.__file__)) if visage else None
    if where != os.path.realpath(REPO):
        raise SystemExit(
            f"bench: the package `visage` is {where or 'not importable'}, not {REPO}: run `bash scripts/setup.sh` "
            f"(or `{sys.executable} -m pip install --no-deps -e {REPO}`)"
        )


def peak_gbps(device) -> Optional[tuple]:
    """(name, GB/s) for a CUDA device from the table above, or None."""
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, gbps in PEAK_GBPS:
        if key.lower() in name.lower():
            return name, gbps
    return name, None


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable, device, quick: bool = False, target_s: Optional[float] = None, max_reps: int = 1000) -> float:
    """Median milliseconds per call of ``fn()`` (warm-up first; CUDA timed with events)."""
    import torch

    target = target_s if target_s is not None else (0.05 if quick else 0.3)
    fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    one = max(time.perf_counter() - t0, 1e-6)
    reps = int(max(1, min(max_reps, target / one)))
    rounds = 3 if (quick or one * reps > 0.2) else 5
    per_call = []
    for _ in range(rounds):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            per_call.append(start.elapsed_time(end) / reps)
        else:
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            per_call.append((time.perf_counter() - t0) * 1000.0 / reps)
    return statistics.median(per_call)


def row(op, shape, ours_ms, ref_ms, reference, nbytes=None, memory_bound=False, note=""):
    return {
        "op": op,
        "shape": shape,
        "ours_ms": ours_ms,
        "ref_ms": ref_ms,
        "reference": reference,
        "bytes": nbytes,
        "memory_bound": memory_bound,
        "note": note,
    }


def fmt_ms(ms):
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "-"
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.2f} ms"
    return f"{ms * 1000:.1f} us"


def format_table(rows, device) -> str:
    """op | shape | ours | reference | ratio | GB/s [| % peak]. ratio = reference time / our time."""
    pk = peak_gbps(device)
    show_peak = pk is not None and pk[1] is not None
    head = ["op", "shape", "ours", "reference", "ratio", "GB/s"] + (["% peak"] if show_peak else [])
    lines = []
    for r in rows:
        gbps = None
        if r.get("bytes") and r.get("ours_ms"):
            gbps = r["bytes"] / (r["ours_ms"] / 1000.0) / 1e9
        ratio = (r["ref_ms"] / r["ours_ms"]) if (r.get("ref_ms") and r.get("ours_ms")) else None
        ref = f"{r['reference']} {fmt_ms(r['ref_ms'])}" if r.get("reference") else "-"
        if r.get("ratio_iqr"):  # interleaved rounds: median of the per-round ratios, quartiles
            ratio = r["ratio"]
            q1, q3 = r["ratio_iqr"]
            ratio_s = f"{ratio:.2f}x ({q1:.2f}-{q3:.2f})"
        else:
            ratio_s = f"{ratio:.2f}x" if ratio is not None else "-"
        if r.get("goal") is not None:
            ok = "skipped" if r.get("skipped") or ratio is None else ("ok" if ratio >= r["goal"] else "MISSED")
            ratio_s += f" goal {r['goal']:.1f}x {ok}"
        cells = [
            r["op"],
            r["shape"],
            fmt_ms(r.get("ours_ms")),
            ref,
            ratio_s,
            f"{gbps:.1f}" if gbps is not None else "-",
        ]
        if show_peak:
            cells.append(f"{100 * gbps / pk[1]:.0f}%" if (gbps is not None and r.get("memory_bound")) else "-")
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = [" | ".join(h.ljust(w) for h, w in zip(head, widths)), "-|-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in lines]
    return "\n".join(out)


def fix_threads(n: int) -> None:
    """The same, explicit CPU thread budget for every library a bench row runs: torch, cv2, Visage's
    onnxruntime sessions (``VISAGE_CPU_THREADS``) and every other onnxruntime session (insightface's):
    ``InferenceSession`` is patched so its options carry ``n`` operator threads and one graph thread."""
    if n <= 0:
        return
    import cv2
    import onnxruntime
    import torch

    os.environ["VISAGE_CPU_THREADS"] = str(n)
    torch.set_num_threads(n)
    cv2.setNumThreads(n)
    cls = onnxruntime.InferenceSession
    if getattr(cls, "_visage_threads", None) == n:
        return
    orig_init = getattr(cls, "_visage_orig_init", cls.__init__)

    def init(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kw):
        so = sess_options or onnxruntime.SessionOptions()
        so.intra_op_num_threads = n
        so.inter_op_num_threads = 1
        orig_init(self, path_or_bytes, so, providers, provider_options, **kw)

    cls._visage_orig_init = orig_init
    cls._visage_threads = n
    cls.__init__ = init  # insightface subclasses it at import time: patch the base class itself


BUSY_CODE = "import numpy as np\na = np.random.rand(384, 384)\nwhile True:\n    a = (a @ a) / 384.0\n"


class busy_neighbour:
    """A neighbour process that keeps one core busy (single-threaded matrix products) while the rows run."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.proc = None

    def __enter__(self):
        if self.enabled:
            import subprocess

            env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
            self.proc = subprocess.Popen([sys.executable, "-c", BUSY_CODE], env=env)
            time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        return False


def git_commit() -> str:
    import subprocess

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
        return sha + ("+dirty" if dirty.strip() else "")
    except OSError:
        return "unknown"

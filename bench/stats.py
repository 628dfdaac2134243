"""Timing statistics and goals for Visage's benchmarks (standard library only; unit-tested).

* :func:`interleaved` times two or more pipelines in A/B rounds whose order alternates (A B, B A, ...),
  so a load change on a shared machine hits every side alike; warm-up rounds are run and dropped.
* :func:`summarise` gives the median and the spread of a side's times and of the PAIRED ratios
  (reference time / our time of the same round): the ratio's median is what a goal is checked on,
  its quartiles are the spread reported.
* A row may carry ``goal`` (the least acceptable median ratio); :func:`goal_misses` lists the measured
  rows that miss theirs. Skipped rows (``skipped``: e.g. a GPU goal on a machine without one) and rows
  without a measurement do not count.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

MIN_ROUNDS = 9


def order_for(round_index: int, names: Sequence[str]) -> List[str]:
    """The order of the sides in round ``round_index``: as given on even rounds, reversed on odd ones."""
    names = list(names)
    return names if round_index % 2 == 0 else names[::-1]


def interleaved(
    fns: Dict[str, Callable[[], object]],
    rounds: int = MIN_ROUNDS,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> Dict[str, List[float]]:
    """{side: [ms per round]} for ``rounds`` measured rounds after ``warmup`` dropped ones; each round
    calls every side once, in the order :func:`order_for` gives."""
    names = list(fns)
    out: Dict[str, List[float]] = {k: [] for k in names}
    for r in range(warmup + rounds):
        for k in order_for(r, names):
            t0 = clock()
            fns[k]()
            dt = (clock() - t0) * 1000.0
            if r >= warmup:
                out[k].append(dt)
    return out


def quartiles(xs: Sequence[float]) -> tuple:
    """(q1, median, q3) of ``xs`` (inclusive method; one value gives it three times)."""
    xs = sorted(float(x) for x in xs)
    if not xs:
        raise ValueError("quartiles of nothing")
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def summarise(ours: Sequence[float], ref: Sequence[float]) -> dict:
    """Medians and spreads of two paired series of times (ms), and of the per-round ratio ref / ours."""
    if len(ours) != len(ref) or not ours:
        raise ValueError(f"paired series needed (got {len(ours)} and {len(ref)} times)")
    ratios = [r / o for o, r in zip(ours, ref) if o > 0]
    o1, om, o3 = quartiles(ours)
    r1, rm, r3 = quartiles(ref)
    q1, qm, q3 = quartiles(ratios)
    return {
        "rounds": len(ours),
        "ours_ms": om,
        "ref_ms": rm,
        "ours_iqr_ms": [o1, o3],
        "ref_iqr_ms": [r1, r3],
        "ratio": qm,
        "ratio_iqr": [q1, q3],
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def goal_misses(rows: Sequence[dict]) -> List[dict]:
    """Rows with a ``goal`` whose measured median ``ratio`` is below it (skipped / unmeasured rows excluded)."""
    out = []
    for r in rows:
        goal: Optional[float] = r.get("goal")
        if goal is None or r.get("skipped") or r.get("ratio") is None:
            continue
        if float(r["ratio"]) < float(goal):
            out.append(r)
    return out


def machine() -> dict:
    """What the figures were measured on: CPU model, CPUs usable, load averages, platform."""
    import os
    import platform

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        ncpu = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        ncpu = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"cpu": cpu, "cpus": ncpu, "load_avg": load, "platform": platform.platform()}

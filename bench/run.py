"""Run Visage's whole benchmark suite and print one table.

    .venv/bin/python bench/run.py [--quick] [--only kernels,swap] [--device auto|cpu|cuda] [--json out.json]
                                  [--rounds N] [--threads N] [--busy] [--no-save]

Every ``bench/bench_<name>.py`` that exposes ``run(args) -> list of rows`` is run (``--only`` picks
names). Columns: op | shape | ours | reference | ratio | GB/s (| % peak on CUDA). ratio = reference
time / our time (above 1 = ours is faster). GB/s = bytes our op touches / our time; "% peak" (memory-
bound ops, CUDA only) divides by the card's datasheet DRAM bandwidth from bench/common.py:PEAK_GBPS,
looked up by device name.

Rows that carry a ``goal`` (bench_face, bench_swap) are measured in interleaved rounds (bench/stats.py)
and show the median ratio with its quartiles; the run exits 1 when a measured goal is missed (skipped
rows, e.g. GPU goals on a CPU machine, do not count) and 2 on a usage error. Threads are fixed
(``--threads``, default: the CPUs this process may use) for torch, cv2 and every onnxruntime session,
and printed with the machine and its load. Unless ``--no-save``, the rows are kept as JSON under
``bench/results/`` with the commit (``tools/gen_readme.py --speed`` writes the README's speed section
from the newest one).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import logging
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
import stats  # noqa: E402


def discover():
    mods = {}
    for path in sorted(glob.glob(os.path.join(HERE, "bench_*.py"))):
        name = os.path.basename(path)[len("bench_") : -3]
        mods[name] = path
    return mods


def load(name, path):
    # imported by its own module name (bench/ is on sys.path) so that multiprocessing children
    # (bench_swap measures in separate processes) can import it again
    return importlib.import_module(os.path.splitext(os.path.basename(path))[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller shapes and fewer repetitions")
    ap.add_argument("--only", default="", help="comma-separated bench names (e.g. kernels,swap)")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    ap.add_argument("--rounds", type=int, default=0, help="interleaved rounds per goal row (default 9; --quick 3)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for every library (default: usable CPUs)")
    ap.add_argument("--busy", action="store_true", help="run a busy neighbour process (one core) meanwhile")
    ap.add_argument(
        "--workloads", default="", help="';'-separated substrings: only the goal rows whose shape contains one"
    )
    ap.add_argument("--no-save", action="store_true", help="do not keep the JSON under bench/results/")
    args = ap.parse_args(argv)
    if args.rounds and args.rounds < stats.MIN_ROUNDS and not args.quick:
        print(f"--rounds must be at least {stats.MIN_ROUNDS} (or use --quick)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    common.ensure_package()
    import torch

    if not args.threads:
        args.threads = stats.machine()["cpus"] or 1
    common.fix_threads(args.threads)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    args.torch_device = device

    mods = discover()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [o for o in only if o not in mods]
    if unknown:
        print(f"unknown bench name(s) {unknown}; available: {sorted(mods)}", file=sys.stderr)
        return 2
    names = only or sorted(mods)

    pk = common.peak_gbps(device)
    try:
        import triton

        tri = triton.__version__
    except Exception as e:  # noqa: BLE001
        tri = f"not importable ({type(e).__name__})"
    mach = stats.machine()
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
        f" | torch {torch.__version__} | triton {tri} | threads {args.threads} (torch, cv2, onnxruntime)"
        f" | VISAGE_DISABLE_TRITON={os.environ.get('VISAGE_DISABLE_TRITON', '')!r}"
    )
    print(
        f"machine: {mach['cpu']} | {mach['cpus']} CPUs usable | load average {mach['load_avg']}"
        f" | busy neighbour: {'yes' if args.busy else 'no'} | rounds {args.rounds or ('3 (quick)' if args.quick else stats.MIN_ROUNDS)}"
    )
    if pk:
        print(f"peak bandwidth: {pk[1] if pk[1] else 'unknown'} GB/s ({pk[0]}; datasheet table in bench/common.py)")

    all_rows, failed = [], []
    with common.busy_neighbour(args.busy):
        for name in names:
            t0 = time.perf_counter()
            try:
                mod = load(name, mods[name])
                if not hasattr(mod, "run"):
                    print(f"[{name}] has no run(args); skipped", file=sys.stderr)
                    continue
                rows = mod.run(args) or []
            except Exception:  # one broken module must not hide the others
                failed.append(name)
                print(f"[{name}] FAILED:\n{traceback.format_exc()}", file=sys.stderr)
                continue
            for r in rows:
                r.setdefault("bench", name)
            all_rows.extend(rows)
            print(f"[{name}] {len(rows)} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    print()
    print(common.format_table(all_rows, device))
    notes = [f"- {r['op']} [{r['shape']}]: {r['note']}" for r in all_rows if r.get("note")]
    if notes:
        print("\nnotes:\n" + "\n".join(notes))
    misses = stats.goal_misses(all_rows)
    goals = [r for r in all_rows if r.get("goal") is not None and not r.get("skipped") and r.get("ratio")]
    print(f"\ngoals: {len(goals) - len(misses)} of {len(goals)} met")
    for r in misses:
        print(f"  MISSED {r['op']} [{r['shape']}]: {r['ratio']:.2f}x < {r['goal']:.2f}x")
    doc = {
        "commit": common.git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": str(device),
        "machine": dict(mach, load_avg_after=stats.machine()["load_avg"]),
        "threads": args.threads,
        "busy_neighbour": bool(args.busy),
        "quick": bool(args.quick),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "goals_met": len(goals) - len(misses),
        "goals": len(goals),
        "rows": all_rows,
    }
    paths = [args.json] if args.json else []
    if not args.no_save:
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        tag = ("busy_" if args.busy else "") + ("quick_" if args.quick else "") + "_".join(names)
        paths.append(
            os.path.join(
                HERE, "results", f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}_{doc['commit'][:9]}_{tag}.json"
            )
        )
    for p in paths:
        with open(p, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        print(f"rows written to {p}", file=sys.stderr)
    return 1 if (failed or misses) else 0


if __name__ == "__main__":
    sys.exit(main())

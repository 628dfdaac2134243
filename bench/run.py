"""Run Visage's whole benchmark suite and print one table.

    .venv/bin/python bench/run.py [--quick] [--only kernels,swap] [--device auto|cpu|cuda] [--json out.json]

Every ``bench/bench_<name>.py`` that exposes ``run(args) -> list of rows`` is run (``--only`` picks
names). Columns: op | shape | ours | reference | ratio | GB/s (| % peak on CUDA). ratio = reference
time / our time (above 1 = ours is faster). GB/s = bytes our op touches / our time; "% peak" (memory-
bound ops, CUDA only) divides by the card's datasheet DRAM bandwidth from bench/common.py:PEAK_GBPS,
looked up by device name.
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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    common.ensure_package()
    import torch

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
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
        f" | torch {torch.__version__} | triton {tri} | threads {torch.get_num_threads()}"
        f" | VISAGE_DISABLE_TRITON={os.environ.get('VISAGE_DISABLE_TRITON', '')!r}"
    )
    if pk:
        print(f"peak bandwidth: {pk[1] if pk[1] else 'unknown'} GB/s ({pk[0]}; datasheet table in bench/common.py)")

    all_rows, failed = [], []
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "rows": all_rows}, f, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

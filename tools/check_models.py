"""Check a ComfyUI models/ folder against Visage's manifest of model files.

    python tools/check_models.py /path/to/ComfyUI/models [--no-hash]

Prints one line per known file: ok / present / missing / size-mismatch / sha256-mismatch.
Exit code 1 when a file is present but does not match its published size or sha256.
"""

import argparse
import sys

# `visage` is the repository, installed editable by scripts/setup.sh
from visage.core.paths import check_against_manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models_dir")
    ap.add_argument("--no-hash", action="store_true", help="skip sha256 (faster)")
    a = ap.parse_args(argv)
    rows = check_against_manifest(a.models_dir, hash_files=not a.no_hash)
    bad = 0
    for r in rows:
        detail = f"  ({r['detail']})" if r.get("detail") else ""
        sys.stdout.write(f"{r['status']:16} {r['folder']}/{r['name']}{detail}\n")
        bad += r["status"].endswith("mismatch")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

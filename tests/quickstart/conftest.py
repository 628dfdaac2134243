"""The quickstart tier: scripts/quickstart.sh and tools/get_models.py as a new user meets them (a clean HOME,
no network: remote URLs at a closed port, a local bare git repository and a local HTTP server instead)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

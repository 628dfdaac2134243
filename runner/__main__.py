"""``python -m visage.runner WORKFLOW.json [options]`` = ``visage-run``."""

import sys

from .cli import main

sys.exit(main())

"""Re-run the paper's comparisons: the same as `somtok reproduce ARGS` (see --help).

.venv/bin/python scripts/reproduce.py [--steps 1500] [--seeds 3] [--report-only] ...
"""

import sys

from somtok.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", *sys.argv[1:]]))

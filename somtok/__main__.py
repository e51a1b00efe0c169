import sys

from somtok.cli import main

sys.exit(main())

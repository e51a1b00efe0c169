"""The one exception type a user's mistake raises, and how a command ends on it.

The CLI and the scripts (``run_script``) print ``somtok: error: <message>`` for it and exit with
status 2; the app shows the message in the page. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class SomtokError(ValueError):
    """Bad input from a user: the message says what was wrong and what was expected."""


def run_script(main: Callable[[], int | None]) -> int:
    """Run a command's or a script's ``main``: a SomtokError is one line on stderr,
    ``somtok: error: ...``, and exit status 2; otherwise ``main``'s status (None: 0)."""
    try:
        return int(main() or 0)
    except SomtokError as err:
        print(f"somtok: error: {err}", file=sys.stderr)
        return 2

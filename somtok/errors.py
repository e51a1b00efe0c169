"""The one exception type a user's mistake raises.

The CLI prints ``somtok: error: <message>`` for it and exits with status 2; the app shows the
message in the page. Everything else is a bug and keeps its traceback.
"""


class SomtokError(ValueError):
    """Bad input from a user: the message says what was wrong and what was expected."""

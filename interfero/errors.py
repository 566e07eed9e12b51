"""The one exception type for problems a user can cause (bad files, bad settings).

The CLI turns an :class:`InterferoError` into a single line on stderr and exit
status 2; anything else is a bug and keeps its traceback.
"""


class InterferoError(ValueError):
    """Bad input: the message names the problem in one line."""

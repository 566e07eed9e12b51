"""The one exception type for problems a user can cause (bad files, bad settings).

The CLI turns an :class:`InterferoError` into a single line on stderr and exit
status 2; anything else is a bug and keeps its traceback.
"""

import sys
from collections.abc import Callable


class InterferoError(ValueError):
    """Bad input: the message names the problem in one line."""


def run_script(main: Callable[[], object], name: str) -> None:
    """Run a script's ``main()`` as the CLI does: an :class:`InterferoError` becomes
    ``NAME: error: MESSAGE`` on stderr and exit status 2; an interrupt one line and status 130."""
    try:
        main()
    except InterferoError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None

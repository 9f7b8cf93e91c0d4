"""The one exception type user errors raise, and the wrapper that turns it into a clean exit."""

from __future__ import annotations

import sys
from collections.abc import Callable


class FashionError(Exception):
    """A user-facing error: bad input, bad parameter, failed download.

    The message is printed as one line, without a traceback, and the process exits non-zero.
    """


def run_main(main: Callable[[], None]) -> None:
    """Call ``main``; on a user error print ``error: <message>`` to stderr and exit 1.

    User errors are `FashionError` and `OSError` (a missing input, a full disk, no permission:
    its message names the file). Anything else is a bug and keeps its traceback.
    """
    try:
        main()
    except (FashionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None

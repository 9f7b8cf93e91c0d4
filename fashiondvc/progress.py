"""Progress of long loops: tqdm's bar on a terminal, a line every few percent elsewhere.

On a terminal tqdm redraws one line in place. Off a terminal (CI, a log file, ``dvc repro
> log``) a redrawn bar is unreadable, and ``tqdm(disable=None)`` prints nothing at all, so a
200-second loop looks hung. There, :func:`progress` prints whole lines instead: one every
``100 / steps`` percent once the loop has run ``delay`` seconds, and a last one when it ends::

    index:  45% 835/1856 [01:02<01:16, 13.4photo/s]

Loops shorter than ``delay`` stay silent. tqdm's own environment overrides still apply
(``TQDM_DISABLE=1`` silences every bar).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

LINE_FORMAT = ("{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} "
               "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
"""One progress line off a terminal: no bar, whole numbers."""

UNKNOWN_TOTAL_SECONDS = 30.0
"""Off a terminal with no known total: a line at most this often."""


class _Lines(tqdm):
    """A tqdm that writes each display as a new line instead of redrawing one.

    Overriding ``display`` is tqdm's way of sending progress elsewhere (see
    ``tqdm.contrib.telegram``). A state already printed (the same count) is not printed again,
    so the close of a loop whose last step printed 100 % adds nothing.
    """

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self.n != getattr(self, "_printed_n", None):
            self._printed_n = self.n
            self.fp.write(self.__str__() + "\n")
            self.fp.flush()
        return False  # nothing on screen to clear: close() writes no "\r"


def is_terminal(stream: IO[str] | None) -> bool:
    """True if ``stream`` (None: ``sys.stderr``) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
             unit: str = "it", file: IO[str] | None = None, steps: int = 20,
             delay: float = 3.0, leave: bool = True, **kwargs: Any) -> tqdm:
    """A progress bar over ``iterable`` (or a manual one, with ``total`` and ``update``).

    Parameters
    ----------
    iterable : iterable, optional
        The loop's items; its ``len`` is the total when ``total`` is not given.
    total : float, optional
        Number of items (or bytes with ``unit_scale``); None: ``len(iterable)`` if it has one,
        else unknown (a line every ``UNKNOWN_TOTAL_SECONDS`` off a terminal).
    desc, unit : str
        tqdm's label and unit.
    file : text stream, optional
        Where progress goes; None: ``sys.stderr`` at call time.
    steps : int
        Off a terminal, lines per loop (one every ``100 / steps`` percent), >= 1.
    delay : float
        Off a terminal, seconds before the first line: shorter loops print nothing.
    leave : bool
        On a terminal, keep the finished bar (tqdm's ``leave``). Off a terminal the last line
        always stays.
    **kwargs
        Passed to tqdm (``unit_scale``, ``postfix``...).

    Returns
    -------
    tqdm
        Iterate over it, or call ``update(n)`` and use it as a context manager.

    Raises
    ------
    ValueError
        If ``steps`` < 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    stream = sys.stderr if file is None else file
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, leave=leave,
                    **kwargs)
    if total:
        cadence = {"miniters": max(1, math.ceil(total / steps)), "mininterval": 0,
                   "bar_format": LINE_FORMAT}
    else:
        cadence = {"miniters": 1, "mininterval": UNKNOWN_TOTAL_SECONDS}
    # maxinterval=inf: tqdm's monitor thread would otherwise drop miniters to 1 after 10 s
    # without a line, and print on every item from then on.
    # leave=False: close() then asks display(msg="") for the last state, and writes no "\n"
    return _Lines(iterable, total=total, desc=desc, unit=unit, file=stream, leave=False,
                  delay=delay, maxinterval=math.inf, **cadence, **kwargs)

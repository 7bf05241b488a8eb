"""Progress bars for the long steps (training demo, dataset-level evaluation, check, bench): tqdm
on a terminal; elsewhere (a log file, CI) one plain line every ``every`` seconds and at the end,
instead of thousands of carriage-return updates."""

from __future__ import annotations

import sys

from tqdm import tqdm


class _Lines(tqdm):
    """tqdm that prints whole lines (no carriage returns), at most one per ``mininterval``."""

    def display(self, msg=None, pos=None):
        if self.n == 0 or msg == "":
            return True  # no line before any progress, nor for tqdm's requests to clear one
        self.fp.write((msg or self.__str__()) + "\n")
        self.fp.flush()
        return True


class _NoBareNewlines:
    """A stream that drops tqdm's own "\n" / "\r" writes (the lines carry their newline)."""

    def __init__(self, fp):
        self.fp = fp

    def write(self, s):
        if s.strip("\r\n"):
            self.fp.write(s)

    def flush(self):
        self.fp.flush()


def progress(iterable=None, *, total=None, desc=None, enabled: bool = True, every: float = 30.0, file=None,
             **kwargs):
    """``tqdm(iterable, total=..., desc=...)``, or a line printer when ``file`` (default stderr)
    is not a terminal; ``enabled=False``: silent (same object, nothing printed)."""
    fp = file or sys.stderr
    if not enabled:
        return tqdm(iterable, total=total, desc=desc, disable=True, **kwargs)
    if hasattr(fp, "isatty") and fp.isatty():
        return tqdm(iterable, total=total, desc=desc, file=fp, dynamic_ncols=True, **kwargs)
    return _Lines(iterable, total=total, desc=desc, file=_NoBareNewlines(fp), mininterval=every, maxinterval=every * 10,
                  miniters=1, ascii=True, **kwargs)

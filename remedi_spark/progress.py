"""Progress lines on the console: one line per finished step (a stage of the pipeline, a base model,
a fold) with the elapsed time, a bar and an estimate of what is left.

Code that loops over steps opens a tracker and advances it once per step::

    bar = progress.track("train-base", len(specs), "model")
    for spec in specs:
        ...
        bar.advance(spec.name)

Trackers nest: a tracker opened while another is unfinished is printed indented under it (a fold
under its model under its stage). A tracker closes itself after its last step; :func:`scope`
closes what a failed step left open. Lines go to ``sys.stderr`` as it is when they are printed
(the CLI's log file gets them too). On a terminal the bar is drawn with block characters; anywhere
else (Databricks job logs, pytest capture, a pipe) the line is plain ASCII, one line per step,
never a carriage return. The estimate assumes the steps left take as long as the mean step so far.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

PREFIX = "[remedi]"
BAR_WIDTH = 20
_OPEN: list["Progress"] = []  # unfinished trackers, outermost first


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m05s``: short enough for a progress line, to the second (stage and
    model times past an hour are read off these lines)."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def bar(fraction: float, width: int = BAR_WIDTH, fancy: bool = False) -> str:
    """A bar ``width`` cells wide, ``fraction`` (clipped to [0, 1]) of it filled: ``[#####-----]``, or
    with block characters when ``fancy`` (a terminal)."""
    filled = int(round(min(max(fraction, 0.0), 1.0) * width))
    full, empty = ("█", "░") if fancy else ("#", "-")
    return f"[{full * filled}{empty * (width - filled)}]"


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or minimal stream
        return False


class Progress:
    """``total`` steps of ``what``; :meth:`advance` prints one line per finished step."""

    def __init__(self, what: str, total: int, unit: str = "step", stream: TextIO | None = None,
                 clock=time.perf_counter) -> None:
        if total < 1:
            raise ValueError(f"progress of {what!r}: total must be at least 1, got {total}")
        self.what, self.total, self.unit = what, int(total), unit
        self.done = 0
        self._stream = stream
        self._clock = clock
        self.started = clock()
        self.depth = len(_OPEN)
        _OPEN.append(self)

    @property
    def elapsed(self) -> float:
        """Seconds since the tracker was opened."""
        return self._clock() - self.started

    def remaining(self) -> float | None:
        """Estimated seconds left: the mean step so far times the steps left (None before the first step)."""
        if self.done == 0:
            return None
        return self.elapsed / self.done * (self.total - self.done)

    def line(self, item: str, fancy: bool = False) -> str:
        """The line :meth:`advance` prints for the step ``item`` that just finished."""
        left = self.remaining()
        tail = "done" if self.done >= self.total else f"~{format_seconds(left)} left" if left is not None else ""
        count = f"{self.done}/{self.total} {self.unit}{'' if self.total == 1 else 's'}"
        return (f"{PREFIX} {'  ' * self.depth}{self.what}: {item} {bar(self.done / self.total, fancy=fancy)} "
                f"{count}, {format_seconds(self.elapsed)} elapsed, {tail}").rstrip(", ")

    def advance(self, item: str = "", n: int = 1) -> None:
        """Count ``n`` finished steps (the last one named ``item``) and print the line; the tracker
        closes after its last step."""
        self.done = min(self.done + n, self.total)
        stream = self._stream or sys.stderr
        print(self.line(item or f"{self.unit} {self.done}", fancy=_is_tty(stream)), file=stream, flush=True)
        if self.done >= self.total:
            self.close()

    def close(self) -> None:
        """Stop nesting under this tracker (and under any tracker opened inside it)."""
        if self in _OPEN:
            del _OPEN[_OPEN.index(self):]


def track(what: str, total: int, unit: str = "step", stream: TextIO | None = None) -> Progress:
    """Open a tracker of ``total`` steps of ``what`` (nested under the unfinished trackers); call
    ``advance(name)`` after each step."""
    return Progress(what, total, unit, stream)


def note(text: str, stream: TextIO | None = None) -> None:
    """Print ``text`` as a progress line at the current nesting depth (e.g. a stage that starts)."""
    print(f"{PREFIX} {'  ' * len(_OPEN)}{text}", file=stream or sys.stderr, flush=True)


@contextmanager
def scope() -> Iterator[None]:
    """Trackers opened inside the block are closed when it ends, even when a step failed."""
    depth = len(_OPEN)
    try:
        yield
    finally:
        del _OPEN[depth:]
